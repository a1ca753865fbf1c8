"""Viscous Burgers equation ``u_t + (u²/2)_x = ν u_xx`` on the unit torus (Li et al. 2021).

Discretisation: ``u[..., j]`` is the value at ``x_j = j / s`` of ``[0, 1)``, periodic.
Space is Fourier pseudo-spectral; the nonlinear term is the exact Galerkin truncation by
the 2/3 rule (:func:`probneural.data.etdrk4.quadratic_advection`). Time is ETDRK4
(:mod:`probneural.data.etdrk4`): diffusion ``−ν (2πk)²`` is integrated exactly, so the
step is limited by accuracy, not by stiffness.

The stages run on the coarsest grid ``s / 2^j`` that carries every mode above rounding
(``trim``, ADR 0020). The FNO data are drawn at 8192 points, but at ``ν = 0.1`` three steps
leave ~130 modes above ``1e-15`` of the largest and five steps ~35: most steps run on 64 or
128 points, and the result agrees with the whole grid's to rounding (16 FNO inputs, one
thread, 8192-point fields: 2.4e-17 relative in float64, 1.1e-8 in float32; 10× less time). At
``ν = 0.01`` most steps run on 1024 points (5.5×, 5e-16). At ``ν = 1e-3`` the fronts keep
thousands of modes, the grid stays at 8192 or 4096 points, and the time is the whole grid's
(7e-16).

Default step (:func:`default_dt`): ``dt = 2.5e-3 · min(1, 0.1 / ν, ν / 1e-3)``, for data of
the FNO inputs' amplitude (rms ≈ 0.6, max ≈ 1.5). Measured against runs with ``dt / 10``
on FNO inputs (:func:`generate`'s defaults, 8 samples, float64), the relative L² error of
``u(T)`` stays below 1e-6 over ``ν ∈ [3e-4, 3]``, ``T ∈ [0.01, 1]`` and ``s ∈ [256, 8192]``
(the error does not depend on ``s``): worst 3.0e-7 at ``ν = 0.01, T = 0.1``; 2.5e-7 at
``ν = 0.1, T = 1`` (1.0e-6 at twice the step), 1.4e-7 at ``ν = 1e-3``, 7.7e-8 at
``ν = 0.3``, 2.3e-8 at ``ν = 1``. ETDRK4 loses some of its fourth order on such rough data
(``α = 2``; 2.5 to 4 measured): the error comes from the first steps, where the modes with
``ν (2πk)² dt ≈ 1`` decay. For ``u0 = sin 2πx, ν = 0.1`` the default step is within 6e-10
(``t = 0.1``) and 4e-11 (``t = 1``) of the Cole–Hopf solution. The ``0.1 / ν`` branch
covers the fast decay of strongly diffusive data, the ``ν / 1e-3`` branch the thin shocks
(width ``~ν / |u|``) of weakly diffusive data: at ``ν = 3e-4`` the step 2.5e-3 is unstable.
With the amplitude scale ``λ`` (:func:`default_dt`) the inputs with ``sigma = 50, 100``
(``λ = 2, 4``) stay below 4e-8 at ``ν ∈ {0.01, 0.1}``.

:func:`solve_mol` integrates the same semi-discretisation with adaptive Dormand–Prince
(torchdiffeq) as an independent check of the time stepping.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from probneural.data import etdrk4, periodic1d
from probneural.data.dataset import OperatorDataset
from probneural.validation import check_float

__all__ = ["GENERATOR_VERSION", "default_dt", "generate", "solve", "solve_mol"]

# Bump whenever a change to this module, the GRF or the seeding changes the generated numbers:
# it is part of every cache key, so stale cache files are never reused.
GENERATOR_VERSION = 2

_STEP = 2.5e-3
_DIFFUSIVE_VISCOSITY = 0.1
_SHOCK_VISCOSITY = 1e-3
_DT_RULE = "2.5e-3 * min(1, 0.1 / nu', nu' / 1e-3) / scale with nu' = viscosity / scale"
_ESTIMATED_RELATIVE_ERROR = 1e-6
_ERROR_BASIS = (
    "relative L2 error of u(T) against dt/10, measured on FNO inputs (alpha=2, tau=5, sigma=25): "
    "below 1e-6 for nu in [3e-4, 3], T in [0.01, 1], s in [256, 8192] (worst 3e-7); scaled by the amplitude"
)
_TRIMMING = (
    "stages on the coarsest grid solve_resolution / 2^j whose band exceeds 2x the highest mode above float64 epsilon "
    "times its sample's largest; steps whose spectrum outgrows the grid are redone on a finer one (ADR 0020)"
)
_MOL_TOLERANCES = {torch.float64: (1e-8, 1e-10), torch.float32: (1e-5, 1e-7)}
# The FNO inputs, on which the step rule is calibrated; generate scales the step by the rms ratio to these.
_REFERENCE_GRF = {"alpha": 2.0, "tau": 5.0, "sigma": 25.0}


def default_dt(viscosity: float, scale: float = 1.0) -> float:
    """The default ETDRK4 step: ``2.5e-3 · min(1, 0.1 / ν', ν' / 1e-3) / λ`` with ``ν' = ν / λ``.

    Calibrated for data of the FNO inputs' amplitude (``λ = 1``; see the module docstring
    for the measured accuracy). Burgers' scaling ``u → λu, t → t/λ, ν → λν`` carries the
    rule over to data ``λ`` times larger.

    Args:
        viscosity: ``ν > 0``.
        scale: amplitude ``λ > 0`` of the data relative to the FNO inputs (rms ≈ 0.6).

    Returns:
        Largest step.
    """
    viscosity = check_float("viscosity", viscosity, positive=True)
    scale = check_float("scale", scale, positive=True)
    reduced = viscosity / scale
    return _STEP * min(1.0, _DIFFUSIVE_VISCOSITY / reduced, reduced / _SHOCK_VISCOSITY) / scale


def _semi_discretisation(
    resolution: int, viscosity: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, etdrk4.Nonlinearity]:
    """``(L, N)`` of Burgers on ``s`` points: ``L = −ν (2πk)²`` (float64) and the dealiased ``−(u²/2)_x``."""
    k = etdrk4.wavenumbers(resolution, device=device)
    return -viscosity * k**2, etdrk4.quadratic_advection(k, dtype)


def solve(
    u0: torch.Tensor,
    viscosity: float,
    t: float | Sequence[float] | torch.Tensor,
    *,
    dt: float | None = None,
    trim: bool = True,
) -> torch.Tensor:
    """Solve ``u_t + (u²/2)_x = ν u_xx`` on the unit torus from ``u0`` to the times ``t``.

    Pseudo-spectral ETDRK4 (see the module docstring), on ``u0``'s device in ``u0``'s dtype
    (float32 or float64; integer input is converted to the default dtype). Every sample
    takes the same steps, so a batched solve equals the per-sample solves up to rounding.

    Args:
        u0: `(B, s)` or `(s,)` initial field on ``x_j = j / s``, ``s >= 4``.
        viscosity: ``ν > 0``.
        t: output time ``>= 0``, or a strictly increasing sequence of them.
        dt: largest time step; default :func:`default_dt` of ``viscosity``. Each interval
            between output times is split into the fewest equal steps ``<= dt``.
        trim: step on the coarsest grid ``s / 2^j`` that carries every mode above the
            dtype's epsilon times its sample's largest (:func:`probneural.data.etdrk4.integrate`,
            ADR 0020); the result agrees with the whole grid's to rounding. ``False`` steps on
            the whole grid.

    Returns:
        ``u`` at ``t``: `(B, s)` for a number ``t``, `(B, len(t), s)` for a sequence
        (without the batch axis for `(s,)` input).

    Raises:
        ValueError: ``u0`` has the wrong shape or dtype or holds NaN/Inf; ``viscosity``
            or ``dt`` is not positive; ``t`` is negative, NaN or not increasing.
    """
    viscosity = check_float("viscosity", viscosity, positive=True)
    u0, unbatched = etdrk4.check_field(u0)
    times, scalar = etdrk4.check_times(t)
    dt = default_dt(viscosity) if dt is None else check_float("dt", dt, positive=True)
    linear, nonlinear = _semi_discretisation(u0.shape[-1], viscosity, u0.dtype, u0.device)
    trim_below = torch.finfo(u0.dtype).eps if trim else None
    out = etdrk4.integrate(u0, linear, nonlinear, times, dt, trim_below=trim_below)
    return etdrk4.select(out, unbatched, scalar)


def solve_mol(
    u0: torch.Tensor,
    viscosity: float,
    t: float | Sequence[float] | torch.Tensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> torch.Tensor:
    """Method-of-lines Burgers solve with adaptive Dormand–Prince 5(4) (``torchdiffeq.odeint``).

    The ODE system is the semi-discretisation of :func:`solve` (spectral derivatives,
    2/3-dealiased ``u²``) in physical space, ``u' = irfft(−ν (2πk)² û + N(û))``, integrated
    with error control instead of exponential integration. The diffusion makes it stiff:
    the explicit method needs ``O(ν s² T)`` steps, so use it at small ``s`` only.
    Requires ``torchdiffeq``.

    Args:
        u0: `(B, s)` or `(s,)` initial field on ``x_j = j / s``, ``s >= 4``.
        viscosity: ``ν > 0``.
        t: output time ``>= 0``, or a strictly increasing sequence of them.
        rtol: relative tolerance; default ``1e-8`` (float64) or ``1e-5`` (float32).
        atol: absolute tolerance; default ``1e-10`` (float64) or ``1e-7`` (float32).

    Returns:
        Same shapes as :func:`solve`.

    Raises:
        ValueError: as :func:`solve`, or a tolerance is not positive.
    """
    from torchdiffeq import odeint

    viscosity = check_float("viscosity", viscosity, positive=True)
    u0, unbatched = etdrk4.check_field(u0)
    times, scalar = etdrk4.check_times(t)
    default_rtol, default_atol = _MOL_TOLERANCES[u0.dtype]
    rtol = default_rtol if rtol is None else check_float("rtol", rtol, positive=True)
    atol = default_atol if atol is None else check_float("atol", atol, positive=True)
    resolution = u0.shape[-1]
    linear, nonlinear = _semi_discretisation(resolution, viscosity, u0.dtype, u0.device)
    linear = linear.to(u0.dtype)

    band = nonlinear.band(resolution)

    def rhs(_: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(u, norm="forward")
        tendency = linear * spectrum
        tendency[:, :band] += nonlinear.on_grid(spectrum[:, :band], resolution)
        return torch.fft.irfft(tendency, n=resolution, norm="forward")

    knots = times if times[0] == 0 else [0.0, *times]
    out = odeint(rhs, u0, torch.tensor(knots, dtype=u0.dtype, device=u0.device), rtol=rtol, atol=atol, method="dopri5")
    out = out[len(knots) - len(times) :].movedim(0, 1)
    return etdrk4.select(out, unbatched, scalar)


def _grf_rms(alpha: float, tau: float, sigma: float, resolution: int) -> float:
    """Pointwise standard deviation of ``grf_periodic(resolution, alpha, tau, sigma)``: ``sqrt(Σ_{k≠0} λ_k)``."""
    k = torch.fft.fftfreq(resolution, d=1.0 / resolution, dtype=torch.float64)[1:]
    return math.sqrt((sigma**2 * (4 * math.pi**2 * k**2 + tau**2) ** (-alpha)).sum().item())


def generate(
    n: int,
    resolution: int,
    *,
    seed: int = 0,
    viscosity: float = 0.1,
    t: float = 1.0,
    solve_resolution: int = 8192,
    alpha: float = 2.0,
    tau: float = 5.0,
    sigma: float = 25.0,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> OperatorDataset:
    """Burgers data as in the FNO paper: ``u0 ↦ u(T)`` for ``u_t + (u²/2)_x = ν u_xx`` on the unit torus.

    Sample ``i``: ``u0`` is a periodic GRF drawn at ``solve_resolution`` from ``(seed, i)``
    by :func:`probneural.data.grf.grf_periodic` (Fourier coefficient ``k`` with standard
    deviation ``sigma / ((2πk)² + τ²)^(α/2)``, zero mean mode; the paper's
    ``25 / ((2πk)² + 25)``), solved to ``T = t`` with :func:`solve` in float64 on ``device``,
    and both fields are subsampled by striding to ``resolution``. The step is
    :func:`default_dt` with ``λ`` = the GRF's rms over the paper's (at least 1), so shifted
    amplitudes keep the accuracy. The data depend only on the seed and the parameters,
    not on ``batch_size`` or the device (up to float64 rounding).

    Args:
        n: number of samples.
        resolution: grid points of the returned fields, ``>= 4``.
        seed: data-set seed.
        viscosity: ``ν > 0`` (paper: 0.1; the released script used 1e-3).
        t: final time ``T > 0``.
        solve_resolution: grid points of the solve, a multiple of ``resolution``.
        alpha: GRF smoothness exponent (paper: 2).
        tau: GRF inverse length scale (paper: 5).
        sigma: GRF amplitude (paper: 25).
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
    viscosity = check_float("viscosity", viscosity, positive=True)
    t = check_float("t", t, positive=True)
    etdrk4.check_subsampling(resolution, solve_resolution)
    for name, value in (("alpha", alpha), ("tau", tau), ("sigma", sigma)):
        check_float(name, value, positive=True)
    # Rounded to 6 digits: a stable cache key whatever the summation order of the rms.
    ratio = _grf_rms(alpha, tau, sigma, solve_resolution) / _grf_rms(**_REFERENCE_GRF, resolution=solve_resolution)
    scale = max(1.0, float(f"{ratio:.6g}"))
    dt = default_dt(viscosity, scale)
    solver = {
        "name": "etdrk4",
        "space": "Fourier pseudo-spectral",
        "dealiasing": "2/3 rule (Galerkin truncation of u^2)",
        "dt_rule": _DT_RULE,
        "dt_scale": scale,
        "dt": dt,
        "steps": etdrk4.step_count(t, dt),
        "dtype": "float64",
        "grid_trimming": _TRIMMING,
        "estimated_relative_error": _ESTIMATED_RELATIVE_ERROR,
        "error_basis": _ERROR_BASIS,
    }
    return periodic1d.generate(
        "burgers", n, resolution, solve_resolution=solve_resolution, seed=seed, t=t, alpha=alpha, tau=tau,
        sigma=sigma, physics={"viscosity": viscosity}, solver=solver,
        solve_to=lambda u0: solve(u0, viscosity, t, dt=dt), generator_version=GENERATOR_VERSION,
        batch_size=batch_size, dtype=dtype, device=device, cache_dir=cache_dir, progress=progress,
    )
