"""Allen–Cahn equation ``u_t = ε² u_xx + u − u³`` on the unit torus.

``u[..., j]`` is the value at ``x_j = j / s`` of ``[0, 1)``, periodic. The equation is the
L² gradient flow of the Ginzburg–Landau energy
``E[u] = ∫ (ε²/2) u_x² + (u² − 1)² / 4 dx``: ``dE/dt = −∫ u_t² dx <= 0``. Random data
separate into the phases ``u = ±1`` within ``t ≈ 2–5`` (modes with ``2πk ε < 1`` grow),
joined by interfaces ``tanh((x − x₀) / (√2 ε))``; in 1-D the interfaces then move only
exponentially slowly (metastable coarsening).

Discretisation: Fourier pseudo-spectral in space; ETDRK4 in time
(:mod:`probneural.data.etdrk4`) with the linear part ``1 − ε² (2πk)²`` integrated exactly
and ``N(u) = −u³`` dealiased by the 1/2 rule (the exact Galerkin truncation of a cubic
term: the modes ``k < s / 4``, :func:`probneural.data.etdrk4.band_size` with
``degree = 3``). Spatially uniform data stay uniform and follow ``u' = u − u³``.

Default step ``dt = 0.02`` (:data:`DEFAULT_DT`). Measured on :func:`generate`'s
defaults (64 samples, float64, against ``dt / 10``, ``T ∈ [0.5, 10]``): relative L² error
of ``u(T)`` at most 1.1e-7 for ``ε ∈ {0.01, 0.02}`` and 9e-7 for ``ε = 0.05``; the
reaction rate ``|1 − 3u²|`` is at most 2 while ``|u| <= 1``, so data of modest amplitude
need no smaller step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from probneural.data import etdrk4, periodic1d
from probneural.data.dataset import OperatorDataset
from probneural.validation import check_float, check_int

__all__ = [
    "DEFAULT_DT",
    "DEFAULT_EPSILON",
    "GENERATOR_VERSION",
    "default_solve_resolution",
    "energy",
    "generate",
    "solve",
]

# Bump whenever a change to this module, the GRF or the seeding changes the generated numbers:
# it is part of every cache key, so stale cache files are never reused.
GENERATOR_VERSION = 2

DEFAULT_EPSILON = 0.02
"""Default interface parameter ``ε``: interfaces of width ``√2 ε ≈ 0.03``, 7 points at ``s = 256``."""

DEFAULT_DT = 0.02
"""Default ETDRK4 step (see the module docstring for the measured accuracy)."""

# Solve-grid points per unit of 1/ε: the 1/2-rule band then reaches k = 2.5 / ε, where the
# tanh interface's spectrum (decaying like exp(−π² √2 ε k)) is below 1e-12 of its peak.
_POINTS_PER_INVERSE_EPSILON = 10
_ESTIMATED_RELATIVE_ERROR = 1e-6
_ERROR_BASIS = (
    "relative L2 error of u(T) against dt/10 on the default data (alpha=2, tau=20, sigma=100): "
    "at most 1.1e-7 for epsilon in {0.01, 0.02} and 9e-7 for epsilon = 0.05, T in [0.5, 10]"
)


def solve(
    u0: torch.Tensor,
    t: float | Sequence[float] | torch.Tensor,
    *,
    epsilon: float = DEFAULT_EPSILON,
    dt: float = DEFAULT_DT,
) -> torch.Tensor:
    """Solve ``u_t = ε² u_xx + u − u³`` on the unit torus from ``u0`` to the times ``t``.

    Pseudo-spectral ETDRK4 (see the module docstring), on ``u0``'s device in ``u0``'s dtype
    (float32 or float64; integer input is converted to the default dtype). Every sample
    takes the same steps, so a batched solve equals the per-sample solves.

    Args:
        u0: `(B, s)` or `(s,)` initial field on ``x_j = j / s``, ``s >= 4``.
        t: output time ``>= 0``, or a strictly increasing sequence of them.
        epsilon: interface parameter ``ε > 0``.
        dt: largest time step; each interval between output times is split into the
            fewest equal steps ``<= dt``.

    Returns:
        ``u`` at ``t``: `(B, s)` for a number ``t``, `(B, len(t), s)` for a sequence
        (without the batch axis for `(s,)` input).

    Raises:
        ValueError: ``u0`` has the wrong shape or dtype or holds NaN/Inf; ``epsilon`` or
            ``dt`` is not positive; ``t`` is negative, NaN or not increasing.
    """
    epsilon = check_float("epsilon", epsilon, positive=True)
    dt = check_float("dt", dt, positive=True)
    u0, unbatched = etdrk4.check_field(u0)
    times, scalar = etdrk4.check_times(t)
    resolution = u0.shape[-1]
    k = etdrk4.wavenumbers(resolution, device=u0.device)
    out = etdrk4.integrate(u0, 1 - epsilon**2 * k**2, etdrk4.Nonlinearity(_minus_cube, 3), times, dt)
    return etdrk4.select(out, unbatched, scalar)


def _minus_cube(w: torch.Tensor) -> torch.Tensor:
    """``−w³``, overwriting ``w``: Allen–Cahn's nonlinear term on the grid values."""
    return w.pow_(3).neg_()


def energy(u: torch.Tensor, epsilon: float = DEFAULT_EPSILON) -> torch.Tensor:
    """Ginzburg–Landau energy ``∫ (ε²/2) u_x² + (u² − 1)² / 4 dx`` of periodic fields on ``x_j = j / s``.

    The gradient term is evaluated spectrally (Parseval), the potential by the trapezoidal
    rule (spectrally accurate for smooth periodic fields).

    Args:
        u: `(..., s)` fields.
        epsilon: interface parameter ``ε > 0``.

    Returns:
        `(...)` energies in ``u``'s dtype.
    """
    epsilon = check_float("epsilon", epsilon, positive=True)
    resolution = u.shape[-1]
    spectrum = torch.fft.rfft(u) / resolution
    k = etdrk4.wavenumbers(resolution, device=u.device).to(u.dtype)
    # Parseval: ∫ u_x² dx = Σ_{k ∈ Z} |2πk û_k|² with û = rfft(u) / s. The rfft holds k >= 0 only,
    # so 0 < k < s/2 count twice (for their conjugates at −k), the mean and the Nyquist mode once.
    weight = torch.full_like(k, 2.0)
    weight[0] = 1.0
    if resolution % 2 == 0:
        weight[-1] = 1.0
    gradient = (weight * k**2 * spectrum.abs() ** 2).sum(dim=-1)
    potential = ((u * u - 1) ** 2).mean(dim=-1) / 4
    return epsilon**2 / 2 * gradient + potential


def default_solve_resolution(resolution: int, epsilon: float = DEFAULT_EPSILON) -> int:
    """The default solve grid: the smallest multiple of ``resolution`` with at least ``10 / ε`` points.

    The 1/2-rule band then reaches ``k = 2.5 / ε``, where the interfaces' spectrum has
    decayed below 1e-12 of its peak (``ε = 0.02``: 500, i.e. 512 for ``resolution = 128``).
    """
    check_int("resolution", resolution, 4)
    epsilon = check_float("epsilon", epsilon, positive=True)
    return etdrk4.smallest_multiple(resolution, _POINTS_PER_INVERSE_EPSILON / epsilon)


def generate(
    n: int,
    resolution: int,
    *,
    seed: int = 0,
    epsilon: float = DEFAULT_EPSILON,
    t: float = 2.0,
    solve_resolution: int | None = None,
    alpha: float = 2.0,
    tau: float = 20.0,
    sigma: float = 100.0,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> OperatorDataset:
    """Allen–Cahn data: ``u0 ↦ u(T)``, phase separation from random initial data.

    Sample ``i``: ``u0`` is a periodic GRF drawn at ``solve_resolution`` from ``(seed, i)``
    by :func:`probneural.data.grf.grf_periodic` (Fourier coefficient ``k`` with standard
    deviation ``sigma / ((2πk)² + τ²)^(α/2)``, zero mean); the defaults give pointwise
    standard deviation ≈ 0.5 and about 7 sign changes. ``u0`` is solved to ``T = t`` with
    :func:`solve` in float64 on ``device``, and both fields are subsampled by striding to
    ``resolution``. At the default ``T = 2`` the phases are forming: about 40 % of the
    domain has ``|u| > 0.9`` and half of the sign changes have merged. The data depend only
    on the seed and the parameters, not on ``batch_size`` or the device (up to float64
    rounding).

    Args:
        n: number of samples.
        resolution: grid points of the returned fields, ``>= 4``.
        seed: data-set seed.
        epsilon: interface parameter ``ε``.
        t: final time ``T > 0``.
        solve_resolution: grid points of the solve, a multiple of ``resolution``; default
            :func:`default_solve_resolution`.
        alpha: GRF smoothness exponent.
        tau: GRF inverse length scale.
        sigma: GRF amplitude.
        batch_size: samples solved at once.
        dtype: dtype of the returned tensors.
        device: device of the computation and of the result (default: CPU).
        cache_dir: if set, load from / stream to this on-disk cache (:mod:`probneural.data.cache`).
        progress: show a tqdm progress bar.

    Returns:
        :class:`OperatorDataset` with ``x = u0`` `(n, 1, s)`, ``y = u(T)`` `(n, 1, s)`, grid
        ``x_j = j / s``, and metadata holding every parameter above except ``batch_size``,
        ``device``, ``cache_dir`` and ``progress``, plus the solver settings and its
        estimated relative error.

    Raises:
        ValueError: an argument is out of range, or ``solve_resolution`` is not a multiple
            of ``resolution``.
    """
    epsilon = check_float("epsilon", epsilon, positive=True)
    t = check_float("t", t, positive=True)
    if solve_resolution is None:
        solve_resolution = default_solve_resolution(resolution, epsilon)
    solver = {
        "name": "etdrk4",
        "space": "Fourier pseudo-spectral",
        "dealiasing": "1/2 rule (Galerkin truncation of u^3)",
        "dt_rule": "fixed",
        "dt": DEFAULT_DT,
        "steps": etdrk4.step_count(t, DEFAULT_DT),
        "dtype": "float64",
        "estimated_relative_error": _ESTIMATED_RELATIVE_ERROR,
        "error_basis": _ERROR_BASIS,
    }
    return periodic1d.generate(
        "allen_cahn", n, resolution, solve_resolution=solve_resolution, seed=seed, t=t, alpha=alpha, tau=tau,
        sigma=sigma, physics={"epsilon": epsilon}, solver=solver, solve_to=lambda u0: solve(u0, t, epsilon=epsilon),
        generator_version=GENERATOR_VERSION, batch_size=batch_size, dtype=dtype, device=device,
        cache_dir=cache_dir, progress=progress,
    )
