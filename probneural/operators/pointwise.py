"""Pointwise (1 × 1) channel mixing on channels-first fields.

Plain operations for training and inference; under eager forward-mode AD (a forward-over-reverse
Hessian-vector product, :func:`probneural.hessian.hvp`) the custom Functions
:class:`PointwiseAffine` and :class:`AffineGrad`, whose forward-mode rules accumulate their two
products in one buffer and whose weight gradients can be tangent-only
(:func:`~probneural.operators.spectral_autograd.tangent_only_gradients`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from probneural.operators.spectral_autograd import FULL as _FULL
from probneural.operators.spectral_autograd import SKIP as _SKIP
from probneural.operators.spectral_autograd import TANGENT as _TANGENT
from probneural.operators.spectral_autograd import apply, has_tangent, tangent_only
from probneural.validation import check_int

__all__ = ["AffineGrad", "Pointwise", "PointwiseAffine", "pointwise_affine", "weight_products"]


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``W x + b`` for ``x`` `(b, i, N)`, ``weight`` `(o, i)`, ``bias`` `(o,)` or ``None``: `(b, o, N)`.

    One batched matmul with the weight expanded over the batch (``baddbmm`` with the bias):
    see :class:`Pointwise` for why not a broadcasting ``matmul``.
    """
    b, _, n = x.shape
    expanded = weight.expand(b, -1, -1)  # (b, o, i), no copy
    if bias is None:
        return torch.bmm(expanded, x)
    return torch.baddbmm(bias[:, None].expand(b, -1, n), expanded, x)


def _products(pairs: list[tuple[Tensor, Tensor]], bias: Tensor | None, into: Tensor | None = None) -> Tensor:
    """``sum_k A_k X_k (+ b)`` for `(o, i_k)` weights and `(b, i_k, N)` inputs: `(b, o, N)`,
    added to ``into`` in place if given (a contiguous `(b, o, N)` tensor), else in a new buffer.

    One ``bmm`` with the weight expanded over the batch, then ``baddbmm_`` and ``add_`` into
    the same buffer. On CPU this beats both ``baddbmm`` with the bias expanded as its input
    (2.4× slower for a `(128, 32)` weight at batch 8, 64²) and one product of concatenated
    weights and inputs (a `(b, 2, N)` right factor hits a slow ``bmm`` path). A transposed
    weight is made contiguous first (``bmm`` with a transposed view ran up to 5× slower), and
    ``bmm`` with the weight expanded over the batch (stride 0) up to 1.6× slower than with the
    `(b, o, i)` copy (a few KB). A product with one input channel (``i_k = 1``, e.g. ``Wᵀ g``
    of a one-channel read-out) is an outer product, formed by a broadcast multiply: ``bmm``
    with an inner dimension of 1 took twice as long (`(128, 1)` by `(8, 1, 4096)`, CPU), and a
    `(128, 1)` transposed view 5× longer still.
    """
    if into is None:
        (a, x), *pairs = pairs
        if a.shape[1] == 1:  # contiguous, as bmm gives, whatever the layout of x (a no-op copy otherwise)
            out = torch.mul(a, x).contiguous()
        else:
            out = torch.bmm(a.expand(x.shape[0], -1, -1).contiguous(), x)
    else:
        out = into
    for w, z in pairs:
        if w.shape[1] == 1:
            out.addcmul_(w, z)
        else:
            out.baddbmm_(w.expand(z.shape[0], -1, -1).contiguous(), z)
    return out if bias is None else out.add_(bias[:, None])


def weight_products(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``Σ_k Σ_batch g_k z_kᵀ`` for `(b, o, N)` gradients ``g_k`` and `(b, i, N)` fields ``z_k``: `(o, i)`,
    the weight gradient of a pointwise layer (and its tangent, with two pairs)."""
    (g, z), *rest = pairs
    products = torch.bmm(g, z.transpose(1, 2))
    for g, z in rest:
        products.baddbmm_(g, z.transpose(1, 2))
    return products.sum(0)


class PointwiseAffine(torch.autograd.Function):
    """``(x, W, b) ↦ W x + b`` per grid point, `(b, i, N)` → `(b, o, N)`; ``b`` may be ``None``.

    forward mode: ``W dx + dW x + db`` (accumulated into one buffer, see :func:`_products`);
    backward: :class:`AffineGrad`, itself with forward-mode and backward rules, so
    forward-over-reverse Hessian-vector products and double backward work.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _products([(weight, x)], bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias = inputs
        ctx.has_bias = bias is not None
        ctx.ids = (id(weight), None if bias is None else id(bias))
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if grad is None:
            return None, None, None
        x, weight = ctx.saved_tensors
        needs = (
            _FULL if ctx.needs_input_grad[0] else _SKIP,
            *(_SKIP if not need else _TANGENT if tangent_only(i) else _FULL
              for need, i in zip(ctx.needs_input_grad[1:], ctx.ids)),
        )
        return affine_grad(grad, x, weight, needs)

    @staticmethod
    def jvp(ctx: Any, x_tangent: Tensor | None, weight_tangent: Tensor | None,
            bias_tangent: Tensor | None) -> Tensor | None:
        x, weight = ctx.saved_tensors
        pairs = [(w, z) for w, z in ((weight, x_tangent), (weight_tangent, x)) if w is not None and z is not None]
        if not pairs:
            if bias_tangent is None:
                return None
            return bias_tangent[:, None].expand(x.shape[0], -1, x.shape[2]).contiguous()
        return _products(pairs, bias_tangent)


def _affine_grads(grad: Tensor, x: Tensor, weight: Tensor, needs: tuple[int, int, int]) -> tuple:
    """``(Wᵀ g, Σ_b g xᵀ, Σ g)`` for ``grad`` `(b, o, N)`: ``None`` where ``needs`` is ``_SKIP``,
    zeros where it is ``_TANGENT``."""
    grad_x = grad_weight = grad_bias = None
    if needs[0]:
        grad_x = _products([(weight.T, grad)], None)
    if needs[1] == _FULL:
        grad_weight = weight_products([(grad, x)])
    elif needs[1] == _TANGENT:
        grad_weight = grad.new_zeros(weight.shape)
    if needs[2] == _FULL:
        grad_bias = grad.sum((0, 2))
    elif needs[2] == _TANGENT:
        grad_bias = grad.new_zeros(weight.shape[:1])
    return grad_x, grad_weight, grad_bias


class AffineGrad(torch.autograd.Function):
    """The backward of :class:`PointwiseAffine`: ``(g, x, W) ↦ (Wᵀ g, Σ_b g xᵀ, Σ g)``.

    Bilinear in ``g`` and ``(x, W)``, so its forward-mode rule is the same map at
    ``(dg, x, W)`` plus the weight and input terms at ``(g, dx, dW)``, and its backward for
    output cotangents ``(a_x, a_W, a_b)`` is ``(W a_x + a_W x + a_b, a_Wᵀ g, Σ_b g a_xᵀ)``.

    ``needs`` selects, per output, nothing (``None``), all of it, or only its tangent (the
    value is zeros, for gradients declared by
    :func:`~probneural.operators.spectral_autograd.tangent_only_gradients`: one product fewer).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad: Tensor, x: Tensor, weight: Tensor, needs: tuple[int, int, int]) -> tuple:
        return _affine_grads(grad, x, weight, needs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        grad, x, weight, needs = inputs
        ctx.needs = needs
        ctx.save_for_backward(grad, x, weight)
        ctx.save_for_forward(grad, x, weight)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, a_x: Tensor | None, a_weight: Tensor | None, a_bias: Tensor | None) -> tuple:
        grad, x, weight = ctx.saved_tensors
        d_grad = d_x = d_weight = None
        if ctx.needs_input_grad[0]:  # W a_x + a_W x + a_b
            pairs = [(w, z) for w, z in ((weight, a_x), (a_weight, x)) if w is not None and z is not None]
            if pairs:
                d_grad = _products(pairs, a_bias)
            elif a_bias is not None:
                d_grad = a_bias[:, None].expand_as(grad)
        if ctx.needs_input_grad[1] and a_weight is not None:
            d_x = _products([(a_weight.T, grad)], None)
        if ctx.needs_input_grad[2] and a_x is not None:
            d_weight = weight_products([(grad, a_x)])
        return d_grad, d_x, d_weight, None

    @staticmethod
    def jvp(ctx: Any, grad_tangent: Tensor | None, x_tangent: Tensor | None,
            weight_tangent: Tensor | None, _: Any) -> tuple:
        grad, x, weight = ctx.saved_tensors
        needs = ctx.needs
        tangent_x = tangent_weight = tangent_bias = None
        if needs[0]:
            pairs = [(w.T, g) for w, g in ((weight, grad_tangent), (weight_tangent, grad))
                     if w is not None and g is not None]
            if pairs:
                tangent_x = _products(pairs, None)
        if needs[1]:
            terms = [(g, z) for g, z in ((grad_tangent, x), (grad, x_tangent)) if g is not None and z is not None]
            if terms:
                tangent_weight = weight_products(terms)
        if needs[2] and grad_tangent is not None:
            tangent_bias = grad_tangent.sum((0, 2))
        # an output with a zero tangent gets explicit zeros (None trips an internal assert)
        shapes = ((x.shape[0], x.shape[1], grad.shape[2]), weight.shape, weight.shape[:1])
        return tuple(
            torch.zeros(shape, dtype=grad.dtype, device=grad.device) if need and tangent is None else tangent
            for need, tangent, shape in zip(needs, (tangent_x, tangent_weight, tangent_bias), shapes)
        )


def affine_grad(grad: Tensor, x: Tensor, weight: Tensor, needs: tuple[int, int, int]) -> tuple:
    """The gradients of :class:`PointwiseAffine` (``None`` where not in ``needs``): through
    :class:`AffineGrad` where they may be differentiated, else with plain operations."""
    if torch.is_grad_enabled() or torch._C._are_functorch_transforms_active() or has_tangent(grad, x, weight):
        return apply(AffineGrad, grad, x, weight, needs)
    return _affine_grads(grad, x, weight, needs)


def pointwise_affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``W x + b`` at every grid point of ``x`` `(b, i, N)`: :class:`PointwiseAffine` when an
    input carries a forward-mode tangent (Hessian-vector products), else plain operations."""
    if has_tangent(x, weight, bias):
        return apply(PointwiseAffine, x, weight, bias)
    return _affine(x, weight, bias)


class Pointwise(nn.Module):
    """An affine map applied independently at every grid point: ``y[:, :, p] = W x[:, :, p] + b``.

    Implemented as one batched matmul over the flattened grid with the weight expanded
    over the batch (``baddbmm``): its backward hands contiguous gradients to the layer
    below, whereas a broadcasting ``matmul`` hands back transposed ones that make the
    following activation's backward ~10× slower on CPU. Together 2.5× faster than
    a broadcasting matmul and 3-4× faster than a 1 × 1 ``Conv2d`` for a training step.
    Under forward-mode AD (Hessian-vector products) the custom Functions
    :class:`PointwiseAffine` / :class:`AffineGrad` give each derivative as one or two products.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        bias: whether to add a per-channel bias.

    Shapes:
        input `(b, in_channels, *spatial)`; output `(b, out_channels, *spatial)`.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int("out_channels", out_channels, 1)
        bound = 1.0 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        b, _, *spatial = x.shape
        y = pointwise_affine(x.reshape(b, self.in_channels, -1), self.weight, self.bias)
        return y.reshape(b, self.out_channels, *spatial)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"
