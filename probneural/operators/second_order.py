"""Whole FNO layers as custom autograd Functions for forward-over-reverse products (ADR 0021).

A forward-over-reverse Hessian-vector product (:func:`probneural.hessian.hvp`) runs the
forward pass with tangents and one reverse pass in which every backward formula runs with its
forward-mode rule. Through the layer-by-layer Functions of this package that costs ~35 aten
operations per Fourier layer and direction, each dispatched through forward-mode AD and
autograd (a dual tensor, a graph node, saved tensors), and ~20 Function applications.

:class:`FourierLayerProduct` computes ``y = act(K h + W h + b)`` (``K`` the spectral
convolution, ``W, b`` the pointwise skip path, ``act`` GELU or none) and its tangent ``ẏ``
together in its ``forward``, with plain tensors, and in its ``backward`` the input and
weight gradients together with their tangents, which it returns as dual tensors.
:class:`ProjectionProduct` does the same for the projection ``W₂ gelu(W₁ h + b₁) + b₂``, with a
closed-form backward for its narrow read-out (see the class). Both are fast only where the
gradients are the last derivatives taken: inside
:func:`~probneural.operators.spectral_autograd.one_reverse_pass`, which
:func:`probneural.hessian.hvp` declares; the FNO uses them only there (:func:`fuses`,
:func:`projection_fuses`). A ``backward`` run with gradient mode on (``create_graph=True``,
``gradgradcheck``) differentiates the layer's plain operations by autograd instead, so that its
gradients can be differentiated again. ``jvp`` returns the tangent ``forward`` computed from its
``tangents`` argument: apply them through :func:`fourier_layer_product` and
:func:`projection_product`, which pass the inputs' own tangents.

The rules of the Fourier layer, for ``u = K h + W h + b``, ``y = gelu(u)``, output gradient ``g``
with tangent ``ġ``:

* forward: ``u̇ = K(ḣ) + K̇(h) + W ḣ + Ẇ h + ḃ`` and ``ẏ = gelu'(u) u̇``;
* backward: ``g_u = gelu'(u) g`` and ``ġ_u = gelu'(u) ġ + gelu''(u) u̇ g``, then
  ``g_h = Kᵀ(g_u) + Wᵀ g_u`` and ``ġ_h = Kᵀ(ġ_u) + K̇ᵀ(g_u) + Wᵀ ġ_u + Ẇᵀ g_u``, and for the
  weights the tangents of ``∂K = X̂ᴴ Ĝ`` (per frequency), ``∂W = Σ g_u hᵀ`` and ``∂b = Σ g_u``.

``K`` runs as in :class:`~probneural.operators.spectral.SpectralConv`: truncated DFT products
(:func:`~probneural.operators.spectral.analysis`), the per-frequency contraction and the inverse
(:func:`~probneural.operators.spectral.synthesis`); its adjoint is the same chain with the
transposed matrices. Weight gradients declared tangent-only
(:func:`~probneural.operators.spectral_autograd.tangent_only_gradients`) get zeros as values.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor

from probneural.operators.activations import add_gelu_curvature, gelu, gelu_curvature, gelu_derivative
from probneural.operators.pointwise import Pointwise, _products, pointwise_affine, weight_products
from probneural.operators.spectral import SpectralConv, analysis, synthesis
from probneural.operators.spectral_autograd import (
    FULL, SKIP, TANGENT, _adjoint_rows, _contract, _contract_grads, apply, contract_grad_tangents,
    has_tangent, in_one_reverse_pass, tangent_only,
)

__all__ = [
    "FourierLayerProduct", "ProjectionProduct", "fourier_layer_product", "fuses", "projection_fuses", "projection_product",
]


def fuses(h: Tensor, conv: SpectralConv, skip: Pointwise) -> bool:
    """Whether :func:`fourier_layer_product` applies to ``h`` `(b, c, *spatial)` in this layer: inside
    :func:`~probneural.operators.spectral_autograd.one_reverse_pass`, with an eager tangent on the
    field or a weight, in the weights' dtype, without autocast and outside ``torch.func`` transforms."""
    return _fusable(h, conv.weight, skip.weight, skip.bias)


def _fusable(h: Tensor, *weights: Tensor | None) -> bool:
    """Inside :func:`~probneural.operators.spectral_autograd.one_reverse_pass`, outside ``torch.func``
    transforms and autocast, ``h`` in the dtype of every weight, and a tangent on ``h`` or a weight."""
    return (
        in_one_reverse_pass()
        and not torch._C._are_functorch_transforms_active()
        and all(w is None or w.dtype == h.dtype for w in weights)
        and not torch.is_autocast_enabled(h.device.type)
        and has_tangent(h, *weights)
    )


def _primal(t: Tensor | None) -> Tensor | None:
    return None if t is None else fwAD.unpack_dual(t).primal


def _tangent(t: Tensor | None, like: Tensor | None) -> Tensor | None:
    """The tangent of ``t``, zeros of ``like``'s shape where it has none (``None`` for no tensor)."""
    if like is None:
        return None
    tangent = None if t is None else fwAD.unpack_dual(t).tangent
    return torch.zeros_like(like) if tangent is None else tangent


def _dual(value: Tensor, tangent: Tensor) -> Tensor:
    """``value`` with ``tangent`` as a dual tensor, or ``value`` alone outside a dual level."""
    return value if fwAD._current_level < 0 else fwAD.make_dual(value, tangent)


def _weight_gradient(need: bool, tensor_id: int | None, value: Callable[[], Tensor],
                     tangent: Callable[[], Tensor]) -> Tensor | None:
    """A weight's gradient with its tangent (:func:`_dual`), ``None`` if not needed; the value is zeros
    for a weight declared tangent-only (:func:`~probneural.operators.spectral_autograd.tangent_only`)."""
    if not need:
        return None
    derivative = tangent()
    return _dual(torch.zeros_like(derivative) if tangent_only(tensor_id) else value(), derivative)


def _differentiable_backward(function: Callable[..., Tensor], inputs: tuple, grad: Tensor,
                             needs: tuple[bool, ...]) -> tuple:
    """The gradients of ``function(*inputs)`` for the output gradient ``grad``, by autograd with a graph
    (``create_graph``), so that they can be differentiated again; ``None`` where not in ``needs``."""
    with torch.enable_grad():
        wanted = [t for t, need in zip(inputs, needs) if need]
        grads = iter(torch.autograd.grad(function(*inputs), wanted, grad, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


def _plain_fourier_layer(h: Tensor, spectral_weight: Tensor, skip_weight: Tensor, skip_bias: Tensor | None, *,
                         conv: SpectralConv, activate: bool) -> Tensor:
    """``act(K h + W h + b)`` with the layer-by-layer operations (as the FNO runs it elsewhere)."""
    u = conv.convolve(h, spectral_weight)
    u = u + pointwise_affine(h.reshape(*h.shape[:2], -1), skip_weight, skip_bias).reshape(u.shape)
    return gelu(u) if activate else u


def _plain_projection(h: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
    """``W₂ gelu(W₁ h + b₁) + b₂`` per point of ``h`` `(b, c, N)`, with the layer-by-layer operations."""
    return pointwise_affine(gelu(pointwise_affine(h, w1, b1)), w2, b2)


class _WholeLayerProduct(torch.autograd.Function):
    """A Function whose ``forward`` also computes its output's tangent (``ctx.output_tangent``), which
    ``jvp`` hands back: the tangents its ``forward`` was given must be its inputs' own."""

    @staticmethod
    def jvp(ctx: Any, *_: Any) -> Tensor:
        tangent, ctx.output_tangent = ctx.output_tangent, None
        return tangent


class FourierLayerProduct(_WholeLayerProduct):
    """``(h, K, W, b) ↦ act(K h + W h + b)`` with its tangent in ``forward`` and the gradients with
    their tangents in ``backward`` (see the module docstring).

    Inputs: ``h`` `(b, c, *spatial)`, the spectral weight `(*kept, c, o, 2)`, the skip weight
    `(o, c)` and bias `(o,)` or ``None`` (each possibly dual), ``tangents`` (their tangents,
    zeros where none), the :class:`SpectralConv` (for its DFT matrices) and ``activate``
    (GELU or none). Output `(b, o, *spatial)`.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, spectral_weight: Tensor, skip_weight: Tensor, skip_bias: Tensor | None,
                tangents: tuple, conv: SpectralConv, activate: bool) -> Tensor:
        ctx.ids = tuple(None if t is None else id(t) for t in (spectral_weight, skip_weight, skip_bias))
        ctx.save_for_backward(h, spectral_weight, skip_weight, skip_bias)  # for a differentiable backward
        h, spectral_weight, skip_weight, skip_bias = map(_primal, (h, spectral_weight, skip_weight, skip_bias))
        dh, dk, dw, db = tangents
        (forward_last, forward_axes), inverse = conv.dft_matrices(h)
        x_rows, layout = analysis(h, forward_last, forward_axes)
        dx_rows, _ = analysis(dh, forward_last, forward_axes)
        u = synthesis(_contract((x_rows, spectral_weight)), layout, *inverse)
        du = synthesis(_contract((dx_rows, spectral_weight), (x_rows, dk)), layout, *inverse)
        b, o = u.shape[:2]
        flat_h, flat_dh = h.reshape(b, h.shape[1], -1), dh.reshape(b, h.shape[1], -1)
        _products([(skip_weight, flat_h)], skip_bias, into=u.view(b, o, -1))
        _products([(skip_weight, flat_dh), (dw, flat_h)], db, into=du.view(b, o, -1))
        # intermediates as attributes (an output held by ctx would be a reference cycle)
        ctx.fields = (h, dh, x_rows, dx_rows)
        ctx.weights = (spectral_weight, skip_weight, dk, dw)
        ctx.layout, ctx.conv, ctx.activate = layout, conv, activate
        ctx.set_materialize_grads(False)
        if not activate:
            ctx.activation = None
            ctx.output_tangent = du
            return u
        derivative = gelu_derivative(u)
        ctx.activation = (u, du, derivative)  # for g_u and its curvature term
        ctx.output_tangent = derivative * du
        return F.gelu(u)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple:
        if grad is None:
            return (None,) * 7
        if torch.is_grad_enabled():  # create_graph=True: the plain layer's derivatives, by autograd
            plain = partial(_plain_fourier_layer, conv=ctx.conv, activate=ctx.activate)
            return (*_differentiable_backward(plain, ctx.saved_tensors, grad, ctx.needs_input_grad[:4]), None, None, None)
        ctx.saved_tensors  # raises if an input was modified in place since the forward pass
        g, dg = _primal(grad), _tangent(grad, grad)
        h, dh, x_rows, dx_rows = ctx.fields
        spectral_weight, skip_weight, dk, dw = ctx.weights
        if ctx.activation is not None:
            u, du, derivative = ctx.activation
            g_u = g * derivative
            dg_u = add_gelu_curvature(g, u, du, dg * derivative)
        else:
            g_u, dg_u = g.contiguous(), dg.contiguous()
        (forward_last, forward_axes), (inverse_last, inverse_axes) = ctx.conv.dft_matrices(h)
        adjoint = (forward_last.T, [m.T for m in forward_axes])
        g_rows = _adjoint_rows(analysis(g_u, inverse_last.T, [m.T for m in inverse_axes])[0])
        dg_rows = _adjoint_rows(analysis(dg_u, inverse_last.T, [m.T for m in inverse_axes])[0])
        needs = ctx.needs_input_grad
        spectral_id, skip_id, bias_id = ctx.ids
        spectral_needs = (FULL, SKIP if not needs[1] else TANGENT if tangent_only(spectral_id) else FULL)
        g_x, spectral_value = _contract_grads(g_rows, x_rows, spectral_weight, spectral_needs)
        dg_x, spectral_tangent = contract_grad_tangents((g_rows, x_rows, spectral_weight), (dg_rows, dx_rows, dk),
                                                        spectral_needs)
        g_h = synthesis(g_x, ctx.layout, *adjoint)
        dg_h = synthesis(dg_x, ctx.layout, *adjoint)
        b, c = h.shape[:2]
        flat = [t.reshape(b, t.shape[1], -1) for t in (h, dh, g_u, dg_u)]
        flat_h, flat_dh, flat_g, flat_dg = flat
        _products([(skip_weight.T, flat_g)], None, into=g_h.view(b, c, -1))
        _products([(skip_weight.T, flat_dg), (dw.T, flat_g)], None, into=dg_h.view(b, c, -1))
        grads: list[Tensor | None] = [
            _dual(g_h, dg_h) if needs[0] else None,
            _dual(spectral_value, spectral_tangent) if needs[1] else None,
        ]
        grads += [
            _weight_gradient(needs[2], skip_id, lambda: weight_products([(flat_g, flat_h)]),
                             lambda: weight_products([(flat_dg, flat_h), (flat_g, flat_dh)])),
            _weight_gradient(needs[3], bias_id, lambda: flat_g.sum((0, 2)), lambda: flat_dg.sum((0, 2))),
        ]
        return (*grads, None, None, None)


def fourier_layer_product(h: Tensor, conv: SpectralConv, skip: Pointwise, activate: bool) -> Tensor:
    """``gelu(K h + W h + b)`` (or without GELU) through :class:`FourierLayerProduct`; see :func:`fuses`.

    Args:
        h: `(b, c, *spatial)` field, possibly dual.
        conv: the layer's spectral convolution ``K``.
        skip: the layer's pointwise skip path ``W, b``.
        activate: apply GELU.

    Returns:
        `(b, o, *spatial)`, dual with the output tangent.
    """
    conv.check_input(h)
    inputs = (h, conv.weight, skip.weight, skip.bias)
    tangents = tuple(_tangent(t, _primal(t)) for t in inputs)
    return apply(FourierLayerProduct, *inputs, tangents, conv, activate)


def projection_fuses(h: Tensor, hidden: Pointwise, out: Pointwise) -> bool:
    """Whether :func:`projection_product` applies to features ``h`` `(b, c, *spatial)`: as :func:`fuses`,
    for the projection's two pointwise layers."""
    return _fusable(h, hidden.weight, hidden.bias, out.weight, out.bias)


def _per_output(g: Tensor, fields: Tensor) -> Tensor:
    """``Σ_j g[:, j] ⊙ fields[:, j]`` for ``g`` `(b, o, N)` and ``fields`` `(b, o, c, N)`: `(b, c, N)`."""
    if g.shape[1] == 1:
        return fields[:, 0] * g
    return (fields * g[:, :, None]).sum(1)


class ProjectionProduct(_WholeLayerProduct):
    """``(h, W₁, b₁, W₂, b₂) ↦ W₂ gelu(W₁ h + b₁) + b₂`` per grid point, with its tangent in ``forward``
    and the gradients with their tangents in ``backward``, for a narrow read-out (few outputs ``o``).

    With ``z = W₁ h + b₁``, ``d = gelu'(z)`` and ``Q = gelu''(z) ż`` (both kept from the forward
    pass), the gradients of an output gradient ``g`` never form a `(m, N)` field: ``g_z = d ⊙ W₂ᵀ g``
    has rank ``o`` per point, so

    * ``g_h = W₁ᵀ g_z = Σ_j g_j ⊙ (A_j d)`` with ``A_j = W₁ᵀ diag(W₂[j])``, and
      ``ġ_h = Σ_j ġ_j ⊙ (A_j d) + g_j ⊙ (A'_j d + A_j Q)`` with
      ``A'_j = W₁ᵀ diag(Ẇ₂[j]) + Ẇ₁ᵀ diag(W₂[j])``: three products ``(o c, m) @ (m, N)``;
    * ``∂W₁ = Σ_j diag(W₂[j]) d (g_j ⊙ h)ᵀ`` and its tangent
      ``Σ_j diag(W₂[j]) [d (ġ_j ⊙ h + g_j ⊙ ḣ)ᵀ + Q (g_j ⊙ h)ᵀ] + diag(Ẇ₂[j]) d (g_j ⊙ h)ᵀ``
      (the biases with ``1`` for ``h``): two products of ``d`` and ``Q`` with narrow fields;
    * ``∂W₂ = Σ g aᵀ`` with tangent ``Σ ġ aᵀ + g ȧᵀ`` (``a = gelu(z)``, ``ȧ = d ż``).

    The backward reads four saved `(m, N)` fields and writes none (the layer-by-layer rules write
    about ten). Inputs: ``h`` `(b, c, N)`, ``W₁`` `(m, c)`, ``b₁`` `(m,)` or ``None``, ``W₂`` `(o, m)`,
    ``b₂`` `(o,)` or ``None`` (each possibly dual), then their tangents (zeros where none; ``None``
    for a missing bias). Output `(b, o, N)`.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                tangents: tuple) -> Tensor:
        ctx.ids = tuple(None if t is None else id(t) for t in (w1, b1, w2, b2))
        ctx.save_for_backward(h, w1, b1, w2, b2)  # for a differentiable backward
        h, w1, b1, w2, b2 = map(_primal, (h, w1, b1, w2, b2))
        dh, dw1, db1, dw2, db2 = tangents
        z = _products([(w1, h)], b1)
        dz = _products([(w1, dh), (dw1, h)], db1)
        derivative = gelu_derivative(z)
        curvature = gelu_curvature(z, dz)
        a = F.gelu(z)
        da = dz.mul_(derivative)
        ctx.fields = (h, dh, derivative, curvature, a, da)
        ctx.weights = (w1, w2, dw1, dw2)
        ctx.set_materialize_grads(False)
        ctx.output_tangent = _products([(w2, da), (dw2, a)], db2)
        return _products([(w2, a)], b2)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple:
        if grad is None:
            return (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True: the plain projection's derivatives, by autograd
            return (*_differentiable_backward(_plain_projection, ctx.saved_tensors, grad, ctx.needs_input_grad[:5]), None)
        ctx.saved_tensors  # raises if an input was modified in place since the forward pass
        g, dg = _primal(grad).contiguous(), _tangent(grad, grad).contiguous()
        h, dh, derivative, curvature, a, da = ctx.fields
        w1, w2, dw1, dw2 = ctx.weights
        (b, c, _), (o, m) = h.shape, w2.shape
        scaled = w2[:, None, :] * w1.T  # A_j, (o, c, m)
        tangent_scaled = dw2[:, None, :] * w1.T + w2[:, None, :] * dw1.T  # A'_j
        both = torch.cat((scaled, tangent_scaled)).reshape(2 * o * c, m)
        products = _products([(both, derivative)], None).view(b, 2, o, c, -1)  # A d, A' d
        curved = _products([(scaled.reshape(o * c, m), curvature)], None).view(b, o, c, -1)  # A Q
        grad_h = _per_output(g, products[:, 0])
        tangent_h = _per_output(dg, products[:, 0]).add_(_per_output(g, products[:, 1].add_(curved)))
        plain = g[:, :, None] * h[:, None]  # g_j ⊙ h, (b, o, c, N)
        mixed = torch.addcmul(dg[:, :, None] * h[:, None], g[:, :, None], dh[:, None])  # ġ_j ⊙ h + g_j ⊙ ḣ
        oc = o * c
        narrow = torch.cat((mixed.flatten(1, 2), plain.flatten(1, 2), g, dg), dim=1)  # (b, 2oc + 2o, N)
        with_d = torch.bmm(derivative, narrow.transpose(1, 2)).sum(0)  # d (mixed | plain | g | ġ)ᵀ, (m, 2oc + 2o)
        with_q = torch.bmm(curvature, narrow[:, oc:2 * oc + o].transpose(1, 2)).sum(0)  # Q (plain | g)ᵀ
        d_mixed, d_plain = with_d[:, :oc].view(m, o, c), with_d[:, oc:2 * oc].view(m, o, c)
        d_g, d_dg = with_d[:, 2 * oc:2 * oc + o], with_d[:, 2 * oc + o:]
        q_plain, q_g = with_q[:, :oc].view(m, o, c), with_q[:, oc:]
        needs = ctx.needs_input_grad
        w1_id, b1_id, w2_id, b2_id = ctx.ids
        grads: list[Tensor | None] = [_dual(grad_h, tangent_h) if needs[0] else None]
        grads += [
            _weight_gradient(needs[1], w1_id, lambda: torch.einsum("jk,kjc->kc", w2, d_plain),
                             lambda: torch.einsum("jk,kjc->kc", w2, d_mixed + q_plain)
                             + torch.einsum("jk,kjc->kc", dw2, d_plain)),
            _weight_gradient(needs[2], b1_id, lambda: (w2.T * d_g).sum(1),
                             lambda: (w2.T * (d_dg + q_g)).sum(1) + (dw2.T * d_g).sum(1)),
            _weight_gradient(needs[3], w2_id, lambda: weight_products([(g, a)]),
                             lambda: weight_products([(dg, a), (g, da)])),
            _weight_gradient(needs[4], b2_id, lambda: g.sum((0, 2)), lambda: dg.sum((0, 2))),
        ]
        return (*grads, None)


def projection_product(h: Tensor, hidden: Pointwise, out: Pointwise) -> Tensor:
    """``out(gelu(hidden(h)))`` through :class:`ProjectionProduct`; see :func:`projection_fuses`.

    Args:
        h: `(b, c, *spatial)` features, possibly dual.
        hidden: the projection's first pointwise layer `(c → m)`.
        out: its read-out `(m → o)`.

    Returns:
        `(b, o, *spatial)`, dual with the output tangent.
    """
    b, c, *spatial = h.shape
    inputs = (h.reshape(b, c, -1), hidden.weight, hidden.bias, out.weight, out.bias)
    tangents = tuple(_tangent(t, _primal(t)) for t in inputs)
    return apply(ProjectionProduct, *inputs, tangents).reshape(b, -1, *spatial)
