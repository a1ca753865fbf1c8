"""Darcy flow ``−∇·(a ∇u) = f`` on the unit square with ``u = 0`` on the boundary (Li et al. 2021).

Discretisation: the ``s × s`` nodes ``(x_i, y_j) = (i, j) / (s − 1)``; ``a[..., i, j]`` is
the coefficient at ``(x_i, y_j)`` (first spatial axis = ``x``). The standard 5-point
finite-volume/difference stencil

    ``(A u)_ij = [a_{i+½,j}(u_ij − u_{i+1,j}) + a_{i−½,j}(u_ij − u_{i−1,j})
                 + a_{i,j+½}(u_ij − u_{i,j+1}) + a_{i,j−½}(u_ij − u_{i,j−1})] / h²``

with ``h = 1 / (s − 1)`` and the coefficient at a cell face taken as the arithmetic mean of
its two neighbouring nodal values (``a_{i+½,j} = (a_ij + a_{i+1,j}) / 2``) is second-order
accurate for smooth ``a`` and symmetric positive definite on the ``(s − 2)²`` interior
unknowns; ``A u = f`` is imposed there and ``u = 0`` on the boundary nodes.

The system is solved matrix-free and batched in pure torch by preconditioned conjugate
gradients. The preconditioner is the exact inverse of the constant-coefficient 5-point
Laplacian, applied with a type-I discrete sine transform built on ``torch.fft`` (odd
extension). The preconditioned operator's spectrum lies in ``[min a, max a]`` (relative to the
Laplacian), so the iteration count depends on the coefficient contrast, not the grid size.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch

import probneural
from probneural.data import generation
from probneural.data.dataset import OperatorDataset
from probneural.data.grf import grf_neumann
from probneural.validation import check_float, check_floating_dtype, check_int

_DEFAULT_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
_PAPER_FINE_RESOLUTION = 421

# Bump whenever a change to this module, the GRF or the seeding changes the generated numbers:
# it is part of every cache key, so stale cache files are never reused.
GENERATOR_VERSION = 1


class DarcySolution(NamedTuple):
    """Result of :func:`solve_with_info`.

    Attributes:
        u: `(B, s, s)` or `(s, s)` solution, zero on the boundary.
        iterations: CG iterations until every sample met ``rtol``.
        residual: `(B,)` or `()` final relative residual ``‖b − A u‖ / ‖b‖`` per sample
            (recursively updated residual of the interior system).
    """

    u: torch.Tensor
    iterations: int
    residual: torch.Tensor


def _check_contrast(high: float, low: float) -> None:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (high, low)):
        raise ValueError(f"contrast values (high, low) must be finite and positive, got ({high!r}, {low!r})")


def _check_coefficient(a: torch.Tensor | object) -> torch.Tensor:
    a = torch.as_tensor(a)
    if not a.is_floating_point():
        a = a.to(torch.get_default_dtype())
    if a.dtype not in _DEFAULT_RTOL:
        raise ValueError(f"a must be float32 or float64, got dtype {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"a must have shape (B, s, s) or (s, s), got {tuple(a.shape)}")
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a must be square in its last two axes (s, s), got {tuple(a.shape)}")
    if a.shape[-1] < 3:
        raise ValueError(f"a must have s >= 3 nodes per axis (at least one interior node), got s = {a.shape[-1]}")
    if not torch.isfinite(a).all():
        raise ValueError("a must be finite, got NaN or Inf values")
    smallest = a.min()
    if smallest <= 0:
        raise ValueError(f"a must be positive everywhere, got minimum {smallest.item():.6g}")
    return a


def _check_source(f: torch.Tensor | float, a: torch.Tensor) -> torch.Tensor:
    f = torch.as_tensor(f, dtype=a.dtype, device=a.device)
    if f.ndim != 0 and f.shape != a.shape:
        raise ValueError(f"f must be a scalar or have a's shape {tuple(a.shape)}, got {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError("f must be finite, got NaN or Inf values")
    return f.expand(a.shape)


def _dst1(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised type-I discrete sine transform along the last axis.

    ``X_k = Σ_{n=1}^{m} x_n sin(π k n / (m + 1))``, ``k = 1, ..., m``: minus the imaginary
    part of the length-``2(m + 1)`` FFT of ``(0, x_1, ..., x_m)`` zero-padded, i.e. of the
    odd extension's first half (the antisymmetric second half only doubles it). The
    transform is its own inverse up to the factor ``2 / (m + 1)``.

    Args:
        x: `(..., m)` tensor.

    Returns:
        `(..., m)` tensor.
    """
    m = x.shape[-1]
    spectrum = torch.fft.rfft(torch.nn.functional.pad(x, (1, 0)), n=2 * (m + 1), dim=-1)
    return -spectrum.imag[..., 1 : m + 1]


def _dst2(x: torch.Tensor) -> torch.Tensor:
    """:func:`_dst1` along both of the last two axes of a `(..., m, m)` tensor, returned transposed.

    The transposition saves two copies per call; :meth:`_DarcyOperator.precondition`
    applies it twice, which restores the orientation.
    """
    return _dst1(_dst1(x).transpose(-1, -2))


class _DarcyOperator:
    """The interior system ``h² A`` of one batch of coefficients, and its preconditioner.

    ``(h² A u)_ij = d_ij u_ij − Σ_{faces} a_face u_neighbour`` with ``d_ij`` the sum of the
    four face coefficients around node ``ij``; neighbours on the boundary contribute 0.

    Args:
        a: `(B, s, s)` nodal coefficient.
    """

    def __init__(self, a: torch.Tensor) -> None:
        face_x = 0.5 * (a[:, 1:, 1:-1] + a[:, :-1, 1:-1])  # (B, s-1, s-2): face between (i, j) and (i+1, j)
        face_y = 0.5 * (a[:, 1:-1, 1:] + a[:, 1:-1, :-1])  # (B, s-2, s-1): face between (i, j) and (i, j+1)
        self.diagonal = face_x[:, :-1] + face_x[:, 1:] + face_y[:, :, :-1] + face_y[:, :, 1:]
        self.inner_x = face_x[:, 1:-1].contiguous()  # (B, s-3, s-2): faces between two interior nodes
        self.inner_y = face_y[:, :, 1:-1].contiguous()  # (B, s-2, s-3)
        m = a.shape[-1] - 2
        k = torch.arange(1, m + 1, dtype=a.dtype, device=a.device)
        eig = 4 * torch.sin(k * (math.pi / (2 * (m + 1)))) ** 2
        # Laplacian^(-1) = (2/(m+1))² S diag(1/(λ_k + λ_l)) S with S the 2-D DST-I.
        self.inverse_eigenvalues = (2 / (m + 1)) ** 2 / (eig[:, None] + eig[None, :])

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        """``h² A u`` for `(B, s-2, s-2)` interior values ``u`` (zero boundary)."""
        out = self.diagonal * u
        out[:, 1:].addcmul_(self.inner_x, u[:, :-1], value=-1)
        out[:, :-1].addcmul_(self.inner_x, u[:, 1:], value=-1)
        out[:, :, 1:].addcmul_(self.inner_y, u[:, :, :-1], value=-1)
        out[:, :, :-1].addcmul_(self.inner_y, u[:, :, 1:], value=-1)
        return out

    def precondition(self, r: torch.Tensor) -> torch.Tensor:
        """Exact inverse of the unit-coefficient ``h² (−Δ_h)`` applied to `(B, s-2, s-2)` ``r``."""
        # The eigenvalue table is symmetric, so it applies to the transposed spectrum as is.
        return _dst2(_dst2(r) * self.inverse_eigenvalues)


def _batched_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(dim=(-2, -1))


def solve_with_info(
    a: torch.Tensor, f: torch.Tensor | float = 1.0, *, rtol: float | None = None, max_iter: int | None = None
) -> DarcySolution:
    """Solve the discrete Darcy problem and report the CG iterations and residuals.

    Same arguments and checks as :func:`solve`.

    Returns:
        A :class:`DarcySolution`.
    """
    a = _check_coefficient(a)
    f = _check_source(f, a)
    unbatched = a.ndim == 2
    if unbatched:
        a, f = a.unsqueeze(0), f.unsqueeze(0)
    if rtol is None:
        rtol = _DEFAULT_RTOL[a.dtype]
    elif not 0 < check_float("rtol", rtol) < 1:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol!r}")
    if max_iter is None:
        contrast = (a.amax() / a.amin()).item()
        # Four times the classical CG bound ½·√κ·ln(2/rtol) for κ = contrast (the bound is
        # for the energy-norm error; the margin covers the residual norm used here).
        max_iter = max(50, math.ceil(2 * math.sqrt(contrast) * math.log(2 / rtol)))
    else:
        check_int("max_iter", max_iter, 1)

    s = a.shape[-1]
    operator = _DarcyOperator(a)
    b = f[:, 1:-1, 1:-1] / (s - 1) ** 2
    b_norm = b.square().sum(dim=(-2, -1)).sqrt()
    b_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    x = torch.zeros_like(b)
    r = b.clone()
    z = operator.precondition(r)
    p = z
    rz = _batched_dot(r, z)
    one = torch.ones_like(rz)
    iterations = 0
    while True:
        residual = r.square().sum(dim=(-2, -1)).sqrt() / b_norm
        active = residual > rtol
        if not bool(active.any()):
            break
        if iterations == max_iter:
            worst = int(residual.argmax())
            raise RuntimeError(
                f"Darcy PCG did not converge within max_iter={max_iter}: relative residual "
                f"{residual[worst].item():.3e} > rtol={rtol:.1e} (sample {worst}); raise max_iter or check a's contrast"
            )
        ap = operator.apply(p)
        step = torch.where(active, rz / torch.where(active, _batched_dot(p, ap), one), 0.0)[:, None, None]
        x.addcmul_(step, p)
        r.addcmul_(step, ap, value=-1)
        z = operator.precondition(r)
        rz_new = _batched_dot(r, z)
        beta = torch.where(active, rz_new / torch.where(active, rz, one), 0.0)[:, None, None]
        p = z.addcmul_(beta, p)
        rz = rz_new
        iterations += 1

    u = torch.nn.functional.pad(x, (1, 1, 1, 1))
    if unbatched:
        return DarcySolution(u[0], iterations, residual[0])
    return DarcySolution(u, iterations, residual)


def solve(
    a: torch.Tensor, f: torch.Tensor | float = 1.0, *, rtol: float | None = None, max_iter: int | None = None
) -> torch.Tensor:
    """Solve ``−∇·(a ∇u) = f`` on the unit square with ``u = 0`` on the boundary.

    See the module docstring for the discretisation and the solver. Runs on ``a``'s device
    in ``a``'s dtype (float32 or float64; integer input is converted to the default dtype).

    Args:
        a: `(B, s, s)` or `(s, s)` positive coefficient on the nodes ``x_i = i / (s − 1)``, ``s >= 3``.
        f: source, a number or a tensor of ``a``'s shape (values on the boundary nodes are unused).
        rtol: relative residual ``‖b − A u‖₂ / ‖b‖₂`` to reach per sample; default
            ``1e-10`` for float64, ``1e-5`` for float32.
        max_iter: iteration limit; default four times the classical CG bound for the
            contrast ``max a / min a`` (at least 50).

    Returns:
        `(B, s, s)` or `(s, s)` solution ``u``, exactly zero on the boundary.

    Raises:
        ValueError: ``a`` or ``f`` has the wrong shape or dtype, holds NaN/Inf, or ``a`` is
            not positive; ``rtol`` or ``max_iter`` is out of range.
        RuntimeError: not converged within ``max_iter`` (the message gives the residual).
    """
    return solve_with_info(a, f, rtol=rtol, max_iter=max_iter).u


def coefficient(field: torch.Tensor, high: float = 12.0, low: float = 3.0) -> torch.Tensor:
    """Two-phase coefficient: ``high`` where ``field >= 0``, ``low`` elsewhere.

    The defaults are the FNO paper's ``{12, 3}`` (the released script used ``{12, 4}``).

    Args:
        field: `(..., s, s)` Gaussian random field.
        high: value on ``field >= 0``, positive.
        low: value on ``field < 0``, positive.

    Returns:
        Tensor of ``field``'s shape, dtype and device.
    """
    _check_contrast(high, low)
    return torch.where(field >= 0, torch.full_like(field, high), torch.full_like(field, low))


def default_solve_resolution(resolution: int) -> int:
    """Return the default solve grid for output ``resolution``: ``(s − 1)·⌈420 / (s − 1)⌉ + 1``.

    It has at least the paper's 421 points and a spacing that divides the output spacing
    (85 → 421, 64 → 442, 421 → 421).
    """
    check_int("resolution", resolution, 3)
    step = resolution - 1
    return step * math.ceil((_PAPER_FINE_RESOLUTION - 1) / step) + 1


def _check_solve_resolution(resolution: int, solve_resolution: int) -> int:
    """Validate and return the subsampling stride ``(solve_resolution − 1) / (resolution − 1)``."""
    check_int("solve_resolution", solve_resolution, resolution)
    step = resolution - 1
    if (solve_resolution - 1) % step:
        below = step * ((solve_resolution - 1) // step) + 1
        candidates = ", ".join(str(c) for c in (below, below + step) if c >= resolution)
        raise ValueError(
            f"solve_resolution={solve_resolution} cannot be subsampled to resolution={resolution}: "
            f"solve_resolution − 1 must be a multiple of resolution − 1 = {step} (nearest valid: {candidates})"
        )
    return (solve_resolution - 1) // step


def _discretisation_error(solve_resolution: int) -> str:
    """The estimated relative L2 error of ``u`` from the grid, recorded in the metadata of generated data.

    Measured on 4 FNO-paper coefficients (contrast 12/3, α = 2, τ = 3) drawn at 841² and
    restricted to coarser grids: against the 841² solve, at the common nodes, the 421², 211² and
    106² solves differ by 8.5e-4, 2.5e-3 and 5.1e-3 (ratios 2.9 and 6.0: first order in ``h``, as
    for a discontinuous coefficient), so the 421² solve is off by about 1.7e-3.
    """
    return f"{1.7e-3 * 420 / (solve_resolution - 1):.1e} relative L2 (first order in h; 1.7e-3 at 421², FNO contrast)"


def generate(
    n: int,
    resolution: int,
    *,
    seed: int = 0,
    solve_resolution: int | None = None,
    contrast: tuple[float, float] = (12.0, 3.0),
    alpha: float = 2.0,
    tau: float = 3.0,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> OperatorDataset:
    """Darcy data as in the FNO paper: ``a ↦ u`` for ``−∇·(a ∇u) = 1``, two-phase ``a``.

    Sample ``i``: a Neumann GRF with covariance ``(−Δ + τ² I)^(−α)`` is drawn at
    ``solve_resolution`` from ``(seed, i)`` (:func:`probneural.data.grf.grf_neumann`),
    thresholded to ``a = contrast[0]`` where it is ``>= 0`` and ``contrast[1]`` elsewhere,
    the problem is solved in float64 on ``device`` with :func:`solve`, and ``a`` and ``u``
    are subsampled by striding to ``resolution``. The data depend only on the seed and
    the parameters, not on ``batch_size`` or the device (up to float64 rounding).

    Args:
        n: number of samples.
        resolution: nodes per axis of the returned fields, ``>= 3``.
        seed: data-set seed.
        solve_resolution: nodes per axis of the solve; ``(solve_resolution − 1)`` must be a
            multiple of ``(resolution − 1)``. Default :func:`default_solve_resolution`
            (421 for the paper's 85).
        contrast: ``(high, low)`` coefficient values; the paper's ``(12, 3)``.
        alpha: GRF smoothness exponent (paper: 2).
        tau: GRF inverse length scale (paper: 3).
        batch_size: samples solved at once.
        dtype: dtype of the returned tensors.
        device: device of the computation and of the result (default: CPU).
        cache_dir: if set, load from / store to this on-disk cache (:mod:`probneural.data.cache`).
        progress: show a tqdm progress bar.

    Returns:
        :class:`OperatorDataset` with ``x = a`` `(n, 1, s, s)`, ``y = u`` `(n, 1, s, s)`,
        ``grid`` the node coordinates ``i / (s − 1)`` per axis, and metadata holding every
        parameter above except ``batch_size``, ``device``, ``cache_dir`` and ``progress``.
    """
    check_int("n", n, 1)
    check_int("resolution", resolution, 3)
    check_int("batch_size", batch_size, 1)
    if solve_resolution is None:
        solve_resolution = default_solve_resolution(resolution)
    stride = _check_solve_resolution(resolution, solve_resolution)
    check_floating_dtype("dtype", dtype)
    check_int("seed", seed, 0)
    if not isinstance(contrast, (tuple, list)) or len(contrast) != 2:
        raise ValueError(f"contrast must be a pair (high, low), got {contrast!r}")
    _check_contrast(*contrast)
    high, low = float(contrast[0]), float(contrast[1])
    alpha, tau = check_float("alpha", alpha, positive=True), check_float("tau", tau, positive=True)
    params = {
        "problem": "darcy",
        "n": n,
        "resolution": resolution,
        "solve_resolution": solve_resolution,
        "seed": seed,
        "contrast": [high, low],
        "grf": {"kind": "neumann", "alpha": float(alpha), "tau": float(tau), "sigma": None, "mean_mode": "dropped"},
        "source": 1.0,
        "dtype": str(dtype).removeprefix("torch."),
        "solver": {
            "name": "pcg",
            "preconditioner": "constant-coefficient 5-point Laplacian (DST-I)",
            "discretisation": "5-point finite differences, face coefficient = mean of the two nodal values",
            "dtype": "float64",
            "rtol": _DEFAULT_RTOL[torch.float64],
            "max_iter": None,
            "estimated_discretisation_error": _discretisation_error(solve_resolution),
        },
        "generator_version": GENERATOR_VERSION,
        "probneural_version": probneural.__version__,
    }

    def sample_batch(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        field = grf_neumann(count, solve_resolution, dim=2, alpha=alpha, tau=tau, seed=seed, start=start, device=device)
        a = coefficient(field, high, low)
        u = solve(a, 1.0)
        return a[:, None, ::stride, ::stride].to(dtype), u[:, None, ::stride, ::stride].to(dtype)

    nodes = (torch.arange(resolution, dtype=torch.float64, device=device) / (resolution - 1)).to(dtype)
    return generation.build(
        params, n, sample_batch, (nodes, nodes), batch_size=batch_size, cache_dir=cache_dir, progress=progress,
        description=f"darcy {resolution}² from {solve_resolution}²", device=device,
    )
