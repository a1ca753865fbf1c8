"""Data sets of 1-D periodic evolution problems: a GRF initial condition ``u0 ↦ u(t)``.

Burgers, Kuramoto–Sivashinsky and Allen–Cahn share everything around their solver: the
initial fields, the subsampling, the metadata layout and the generation plumbing. Each
problem's ``generate`` validates its physical parameters and calls :func:`generate`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

import probneural
from probneural.data import etdrk4, generation
from probneural.data.dataset import OperatorDataset
from probneural.data.grf import grf_periodic
from probneural.validation import check_float, check_floating_dtype, check_int

__all__ = ["generate"]


def generate(
    problem: str,
    n: int,
    resolution: int,
    *,
    solve_resolution: int,
    seed: int,
    t: float,
    alpha: float,
    tau: float,
    sigma: float,
    physics: dict[str, Any],
    solver: dict[str, Any],
    solve_to: Callable[[torch.Tensor], torch.Tensor],
    generator_version: int,
    batch_size: int,
    dtype: torch.dtype,
    device: torch.device | str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> OperatorDataset:
    """``u0 ↦ u(t)`` pairs: ``u0`` a periodic GRF drawn at ``solve_resolution`` from ``(seed, i)``.

    Args:
        problem: registered problem name (the metadata's ``"problem"``).
        n: number of samples.
        resolution: points of the returned fields (grid ``j / s``), ``>= 4``.
        solve_resolution: points of the solve, a multiple of ``resolution``.
        seed: data-set seed.
        t: final time (already validated by the caller; recorded in the metadata).
        alpha: GRF smoothness exponent.
        tau: GRF inverse length scale.
        sigma: GRF amplitude.
        physics: the problem's validated physical parameters, recorded in the metadata.
        solver: the solver's settings and estimated accuracy, recorded in the metadata.
        solve_to: `(B, solve_resolution)` float64 ``u0`` → `(B, solve_resolution)` ``u(t)``.
        generator_version: bumped by the problem whenever its numbers change.
        batch_size: samples solved at once.
        dtype: dtype of the returned tensors.
        device: device of the computation and of the result (default: CPU).
        cache_dir: if set, load from / stream to this on-disk cache.
        progress: show a tqdm progress bar.

    Returns:
        :class:`OperatorDataset` with ``x = u0`` `(n, 1, s)` and ``y = u(t)`` `(n, 1, s)`.
    """
    check_int("n", n, 1)
    check_int("resolution", resolution, 4)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    stride = etdrk4.check_subsampling(resolution, solve_resolution)
    alpha = check_float("alpha", alpha, positive=True)
    tau = check_float("tau", tau, positive=True)
    sigma = check_float("sigma", sigma, positive=True)
    check_floating_dtype("dtype", dtype)
    params = {
        "problem": problem,
        "n": n,
        "resolution": resolution,
        "solve_resolution": solve_resolution,
        "seed": seed,
        **physics,
        "t": t,
        "grf": {"kind": "periodic", "alpha": alpha, "tau": tau, "sigma": sigma, "mean_mode": "dropped"},
        "dtype": str(dtype).removeprefix("torch."),
        "solver": solver,
        "generator_version": generator_version,
        "probneural_version": probneural.__version__,
    }

    def sample_batch(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        u0 = grf_periodic(
            count, solve_resolution, alpha=alpha, tau=tau, sigma=sigma, seed=seed, start=start, device=device
        )
        u = solve_to(u0)
        return u0[:, None, ::stride].to(dtype), u[:, None, ::stride].to(dtype)

    return generation.build(
        params,
        n,
        sample_batch,
        etdrk4.grid(resolution, dtype),
        batch_size=batch_size,
        cache_dir=cache_dir,
        progress=progress,
        description=f"{problem} {resolution} from {solve_resolution}",
        device=device,
    )
