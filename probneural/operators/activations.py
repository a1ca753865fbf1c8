"""The FNO's activations, with cheap rules for forward-over-reverse Hessian-vector products.

A forward-over-reverse Hessian-vector product (:func:`probneural.hessian.hvp`) runs the
forward pass with tangents and then the backward pass with the forward-mode rules of every
backward formula. For ``torch.nn.functional.gelu`` autograd's generic rules evaluate the
transcendental ``gelu'`` four times per activation (the forward tangent, the backward, the
tangent of the backward, and inside ``gelu''``, rebuilt from about ten elementwise passes).
:func:`gelu` is the same function as the custom autograd Function :class:`Gelu`, with

* ``gelu'(x) = Φ(x) + x φ(x)`` evaluated once (the fused ``gelu_backward`` kernel) when the
  forward-mode rule runs, kept for the backward pass;
* ``gelu''(x) = φ(x) (2 − x²)``, evaluated only by second-order rules.

Its backward is the Function :class:`GeluGrad`, ``(g, x) ↦ g · gelu'(x)``, with forward-mode
rule ``dg · gelu'(x) + g · dx · gelu''(x)`` and backward ``(a · gelu'(x), a · g · gelu''(x))``
(written with differentiable operations and :class:`GeluGrad` itself), so derivatives of every
order are exact. Both pass ``gradcheck`` and ``gradgradcheck``.

The Functions run only where they pay: when the input carries an (eager) forward-mode tangent
(a Hessian-vector product). Training, inference, double backward and ``torch.func`` transforms
use ``torch.nn.functional.gelu`` unchanged, so ``Function.apply`` adds nothing there.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from probneural.operators.spectral_autograd import apply, has_tangent

__all__ = ["ACTIVATIONS", "Gelu", "GeluGrad", "add_gelu_curvature", "gelu", "gelu_curvature", "gelu_derivative", "gelu_second", "silu"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG2_E = 1.0 / math.log(2.0)
# gelu''(x) = _CURVATURE_SCALE · q 2^q with q = log₂(e) (1 − x²/2)
_CURVATURE_SCALE = 2.0 * _INV_SQRT_2PI / math.e * math.log(2.0)
_BLOCK = 2**17  # elements per block of add_gelu_curvature (512 KB in float32)
_gelu_backward = torch.ops.aten.gelu_backward.default
_gelu_backward_out = torch.ops.aten.gelu_backward.grad_input


def _derivatives_possible(*tensors: Tensor | None) -> bool:
    """Whether derivatives of a result computed from ``tensors`` may be asked for: gradient
    mode is on, a ``torch.func`` transform is active or one of them carries a tangent."""
    return torch.is_grad_enabled() or torch._C._are_functorch_transforms_active() or has_tangent(*tensors)


def gelu_second(x: Tensor) -> Tensor:
    """``gelu''(x) = φ(x) (2 − x²)``, ``φ`` the standard normal density (differentiable ops)."""
    square = x.square()
    return torch.exp(square * -0.5) * (2.0 - square) * _INV_SQRT_2PI


def gelu_derivative(x: Tensor) -> Tensor:
    """``gelu'(x) = Φ(x) + x φ(x)``, contiguous: the fused ``gelu_backward`` kernel written over a
    buffer of ones (an expanded scalar one is 3× slower). Not differentiable (a value only)."""
    derivative = torch.ones_like(x, memory_format=torch.contiguous_format)
    return _gelu_backward_out(derivative, x, grad_input=derivative)


def add_gelu_curvature(grad: Tensor, x: Tensor, x_tangent: Tensor, into: Tensor) -> Tensor:
    """``into += grad · x_tangent · gelu''(x)`` in place; for tangents that are not differentiated
    further (no gradient mode).

    With ``q = log₂(e) (1 − x²/2)``: ``gelu''(x) = φ(x) (2 − x²) = 2 ln(2) q 2^q / (e √(2π))``, so
    ``q`` is one ``addcmul`` and ``2^q`` one ``exp2`` (1.8× faster than ``exp`` on this CPU in
    float32 at one and two threads). On one CPU thread the work runs over blocks of
    :data:`_BLOCK` elements, so that the two temporaries stay in cache instead of costing two
    activation-sized buffers (fresh 16 MB buffers at the peak of a Hessian-vector product
    page-fault on every 4 KB page): 1.2-2.9× faster at batch 8, width 32 and 128, 64². With
    several threads every operation is a parallel region, and on a loaded machine each can
    wait a scheduler time slice for a thread (8 blocks took 7× and 32 blocks 15× longer than
    one pass on the shared 2-core VM), so the term is then computed in one pass.
    """
    tensors = (into, grad, x, x_tangent)
    if (x.device.type != "cpu" or torch.get_num_threads() > 1
            or any(t.shape != x.shape or not t.is_contiguous() for t in tensors)):
        blocks = [tensors]
    else:
        flat = [t.view(-1) for t in tensors]
        blocks = [[t[start:start + _BLOCK] for t in flat] for start in range(0, x.numel(), _BLOCK)]
    for out, g, z, dz in blocks:
        out.addcmul_(_unscaled_curvature(z, g), dz, value=_CURVATURE_SCALE)
    return into


def _unscaled_curvature(x: Tensor, factor: Tensor) -> Tensor:
    """``q 2^q · factor`` with ``q = log₂(e) (1 − x²/2)``: ``gelu''(x) · factor`` up to ``_CURVATURE_SCALE``."""
    log2_e = torch.full((), _LOG2_E, dtype=x.dtype, device=x.device)
    q = torch.addcmul(log2_e, x, x, value=-0.5 * _LOG2_E)
    return torch.exp2(q).mul_(q).mul_(factor)


def gelu_curvature(x: Tensor, factor: Tensor) -> Tensor:
    """``gelu''(x) · factor`` (the ``exp2`` form of :func:`add_gelu_curvature`), for values that are not
    differentiated further."""
    return _unscaled_curvature(x, factor).mul_(_CURVATURE_SCALE)


class GeluGrad(torch.autograd.Function):
    """``(g, x) ↦ g · gelu'(x)``, the backward of :class:`Gelu`, differentiable to any order.

    Inputs ``(grad, x, derivative)``: ``derivative`` is ``gelu'(x)`` if already computed (a
    value only: the derivative rules are written in ``x``), else ``None``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad: Tensor, x: Tensor, derivative: Tensor | None = None) -> Tensor:
        return _gelu_backward(grad, x) if derivative is None else grad * derivative

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        grad, x, *derivative = inputs
        ctx.derivative = derivative[0] if derivative else None
        ctx.save_for_backward(grad, x)
        ctx.save_for_forward(grad, x)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, a: Tensor | None) -> tuple[Tensor | None, Tensor | None, None]:
        grad, x = ctx.saved_tensors
        if a is None:
            return None, None, None
        grad_grad = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_grad = gelu_grad(a, x, ctx.derivative)
        if ctx.needs_input_grad[1]:
            grad_x = a * grad * gelu_second(x)
        return grad_grad, grad_x, None

    @staticmethod
    def jvp(ctx: Any, grad_tangent: Tensor | None, x_tangent: Tensor | None, _: Any = None) -> Tensor | None:
        grad, x = ctx.saved_tensors
        differentiable = torch.is_grad_enabled()  # the tangent may be differentiated (reverse-over-forward)
        result = None
        if grad_tangent is not None:
            derivative = ctx.derivative
            if differentiable:
                result = gelu_grad(grad_tangent, x, derivative)
            else:
                result = _gelu_backward(grad_tangent, x) if derivative is None else grad_tangent * derivative
        if x_tangent is not None:
            if differentiable:
                term = grad * x_tangent * gelu_second(x)
                result = term if result is None else result + term
            else:
                result = add_gelu_curvature(grad, x, x_tangent, torch.zeros_like(x) if result is None else result)
        return result


def gelu_grad(grad: Tensor, x: Tensor, derivative: Tensor | None = None) -> Tensor:
    """``grad · gelu'(x)``: :class:`GeluGrad` where derivatives may be asked for, else one fused kernel.

    Args:
        grad: the gradient of the activation's output.
        x: the activation's input.
        derivative: ``gelu'(x)`` if already computed.
    """
    if _derivatives_possible(grad, x):
        return apply(GeluGrad, grad, x, derivative)
    return _gelu_backward(grad, x) if derivative is None else grad * derivative


class Gelu(torch.autograd.Function):
    """The exact GELU ``x Φ(x)`` with the derivative rules of the module docstring."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return F.gelu(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.derivative = None
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> Tensor | None:
        (x,) = ctx.saved_tensors
        return None if grad is None else gelu_grad(grad, x, ctx.derivative)

    @staticmethod
    def jvp(ctx: Any, x_tangent: Tensor | None) -> Tensor | None:
        (x,) = ctx.saved_tensors
        if x_tangent is None:
            return None
        if not x.requires_grad:  # no backward pass can follow
            return _gelu_backward(x_tangent, x)
        # forward-over-reverse: gelu'(x) once, for this tangent and for the backward pass
        with torch.no_grad():
            derivative = gelu_derivative(x)
        ctx.derivative = derivative
        if torch.is_grad_enabled():  # the tangent stays differentiable in x (reverse-over-forward)
            return apply(GeluGrad, x_tangent, x, derivative)
        return x_tangent * derivative


def gelu(x: Tensor) -> Tensor:
    """The exact GELU, equal to ``torch.nn.functional.gelu(x)``; :class:`Gelu` when ``x`` carries
    a forward-mode tangent (cheap Hessian-vector products), else ``F.gelu`` itself."""
    return apply(Gelu, x) if has_tangent(x) else F.gelu(x)


def silu(x: Tensor) -> Tensor:
    """``x σ(x)``, equal to ``torch.nn.functional.silu(x)``; written out when ``x`` carries a
    forward-mode tangent, since PyTorch has no forward-mode rule for ``silu``'s backward (a
    forward-over-reverse Hessian-vector product would fail)."""
    return x * torch.sigmoid(x) if has_tangent(x) else F.silu(x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": gelu,
    "relu": F.relu,
    "silu": silu,
    "tanh": torch.tanh,
}
