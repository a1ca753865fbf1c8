"""Every per-sample reference computes in its input's precision: float32 in, float32 arithmetic and out."""

import numpy as np
import pytest
import torch

from probneural.bench.baselines import burgers as burgers_reference
from probneural.bench.baselines import darcy as darcy_reference
from probneural.bench.baselines import navier_stokes as navier_stokes_reference
from probneural.bench.baselines import working_dtype
from probneural.data import burgers, darcy, navier_stokes
from probneural.data.grf import grf_neumann, grf_periodic


def _darcy_input():
    return darcy.coefficient(grf_neumann(1, 17, dim=2, alpha=2.0, tau=3.0, seed=3))[0]


def _burgers_input():
    return grf_periodic(1, 64, alpha=2.0, tau=5.0, sigma=25.0, seed=4)[0]


def _navier_stokes_input():
    return grf_periodic(1, 16, dim=2, alpha=2.5, tau=7.0, sigma=7**1.5, seed=5)[0]


CASES = {
    "darcy": (_darcy_input, lambda x: darcy_reference.solve_scipy(x), lambda x: darcy.solve(x[None], 1.0)[0]),
    "burgers": (
        _burgers_input,
        lambda x: burgers_reference.solve_numpy(x, 0.1, 0.5),
        lambda x: burgers.solve(x[None], viscosity=0.1, t=0.5)[0],
    ),
    "navier_stokes": (
        _navier_stokes_input,
        lambda x: navier_stokes_reference.solve_numpy(x, 1e-3, 0.2, dt=0.05),
        lambda x: navier_stokes.solve(x, 1e-3, 0.2, dt=0.05),
    ),
}


def test_working_dtype_is_float32_only_for_float32():
    assert working_dtype(np.zeros(2, np.float32)) == np.float32
    assert working_dtype(np.zeros(2, np.float64)) == np.float64
    assert working_dtype(np.zeros(2, np.int64)) == np.float64
    assert working_dtype([1.0, 2.0]) == np.float64


@pytest.mark.parametrize("problem", sorted(CASES))
def test_float32_reference_is_float32_and_agrees_to_its_rounding(problem):
    make, reference, ours = CASES[problem]
    x64 = make().to(torch.float64)
    single, double = reference(x64.float().numpy()), reference(x64.numpy())
    assert single.dtype == np.float32 and double.dtype == np.float64
    difference = np.linalg.norm(single - double) / np.linalg.norm(double)
    # float32 arithmetic (2e-7 to 1e-6 here): above what rounding the float64 answer alone gives (~3e-8)
    assert 1e-7 < difference < 1e-4, difference
    # and it agrees with our float32 solver as closely as with the float64 answer
    ours_single = ours(x64.float()).numpy()
    assert np.linalg.norm(ours_single - single) / np.linalg.norm(double) < 1e-4
