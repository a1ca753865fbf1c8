"""2-D incompressible Navier–Stokes in vorticity form on the unit torus (Li et al. 2021).

Equations: ``w_t + u·∇w = ν Δw + f`` with velocity ``u = ∇^⊥ψ = (∂_y ψ, −∂_x ψ)`` and
stream function ``−Δψ = w``, on ``[0, 1)²`` with periodic boundaries. ``w[..., i, j]`` is the
vorticity at ``(x_i, y_j) = (i, j) / s`` (first spatial axis = ``x``).

Space: Fourier pseudo-spectral on the ``s × s`` grid; the state is the spectrum of ``w``
(``torch.fft.rfft2``, halved along ``x``). The advection term is evaluated by the 2/3 rule in the
form of Basdevant (1983), ``u·∇w = (∂_xx − ∂_yy)(u v) + ∂_x∂_y(v² − u²)`` (an identity for
divergence-free ``u``): ``u`` and ``v`` are formed from the modes
``|k_x|, |k_y| <= K = ⌊(s − 1) / 3⌋`` only, the products ``u v`` and ``v² − u²`` on the grid,
and their derivatives truncated to the same modes. This is the exact Galerkin truncation of
``u·∇w`` (no aliasing) and conserves energy and enstrophy of the truncated inviscid system.
Modes above ``K`` do not interact; they only decay viscously (and follow the forcing). The
mean mode of the advection term is set to zero (it is a divergence), and ``ψ`` has zero mean,
so the mean of ``w`` changes only through the forcing's mean: zero-mean vorticity stays
exactly zero-mean under zero-mean forcing.

Time: the low-storage IMEX Runge–Kutta scheme of Spalart, Moser & Rogers (1991),
"RK3–CN": three stages, explicit third-order Runge–Kutta on ``E(w) = f − u·∇w``
(advection and forcing) and Crank–Nicolson over each stage on the viscous term. With
``D = ν (2π|k|)²`` (the viscous decay rate of mode ``k``), step ``h`` and ``w₀ = wⁿ``:

    ``w_k = [(1 − α_k hD) w_{k−1} + h (γ_k E(w_{k−1}) + ζ_k E(w_{k−2}))] / (1 + α_k hD)``, ``k = 1, 2, 3``

with ``γ = (8/15, 5/12, 3/4)``, ``ζ = (0, −17/60, −5/12)``, ``α_k = (γ_k + ζ_k) / 2`` and
``wⁿ⁺¹ = w₃``: three advection evaluations (one inverse and one forward complex 2-D FFT each)
per step. The scheme is second order (the Crank–Nicolson part limits it; the advection part
alone is third order). Unlike any two-stage second-order Runge–Kutta method (Heun) or AB2,
its explicit part is stable on the imaginary axis up to ``|θ| <= √3`` for an advective phase
``θ`` per step, so it damps rather than amplifies the fastest resolved modes even at
vanishing viscosity: at ``ν = 1e-5`` (128², ``T = 10``) Heun–CN blew up at the CFL number 0.5
while RK3–CN was stable up to 1.0 and 2.7× cheaper at equal accuracy. A steady state of the
scheme satisfies ``D w = E(w)`` exactly, as the PDE does (``2 α_k = γ_k + ζ_k``).

Step size: either ``dt`` (each output interval is cut into the fewest equal steps
``<= dt``) or a CFL rule recomputed at every step and for every sample separately from the
velocity of the current state, ``h = cfl / (s · max_x(|u| + |v|))``, bounded by ``max_dt``
if given. A step never jumps over an output time: when the remaining time to the next
output is at most one CFL step it is taken exactly; when it is less than two it is halved
(no tiny last steps). Output times are hit exactly. Because each sample sets its own steps,
a batched solve equals the per-sample solves (up to floating-point rounding of the batched
FFTs) and does not depend on what else is in the batch; samples that reached the output
time wait (a step of length zero is the identity).
"""

from __future__ import annotations

import inspect
import math
import os
import platform
from collections.abc import Callable, Sequence
from functools import partial
from typing import Union

import torch

import probneural
from probneural.allocator import heap_kept
from probneural.data import fftw, generation, spectral_passes
from probneural.data.dataset import OperatorDataset
from probneural.data.grf import grf_periodic
from probneural.data.threads import map_on_threads
from probneural.validation import check_float, check_floating_dtype, check_int, warn_unused

__all__ = ["DEFAULT_CFL", "GENERATOR_VERSION", "TASKS", "dealiasing_cutoff", "fno_forcing", "generate", "solve"]

# Bump whenever a change to this module, the GRF or the seeding changes the generated numbers:
# it is part of every cache key, so stale cache files are never reused.
GENERATOR_VERSION = 2

TASKS = ("final", "rollout")

# The CFL number ``h · s · max(|u| + |v|)``. The largest resolved advective phase per step is
# ``θ = 2π K h max(|u| + |v|) ≈ (2π/3) · cfl ≈ 1.05``, inside RK3's imaginary-axis stability
# limit √3 with a margin for the speed growing within a step.
DEFAULT_CFL = 0.5

# A remaining time within this relative margin of one step is taken as that last step.
_LAST_STEP_SLACK = 1e-6

# (γ_k, ζ_k) of the low-storage RK3 of Spalart, Moser & Rogers (1991); α_k = β_k = (γ_k + ζ_k) / 2.
_RK3_WEIGHTS = ((8 / 15, 0.0), (5 / 12, -17 / 60), (3 / 4, -5 / 12))

# Measured relative L2 error of w(T) at DEFAULT_CFL against 1/8 (1/4 at 256²) of its CFL number,
# one sample of the FNO setup; recorded in the metadata of generated data. Short horizons take few
# steps, the first ones long (the flow starts slow), and Crank–Nicolson does not damp their stiff
# modes: T = 1, the defaults, is the least accurate.
_ESTIMATED_TIME_ERROR = (
    "relative L2 error of w(T) at cfl 0.5: 1.8e-5 (nu 1e-3, 256², T 1: 2-4 steps), "
    "3e-7 (nu 1e-3, 128², T 10), 2e-5 (nu 1e-5, 128², T 10), 1.6e-6 (nu 1e-5, 256², T 20)"
)

# Extra elements per row of the buffers that are read column-wise (see _Spectral).
_ROW_PADDING = 8

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}

Forcing = Union[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], None]


def dealiasing_cutoff(resolution: int) -> int:
    """Largest wavenumber ``K = ⌊(s − 1) / 3⌋`` kept per axis by the 2/3 rule on an ``s``-point grid.

    ``K < s / 3`` strictly, so the product of two fields with ``|k| <= K`` aliases only onto
    modes above ``K``.
    """
    return (resolution - 1) // 3


class _Spectral:
    """Wavenumber tables, work buffers, the advection term and the time step of one grid and viscosity.

    Layout: the state is the half spectrum ``ŵ[b, k_x, k_y]`` of shape `(B, s // 2 + 1, s)`
    (``torch.fft.rfft2(w, dim=(-1, -2))``, halved along ``x``), so that every transform of the
    advection term runs along the last, contiguous axis.

    Advection in the form of Basdevant (1983): for divergence-free ``u = (u, v)``,
    ``u·∇w = (∂_xx − ∂_yy)(u v) + ∂_x∂_y(v² − u²)``: two fields in and two products out instead
    of four fields in (``u``, ``v``, ``∂_x w``, ``∂_y w``) and one out. Each pair of real fields
    travels as one complex field: ``z = u + i v`` in, ``z² = (u² − v²) + 2i u v`` out. Both
    complex 2-D transforms skip what the 2/3 rule discards: the inverse one transforms along
    ``y`` only the ``2K + 1`` lines ``|k_x| <= K`` (a line ``k_x < 0`` is the conjugate of the
    transform of a line built from the stored ``−k_x``), the forward one only the ``2K + 2``
    lines that the modes ``0 <= k_x <= K`` and their mirror images ``−k`` need. The products
    are formed from the 2/3 modes and truncated to them, so the term is the same Galerkin
    truncation as ``u·∇w`` evaluated directly. Per evaluation: ``2K + 1 + s`` inverse and
    ``s + 2K + 2`` forward complex 1-D transforms of length ``s``.

    Between the two passes of each 2-D transform the lines are transposed. The transposes read
    from buffers whose rows are padded by :data:`_ROW_PADDING` elements: a power-of-two row
    stride maps a column onto a few cache sets, which made these copies 3–4 times slower (256²,
    CPU). The arrays of an evaluation and of the stage updates live in buffers allocated once, for
    up to ``batch`` samples (CFL steps also allocate the speed's temporaries and the stage factors
    of each new step length): fresh multi-megabyte allocations cost page faults on every call (glibc
    returns them to the OS). Hence the solver is not differentiable, and :meth:`advection` returns
    one of two alternating buffers (valid until the second call after it). The exception: where
    the process keeps freed memory in its heap (:func:`probneural.allocator.heap_kept`, as the
    command-line entry points set it), the two transforms whose results are read row by row (``z``,
    and the spectra of the forward lines) return their own tensors, because torch's CPU FFT with
    ``out=`` transforms into a tensor of its own anyway and then copies it into ``out``: one pass
    fewer, 5–11 % of a 256² solve. Under glibc's default thresholds those fresh tensors page-fault
    (~1,500 faults per sample-step at 256², half the speed), so there the transforms write into buffers.

    On a CPU where the package's C library is built (:mod:`probneural.data.spectral_passes`), each
    group of two to four of the elementwise operations and transposes above runs as one pass: the
    velocity lines, each pair of transposes, the square with the CFL speed, the combination of the
    forward lines and each RK3 stage (0.86–0.94× the time of a 256² solve at two threads,
    same-process A/B). They are called without their argument checks: the arrays are this class's
    own buffers, the state it made and the results of its FFTs. On x86-64 the results are bitwise
    those of the torch operations when ``s`` is a multiple of 8, within rounding otherwise.
    Elsewhere (other devices, no library) the torch operations run.

    Where pyFFTW is installed (the ``fftw`` extra, :mod:`probneural.data.fftw`), the four line
    transforms of a call with the buffers' whole batch (every CPU solve: one sample per worker) run
    through FFTW plans made with the buffers (torch's CPU FFT prepares each call anew): 0.67–0.85×
    the time of a 256² solve, same-process A/Bs, results equal to those of ``torch.fft`` to
    rounding. The plans always write into the buffers.

    The time step applies each RK3 stage as three fused complex operations with per-stage
    factors (``(1 − αhD) / (1 + αhD)``, the forcing term, ``−γh / (1 + αhD)``) that depend only
    on the step lengths; they are computed in complex form once and reused while the step
    lengths and the forcing stay the same (every step of a fixed-``dt`` solve), which also
    avoids promoting real factors to complex on every use.

    Args:
        resolution: points per axis ``s``.
        viscosity: ``ν > 0``.
        batch: most samples per call ``B``.
        dtype: real dtype (float32 or float64).
        device: device of the tables and buffers.

    Attributes:
        rows: ``K + 1``, the half-spectrum rows ``0 <= k_x <= K`` that hold 2/3 modes.
        decay: `(s // 2 + 1, s)` real viscous decay rate ``ν (2π|k|)²``.
    """

    def __init__(self, resolution: int, viscosity: float, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        s, cutoff = resolution, dealiasing_cutoff(resolution)
        kx = torch.fft.rfftfreq(s, d=1.0 / s, dtype=dtype, device=device)[:, None]
        ky = torch.fft.fftfreq(s, d=1.0 / s, dtype=dtype, device=device)[None, :]
        self.resolution, self.cutoff, self.rows = s, cutoff, cutoff + 1
        self.decay = viscosity * (2 * math.pi) ** 2 * (kx**2 + ky**2)
        kx = kx[: self.rows]
        keep = (ky.abs() <= cutoff).expand(self.rows, -1).clone()
        keep[0, 0] = False
        keep = keep.to(dtype)
        squared = torch.where(keep > 0, kx**2 + ky**2, 1.0)
        # ẑ = (k_x + i k_y) ŵ / (2π|k|²) on the lines k_x = 0..K. The line −k_x is the conjugate of the
        # transform of (−k_x + i k_y) ŵ(k_x, ·) / (2π|k|²), built for k_x = K down to 1. The factor
        # 1 / s² makes the unscaled inverse transforms those of rfft2's spectrum.
        scale = keep / (2 * math.pi * s**2 * squared)
        # Line i < K + 1 of the inverse transform is row i of ŵ times the first factor, line K + m
        # (m = 1..K) row K + 1 − m times the mirrored one: factors (2K + 1, s), rows (2K + 1,).
        self._velocity_factors = torch.cat([torch.complex(kx, ky) * scale,
                                            (torch.complex(-kx, ky) * scale)[1:].flip(0)])
        self._velocity_rows = torch.cat([torch.arange(self.rows, device=device),
                                         torch.arange(cutoff, 0, -1, device=device)])
        # u·∇w = c Q + conj(c) Q̃ with Q the spectrum of z², Q̃(k) = conj(Q(−k)) and
        # c = (2π)² (k_x k_y / 2 + i (k_x² − k_y²) / 4) on the 2/3 modes.
        c = torch.complex(kx * ky / 2, (kx**2 - ky**2) / 4) * (2 * math.pi) ** 2 * keep
        self._from_square, self._from_square_mirrored = c, c.conj().resolve_conj()
        # The forward lines hold Q̃ for k_x = 0, K, K − 1, ..., 1 after those of Q for k_x = 0..K:
        # Q(k) pairs with line k_x of Q and line mirrored_lines[k_x] of Q̃, (K + 1,).
        self._mirrored_lines = torch.tensor([self.rows, *range(2 * self.rows - 1, self.rows, -1)], device=device)
        complex_dtype = _COMPLEX[dtype]
        lines, rows = 2 * cutoff + 1, self.rows
        self._lines = torch.empty((batch, lines, s), dtype=complex_dtype, device=device)
        self._line_values = _padded((batch, lines, s), complex_dtype, device)
        # Columns K < k_x < s − K stay zero: the lines the 2/3 rule discards.
        self._spectrum_rows = torch.zeros((batch, s, s), dtype=complex_dtype, device=device)
        self._square = _padded((batch, s, s), complex_dtype, device)
        self._velocity = torch.empty((batch, s, s), dtype=complex_dtype, device=device)
        self._square_lines = torch.empty((batch, 2 * rows, s), dtype=complex_dtype, device=device)
        self._square_spectra = torch.empty((batch, 2 * rows, s), dtype=complex_dtype, device=device)
        self._advection = torch.empty((2, batch, rows, s), dtype=complex_dtype, device=device)
        self._advection_calls = 0
        self._factors_key: tuple[list[float], torch.Tensor | None] | None = None
        self._factors: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        # FFTW's plans of the four line transforms of `batch` samples (first and second inverse pass, first and
        # second forward pass), or () where the solver uses torch.fft; planning leaves the buffers untouched
        self._plans = () if not fftw.available(self._lines) else (
            fftw.LineFFT(self._lines, self._line_values, inverse=True),
            fftw.LineFFT(self._spectrum_rows, self._velocity, inverse=True),
            fftw.LineFFT(self._velocity, self._square),
            fftw.LineFFT(self._square_lines, self._square_spectra),
        )
        self._native = spectral_passes.available(self._lines)
        if self._native:  # the C library's fused passes
            # After the first inverse pass, line i goes to column i of the grid's rows (i <= K), line K + m
            # to column s − K − 1 + m, conjugated. The forward lines read columns 0..K, then 0, s − K, ...,
            # s − 1 conjugated (Q̃ for k_x = 0, K, ..., 1).
            line_columns = torch.cat([torch.arange(rows), torch.arange(s - cutoff, s)])  # (2K + 1,)
            square_columns = torch.cat([line_columns[:rows], line_columns[:1], line_columns[rows:]])  # (2K + 2,)
            self._velocity_lines = spectral_passes.RowProducts(self._velocity_factors, self._velocity_rows, s // 2 + 1)
            self._lines_to_grid = spectral_passes.Transpose(line_columns, rows, s)
            self._grid_to_square_lines = spectral_passes.Transpose(square_columns, rows, s)
            self._advection_rows = spectral_passes.RowProducts(
                self._from_square, torch.arange(rows), 2 * rows, self._from_square_mirrored, self._mirrored_lines
            )
        else:  # the buffers of the torch operations
            self._mirrored = torch.empty((batch, cutoff, s), dtype=complex_dtype, device=device)
            self._square_mirrored = torch.empty((batch, rows, s), dtype=complex_dtype, device=device)
            self._explicit = torch.empty((batch, rows, s), dtype=complex_dtype, device=device)

    def _fftw_plans(self, batch: int) -> tuple[fftw.LineFFT, ...]:
        """FFTW's plans where they cover ``batch`` samples (the buffers' whole batch), else ``()``."""
        return self._plans if batch == self._lines.shape[0] else ()

    def velocity(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``z = u + i v`` on the grid from the 2/3 modes of ``ŵ``.

        Args:
            w_hat: `(B, s // 2 + 1, s)` vorticity half spectrum.

        Returns:
            `(B, s, s)` complex ``z[b, j, i] = (u + i v)(x_i, y_j)`` (transposed grid; a work buffer or a
            new tensor, see the class docstring: valid until the next call, and the caller may overwrite it).
        """
        batch, rows, cutoff = w_hat.shape[0], self.rows, self.cutoff
        lines, line_values, spectrum_rows = self._lines[:batch], self._line_values[:batch], self._spectrum_rows[:batch]
        if self._native:
            self._velocity_lines(lines, w_hat, check=False)
        else:
            mirrored = self._mirrored[:batch]
            torch.mul(self._velocity_factors[:rows], w_hat[:, :rows], out=lines[:, :rows])
            torch.index_select(w_hat, 1, self._velocity_rows[rows:], out=mirrored)
            torch.mul(self._velocity_factors[rows:], mirrored, out=lines[:, rows:])
        plans = self._fftw_plans(batch)
        if plans:
            plans[0]()
        else:
            torch.fft.ifft(lines, dim=-1, norm="forward", out=line_values)
        if self._native:
            self._lines_to_grid.to_grid(spectrum_rows, line_values, check=False)
        else:
            spectrum_rows[..., :rows] = line_values[:, :rows].mT
            torch.conj_physical(line_values[:, rows:].mT, out=spectrum_rows[..., -cutoff:])
        if plans:
            return plans[1]()
        return _line_transform(torch.fft.ifft, spectrum_rows, self._velocity[:batch], norm="forward")

    def advection(self, w_hat: torch.Tensor, *, with_speed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The dealiased advection term ``u·∇w`` and, if asked, the CFL speed ``max_x(|u| + |v|)``.

        Args:
            w_hat: `(B, s // 2 + 1, s)` vorticity half spectrum.
            with_speed: also return the speed (else ``None``).

        Returns:
            `(B, K + 1, s)` spectrum of ``u·∇w`` on the rows ``0 <= k_x <= K`` (one of two alternating
            work buffers: valid until the second call after this one), and `(B,)` speed or ``None``.
        """
        batch, rows, cutoff = w_hat.shape[0], self.rows, self.cutoff
        square, lines = self._square[:batch], self._square_lines[:batch]
        z = self.velocity(w_hat)
        if self._native:
            speed = spectral_passes.square_in_place(z, with_speed, check=False)
        else:
            speed = (z.real.abs() + z.imag.abs()).amax(dim=(-2, -1)) if with_speed else None
            z.mul_(z)
        plans = self._fftw_plans(batch)
        if plans:
            plans[2]()
        else:
            torch.fft.fft(z, dim=-1, out=square)
        if self._native:
            self._grid_to_square_lines.to_lines(lines, square, check=False)
        else:
            lines[:, :rows] = square[..., :rows].mT
            torch.conj_physical(square[..., 0], out=lines[:, rows])
            torch.conj_physical(square[..., -cutoff:].mT, out=lines[:, rows + 1 :])
        spectra = plans[3]() if plans else _line_transform(torch.fft.fft, lines, self._square_spectra[:batch])
        out = self._advection[self._advection_calls % 2, :batch]
        self._advection_calls += 1
        if self._native:
            return self._advection_rows(out, spectra, check=False), speed
        mirrored = torch.index_select(spectra, 1, self._mirrored_lines, out=self._square_mirrored[:batch])
        torch.mul(self._from_square, spectra[:, :rows], out=out)
        return out.addcmul_(self._from_square_mirrored, mirrored), speed

    def _stage_factors(
        self, h: torch.Tensor, forcing_hat: torch.Tensor | None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """Per RK3 stage: ``(1 − αhD) / (1 + αhD)``, ``2αh f̂ / (1 + αhD)`` (or ``None``) and ``−γh / (1 + αhD)``.

        Complex tensors of shape `(B or 1, s // 2 + 1, s)`, `(B or 1, s // 2 + 1, s)` and
        `(B or 1, K + 1, s)`: one leading row when every sample steps by the same ``h``. Cached
        for the last ``(h, forcing_hat)``.
        """
        steps = h.tolist()
        if self._factors_key is not None and self._factors_key[0] == steps and self._factors_key[1] is forcing_hat:
            return self._factors
        h = h[:1] if all(step == steps[0] for step in steps) else h
        h = h[:, None, None]
        complex_dtype = _COMPLEX[self.decay.dtype]
        self._factors = []
        for gamma, zeta in _RK3_WEIGHTS:
            alpha_h = (0.5 * (gamma + zeta)) * h
            inverse = torch.addcmul(torch.ones_like(alpha_h), self.decay, alpha_h).reciprocal_()  # 1 / (1 + αhD)
            damping = inverse.mul(2).sub_(1).to(complex_dtype)  # (1 − αhD) / (1 + αhD)
            explicit = inverse[:, : self.rows].mul(-gamma * h).to(complex_dtype)
            forcing = None if forcing_hat is None else forcing_hat * inverse.mul_(2 * alpha_h)
            self._factors.append((damping, forcing, explicit))
        self._factors_key = (steps, forcing_hat)
        return self._factors

    def step_(
        self,
        w_hat: torch.Tensor,
        advection: torch.Tensor,
        h: torch.Tensor,
        forcing_hat: torch.Tensor | None,
    ) -> torch.Tensor:
        """One RK3–Crank–Nicolson step of length ``h`` per sample, in place (see the module docstring).

        Stage ``k``: ``ŵ ← (1 − α_k hD)/(1 + α_k hD) ŵ + 2α_k h f̂/(1 + α_k hD)
        − γ_k h/(1 + α_k hD) (E_{k−1} + (ζ_k/γ_k) E_{k−2})`` (the last term on the rows
        ``k_x <= K``, where the advection ``E`` lives).

        Args:
            w_hat: `(B, s // 2 + 1, s)` vorticity half spectrum ``ŵⁿ``, overwritten with ``ŵⁿ⁺¹``.
            advection: `(B, K + 1, s)` advection term of ``wⁿ`` from :meth:`advection`.
            h: `(B,)` step lengths in the state's real dtype; ``h = 0`` leaves a sample unchanged.
            forcing_hat: `(B or 1, s // 2 + 1, s)` forcing half spectrum, or ``None``.

        Returns:
            ``w_hat``.
        """
        previous = None
        for stage, ((gamma, zeta), (damping, forcing, factor)) in enumerate(
            zip(_RK3_WEIGHTS, self._stage_factors(h, forcing_hat))
        ):
            if stage:
                previous, (advection, _) = advection, self.advection(w_hat)
            if self._native:
                spectral_passes.rk3_stage(w_hat, damping, forcing, factor, advection, previous, zeta / gamma,
                                          check=False)
                continue
            if forcing is None:
                w_hat.mul_(damping)
            else:
                torch.addcmul(forcing, damping, w_hat, out=w_hat)
            source = advection if previous is None else torch.add(advection, previous, alpha=zeta / gamma,
                                                                  out=self._explicit[: w_hat.shape[0]])
            w_hat[:, : self.rows].addcmul_(factor, source)
        return w_hat


def _line_transform(fft: Callable[..., torch.Tensor], lines: torch.Tensor, buffer: torch.Tensor,
                    **options: str) -> torch.Tensor:
    """``fft(lines, dim=-1)``: a new tensor where the heap is kept, else written into ``buffer`` (see :class:`_Spectral`)."""
    if heap_kept():
        return fft(lines, dim=-1, **options)
    return fft(lines, dim=-1, out=buffer, **options)


def _padded(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` whose rows are :data:`_ROW_PADDING` elements longer than its last axis."""
    *leading, last = shape
    return torch.empty((*leading, last + _ROW_PADDING), dtype=dtype, device=device)[..., :last]


def _half_spectrum(w: torch.Tensor) -> torch.Tensor:
    """`(..., s, s)` real field to its contiguous `(..., s // 2 + 1, s)` spectrum, halved along ``x``."""
    return torch.fft.rfft2(w, dim=(-1, -2)).contiguous()


def _check_vorticity(w0: torch.Tensor | object) -> torch.Tensor:
    w0 = torch.as_tensor(w0)
    if not (w0.is_floating_point() or w0.is_complex()):
        w0 = w0.to(torch.get_default_dtype())
    if w0.dtype not in _COMPLEX:
        raise ValueError(f"w0 must be float32 or float64, got dtype {w0.dtype}")
    if w0.ndim not in (2, 3):
        raise ValueError(f"w0 must have shape (B, s, s) or (s, s), got {tuple(w0.shape)}")
    if w0.shape[-1] != w0.shape[-2]:
        raise ValueError(f"w0 must be square in its last two axes (s, s), got {tuple(w0.shape)}")
    if w0.shape[-1] < 4:
        raise ValueError(f"w0 must have s >= 4 points per axis, got s = {w0.shape[-1]}")
    if w0.shape[0] == 0:
        raise ValueError(f"w0 must hold at least one sample, got shape {tuple(w0.shape)}")
    if not torch.isfinite(w0).all():
        raise ValueError("w0 must be finite, got NaN or Inf values")
    return w0


def _check_times(t: float | Sequence[float] | torch.Tensor) -> tuple[list[float], bool]:
    """The output times as floats and whether ``t`` was a single number."""
    if hasattr(t, "tolist"):
        t = t.tolist()
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return [check_float("t", t, nonnegative=True)], True
    if not isinstance(t, Sequence) or len(t) == 0:
        raise ValueError(f"t must be a nonnegative number or a nonempty increasing sequence of times, got {t!r}")
    times = [check_float(f"t[{i}]", value, nonnegative=True) for i, value in enumerate(t)]
    for i in range(1, len(times)):
        if times[i] <= times[i - 1]:
            raise ValueError(
                f"t must be strictly increasing, got t[{i - 1}] = {times[i - 1]!r} >= t[{i}] = {times[i]!r}"
            )
    return times, False


def _check_forcing(forcing: Forcing, w: torch.Tensor) -> torch.Tensor | None:
    """``forcing`` as a `(s, s)` or `(B or 1, s, s)` tensor on ``w``'s grid, dtype and device."""
    if forcing is None:
        return None
    batch, s = w.shape[0], w.shape[-1]
    name = "forcing"
    if callable(forcing):
        nodes = torch.arange(s, dtype=w.dtype, device=w.device) / s
        forcing = forcing(*torch.meshgrid(nodes, nodes, indexing="ij"))
        name = "forcing(x, y)"
    forcing = torch.as_tensor(forcing, dtype=w.dtype, device=w.device)
    batch_ok = forcing.ndim == 2 or forcing.ndim == 3 and forcing.shape[0] in (1, batch)
    if forcing.shape[-2:] != (s, s) or not batch_ok:
        raise ValueError(f"{name} must have shape ({s}, {s}) or ({batch}, {s}, {s}), got {tuple(forcing.shape)}")
    if not torch.isfinite(forcing).all():
        raise ValueError(f"{name} must be finite, got NaN or Inf values")
    return forcing


def _step_lengths(remaining: torch.Tensor, limit: torch.Tensor | float) -> torch.Tensor:
    """Step per sample: ``remaining`` if within one ``limit``, half of it if within two, else ``limit``."""
    return torch.where(
        remaining <= limit * (1 + _LAST_STEP_SLACK),
        remaining,
        torch.where(remaining < 2 * limit, 0.5 * remaining, limit),
    )


def solve(
    w0: torch.Tensor,
    viscosity: float,
    t: float | Sequence[float] | torch.Tensor,
    *,
    forcing: Forcing = None,
    dt: float | None = None,
    cfl: float = DEFAULT_CFL,
    max_dt: float | None = None,
) -> torch.Tensor:
    """Solve ``w_t + u·∇w = ν Δw + f``, ``u = ∇^⊥ψ``, ``−Δψ = w`` on the unit torus.

    See the module docstring for the discretisation, the RK3–Crank–Nicolson scheme and the
    step-size rule. Runs on ``w0``'s device in ``w0``'s dtype (float32 or float64; integer
    input is converted to the default dtype); the samples of a batch are independent. The
    solve reuses work buffers and is not differentiable. On a CPU the samples are integrated
    one at a time, spread over ``torch.get_num_threads()`` worker threads with one intra-op
    thread each (:func:`probneural.data.threads.map_on_threads`): one 256² sample's work arrays
    (1 MB each in float64) already exceed a core's L2 cache, and with one thread chunks of 4
    and 8 samples were 1.4× slower per sample than single samples. Other devices integrate the
    whole batch at once. Every sample is integrated alone, so the result does not depend on
    the batch or the thread count.

    Args:
        w0: `(B, s, s)` or `(s, s)` initial vorticity on ``(x_i, y_j) = (i, j) / s``, ``s >= 4``.
        viscosity: ``ν > 0``.
        t: output time ``T >= 0``, or a strictly increasing sequence (or 1-D tensor) of
            output times ``>= 0``.
        forcing: time-independent ``f``: ``None``; a tensor of shape `(s, s)` or `(B, s, s)`
            (or `(1, s, s)`); or a callable taking the `(s, s)` coordinate grids ``x, y``
            (``x[i, j] = i / s``, ``y[i, j] = j / s``, ``w0``'s dtype and device) and
            returning the `(s, s)` values.
        dt: fixed step: each output interval is cut into the fewest equal steps ``<= dt``.
            ``None`` (default) uses the CFL rule.
        cfl: CFL number of the adaptive rule, ``h = cfl / (s · max(|u| + |v|))``; ignored
            when ``dt`` is given.
        max_dt: upper bound on the adaptive step (useful for flows that start at or near
            rest, where the CFL step is unbounded); ignored when ``dt`` is given.

    Returns:
        ``w(T)``: `(B, s, s)` (or `(s, s)`) for a single time; `(B, len(t), s, s)` (or
        `(len(t), s, s)`) snapshots for a sequence.

    Raises:
        ValueError: ``w0`` has the wrong shape or dtype or holds NaN/Inf; ``viscosity``,
            ``dt``, ``cfl`` or ``max_dt`` is not a finite positive number; ``t`` is negative,
            empty or not strictly increasing; ``forcing`` has the wrong shape or holds NaN/Inf.
        RuntimeError: the solution became non-finite (the step was too large).
    """
    w0 = _check_vorticity(w0)
    viscosity = check_float("viscosity", viscosity, positive=True)
    times, single = _check_times(t)
    if dt is not None:
        dt = check_float("dt", dt, positive=True)
    cfl = check_float("cfl", cfl, positive=True)
    if max_dt is not None:
        max_dt = check_float("max_dt", max_dt, positive=True)
    unbatched = w0.ndim == 2
    w = w0.unsqueeze(0) if unbatched else w0
    forcing = _check_forcing(forcing, w)

    forcing_hat = None if forcing is None else _half_spectrum(forcing.reshape(-1, *forcing.shape[-2:]))
    batch, s = w.shape[0], w.shape[-1]

    def integrate(spectral: _Spectral, part: slice) -> torch.Tensor:
        part_forcing = forcing_hat if forcing_hat is None or forcing_hat.shape[0] == 1 else forcing_hat[part]
        return _integrate(spectral, w[part], times, part_forcing, dt=dt, cfl=cfl, max_dt=max_dt)

    if w.device.type == "cpu":
        # one sample at a time per worker thread, each worker with its own buffers
        samples = [slice(i, i + 1) for i in range(batch)]
        out = torch.cat(map_on_threads(
            samples, lambda: partial(integrate, _Spectral(s, viscosity, 1, w.dtype, w.device)), name="navier_stokes"
        ))
    else:
        out = integrate(_Spectral(s, viscosity, batch, w.dtype, w.device), slice(None))
    if single:
        out = out[:, 0]
    return out[0] if unbatched else out


def _integrate(
    spectral: _Spectral,
    w: torch.Tensor,
    times: list[float],
    forcing_hat: torch.Tensor | None,
    *,
    dt: float | None,
    cfl: float,
    max_dt: float | None,
) -> torch.Tensor:
    """Advance the validated vorticity ``w`` through the output ``times`` (see :func:`solve`).

    Args:
        spectral: tables and buffers of the grid and viscosity, for at least ``B`` samples.
        w: `(B, s, s)` initial vorticity.
        times: increasing output times ``>= 0``.
        forcing_hat: `(B or 1, s // 2 + 1, s)` forcing half spectrum, or ``None``.
        dt: fixed step, or ``None`` for the CFL rule.
        cfl: CFL number of the adaptive rule.
        max_dt: upper bound on the adaptive step, or ``None``.

    Returns:
        `(B, len(times), s, s)` snapshots.

    Raises:
        RuntimeError: the solution became non-finite.
    """
    batch, s, dtype, device = w.shape[0], w.shape[-1], w.dtype, w.device
    w_hat = _half_spectrum(w)
    clock = torch.zeros(batch, dtype=torch.float64, device=device)
    snapshots = []
    previous = 0.0
    for target in times:
        if dt is not None:
            span = target - previous
            limit: torch.Tensor | float = span / max(1, math.ceil(span / dt * (1 - _LAST_STEP_SLACK)))
        while bool((clock < target).any()):
            advection, speed = spectral.advection(w_hat, with_speed=dt is None)
            if dt is None:
                limit = cfl / (s * speed.to(torch.float64))
                if max_dt is not None:
                    limit = limit.clamp(max=max_dt)
            remaining = target - clock
            h = _step_lengths(remaining, limit)
            spectral.step_(w_hat, advection, h.to(dtype), forcing_hat)
            clock = torch.where(h == remaining, target, clock + h)
        snapshot = torch.fft.irfft2(w_hat, s=(s, s), dim=(-1, -2))
        if not bool(torch.isfinite(snapshot).all()):
            raise RuntimeError(
                f"Navier–Stokes solution became non-finite before t = {target:g}; "
                "reduce cfl (or dt), or raise the resolution"
            )
        snapshots.append(snapshot)
        previous = target
    return torch.stack(snapshots, dim=1)


def _implementation(dtype: torch.dtype, device: torch.device | str | None) -> dict[str, object]:
    """What computes the solver's passes for ``dtype`` on ``device``: results differ between implementations
    at the rounding level (which chaotic flows amplify), so data sets record it."""
    state = torch.empty(0, dtype=_COMPLEX[dtype], device=device)
    with_fftw = fftw.available(state)
    return {"device": state.device.type, "machine": platform.machine(), "torch": torch.__version__,
            "fft": "fftw" if with_fftw else "torch.fft", "pyfftw": fftw.version() if with_fftw else None,
            "fused_passes": spectral_passes.available(state)}


def fno_forcing(x: torch.Tensor, y: torch.Tensor, amplitude: float = 0.1) -> torch.Tensor:
    """The FNO paper's forcing ``f(x, y) = amplitude · (sin 2π(x + y) + cos 2π(x + y))`` (zero mean).

    Args:
        x: `(...)` first coordinate.
        y: `(...)` second coordinate, broadcastable with ``x``.
        amplitude: ``0.1`` in the paper.

    Returns:
        Tensor of the broadcast shape, ``x``'s dtype and device.
    """
    phase = 2 * math.pi * (x + y)
    return amplitude * (torch.sin(phase) + torch.cos(phase))


def _check_solve_resolution(resolution: int, solve_resolution: int) -> int:
    """Validate and return the subsampling stride ``solve_resolution / resolution``."""
    check_int("solve_resolution", solve_resolution, resolution)
    if solve_resolution % resolution:
        below = resolution * (solve_resolution // resolution)
        raise ValueError(
            f"solve_resolution={solve_resolution} cannot be subsampled to resolution={resolution}: it must be a "
            f"multiple of resolution (nearest valid: {below}, {below + resolution})"
        )
    return solve_resolution // resolution


# The options only one task reads: given to the other task they would change nothing.
_TASK_OPTIONS = {"final": ("t",), "rollout": ("snapshot_interval", "n_input_steps", "n_output_steps")}


def _check_task_options(task: str, **options: object) -> None:
    """Warn of an option of the other task set away from its default: it does not change the data."""
    defaults = {name: p.default for name, p in inspect.signature(generate).parameters.items()}
    for other, names in _TASK_OPTIONS.items():
        warn_unused(options, defaults, names, used=other == task, because=f"with task={other!r} (got task={task!r})",
                    stacklevel=3)


def generate(
    n: int,
    resolution: int = 64,
    *,
    seed: int = 0,
    viscosity: float = 1e-3,
    task: str = "final",
    t: float = 1.0,
    snapshot_interval: float = 1.0,
    n_input_steps: int = 10,
    n_output_steps: int = 10,
    solve_resolution: int = 256,
    forcing_amplitude: float = 0.1,
    alpha: float = 2.5,
    tau: float = 7.0,
    sigma: float = 7**0.75,
    cfl: float = DEFAULT_CFL,
    solve_dtype: torch.dtype = torch.float64,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> OperatorDataset:
    """Navier–Stokes data as in the FNO paper: vorticity on the unit torus under a fixed forcing.

    Sample ``i``: a periodic GRF ``w0`` with covariance ``sigma² (−Δ + τ² I)^(−α)`` is drawn
    at ``solve_resolution`` from ``(seed, i)`` (:func:`probneural.data.grf.grf_periodic`,
    zero mean), the vorticity equation is solved with :func:`solve` (CFL rule with ``cfl``)
    in ``solve_dtype`` on ``device`` under :func:`fno_forcing` with ``forcing_amplitude``, and
    the fields are subsampled by striding to ``resolution``. Two tasks:

    - ``"final"``: ``x = w0``, ``y = w(t)``, each `(n, 1, s, s)`.
    - ``"rollout"``: snapshots at ``t_k = k · snapshot_interval``, ``k = 1, 2, ...``; ``x``
      holds the first ``n_input_steps`` `(n, n_input_steps, s, s)`, ``y`` the next
      ``n_output_steps`` `(n, n_output_steps, s, s)` (``w0`` itself is not included).

    The paper (unit snapshot spacing, 10 input steps, ``solve_resolution = 256``,
    ``resolution = 64``) uses ``ν = 1e-3`` with ``T = 50`` (``n_output_steps = 40``),
    ``ν = 1e-4`` with ``T = 30`` (20) and ``ν = 1e-5`` with ``T = 20`` (10). The defaults
    (``t = 1``, ``n_output_steps = 10``) keep smoke runs cheap. ``sigma = 7^(3/4)`` follows the
    paper's text, which gives the covariance as ``7^(3/2) (−Δ + 49 I)^(−2.5)``; the FNO
    generation script (``GaussianRF(2, 256, alpha=2.5, tau=7)``, first-order Euler–CN at
    ``dt = 1e-4``) draws with ``sigma = 7^(3/2)`` and keeps the real part of the transform of
    complex white noise, whose variance is twice that of a real field at the same ``sigma``: its
    fields are √2 · 7^(3/4) ≈ 6.1 times larger than ours — pass ``sigma=2**0.5 * 7**1.5`` (≈ 26.2)
    to reproduce the released data's amplitude. As for Darcy, we follow the paper.

    The data depend only on the seed and the parameters, not on ``batch_size`` (each sample takes its
    own CFL steps), and on the device and the CPU paths (FFTW or ``torch.fft``, the C library's
    passes or torch's) only at the rounding level of ``solve_dtype``, which long runs of weakly
    viscous flows amplify (1.4e-3 to 2.7e-3 relative between FFTW and ``torch.fft`` at 64², float32,
    ν = 1e-5, T = 50). The metadata's ``"implementation"`` records which ran; the cache key leaves
    it out, so an entry is shared by every implementation.

    Args:
        n: number of samples.
        resolution: points per axis of the returned fields (grid ``j / s``), ``>= 4``.
        seed: data-set seed.
        viscosity: ``ν > 0`` (paper: 1e-3, 1e-4, 1e-5).
        task: ``"final"`` or ``"rollout"``.
        t: final time of task ``"final"``.
        snapshot_interval: spacing of the ``"rollout"`` snapshots.
        n_input_steps: input snapshots of ``"rollout"``.
        n_output_steps: output snapshots of ``"rollout"``. An option of one task set for the
            other, which does not read it, warns.
        solve_resolution: points per axis of the solve, a multiple of ``resolution``.
        forcing_amplitude: amplitude of :func:`fno_forcing` (paper: 0.1).
        alpha: GRF smoothness exponent (paper: 2.5).
        tau: GRF inverse length scale (paper: 7).
        sigma: GRF amplitude (paper: ``7^(3/4)``, see above).
        cfl: CFL number of the time step (:data:`DEFAULT_CFL`).
        solve_dtype: dtype of the solve, float64 or float32 (about twice as fast on CPU,
            rounding ~1e-6 relative).
        batch_size: samples generated per call of :func:`solve`: on a CPU its samples are spread
            over the threads (one each, see :func:`solve`), so use at least
            ``torch.get_num_threads()``; on a GPU raise it to fill the device.
        dtype: dtype of the returned tensors.
        device: device of the computation and of the result (default: CPU).
        cache_dir: if set, load from / store to this on-disk cache (:mod:`probneural.data.cache`).
        progress: show a tqdm progress bar.

    Returns:
        :class:`OperatorDataset` with ``x``, ``y`` as above, ``grid`` the coordinates
        ``j / s`` per axis, and metadata holding every parameter of the data (those of the
        chosen task) and the solver settings.
    """
    check_int("n", n, 1)
    check_int("resolution", resolution, 4)
    check_int("seed", seed, 0)
    viscosity = check_float("viscosity", viscosity, positive=True)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    stride = _check_solve_resolution(resolution, solve_resolution)
    forcing_amplitude = check_float("forcing_amplitude", forcing_amplitude)
    alpha = check_float("alpha", alpha, positive=True)
    tau = check_float("tau", tau, positive=True)
    sigma = check_float("sigma", sigma, positive=True)
    cfl = check_float("cfl", cfl, positive=True)
    if solve_dtype not in _COMPLEX:
        raise ValueError(f"solve_dtype must be torch.float32 or torch.float64, got {solve_dtype!r}")
    check_int("batch_size", batch_size, 1)
    check_floating_dtype("dtype", dtype)
    if task == "final":
        intervals = [check_float("t", t, positive=True)]
        schedule = {"t": intervals[0]}
    else:
        snapshot_interval = check_float("snapshot_interval", snapshot_interval, positive=True)
        check_int("n_input_steps", n_input_steps, 1)
        check_int("n_output_steps", n_output_steps, 1)
        intervals = [snapshot_interval] * (n_input_steps + n_output_steps)
        schedule = {
            "snapshot_interval": snapshot_interval,
            "n_input_steps": n_input_steps,
            "n_output_steps": n_output_steps,
        }
    _check_task_options(task, t=t, snapshot_interval=snapshot_interval, n_input_steps=n_input_steps,
                        n_output_steps=n_output_steps)
    params = {
        "problem": "navier_stokes",
        "n": n,
        "resolution": resolution,
        "solve_resolution": solve_resolution,
        "seed": seed,
        "task": task,
        **schedule,
        "viscosity": viscosity,
        "forcing": {"kind": "fno", "formula": "A (sin 2π(x + y) + cos 2π(x + y))", "amplitude": forcing_amplitude},
        "grf": {"kind": "periodic", "alpha": alpha, "tau": tau, "sigma": sigma, "mean_mode": "dropped"},
        "dtype": str(dtype).removeprefix("torch."),
        "solver": {
            "name": "pseudo-spectral vorticity",
            "scheme": "RK3-CN (Spalart, Moser & Rogers 1991): RK3 on advection and forcing, "
            "Crank-Nicolson on viscosity, second order",
            "dt_rule": "CFL per step and sample: h = cfl / (s max(|u| + |v|)), output times hit exactly",
            "cfl": cfl,
            "dealiasing": "2/3 rule, |k_x|, |k_y| <= (s - 1) // 3 (Galerkin-exact advection)",
            "dtype": str(solve_dtype).removeprefix("torch."),
            "estimated_time_error": _ESTIMATED_TIME_ERROR,
        },
        "generator_version": GENERATOR_VERSION,
        "probneural_version": probneural.__version__,
    }
    nodes = torch.arange(solve_resolution, dtype=solve_dtype, device=device) / solve_resolution
    forcing = fno_forcing(*torch.meshgrid(nodes, nodes, indexing="ij"), amplitude=forcing_amplitude)

    def sample_batch(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = grf_periodic(
            count, solve_resolution, dim=2, alpha=alpha, tau=tau, sigma=sigma, seed=seed, start=start,
            dtype=solve_dtype, device=device,
        )
        snapshots = [w[:, ::stride, ::stride].clone()]
        for interval in intervals:  # one interval at a time, keeping only the strided snapshots
            w = solve(w, viscosity, interval, forcing=forcing, cfl=cfl)
            snapshots.append(w[:, ::stride, ::stride].clone())
        if task == "final":
            x, y = snapshots[0][:, None], snapshots[1][:, None]
        else:
            x = torch.stack(snapshots[1 : n_input_steps + 1], dim=1)
            y = torch.stack(snapshots[n_input_steps + 1 :], dim=1)
        return x.to(dtype), y.to(dtype)

    grid = (torch.arange(resolution, dtype=torch.float64, device=device) / resolution).to(dtype)
    return generation.build(
        params, n, sample_batch, (grid, grid), batch_size=batch_size, cache_dir=cache_dir, progress=progress,
        description=f"navier_stokes {resolution}² from {solve_resolution}²", device=device,
        implementation=_implementation(solve_dtype, device),
    )
