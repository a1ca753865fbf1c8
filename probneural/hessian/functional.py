"""Exact second derivatives of scalar functions of parameters: Hessian-vector products and dense Hessians."""

from __future__ import annotations

from typing import Callable

from torch import Tensor
from torch.func import grad, hessian, jvp

from probneural.hessian.structure import Params, as_tuple, flatten, from_real, real_function, to_real, unflatten

__all__ = ["dense", "hvp"]


def hvp(f: Callable[[Params], Tensor], params: Params, v: Params) -> Params:
    """Exact Hessian-vector product ``H v`` of a scalar function, forward-over-reverse.

    Args:
        f: called as ``f(params)`` with the structure given (a tensor or a tuple of tensors);
            returns a 0-d tensor.
        params: point of evaluation; complex tensors are differentiated through their real view.
        v: direction with the structure, shapes and dtypes of ``params``.

    Returns:
        ``H v`` with the structure of ``params``: for a complex parameter, the complex tensor
        whose real view is the product with the real view of ``v``.

    Raises:
        ValueError: ``v`` does not match ``params``.
    """
    tensors, single = as_tuple(params)
    directions, _ = as_tuple(v, "v")
    if len(directions) != len(tensors) or any(
        d.shape != t.shape or d.dtype != t.dtype for d, t in zip(directions, tensors)
    ):
        raise ValueError(
            "v: expected the structure, shapes and dtypes of params "
            f"{[(tuple(t.shape), t.dtype) for t in tensors]}; got {[(tuple(d.shape), d.dtype) for d in directions]}"
        )
    g = real_function(f, tensors, single)
    reals = tuple(r.detach() for r in to_real(tensors))
    _, product = jvp(grad(g), (reals,), (to_real(directions),))
    result = from_real(product, tensors)
    return result[0] if single else result


def dense(f: Callable[[Params], Tensor], params: Params) -> Tensor:
    """The dense `(P, P)` Hessian of a scalar function over the flattened concatenation of params.

    ``P`` counts real coordinates: a complex entry contributes two (real, imaginary), in
    ``torch.view_as_real`` order. Meant for small problems and tests.

    Args:
        f: as for :func:`hvp`.
        params: point of evaluation.
    """
    tensors, single = as_tuple(params)
    reals = tuple(r.detach() for r in to_real(tensors))
    g = real_function(f, tensors, single)
    return hessian(lambda vector: g(unflatten(vector, reals)))(flatten(reals))
