"""Predictive distributions against closed forms: covariances, quantiles, bands and CRPS integrals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probneural.uq.prediction import GaussianPrediction, MixturePrediction, cat, normal_quantile

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _low_rank(g: torch.Generator, b: int = 2, k: int = 3, c: int = 2, s: int = 3) -> GaussianPrediction:
    mean = torch.randn(b, c, s, generator=g, dtype=F64)
    diagonal = torch.rand(b, c, s, generator=g, dtype=F64) + 0.1
    factor = torch.randn(b, k, c, s, generator=g, dtype=F64)
    return GaussianPrediction(mean, diagonal, factor)


def _dense_covariance(pred: GaussianPrediction, i: int) -> torch.Tensor:
    """`(D, D)` covariance ``F Fᵀ + diag(d)`` of sample ``i``'s flattened field."""
    cov = torch.diag(pred.diagonal[i].flatten())
    if pred.factor is not None:
        f = pred.factor[i].flatten(1)  # (k, D)
        cov = cov + f.T @ f
    return cov


def _mixture(g: torch.Generator, m: int = 4, b: int = 2, c: int = 1, s: int = 3, noise: bool = True):
    centers = 2.0 * torch.randn(m, b, c, s, generator=g, dtype=F64)
    variance = 0.05 + torch.rand(b, c, s, generator=g, dtype=F64) if noise else torch.zeros(b, c, s, dtype=F64)
    return MixturePrediction(centers, variance)


def _normal_cdf(t: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(t)


def _crps_by_quadrature(cdf, y: float, low: float, high: float, n: int = 400_001) -> float:
    """``∫ (F(t) − 1{t ≥ y})² dt`` by the trapezoidal rule on fine grids split at ``y``."""
    left = torch.linspace(low, y, n, dtype=F64)
    right = torch.linspace(y, high, n, dtype=F64)
    return (torch.trapezoid(cdf(left).square(), left) + torch.trapezoid((1.0 - cdf(right)).square(), right)).item()


def _crps_of_steps(centers: torch.Tensor, y: float) -> float:
    """``∫ (F(t) − 1{t ≥ y})² dt`` exactly for the empirical CDF of ``centers`` (constant between jumps)."""
    points = torch.sort(torch.cat([centers, torch.tensor([y], dtype=F64)])).values
    middle = 0.5 * (points[1:] + points[:-1])
    cdf = (centers[:, None] <= middle[None, :]).to(F64).mean(0)
    step = (middle >= y).to(F64)
    return ((cdf - step).square() * (points[1:] - points[:-1])).sum().item()


# -- Gaussian -----------------------------------------------------------------------------------


def test_gaussian_samples_have_the_low_rank_plus_diagonal_covariance():
    g = _generator(0)
    pred = _low_rank(g)
    n = 20_000
    draws = pred.sample(n, generator=g)
    assert draws.shape == (n, *pred.mean.shape)
    for i in range(pred.mean.shape[0]):
        cov = _dense_covariance(pred, i)
        centred = draws[:, i].flatten(1) - pred.mean[i].flatten()
        empirical = centred.T @ centred / n  # the mean is known
        # Var(X_a X_b) = Σ_aa Σ_bb + Σ_ab² for a centred Gaussian
        se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov.square()) / n).sqrt()
        assert ((empirical - cov).abs() <= 4.0 * se).all()
        assert (centred.mean(0).abs() <= 4.0 * (cov.diagonal() / n).sqrt()).all()
    torch.testing.assert_close(pred.variance, pred.diagonal + pred.factor.square().sum(1))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5])
def test_gaussian_interval_is_the_mean_plus_minus_the_normal_quantile_times_std(alpha):
    stats = pytest.importorskip("scipy.stats")
    pred = _low_rank(_generator(1))
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    std = (pred.diagonal + pred.factor.square().sum(1)).sqrt()
    lower, upper = pred.interval(alpha)
    torch.testing.assert_close(lower, pred.mean - z * std, rtol=0, atol=1e-12)
    torch.testing.assert_close(upper, pred.mean + z * std, rtol=0, atol=1e-12)


def test_normal_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    p = torch.tensor([1e-6, 0.025, 0.3, 0.5, 0.9, 0.999999], dtype=F64)
    torch.testing.assert_close(normal_quantile(p), torch.from_numpy(stats.norm.ppf(p.numpy())), rtol=1e-10, atol=1e-12)
    assert normal_quantile(0.975).item() == pytest.approx(stats.norm.ppf(0.975), rel=1e-12)


def test_independent_simultaneous_band_is_exact_and_covers_its_own_draws():
    stats = pytest.importorskip("scipy.stats")
    g = _generator(2)
    alpha, d, n = 0.1, 50, 20_000
    mean = torch.randn(1, 2, d // 2, generator=g, dtype=F64)
    variance = 0.1 + torch.rand(1, 2, d // 2, generator=g, dtype=F64)
    pred = GaussianPrediction(mean, variance)
    lower, upper = pred.simultaneous_interval(alpha)
    q = ((upper - mean) / variance.sqrt()).flatten()
    torch.testing.assert_close(q, torch.full_like(q, q[0].item()))
    assert (2.0 * stats.norm.cdf(q[0].item()) - 1.0) ** d == pytest.approx(1.0 - alpha, rel=1e-10)
    draws = pred.sample(n, generator=g)
    covered = ((draws >= lower) & (draws <= upper)).flatten(1).all(1).to(F64).mean().item()
    assert abs(covered - (1.0 - alpha)) <= 4.0 * math.sqrt(alpha * (1.0 - alpha) / n)


def test_low_rank_simultaneous_band_covers_its_own_draws():
    alpha, n = 0.1, 4000
    g = _generator(3)
    pred = _low_rank(g, b=3, k=3, c=1, s=20)
    pred = GaussianPrediction(pred.mean, 0.05 * pred.diagonal, pred.factor)  # strongly correlated points
    lower, upper = pred.simultaneous_interval(alpha, n_samples=n, generator=_generator(4))
    draws = pred.sample(n, generator=_generator(5))
    covered = ((draws >= lower) & (draws <= upper)).flatten(2).all(2).to(F64).mean(0)  # per sample
    # the band's quantile comes from n draws too: two independent binomial errors
    se = math.sqrt(alpha * (1.0 - alpha) * 2.0 / n)
    assert ((covered - (1.0 - alpha)).abs() <= 3.0 * se).all()


def test_gaussian_crps_matches_the_integral_of_the_squared_cdf_difference():
    pred = _low_rank(_generator(6), b=1, k=2, c=1, s=3)
    y = pred.mean + torch.tensor([[[-1.5, 0.2, 3.0]]], dtype=F64)
    crps = pred.crps(y)
    mean, std = pred.mean.flatten(), pred.std.flatten()
    for j, target in enumerate(y.flatten().tolist()):
        mu, sigma = mean[j].item(), std[j].item()
        cdf = lambda t: _normal_cdf((t - mu) / sigma)  # noqa: E731
        reference = _crps_by_quadrature(cdf, target, mu - 12 * sigma, mu + 12 * sigma)
        assert crps.flatten()[j].item() == pytest.approx(reference, abs=1e-7)
    point_mass = GaussianPrediction(pred.mean, torch.zeros_like(pred.mean))
    torch.testing.assert_close(point_mass.crps(y), (y - pred.mean).abs())


# -- mixture ------------------------------------------------------------------------------------


def test_mixture_moments_follow_the_law_of_total_variance_and_match_samples():
    g = _generator(7)
    pred = _mixture(g, m=4, b=2, c=2, s=3)
    mean = pred.centers.mean(0)
    second_moment = (pred.centers.square() + pred.noise).mean(0)  # E[Y²] = E[E[Y²|member]]
    torch.testing.assert_close(pred.mean, mean)
    torch.testing.assert_close(pred.variance, second_moment - mean.square())
    n = 40_000
    draws = pred.sample(n, generator=g)
    assert draws.shape == (n, *mean.shape)
    deviation = pred.centers - mean
    fourth = (deviation**4 + 6.0 * deviation.square() * pred.noise + 3.0 * pred.noise.square()).mean(0)
    assert ((draws.mean(0) - mean).abs() <= 4.0 * (pred.variance / n).sqrt()).all()
    variance_se = ((fourth - pred.variance.square()) / n).sqrt()
    assert ((draws.var(0) - pred.variance).abs() <= 4.0 * variance_se).all()


def test_mixture_cdf_and_quantile_invert_each_other():
    g = _generator(8)
    pred = _mixture(g, m=3, b=2, c=1, s=4)
    std = pred.noise.sqrt()
    reference_cdf = lambda t: _normal_cdf((t - pred.centers) / std).mean(0)  # noqa: E731
    t = 3.0 * torch.randn(pred.mean.shape, generator=g, dtype=F64)
    torch.testing.assert_close(pred.cdf(t), reference_cdf(t), rtol=0, atol=1e-14)
    previous = None
    for p in [0.001, 0.05, 0.3, 0.5, 0.8, 0.999]:
        q = pred.quantile(p)
        torch.testing.assert_close(reference_cdf(q), torch.full_like(q, p), rtol=0, atol=1e-10)
        if previous is not None:
            assert (q > previous).all()
        previous = q
    lower, upper = pred.interval(0.2)
    torch.testing.assert_close(lower, pred.quantile(0.1))
    torch.testing.assert_close(upper, pred.quantile(0.9))


def test_mixture_without_noise_has_the_empirical_quantiles():
    g = _generator(9)
    pred = _mixture(g, m=5, b=2, c=1, s=3, noise=False)
    for p in [0.1, 0.25, 0.5, 0.9]:
        expected = torch.from_numpy(np.quantile(pred.centers.numpy(), p, axis=0))  # linear interpolation
        torch.testing.assert_close(pred.quantile(p), expected, rtol=0, atol=1e-14)
    ordered = pred.centers.sort(0).values
    torch.testing.assert_close(pred.quantile(0.25), ordered[1])  # (m − 1) p = 1: an order statistic
    # noise on some points only: empirical where it is zero, the continuous inverse elsewhere
    noise = torch.zeros_like(pred.mean)
    noise[:, :, 1] = 0.3
    mixed = MixturePrediction(pred.centers, noise)
    q = mixed.quantile(0.7)
    torch.testing.assert_close(q[:, :, 0], pred.quantile(0.7)[:, :, 0])
    torch.testing.assert_close(mixed.cdf(q)[:, :, 1], torch.full_like(q[:, :, 1], 0.7), rtol=0, atol=1e-10)


def test_mixture_crps_matches_the_integral_with_noise():
    g = _generator(10)
    pred = _mixture(g, m=3, b=2, c=1, s=2)
    y = pred.mean + torch.randn(pred.mean.shape, generator=g, dtype=F64)
    crps = pred.crps(y).flatten()
    centers = pred.centers.flatten(1)  # (m, points)
    std = pred.noise.sqrt().flatten()
    for j, target in enumerate(y.flatten().tolist()):
        c, s = centers[:, j], std[j].item()
        low, high = min(c.min().item(), target) - 12 * s, max(c.max().item(), target) + 12 * s
        reference = _crps_by_quadrature(lambda t: _normal_cdf((t[None] - c[:, None]) / s).mean(0), target, low, high)
        assert crps[j].item() == pytest.approx(reference, abs=1e-7)


def test_mixture_crps_matches_the_integral_without_noise():
    g = _generator(11)
    pred = _mixture(g, m=5, b=2, c=1, s=3, noise=False)
    y = pred.mean + torch.randn(pred.mean.shape, generator=g, dtype=F64)
    y[0, 0, 0] = pred.centers[2, 0, 0, 0]  # the observation on a jump
    crps = pred.crps(y).flatten()
    centers = pred.centers.flatten(1)
    for j, target in enumerate(y.flatten().tolist()):
        assert crps[j].item() == pytest.approx(_crps_of_steps(centers[:, j], target), abs=1e-12)
    single = MixturePrediction(pred.centers[:1])
    torch.testing.assert_close(single.crps(y), (y - pred.centers[0]).abs())


# -- affine, select, cat ------------------------------------------------------------------------


def test_affine_scales_the_whole_gaussian_covariance_with_a_per_channel_scale():
    g = _generator(12)
    pred = _low_rank(g, b=2, k=2, c=2, s=3)
    scale = torch.tensor([[-2.0], [0.5]], dtype=F64)  # (c, 1): per channel, lower rank than the fields
    shift = torch.tensor([[1.0], [-3.0]], dtype=F64)
    moved = pred.affine(scale, shift)
    torch.testing.assert_close(moved.mean, pred.mean * scale + shift)
    torch.testing.assert_close(moved.variance, pred.variance * scale.square())
    a = scale.expand_as(pred.mean[0]).flatten()
    for i in range(2):
        torch.testing.assert_close(_dense_covariance(moved, i), a[:, None] * _dense_covariance(pred, i) * a[None, :])
    halved = pred.affine(0.5, 2.0)
    torch.testing.assert_close(halved.variance, 0.25 * pred.variance)
    torch.testing.assert_close(halved.mean, 0.5 * pred.mean + 2.0)


def test_affine_moves_mixture_moments_and_reflects_quantiles():
    g = _generator(13)
    pred = _mixture(g, m=3, b=2, c=2, s=3)
    scale = torch.tensor([[-2.0], [0.5]], dtype=F64)
    shift = torch.tensor([[1.0], [-3.0]], dtype=F64)
    moved = pred.affine(scale, shift)
    torch.testing.assert_close(moved.mean, pred.mean * scale + shift)
    torch.testing.assert_close(moved.variance, pred.variance * scale.square())
    # a negative scale swaps the tails: q'(p) = a q(1 − p) + s on the first channel
    torch.testing.assert_close(moved.quantile(0.2)[:, 0], (-2.0 * pred.quantile(0.8) + 1.0)[:, 0], rtol=0, atol=1e-9)
    torch.testing.assert_close(moved.quantile(0.2)[:, 1], (0.5 * pred.quantile(0.2) - 3.0)[:, 1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["independent", "low-rank", "mixture"])
def test_select_and_cat_round_trip(kind):
    g = _generator(14)
    if kind == "mixture":
        pred = _mixture(g, m=3, b=5)
    else:
        pred = _low_rank(g, b=5)
        if kind == "independent":
            pred = GaussianPrediction(pred.mean, pred.diagonal)
    joined = cat([pred.select(slice(0, 2)), pred.select(slice(2, 5))])
    assert type(joined) is type(pred)
    torch.testing.assert_close(joined.mean, pred.mean)
    torch.testing.assert_close(joined.variance, pred.variance)
    if kind == "mixture":
        torch.testing.assert_close(joined.centers, pred.centers)
    elif kind == "low-rank":
        torch.testing.assert_close(joined.factor, pred.factor)
    index = torch.tensor([4, 0])
    picked = pred.select(index)
    torch.testing.assert_close(picked.mean, pred.mean[index])
    torch.testing.assert_close(picked.variance, pred.variance[index])
    y = pred.mean + 1.0
    torch.testing.assert_close(picked.crps(y[index]), pred.crps(y)[index])


# -- bad arguments ------------------------------------------------------------------------------


def _bad_calls():
    g = _generator(15)
    low_rank = _low_rank(g)
    independent = GaussianPrediction(low_rank.mean, low_rank.diagonal)
    mixture = _mixture(g)
    mean = low_rank.mean
    return [
        ("alpha", lambda: low_rank.interval(0.0)),
        ("alpha", lambda: low_rank.interval(1.0)),
        ("alpha", lambda: independent.simultaneous_interval(1.5)),
        ("alpha", lambda: mixture.interval(-0.1)),
        ("alpha", lambda: mixture.interval(True)),
        ("alpha", lambda: low_rank.simultaneous_interval(float("nan"))),
        ("n_samples", lambda: low_rank.simultaneous_interval(0.1, n_samples=1)),
        ("n_samples", lambda: mixture.simultaneous_interval(0.1, n_samples=2.5)),
        ("n", lambda: low_rank.sample(0)),
        ("n", lambda: mixture.sample(1.5)),
        ("diagonal", lambda: GaussianPrediction(mean, -torch.ones_like(mean))),
        ("factor", lambda: GaussianPrediction(mean, mean.abs(), torch.ones(2, 3, 2, 4, dtype=F64))),
        ("factor", lambda: GaussianPrediction(mean, mean.abs(), torch.ones(1, 3, 2, 3, dtype=F64))),
        ("centers", lambda: MixturePrediction(torch.ones(3, 2, dtype=F64))),
        ("noise", lambda: MixturePrediction(mixture.centers, -1.0)),
        ("diagonal", lambda: GaussianPrediction(mean, torch.ones(4, dtype=F64))),
        ("noise", lambda: MixturePrediction(mixture.centers, torch.ones(7, dtype=F64))),
        ("y", lambda: low_rank.crps(mean[:, 0])),  # (b, *spatial) would broadcast silently against (b, c, ...)
        ("y", lambda: mixture.crps(mixture.mean[..., :1])),
        ("scale", lambda: low_rank.affine(torch.ones(3, 1, 1, 1, dtype=F64), 0.0)),
        ("shift", lambda: mixture.affine(1.0, torch.ones(5, dtype=F64))),
        ("predictions", lambda: cat([])),
        ("predictions", lambda: cat([low_rank, mixture])),
        ("predictions", lambda: cat([low_rank, independent])),
        ("predictions", lambda: cat([low_rank, _low_rank(g, k=2)])),
        ("predictions", lambda: cat([mixture, _mixture(g, m=2)])),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_arguments_raise_value_errors_naming_them(index):
    name, call = _bad_calls()[index]
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("m", [1, 2, 7, 32])
def test_empirical_mixture_quantiles_equal_torch_quantile_where_the_noise_is_zero(m):
    generator = torch.Generator().manual_seed(m)
    centers = torch.randn(m, 3, 1, 50, generator=generator, dtype=torch.float64)
    noise = torch.rand(3, 1, 50, generator=generator, dtype=torch.float64)
    noise = noise * (noise > 0.5)  # noise-free at about half of the points
    for p in (0.05, 0.5, 0.9, 0.999):
        expected = torch.quantile(centers, p, dim=0)
        torch.testing.assert_close(MixturePrediction(centers, 0.0).quantile(p), expected, rtol=0, atol=1e-15)
        mixed = MixturePrediction(centers, noise).quantile(p)
        torch.testing.assert_close(mixed[noise == 0], expected[noise == 0], rtol=0, atol=1e-15)
