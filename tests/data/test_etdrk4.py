"""ETDRK4 core: coefficients against closed forms, exact linear flow, fourth order, dealiasing, output times, checks."""

import math

import numpy as np
import pytest
import torch

from probneural.data import etdrk4


def _closed_forms(z: np.ndarray, h: float) -> list[np.ndarray]:
    """Kassam & Trefethen's coefficients by their formulas (accurate away from z = hL = 0)."""
    e = np.exp(z)
    return [
        e,
        np.exp(z / 2),
        h * (np.exp(z / 2) - 1) / z,
        h * (-4 - z + e * (4 - 3 * z + z * z)) / z**3,
        h * (2 + z + e * (z - 2)) / z**3,
        h * (-4 - 3 * z - z * z + e * (4 - z)) / z**3,
    ]


def test_coefficients_match_closed_forms_and_limits():
    h = 0.1
    linear = torch.tensor([-3e4, -500.0, -20.0, -3.0, 2.0, 0.0], dtype=torch.float64)
    c = etdrk4.coefficients(linear, h, torch.float64)
    assert all(v.dtype == torch.complex128 for v in c)
    z = h * linear[:-1].numpy()
    for got, want in zip(c, _closed_forms(z, h)):
        np.testing.assert_allclose(got[:-1].real.numpy(), want, rtol=1e-12, atol=1e-300)
        assert got.imag.abs().max() < 1e-15
    # hL = 0: E = E₂ = 1, Q = h/2, f1 = f2 = f3 = h/6 (the φ-function limits), where the formulas cancel.
    np.testing.assert_allclose([v[-1].real.item() for v in c], [1, 1, h / 2, h / 6, h / 6, h / 6], rtol=1e-13)


def test_complex_linear_part_and_negligible_entries():
    h = 0.05
    linear = torch.tensor([2j - 1.0, -40j, -1e5 + 3j], dtype=torch.complex128)
    c = etdrk4.coefficients(linear, h, torch.float32)
    assert c.exp.dtype == torch.complex64
    z = (h * linear).numpy()
    for got, want in zip(c, _closed_forms(z[:2], h)):
        np.testing.assert_allclose(got[:2].numpy(), want, rtol=2e-6)
    # e^{hL} = e^{-5000} is far below sqrt(tiny): stored as an exact zero, not a subnormal.
    assert c.exp[2] == 0 and c.exp_half[2] == 0


def test_overflowing_linear_part_is_rejected():
    with pytest.raises(ValueError, match="linear must keep exp"):
        etdrk4.coefficients(torch.tensor([0.0, 1e4], dtype=torch.float64), 1.0, torch.float64)


def _zero(v: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(v)


@pytest.mark.parametrize("band", [1, 9])  # the modes above the band follow L alone
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_flow_is_exact_at_every_output_time(dtype, band):
    s = 16
    u0 = torch.randn(3, s, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    k = etdrk4.wavenumbers(s)
    linear = -0.01 * k**2 + 0.3
    times = [0.0, 0.3, 0.35, 1.0, 2.5]
    out = etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(_zero, band), times, dt=0.1)
    assert out.shape == (3, len(times), s) and out.dtype == dtype
    assert torch.equal(out[:, 0], u0)
    exact = torch.stack(
        [torch.fft.irfft(torch.exp(linear * t) * torch.fft.rfft(u0.double()), n=s) for t in times], dim=1
    )
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=tol * exact.abs().max().item())


@pytest.mark.parametrize("band", [0, 10])
def test_band_outside_the_spectrum_is_rejected(band):
    u0 = torch.zeros(2, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"nonlinear.band must be in \[1, s // 2 \+ 1 = 9\], got {band}"):
        etdrk4.integrate(u0, etdrk4.wavenumbers(16), etdrk4.Nonlinearity(_zero, band), [0.1], 0.05)


def test_plain_callables_and_wrong_band_shapes_are_rejected():
    u0 = torch.zeros(1, 16, dtype=torch.float64)
    linear = -etdrk4.wavenumbers(16) ** 2
    with pytest.raises(TypeError, match=r"nonlinear must be an etdrk4.Nonlinearity\(apply, band\), got function"):
        etdrk4.integrate(u0, linear, _zero, [0.1], 0.05)
    full = etdrk4.Nonlinearity(lambda v: torch.zeros(v.shape[0], 9, dtype=v.dtype), 1)  # returns all 9 modes
    with pytest.raises(ValueError, match=r"nonlinear.apply must return the shape of the band it is given, \(1, 1\); "
                                         r"got \(1, 9\)"):
        etdrk4.integrate(u0, linear, full, [0.1], 0.05)


def _masked_full_spectrum(resolution: int, degree: int, pointwise) -> etdrk4.Nonlinearity:
    """The dealiased N written on the whole spectrum (mask in, mask out): no band arithmetic."""
    keep = etdrk4.dealias_mask(resolution, degree).to(torch.complex128)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(pointwise(torch.fft.irfft(v * keep, n=resolution), v)) * keep

    return etdrk4.Nonlinearity(apply, resolution // 2 + 1)


@pytest.mark.parametrize("s", [48, 49])
def test_band_stages_equal_the_masked_full_spectrum_scheme(s):
    # Kuramoto–Sivashinsky (2/3 rule) and Allen–Cahn (1/2 rule) through their solvers, against ETDRK4 on the whole
    # spectrum with Orszag's mask applied to N's input and output: a wrong band, or modes above it not advanced by
    # e^{hL}, would differ at O(1).
    from probneural.data import allen_cahn, kuramoto_sivashinsky

    generator = torch.Generator().manual_seed(4)
    u0 = torch.randn(3, s, generator=generator, dtype=torch.float64)
    u0 = torch.fft.irfft(torch.fft.rfft(u0) * torch.exp(-0.05 * torch.arange(s // 2 + 1)), n=s)  # smooth-ish
    length, q = 22.0, etdrk4.wavenumbers(s) / 22.0

    def ks_term(w, v):
        return torch.fft.irfft(-0.5j * q * torch.fft.rfft(w * w) * etdrk4.dealias_mask(s), n=s)

    expected = etdrk4.integrate(u0, q**2 - q**4, _masked_full_spectrum(s, 2, ks_term), [0.5, 1.0], 0.02)
    got = kuramoto_sivashinsky.solve(u0, [0.5, 1.0], length=length, dt=0.02)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)

    epsilon, k = 0.05, etdrk4.wavenumbers(s)
    expected = etdrk4.integrate(u0, 1 - epsilon**2 * k**2, _masked_full_spectrum(s, 3, lambda w, v: -w * w * w),
                                [0.5, 1.0], 0.02)
    got = allen_cahn.solve(u0, [0.5, 1.0], epsilon=epsilon, dt=0.02)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (got[:, -1] - u0).abs().max() > 0.1  # the nonlinear flow moved the data


def test_fourth_order_on_a_scalar_bernoulli_equation():
    # Uniform fields: u' = λu + u², exactly 1/u = (1/u0 + 1/λ) e^{−λt} − 1/λ.
    s, lam, t = 8, -5.0, 1.0
    u0 = torch.tensor([[0.5], [0.9]], dtype=torch.float64).expand(2, s)

    def square(v: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(torch.fft.irfft(v, n=s) ** 2)

    linear = torch.full((s // 2 + 1,), lam, dtype=torch.float64)
    exact = 1 / ((1 / u0[:, 0] + 1 / lam) * math.exp(-lam * t) - 1 / lam)
    errors = [
        (etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(square, s // 2 + 1), [t], dt)[:, -1, 0] - exact)
        .abs().max().item()
        for dt in (0.2, 0.1, 0.05, 0.025)
    ]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(3.8 < p < 4.2 for p in orders), (errors, orders)


def test_dealias_masks():
    assert etdrk4.dealias_mask(16).nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    for s in range(1, 40):
        for degree in (2, 3, 4):
            assert etdrk4.band_size(s, degree) == int(etdrk4.dealias_mask(s, degree).sum())
    assert etdrk4.dealias_mask(16, 3).nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert etdrk4.dealias_mask(4).nonzero().flatten().tolist() == [0, 1]
    with pytest.raises(ValueError, match="degree"):
        etdrk4.dealias_mask(16, 1)


def test_quadratic_advection_is_the_galerkin_truncation():
    # N(v) equals −(w²/2)_x of w = band-limited part of u, computed without aliasing on a 4x finer grid, truncated.
    s, fine = 24, 96
    u = torch.randn(2, s, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = torch.fft.rfft(u)
    keep = etdrk4.dealias_mask(s)
    padded = torch.zeros(2, fine // 2 + 1, dtype=v.dtype)
    padded[:, : s // 2 + 1] = v * keep
    w = torch.fft.irfft(padded, n=fine) * (fine / s)
    q = etdrk4.wavenumbers(fine)
    exact = (-0.5j * q * torch.fft.rfft(w * w))[:, : s // 2 + 1] * (s / fine) * keep
    nonlinearity = etdrk4.quadratic_advection(etdrk4.wavenumbers(s), s, torch.float64)
    assert nonlinearity.band == int(keep.sum()) == 8
    # it reads only the band of its input and returns the band of N(u), which is zero above it
    got = nonlinearity.apply(v[:, : nonlinearity.band])
    torch.testing.assert_close(got, exact[:, : nonlinearity.band], rtol=0, atol=1e-12)
    assert exact[:, nonlinearity.band :].abs().max() == 0


def test_batch_is_per_sample():
    s = 32
    u0 = torch.randn(5, s, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    k = etdrk4.wavenumbers(s)
    nonlinear = etdrk4.quadratic_advection(k, s, torch.float64)
    batched = etdrk4.integrate(u0, -0.05 * k**2, nonlinear, [0.2, 0.5], 0.01)
    for i in range(5):
        single = etdrk4.integrate(u0[i : i + 1], -0.05 * k**2, nonlinear, [0.2, 0.5], 0.01)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=0, atol=1e-14)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_parts_on_threads_equal_the_whole_batch(threads, set_threads):
    # the batch is cut into one part per thread (here 5 samples into 1, 2 or 3 parts)
    s = 48
    u0 = torch.randn(5, s, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k = etdrk4.wavenumbers(s)
    nonlinear = etdrk4.quadratic_advection(k, s, torch.float64)
    whole = etdrk4._integrate(u0, -0.05 * k**2, nonlinear, [0.1, 0.3], 0.01, {})
    set_threads(threads)
    out = etdrk4.integrate(u0, -0.05 * k**2, nonlinear, [0.1, 0.3], 0.01)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-14)


def test_step_count_hits_output_times():
    assert etdrk4.step_count(1.0, 0.1) == 10
    assert etdrk4.step_count(0.3, 0.1) == 3
    assert etdrk4.step_count(0.35, 0.1) == 4
    assert etdrk4.step_count(1e-9, 0.1) == 1


def test_check_times():
    assert etdrk4.check_times(1) == ([1.0], True)
    assert etdrk4.check_times(torch.tensor(0.5)) == ([0.5], True)
    assert etdrk4.check_times([0, 0.5, 2]) == ([0.0, 0.5, 2.0], False)
    assert etdrk4.check_times(np.array([0.1, 0.2])) == ([0.1, 0.2], False)
    for bad, match in [
        ([0.5, 0.2], "strictly increasing"),
        ([0.5, 0.5], "strictly increasing"),
        (-1.0, "t must be >= 0"),
        (float("nan"), "finite"),
        ([], "at least one"),
        (torch.zeros(2, 2), "1-D"),
        ("1.0", "finite real number"),
        (True, "finite real number"),
    ]:
        with pytest.raises(ValueError, match=match):
            etdrk4.check_times(bad)


def test_check_field():
    field, unbatched = etdrk4.check_field(torch.arange(8))
    assert field.shape == (1, 8) and unbatched and field.dtype == torch.get_default_dtype()
    for bad, match in [
        (torch.zeros(2, 3, 8), r"shape \(B, s\) or \(s,\)"),
        (torch.zeros(2, 3), "s >= 4"),
        (torch.zeros(0, 8), "at least one sample"),
        (torch.tensor([0.0, float("nan"), 0.0, 0.0]), "NaN or Inf"),
        (torch.zeros(8, dtype=torch.complex64), "real"),
        (torch.zeros(8, dtype=torch.float16), "float32 or float64"),
    ]:
        with pytest.raises(ValueError, match=match):
            etdrk4.check_field(bad)


def test_subsampling_helpers():
    assert etdrk4.check_subsampling(64, 256) == 4
    with pytest.raises(ValueError, match=r"multiple of resolution=64.*nearest valid: 192, 256"):
        etdrk4.check_subsampling(64, 200)
    with pytest.raises(ValueError, match="solve_resolution must be an int >= 64"):
        etdrk4.check_subsampling(64, 32)
    assert etdrk4.smallest_multiple(64, 176.0) == 192
    assert etdrk4.smallest_multiple(256, 176.0) == 256
    (nodes,) = etdrk4.grid(4, torch.float32)
    assert nodes.tolist() == [0.0, 0.25, 0.5, 0.75] and nodes.dtype == torch.float32


def test_runs_on_the_device_of_the_data(device):
    s = 16
    u0 = torch.randn(2, s, dtype=torch.float64, device=device)
    k = etdrk4.wavenumbers(s, device=device)
    out = etdrk4.integrate(u0, -0.1 * k**2, etdrk4.quadratic_advection(k, s, torch.float64), [0.1], 0.05)
    assert out.device.type == device.type and out.dtype == torch.float64


def test_a_diverging_solution_is_an_error_not_nan():
    from probneural.data import burgers

    x = torch.arange(64, dtype=torch.float64) / 64
    with pytest.raises(RuntimeError, match=r"non-finite before t = 0.5 .* reduce dt"):
        burgers.solve(50 * torch.sin(2 * math.pi * x)[None], 1e-3, 0.5)
