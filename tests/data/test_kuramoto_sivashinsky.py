"""Kuramoto–Sivashinsky: conserved mean, exact linear regime, fourth order in time, shapes, checks, generator."""

import math

import pytest
import torch

import probneural
from probneural.data import kuramoto_sivashinsky as ks
from probneural.data.grf import grf_periodic

KT_LENGTH = 32 * math.pi


def kassam_trefethen(s: int) -> torch.Tensor:
    """Kassam & Trefethen's initial data ``cos(X/16)(1 + sin(X/16))`` on ``X_j = 32π j / s``."""
    x = KT_LENGTH * torch.arange(s, dtype=torch.float64) / s
    return torch.cos(x / 16) * (1 + torch.sin(x / 16))


def test_mean_is_conserved_to_rounding():
    u0 = grf_periodic(3, 64, alpha=4.0, tau=20.0, sigma=1e5, seed=0) + 0.3
    u = ks.solve(u0, [1.0, 5.0, 20.0])
    assert (u.mean(dim=-1) - 0.3).abs().max() < 1e-14
    assert u[:, -1].std(dim=-1).min() > 0.5  # the dynamics did happen


def test_linear_regime_follows_the_exact_growth_rates():
    # Amplitude 1e-9: the quadratic term is 1e-9 of the linear one, so each mode grows like exp((q² − q⁴) t).
    s, length, times = 32, ks.DEFAULT_LENGTH, [1.0, 5.0, 10.0]
    u0 = 1e-9 * grf_periodic(2, s, alpha=4.0, tau=20.0, sigma=1e5, seed=1)
    u = ks.solve(u0, times, length=length)
    q = 2 * math.pi * torch.arange(s // 2 + 1, dtype=torch.float64) / length
    spectrum0 = torch.fft.rfft(u0)
    for i, t in enumerate(times):
        exact = spectrum0 * torch.exp((q**2 - q**4) * t)
        got = torch.fft.rfft(u[:, i])
        assert ((got - exact).abs().max() / exact.abs().max()) < 1e-7
    growth = torch.fft.rfft(u[:, -1])[:, 3].abs() / spectrum0[:, 3].abs()
    assert growth.min() > 3  # mode 3 (q ≈ 0.86) is unstable: e^{(q² − q⁴) · 10} ≈ 5.7


def test_fourth_order_in_time():
    # Smooth solution of Kassam & Trefethen's problem; reference with a 16x smaller step.
    u0, t = kassam_trefethen(64), 5.0
    reference = ks.solve(u0, t, length=KT_LENGTH, dt=0.2 / 16)
    errors = [
        ((ks.solve(u0, t, length=KT_LENGTH, dt=dt) - reference).norm() / reference.norm()).item()
        for dt in (0.2, 0.1, 0.05)
    ]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(3.8 < p < 4.3 for p in orders), (errors, orders)


def test_default_step_accuracy():
    u0 = grf_periodic(4, 64, alpha=4.0, tau=20.0, sigma=1e5, seed=2)
    reference = ks.solve(u0, 10.0, dt=ks.DEFAULT_DT / 10)
    errors = (ks.solve(u0, 10.0) - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert errors.max() < 1e-6


def test_dtypes_batching_and_shapes():
    u0 = grf_periodic(3, 32, alpha=4.0, tau=20.0, sigma=1e5, seed=3)
    u = ks.solve(u0, [0.5, 1.0])
    assert u.shape == (3, 2, 32) and u.dtype == torch.float64
    assert ks.solve(u0, 1.0).shape == (3, 32) and ks.solve(u0[0], 1.0).shape == (32,)
    for i in range(3):
        torch.testing.assert_close(u[i], ks.solve(u0[i], [0.5, 1.0]), rtol=0, atol=1e-14)
    u32 = ks.solve(u0.float(), 1.0)
    assert u32.dtype == torch.float32
    assert ((u32.double() - u[:, 1]).norm() / u[:, 1].norm()) < 1e-5


@pytest.mark.parametrize(
    ("u0", "t", "kwargs", "match"),
    [
        (torch.zeros(1, 1, 16), 1.0, {}, r"u0 must have shape \(B, s\)"),
        (torch.zeros(2, 16), [1.0, 0.5], {}, "strictly increasing"),
        (torch.full((2, 16), float("inf")), 1.0, {}, "u0 must be finite"),
        (torch.zeros(2, 16), 1.0, {"length": 0.0}, "length must be > 0"),
        (torch.zeros(2, 16), 1.0, {"dt": -0.1}, "dt must be > 0"),
    ],
)
def test_bad_inputs_raise(u0, t, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ks.solve(u0, t, **kwargs)


def test_default_solve_resolution():
    assert ks.default_solve_resolution(64) == 192
    assert ks.default_solve_resolution(128) == 256
    assert ks.default_solve_resolution(64, KT_LENGTH) == 832


SMALL = {
    "n": 4,
    "resolution": 16,
    "solve_resolution": 64,
    "t": 2.0,
    "seed": 5,
    "dtype": torch.float64,
    "progress": False,
}


@pytest.fixture(scope="module")
def small():
    return ks.generate(**SMALL)


def test_generate_shapes_and_solution(small):
    assert small.x.shape == small.y.shape == (4, 1, 16)
    u0 = grf_periodic(4, 64, alpha=4.0, tau=20.0, sigma=1e5, seed=5)
    assert torch.equal(small.x[:, 0], u0[:, ::4])
    torch.testing.assert_close(small.y[:, 0], ks.solve(u0, 2.0)[:, ::4], rtol=0, atol=1e-14)
    torch.testing.assert_close(small.grid[0], torch.arange(16, dtype=torch.float64) / 16, rtol=0, atol=0)


def test_generate_metadata(small):
    meta = small.metadata
    assert meta["problem"] == "kuramoto_sivashinsky" and meta["n"] == 4 and meta["seed"] == 5
    assert meta["resolution"] == 16 and meta["solve_resolution"] == 64 and meta["t"] == 2.0
    assert meta["length"] == ks.DEFAULT_LENGTH and meta["dtype"] == "float64"
    assert meta["grf"] == {"kind": "periodic", "alpha": 4.0, "tau": 20.0, "sigma": 1e5, "mean_mode": "dropped"}
    solver = meta["solver"]
    assert solver["name"] == "etdrk4" and solver["dt"] == ks.DEFAULT_DT and solver["steps"] == 100
    assert solver["estimated_relative_error"] == 1e-6 and "2/3" in solver["dealiasing"]
    assert meta["generator_version"] == 2 and meta["probneural_version"] == probneural.__version__
    beyond = ks.generate(**{**SMALL, "n": 1, "t": 12.0}).metadata["solver"]
    assert beyond["estimated_relative_error"] is None


def test_generate_independent_of_batch_size(small, device):
    other = ks.generate(**{**SMALL, "batch_size": 3, "device": device})
    assert other.x.device.type == device.type
    torch.testing.assert_close(other.x.cpu(), small.x, rtol=0, atol=0)
    torch.testing.assert_close(other.y.cpu(), small.y, rtol=0, atol=1e-14)


def test_generate_cache_round_trip_skips_the_solver(small, tmp_path, monkeypatch):
    first = ks.generate(**SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("kuramoto_sivashinsky-*.safetensors"))) == 1
    torch.testing.assert_close(first.y, small.y, rtol=0, atol=0)

    def fail(*args, **kwargs):
        raise AssertionError("solver called despite a valid cache entry")

    monkeypatch.setattr(ks, "solve", fail)
    second = ks.generate(**SMALL, cache_dir=tmp_path)
    assert torch.equal(second.y, first.y) and second.metadata == first.metadata


def test_generate_checks():
    with pytest.raises(ValueError, match="multiple of resolution=16"):
        ks.generate(**{**SMALL, "solve_resolution": 40})
    with pytest.raises(ValueError, match="length"):
        ks.generate(**{**SMALL, "length": -1.0})
    with pytest.raises(ValueError, match="tau"):
        ks.generate(**{**SMALL, "tau": 0.0})
