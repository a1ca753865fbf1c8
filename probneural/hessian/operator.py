"""Matrix-free symmetric linear operators over the flattened real parameter vector."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from probneural.validation import check_int

__all__ = ["LinearOperator"]

_DENSE_LIMIT = 20_000


class LinearOperator:
    """A `(P, P)` matrix known through its products.

    Args:
        size: ``P``.
        matvec: `(P,)` → `(P,)` product.
        dtype: dtype of vectors it acts on.
        device: device of those vectors.
        diagonal: optional `()` → `(P,)` exact diagonal.
        matmat: optional `(P, k)` → `(P, k)` product with several vectors at once, for
            operators with a faster batched product (default: one ``matvec`` per column).
    """

    def __init__(
        self,
        size: int,
        matvec: Callable[[Tensor], Tensor],
        *,
        dtype: torch.dtype,
        device: torch.device,
        diagonal: Callable[[], Tensor] | None = None,
        matmat: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.size = check_int("size", size, 1)
        self._matvec = matvec
        self.dtype = dtype
        self.device = device
        self._diagonal = diagonal
        self._matmat = matmat

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for `(P,)` ``v``; a ``ValueError`` for any other shape."""
        if v.shape != (self.size,):
            raise ValueError(f"v: expected shape ({self.size},); got {tuple(v.shape)}")
        return self._matvec(v.to(self.dtype))

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for `(P, k)` ``V``: the batched product where given, else one product per column."""
        if V.dim() != 2 or V.shape[0] != self.size:
            raise ValueError(f"V: expected shape ({self.size}, k); got {tuple(V.shape)}")
        if self._matmat is not None:
            return self._matmat(V.to(self.dtype))
        return torch.stack([self.matvec(column) for column in V.unbind(1)], dim=1)

    def diagonal(self) -> Tensor:
        """The exact diagonal `(P,)`, where this operator provides one."""
        if self._diagonal is None:
            raise ValueError("diagonal: this operator has no exact diagonal; estimate it with hutchinson_diagonal")
        return self._diagonal()

    def to_dense(self) -> Tensor:
        """The `(P, P)` matrix, for small operators (``P <= 20000``)."""
        if self.size > _DENSE_LIMIT:
            raise ValueError(f"to_dense: P = {self.size} exceeds {_DENSE_LIMIT}; use matvec, Lanczos or diagonals")
        return self.matmat(torch.eye(self.size, dtype=self.dtype, device=self.device))
