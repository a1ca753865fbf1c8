"""Exact second derivatives of scalar functions of parameters: Hessian-vector products and dense Hessians."""

from __future__ import annotations

from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import grad, hessian, jvp

from probneural.hessian.structure import (
    Params, as_tuple, check_direction, flatten, from_real, real_function, to_real, unflatten,
)
from probneural.operators.spectral_autograd import one_reverse_pass, tangent_only_gradients

__all__ = ["dense", "hvp"]


def hvp(f: Callable[[Params], Tensor], params: Params, v: Params) -> Params:
    """Exact Hessian-vector product ``H v`` of a scalar function, forward-over-reverse.

    One forward pass with tangents and one backward pass with the forward-mode rules of the
    backward formulas (eager forward-mode AD; ``torch.func.jvp`` of ``torch.func.grad`` when
    called inside a ``torch.func`` transform). Like every forward-mode product it cannot run
    inside an active ``torch.autograd.forward_ad.dual_level`` (PyTorch has a single level).

    Args:
        f: called as ``f(params)`` with the structure given (a tensor or a tuple of tensors);
            returns a 0-d tensor.
        params: point of evaluation; complex tensors are differentiated through their real view.
        v: direction with the structure, shapes and dtypes of ``params``.

    Returns:
        ``H v`` with the structure of ``params``: for a complex parameter, the complex tensor
        whose real view is the product with the real view of ``v``.

    Raises:
        ValueError: ``v`` does not match ``params``, or ``f`` does not return a 0-d tensor.
    """
    tensors, single = as_tuple(params)
    directions = check_direction(v, tensors)
    g = real_function(f, tensors, single)
    reals = tuple(r.detach() for r in to_real(tensors))
    if torch._C._are_functorch_transforms_active():
        _, product = jvp(grad(lambda r: _check_scalar(g(r))), (reals,), (to_real(directions),))
    else:
        product = _forward_over_reverse(g, reals, to_real(directions))
    result = from_real(product, tensors)
    return result[0] if single else result


def _forward_over_reverse(
    g: Callable[[tuple[Tensor, ...]], Tensor], reals: tuple[Tensor, ...], directions: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """``H v`` of ``g`` at ``reals`` with eager forward-mode AD over one reverse pass.

    The parameters enter ``g`` as dual tensors (tangent ``v``); one forward pass computes the
    loss and its tangent, one backward pass the gradient, and every backward formula runs
    with its forward-mode rule, so the gradient's tangent is ``H v``. This is what
    ``torch.func.jvp(torch.func.grad(g))`` computes, without the ``torch.func`` wrappers
    (each custom autograd Function costs several times more under them) and with the
    custom Functions' hand-written forward-mode rules, which eager forward AD reaches directly
    (the pointwise layers, the activations and the DFT products of :mod:`probneural.operators`
    switch to them when their inputs carry tangents). The values of the parameter gradients
    are dropped, so the backward pass is run under
    :func:`~probneural.operators.spectral_autograd.tangent_only_gradients`: Functions that take
    a parameter directly as a weight compute only the tangent of its gradient. Both passes run
    under :func:`~probneural.operators.spectral_autograd.one_reverse_pass` (the gradients are the
    last derivatives taken), where the FNO's Fourier layers and projection run as whole-layer
    Functions that compute each gradient with its tangent (ADR 0021).
    """
    leaves = tuple(r.detach().requires_grad_() for r in reals)
    with torch.enable_grad(), fwAD.dual_level(), one_reverse_pass():
        duals = tuple(fwAD.make_dual(r, d) for r, d in zip(leaves, directions))
        loss = _check_scalar(g(duals))
        if not loss.requires_grad:  # f does not depend on the parameters
            return tuple(torch.zeros_like(r) for r in reals)
        with tangent_only_gradients(duals):  # only the gradient's tangent is returned
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        tangents = tuple(None if gr is None else fwAD.unpack_dual(gr).tangent for gr in grads)
    return tuple(torch.zeros_like(r) if t is None else t for t, r in zip(tangents, reals))


def _check_scalar(value: object) -> Tensor:
    """``value`` if it is a 0-d tensor, else a ``ValueError`` naming ``f``."""
    if not isinstance(value, Tensor) or value.dim() != 0:
        raise ValueError(
            f"f: expected a 0-d tensor (a scalar function of params); got {type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
        )
    return value


def dense(f: Callable[[Params], Tensor], params: Params) -> Tensor:
    """The dense `(P, P)` Hessian of a scalar function over the flattened concatenation of params.

    ``P`` counts real coordinates: a complex entry contributes two (real, imaginary), in
    ``torch.view_as_real`` order. Meant for small problems and tests.

    Args:
        f: as for :func:`hvp`.
        params: point of evaluation.

    Raises:
        ValueError: ``f`` does not return a 0-d tensor.
    """
    tensors, single = as_tuple(params)
    reals = tuple(r.detach() for r in to_real(tensors))
    g = real_function(f, tensors, single)
    return hessian(lambda vector: _check_scalar(g(unflatten(vector, reals))))(flatten(reals))
