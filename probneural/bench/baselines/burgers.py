"""Per-sample NumPy reference for the Burgers solver: Kassam & Trefethen's ETDRK4, one sample at a time.

The same discretisation and time stepping as :func:`probneural.data.burgers.solve`
(nodes ``x_j = j / s``, Fourier pseudo-spectral, 2/3-dealiased ``−(u²/2)_x``, ETDRK4 with
contour-integral coefficients, the same default step), written the way the method is
usually written in NumPy (``numpy.fft``, no batching): what a user would run
without our batched torch solver.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from probneural.bench.baselines import working_dtype
from probneural.data.burgers import default_dt

__all__ = ["solve_numpy"]

_CONTOUR_POINTS = 64


@functools.lru_cache(maxsize=8)
def _coefficients(s: int, viscosity: float, h: float, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """ETDRK4 tables of an ``s``-point grid, ``ν`` and step ``h``: the 2/3 mask, the advection
    factor and Kassam & Trefethen's contour-integral coefficients (formed in float64, rounded to
    ``dtype``). Made once per ``(s, ν, h, dtype)`` and shared (read-only), as Kassam & Trefethen's
    script forms them once before stepping: a per-sample loop does not redo them per sample."""
    k = np.arange(s // 2 + 1)
    q = 2 * np.pi * k
    keep = 3 * k < s
    linear = -viscosity * q**2
    g = -0.5j * q * keep
    # Kassam & Trefethen (2005): φ-function combinations as means over circles around hL
    roots = np.exp(1j * np.pi * (np.arange(1, _CONTOUR_POINTS + 1) - 0.5) * 2 / _CONTOUR_POINTS)
    lr = h * linear[:, None] + roots[None, :]
    e = np.exp(h * linear)
    e2 = np.exp(h * linear / 2)
    big_q = h * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = h * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, axis=1))
    f2 = h * np.real(np.mean((2 + lr + np.exp(lr) * (lr - 2)) / lr**3, axis=1))
    f3 = h * np.real(np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, axis=1))
    e, e2, big_q, f1, f2, f3 = (c.astype(dtype) for c in (e, e2, big_q, f1, f2, f3))
    tables = keep, g.astype(np.result_type(dtype, np.complex64)), e, e2, big_q, f1, f2, f3
    for table in tables:
        table.setflags(write=False)  # shared by every call
    return tables


def solve_numpy(u0: np.ndarray, viscosity: float, t: float, *, dt: float | None = None) -> np.ndarray:
    """Solve ``u_t + (u²/2)_x = ν u_xx`` on the unit torus for one sample.

    Args:
        u0: `(s,)` initial field on ``x_j = j / s``; float32 is solved in float32 (the ETDRK4
            coefficients are formed in float64 and rounded), anything else in float64.
        viscosity: ``ν > 0``.
        t: final time ``> 0``.
        dt: largest step; default :func:`probneural.data.burgers.default_dt` of ``viscosity``.
            ``t`` is split into the fewest equal steps ``<= dt``.

    Returns:
        `(s,)` solution ``u(t)`` in the working dtype.
    """
    dtype = working_dtype(u0)
    u0 = np.asarray(u0, dtype=dtype)
    s = u0.shape[0]
    if dt is None:
        dt = default_dt(viscosity)
    steps = max(1, math.ceil(t / dt * (1 - 1e-9)))
    h = t / steps
    keep, g, e, e2, big_q, f1, f2, f3 = _coefficients(s, viscosity, h, np.dtype(dtype))

    def nonlinear(v: np.ndarray) -> np.ndarray:
        w = np.fft.irfft(v * keep, n=s)
        return g * np.fft.rfft(w * w)

    v = np.fft.rfft(u0)
    for _ in range(steps):
        nv = nonlinear(v)
        a = e2 * v + big_q * nv
        na = nonlinear(a)
        b = e2 * v + big_q * na
        nb = nonlinear(b)
        c = e2 * a + big_q * (2 * nb - nv)
        nc = nonlinear(c)
        v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
    return np.fft.irfft(v, n=s)
