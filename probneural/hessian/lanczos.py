"""Top eigenpairs of symmetric operators by Lanczos with full reorthogonalisation."""

from __future__ import annotations

import torch
from torch import Tensor

from probneural.hessian.operator import LinearOperator

__all__ = ["lanczos"]


def lanczos(operator: LinearOperator, k: int, *, n_iter: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The ``k`` eigenpairs of largest eigenvalue of a symmetric operator.

    Runs ``n_iter`` Lanczos steps (default ``min(P, max(2k + 10, 30))``), orthogonalising every
    new vector against all previous ones twice (full reorthogonalisation, so no ghost
    eigenvalues), then diagonalises the tridiagonal matrix in float64.

    Args:
        operator: symmetric `(P, P)` operator.
        k: number of eigenpairs, ``1 <= k <= P``.
        n_iter: Krylov dimension, ``k <= n_iter <= P``.
        seed: seed of the random start vector.

    Returns:
        eigenvalues `(k,)` in descending order and eigenvectors `(P, k)` (orthonormal columns).
    """
    size = operator.size
    if not 1 <= k <= size:
        raise ValueError(f"k: expected 1 <= k <= {size}; got {k}")
    n_iter = min(size, max(2 * k + 10, 30)) if n_iter is None else n_iter
    if not k <= n_iter <= size:
        raise ValueError(f"n_iter: expected {k} <= n_iter <= {size}; got {n_iter}")
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(size, generator=generator, dtype=torch.float64).to(operator.device, operator.dtype)
    basis = torch.empty(n_iter, size, dtype=operator.dtype, device=operator.device)
    alpha = torch.zeros(n_iter, dtype=torch.float64)
    beta = torch.zeros(n_iter, dtype=torch.float64)
    q = q / q.norm()
    steps = n_iter
    for j in range(n_iter):
        basis[j] = q
        w = operator.matvec(q)
        alpha[j] = torch.dot(w, q).item()
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        norm = w.norm().item()
        if j + 1 == n_iter:
            break
        if norm <= 1e3 * torch.finfo(operator.dtype).eps * max(abs(alpha[j].item()), 1.0):
            steps = j + 1  # invariant subspace found: the Krylov space is exhausted
            break
        beta[j] = norm
        q = w / norm
    if steps < k:
        raise ValueError(f"k: the Krylov space from this start vector has dimension {steps} < k = {k}")
    tridiagonal = torch.diag(alpha[:steps]) + torch.diag(beta[: steps - 1], 1) + torch.diag(beta[: steps - 1], -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    order = values.argsort(descending=True)[:k]
    ritz = basis[:steps].T @ vectors[:, order].to(operator.dtype)
    return values[order].to(operator.dtype), ritz
