"""The per-sample NumPy Navier–Stokes baseline reproduces the batched torch solver (same scheme, same steps)."""

import numpy as np
import pytest
import torch

from probneural.bench.baselines.navier_stokes import solve_numpy, spectral_tables, step_numpy
from probneural.data import navier_stokes
from probneural.data.grf import grf_periodic


@pytest.mark.parametrize("dt", [None, 0.05])
def test_numpy_baseline_matches_solve(dt):
    s = 24
    w0 = 3 * grf_periodic(2, s, dim=2, alpha=2.5, tau=7.0, sigma=7**1.5, seed=1)
    nodes = torch.arange(s, dtype=torch.float64) / s
    forcing = navier_stokes.fno_forcing(*torch.meshgrid(nodes, nodes, indexing="ij"))
    ours = navier_stokes.solve(w0, 1e-3, 1.5, forcing=forcing, dt=dt)
    for b in range(2):
        reference = solve_numpy(w0[b].numpy(), 1e-3, 1.5, forcing=forcing.numpy(), dt=dt)
        assert np.abs(ours[b].numpy() - reference).max() < 1e-10 * np.abs(reference).max()


def test_step_numpy_is_one_fixed_step():
    w0 = grf_periodic(1, 16, dim=2, alpha=2.5, tau=7.0, sigma=7**1.5, seed=2)[0]
    stepped = np.fft.irfft2(step_numpy(np.fft.rfft2(w0.numpy()), 0.1, spectral_tables(16, 1e-3)), s=(16, 16))
    np.testing.assert_allclose(stepped, navier_stokes.solve(w0, 1e-3, 0.1, dt=0.1).numpy(), rtol=0, atol=1e-13)
