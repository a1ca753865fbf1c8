"""Darcy solver: manufactured-solution convergence order, agreement with a sparse direct solve, input checks."""

import math

import pytest
import torch

from probneural.bench.baselines.darcy import solve_scipy
from probneural.data import darcy
from probneural.data.exact import darcy_manufactured
from probneural.data.grf import grf_neumann


def test_manufactured_solution_converges_at_second_order():
    errors = []
    for s in (17, 33, 65, 129):
        a, f, u = darcy_manufactured(s)
        errors.append((darcy.solve(a, f) - u).abs().max().item())
    orders = [math.log2(coarse / fine) for coarse, fine in zip(errors, errors[1:])]
    assert all(1.8 <= order <= 2.2 for order in orders), (errors, orders)


def test_matches_sparse_direct_solve_on_piecewise_constant_coefficient():
    s = 33
    a = darcy.coefficient(grf_neumann(2, s, seed=8))
    generator = torch.Generator().manual_seed(0)
    f = torch.rand(2, s, s, generator=generator, dtype=torch.float64) + 0.5
    u = darcy.solve(a, f, rtol=1e-13)
    for k in range(2):
        reference = torch.from_numpy(solve_scipy(a[k].numpy(), f[k].numpy()))
        assert (u[k] - reference).norm() / reference.norm() < 1e-8


def test_iteration_count_bounded_by_contrast_not_grid():
    fine = darcy.coefficient(grf_neumann(2, 129, seed=9))
    counts = [darcy.solve_with_info(fine[:, ::stride, ::stride]).iterations for stride in (4, 2, 1)]  # s = 33, 65, 129
    assert max(counts) <= 1.3 * min(counts), counts
    assert max(counts) < 60, counts


def test_batched_unbatched_and_scalar_source_agree(device):
    a = darcy.coefficient(grf_neumann(3, 17, seed=10, device=device))
    batched = darcy.solve(a, 1.0)
    assert batched.shape == a.shape and batched.device.type == device.type
    torch.testing.assert_close(darcy.solve(a[1]), batched[1], rtol=1e-9, atol=0)
    torch.testing.assert_close(darcy.solve(a, torch.ones_like(a)), batched, rtol=0, atol=0)
    assert (
        (batched[:, 0] == 0).all()
        and (batched[:, -1] == 0).all()
        and (batched[:, :, 0] == 0).all()
        and (batched[:, :, -1] == 0).all()
    )


def test_float32_runs_in_float32_with_looser_default_tolerance():
    a = darcy.coefficient(grf_neumann(2, 33, seed=11))
    result = darcy.solve_with_info(a.float())
    assert result.u.dtype == torch.float32
    assert (result.residual <= 1e-5).all()
    torch.testing.assert_close(result.u.double(), darcy.solve(a), rtol=1e-4, atol=1e-8)


def test_zero_source_gives_zero_solution():
    a = torch.full((5, 5), 2.0, dtype=torch.float64)
    result = darcy.solve_with_info(a, 0.0)
    assert result.iterations == 0 and torch.equal(result.u, torch.zeros_like(a))


def test_not_converging_raises_naming_the_residual():
    a = darcy.coefficient(grf_neumann(1, 33, seed=12))
    with pytest.raises(RuntimeError, match="relative residual"):
        darcy.solve(a, max_iter=2)


def _valid() -> torch.Tensor:
    return torch.ones(2, 9, 9, dtype=torch.float64)


@pytest.mark.parametrize(
    ("a", "f", "pattern"),
    [
        (
            _valid().index_put_(
                (torch.tensor(0), torch.tensor(3), torch.tensor(4)), torch.tensor(float("nan"), dtype=torch.float64)
            ),
            1.0,
            "a must be finite",
        ),
        (
            _valid().index_put_(
                (torch.tensor(1), torch.tensor(0), torch.tensor(0)), torch.tensor(-1.0, dtype=torch.float64)
            ),
            1.0,
            "a must be positive",
        ),
        (torch.zeros(2, 9, 9, dtype=torch.float64), 1.0, "a must be positive"),
        (torch.ones(1, 2, 9, 9), 1.0, r"a must have shape \(B, s, s\)"),
        (torch.ones(9), 1.0, r"a must have shape \(B, s, s\)"),
        (torch.ones(2, 9, 8), 1.0, "a must be square"),
        (torch.ones(2, 2, 2), 1.0, "a must have s >= 3"),
        (torch.ones(2, 9, 9, dtype=torch.float16), 1.0, "a must be float32 or float64"),
        (_valid(), torch.ones(9, 9, dtype=torch.float64), "f must be a scalar or have a's shape"),
        (_valid(), float("inf"), "f must be finite"),
    ],
)
def test_invalid_input_names_the_argument(a, f, pattern):
    with pytest.raises(ValueError, match=pattern):
        darcy.solve(a, f)


@pytest.mark.parametrize(("kwargs", "name"), [({"rtol": 0.0}, "rtol"), ({"max_iter": 0}, "max_iter")])
def test_invalid_solver_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        darcy.solve(_valid(), **kwargs)
