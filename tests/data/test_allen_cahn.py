"""Allen–Cahn: exact uniform solutions, steady interfaces, energy decay, symmetry, shapes, checks, generator."""

import math

import pytest
import torch

import probneural
from probneural.data import allen_cahn
from probneural.data.exact import allen_cahn_uniform
from probneural.data.grf import grf_periodic

TIMES = [0.5, 1.0, 2.0, 5.0]


def interface_pair(s: int, epsilon: float) -> torch.Tensor:
    """Interfaces ``tanh((x − x₀)/(√2 ε))`` at 1/4 and 3/4, steady up to an exp(−0.5/(√2 ε)) interaction."""
    x = torch.arange(s, dtype=torch.float64) / s
    width = math.sqrt(2) * epsilon
    return torch.tanh((x - 0.25) / width) * torch.tanh((0.75 - x) / width)


def test_uniform_data_follow_the_exact_ode_solution():
    values = torch.tensor([-1.5, -0.3, 0.0, 0.2, 0.9, 1.0, 1.5], dtype=torch.float64)
    u = allen_cahn.solve(values[:, None].expand(-1, 16), TIMES)
    exact = allen_cahn_uniform(values, TIMES)
    assert (u - u[..., :1]).abs().max() == 0  # stays exactly uniform
    assert (u[..., 0] - exact).abs().max() < 1e-7


def test_uniform_data_fourth_order_in_time():
    values = torch.tensor([-1.5, 0.2, 0.9], dtype=torch.float64)
    exact = allen_cahn_uniform(values, TIMES)
    errors = [
        (allen_cahn.solve(values[:, None].expand(-1, 8), TIMES, dt=dt)[..., 0] - exact).abs().max().item()
        for dt in (0.1, 0.05, 0.025)
    ]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(3.8 < p < 4.3 for p in orders), (errors, orders)


def test_separated_interfaces_are_steady_and_carry_the_known_energy():
    epsilon = allen_cahn.DEFAULT_EPSILON
    u0 = interface_pair(256, epsilon)
    # Each interface carries the energy (2√2 / 3) ε of the 1-D tanh profile.
    expected = torch.tensor(4 * math.sqrt(2) / 3 * epsilon, dtype=torch.float64)
    torch.testing.assert_close(allen_cahn.energy(u0, epsilon), expected, rtol=1e-12, atol=0)
    assert (allen_cahn.solve(u0, 1.0) - u0).abs().max() < 1e-6


def test_energy_is_non_increasing():
    u0 = grf_periodic(4, 512, alpha=2.0, tau=20.0, sigma=100.0, seed=0)
    times = [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0]
    energies = allen_cahn.energy(allen_cahn.solve(u0, times))
    assert (energies[:, 1:] < energies[:, :-1]).all()


def test_odd_symmetry():
    u0 = grf_periodic(2, 128, alpha=2.0, tau=20.0, sigma=100.0, seed=1)
    flipped = allen_cahn.solve(-u0, 1.0, epsilon=0.05)
    torch.testing.assert_close(flipped, -allen_cahn.solve(u0, 1.0, epsilon=0.05), rtol=0, atol=1e-15)


def test_default_step_accuracy():
    u0 = grf_periodic(4, 512, alpha=2.0, tau=20.0, sigma=100.0, seed=2)
    reference = allen_cahn.solve(u0, 2.0, dt=allen_cahn.DEFAULT_DT / 10)
    errors = (allen_cahn.solve(u0, 2.0) - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert errors.max() < 1e-6


def test_dtypes_batching_and_shapes():
    u0 = grf_periodic(3, 64, alpha=2.0, tau=20.0, sigma=100.0, seed=3)
    u = allen_cahn.solve(u0, [0.5, 1.0], epsilon=0.05)
    assert u.shape == (3, 2, 64) and u.dtype == torch.float64
    assert allen_cahn.solve(u0, 1.0).shape == (3, 64) and allen_cahn.solve(u0[0], [1.0]).shape == (1, 64)
    for i in range(3):
        torch.testing.assert_close(u[i], allen_cahn.solve(u0[i], [0.5, 1.0], epsilon=0.05), rtol=0, atol=1e-14)
    u32 = allen_cahn.solve(u0.float(), 1.0, epsilon=0.05)
    assert u32.dtype == torch.float32
    assert ((u32.double() - u[:, 1]).norm() / u[:, 1].norm()) < 1e-5


@pytest.mark.parametrize(
    ("u0", "t", "kwargs", "match"),
    [
        (torch.zeros(16, 1, 1), 1.0, {}, r"u0 must have shape \(B, s\)"),
        (torch.zeros(2, 16), [2.0, 1.0], {}, "strictly increasing"),
        (torch.full((2, 16), float("nan")), 1.0, {}, "u0 must be finite"),
        (torch.zeros(2, 16), 1.0, {"epsilon": 0.0}, "epsilon must be > 0"),
        (torch.zeros(2, 16), 1.0, {"dt": float("inf")}, "dt must be a finite"),
    ],
)
def test_bad_inputs_raise(u0, t, kwargs, match):
    with pytest.raises(ValueError, match=match):
        allen_cahn.solve(u0, t, **kwargs)


def test_default_solve_resolution():
    assert allen_cahn.default_solve_resolution(128) == 512
    assert allen_cahn.default_solve_resolution(100) == 500
    assert allen_cahn.default_solve_resolution(64, 0.05) == 256


SMALL = {
    "n": 4,
    "resolution": 16,
    "solve_resolution": 128,
    "epsilon": 0.05,
    "t": 1.0,
    "seed": 7,
    "dtype": torch.float64,
    "progress": False,
}


@pytest.fixture(scope="module")
def small():
    return allen_cahn.generate(**SMALL)


def test_generate_shapes_and_solution(small):
    assert small.x.shape == small.y.shape == (4, 1, 16)
    u0 = grf_periodic(4, 128, alpha=2.0, tau=20.0, sigma=100.0, seed=7)
    assert torch.equal(small.x[:, 0], u0[:, ::8])
    torch.testing.assert_close(small.y[:, 0], allen_cahn.solve(u0, 1.0, epsilon=0.05)[:, ::8], rtol=0, atol=1e-14)


def test_generate_metadata(small):
    meta = small.metadata
    assert meta["problem"] == "allen_cahn" and meta["n"] == 4 and meta["seed"] == 7
    assert meta["resolution"] == 16 and meta["solve_resolution"] == 128
    assert meta["epsilon"] == 0.05 and meta["t"] == 1.0 and meta["dtype"] == "float64"
    assert meta["grf"] == {"kind": "periodic", "alpha": 2.0, "tau": 20.0, "sigma": 100.0, "mean_mode": "dropped"}
    solver = meta["solver"]
    assert solver["name"] == "etdrk4" and solver["dt"] == allen_cahn.DEFAULT_DT and solver["steps"] == 50
    assert "1/2 rule" in solver["dealiasing"] and solver["estimated_relative_error"] == 1e-6
    assert meta["generator_version"] == 2 and meta["probneural_version"] == probneural.__version__


def test_generate_independent_of_batch_size(small, device):
    other = allen_cahn.generate(**{**SMALL, "batch_size": 3, "device": device})
    assert other.x.device.type == device.type
    torch.testing.assert_close(other.x.cpu(), small.x, rtol=0, atol=0)
    torch.testing.assert_close(other.y.cpu(), small.y, rtol=0, atol=1e-14)


def test_generate_cache_round_trip_skips_the_solver(small, tmp_path, monkeypatch):
    first = allen_cahn.generate(**SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("allen_cahn-*.safetensors"))) == 1
    torch.testing.assert_close(first.y, small.y, rtol=0, atol=0)

    def fail(*args, **kwargs):
        raise AssertionError("solver called despite a valid cache entry")

    monkeypatch.setattr(allen_cahn, "solve", fail)
    second = allen_cahn.generate(**SMALL, cache_dir=tmp_path)
    assert torch.equal(second.y, first.y) and second.metadata == first.metadata


def test_generate_checks():
    with pytest.raises(ValueError, match="multiple of resolution=16"):
        allen_cahn.generate(**{**SMALL, "solve_resolution": 100})
    with pytest.raises(ValueError, match="epsilon"):
        allen_cahn.generate(**{**SMALL, "epsilon": 0.0})
    with pytest.raises(ValueError, match="n must be"):
        allen_cahn.generate(**{**SMALL, "n": 0})
