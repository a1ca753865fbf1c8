"""Gaussian random fields: covariance against the analytic KL sum, reproducibility, periodic spectrum."""

import math

import pytest
import torch

from probneural.data.grf import grf_neumann, grf_periodic

N_SAMPLES = 16000


def _assert_covariance_matches(samples: torch.Tensor, covariance: torch.Tensor, z_max: float = 4.5) -> None:
    """Entry-wise z-scores of the (known zero-mean) empirical covariance stay below ``z_max``."""
    flat = samples.reshape(samples.shape[0], -1)
    empirical = flat.T @ flat / flat.shape[0]
    variance = torch.diagonal(covariance)
    standard_error = ((torch.outer(variance, variance) + covariance**2) / flat.shape[0]).sqrt()
    z = (empirical - covariance).abs() / standard_error
    assert z.max() < z_max, f"max z-score {z.max():.2f}"


def _kron_all(factors: list[torch.Tensor]) -> torch.Tensor:
    out = factors[0]
    for factor in factors[1:]:
        out = torch.kron(out, factor)
    return out


def _neumann_covariance(s: int, dim: int, alpha: float, tau: float) -> torch.Tensor:
    """``Σ_{k≠0} λ_k φ_k(x) φ_k(x')`` with ``φ_k = Π_j c_{k_j} cos(π k_j x_j)``, written out independently."""
    x = torch.linspace(0, 1, s, dtype=torch.float64)
    sigma2 = tau ** (2 * alpha - dim)
    covariance = torch.zeros(s**dim, s**dim, dtype=torch.float64)
    for k in torch.cartesian_prod(*[torch.arange(s)] * dim).reshape(-1, dim).tolist():
        if not any(k):
            continue
        lam = sigma2 * (math.pi**2 * sum(kj * kj for kj in k) + tau**2) ** (-alpha)
        phi = _kron_all([torch.cos(math.pi * kj * x) * (math.sqrt(2) if kj else 1.0) for kj in k])
        covariance += lam * torch.outer(phi, phi)
    return covariance


def _periodic_covariance(s: int, dim: int, alpha: float, tau: float, sigma: float) -> torch.Tensor:
    """``Σ_{k≠0} λ_k cos(2π k·(x − x'))`` over the grid's wavenumbers, written out independently."""
    x = torch.arange(s, dtype=torch.float64) / s
    wavenumbers = [k if k <= s // 2 else k - s for k in range(s)]
    covariance = torch.zeros(s**dim, s**dim, dtype=torch.float64)
    for k in torch.cartesian_prod(*[torch.tensor(wavenumbers)] * dim).reshape(-1, dim).tolist():
        if not any(k):
            continue
        lam = sigma**2 * (4 * math.pi**2 * sum(kj * kj for kj in k) + tau**2) ** (-alpha)
        phase = _kron_all([torch.exp(2j * math.pi * kj * x) for kj in k])
        covariance += lam * torch.outer(phase, phase.conj()).real
    return covariance


@pytest.mark.parametrize(("dim", "s"), [(1, 9), (2, 5)])
def test_neumann_covariance_matches_kl_sum(dim, s):
    samples = grf_neumann(N_SAMPLES, s, dim=dim, alpha=2.0, tau=3.0, seed=1)
    _assert_covariance_matches(samples, _neumann_covariance(s, dim, 2.0, 3.0))


@pytest.mark.parametrize(("dim", "s"), [(1, 8), (1, 7), (2, 4)])
def test_periodic_covariance_matches_kl_sum(dim, s):
    samples = grf_periodic(N_SAMPLES, s, dim=dim, alpha=2.0, tau=5.0, sigma=25.0, seed=2)
    _assert_covariance_matches(samples, _periodic_covariance(s, dim, 2.0, 5.0, 25.0))


def test_periodic_mean_and_spectrum():
    s, alpha, tau, sigma = 32, 2.5, 7.0, 49.0
    samples = grf_periodic(2000, s, alpha=alpha, tau=tau, sigma=sigma, seed=3)
    torch.testing.assert_close(samples.mean(dim=1), torch.zeros(2000, dtype=torch.float64), rtol=0, atol=1e-12)
    power = torch.fft.rfft(samples, norm="ortho").abs().square().mean(dim=0)
    k = torch.arange(s // 2 + 1, dtype=torch.float64)
    expected = s * sigma**2 * (4 * math.pi**2 * k**2 + tau**2) ** (-alpha)
    # |û_k|² is λ_k s times a χ²₂/2 variable (relative sd 1; χ²₁, sd √2, at the Nyquist mode): the mean
    # of 2000 draws has a relative standard error of 2.2 % (3.2 % at Nyquist); within 4 of them
    standard_error = torch.full_like(power, (1 / 2000) ** 0.5)
    standard_error[-1] *= 2**0.5
    assert ((power[1:] / expected[1:] - 1).abs() < 4 * standard_error[1:]).all()
    assert power[0] < 1e-20


@pytest.mark.parametrize("sampler", [grf_neumann, lambda *a, **k: grf_periodic(*a, alpha=2.0, tau=3.0, **k)])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_samples_fixed_by_seed_not_by_chunking(sampler, dim, device):
    whole = sampler(5, 6, dim=dim, seed=4, device=device)
    parts = torch.cat(
        [sampler(2, 6, dim=dim, seed=4, device=device), sampler(3, 6, dim=dim, seed=4, start=2, device=device)]
    )
    assert whole.shape == (5, *[6] * dim) and whole.device.type == device.type
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-13)
    torch.testing.assert_close(whole, sampler(5, 6, dim=dim, seed=4, device=device), rtol=0, atol=0)
    assert not torch.allclose(whole, sampler(5, 6, dim=dim, seed=5, device=device))


def test_dtype_and_device_follow_arguments(device):
    field = grf_neumann(2, 9, dtype=torch.float32, device=device)
    assert field.dtype == torch.float32 and field.device.type == device.type
    torch.testing.assert_close(field, grf_neumann(2, 9).to(device=device, dtype=torch.float32))


def test_neumann_field_has_zero_mean():
    """The constant mode is dropped: the trapezoidal mean over the nodes vanishes."""
    field = grf_neumann(3, 33, dim=1, seed=6)
    weights = torch.ones(33, dtype=torch.float64)
    weights[[0, -1]] = 0.5
    torch.testing.assert_close(field @ weights / 32, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"resolution": 1}, "resolution"),
        ({"dim": 4}, "dim"),
        ({"alpha": -1.0}, "alpha"),
        ({"tau": 0.0}, "tau"),
        ({"sigma": -2.0}, "sigma"),
    ],
)
def test_invalid_arguments(kwargs, name):
    args = {"n": 2, "resolution": 8, **kwargs}
    with pytest.raises(ValueError, match=name):
        grf_neumann(args.pop("n"), args.pop("resolution"), **args)


def test_non_numeric_parameters_are_named():
    from probneural.data import darcy
    from probneural.data.grf import grf_neumann

    with pytest.raises(ValueError, match="alpha must be a finite real number"):
        grf_neumann(2, 9, alpha="2")
    with pytest.raises(ValueError, match="tau must be a finite real number"):
        grf_neumann(2, 9, tau=True)
    with pytest.raises(ValueError, match=r"contrast must be a pair \(high, low\), got 5"):
        darcy.generate(2, 9, contrast=5, progress=False)
    with pytest.raises(ValueError, match="rtol must be a finite real number"):
        darcy.solve(torch.ones(9, 9), rtol="a")
