"""Custom autograd Functions of the spectral layer: the per-frequency contraction and constant products.

**The contraction** ``y[b, o, k] = sum_i x[b, i, k] * w[k, i, o]`` (complex, per kept frequency
``k``) is bilinear, so its derivatives are contractions of the same shape:

* forward:  ``Y = X W`` per frequency, complex `(b, i) @ (i, o)`;
* backward: ``gX = gY W^H`` and ``gW = X^H gY``;
* forward mode: ``dY = dX W + X dW``.

:class:`SpectralContract` computes each with real batched matmuls in one *frequency-major*
layout: the frequencies are the batch of the matmul, the real and imaginary parts of the
input are stacked as rows `(2b, i)`, and the weight is the stored real tensor
`(*kept, in, out, 2)` read as `(F, in, 2 out)` without a copy. The backward builds one
`(F, 2b, 2o)` matrix from the output gradient,

    G = [[Re gY,  Im gY],
         [Im gY, -Re gY]]     (columns interleaved per output channel, like the weight)

so that ``G @ W.T`` is ``[Re gX; Im gX]`` (the input's layout) and ``X.T @ G`` is ``gW``
already in the weight's layout: two matmuls. Only the two inputs are saved.

**Constant products** ``z @ M`` (the truncated DFTs) go through :class:`ConstantMatmul` under
``torch.func`` transforms and eager forward-mode AD: its derivatives are the same product
again, so that forward mode never multiplies by the constant's zero tangent (see the class
and :func:`constant_matmul`).

The backward and forward-mode rules are written with differentiable torch operations, so
both Functions support double backward (``create_graph=True``), forward-over-reverse
Hessian-vector products and the ``torch.func`` transforms (``grad``, ``jvp``, ``vmap``
through the generated vmap rule).

**Forward-over-reverse in eager mode** (:func:`probneural.hessian.hvp`): when the output
gradient carries a tangent, the contraction's backward is itself a Function,
:class:`ContractGrad`, whose forward-mode rule accumulates its two products per output in
one buffer and which can skip the value of a weight gradient that only matters through its
tangent (:func:`tangent_only_gradients`). The helpers here are shared with the pointwise
layers and activations: :func:`has_tangent` (is there an eager tangent; ``False`` at once
outside a dual level) and :func:`apply` (``Function.apply`` without its per-call signature
binding).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

__all__ = [
    "ConstantMatmul", "ContractGrad", "SpectralContract", "apply", "constant_matmul", "contract_grad_tangents", "contract_rows", "has_tangent",
    "in_one_reverse_pass", "one_reverse_pass", "pair_layout", "spectral_contract", "spectral_rows", "tangent_only", "tangent_only_gradients",
]

_TANGENT_ONLY: ContextVar[frozenset[int]] = ContextVar("probneural_tangent_only", default=frozenset())
_ONE_REVERSE_PASS: ContextVar[bool] = ContextVar("probneural_one_reverse_pass", default=False)

# what a backward Function computes of each gradient: nothing, only its tangent (its value is
# zeros: see tangent_only_gradients), or all of it
SKIP, TANGENT, FULL = 0, 1, 2


def has_tangent(*tensors: Tensor | None) -> bool:
    """Whether one of ``tensors`` carries an eager forward-mode tangent (``False`` at once
    outside a dual level)."""
    level = fwAD._current_level
    return level >= 0 and any(t is not None and torch._VF._unpack_dual(t, level)[1] is not None for t in tensors)


def apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)``, every argument given positionally.

    Outside ``torch.func`` transforms this skips ``Function.apply``'s per-call binding of the
    arguments to the signature of ``forward`` (``inspect.signature``), ~75 µs of its ~90 µs on
    this CPU: a forward-over-reverse Hessian-vector product through the FNO applies custom
    Functions ~130 times.
    """
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*args)


@contextmanager
def tangent_only_gradients(tensors: Iterable[Tensor]) -> Iterator[None]:
    """Declare that, within, only the forward-mode tangents of the gradients with respect to
    ``tensors`` are used, never their values.

    A forward-over-reverse Hessian-vector product returns the tangent of the gradient with
    respect to its (dual) parameters and drops the gradient itself. The gradient with respect
    to a tensor only ever flows, linearly, into that tensor's accumulation, so where a custom
    Function receives one of ``tensors`` directly as a weight it may return zeros as the
    value of that weight's gradient and compute only its tangent: one product fewer per
    layer (:class:`probneural.operators.pointwise.AffineGrad`). Seen only by backward passes run
    on this thread (CPU); elsewhere the gradients are computed in full.
    """
    token = _TANGENT_ONLY.set(frozenset(id(t) for t in tensors))
    try:
        yield
    finally:
        _TANGENT_ONLY.reset(token)


@contextmanager
def one_reverse_pass() -> Iterator[None]:
    """Declare that, within, forward-mode tangents are differentiated by one reverse pass without a graph.

    A forward-over-reverse Hessian-vector product (:func:`probneural.hessian.hvp`) runs one
    forward pass with tangents and one ``torch.autograd.grad`` without ``create_graph``: the
    gradients and their tangents are its last derivatives. Functions applied within may then
    compute a gradient and its tangent together in their ``backward`` and return them as dual
    tensors, instead of applying a further differentiable Function there
    (:class:`probneural.operators.second_order.FourierLayerProduct`). Seen only on this thread.
    """
    token = _ONE_REVERSE_PASS.set(True)
    try:
        yield
    finally:
        _ONE_REVERSE_PASS.reset(token)


def in_one_reverse_pass() -> bool:
    """Whether :func:`one_reverse_pass` is declared here."""
    return _ONE_REVERSE_PASS.get()


def tangent_only(tensor_id: int | None) -> bool:
    """Whether the tensor with this ``id()`` is declared by :func:`tangent_only_gradients` here."""
    return tensor_id is not None and tensor_id in _TANGENT_ONLY.get()


def _derivatives_possible(*tensors: Tensor) -> bool:
    """Whether derivatives through ``tensors`` may be asked for: gradient mode is on, a
    ``torch.func`` transform is active or one of them carries a forward-mode tangent.

    If not, :func:`contract_rows` runs the Function's ``forward`` alone and spares the
    overhead of ``Function.apply`` (~0.2 ms a call on CPU, ~3 % of a spectral layer's
    inference at 64², batch 8, width 32).
    """
    return (
        torch.is_grad_enabled()
        or torch._C._are_functorch_transforms_active()
        or has_tangent(*tensors)
    )


def _complex_rows(products: Tensor) -> Tensor:
    """Complex products from the real ones: `(F, 2, b, o, 2)` → `(F, 2, b, o)`.

    ``products[:, s, ..., t]`` is (part ``s`` of ``x``) times (part ``t`` of ``w``), part 0 the
    real and 1 the imaginary part; returns ``[Re x Re w - Im x Im w, Re x Im w + Im x Re w]``.
    """
    real = products[:, 0, ..., 0] - products[:, 1, ..., 1]
    imag = products[:, 0, ..., 1] + products[:, 1, ..., 0]
    return torch.stack((real, imag), dim=1)


def _adjoint_rows(grad: Tensor) -> Tensor:
    """The matrix ``G`` of the backward from the output gradient: `(F, 2, b, o)` → `(F, 2b, 2o)`.

    Rows ``[Re gY; Im gY]`` in the even columns and ``[Im gY; -Re gY]`` in the odd ones, so
    that ``G @ W.T = [Re gX; Im gX]`` and ``X.T @ G = [Re gW | Im gW]`` (interleaved per ``o``).
    """
    f, _, b, o = grad.shape
    real, imag = grad.unbind(1)
    return torch.stack((grad, torch.stack((imag, -real), dim=1)), dim=-1).reshape(f, 2 * b, 2 * o)


def _contract(*terms: tuple[Tensor, Tensor]) -> Tensor:
    """``sum X W`` over ``(x, weight)`` terms in frequency-major layout, one matmul per term.

    Args:
        terms: pairs of x `(F, 2, b, i)` and weight `(*kept, i, o, 2)`, ``prod(kept) = F``.

    Returns:
        `(F, 2, b, o)`.
    """
    products = None
    for x, weight in terms:
        f, _, b, i = x.shape
        o = weight.shape[-2]
        rows, columns = x.reshape(f, 2 * b, i), weight.reshape(f, i, 2 * o)
        products = torch.bmm(rows, columns) if products is None else torch.baddbmm(products, rows, columns)
    return _complex_rows(products.reshape(f, 2, b, o, 2))


class SpectralContract(torch.autograd.Function):
    """The contraction in frequency-major layout, `(F, 2, b, i)` × `(*kept, i, o, 2)` → `(F, 2, b, o)`.

    ``F = prod(kept)``; axis 1 of the input and output holds (real part, imaginary part).
    See the module docstring for the derivative rules. Under eager forward-mode AD (a
    forward-over-reverse Hessian-vector product) the backward is :class:`ContractGrad`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor) -> Tensor:
        return _contract((x, weight))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.weight_id = id(inputs[1])
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        if grad_y is None:
            return None, None
        g = _adjoint_rows(grad_y)  # (F, 2b, 2o), with its tangent under forward-mode AD
        if not torch._C._are_functorch_transforms_active() and has_tangent(g, x, weight):
            needs = (
                FULL if ctx.needs_input_grad[0] else SKIP,
                SKIP if not ctx.needs_input_grad[1] else TANGENT if tangent_only(ctx.weight_id) else FULL,
            )
            return apply(ContractGrad, g, x, weight, needs)
        return _contract_grads(g, x, weight, tuple(FULL if n else SKIP for n in ctx.needs_input_grad))

    @staticmethod
    def jvp(ctx: Any, x_tangent: Tensor | None, weight_tangent: Tensor | None) -> Tensor | None:
        x, weight = ctx.saved_tensors
        terms = [(a, w) for a, w in ((x_tangent, weight), (x, weight_tangent)) if a is not None and w is not None]
        return _contract(*terms) if terms else None


def _products(*terms: tuple[Tensor, Tensor]) -> Tensor:
    """``sum A B`` over pairs of batched matrices: one ``bmm``, then ``baddbmm_`` into the same buffer."""
    out = None
    for a, b in terms:
        out = torch.bmm(a, b) if out is None else out.baddbmm_(a, b)
    return out


def _contract_grads(g: Tensor, x: Tensor, weight: Tensor, needs: tuple[int, int]) -> tuple:
    """``(G Wᵀ, Xᵀ G)`` for ``G`` `(F, 2b, 2o)` (:func:`_adjoint_rows`), reshaped like ``(x, weight)``:
    ``None`` where ``needs`` is ``SKIP``, zeros where it is ``TANGENT`` (differentiable operations)."""
    f, rows, columns = g.shape
    grad_x = grad_w = None
    if needs[0]:
        grad_x = torch.bmm(g, weight.reshape(f, -1, columns).transpose(1, 2)).reshape(x.shape)
    if needs[1] == FULL:
        grad_w = torch.bmm(x.reshape(f, rows, -1).transpose(1, 2), g).reshape(weight.shape)
    elif needs[1] == TANGENT:
        grad_w = weight.new_zeros(weight.shape)
    return grad_x, grad_w


class ContractGrad(torch.autograd.Function):
    """The backward of :class:`SpectralContract` given ``G = G(g_y)`` (:func:`_adjoint_rows`):
    ``(G, x, W) ↦ (G Wᵀ, Xᵀ G)`` in the layouts of ``x`` and ``W``.

    Bilinear in ``G`` and ``(x, W)``: its forward-mode rule is ``(dG Wᵀ + G dWᵀ, dXᵀ G + Xᵀ dG)``
    (two products accumulated into one buffer per output) and its backward for cotangents
    ``(a_x, a_W)`` is ``(a_x W + X a_W, G a_Wᵀ, a_xᵀ G)`` as real batched products. ``needs``
    selects per output nothing, all of it, or only its tangent (``SKIP``, ``FULL``, ``TANGENT``:
    see :func:`tangent_only_gradients`; the weight gradient's product is then skipped).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(g: Tensor, x: Tensor, weight: Tensor, needs: tuple[int, int]) -> tuple:
        return _contract_grads(g, x, weight, needs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        g, x, weight, needs = inputs
        ctx.needs = needs
        ctx.save_for_backward(g, x, weight)
        ctx.save_for_forward(g, x, weight)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, a_x: Tensor | None, a_w: Tensor | None) -> tuple:
        g, x, weight = ctx.saved_tensors
        f, rows, columns = g.shape
        d_g = d_x = d_w = None
        if ctx.needs_input_grad[0]:  # a_x W + X a_W, (F, 2b, 2o)
            terms = [(a.reshape(f, rows, -1), w.reshape(f, -1, columns))
                     for a, w in ((a_x, weight), (x, a_w)) if a is not None and w is not None]
            d_g = _products(*terms) if terms else None
        if ctx.needs_input_grad[1] and a_w is not None:
            d_x = torch.bmm(g, a_w.reshape(f, -1, columns).transpose(1, 2)).reshape(x.shape)
        if ctx.needs_input_grad[2] and a_x is not None:
            d_w = torch.bmm(a_x.reshape(f, rows, -1).transpose(1, 2), g).reshape(weight.shape)
        return d_g, d_x, d_w, None

    @staticmethod
    def jvp(ctx: Any, g_tangent: Tensor | None, x_tangent: Tensor | None,
            weight_tangent: Tensor | None, _: Any) -> tuple:
        g, x, weight = ctx.saved_tensors
        return contract_grad_tangents((g, x, weight), (g_tangent, x_tangent, weight_tangent), ctx.needs)


def contract_grad_tangents(values: tuple, tangents: tuple, needs: tuple[int, int]) -> tuple:
    """The tangents of :class:`ContractGrad`'s outputs ``(G Wᵀ, Xᵀ G)``: ``(dG Wᵀ + G dWᵀ, dXᵀ G + Xᵀ dG)``.

    Args:
        values: ``(G, x, W)``: `(F, 2b, 2o)` (:func:`_adjoint_rows`), `(F, 2, b, i)`, `(*kept, i, o, 2)`.
        tangents: their tangents, each possibly ``None`` (zero).
        needs: per output, ``SKIP`` (``None`` returned) or not.
    """
    (g, x, weight), (g_tangent, x_tangent, weight_tangent) = values, tangents
    f, rows, columns = g.shape
    tangent_x = tangent_w = None
    if needs[0]:
        terms = [(a, w.reshape(f, -1, columns).transpose(1, 2))
                 for a, w in ((g_tangent, weight), (g, weight_tangent)) if a is not None and w is not None]
        tangent_x = _products(*terms).reshape(x.shape) if terms else torch.zeros_like(x)
    if needs[1]:
        terms = [(a.reshape(f, rows, -1).transpose(1, 2), h)
                 for a, h in ((x_tangent, g), (x, g_tangent)) if a is not None and h is not None]
        tangent_w = _products(*terms).reshape(weight.shape) if terms else torch.zeros_like(weight)
    return tangent_x, tangent_w


def spectral_contract(x_ft: Tensor, weight: Tensor) -> Tensor:
    """Per-frequency channel mixing ``y[b, o, k] = sum_i x[b, i, k] * w[k, i, o]`` in pair layout.

    The coefficients are rearranged frequency-major (one copy each way) for
    :class:`SpectralContract`: one real batched matmul over the frequencies, with the real and
    imaginary parts of ``x`` stacked as rows and the stored weight read as ``[Re w | Im w]``
    without a copy, then ``Re y = Re x Re w - Im x Im w`` and ``Im y = Re x Im w + Im x Re w``.
    Differentiable to any order, in reverse and forward mode.

    Args:
        x_ft: `(b, i, *k, 2p)` input coefficients in pair layout (``k`` the kept non-last-axis
            frequencies, ``p`` the kept last-axis frequencies).
        weight: `(*k, p, i, o, 2)` real view of the complex weights.

    Returns:
        `(b, o, *k, 2p)` output coefficients in pair layout.

    Raises:
        ValueError: the shapes of ``x_ft`` and ``weight`` do not fit together.
    """
    if (
        weight.dim() != x_ft.dim() + 1
        or weight.shape[-1] != 2
        or tuple(weight.shape[:-4]) != tuple(x_ft.shape[2:-1])
        or 2 * weight.shape[-4] != x_ft.shape[-1]
        or weight.shape[-3] != x_ft.shape[1]
    ):
        raise ValueError(
            "x_ft, weight: expected shapes (b, i, *k, 2p) and (*k, p, i, o, 2); "
            f"got {tuple(x_ft.shape)} and {tuple(weight.shape)}"
        )
    rows, layout = spectral_rows(x_ft)
    return pair_layout(contract_rows(rows, weight), layout)


def spectral_rows(z: Tensor) -> tuple[Tensor, tuple]:
    """Coefficients in pair layout `(b, i, *k, 2p)` rearranged frequency-major, `(F, 2, b, i)` (one copy).

    ``F = prod(k) * p``; axis 1 holds (real part, imaginary part). Returns the rows and the layout
    ``(k, p)`` that :func:`pair_layout` needs to undo it.
    """
    b, i, *k, two_p = z.shape
    p = two_p // 2
    return z.reshape(b, i, -1, 2, p).permute(2, 4, 3, 0, 1).reshape(-1, 2, b, i), (k, p)


def pair_layout(rows: Tensor, layout: tuple) -> Tensor:
    """Frequency-major coefficients `(F, 2, b, o)` back in pair layout `(b, o, *k, 2p)` (one copy);
    ``layout`` as returned by :func:`spectral_rows`."""
    k, p = layout
    _, _, b, o = rows.shape
    return rows.reshape(-1, p, 2, b, o).permute(3, 4, 0, 2, 1).reshape(b, o, *k, 2 * p)


def contract_rows(rows: Tensor, weight: Tensor) -> Tensor:
    """The contraction of frequency-major rows `(F, 2, b, i)` with the weight `(*k, p, i, o, 2)`:
    `(F, 2, b, o)`, through :class:`SpectralContract` where derivatives may be asked for."""
    if _derivatives_possible(rows, weight):
        return apply(SpectralContract, rows, weight)
    return SpectralContract.forward(rows, weight)


class ConstantMatmul(torch.autograd.Function):
    """``z @ matrix`` for a constant ``matrix``, differentiable in ``z`` to any order.

    The forward-mode rule multiplies the tangent by ``matrix``; the backward applies this
    Function with ``matrix.T``, so that the derivatives of the backward (the forward-mode
    pass over it in a forward-over-reverse Hessian-vector product, or double backward) are
    single products again. Under ``torch.func`` transforms the built-in matmul derivatives
    would also multiply by the matrix's tangent, which is zero but materialised as a dense
    tensor: under forward-over-reverse that doubles the products and adds an output-sized
    ``add`` to each.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, matrix: Tensor) -> Tensor:
        return torch.matmul(z, matrix)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        matrix = inputs[1]
        ctx.save_for_backward(matrix)
        ctx.save_for_forward(matrix)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, None]:
        (matrix,) = ctx.saved_tensors
        return (None if grad is None else apply(ConstantMatmul, grad, matrix.T)), None

    @staticmethod
    def jvp(ctx: Any, z_tangent: Tensor | None, matrix_tangent: Tensor | None) -> Tensor | None:
        (matrix,) = ctx.saved_tensors
        return None if z_tangent is None else ConstantMatmul.forward(z_tangent, matrix)


def constant_matmul(z: Tensor, matrix: Tensor) -> Tensor:
    """``z @ matrix`` along the last axis for a constant ``matrix``.

    Under ``torch.func`` transforms this is :class:`ConstantMatmul` (on CPU, the
    Hessian-vector product of one DFT step of an FNO layer, width 32, batch 8, runs up to
    1.3× faster at 64² and 1.5× at 128²; that of the whole FNO at 64², batch 16, ~8 %), and
    also when ``z`` carries an eager forward-mode tangent: eager forward mode through the
    broadcasting ``matmul`` of a transposed view (the non-last axes) takes a per-batch
    ``bmm`` path with a copy of the matrix per batch element, ~4× slower than the Function's
    two products. Elsewhere it is a plain matmul: eager reverse mode already skips the
    constant's derivative, and ``Function.apply`` would add ~20 % to each DFT step of a
    training step or an inference pass.

    Args:
        z: `(..., n)`.
        matrix: `(n, m)`, a constant: no gradient or tangent is ever computed for it.

    Returns:
        `(..., m)`.
    """
    if torch._C._are_functorch_transforms_active() or has_tangent(z):
        return apply(ConstantMatmul, z, matrix)
    return ConstantMatmul.forward(z, matrix)
