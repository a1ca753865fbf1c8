"""Top eigenpairs of symmetric operators by Lanczos with full reorthogonalisation."""

from __future__ import annotations

import torch
from torch import Tensor

from probneural.hessian.operator import LinearOperator
from probneural.validation import check_int

__all__ = ["lanczos"]


def lanczos(operator: LinearOperator, k: int, *, n_iter: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The ``k`` eigenpairs of largest eigenvalue of a symmetric operator.

    Runs ``n_iter`` Lanczos steps (default ``min(P, max(2k + 10, 30))``), orthogonalising every
    new vector against all previous ones twice (full reorthogonalisation, so no ghost
    eigenvalues), then diagonalises the tridiagonal matrix in float64. When the Krylov space
    closes (the new vector's norm is at rounding level relative to ``‖A q_j‖`` of the same step,
    so the test depends neither on the operator's scale nor on an outlying top eigenvalue; an
    invariant subspace, e.g. an eigenvalue of multiplicity above one seen from one
    start vector), the iteration restarts from a fresh random vector orthogonal to the basis:
    the operator maps the new block orthogonally to the old one, so the tridiagonal matrix
    only gains a zero off-diagonal entry, and repeated eigenvalues are found with their
    multiplicity.

    Args:
        operator: symmetric `(P, P)` operator.
        k: number of eigenpairs, ``1 <= k <= P``.
        n_iter: Krylov dimension, ``k <= n_iter <= P``.
        seed: seed of the random start vectors.

    Returns:
        eigenvalues `(k,)` in descending order and eigenvectors `(P, k)` (orthonormal columns).
    """
    if not isinstance(operator, LinearOperator):
        raise ValueError("operator: expected a probneural.hessian.LinearOperator (a matrix M is "
                         "LinearOperator(P, lambda v: M @ v, dtype=M.dtype, device=M.device)); "
                         f"got {type(operator).__name__}")
    size = operator.size
    check_int("k", k)
    if not 1 <= k <= size:
        raise ValueError(f"k: expected 1 <= k <= {size}; got {k}")
    n_iter = min(size, max(2 * k + 10, 30)) if n_iter is None else check_int("n_iter", n_iter)
    if not k <= n_iter <= size:
        raise ValueError(f"n_iter: expected {k} <= n_iter <= {size}; got {n_iter}")
    generator = torch.Generator().manual_seed(seed)
    basis = torch.empty(n_iter, size, dtype=operator.dtype, device=operator.device)
    alpha = torch.zeros(n_iter, dtype=torch.float64)
    beta = torch.zeros(n_iter, dtype=torch.float64)  # beta[j] = 0 where the iteration restarted
    q = _start_vector(basis[:0], generator)
    for j in range(n_iter):
        basis[j] = q
        w = operator.matvec(q)
        if not torch.isfinite(w).all():
            raise ValueError(f"operator: its product with Lanczos vector {j} holds NaN or Inf")
        applied = w.norm().item()  # ‖A q_j‖: what is left after orthogonalisation is compared with it
        alpha[j] = torch.dot(w, q).item()
        w = _orthogonalised(w, basis[: j + 1])
        if j + 1 == n_iter:
            break
        norm = w.norm().item()
        if norm <= 1e3 * torch.finfo(operator.dtype).eps * applied:  # relative: any scale, any outlier
            q = _start_vector(basis[: j + 1], generator)  # invariant subspace: restart
        else:
            beta[j] = norm
            q = w / norm
    tridiagonal = torch.diag(alpha) + torch.diag(beta[:-1], 1) + torch.diag(beta[:-1], -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    order = values.argsort(descending=True)[:k]
    ritz = basis.T @ vectors[:, order].to(operator.dtype)
    return values[order].to(operator.dtype), ritz


def _orthogonalised(w: Tensor, basis: Tensor) -> Tensor:
    """``w`` `(P,)` with its components along the orthonormal rows of ``basis`` `(m, P)` removed (twice)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _start_vector(basis: Tensor, generator: torch.Generator) -> Tensor:
    """A random unit vector `(P,)` orthogonal to the rows of ``basis`` `(m, P)`, ``m < P``."""
    q = torch.randn(basis.shape[1], generator=generator, dtype=torch.float64).to(basis.device, basis.dtype)
    q = _orthogonalised(q, basis)
    return q / q.norm()
