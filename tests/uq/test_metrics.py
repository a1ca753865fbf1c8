"""Scores of predictions against closed forms, brute force and draws from the predictions themselves."""

from __future__ import annotations

import math

import pytest
import torch

from probneural.train.losses import relative_h1, relative_l2
from probneural.uq import metrics
from probneural.uq.metrics import auroc, calibration_curve, energy_score, evaluate
from probneural.uq.prediction import GaussianPrediction, MixturePrediction

F64 = torch.float64
KEYS = {
    "rel_l2", "rel_h1", "nll", "crps", "energy_score", "coverage", "width", "function_coverage", "calibration_error"
}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _prediction(kind: str, g: torch.Generator, b: int, c: int = 1, s: int = 8):
    mean = torch.randn(b, c, s, generator=g, dtype=F64)
    variance = 0.2 + torch.rand(b, c, s, generator=g, dtype=F64)
    if kind == "independent":
        return GaussianPrediction(mean, variance)
    if kind == "low-rank":
        return GaussianPrediction(mean, 0.1 * variance, torch.randn(b, 2, c, s, generator=g, dtype=F64))
    if kind == "mixture":
        return MixturePrediction(mean + torch.randn(4, b, c, s, generator=g, dtype=F64), 0.5 * variance)
    return MixturePrediction(mean + torch.randn(6, b, c, s, generator=g, dtype=F64))  # "empirical"


def _on(pred: GaussianPrediction | MixturePrediction, device: torch.device) -> GaussianPrediction | MixturePrediction:
    if isinstance(pred, MixturePrediction):
        return MixturePrediction(pred.centers.to(device), pred.noise.to(device))
    factor = None if pred.factor is None else pred.factor.to(device)
    return GaussianPrediction(pred.mean.to(device), pred.diagonal.to(device), factor)


def _own_draw(pred, g: torch.Generator) -> torch.Tensor:
    return pred.sample(1, generator=g)[0]


@pytest.mark.parametrize("kind", ["independent", "low-rank", "mixture", "empirical"])
def test_evaluate_returns_every_score_as_a_float(kind, device):
    g = _generator(0)
    pred = _prediction(kind, g, b=6, c=2, s=5)
    y = pred.mean + torch.randn(pred.mean.shape, generator=g, dtype=F64)
    moved = _on(pred, device)
    generator = torch.Generator(device).manual_seed(1)
    scores = evaluate(moved, y.to(device), 0.2, ood=moved, n_samples=10, generator=generator)
    assert set(scores) == KEYS | {"ood_auroc"}
    assert all(type(value) is float and math.isfinite(value) for value in scores.values())
    assert scores["rel_l2"] == pytest.approx(relative_l2(pred.mean, y).item(), rel=1e-12)
    assert scores["rel_h1"] == pytest.approx(relative_h1(pred.mean, y).item(), rel=1e-12)
    lower, upper = pred.interval(0.2)
    assert scores["width"] == pytest.approx((upper - lower).mean().item(), rel=1e-12)
    assert scores["ood_auroc"] == 0.5  # the same prediction: every pair ties
    assert "ood_auroc" not in evaluate(pred, y, n_samples=10, generator=g)


def test_nll_is_the_gaussian_negative_log_density_of_the_marginals():
    stats = pytest.importorskip("scipy.stats")
    g = _generator(1)
    pred = _prediction("low-rank", g, b=3, c=2, s=4)
    y = pred.mean + 2.0 * torch.randn(pred.mean.shape, generator=g, dtype=F64)
    expected = -stats.norm.logpdf(y.numpy(), pred.mean.numpy(), pred.std.numpy()).mean()
    assert evaluate(pred, y, n_samples=4, generator=g)["nll"] == pytest.approx(expected, rel=1e-12)


def test_nll_rejects_a_zero_variance():
    pred = GaussianPrediction(torch.zeros(2, 1, 4, dtype=F64), torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="pred: the predicted variance is zero at 2 point"):
        evaluate(pred, torch.ones(2, 1, 4, dtype=F64))


def test_crps_is_the_mean_of_the_gaussian_closed_form():
    stats = pytest.importorskip("scipy.stats")
    g = _generator(2)
    pred = _prediction("independent", g, b=3, c=1, s=6)
    y = pred.mean + torch.randn(pred.mean.shape, generator=g, dtype=F64)
    z = ((y - pred.mean) / pred.std).numpy()
    crps = pred.std.numpy() * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    assert evaluate(pred, y, n_samples=4, generator=g)["crps"] == pytest.approx(crps.mean(), rel=1e-12)


@pytest.mark.parametrize("kind", ["independent", "mixture"])
def test_energy_score_of_one_value_fields_is_the_crps(kind):
    # with only 4 draws the plug-in (1/n²) estimator would be off by ½E|X − X′|/4 ≈ 0.15 here
    g = _generator(3)
    b = 4000
    pred = _prediction(kind, g, b=b, c=1, s=1)
    y = pred.mean + torch.randn(pred.mean.shape, generator=g, dtype=F64)
    difference = energy_score(pred, y, n_samples=4, generator=g) - pred.crps(y).flatten()
    assert difference.shape == (b,)
    assert abs(difference.mean().item()) <= 4.0 * difference.std().item() / math.sqrt(b)


def test_energy_score_of_an_empirical_mixture_is_exact():
    g = _generator(4)
    pred = _prediction("empirical", g, b=50, c=1, s=1)
    y = pred.mean + torch.randn(pred.mean.shape, generator=g, dtype=F64)
    torch.testing.assert_close(energy_score(pred, y), pred.crps(y).flatten(), rtol=0, atol=1e-12)


def test_energy_score_of_an_empirical_mixture_matches_brute_force_in_chunks(monkeypatch):
    g = _generator(5)
    pred = _prediction("empirical", g, b=5, c=2, s=6)
    pred = MixturePrediction(pred.centers + 1e6)  # a large offset: the pair distances must not cancel
    y = pred.mean + 3.0 + torch.randn(pred.mean.shape, generator=g, dtype=F64)
    rms = lambda v: v.square().mean().sqrt()  # noqa: E731
    m = pred.centers.shape[0]
    expected = torch.tensor([
        sum(rms(pred.centers[i, k] - y[k]) for i in range(m)) / m
        - sum(rms(pred.centers[i, k] - pred.centers[j, k]) for i in range(m) for j in range(m)) / (2 * m * m)
        for k in range(5)
    ], dtype=F64)
    torch.testing.assert_close(energy_score(pred, y), expected, rtol=0, atol=1e-9)
    monkeypatch.setattr(metrics, "_DRAW_BUDGET", 2 * m * y[0].numel())  # two samples of the batch per chunk
    torch.testing.assert_close(energy_score(pred, y), expected, rtol=0, atol=1e-9)


def test_energy_score_at_the_mean_of_an_isotropic_gaussian():
    # ES = E‖X − μ‖ − ½E‖X − X′‖ = σ E‖Z‖ (1 − 1/√2), E‖Z‖₂ = √2 Γ((d+1)/2) / Γ(d/2), RMS norm = ‖·‖₂ / √d
    g = _generator(6)
    b, c, s, sigma = 400, 2, 8, 0.7
    d = c * s
    mean = 5.0 + torch.randn(b, c, s, generator=g, dtype=F64)  # offset: the pair distances must not cancel
    pred = GaussianPrediction(mean, torch.full_like(mean, sigma**2))
    expected_norm = math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2)) / math.sqrt(d)
    expected = sigma * expected_norm * (1.0 - 1.0 / math.sqrt(2.0))
    scores = energy_score(pred, mean, n_samples=20, generator=g)
    assert abs(scores.mean().item() - expected) <= 4.0 * scores.std().item() / math.sqrt(b)


def test_energy_score_of_a_point_mass_is_the_rms_error():
    g = _generator(7)
    mean = torch.randn(3, 2, 5, generator=g, dtype=F64)
    y = torch.randn(3, 2, 5, generator=g, dtype=F64)
    rms = (y - mean).square().flatten(1).mean(1).sqrt()
    torch.testing.assert_close(energy_score(GaussianPrediction(mean, torch.zeros_like(mean)), y, generator=g), rms)
    torch.testing.assert_close(energy_score(MixturePrediction(mean[None]), y), rms)


@pytest.mark.parametrize("kind", ["independent", "low-rank", "mixture"])
def test_coverage_of_draws_from_the_prediction_itself(kind):
    stats = pytest.importorskip("scipy.stats")
    alpha, b = 0.1, 200
    g = _generator(8)
    pred = _prediction(kind, g, b=b, c=1, s=20)
    y = _own_draw(pred, g)
    scores = evaluate(pred, y, alpha, n_samples=10, generator=g)
    lower, upper = pred.interval(alpha)
    per_sample = ((lower <= y) & (y <= upper)).flatten(1).to(F64).mean(1)  # points of a field may correlate
    assert scores["coverage"] == pytest.approx(per_sample.mean().item(), rel=1e-12)
    assert abs(scores["coverage"] - (1.0 - alpha)) <= 4.0 * per_sample.std().item() / math.sqrt(b)
    if kind != "mixture":
        z = stats.norm.ppf(1.0 - alpha / 2.0)
        assert scores["width"] == pytest.approx(2.0 * z * pred.std.mean().item(), rel=1e-12)


def test_calibration_error_is_small_for_the_truth_and_large_for_an_overconfident_prediction():
    stats = pytest.importorskip("scipy.stats")
    g = _generator(9)
    pred = _prediction("independent", g, b=400, c=1, s=50)
    y = _own_draw(pred, g)
    levels, observed = calibration_curve(pred, y)
    torch.testing.assert_close(levels, torch.arange(1, 20, dtype=F64) * 0.05)
    assert (observed - levels).abs().max() <= 4.0 * math.sqrt(0.25 / y.numel())
    calibrated = evaluate(pred, y, n_samples=4, generator=g)["calibration_error"]
    assert calibrated <= 0.01
    # σ halved: the central p-interval holds 2Φ(z_p / 2) − 1 of the points, z_p = Φ⁻¹((1 + p)/2)
    overconfident = GaussianPrediction(pred.mean, 0.25 * pred.variance)
    p = levels.numpy()
    expected_curve = 2.0 * stats.norm.cdf(stats.norm.ppf((1.0 + p) / 2.0) / 2.0) - 1.0
    _, observed = calibration_curve(overconfident, y)
    assert (observed - torch.from_numpy(expected_curve)).abs().max() <= 4.0 * math.sqrt(0.25 / y.numel())
    error = evaluate(overconfident, y, n_samples=4, generator=g)["calibration_error"]
    assert error == pytest.approx(abs(expected_curve - p).mean(), abs=0.01)
    assert error > 10 * calibrated


def test_calibration_error_is_small_for_draws_from_a_mixture_itself():
    g = _generator(16)
    pred = _prediction("mixture", g, b=400, c=1, s=50)
    y = _own_draw(pred, g)
    assert evaluate(pred, y, n_samples=4, generator=g)["calibration_error"] <= 0.01


@pytest.mark.parametrize("kind", ["mixture", "empirical", "low-rank"])
def test_calibration_curve_counts_points_inside_the_central_intervals(kind):
    g = _generator(10)
    pred = _prediction(kind, g, b=20, c=1, s=10)
    y = _own_draw(pred, g)
    levels, observed = calibration_curve(pred, y, [0.3, 0.5, 0.9])
    assert levels.tolist() == [0.3, 0.5, 0.9]
    for p, fraction in zip(levels.tolist(), observed.tolist()):
        lower, upper = pred.interval(1.0 - p)
        assert fraction == ((lower <= y) & (y <= upper)).to(F64).mean().item()
    assert (observed.diff() >= 0).all() and 0.0 < observed[0] < observed[-1] < 1.0


def test_calibration_curve_rejects_bad_levels():
    g = _generator(10)
    pred = _prediction("mixture", g, b=4, c=1, s=5)
    y = _own_draw(pred, g)
    for bad in ([], [0.0, 0.5], [0.5, 1.0], [[0.5]]):
        with pytest.raises(ValueError, match="levels"):
            calibration_curve(pred, y, bad)


@pytest.mark.parametrize("kind", ["independent", "low-rank"])
def test_function_coverage_of_draws_from_the_prediction_itself(kind):
    alpha, b = 0.1, 1000
    g = _generator(11)
    pred = _prediction(kind, g, b=b, c=2, s=8)
    y = _own_draw(pred, g)
    scores = evaluate(pred, y, alpha, n_samples=100, generator=g)
    assert abs(scores["function_coverage"] - (1.0 - alpha)) <= 4.0 * math.sqrt(alpha * (1.0 - alpha) / b)
    assert scores["coverage"] > 0.85  # the band is much wider than the pointwise intervals


def test_auroc_on_known_cases():
    assert auroc([0.0, 1.0, 2.0], [3.0, 4.0]) == 1.0
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0, 2.0])) == 0.0
    assert auroc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    assert auroc([0.0, 2.0], [1.0, 2.0]) == pytest.approx((1 + 0 + 1 + 0.5) / 4)


def test_auroc_matches_a_brute_force_pair_count():
    g = _generator(12)
    negatives = torch.randint(0, 20, (37,), generator=g).to(F64)  # many ties
    positives = torch.randint(5, 25, (23,), generator=g).to(F64)
    pairs = (positives[:, None] > negatives[None, :]).to(F64) + 0.5 * (positives[:, None] == negatives[None, :]).to(F64)
    assert auroc(negatives, positives) == pytest.approx(pairs.mean().item(), rel=1e-14)


def test_ood_auroc_scores_the_mean_predicted_variance():
    g = _generator(13)
    pred = _prediction("independent", g, b=30, c=1, s=6)
    y = _own_draw(pred, g)
    wide = GaussianPrediction(torch.zeros(20, 1, 9, dtype=F64), 5.0 + torch.rand(20, 1, 9, generator=g, dtype=F64))
    assert evaluate(pred, y, ood=wide, n_samples=4, generator=g)["ood_auroc"] == 1.0
    overlapping = GaussianPrediction(wide.mean, 0.2 + torch.rand(20, 1, 9, generator=g, dtype=F64))
    expected = auroc(pred.variance.flatten(1).mean(1), overlapping.variance.flatten(1).mean(1))
    assert 0.0 < expected < 1.0
    assert evaluate(pred, y, ood=overlapping, n_samples=4, generator=g)["ood_auroc"] == expected


def _bad_calls():
    g = _generator(14)
    pred = _prediction("independent", g, b=2, c=1, s=5)
    y = pred.mean.clone()
    nan = y.clone()
    nan[0, 0, 0] = float("nan")
    return [
        ("y", lambda: evaluate(pred, y[:1])),
        ("y", lambda: evaluate(pred, y[..., :4])),
        ("y", lambda: evaluate(pred, nan)),
        ("y", lambda: energy_score(pred, y[None])),
        ("y", lambda: calibration_curve(pred, y.flatten())),
        ("pred", lambda: evaluate(y, y)),
        ("alpha", lambda: evaluate(pred, y, 0.0)),
        ("alpha", lambda: evaluate(pred, y, 1.0)),
        ("n_samples", lambda: evaluate(pred, y, n_samples=1)),
        ("n_samples", lambda: energy_score(pred, y, n_samples=1)),
        ("ood", lambda: evaluate(pred, y, ood=y)),
        ("negatives", lambda: auroc([], [1.0])),
        ("negatives", lambda: auroc([[1.0]], [1.0])),
        ("positives", lambda: auroc([1.0], [float("nan")])),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_arguments_raise_value_errors_naming_them(index):
    name, call = _bad_calls()[index]
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_predictions_are_refused_instead_of_scored(bad):
    """A NaN variance used to score coverage 0.0 and calibration error 0.5, like a real but bad method."""
    mean, ones = torch.zeros(2, 1, 4), torch.ones(2, 1, 4)
    poisoned = ones.clone()
    poisoned[0, 0, 1] = bad
    with pytest.raises(ValueError, match="diagonal: expected finite non-negative"):
        GaussianPrediction(mean, poisoned)
    with pytest.raises(ValueError, match="noise: expected finite non-negative"):
        MixturePrediction(torch.zeros(3, 2, 1, 4), noise=poisoned)
    if bad != -1.0:
        with pytest.raises(ValueError, match="mean: expected finite"):
            GaussianPrediction(mean + poisoned - 1, ones)
        with pytest.raises(ValueError, match="centers: expected finite"):
            MixturePrediction((mean + poisoned - 1).expand(3, 2, 1, 4))
