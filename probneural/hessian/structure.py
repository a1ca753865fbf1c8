"""Parameter structures: a tensor or a tuple of tensors, complex entries seen through their real view.

Curvature is always taken with respect to real numbers: a complex tensor ``p`` is
differentiated as ``torch.view_as_real(p)`` (what an optimizer updates), so it contributes
``2 * p.numel()`` coordinates, real and imaginary parts interleaved.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "Params", "as_tuple", "cast", "check_direction", "real_function", "to_real", "from_real", "flatten", "unflatten",
]

Params = Union[Tensor, Sequence[Tensor]]


def as_tuple(params: Params, name: str = "params") -> tuple[tuple[Tensor, ...], bool]:
    """``(tensors, was_single)``; a ``ValueError`` naming ``name`` unless tensors are given."""
    if isinstance(params, Tensor):
        return (params,), True
    tensors = tuple(params)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise ValueError(f"{name}: expected a tensor or a non-empty tuple of tensors; got {type(params).__name__}")
    return tensors, False


def check_direction(v: Params, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``v`` as a tuple of tensors; a ``ValueError`` naming ``v`` unless it matches the structure,
    shapes and dtypes of ``tensors`` (the parameters)."""
    directions, _ = as_tuple(v, "v")
    if len(directions) != len(tensors) or any(
        d.shape != t.shape or d.dtype != t.dtype for d, t in zip(directions, tensors)
    ):
        raise ValueError(
            "v: expected the structure, shapes and dtypes of params "
            f"{[(tuple(t.shape), t.dtype) for t in tensors]}; got {[(tuple(d.shape), d.dtype) for d in directions]}"
        )
    return directions


def cast(params: Params, dtype: torch.dtype | None) -> Params:
    """``params`` detached and cast to the real floating ``dtype`` (complex entries to its complex counterpart).

    This is how every curvature object honours its ``dtype=`` argument: ``None`` keeps the
    parameters' own dtype, ``torch.float64`` promotes a float32 model's curvature to float64.

    Raises:
        ValueError: ``dtype`` is neither ``None`` nor a real floating dtype.
    """
    if dtype is None:
        return params
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected None or a real floating dtype such as torch.float64; got {dtype!r}")
    tensors, single = as_tuple(params)
    complex_dtype = torch.promote_types(dtype, torch.complex64)
    copies = tuple(t.detach().to(complex_dtype if t.is_complex() else dtype) for t in tensors)
    return copies[0] if single else copies


def to_real(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Real views: complex `(…)` → `(…, 2)`, real tensors unchanged."""
    return tuple(torch.view_as_real(t) if t.is_complex() else t for t in tensors)


def from_real(reals: tuple[Tensor, ...], like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Inverse of :func:`to_real`, complex where ``like`` is complex."""
    return tuple(torch.view_as_complex(r.contiguous()) if t.is_complex() else r for r, t in zip(reals, like))


def real_function(f: Callable, like: tuple[Tensor, ...], single: bool) -> Callable[[tuple[Tensor, ...]], Tensor]:
    """``f`` as a function of the real views of parameters shaped like ``like``."""

    def g(reals: tuple[Tensor, ...]) -> Tensor:
        params = from_real(reals, like)
        return f(params[0] if single else params)

    return g


def flatten(reals: tuple[Tensor, ...]) -> Tensor:
    """Concatenate real tensors into one `(P,)` vector."""
    return torch.cat([r.reshape(-1) for r in reals])


def unflatten(vector: Tensor, like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Split a `(P,)` vector into tensors shaped like the real tensors ``like``."""
    pieces = vector.split([r.numel() for r in like])
    return tuple(p.view(r.shape) for p, r in zip(pieces, like))
