"""Kuramoto–Sivashinsky equation ``u_t + u u_x + u_xx + u_xxxx = 0`` on a periodic domain of length ``L``.

Coordinates: the equation holds in its usual units on ``X ∈ [0, L)``; ``u[..., j]`` is the
value at ``X_j = L · j / s`` (the nodes ``x_j = j / s`` of the unit interval scaled by
``L``), and time is the equation's own. The rfft mode ``k`` has wavenumber
``q = 2πk / L`` and linear growth rate ``q² − q⁴``: modes with ``0 < q < 1`` are unstable
(``k < L / 2π``), and the nonlinear transfer to the strongly damped short waves makes the
dynamics chaotic for ``L`` beyond about 20 (``L = 22`` is the classic small chaotic domain,
about three unstable modes; Kassam & Trefethen's example is ``L = 32π``).

Discretisation: Fourier pseudo-spectral in space with the 2/3-dealiased conservative
``−(u²/2)_X`` (:func:`probneural.data.etdrk4.quadratic_advection`); ETDRK4 in time with the
stiff linear part ``q² − q⁴`` integrated exactly. The mean of ``u`` is an invariant and is
kept exactly (its mode is never changed).

Default step ``dt = 0.02`` (:data:`DEFAULT_DT`). Measured on :func:`generate`'s defaults
(``L = 22``, 64 samples, float64, against ``dt / 10``): relative L² error of ``u(T)``
5.4e-7 at ``T = 10``, below that earlier; the chaotic dynamics amplify it later (8e-6 at
``T = 20``, 4e-5 at ``T = 50``). The temporal order is 4 for smooth solutions (3 to 4 in
the pre-asymptotic range of the stiff modes). The spatial error of the default solve grid
is about 1e-12.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from probneural.data import etdrk4, periodic1d
from probneural.data.dataset import OperatorDataset
from probneural.validation import check_float, check_int

__all__ = ["DEFAULT_DT", "DEFAULT_LENGTH", "GENERATOR_VERSION", "default_solve_resolution", "generate", "solve"]

# Bump whenever a change to this module, the GRF or the seeding changes the generated numbers:
# it is part of every cache key, so stale cache files are never reused.
GENERATOR_VERSION = 2

DEFAULT_LENGTH = 22.0
"""Default domain length ``L``: the classic small chaotic domain."""

DEFAULT_DT = 0.02
"""Default ETDRK4 step (see the module docstring for the measured accuracy)."""

# Solve-grid points per unit length: the 2/3-rule band then reaches q = 2π · 8 / 3 ≈ 17, where
# the spectrum of solutions on the attractor has decayed far below rounding.
_POINTS_PER_LENGTH = 8
_ESTIMATED_RELATIVE_ERROR = 1e-6
_CALIBRATED_TIME = 10.0
_ERROR_BASIS = (
    "relative L2 error of u(T) against dt/10 on the default data (L=22, alpha=4, tau=20, sigma=1e5): "
    "below 1e-6 for T <= 10 (no estimate beyond: the chaotic dynamics amplify it, 8e-6 at T=20, 4e-5 at T=50)"
)


def _semi_discretisation(
    resolution: int, length: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, etdrk4.Nonlinearity]:
    """``(L, N)`` of KS on ``s`` points: ``q² − q⁴`` (float64) and the dealiased ``−(u²/2)_X``."""
    q = etdrk4.wavenumbers(resolution, device=device) / length
    return q**2 - q**4, etdrk4.quadratic_advection(q, dtype)


def solve(
    u0: torch.Tensor,
    t: float | Sequence[float] | torch.Tensor,
    *,
    length: float = DEFAULT_LENGTH,
    dt: float = DEFAULT_DT,
) -> torch.Tensor:
    """Solve ``u_t + u u_X + u_XX + u_XXXX = 0`` on ``[0, length)``, periodic, from ``u0`` to the times ``t``.

    Pseudo-spectral ETDRK4 (see the module docstring), on ``u0``'s device in ``u0``'s dtype
    (float32 or float64; integer input is converted to the default dtype). Every sample
    takes the same steps, so a batched solve equals the per-sample solves.

    Args:
        u0: `(B, s)` or `(s,)` initial field at ``X_j = length · j / s``, ``s >= 4``.
        t: output time ``>= 0``, or a strictly increasing sequence of them.
        length: domain length ``L > 0``.
        dt: largest time step; each interval between output times is split into the
            fewest equal steps ``<= dt``.

    Returns:
        ``u`` at ``t``: `(B, s)` for a number ``t``, `(B, len(t), s)` for a sequence
        (without the batch axis for `(s,)` input).

    Raises:
        ValueError: ``u0`` has the wrong shape or dtype or holds NaN/Inf; ``length`` or
            ``dt`` is not positive; ``t`` is negative, NaN or not increasing.
    """
    length = check_float("length", length, positive=True)
    dt = check_float("dt", dt, positive=True)
    u0, unbatched = etdrk4.check_field(u0)
    times, scalar = etdrk4.check_times(t)
    linear, nonlinear = _semi_discretisation(u0.shape[-1], length, u0.dtype, u0.device)
    return etdrk4.select(etdrk4.integrate(u0, linear, nonlinear, times, dt), unbatched, scalar)


def default_solve_resolution(resolution: int, length: float = DEFAULT_LENGTH) -> int:
    """The default solve grid: the smallest multiple of ``resolution`` with at least ``8 · length`` points.

    ``8`` points per unit length put the 2/3-rule cut-off at ``q ≈ 17``, far beyond the
    scales of KS solutions (``L = 22``: 176, i.e. 192 for ``resolution = 64``, 256 for 128).
    """
    check_int("resolution", resolution, 4)
    length = check_float("length", length, positive=True)
    return etdrk4.smallest_multiple(resolution, _POINTS_PER_LENGTH * length)


def generate(
    n: int,
    resolution: int,
    *,
    seed: int = 0,
    length: float = DEFAULT_LENGTH,
    t: float = 10.0,
    solve_resolution: int | None = None,
    alpha: float = 4.0,
    tau: float = 20.0,
    sigma: float = 1e5,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> OperatorDataset:
    """Kuramoto–Sivashinsky data: ``u0 ↦ u(T)`` from smooth random initial data.

    Sample ``i``: ``u0`` is a periodic GRF drawn at ``solve_resolution`` from ``(seed, i)``
    by :func:`probneural.data.grf.grf_periodic` on the unit torus (Fourier coefficient ``k``
    with standard deviation ``sigma / ((2πk)² + τ²)^(α/2)``, zero mean); the defaults give
    smooth fields of pointwise standard deviation ≈ 0.9 (the attractor's is ≈ 1.2) with
    most energy in ``k <= 4``, i.e. around the unstable band of ``L = 22``. ``u0`` is
    solved to ``T = t`` with :func:`solve` in float64 on ``device``, and both fields are
    subsampled by striding to ``resolution``. The data depend only on the seed and the
    parameters, not on ``batch_size`` or the device (up to float64 rounding).

    ``T = 10`` is about half a Lyapunov time on the attractor (largest exponent ≈ 0.05 for
    ``L = 22``): the map is strongly nonlinear (``u(T)`` differs from the linearised flow
    by several times its norm) but not yet chaotic (input perturbations are not amplified
    on average: measured gain 0.75), so it is learnable; at ``T = 50`` the gain is ≈ 12.

    Args:
        n: number of samples.
        resolution: grid points of the returned fields, ``>= 4``.
        seed: data-set seed.
        length: domain length ``L``.
        t: final time ``T > 0``.
        solve_resolution: grid points of the solve, a multiple of ``resolution``; default
            :func:`default_solve_resolution`.
        alpha: GRF smoothness exponent.
        tau: GRF inverse length scale (on the unit torus).
        sigma: GRF amplitude.
        batch_size: samples solved at once.
        dtype: dtype of the returned tensors.
        device: device of the computation and of the result (default: CPU).
        cache_dir: if set, load from / stream to this on-disk cache (:mod:`probneural.data.cache`).
        progress: show a tqdm progress bar.

    Returns:
        :class:`OperatorDataset` with ``x = u0`` `(n, 1, s)`, ``y = u(T)`` `(n, 1, s)`, grid
        ``x_j = j / s`` (fractions of ``L``), and metadata holding every parameter above
        except ``batch_size``, ``device``, ``cache_dir`` and ``progress``, plus the solver
        settings and its estimated relative error.

    Raises:
        ValueError: an argument is out of range, or ``solve_resolution`` is not a multiple
            of ``resolution``.
    """
    length = check_float("length", length, positive=True)
    t = check_float("t", t, positive=True)
    if solve_resolution is None:
        solve_resolution = default_solve_resolution(resolution, length)
    solver = {
        "name": "etdrk4",
        "space": "Fourier pseudo-spectral",
        "dealiasing": "2/3 rule (Galerkin truncation of u^2)",
        "dt_rule": "fixed",
        "dt": DEFAULT_DT,
        "steps": etdrk4.step_count(t, DEFAULT_DT),
        "dtype": "float64",
        "estimated_relative_error": _ESTIMATED_RELATIVE_ERROR if t <= _CALIBRATED_TIME else None,
        "error_basis": _ERROR_BASIS,
    }
    return periodic1d.generate(
        "kuramoto_sivashinsky", n, resolution, solve_resolution=solve_resolution, seed=seed, t=t, alpha=alpha,
        tau=tau, sigma=sigma, physics={"length": length}, solver=solver,
        solve_to=lambda u0: solve(u0, t, length=length), generator_version=GENERATOR_VERSION,
        batch_size=batch_size, dtype=dtype, device=device, cache_dir=cache_dir, progress=progress,
    )
