"""Navier–Stokes solver and data: exact solutions, invariants, temporal order, batching, input checks, generation."""

import math
import platform

import pytest
import torch

import probneural
from probneural.data import fftw, navier_stokes, spectral_passes
from probneural.data.grf import grf_periodic

TWO_PI = 2 * math.pi


def _grid(s: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    nodes = torch.arange(s, dtype=dtype) / s
    return torch.meshgrid(nodes, nodes, indexing="ij")


def _random_vorticity(n: int, s: int, amplitude: float = 1.0, seed: int = 0) -> torch.Tensor:
    return amplitude * grf_periodic(n, s, dim=2, alpha=2.5, tau=7.0, sigma=7**1.5, seed=seed)


def _single_shell(s: int) -> torch.Tensor:
    """Two fields whose modes all have ``|k|² = 5``: ``w = −Δψ = 20π² ψ``, so ``u·∇w = 0`` exactly."""
    x, y = _grid(s)
    generator = torch.Generator().manual_seed(0)
    modes = ((1, 2), (2, 1), (2, -1), (1, -2))
    fields = []
    for _ in range(2):
        amplitude = torch.randn(4, generator=generator, dtype=torch.float64)
        phase = TWO_PI * torch.rand(4, generator=generator, dtype=torch.float64)
        waves = [torch.sin(TWO_PI * (kx * x + ky * y) + p) for p, (kx, ky) in zip(phase, modes)]
        fields.append(sum(a * wave for a, wave in zip(amplitude, waves)))
    return torch.stack(fields)


def _rk3_cn_factor(rate: float, h: float) -> float:
    """Amplification of a mode decaying at ``rate`` by one RK3–CN step ``h`` when advection vanishes."""
    factor = 1.0
    for fraction in (8 / 15, 2 / 15, 1 / 3):  # γ_k + ζ_k
        factor *= (1 - fraction * h * rate / 2) / (1 + fraction * h * rate / 2)
    return factor


def test_taylor_green_vortex_decays_exactly():
    # w = sin(2πx) sin(2πy) = 8π² ψ: the advection term vanishes, w(t) = w0 exp(−8π²νt).
    x, y = _grid(16)
    w0 = torch.stack([torch.sin(TWO_PI * x) * torch.sin(TWO_PI * y), 3 * torch.cos(TWO_PI * x) * torch.cos(TWO_PI * y)])
    viscosity, t, dt = 1e-3, 1.0, 0.0025
    rate = 8 * math.pi**2 * viscosity
    w = navier_stokes.solve(w0, viscosity, t, dt=dt)
    # The discrete solution is w0 times the scheme's amplification (the advection term is round-off) ...
    discrete = w0 * _rk3_cn_factor(rate, dt) ** round(t / dt)
    assert ((w - discrete).abs().max() / w0.abs().max()).item() < 1e-12
    # ... and the exact solution within the temporal error.
    error = ((w - w0 * math.exp(-rate * t)).abs().max() / w0.abs().max()).item()
    assert error < 1e-10, error
    # CFL steps (bounded by max_dt; the flow is slow) land exactly on every output time.
    times = [0.3, 0.7, 1.0]
    snapshots = navier_stokes.solve(w0, viscosity, times, max_dt=dt)
    for k, time in enumerate(times):
        error = ((snapshots[:, k] - w0 * math.exp(-rate * time)).abs().max() / w0.abs().max()).item()
        assert error < 1e-10, (time, error)


def test_single_shell_superposition_decays_exactly():
    w0 = _single_shell(24)
    viscosity, t, dt = 4e-4, 1.0, 0.0025
    rate = TWO_PI**2 * 5 * viscosity
    w = navier_stokes.solve(w0, viscosity, t, dt=dt)
    scale = w0.abs().max()
    assert ((w - w0 * _rk3_cn_factor(rate, dt) ** round(t / dt)).abs().max() / scale).item() < 1e-12
    error = ((w - w0 * math.exp(-rate * t)).abs().max() / scale).item()
    assert error < 1e-10, error


def test_kolmogorov_flow_reaches_the_exact_steady_state():
    # f = A sin(2πky) drives the shear flow w = A sin(2πky) / (ν (2πk)²), for which u·∇w = 0.
    s, amplitude, k, viscosity = 16, 0.5, 2, 0.01
    x, y = _grid(s)
    forcing = amplitude * torch.sin(TWO_PI * k * y)
    steady = forcing / (viscosity * (TWO_PI * k) ** 2)
    # The steady state is a fixed point of the scheme.
    drift = (navier_stokes.solve(steady, viscosity, 5.0, forcing=forcing) - steady).abs().max() / steady.abs().max()
    assert drift < 1e-12, drift.item()
    # From rest w(t) = steady (1 − exp(−ν (2πk)² t)) → steady; at rest the CFL step is unbounded: max_dt.
    w = navier_stokes.solve(torch.zeros(s, s, dtype=torch.float64), viscosity, 30.0, forcing=forcing, max_dt=0.5)
    error = (w - steady).abs().max() / steady.abs().max()
    assert error < 1e-10, error.item()


def test_mean_vorticity_is_kept():
    w0 = _random_vorticity(2, 16, amplitude=5.0)
    x, y = _grid(16)
    w = navier_stokes.solve(w0, 1e-3, [0.5, 1.0], forcing=navier_stokes.fno_forcing)
    assert w.mean(dim=(-2, -1)).abs().max() < 1e-15
    # A forcing with mean c moves the mean exactly as c t.
    w = navier_stokes.solve(w0, 1e-3, [0.5, 1.0], forcing=navier_stokes.fno_forcing(x, y) + 0.25)
    expected = torch.tensor([[0.125, 0.25]] * 2, dtype=torch.float64)
    torch.testing.assert_close(w.mean(dim=(-2, -1)), expected, rtol=0, atol=1e-14)


def test_energy_and_enstrophy_do_not_increase_without_forcing():
    w0 = _random_vorticity(2, 32, amplitude=20.0, seed=1)
    times = torch.linspace(0.05, 1.0, 20)
    w = torch.cat([w0[:, None], navier_stokes.solve(w0, 1e-3, times)], dim=1)
    spectrum = torch.fft.rfft2(w).abs() ** 2
    x_modes = torch.fft.fftfreq(32, d=1 / 32, dtype=torch.float64)[:, None]
    y_modes = torch.fft.rfftfreq(32, d=1 / 32, dtype=torch.float64)[None, :]
    laplacian = (TWO_PI**2 * (x_modes**2 + y_modes**2)).clamp(min=1)
    weight = torch.ones(32, 17, dtype=torch.float64)
    weight[:, 1:16] = 2  # columns counted twice in the full spectrum
    enstrophy = (weight * spectrum).sum(dim=(-2, -1))
    energy = (weight * spectrum / laplacian).sum(dim=(-2, -1))
    for quantity in (enstrophy, energy):
        assert (quantity.diff(dim=1) <= 1e-12 * quantity[:, :1]).all(), quantity
        assert (quantity[:, -1] < quantity[:, 0]).all()


@pytest.mark.parametrize("s", [15, 16, 24])
def test_advection_term_equals_the_dealiased_direct_product(s):
    # The solver forms u·∇w as (∂xx − ∂yy)(uv) + ∂x∂y(v² − u²) from the packed field u + iv and its
    # square; compare with u ∂x w + v ∂y w formed from the 2/3 modes and truncated to them.
    w = _random_vorticity(2, s, amplitude=5.0, seed=3)
    spectral = navier_stokes._Spectral(s, 1e-3, 2, torch.float64, torch.device("cpu"))
    advection, speed = spectral.advection(torch.fft.rfft2(w, dim=(-1, -2)).contiguous(), with_speed=True)
    k = torch.fft.fftfreq(s, d=1 / s, dtype=torch.float64)
    kx, ky = k[:, None], k[None, :]
    cutoff = navier_stokes.dealiasing_cutoff(s)
    keep = (kx.abs() <= cutoff) & (ky.abs() <= cutoff)
    w_hat = torch.fft.fft2(w) * keep
    psi_hat = torch.where(keep & (kx**2 + ky**2 > 0), w_hat / (TWO_PI**2 * (kx**2 + ky**2).clamp(min=1)), 0)
    derivatives = [(ky, psi_hat), (-kx, psi_hat), (kx, w_hat), (ky, w_hat)]  # u = ∂y ψ, v = −∂x ψ, ∂x w, ∂y w
    u, v, w_x, w_y = (torch.fft.ifft2(1j * TWO_PI * k_axis * spectrum).real for k_axis, spectrum in derivatives)
    direct = torch.fft.fft2(u * w_x + v * w_y) * keep
    direct[..., 0, 0] = 0
    expected = direct[:, : cutoff + 1, :]  # rows 0 <= k_x <= K of the spectrum, all k_y
    torch.testing.assert_close(advection, expected, rtol=0, atol=1e-12 * expected.abs().max().item())
    torch.testing.assert_close(speed, (u.abs() + v.abs()).amax(dim=(-2, -1)), rtol=1e-12, atol=0)


def test_second_order_in_time():
    w0 = _random_vorticity(1, 16, amplitude=10.0, seed=5)
    steps = [0.05, 0.025, 0.0125, 0.00625]
    solutions = [navier_stokes.solve(w0, 0.03, 0.5, dt=dt) for dt in steps]
    differences = [(coarse - fine).norm().item() for coarse, fine in zip(solutions, solutions[1:])]
    orders = [math.log2(a / b) for a, b in zip(differences, differences[1:])]
    assert all(1.9 <= order <= 2.2 for order in orders), (differences, orders)


def test_dtype_follows_the_input():
    w0 = _random_vorticity(2, 16, amplitude=5.0)
    w64 = navier_stokes.solve(w0, 1e-3, 0.5)
    w32 = navier_stokes.solve(w0.float(), 1e-3, 0.5, forcing=navier_stokes.fno_forcing)
    assert w64.dtype == torch.float64 and w32.dtype == torch.float32
    reference = navier_stokes.solve(w0, 1e-3, 0.5, forcing=navier_stokes.fno_forcing)
    assert ((w32.double() - reference).norm() / reference.norm()).item() < 1e-5


def test_batched_equals_per_sample(device):
    # Amplitudes 1, 10, 30: each sample takes its own CFL steps.
    w0 = _random_vorticity(3, 16, seed=2) * torch.tensor([1.0, 10.0, 30.0], dtype=torch.float64)[:, None, None]
    w0 = w0.to(device)
    batched = navier_stokes.solve(w0, 1e-3, [0.25, 0.5], forcing=navier_stokes.fno_forcing)
    assert batched.shape == (3, 2, 16, 16) and batched.device.type == device.type
    for b in range(3):
        single = navier_stokes.solve(w0[b], 1e-3, [0.25, 0.5], forcing=navier_stokes.fno_forcing)
        assert single.shape == (2, 16, 16)
        torch.testing.assert_close(single, batched[b], rtol=0, atol=1e-12 * w0[b].abs().max().item())


def test_cpu_threads_split_samples_without_changing_results(set_threads):
    # On a CPU the samples are spread over worker threads, one sample and one intra-op thread each:
    # the result is bitwise that of a single-threaded solve, and the caller's thread count is kept.
    w0 = _random_vorticity(3, 16, seed=4) * torch.tensor([1.0, 10.0, 30.0], dtype=torch.float64)[:, None, None]
    set_threads(1)
    alone = navier_stokes.solve(w0, 1e-3, [0.25, 0.5], forcing=navier_stokes.fno_forcing)
    set_threads(2)
    spread = navier_stokes.solve(w0, 1e-3, [0.25, 0.5], forcing=navier_stokes.fno_forcing)
    assert torch.get_num_threads() == 2
    assert torch.equal(alone, spread)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transforms_into_buffers_or_new_tensors_give_the_same_result(monkeypatch, dtype):
    # Where the heap is kept, two transforms return new tensors instead of writing into work buffers
    # (one copy fewer): the numbers are the same either way, bit for bit.
    w0 = _random_vorticity(2, 16, seed=5).to(dtype)
    results = []
    for kept in (False, True):
        monkeypatch.setattr(navier_stokes, "heap_kept", lambda kept=kept: kept)
        results.append(navier_stokes.solve(w0, 1e-3, [0.25, 0.5], forcing=navier_stokes.fno_forcing))
    assert torch.equal(*results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [16, 17])
def test_fused_passes_give_what_the_torch_operations_give(monkeypatch, dtype, s):
    # The C library's passes (where built) and the torch operations they replace: on x86-64 bit for bit
    # when the rows are a multiple of the vector width, to rounding otherwise (torch's remainder loops).
    if not spectral_passes.available(torch.zeros(1, dtype=torch.complex128)):
        pytest.skip("the C library of fused passes is not built here (no C compiler): nothing to compare")
    w0 = _random_vorticity(2, s, amplitude=5.0, seed=6).to(dtype)
    results = []
    for native in (True, False):
        monkeypatch.setattr(spectral_passes, "available", lambda *tensors, native=native: native)
        results.append(navier_stokes.solve(w0, 1e-3, [0.25, 0.5], forcing=navier_stokes.fno_forcing))
        monkeypatch.undo()
    if s % 8 == 0 and platform.machine() in ("x86_64", "AMD64"):  # torch's x86 kernels round products alike
        assert torch.equal(*results)
    else:
        difference = (results[0] - results[1]).norm() / results[1].norm()
        assert difference < (1e-6 if dtype == torch.float32 else 1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [16, 17])
@pytest.mark.parametrize("fused_passes", [True, False])
def test_fftw_line_transforms_give_what_torch_fft_gives(monkeypatch, dtype, s, fused_passes):
    # FFTW's plans (where pyfftw is installed) against torch.fft, with and without the C library's passes
    if not fftw.available(torch.zeros(1, dtype=torch.complex128)):
        pytest.skip("pyfftw is not installed or is turned off here: nothing to compare")
    if fused_passes and not spectral_passes.available(torch.zeros(1, dtype=torch.complex128)):
        pytest.skip("the C library of fused passes is not built here (no C compiler)")
    w0 = _random_vorticity(2, s, amplitude=5.0, seed=7).to(dtype)
    results, calls = [], []
    transform = fftw.LineFFT.__call__
    for on in (True, False):
        count = [0]

        def counted(plan, count=count):
            count[0] += 1
            return transform(plan)

        monkeypatch.setattr(fftw.LineFFT, "__call__", counted)
        monkeypatch.setattr(fftw, "available", lambda *tensors, on=on: on)
        if not fused_passes:
            monkeypatch.setattr(spectral_passes, "available", lambda *tensors: False)
        # a fixed step: a broken transform cannot shrink CFL steps forever
        results.append(navier_stokes.solve(w0, 1e-3, [0.25, 0.5], forcing=navier_stokes.fno_forcing, dt=0.05))
        monkeypatch.undo()
        calls.append(count[0])
    # ten steps of three evaluations, four transforms each, per sample
    assert calls == [2 * 10 * 3 * 4, 0]
    difference = (results[0] - results[1]).norm() / results[1].norm()
    assert difference < (1e-6 if dtype == torch.float32 else 1e-14)


def test_scalar_time_and_sequence_of_times():
    w0 = _random_vorticity(2, 16, amplitude=5.0)
    final = navier_stokes.solve(w0, 1e-3, 0.5, dt=0.05)
    snapshots = navier_stokes.solve(w0, 1e-3, torch.tensor([0.0, 0.25, 0.5]), dt=0.05)
    assert final.shape == (2, 16, 16) and snapshots.shape == (2, 3, 16, 16)
    torch.testing.assert_close(snapshots[:, 0], w0, rtol=0, atol=1e-14)
    torch.testing.assert_close(snapshots[:, 2], final, rtol=0, atol=1e-13)
    assert navier_stokes.solve(w0[0], 1e-3, [0.5]).shape == (1, 16, 16)


def test_forcing_as_tensor_callable_or_per_sample_agree():
    w0 = _random_vorticity(2, 16, amplitude=5.0)
    x, y = _grid(16)
    from_callable = navier_stokes.solve(w0, 1e-3, 0.5, forcing=navier_stokes.fno_forcing)
    from_tensor = navier_stokes.solve(w0, 1e-3, 0.5, forcing=navier_stokes.fno_forcing(x, y))
    torch.testing.assert_close(from_callable, from_tensor, rtol=0, atol=0)
    per_sample = torch.stack([navier_stokes.fno_forcing(x, y), -navier_stokes.fno_forcing(x, y)])
    both = navier_stokes.solve(w0, 1e-3, 0.5, forcing=per_sample)
    torch.testing.assert_close(both[0], from_tensor[0], rtol=0, atol=1e-13)
    second = navier_stokes.solve(w0[1], 1e-3, 0.5, forcing=-per_sample[0])
    torch.testing.assert_close(both[1], second, rtol=0, atol=1e-13)


def test_blow_up_raises():
    with pytest.raises(RuntimeError, match="non-finite"):
        navier_stokes.solve(_random_vorticity(1, 16, amplitude=1e3), 1e-5, 20.0, dt=1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"w0": torch.zeros(2, 2, 8, 8)}, r"w0 must have shape \(B, s, s\) or \(s, s\), got \(2, 2, 8, 8\)"),
        ({"w0": torch.zeros(2, 8, 6)}, r"w0 must be square"),
        ({"w0": torch.zeros(2, 3, 3)}, r"s >= 4"),
        ({"w0": torch.full((8, 8), math.nan)}, r"w0 must be finite"),
        ({"w0": torch.zeros(8, 8, dtype=torch.complex64)}, r"w0 must be float32 or float64"),
        ({"viscosity": 0.0}, r"viscosity must be > 0"),
        ({"viscosity": -1e-3}, r"viscosity must be > 0"),
        ({"t": [0.5, 0.25]}, r"t must be strictly increasing, got t\[0\] = 0.5 >= t\[1\] = 0.25"),
        ({"t": []}, r"nonempty increasing sequence"),
        ({"t": -1.0}, r"t must be >= 0"),
        ({"t": [0.1, math.inf]}, r"t\[1\] must be a finite real number"),
        ({"dt": 0.0}, r"dt must be > 0"),
        ({"cfl": -0.5}, r"cfl must be > 0"),
        ({"forcing": torch.zeros(3, 8, 8)}, r"forcing must have shape \(8, 8\) or \(2, 8, 8\), got \(3, 8, 8\)"),
        ({"forcing": lambda x, y: x[:4]}, r"forcing\(x, y\) must have shape"),
        ({"forcing": torch.full((8, 8), math.inf)}, r"forcing must be finite"),
    ],
)
def test_bad_input_is_rejected(kwargs, match):
    arguments = {"w0": torch.zeros(2, 8, 8), "viscosity": 1e-3, "t": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        navier_stokes.solve(arguments.pop("w0"), arguments.pop("viscosity"), arguments.pop("t"), **arguments)


SMALL = {
    "n": 3, "resolution": 8, "solve_resolution": 16, "seed": 3, "t": 0.5, "viscosity": 1e-3,
    "dtype": torch.float64, "progress": False,
}


@pytest.fixture(scope="module")
def small():
    return navier_stokes.generate(**SMALL)


def test_final_task_is_the_strided_solution(small):
    assert small.x.shape == small.y.shape == (3, 1, 8, 8) and small.x.dtype == torch.float64
    w0 = grf_periodic(3, 16, dim=2, alpha=2.5, tau=7.0, sigma=7**0.75, seed=3)
    torch.testing.assert_close(small.x[:, 0], w0[:, ::2, ::2], rtol=0, atol=1e-15)
    w = navier_stokes.solve(w0, 1e-3, 0.5, forcing=navier_stokes.fno_forcing)
    torch.testing.assert_close(small.y[:, 0], w[:, ::2, ::2], rtol=0, atol=1e-13)
    for nodes in small.grid:
        torch.testing.assert_close(nodes, torch.arange(8, dtype=torch.float64) / 8, rtol=0, atol=0)


def test_rollout_task_shapes_and_snapshots():
    final_only = {"t"}
    data = navier_stokes.generate(**{k: v for k, v in SMALL.items() if k not in final_only}, task="rollout",
                                  snapshot_interval=0.25, n_input_steps=3, n_output_steps=2)
    assert data.x.shape == (3, 3, 8, 8) and data.y.shape == (3, 2, 8, 8)
    w0 = grf_periodic(3, 16, dim=2, alpha=2.5, tau=7.0, sigma=7**0.75, seed=3)
    snapshots = navier_stokes.solve(w0, 1e-3, [0.25, 0.5, 0.75, 1.0, 1.25], forcing=navier_stokes.fno_forcing)
    scale = snapshots.abs().max().item()
    torch.testing.assert_close(data.x, snapshots[:, :3, ::2, ::2], rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(data.y, snapshots[:, 3:, ::2, ::2], rtol=0, atol=1e-12 * scale)
    meta = data.metadata
    assert meta["task"] == "rollout" and meta["snapshot_interval"] == 0.25 and "t" not in meta
    assert meta["n_input_steps"] == 3 and meta["n_output_steps"] == 2


def test_metadata_records_every_generation_parameter(small):
    meta = small.metadata
    assert meta["problem"] == "navier_stokes" and meta["n"] == 3 and meta["seed"] == 3
    assert meta["resolution"] == 8 and meta["solve_resolution"] == 16 and meta["task"] == "final" and meta["t"] == 0.5
    assert meta["viscosity"] == 1e-3 and meta["forcing"]["amplitude"] == 0.1 and meta["dtype"] == "float64"
    assert meta["grf"] == {"kind": "periodic", "alpha": 2.5, "tau": 7.0, "sigma": 7**0.75, "mean_mode": "dropped"}
    solver = meta["solver"]
    assert solver["cfl"] == navier_stokes.DEFAULT_CFL and solver["dtype"] == "float64"
    assert {"name", "scheme", "dt_rule", "dealiasing", "estimated_time_error"} <= set(solver)
    assert meta["generator_version"] == navier_stokes.GENERATOR_VERSION == 2
    assert meta["probneural_version"] == probneural.__version__


def test_metadata_records_the_implementation(monkeypatch):
    state = torch.zeros(1, dtype=torch.complex128)
    expected = {"device": "cpu", "machine": platform.machine(), "torch": torch.__version__,
                "fft": "fftw" if fftw.available(state) else "torch.fft",
                "pyfftw": fftw.version() if fftw.available(state) else None,
                "fused_passes": spectral_passes.available(state)}
    assert navier_stokes.generate(**SMALL).metadata["implementation"] == expected
    monkeypatch.setattr(fftw, "available", lambda *tensors: False)
    monkeypatch.setattr(spectral_passes, "available", lambda *tensors: False)
    implementation = navier_stokes.generate(**SMALL).metadata["implementation"]
    assert implementation["fft"] == "torch.fft" and implementation["pyfftw"] is None
    assert implementation["fused_passes"] is False


def test_the_cache_is_shared_by_every_implementation(monkeypatch, tmp_path):
    # the implementation (its results differ at the rounding level) is recorded, not keyed: an entry made by
    # one is the one found by another, and says how it was made
    monkeypatch.setattr(navier_stokes, "_implementation", lambda dtype, device: {"made by": "A"})
    made = navier_stokes.generate(**SMALL, cache_dir=tmp_path)
    monkeypatch.setattr(navier_stokes, "_implementation", lambda dtype, device: {"made by": "B"})
    found = navier_stokes.generate(**SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    assert found.metadata["implementation"] == {"made by": "A"} and torch.equal(found.y, made.y)


def test_independent_of_batch_size(small, device):
    for batch_size in (1, 2):
        other = navier_stokes.generate(**SMALL, batch_size=batch_size, device=device)
        assert other.x.device.type == device.type
        torch.testing.assert_close(other.x.cpu(), small.x, rtol=0, atol=1e-15)
        torch.testing.assert_close(other.y.cpu(), small.y, rtol=0, atol=1e-13)
    assert not torch.equal(navier_stokes.generate(**{**SMALL, "seed": 4}).x, small.x)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"task": "rollout"}, r"t=0.5 has no effect: t is only used with task='final' \(got task='rollout'\)"),
    ({"n_input_steps": 5}, r"n_input_steps=5 has no effect: n_input_steps is only used with task='rollout'"),
    ({"snapshot_interval": 2.0}, r"snapshot_interval=2.0 has no effect"),
])
def test_an_option_of_the_other_task_warns(kwargs, match):
    from probneural.data import check_arguments

    with pytest.warns(UserWarning, match=match):
        check_arguments("navier_stokes", **{**SMALL, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "steady"}, r"task must be one of 'final', 'rollout', got 'steady'"),
        ({"solve_resolution": 20}, r"solve_resolution=20 cannot be subsampled to resolution=8"),
        ({"viscosity": 0.0}, r"viscosity must be > 0"),
        ({"t": 0.0}, r"t must be > 0"),
        ({"task": "rollout", "n_output_steps": 0}, r"n_output_steps must be an int >= 1"),

        ({"solve_dtype": torch.float16}, r"solve_dtype must be torch.float32 or torch.float64"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        navier_stokes.generate(**{**SMALL, **kwargs})
