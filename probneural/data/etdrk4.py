"""Batched ETDRK4 time stepping for semilinear periodic 1-D problems ``u_t = L u + N(u)``.

The field lives on the nodes ``x_j = j / s`` of the unit torus ``[0, 1)`` and the state is
kept as its real FFT ``v = rfft(u) / s``, `(B, s // 2 + 1)`. ``L`` is diagonal in Fourier
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

``N`` is a dealiased polynomial term (:class:`Nonlinearity`): a Fourier multiplier applied to
``rfft(p(u))`` for a pointwise polynomial ``p`` of some degree ``d``, truncated to Orszag's band
(the exact Galerkin truncation). The integrator owns the transforms, so it can evaluate ``N`` on
any grid: the stages run on the band alone (modes outside it never interact, they only follow
``L``), and with ``trim_below`` set they run on the coarsest grid of the ladder ``s, s/2, s/4, ...``
that carries every non-negligible mode (:func:`integrate`). The state is kept in the ``forward``
normalisation (``rfft(u) / s``, the Fourier series coefficients), which does not depend on the grid.
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

from probneural.data.threads import ThreadTeam
from probneural.validation import check_float, check_int

_CONTOUR_POINTS = 64
# Steps of at least this many batch × grid points run in parts on a ThreadTeam (see integrate).
_THREADED_POINTS = 2**15
# Modes in the finest grid's first look at its spectrum (_highest_mode).
_GLANCE = 16
# Most steps on the finest grid between two checks of whether a coarser one would do (_march).
_MOST_UNCHECKED = 16
_REAL_TO_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class Nonlinearity(NamedTuple):
    """A dealiased polynomial term ``N(u) = m ⊙ rfft(p(u))``, kept on Orszag's band of each grid.

    On a grid of ``n`` points the band is the leading ``band_size(n, degree)`` rfft modes
    (:func:`band_size`): ``N`` is computed from the state's band alone (the modes above it
    taken as zero) and returned on that band, the exact Galerkin truncation of the product.
    Modes above the band never enter ``N``, so :func:`integrate` advances them by ``e^{hL}``
    and runs the ETDRK4 stages on the band only.

    Attributes:
        pointwise: ``p``, maps grid values `(B, n)` to `(B, n)` (it may overwrite its input).
        degree: polynomial degree ``d >= 2`` of ``p``: products of ``d`` band-limited fields
            alias only onto modes outside the band.
        multiplier: `(s // 2 + 1,)` complex Fourier multiplier ``m`` on the rfft modes of the
            finest grid (e.g. ``−i q / 2`` for ``−(u²/2)_x``), or ``None`` for 1.
    """

    pointwise: Callable[[torch.Tensor], torch.Tensor]
    degree: int
    multiplier: torch.Tensor | None = None

    def band(self, resolution: int) -> int:
        """Orszag's band on ``resolution`` points: :func:`band_size` of ``(resolution, degree)``."""
        return band_size(resolution, self.degree)

    def on_grid(self, v: torch.Tensor, resolution: int) -> torch.Tensor:
        """``N`` on the band of a grid of ``resolution`` points.

        Args:
            v: `(B, K)` the band (``K = band(resolution)``) of the state's rfft in the
                ``forward`` normalisation (``rfft(u) / s``: Fourier series coefficients).
            resolution: number of points ``n`` of the grid the product is formed on.

        Returns:
            `(B, K)` the band of ``N(u)``'s Fourier series coefficients.
        """
        band = v.shape[-1]
        product = torch.fft.rfft(self.pointwise(torch.fft.irfft(v, n=resolution, norm="forward")), norm="forward")
        product = product[:, :band]
        return product if self.multiplier is None else product.mul_(self.multiplier[:band])


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


def quadratic_advection(wavenumbers: torch.Tensor, dtype: torch.dtype) -> Nonlinearity:
    """``N(u) = −(u²/2)_x = −u u_x`` in conservative form, 2/3-dealiased, as an ETDRK4 nonlinearity.

    On the band ``k < n / 3`` of an ``n``-point grid (:func:`band_size`, the 2/3 rule)
    ``N = −(i q / 2) · rfft(w²)`` with ``w`` the field of the state's band: the exact Galerkin
    truncation of the product. The mean mode is multiplied by ``q = 0`` exactly, so the mean
    of ``u`` is conserved.

    Args:
        wavenumbers: `(s // 2 + 1,)` angular wavenumbers ``q`` of ``∂_x`` (``2π k`` on the
            unit torus, ``2π k / L`` on a torus of length ``L``).
        dtype: real dtype of the fields (float32 or float64).

    Returns:
        :class:`Nonlinearity` of degree 2.
    """
    return Nonlinearity(torch.Tensor.square_, 2, (-0.5j * wavenumbers).to(_REAL_TO_COMPLEX[dtype]))


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
    u0: torch.Tensor,
    linear: torch.Tensor,
    nonlinear: Nonlinearity,
    times: Sequence[float],
    dt: float,
    *,
    trim_below: float | None = None,
) -> torch.Tensor:
    """Integrate ``u_t = L u + N(u)`` from ``t = 0`` with ETDRK4 and return snapshots at ``times``.

    Runs on ``u0``'s device in ``u0``'s dtype (the coefficients are computed in float64 and
    cast). The ETDRK4 stages run on ``N``'s band; the modes above it are multiplied by
    ``e^{hL}`` each step, which is what ETDRK4 does where ``N`` is zero. Every sample of the
    batch takes the same steps.

    **Trimming.** With ``trim_below = τ``, a mode is negligible when ``max(|Re z|, |Im z|)``
    is at most ``τ / √2`` times the largest such value of its sample's, which implies that its
    modulus is at most ``τ`` times the largest. The stages run on the coarsest grid ``n`` of
    the ladder ``s, s/2, s/4, ...`` (halving while the size is even and at least 8) on which
    every mode ``k >= band(n) / d`` is negligible in every sample (``d`` the degree of ``N``);
    the modes above its band are dropped. Products of ``d`` fields reach beyond the band only
    through a factor above ``band(n) / d``, so what the coarse grid leaves out of ``N`` is of
    the order of ``τ`` per evaluation. The rule is applied to the result of every step on a
    coarse grid: a step whose result needs a finer grid than the one it ran on (the spectrum
    widened during the step) is redone on that grid. On the finest grid, where a step can only
    show that a coarser grid would do, it is applied after 1, 2, 4, ... up to 16 steps while it
    keeps the finest grid. Trimming assumes that ``pointwise`` is a polynomial of degree
    ``degree`` (not checked) and that no mode above the coarsest band grows faster than a lower
    one (checked: ``Re L`` must not exceed its minimum over the lower modes there), so that
    dropped modes stay negligible. Measured with ``τ`` at the dtype's epsilon (ADR 0020),
    trimmed Burgers solves agree with the whole grid's to 2.4e-17 (ν = 0.1) to 7e-16
    (ν = 1e-3) relative in float64; smooth, strongly damped data (ν = 0.1) need a few dozen
    modes after a few steps instead of thousands. The grid is chosen for the whole batch, so a
    sample's result depends on the rest of the batch only up to rounding (as batched FFTs of
    different sizes do). A grid with no coarser one on the ladder (odd ``s``, 4 or 6 points)
    is never trimmed.

    **Threads.** On a CPU, for a batch of two or more, a step of at least ``2^15`` batch × grid
    points is cut into ``min(B, torch.get_num_threads())`` contiguous parts of the batch,
    stepped on the threads of a :class:`probneural.data.threads.ThreadTeam` with one intra-op
    thread each (on the finest grid several steps per hand-over, as above; a whole output
    interval without trimming); smaller steps run on the whole batch in the calling thread,
    with one intra-op thread too. A step is a few dozen small operations: split between
    torch's threads each of them pays a fork and a join, and on small grids parts on several
    threads only contend for the GIL (Kuramoto–Sivashinsky at 192 points ran 2.2–3.3× slower in
    two parts on two threads than as one batch on one). A single sample, and other devices,
    step in the calling thread with its threads.

    Args:
        u0: `(B, s)` float32/float64 initial field on ``x_j = j / s``.
        linear: `(s // 2 + 1,)` real or complex multipliers of ``L`` on ``rfft(u)``.
        nonlinear: ``N`` (:class:`Nonlinearity`); its multiplier is moved to ``u0``'s device
            and complex dtype.
        times: output times, finite, ``>= 0`` and strictly increasing (see :func:`check_times`).
        dt: largest step ``> 0``; each interval between output times is split into
            :func:`step_count` equal steps.
        trim_below: ``τ`` in ``(0, 1)`` to trim negligible modes as above; ``None`` keeps the
            whole grid.

    Returns:
        `(B, len(times), s)` snapshots ``u(t_i)`` (``u0`` itself for ``t = 0``).

    Raises:
        TypeError: ``nonlinear`` is not a :class:`Nonlinearity`.
        ValueError: ``linear`` or ``nonlinear.multiplier`` has the wrong shape,
            ``nonlinear.degree`` is not an int ``>= 2``, ``nonlinear.pointwise`` returns
            another shape than its input's, ``dt`` is not a positive number,
            ``trim_below`` is not in ``(0, 1)``, or ``linear`` grows faster above the coarsest
            band than below it (with ``trim_below``).
        RuntimeError: the solution became non-finite (the step is too large for the data).
    """
    modes = u0.shape[-1] // 2 + 1
    if linear.shape != (modes,):
        raise ValueError(f"linear must have shape (s // 2 + 1,) = ({modes},), got {tuple(linear.shape)}")
    if not isinstance(nonlinear, Nonlinearity):
        raise TypeError(
            f"nonlinear must be an etdrk4.Nonlinearity(pointwise, degree, multiplier), got {type(nonlinear).__name__}"
        )
    check_int("nonlinear.degree", nonlinear.degree, 2)
    if nonlinear.multiplier is not None:
        if nonlinear.multiplier.shape != (modes,):
            raise ValueError(f"nonlinear.multiplier must have shape (s // 2 + 1,) = ({modes},), "
                             f"got {tuple(nonlinear.multiplier.shape)}")
        nonlinear = nonlinear._replace(multiplier=nonlinear.multiplier.to(u0.device, complex_dtype(u0.dtype)))
    values = nonlinear.pointwise(u0[:1].clone())
    if values.shape != (1, u0.shape[-1]):
        raise ValueError(f"nonlinear.pointwise must return the shape of the grid values it is given, "
                         f"(1, {u0.shape[-1]}); got {tuple(values.shape)}")
    dt = check_float("dt", dt, positive=True)
    linear = linear.to(u0.device)
    if trim_below is not None:
        if not 0 < check_float("trim_below", trim_below, positive=True) < 1:
            raise ValueError(f"trim_below must be in (0, 1) or None, got {trim_below!r}")
        ladder = _ladder(u0.shape[-1])
        if len(ladder) == 1:
            trim_below = None  # no coarser grid to move to
        else:
            _check_trimmable(linear, band_size(ladder[0], nonlinear.degree))
    if u0.device.type != "cpu" or u0.shape[0] == 1:
        return _march(u0, linear, nonlinear, times, dt, trim_below, None)
    with ThreadTeam("etdrk4") as team:
        return _march(u0, linear, nonlinear, times, dt, trim_below, team)


def _check_trimmable(linear: torch.Tensor, coarsest_band: int) -> None:
    """Trimming drops modes for good: none above the coarsest band may grow faster than a lower one.

    Raises:
        ValueError: ``Re L_k`` exceeds ``min_{j<k} Re L_j`` for some ``k >= coarsest_band``.
    """
    growth = linear.real.to(torch.float64)
    lowest_below = torch.cummin(growth, dim=0).values[coarsest_band - 1 : -1]
    faster = (growth[coarsest_band:] > lowest_below).nonzero()
    if len(faster):
        k = coarsest_band + int(faster[0])
        raise ValueError(
            f"trim_below needs a linear part whose modes above the coarsest band ({coarsest_band}) grow no faster "
            f"than the modes below them (Re L non-increasing there, as for diffusion); mode {k} has Re L = "
            f"{growth[k].item():.6g} above the {growth[: k].min().item():.6g} of a lower mode: a dropped mode could "
            "outgrow the kept ones. Pass trim_below=None"
        )


class _State(NamedTuple):
    """The spectrum during a solve: ``band`` on the current ``grid``, ``above`` on the finest only.

    Attributes:
        grid: points ``n`` of the grid the stages run on.
        band: `(B, band_size(n, d))` its band of the state (Fourier series coefficients).
        above: `(B, s // 2 + 1 − band_size(s, d))` the modes above the finest grid's band, which
            follow ``L`` alone; ``None`` on a coarser grid, where every mode above the band is zero.
    """

    grid: int
    band: torch.Tensor
    above: torch.Tensor | None


def _ladder(resolution: int) -> list[int]:
    """The grids trimming may use, coarsest first: ``s, s/2, s/4, ...``, halving while the size is even
    and at least 8 (so the coarsest is odd or has fewer than 8 points)."""
    grids = [resolution]
    while grids[-1] % 2 == 0 and grids[-1] >= 8:
        grids.append(grids[-1] // 2)
    return grids[::-1]


def _highest_mode(state: _State, trim_below: float | None, floor: int | None = None) -> int:
    """The highest mode of ``state`` that is not negligible in some sample: an index on the finest grid,
    -1 for none (and without ``trim_below``).

    A mode is negligible when its modulus is at most ``trim_below`` times the largest of its sample's,
    tested on ``max(|Re z|, |Im z|)``, which is within ``√2`` of ``|z|`` without squaring (no underflow
    or overflow): ``m_k <= τ · max_j m_j / √2`` implies ``|z_k| <= τ · max_j |z_j|``. A sample whose
    largest mode is not finite makes every mode significant (the finest grid), so a solution that
    blows up is still stepped, and reported, on the finest grid.

    With ``floor``, any non-negligible mode ``>= floor`` may be returned instead, which is all the
    finest grid needs to know to stay: a first look at the modes just above ``floor`` against the
    largest of the lowest modes (never above the true peak, so it can only find modes significant)
    then spares the full pass over the spectrum while its modes there are significant.
    """
    if trim_below is None:
        return -1
    factor = trim_below / math.sqrt(2)
    if floor is not None:
        low = _modulus_bound(state.band[:, :_GLANCE]).amax(dim=1, keepdim=True)
        if bool((_modulus_bound(state.band[:, floor : floor + _GLANCE]) > factor * low).any()):
            return floor
    parts = [_modulus_bound(state.band)]
    if state.above is not None and state.above.shape[1]:
        parts.append(_modulus_bound(state.above))
    peak = torch.stack([part.amax(dim=1) for part in parts]).amax(dim=0, keepdim=True).T
    limit = torch.where(torch.isfinite(peak), peak * factor, -math.inf)
    significant = torch.cat([(~(part <= limit)).any(dim=0) for part in parts]).nonzero()  # NaN is significant
    return int(significant[-1]) if len(significant) else -1


def _coarsest_grid(highest: int, ladder: list[int], degree: int) -> int:
    """The coarsest grid of ``ladder`` (:func:`_ladder`, coarsest first) on whose band the modes
    ``k >= band / degree`` are above ``highest`` (see :func:`integrate`); the finest if none is."""
    return next((n for n in ladder[:-1] if highest < -(-band_size(n, degree) // degree)), ladder[-1])


def _on_grid(state: _State, grid: int, resolution: int, degree: int) -> _State:
    """``state`` on another grid: its band cut or padded with zeros (the modes above a coarse band are zero)."""
    if grid == state.grid:
        return state
    band = band_size(grid, degree)
    kept = state.band[:, :band]
    if kept.shape[1] < band:
        kept = torch.cat([kept, kept.new_zeros(kept.shape[0], band - kept.shape[1])], dim=1)
    above = kept.new_zeros(kept.shape[0], resolution // 2 + 1 - band) if grid == resolution else None
    return _State(grid, kept, above)


def _modulus_bound(z: torch.Tensor) -> torch.Tensor:
    """``max(|Re z|, |Im z|)`` of a complex tensor, in its real dtype: between ``|z| / √2`` and ``|z|``."""
    return torch.view_as_real(z).abs().amax(dim=-1)


def _step(v: torch.Tensor, grid: int, c: Coefficients, nonlinear: Nonlinearity) -> torch.Tensor:
    """One ETDRK4 step of the band ``v`` `(B, K)` on a grid of ``grid`` points (``c`` on the band, ``c.f2``
    doubled)."""
    nv = nonlinear.on_grid(v, grid)
    ev = c.exp_half * v
    a = torch.addcmul(ev, c.q, nv)
    na = nonlinear.on_grid(a, grid)
    nb = nonlinear.on_grid(torch.addcmul(ev, c.q, na), grid)
    nc = nonlinear.on_grid(torch.addcmul(c.exp_half * a, c.q, 2 * nb - nv), grid)
    return (c.exp * v).addcmul_(c.f1, nv).addcmul_(c.f2, na.add_(nb)).addcmul_(c.f3, nc)


def _march(
    u0: torch.Tensor,
    linear: torch.Tensor,
    nonlinear: Nonlinearity,
    times: Sequence[float],
    dt: float,
    trim_below: float | None,
    team: ThreadTeam | None,
) -> torch.Tensor:
    """The time loop of :func:`integrate` (arguments checked).

    Steps of at least ``_THREADED_POINTS`` batch × grid points run in one part per thread of
    ``team``, the others on the whole batch in the calling thread. On the finest grid, where a
    step can only show that a coarser grid would do, the parts run several steps between checks
    (all of an output interval without trimming; with it 1, 2, 4, ... up to ``_MOST_UNCHECKED``
    while the checks keep the finest grid), so that they meet once per run of steps, not per step.
    """
    resolution, degree = u0.shape[-1], nonlinear.degree
    modes, finest_band = resolution // 2 + 1, nonlinear.band(resolution)
    out = torch.empty((u0.shape[0], len(times), resolution), dtype=u0.dtype, device=u0.device)
    spectrum = torch.fft.rfft(u0, norm="forward")
    state = _State(resolution, spectrum[:, :finest_band], spectrum[:, finest_band:])
    ladder = _ladder(resolution)
    if trim_below is not None:
        state = _on_grid(state, _coarsest_grid(_highest_mode(state, trim_below), ladder, degree), resolution, degree)
    coefficients_by_step: dict[float, Coefficients] = {}
    banded: dict[tuple[float, int], Coefficients] = {}  # the coefficients on each grid's band
    # the lowest mode that keeps the finest grid: a coarser grid needs every mode from here up negligible
    shrink_floor = -(-band_size(ladder[-2], degree) // degree) if len(ladder) > 1 else None

    def run(state: _State, h: float, count: int) -> tuple[_State, int]:
        """``count`` steps of ``state``, and the highest non-negligible mode of the result (each part finds its
        own)."""
        if (h, state.grid) not in banded:
            c = Coefficients(*(coefficient[: state.band.shape[1]] for coefficient in coefficients_by_step[h]))
            banded[h, state.grid] = c._replace(f2=2 * c.f2)  # f2 enters twice
        c, grid, exp_above = banded[h, state.grid], state.grid, coefficients_by_step[h].exp[finest_band:]
        floor = shrink_floor if grid == resolution else None

        def advance(part: _State) -> tuple[_State, int]:
            """``count`` steps of ``part``, and the highest non-negligible mode of the result."""
            v, high = part.band, part.above
            for _ in range(count):
                high = None if high is None else high * exp_above
                v = _step(v, grid, c, nonlinear)
            new = _State(grid, v, high)
            return new, _highest_mode(new, trim_below, floor)

        batch = state.band.shape[0]
        parts = 1 if team is None or batch * grid < _THREADED_POINTS else min(batch, team.size)
        if parts == 1:
            return advance(state)
        bounds = [batch * i // parts for i in range(parts + 1)]
        rows = [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]
        results = team.map(advance, [
            _State(grid, state.band[part], None if state.above is None else state.above[part]) for part in rows
        ])
        band = torch.cat([new.band for new, _ in results])
        above = None if state.above is None else torch.cat([new.above for new, _ in results])
        return _State(grid, band, above), max(highest for _, highest in results)

    u = u0
    now = 0.0
    unchecked = 1  # steps the next run on the finest grid may take
    for index, target in enumerate(times):
        if target > now:
            steps = step_count(target - now, dt)
            h = (target - now) / steps
            if h not in coefficients_by_step:
                coefficients_by_step[h] = coefficients(linear, h, u0.dtype)
            done = 0
            while done < steps:
                if trim_below is None:
                    count = steps - done
                else:
                    count = min(unchecked, steps - done) if state.grid == resolution else 1
                new, highest = run(state, h, count)
                if trim_below is not None:
                    grid = _coarsest_grid(highest, ladder, degree)
                    while grid > state.grid:  # the spectrum outgrew the grid during the step: redo it on the finer one
                        state = _on_grid(state, grid, resolution, degree)
                        new, highest = run(state, h, 1)
                        grid = max(grid, _coarsest_grid(highest, ladder, degree))
                    unchecked = min(2 * unchecked, _MOST_UNCHECKED) if grid == resolution else 1
                    new = _on_grid(new, grid, resolution, degree)
                state = new
                done += count
            u = torch.fft.irfft(_whole_spectrum(state, modes), n=resolution, norm="forward")
            if not bool(torch.isfinite(u).all()):
                raise RuntimeError(
                    f"the solution became non-finite before t = {target:g} (ETDRK4 step {h:g}): the step is too "
                    "large for this data; reduce dt, or the amplitude of the initial condition"
                )
            now = target
        out[:, index] = u
    return out


def _whole_spectrum(state: _State, modes: int) -> torch.Tensor:
    """`(B, modes)` the state's rfft modes on the finest grid (zeros above a coarse grid's band)."""
    if state.above is not None:
        return torch.cat([state.band, state.above], dim=1)
    whole = state.band.new_zeros(state.band.shape[0], modes)
    whole[:, : state.band.shape[1]] = state.band
    return whole
