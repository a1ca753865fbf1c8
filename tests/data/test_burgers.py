"""Burgers: Cole–Hopf exact solution, default-step accuracy, torchdiffeq cross-check, shapes, checks, generator."""

import math

import pytest
import torch

import probneural
from probneural.data import burgers
from probneural.data.exact import burgers_sine
from probneural.data.grf import grf_periodic

NU = 0.1


def sine(s: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.sin(2 * math.pi * torch.arange(s, dtype=torch.float64) / s).to(dtype)


def relative_error(u: torch.Tensor, exact: torch.Tensor) -> float:
    return ((u.double() - exact).norm() / exact.norm()).item()


def test_cole_hopf_reference_at_t0():
    torch.testing.assert_close(burgers_sine(32, NU, 0.0), sine(32), rtol=0, atol=1e-14)


def test_spectral_convergence_against_cole_hopf():
    # t = 0.1: the front is steepest around here; a small dt isolates the spatial error.
    errors = {
        s: relative_error(burgers.solve(sine(s), NU, 0.1, dt=1e-4), burgers_sine(s, NU, 0.1)) for s in (16, 32, 64)
    }
    assert errors[16] > 1e-5  # visibly under-resolved
    assert errors[32] < errors[16] / 1e3
    assert errors[64] < errors[32] / 1e3
    assert errors[64] < 1e-12


def test_default_step_against_cole_hopf_at_256():
    times = [0.1, 0.5, 1.0]
    u = burgers.solve(sine(256), NU, times)
    for i, t in enumerate(times):
        assert relative_error(u[i], burgers_sine(256, NU, t)) < 1e-6


def test_default_step_accuracy_on_fno_data():
    u0 = grf_periodic(4, 256, alpha=2.0, tau=5.0, sigma=25.0, seed=0)
    reference = burgers.solve(u0, NU, 1.0, dt=burgers.default_dt(NU) / 8)
    u = burgers.solve(u0, NU, 1.0)
    errors = (u - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert errors.max() < 1e-6


@pytest.mark.parametrize(("viscosity", "t"), [(0.1, 1.0), (0.01, 0.2)])
def test_trimmed_solve_agrees_with_the_whole_grid_at_8192(viscosity, t, monkeypatch):
    # The FNO setting: 8192 points, most of them negligible after a few steps at nu = 0.1 (ADR 0020).
    from probneural.data import etdrk4

    grids = []
    step = etdrk4._step
    monkeypatch.setattr(etdrk4, "_step", lambda v, grid, *rest: grids.append(grid) or step(v, grid, *rest))
    u0 = grf_periodic(2, 8192, alpha=2.0, tau=5.0, sigma=25.0, seed=7)
    trimmed = burgers.solve(u0, viscosity, t)
    assert max(grids) == 8192 and min(grids) <= (128 if viscosity == 0.1 else 1024)
    whole = burgers.solve(u0, viscosity, t, trim=False)
    assert ((trimmed - whole).norm(dim=-1) / whole.norm(dim=-1)).max() < 1e-14


def test_default_dt_rule():
    assert burgers.default_dt(0.1) == pytest.approx(2.5e-3)
    assert burgers.default_dt(1e-3) == pytest.approx(2.5e-3)
    assert burgers.default_dt(1.0) == pytest.approx(2.5e-4)
    assert burgers.default_dt(3e-4) == pytest.approx(7.5e-4)
    # Scaling u → λu, t → t/λ, ν → λν: data twice as large with twice the viscosity take half the step.
    assert burgers.default_dt(0.2, 2.0) == pytest.approx(burgers.default_dt(0.1) / 2)


def test_torchdiffeq_method_of_lines_agrees():
    s = 32
    x = torch.arange(s, dtype=torch.float64) / s
    u0 = torch.stack([torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x) + 0.3 * torch.sin(6 * math.pi * x)])
    times = [0.1, 0.5]
    reference = burgers.solve(u0, NU, times)
    mol = burgers.solve_mol(u0, NU, times)
    assert mol.shape == reference.shape == (2, 2, s)
    errors = (mol - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert errors.max() < 1e-6  # rtol = 1e-8 per step, accumulated over the steps


def test_mean_is_conserved():
    u0 = grf_periodic(2, 64, alpha=2.0, tau=5.0, sigma=25.0, seed=1) + 0.25
    u = burgers.solve(u0, NU, [0.5, 1.0])
    torch.testing.assert_close(u.mean(dim=-1), torch.full((2, 2), 0.25, dtype=torch.float64), rtol=0, atol=1e-14)


def test_dtypes_follow_the_input():
    u64 = burgers.solve(sine(64), NU, 0.5)
    assert u64.dtype == torch.float64
    u32 = burgers.solve(sine(64, torch.float32), NU, 0.5)
    assert u32.dtype == torch.float32
    assert relative_error(u32, u64) < 1e-5
    assert burgers.solve(torch.zeros(8, dtype=torch.int64), NU, 0.5).dtype == torch.get_default_dtype()


def test_batched_equals_per_sample():
    u0 = grf_periodic(3, 64, alpha=2.0, tau=5.0, sigma=25.0, seed=2)
    batched = burgers.solve(u0, NU, 0.3)
    for i in range(3):
        torch.testing.assert_close(batched[i], burgers.solve(u0[i], NU, 0.3), rtol=0, atol=1e-14)


def test_output_shapes():
    u0 = grf_periodic(2, 16, alpha=2.0, tau=5.0, sigma=25.0, seed=3)
    assert burgers.solve(u0, NU, 0.1).shape == (2, 16)
    assert burgers.solve(u0, NU, [0.1]).shape == (2, 1, 16)
    assert burgers.solve(u0, NU, torch.tensor([0.05, 0.1, 0.2])).shape == (2, 3, 16)
    assert burgers.solve(u0[0], NU, [0.05, 0.1]).shape == (2, 16)
    assert burgers.solve(u0[0], NU, 0.1).shape == (16,)
    assert torch.equal(burgers.solve(u0, NU, 0), u0)
    sequence = burgers.solve(u0, NU, [0.05, 0.1])
    torch.testing.assert_close(sequence[:, 1], burgers.solve(u0, NU, 0.1), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("u0", "viscosity", "t", "kwargs", "match"),
    [
        (torch.zeros(2, 2, 16), NU, 0.1, {}, r"u0 must have shape \(B, s\)"),
        (torch.zeros(2, 16), 0.0, 0.1, {}, "viscosity must be > 0"),
        (torch.zeros(2, 16), -1.0, 0.1, {}, "viscosity must be > 0"),
        (torch.zeros(2, 16), NU, [0.2, 0.1], {}, "strictly increasing"),
        (torch.zeros(2, 16), NU, -0.1, {}, "t must be >= 0"),
        (torch.zeros(2, 16), NU, float("nan"), {}, "t must be a finite"),
        (torch.full((2, 16), float("nan")), NU, 0.1, {}, "u0 must be finite"),
        (torch.zeros(2, 16), NU, 0.1, {"dt": 0.0}, "dt must be > 0"),
    ],
)
def test_bad_inputs_raise(u0, viscosity, t, kwargs, match):
    with pytest.raises(ValueError, match=match):
        burgers.solve(u0, viscosity, t, **kwargs)
    if "dt" not in kwargs:
        with pytest.raises(ValueError, match=match):
            burgers.solve_mol(u0, viscosity, t)


SMALL = {"n": 5, "resolution": 16, "solve_resolution": 64, "seed": 3, "dtype": torch.float64, "progress": False}


@pytest.fixture(scope="module")
def small():
    return burgers.generate(**SMALL)


def test_generate_shapes_grid_and_solution(small):
    assert small.x.shape == small.y.shape == (5, 1, 16)
    assert small.x.dtype == small.y.dtype == torch.float64
    torch.testing.assert_close(small.grid[0], torch.arange(16, dtype=torch.float64) / 16, rtol=0, atol=0)
    u0 = grf_periodic(5, 64, alpha=2.0, tau=5.0, sigma=25.0, seed=3)
    assert torch.equal(small.x[:, 0], u0[:, ::4])
    torch.testing.assert_close(small.y[:, 0], burgers.solve(u0, NU, 1.0)[:, ::4], rtol=0, atol=1e-14)


def test_generate_metadata(small):
    meta = small.metadata
    assert meta["problem"] == "burgers" and meta["n"] == 5 and meta["seed"] == 3
    assert meta["resolution"] == 16 and meta["solve_resolution"] == 64
    assert meta["viscosity"] == 0.1 and meta["t"] == 1.0 and meta["dtype"] == "float64"
    assert meta["grf"] == {"kind": "periodic", "alpha": 2.0, "tau": 5.0, "sigma": 25.0, "mean_mode": "dropped"}
    solver = meta["solver"]
    assert solver["name"] == "etdrk4" and "2/3" in solver["dealiasing"]
    assert solver["dt"] == burgers.default_dt(0.1) and solver["steps"] == 400 and solver["dt_scale"] == 1.0
    assert solver["estimated_relative_error"] == 1e-6 and "dt_rule" in solver
    assert "ADR 0020" in solver["grid_trimming"]
    assert meta["generator_version"] == burgers.GENERATOR_VERSION == 2
    assert meta["probneural_version"] == probneural.__version__


def test_generate_larger_amplitude_takes_smaller_steps():
    meta = burgers.generate(**{**SMALL, "n": 1, "sigma": 50.0}).metadata["solver"]
    assert meta["dt_scale"] == pytest.approx(2.0)
    assert meta["dt"] == pytest.approx(burgers.default_dt(0.1) / 2)


def test_generate_independent_of_batch_size(small, device):
    for batch_size in (2, 5):
        other = burgers.generate(**{**SMALL, "batch_size": batch_size, "device": device})
        assert other.x.device.type == device.type
        torch.testing.assert_close(other.x.cpu(), small.x, rtol=0, atol=0)
        torch.testing.assert_close(other.y.cpu(), small.y, rtol=0, atol=1e-14)


def test_generate_seed_and_dtype(small):
    assert not torch.equal(burgers.generate(**{**SMALL, "seed": 4}).x, small.x)
    single = burgers.generate(**{**SMALL, "dtype": torch.float32})
    assert single.x.dtype == single.y.dtype == single.grid[0].dtype == torch.float32
    assert torch.equal(single.y, small.y.float())


def test_generate_cache_round_trip_skips_the_solver(small, tmp_path, monkeypatch):
    first = burgers.generate(**SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("burgers-*.safetensors"))) == 1
    torch.testing.assert_close(first.y, small.y, rtol=0, atol=0)

    def fail(*args, **kwargs):
        raise AssertionError("solver called despite a valid cache entry")

    monkeypatch.setattr(burgers, "solve", fail)
    second = burgers.generate(**SMALL, cache_dir=tmp_path)
    assert torch.equal(second.x, first.x) and torch.equal(second.y, first.y)
    assert second.metadata == first.metadata


def test_generate_solve_resolution_must_be_a_multiple():
    with pytest.raises(ValueError, match=r"must be a multiple of resolution=16.*nearest valid: 48, 64"):
        burgers.generate(**{**SMALL, "solve_resolution": 50})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"resolution": 2}, "resolution"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"viscosity": 0.0}, "viscosity"),
        ({"t": 0.0}, "t"),
        ({"sigma": -1.0}, "sigma"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_generate_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        burgers.generate(**{**SMALL, **kwargs})
