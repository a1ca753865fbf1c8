"""Per-sample NumPy reference for the Navier–Stokes solver: the same scheme, one sample at a time.

The discretisation and time stepping of :func:`probneural.data.navier_stokes.solve` —
pseudo-spectral on ``(x_i, y_j) = (i, j) / s``, 2/3-rule advection, the RK3–Crank–Nicolson
scheme of Spalart, Moser & Rogers (1991), the same fixed-``dt`` or CFL step rule — written with
``numpy.fft`` for a single `(s, s)` field: what a user would write without batching. It
reproduces ``solve`` to rounding error, so benchmarks compare equal accuracy.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from probneural.bench.baselines import working_dtype
from probneural.data.navier_stokes import DEFAULT_CFL, dealiasing_cutoff

__all__ = ["SpectralTables", "solve_numpy", "spectral_tables", "step_numpy"]

# As in probneural.data.navier_stokes: the last-step margin and the (γ_k, ζ_k) of the RK3 stages.
_LAST_STEP_SLACK = 1e-6
_RK3_WEIGHTS = ((8 / 15, 0.0), (5 / 12, -17 / 60), (3 / 4, -5 / 12))


class SpectralTables(NamedTuple):
    """Wavenumber tables of one grid and viscosity (see :func:`spectral_tables`).

    Attributes:
        decay: `(s, s // 2 + 1)` viscous decay rate ``ν (2π|k|)²``.
        operators: `(4, s, s // 2 + 1)` multipliers from ``ŵ`` to the spectra of ``u``, ``v``,
            ``∂_x w``, ``∂_y w``.
        keep: `(s, s // 2 + 1)` 0/1 mask of the 2/3 modes without the mean mode.
    """

    decay: np.ndarray
    operators: np.ndarray
    keep: np.ndarray


@functools.lru_cache(maxsize=8)
def spectral_tables(resolution: int, viscosity: float, dtype: np.dtype = np.dtype(np.float64)) -> SpectralTables:
    """The :class:`SpectralTables` of an ``s × s`` grid for viscosity ``ν``, formed in float64 and
    rounded to the real ``dtype`` (its complex counterpart for ``operators``).

    Made once per ``(s, ν, dtype)`` and shared (read-only): a per-sample loop does not rebuild
    what does not depend on the sample, as our solver builds it once per batch."""
    kx = np.fft.fftfreq(resolution, d=1.0 / resolution)[:, None]
    ky = np.fft.rfftfreq(resolution, d=1.0 / resolution)[None, :]
    cutoff = dealiasing_cutoff(resolution)
    keep = (np.abs(kx) <= cutoff) & (np.abs(ky) <= cutoff)
    keep[0, 0] = False
    laplacian = (2 * np.pi) ** 2 * (kx**2 + ky**2)
    inverse_laplacian = np.where(keep, 1 / np.where(keep, laplacian, 1.0), 0.0)
    dx, dy = 2j * np.pi * kx, 2j * np.pi * ky
    keep = keep.astype(np.float64)
    operators = np.stack(np.broadcast_arrays(dy * inverse_laplacian, -dx * inverse_laplacian, dx * keep, dy * keep))
    complex_dtype = np.result_type(dtype, np.complex64)
    tables = SpectralTables((viscosity * laplacian).astype(dtype), operators.astype(complex_dtype), keep.astype(dtype))
    for table in tables:
        table.setflags(write=False)  # shared by every call
    return tables


def _explicit(
    w_hat: np.ndarray, tables: SpectralTables, forcing_hat: np.ndarray | None, with_speed: bool = False
) -> tuple[np.ndarray, float | None]:
    """``f − u·∇w`` (spectrum) of one field and, if asked, the CFL speed ``max(|u| + |v|)``."""
    s = w_hat.shape[0]
    u, v, w_x, w_y = np.fft.irfft2(tables.operators * w_hat, s=(s, s))
    tendency = -np.fft.rfft2(u * w_x + v * w_y) * tables.keep
    if forcing_hat is not None:
        tendency += forcing_hat
    return tendency, float(np.max(np.abs(u) + np.abs(v))) if with_speed else None


def _rk3_crank_nicolson(
    w_hat: np.ndarray, tendency: np.ndarray, h: float, tables: SpectralTables, forcing_hat: np.ndarray | None
) -> np.ndarray:
    previous = None
    for stage, (gamma, zeta) in enumerate(_RK3_WEIGHTS):
        if stage:
            previous, (tendency, _) = tendency, _explicit(w_hat, tables, forcing_hat)
        half_decay = 0.5 * (gamma + zeta) * h * tables.decay
        explicit_part = (1 - half_decay) * w_hat + gamma * h * tendency
        if previous is not None:
            explicit_part += zeta * h * previous
        w_hat = explicit_part / (1 + half_decay)
    return w_hat


def step_numpy(
    w_hat: np.ndarray, h: float, tables: SpectralTables, forcing_hat: np.ndarray | None = None
) -> np.ndarray:
    """One RK3–Crank–Nicolson step of length ``h`` (three advection evaluations).

    Args:
        w_hat: `(s, s // 2 + 1)` vorticity spectrum (``numpy.fft.rfft2`` of the field).
        h: step length.
        tables: :func:`spectral_tables` of the grid and viscosity.
        forcing_hat: `(s, s // 2 + 1)` forcing spectrum, or ``None``.

    Returns:
        `(s, s // 2 + 1)` spectrum after the step.
    """
    tendency, _ = _explicit(w_hat, tables, forcing_hat)
    return _rk3_crank_nicolson(w_hat, tendency, h, tables, forcing_hat)


def solve_numpy(
    w0: np.ndarray,
    viscosity: float,
    t: float,
    forcing: np.ndarray | None = None,
    dt: float | None = None,
    cfl: float = DEFAULT_CFL,
    max_dt: float | None = None,
) -> np.ndarray:
    """Solve the vorticity equation for one sample up to time ``t``.

    Args:
        w0: `(s, s)` initial vorticity on ``(i, j) / s``; float32 is solved in float32, anything
            else in float64.
        viscosity: ``ν > 0``.
        t: final time ``>= 0``.
        forcing: `(s, s)` time-independent forcing, or ``None``.
        dt: fixed step (``[0, t]`` cut into the fewest equal steps ``<= dt``); ``None`` uses
            the CFL rule ``h = cfl / (s · max(|u| + |v|))``, bounded by ``max_dt`` if given.
        cfl: CFL number of the adaptive rule.
        max_dt: upper bound on the adaptive step.

    Returns:
        `(s, s)` vorticity at ``t`` in the working dtype.
    """
    dtype = working_dtype(w0)
    w0 = np.asarray(w0, dtype=dtype)
    s = w0.shape[0]
    tables = spectral_tables(s, viscosity, dtype)
    w_hat = np.fft.rfft2(w0)
    forcing_hat = None if forcing is None else np.fft.rfft2(np.asarray(forcing, dtype=dtype))
    if dt is not None:
        n_steps = max(1, math.ceil(t / dt * (1 - _LAST_STEP_SLACK)))
        for _ in range(n_steps):
            w_hat = step_numpy(w_hat, t / n_steps, tables, forcing_hat)
        return np.fft.irfft2(w_hat, s=(s, s))
    clock = 0.0
    while clock < t:
        tendency, speed = _explicit(w_hat, tables, forcing_hat, with_speed=True)
        limit = cfl / (s * speed) if speed > 0 else math.inf
        if max_dt is not None:
            limit = min(limit, max_dt)
        remaining = t - clock
        if remaining <= limit * (1 + _LAST_STEP_SLACK):
            h = remaining
        elif remaining < 2 * limit:
            h = 0.5 * remaining
        else:
            h = limit
        w_hat = _rk3_crank_nicolson(w_hat, tendency, h, tables, forcing_hat)
        clock = t if h == remaining else clock + h
    return np.fft.irfft2(w_hat, s=(s, s))
