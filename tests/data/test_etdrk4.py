"""ETDRK4 core: coefficients against closed forms, exact linear flow, fourth order, dealiasing, output times, checks."""

import math
import threading

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


def _zero(w: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(w)


@pytest.mark.parametrize("degree", [2, 7])  # bands of 6 and 2 of the 9 modes: those above follow L alone
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_flow_is_exact_at_every_output_time(dtype, degree):
    s = 16
    u0 = torch.randn(3, s, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    k = etdrk4.wavenumbers(s)
    linear = -0.01 * k**2 + 0.3
    times = [0.0, 0.3, 0.35, 1.0, 2.5]
    out = etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(_zero, degree), times, dt=0.1)
    assert out.shape == (3, len(times), s) and out.dtype == dtype
    assert torch.equal(out[:, 0], u0)
    exact = torch.stack(
        [torch.fft.irfft(torch.exp(linear * t) * torch.fft.rfft(u0.double()), n=s) for t in times], dim=1
    )
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=tol * exact.abs().max().item())


def test_bad_nonlinearities_and_thresholds_are_rejected():
    u0 = torch.zeros(1, 16, dtype=torch.float64)
    linear = -etdrk4.wavenumbers(16) ** 2
    match = r"nonlinear must be an etdrk4.Nonlinearity\(pointwise, degree, multiplier\), got function"
    with pytest.raises(TypeError, match=match):
        etdrk4.integrate(u0, linear, _zero, [0.1], 0.05)
    with pytest.raises(ValueError, match="nonlinear.degree must be an int >= 2"):
        etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(_zero, 1), [0.1], 0.05)
    with pytest.raises(ValueError, match=r"nonlinear.multiplier must have shape \(s // 2 \+ 1,\) = \(9,\), got \(8,\)"):
        etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(_zero, 2, torch.ones(8, dtype=torch.complex128)), [0.1], 0.05)
    halves = etdrk4.Nonlinearity(lambda w: w[:, ::2], 2)  # returns half the grid values
    with pytest.raises(ValueError, match=r"nonlinear.pointwise must return the shape of the grid values it is given, "
                                         r"\(1, 16\); got \(1, 8\)"):
        etdrk4.integrate(u0, linear, halves, [0.1], 0.05)
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError, match="trim_below"):
            etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(_zero, 2), [0.1], 0.05, trim_below=bad)


def _etdrk4_on_the_masked_spectrum(u0, linear, pointwise, multiplier, degree, times, dt):
    """ETDRK4 written out on the whole unnormalised spectrum, Orszag's mask applied to N's input and output: no
    bands, grids or normalisation of the integrator's."""
    s = u0.shape[-1]
    keep = etdrk4.dealias_mask(s, degree).to(torch.complex128)

    def n(v):
        return multiplier * torch.fft.rfft(pointwise(torch.fft.irfft(v * keep, n=s))) * keep

    v, now, out = torch.fft.rfft(u0), 0.0, []
    for target in times:
        steps = etdrk4.step_count(target - now, dt)
        c = etdrk4.coefficients(linear, (target - now) / steps, torch.float64)
        for _ in range(steps):
            nv = n(v)
            a = c.exp_half * v + c.q * nv
            na = n(a)
            nb = n(c.exp_half * v + c.q * na)
            nc = n(c.exp_half * a + c.q * (2 * nb - nv))
            v = c.exp * v + c.f1 * nv + 2 * c.f2 * (na + nb) + c.f3 * nc
        out.append(torch.fft.irfft(v, n=s))
        now = target
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("s", [48, 49])
def test_band_stages_equal_the_masked_full_spectrum_scheme(s):
    # Kuramoto–Sivashinsky (2/3 rule) and Allen–Cahn (1/2 rule) through their solvers, against ETDRK4 on the whole
    # spectrum with Orszag's mask applied to N's input and output: a wrong band, normalisation, or modes above the
    # band not advanced by e^{hL}, would differ at O(1).
    from probneural.data import allen_cahn, kuramoto_sivashinsky

    generator = torch.Generator().manual_seed(4)
    u0 = torch.randn(3, s, generator=generator, dtype=torch.float64)
    u0 = torch.fft.irfft(torch.fft.rfft(u0) * torch.exp(-0.05 * torch.arange(s // 2 + 1)), n=s)  # smooth-ish
    length, q = 22.0, etdrk4.wavenumbers(s) / 22.0
    expected = _etdrk4_on_the_masked_spectrum(u0, q**2 - q**4, torch.square, -0.5j * q, 2, [0.5, 1.0], 0.02)
    got = kuramoto_sivashinsky.solve(u0, [0.5, 1.0], length=length, dt=0.02)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)

    epsilon, k = 0.05, etdrk4.wavenumbers(s)
    expected = _etdrk4_on_the_masked_spectrum(u0, 1 - epsilon**2 * k**2, lambda w: -w * w * w, 1, 3, [0.5, 1.0], 0.02)
    got = allen_cahn.solve(u0, [0.5, 1.0], epsilon=epsilon, dt=0.02)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (got[:, -1] - u0).abs().max() > 0.1  # the nonlinear flow moved the data


def _grids_used(monkeypatch) -> list[int]:
    """Record the grid of every step :func:`etdrk4.integrate` takes in the calling thread (redone steps included;
    a step in parts runs its part 0 there)."""
    grids = []
    step = etdrk4._step
    caller = threading.current_thread()

    def spy(v, grid, c, nonlinear):
        if threading.current_thread() is caller:
            grids.append(grid)
        return step(v, grid, c, nonlinear)

    monkeypatch.setattr(etdrk4, "_step", spy)
    return grids


@pytest.mark.parametrize(
    ("viscosity", "spectrum", "coarsest", "regrown", "dtype", "threads"),
    [
        # rough data, then a few dozen modes: the grid shrinks from 1024 to 128 or less
        (0.1, "grf", 128, False, torch.float64, 1),
        (0.1, "grf", 128, False, torch.float32, 1),
        (0.1, "grf", 128, False, torch.float64, 2),  # several steps per run on the finest grid, in parts
        # one mode, then a steepening front: the grid grows back, steps are redone (also in parts on threads)
        (1e-3, "sine", 16, True, torch.float64, 1),
        (1e-3, "sine", 16, True, torch.float64, 2),
    ],
)
def test_trimmed_grids_give_the_whole_grid_solution(
    viscosity, spectrum, coarsest, regrown, dtype, threads, monkeypatch, set_threads
):
    # Burgers at s = 1024 against the masked whole-spectrum scheme (float64): trimming must agree to rounding, on
    # data whose spectrum narrows and on data whose spectrum widens faster than one grid per step. Two output
    # times of different step lengths.
    from probneural.data.grf import grf_periodic

    s, times, dt = 1024, [0.013, 0.2], 2.5e-3
    if spectrum == "grf":
        u0 = grf_periodic(3, s, alpha=2.0, tau=5.0, sigma=25.0, seed=1).double()
    else:
        u0 = torch.sin(2 * math.pi * torch.arange(s, dtype=torch.float64) / s).expand(2, s)
    k = etdrk4.wavenumbers(s)
    linear, nonlinear = -viscosity * k**2, etdrk4.quadratic_advection(k, dtype)
    expected = _etdrk4_on_the_masked_spectrum(u0, linear, torch.square, -0.5j * k, 2, times, dt)
    set_threads(threads)
    monkeypatch.setattr(etdrk4, "_THREADED_POINTS", 1 if threads > 1 else etdrk4._THREADED_POINTS)  # every step
    grids = _grids_used(monkeypatch)
    got = etdrk4.integrate(u0.to(dtype), linear, nonlinear, times, dt, trim_below=torch.finfo(dtype).eps)
    assert min(grids) <= coarsest and (grids[0] == s) == (spectrum == "grf")  # rough data start on the finest grid
    steps = etdrk4.step_count(times[0], dt) + etdrk4.step_count(times[1] - times[0], dt)
    assert (len(grids) > steps) == regrown  # steps redone on a finer grid
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=(1e-14 if dtype == torch.float64 else 2e-6) * scale)


@pytest.mark.parametrize("s", [384, 385])
def test_trimming_with_a_cubic_term_on_a_ladder_of_odd_ends(s, monkeypatch):
    # Allen–Cahn's cubic (1/2 rule) through integrate at s = 384 (grids 6, 12, ..., 192, 384), smooth data whose
    # spectrum widens as interfaces form; an odd grid (385) has no coarser one and runs whole.
    k = etdrk4.wavenumbers(s)
    coefficients = torch.randn(2, s // 2 + 1, generator=torch.Generator().manual_seed(6), dtype=torch.complex128)
    u0 = torch.fft.irfft(coefficients * torch.exp(-1.0 * torch.arange(s // 2 + 1)), n=s, norm="forward")
    linear = 1 - 0.2**2 * k**2
    expected = _etdrk4_on_the_masked_spectrum(u0, linear, lambda w: -w * w * w, 1, 3, [0.5, 3.0], 0.02)
    grids = _grids_used(monkeypatch)
    got = etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(lambda w: w.pow_(3).neg_(), 3), [0.5, 3.0], 0.02,
                           trim_below=1e-15)
    assert (min(grids) <= 192) == (s == 384) and max(grids) <= s
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)
    assert (got[:, -1] - u0).abs().max() > 0.1  # the nonlinear flow moved the data


def test_trimming_keeps_zero_samples_zero_and_tiny_float32_fields():
    # A zero sample beside a rough one, and float32 fields of amplitude 1e-20 (whose squared moduli would underflow).
    from probneural.data.grf import grf_periodic

    s = 256
    k = etdrk4.wavenumbers(s)
    linear = -0.1 * k**2
    rough = grf_periodic(1, s, alpha=2.0, tau=5.0, sigma=25.0, seed=2).double()
    u0 = torch.cat([torch.zeros(1, s, dtype=torch.float64), rough])
    for dtype, scale in ((torch.float64, 1.0), (torch.float32, 1e-20)):
        x = (u0 * scale).to(dtype)
        nonlinear = etdrk4.quadratic_advection(k, dtype)
        whole = etdrk4.integrate(x, linear, nonlinear, [0.05, 0.3], 2.5e-3)
        got = etdrk4.integrate(x, linear, nonlinear, [0.05, 0.3], 2.5e-3, trim_below=torch.finfo(dtype).eps)
        assert torch.equal(got[0], torch.zeros_like(got[0]))
        torch.testing.assert_close(got, whole, rtol=0, atol=2e-6 * whole.abs().max().item())


def test_the_first_look_on_the_finest_grid_never_picks_a_coarser_grid_than_the_full_pass():
    # _highest_mode with the floor may only answer "stay on the finest grid"; otherwise it agrees with the full pass.
    s, degree = 512, 2
    ladder = etdrk4._ladder(s)
    floor = -(-etdrk4.band_size(ladder[-2], degree) // degree)
    generator = torch.Generator().manual_seed(7)
    for rate in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
        modes = torch.arange(s // 2 + 1)
        spectrum = torch.randn(3, s // 2 + 1, generator=generator, dtype=torch.complex128) * torch.exp(-rate * modes)
        band = etdrk4.band_size(s, degree)
        state = etdrk4._State(s, spectrum[:, :band], spectrum[:, band:])
        full = etdrk4._coarsest_grid(etdrk4._highest_mode(state, 1e-15), ladder, degree)
        glanced = etdrk4._coarsest_grid(etdrk4._highest_mode(state, 1e-15, floor), ladder, degree)
        assert glanced == full or glanced == s
    # a sample whose spectrum overflowed or holds NaN keeps the finest grid (its blow-up is reported there)
    for bad in (math.inf, math.nan):
        spectrum = torch.zeros(2, s // 2 + 1, dtype=torch.complex128)
        spectrum[:, 1] = 1.0
        spectrum[1, 3] = bad
        state = etdrk4._State(s, spectrum[:, :band], spectrum[:, band:])
        assert etdrk4._coarsest_grid(etdrk4._highest_mode(state, 1e-15), ladder, degree) == s


def test_trimming_refuses_a_linear_part_that_grows_above_the_coarsest_band():
    # Kuramoto–Sivashinsky's q² − q⁴ grows with q up to 1/√2: a dropped mode could outgrow the kept ones.
    s = 64
    q = etdrk4.wavenumbers(s) / 22.0
    u0 = torch.zeros(2, s, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"trim_below needs a linear part .* mode 2 has Re L"):
        etdrk4.integrate(u0, q**2 - q**4, etdrk4.quadratic_advection(q, torch.float64), [0.1], 0.02, trim_below=1e-15)


def test_the_galerkin_product_does_not_depend_on_the_grid():
    # What trimming rests on: N of a band-limited state computed on a coarse grid equals N computed on the finest one,
    # on the coarse grid's band.
    s, coarse = 64, 16
    nonlinear = etdrk4.quadratic_advection(etdrk4.wavenumbers(s), torch.float64)
    v = torch.randn(2, nonlinear.band(coarse), generator=torch.Generator().manual_seed(5), dtype=torch.complex128)
    v[:, 0] = v[:, 0].real  # a real field's mean
    padded = torch.zeros(2, nonlinear.band(s), dtype=v.dtype)
    padded[:, : v.shape[1]] = v
    on_finest = nonlinear.on_grid(padded, s)[:, : v.shape[1]]
    scale = on_finest.abs().max().item()
    torch.testing.assert_close(nonlinear.on_grid(v, coarse), on_finest, rtol=0, atol=1e-15 * scale)


def test_fourth_order_on_a_scalar_bernoulli_equation():
    # Uniform fields: u' = λu + u², exactly 1/u = (1/u0 + 1/λ) e^{−λt} − 1/λ.
    s, lam, t = 8, -5.0, 1.0
    u0 = torch.tensor([[0.5], [0.9]], dtype=torch.float64).expand(2, s)

    linear = torch.full((s // 2 + 1,), lam, dtype=torch.float64)
    exact = 1 / ((1 / u0[:, 0] + 1 / lam) * math.exp(-lam * t) - 1 / lam)
    errors = [
        (etdrk4.integrate(u0, linear, etdrk4.Nonlinearity(torch.Tensor.square_, 2), [t], dt)[:, -1, 0] - exact)
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
    v = torch.fft.rfft(u, norm="forward")
    keep = etdrk4.dealias_mask(s)
    padded = torch.zeros(2, fine // 2 + 1, dtype=v.dtype)
    padded[:, : s // 2 + 1] = v * keep
    w = torch.fft.irfft(padded, n=fine, norm="forward")
    q = etdrk4.wavenumbers(fine)
    exact = (-0.5j * q * torch.fft.rfft(w * w, norm="forward"))[:, : s // 2 + 1] * keep
    nonlinearity = etdrk4.quadratic_advection(etdrk4.wavenumbers(s), torch.float64)
    band = nonlinearity.band(s)
    assert band == int(keep.sum()) == 8
    # it reads only the band of its input and returns the band of N(u), which is zero above it
    got = nonlinearity.on_grid(v[:, :band], s)
    torch.testing.assert_close(got, exact[:, :band], rtol=0, atol=1e-13)
    assert exact[:, band:].abs().max() == 0


def test_batch_is_per_sample():
    s = 32
    u0 = torch.randn(5, s, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    k = etdrk4.wavenumbers(s)
    nonlinear = etdrk4.quadratic_advection(k, torch.float64)
    batched = etdrk4.integrate(u0, -0.05 * k**2, nonlinear, [0.2, 0.5], 0.01)
    for i in range(5):
        single = etdrk4.integrate(u0[i : i + 1], -0.05 * k**2, nonlinear, [0.2, 0.5], 0.01)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=0, atol=1e-14)


@pytest.mark.parametrize("trim", [None, 1e-15])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_steps_in_parts_on_threads_equal_the_whole_batch(threads, trim, set_threads, monkeypatch):
    # Steps of >= 2^15 batch x grid points run in one part per thread (here 5 samples on 8192 points into 1, 2 or 3
    # parts), several at a time on the finest grid; the small ones, and every step without a team, on the whole
    # batch in the calling thread.
    from probneural.data.grf import grf_periodic

    s = 8192
    u0 = grf_periodic(5, s, alpha=2.0, tau=5.0, sigma=25.0, seed=3).double()
    k = etdrk4.wavenumbers(s)
    linear, nonlinear = -0.1 * k**2, etdrk4.quadratic_advection(k, torch.float64)
    whole = etdrk4._march(u0, linear, nonlinear, [0.005, 0.02], 2.5e-3, trim, None)
    parts = []
    team_map = etdrk4.ThreadTeam.map
    monkeypatch.setattr(etdrk4.ThreadTeam, "map", lambda team, f, p: parts.append(len(p)) or team_map(team, f, p))
    set_threads(threads)
    out = etdrk4.integrate(u0, linear, nonlinear, [0.005, 0.02], 2.5e-3, trim_below=trim)
    assert torch.get_num_threads() == threads  # restored
    assert set(parts) == ({threads} if threads > 1 else set())
    # untrimmed, the parts run each output interval whole; trimmed, the first two steps (checked one at a time)
    # need 8192 points, then 4096 points are below the threshold
    assert len(parts) == 2 or threads == 1
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-14)


def test_steps_in_parts_run_under_inference_mode_and_autograd(monkeypatch, set_threads):
    s = 64
    k = etdrk4.wavenumbers(s)
    linear, nonlinear = -0.1 * k**2, etdrk4.quadratic_advection(k, torch.float64)
    u0 = torch.randn(3, s, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def solve(x):
        return etdrk4.integrate(x, linear, nonlinear, [0.02, 0.05], 5e-3, trim_below=1e-15)

    expected = solve(u0)
    leaf = u0.clone().requires_grad_()
    solve(leaf).square().sum().backward()
    set_threads(2)
    monkeypatch.setattr(etdrk4, "_THREADED_POINTS", 1)  # every step in parts
    with torch.inference_mode():
        torch.testing.assert_close(solve(u0), expected, rtol=0, atol=1e-14)
    threaded = u0.clone().requires_grad_()
    solve(threaded).square().sum().backward()
    torch.testing.assert_close(threaded.grad, leaf.grad, rtol=0, atol=1e-12)


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
    out = etdrk4.integrate(u0, -0.1 * k**2, etdrk4.quadratic_advection(k, torch.float64), [0.1], 0.05)
    assert out.device.type == device.type and out.dtype == torch.float64


def test_a_diverging_solution_is_an_error_not_nan():
    from probneural.data import burgers

    x = torch.arange(64, dtype=torch.float64) / 64
    with pytest.raises(RuntimeError, match=r"non-finite before t = 0.5 .* reduce dt"):
        burgers.solve(50 * torch.sin(2 * math.pi * x)[None], 1e-3, 0.5)
