"""Batched ETDRK4 time stepping for semilinear periodic 1-D problems ``u_t = L u + N(u)``.

The field lives on the nodes ``x_j = j / s`` of the unit torus ``[0, 1)`` and the state is
kept as its real FFT ``v = rfft(u)``, `(B, s // 2 + 1)`. ``L`` is diagonal in Fourier
space (one multiplier per rfft wavenumber) and is integrated exactly; ``N`` is
integrated by the fourth-order exponential Runge–Kutta scheme of Cox & Matthews (2002)
with the coefficients of Kassam & Trefethen (2005, "Fourth-order time-stepping for stiff
PDEs", SIAM J. Sci. Comput. 26(4)):

    ``a = E₂ v + Q N(v)``, ``b = E₂ v + Q N(a)``, ``c = E₂ a + Q (2 N(b) − N(v))``,
    ``v ← E v + f₁ N(v) + 2 f₂ (N(a) + N(b)) + f₃ N(c)``,

with ``E = e^{hL}``, ``E₂ = e^{hL/2}`` and ``Q, f₁, f₂, f₃`` the φ-function combinations
evaluated as means over a circle of radius 1 around each ``hL`` in the complex plane
(their Cauchy integrals), which avoids the cancellation of the closed forms near
``hL = 0``. The coefficients are computed in float64/complex128 and cast to the state's
dtype.

Output times are hit exactly: the interval between consecutive output times is split into
the least integer number of equal steps not longer than ``dt``.

``N`` receives the band of the state spectrum (:class:`Nonlinearity`) and returns the band of
the spectrum of ``N(u)``; the transforms and the product are its own. Working on the band is
the exact Galerkin truncation (modes outside it never interact, they only follow ``L``), lets
it apply derivatives as multipliers at two FFTs per evaluation, and lets the stages run on the
band alone.
:func:`band_size` and :func:`dealias_mask` give Orszag's band and :func:`quadratic_advection`
the 2/3-dealiased ``−(u²/2)_x`` shared by the Burgers and Kuramoto–Sivashinsky solvers.

The argument checks and the subsampling rule shared by the 1-D periodic problems
(:mod:`~probneural.data.burgers`, :mod:`~probneural.data.kuramoto_sivashinsky`,
:mod:`~probneural.data.allen_cahn`) live here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, NamedTuple

import torch

from probneural.data.threads import map_on_threads
from probneural.validation import check_float, check_int

_CONTOUR_POINTS = 64
_REAL_TO_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class Nonlinearity(NamedTuple):
    """``N`` on its band: the leading ``band`` rfft modes, the only ones it depends on and is nonzero on.

    A dealiased ``N`` (the exact Galerkin truncation of a polynomial term) depends only on
    the modes of its band and is zero above it, so the modes above the band follow ``L``
    alone: :func:`integrate` advances them by ``e^{hL}`` and runs the ETDRK4 stages on the
    band only (for the 2/3 rule, two thirds of the spectrum).

    Attributes:
        apply: maps the band of the state, `(B, band)` complex, to the band of
            ``rfft(N(u))``, `(B, band)`; the transforms and the product are its own.
        band: number of leading rfft modes, ``1 <= band <= s // 2 + 1`` (all of them for an
            ``N`` that is not band-limited).
    """

    apply: Callable[[torch.Tensor], torch.Tensor]
    band: int


class Coefficients(NamedTuple):
    """ETDRK4 coefficients for one step size ``h``, each `(m,)` (one per multiplier of ``L``) in the
    state's complex dtype.

    Attributes:
        exp: ``E = e^{hL}``.
        exp_half: ``E₂ = e^{hL/2}``.
        q: ``Q = h φ₁(hL/2) / 2 = (e^{hL/2} − 1) / L``.
        f1: ``h (−4 − hL + e^{hL}(4 − 3hL + (hL)²)) / (hL)³``.
        f2: ``h (2 + hL + e^{hL}(hL − 2)) / (hL)³``.
        f3: ``h (−4 − 3hL − (hL)² + e^{hL}(4 − hL)) / (hL)³``.
    """

    exp: torch.Tensor
    exp_half: torch.Tensor
    q: torch.Tensor
    f1: torch.Tensor
    f2: torch.Tensor
    f3: torch.Tensor


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of the spectra of real ``dtype`` fields (float32 → complex64, float64 → complex128)."""
    return _REAL_TO_COMPLEX[dtype]


def wavenumbers(resolution: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Angular rfft wavenumbers ``2π k``, ``k = 0, ..., s // 2``, of the unit torus.

    ``∂_x`` acts on ``rfft(u)`` as multiplication by ``i · wavenumbers`` (for odd
    derivatives the Nyquist mode of an even ``s`` must be dropped, as the dealiasing
    masks do).

    Args:
        resolution: number of grid points ``s``.
        device: device of the result.

    Returns:
        `(s // 2 + 1,)` float64 tensor.
    """
    check_int("resolution", resolution, 1)
    return torch.arange(resolution // 2 + 1, dtype=torch.float64, device=device) * (2 * math.pi)


def dealias_mask(resolution: int, degree: int = 2, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Orszag's dealiasing mask for a polynomial nonlinearity of ``degree`` on ``s`` points.

    Keeps the rfft modes ``k`` with ``(degree + 1) k < s``: the 2/3 rule for quadratic
    terms (``degree = 2``), the 1/2 rule for cubic ones. Products of ``degree`` fields
    restricted to the kept band alias only onto removed modes.

    Args:
        resolution: number of grid points ``s``.
        degree: polynomial degree of the nonlinearity, ``>= 2``.
        device: device of the result.

    Returns:
        `(s // 2 + 1,)` bool tensor.
    """
    return torch.arange(resolution // 2 + 1, device=device) < band_size(resolution, degree)


def band_size(resolution: int, degree: int = 2) -> int:
    """Number of rfft modes that :func:`dealias_mask` keeps: ``k = 0, ..., ⌊(s − 1) / (degree + 1)⌋``.

    Args:
        resolution: number of grid points ``s``.
        degree: polynomial degree of the nonlinearity, ``>= 2``.
    """
    check_int("resolution", resolution, 1)
    check_int("degree", degree, 2)
    return (resolution - 1) // (degree + 1) + 1


def quadratic_advection(wavenumbers: torch.Tensor, resolution: int, dtype: torch.dtype) -> Nonlinearity:
    """``N(u) = −(u²/2)_x = −u u_x`` in conservative form, 2/3-dealiased, as an ETDRK4 nonlinearity.

    On the band ``k < s / 3`` (:func:`band_size`, the 2/3 rule) ``rfft(N(u)) = −(i q / 2) ·
    rfft(w²)`` with ``w = irfft`` of the band of ``rfft(u)`` (the modes above it taken as
    zero): the exact Galerkin truncation of the product. The mean mode is multiplied by
    ``q = 0`` exactly, so the mean of ``u`` is conserved.

    Args:
        wavenumbers: `(s // 2 + 1,)` angular wavenumbers ``q`` of ``∂_x`` (``2π k`` on the
            unit torus, ``2π k / L`` on a torus of length ``L``).
        resolution: number of grid points ``s``.
        dtype: real dtype of the fields (float32 or float64).

    Returns:
        :class:`Nonlinearity` on the band.
    """
    band = band_size(resolution, 2)
    factor = (-0.5j * wavenumbers[:band]).to(_REAL_TO_COMPLEX[dtype])

    def nonlinearity(v: torch.Tensor) -> torch.Tensor:
        w = torch.fft.irfft(v[:, :band], n=resolution)  # the band of a longer spectrum too
        return torch.fft.rfft(w.square_())[:, :band].mul_(factor)

    return Nonlinearity(nonlinearity, band)


def coefficients(linear: torch.Tensor, step: float, dtype: torch.dtype) -> Coefficients:
    """The ETDRK4 coefficients of ``linear`` for step ``h``, by Kassam & Trefethen's contour means.

    Each φ-function combination ``g(hL)`` is the mean of ``g`` over ``64`` equispaced points
    of the circle of radius 1 around ``hL`` (trapezoidal rule for Cauchy's integral,
    accurate to rounding). Computed in complex128 and cast to the complex dtype matching
    ``dtype`` (the state is a spectrum; complex coefficients spare a promotion per product).
    Entries of modulus below ``sqrt(finfo(dtype).tiny)`` (e.g. ``e^{hL}`` of strongly damped
    modes) are set to zero: their products with the state would be subnormal numbers,
    which are negligible and slow down CPU arithmetic severalfold.

    Args:
        linear: `(m,)` real or complex Fourier multipliers of ``L``.
        step: step size ``h > 0``.
        dtype: real dtype of the state (float32 or float64).

    Returns:
        :class:`Coefficients`.

    Raises:
        ValueError: ``e^{hL}`` overflows (``Re L`` far too large for ``h``).
    """
    hl = (linear.to(torch.complex128) * step)[:, None]
    angles = torch.arange(1, _CONTOUR_POINTS + 1, dtype=torch.float64, device=linear.device) - 0.5
    roots = torch.polar(torch.ones_like(angles), angles * (2 * math.pi / _CONTOUR_POINTS))
    z = hl + roots
    exp_z = torch.exp(z)
    z3 = z**3
    q = step * ((torch.exp(z / 2) - 1) / z).mean(dim=-1)
    f1 = step * ((-4 - z + exp_z * (4 - 3 * z + z * z)) / z3).mean(dim=-1)
    f2 = step * ((2 + z + exp_z * (z - 2)) / z3).mean(dim=-1)
    f3 = step * ((-4 - 3 * z - z * z + exp_z * (4 - z)) / z3).mean(dim=-1)
    hl = hl[:, 0]
    values = (torch.exp(hl), torch.exp(hl / 2), q, f1, f2, f3)
    if not all(torch.isfinite(v).all() for v in values):
        raise ValueError(
            f"linear must keep exp(dt · L) finite, got max Re(L) = {linear.real.max().item():.6g} with step {step:.6g}"
        )
    negligible = math.sqrt(torch.finfo(dtype).tiny)
    return Coefficients(*(torch.where(v.abs() < negligible, 0, v).to(_REAL_TO_COMPLEX[dtype]) for v in values))


def check_field(u0: torch.Tensor | object) -> tuple[torch.Tensor, bool]:
    """Validate the initial field ``u0`` of a solver and return it batched.

    Args:
        u0: `(B, s)` or `(s,)` real field, ``s >= 4``; integer input is converted to the
            default dtype.

    Returns:
        ``(field, unbatched)``: the `(B, s)` float32/float64 field and whether ``u0`` was `(s,)`.

    Raises:
        ValueError: wrong number of axes, ``s < 4``, empty batch, dtype other than
            float32/float64, NaN or Inf.
    """
    u0 = torch.as_tensor(u0)
    if not u0.is_floating_point():
        if u0.is_complex():
            raise ValueError(f"u0 must be real (float32 or float64), got dtype {u0.dtype}")
        u0 = u0.to(torch.get_default_dtype())
    if u0.dtype not in _REAL_TO_COMPLEX:
        raise ValueError(f"u0 must be float32 or float64, got dtype {u0.dtype}")
    if u0.ndim not in (1, 2):
        raise ValueError(f"u0 must have shape (B, s) or (s,), got {tuple(u0.shape)}")
    if u0.shape[-1] < 4:
        raise ValueError(f"u0 must have s >= 4 grid points, got s = {u0.shape[-1]}")
    if u0.numel() == 0:
        raise ValueError(f"u0 must hold at least one sample, got shape {tuple(u0.shape)}")
    if not torch.isfinite(u0).all():
        raise ValueError("u0 must be finite, got NaN or Inf values")
    unbatched = u0.ndim == 1
    return (u0.unsqueeze(0) if unbatched else u0), unbatched


def check_times(t: float | Sequence[float] | torch.Tensor) -> tuple[list[float], bool]:
    """Validate output times: a number, or a non-empty strictly increasing sequence, all finite and ``>= 0``.

    Args:
        t: a number, a sequence of numbers or a 0-/1-D tensor or array.

    Returns:
        ``(times, scalar)``: the times as Python floats and whether ``t`` was a single number.

    Raises:
        ValueError: ``t`` is empty, not numeric, negative, NaN/Inf or not strictly increasing.
    """
    if hasattr(t, "ndim") and hasattr(t, "tolist"):  # a tensor or an array
        if t.ndim > 1:
            raise ValueError(f"t must be a number or a 1-D sequence of times, got shape {tuple(t.shape)}")
        scalar = t.ndim == 0
        values = [t.item()] if scalar else t.tolist()
    elif isinstance(t, Sequence) and not isinstance(t, str):
        scalar, values = False, list(t)
    else:
        scalar, values = True, [t]
    if not values:
        raise ValueError("t must hold at least one output time, got an empty sequence")
    times = [check_float("t", value, nonnegative=True) for value in values]
    for earlier, later in zip(times, times[1:]):
        if later <= earlier:
            raise ValueError(f"t must be strictly increasing, got {later!r} after {earlier!r}")
    return times, scalar


def select(snapshots: torch.Tensor, unbatched: bool, scalar: bool) -> torch.Tensor:
    """Shape `(B, T, s)` snapshots like the caller's input.

    Drops the time axis for a single output time (``scalar``) and the batch axis for
    `(s,)` input (``unbatched``), as returned by :func:`check_times` and :func:`check_field`.
    """
    out = snapshots[:, -1] if scalar else snapshots
    return out[0] if unbatched else out


def check_subsampling(resolution: int, solve_resolution: int) -> int:
    """Validate a solve grid for striding down to ``resolution`` points and return the stride.

    Nodes ``j / s`` of the coarse grid are every ``stride``-th node of the fine one when
    ``solve_resolution = stride · resolution``.

    Raises:
        ValueError: ``solve_resolution`` is smaller than ``resolution`` or not a multiple of it
            (the message names the nearest valid values).
    """
    check_int("solve_resolution", solve_resolution, resolution)
    if solve_resolution % resolution:
        below = resolution * (solve_resolution // resolution)
        raise ValueError(
            f"solve_resolution must be a multiple of resolution={resolution} (the fields are subsampled by "
            f"striding), got {solve_resolution} (nearest valid: {below}, {below + resolution})"
        )
    return solve_resolution // resolution


def smallest_multiple(resolution: int, least: float) -> int:
    """The smallest multiple of ``resolution`` that is ``>= least``: a default solve grid."""
    return resolution * max(1, math.ceil(least / resolution))


def grid(resolution: int, dtype: torch.dtype) -> tuple[torch.Tensor]:
    """The nodes ``x_j = j / s`` of the unit torus as a one-axis grid, `(s,)` in ``dtype``."""
    return ((torch.arange(resolution, dtype=torch.float64) / resolution).to(dtype),)


def step_count(interval: float, dt: float) -> int:
    """The least number of equal steps not longer than ``dt`` covering ``interval`` (at least 1).

    A relative slack of ``1e-9`` absorbs rounding, so ``interval = 1, dt = 0.1`` gives 10 steps.
    """
    return max(1, math.ceil(interval / dt * (1 - 1e-9)))


def integrate(
    u0: torch.Tensor, linear: torch.Tensor, nonlinear: Nonlinearity, times: Sequence[float], dt: float
) -> torch.Tensor:
    """Integrate ``u_t = L u + N(u)`` from ``t = 0`` with ETDRK4 and return snapshots at ``times``.

    Runs on ``u0``'s device in ``u0``'s dtype (the coefficients are computed in float64 and
    cast). The ETDRK4 stages run on ``N``'s band; the modes above it are multiplied by
    ``e^{hL}`` each step, which is what ETDRK4 does where ``N`` is zero. Every sample of the
    batch takes the same steps, so a sample's result does not depend on the rest of the
    batch, up to rounding (batched FFTs of different sizes may round differently).

    On a CPU the batch is cut into ``min(B, torch.get_num_threads())`` contiguous parts,
    integrated on worker threads with one intra-op thread each
    (:func:`probneural.data.threads.map_on_threads`): a step is a few dozen small operations,
    and splitting each of them between threads cost a fork and a join per operation. A batch
    smaller than the thread count leaves threads idle; one sample runs in the calling thread
    with all of them. Other devices integrate the whole batch at once.

    Args:
        u0: `(B, s)` float32/float64 initial field on ``x_j = j / s``.
        linear: `(s // 2 + 1,)` real or complex multipliers of ``L`` on ``rfft(u)``.
        nonlinear: ``N`` on its band (:class:`Nonlinearity`), in ``u0``'s complex dtype
            (dealiasing included).
        times: output times, finite, ``>= 0`` and strictly increasing (see :func:`check_times`).
        dt: largest step ``> 0``; each interval between output times is split into
            :func:`step_count` equal steps.

    Returns:
        `(B, len(times), s)` snapshots ``u(t_i)`` (``u0`` itself for ``t = 0``).

    Raises:
        TypeError: ``nonlinear`` is not a :class:`Nonlinearity`.
        ValueError: ``linear`` or ``nonlinear.band`` has the wrong shape or size,
            ``nonlinear.apply`` returns another shape than its input's, or ``dt`` is not a
            positive number.
        RuntimeError: the solution became non-finite (the step is too large for the data).
    """
    modes = u0.shape[-1] // 2 + 1
    if linear.shape != (modes,):
        raise ValueError(f"linear must have shape (s // 2 + 1,) = ({modes},), got {tuple(linear.shape)}")
    if not isinstance(nonlinear, Nonlinearity):
        raise TypeError(f"nonlinear must be an etdrk4.Nonlinearity(apply, band), got {type(nonlinear).__name__}")
    if not 1 <= nonlinear.band <= modes:
        raise ValueError(f"nonlinear.band must be in [1, s // 2 + 1 = {modes}], got {nonlinear.band}")
    dt = check_float("dt", dt, positive=True)
    linear = linear.to(u0.device)
    coefficients_by_step: dict[float, Coefficients] = {}  # shared by the parts (the same steps)

    def work(part: slice) -> torch.Tensor:
        return _integrate(u0[part], linear, nonlinear, times, dt, coefficients_by_step)

    batch = u0.shape[0]
    if u0.device.type != "cpu":
        return work(slice(None))
    count = min(batch, torch.get_num_threads())
    bounds = [batch * i // count for i in range(count + 1)]
    parts = [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]
    return torch.cat(map_on_threads(parts, lambda: work, name="etdrk4"))


def _integrate(
    u0: torch.Tensor,
    linear: torch.Tensor,
    nonlinear: Nonlinearity,
    times: Sequence[float],
    dt: float,
    coefficients_by_step: dict[float, Coefficients],
) -> torch.Tensor:
    """:func:`integrate` of the whole batch ``u0`` in the calling thread (arguments checked), with a
    cache of the coefficients of each step size (filled here)."""
    resolution, band = u0.shape[-1], nonlinear.band
    out = torch.empty((u0.shape[0], len(times), resolution), dtype=u0.dtype, device=u0.device)
    spectrum = torch.fft.rfft(u0)
    v, above = spectrum[:, :band], spectrum[:, band:]  # views: the band steps by ETDRK4, the rest by e^{hL}
    u = u0
    now = 0.0
    for index, target in enumerate(times):
        if target > now:
            steps = step_count(target - now, dt)
            h = (target - now) / steps
            if h not in coefficients_by_step:
                coefficients_by_step[h] = coefficients(linear, h, u0.dtype)
            exp_above = coefficients_by_step[h].exp[band:]
            c = Coefficients(*(coefficient[:band] for coefficient in coefficients_by_step[h]))
            f2_twice = 2 * c.f2
            for step in range(steps):
                nv = nonlinear.apply(v)
                if step == 0 and nv.shape != v.shape:
                    raise ValueError(f"nonlinear.apply must return the shape of the band it is given, "
                                     f"{tuple(v.shape)}; got {tuple(nv.shape)}")
                ev = c.exp_half * v
                a = torch.addcmul(ev, c.q, nv)
                na = nonlinear.apply(a)
                nb = nonlinear.apply(torch.addcmul(ev, c.q, na))
                nc = nonlinear.apply(torch.addcmul(c.exp_half * a, c.q, 2 * nb - nv))
                v = (c.exp * v).addcmul_(c.f1, nv).addcmul_(f2_twice, na.add_(nb)).addcmul_(c.f3, nc)
                above = above * exp_above
            u = torch.fft.irfft(torch.cat([v, above], dim=1), n=resolution)
            if not bool(torch.isfinite(u).all()):
                raise RuntimeError(
                    f"the solution became non-finite before t = {target:g} (ETDRK4 step {h:g}): the step is too "
                    "large for this data; reduce dt, or the amplitude of the initial condition"
                )
            now = target
        out[:, index] = u
    return out
