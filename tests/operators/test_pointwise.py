"""The pointwise layer's Functions (forward-mode AD path) against plain operations (float64).

* gradcheck / gradgradcheck of PointwiseAffine and AffineGrad (forward mode, forward-over-reverse,
  batched) for square, widening, narrowing and bias-free layers;
* Pointwise equals plain ops in value, gradient and forward-over-reverse to 1e-12;
* tangent-only weight gradients: zeros as values, the same tangents.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad, gradcheck, gradgradcheck

from probneural.operators.pointwise import AffineGrad, Pointwise, PointwiseAffine
from probneural.operators.spectral_autograd import FULL, SKIP, TANGENT, tangent_only_gradients

DOUBLE = torch.float64
SHAPES = [(3, 4, True), (4, 2, False), (2, 2, True), (5, 1, True), (1, 3, False)]  # in, out, bias (1: outer products)


def operands(i: int, o: int, bias: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, i, 5, generator=generator, dtype=DOUBLE, requires_grad=True)
    weight = torch.randn(o, i, generator=generator, dtype=DOUBLE, requires_grad=True)
    b = torch.randn(o, generator=generator, dtype=DOUBLE, requires_grad=True) if bias else None
    grad = torch.randn(2, o, 5, generator=generator, dtype=DOUBLE, requires_grad=True)
    return x, weight, b, grad


def plain(x, weight, bias):
    y = torch.einsum("oi,bin->bon", weight, x)
    return y if bias is None else y + bias[:, None]


def assert_equal_to_1e12(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("i, o, bias", SHAPES)
def test_gradcheck_and_gradgradcheck(i, o, bias):
    x, weight, b, grad = operands(i, o, bias)
    checks = dict(check_batched_grad=True)
    assert gradcheck(PointwiseAffine.apply, (x, weight, b), check_forward_ad=True,
                     check_batched_forward_grad=True, **checks)
    assert gradgradcheck(PointwiseAffine.apply, (x, weight, b), check_fwd_over_rev=True, **checks)

    def backward(g, a, w):
        return tuple(t for t in AffineGrad.apply(g, a, w, (FULL, FULL, FULL if bias else SKIP)) if t is not None)

    assert gradcheck(backward, (grad, x, weight), check_forward_ad=True, check_batched_forward_grad=True, **checks)
    assert gradgradcheck(backward, (grad, x, weight), check_fwd_over_rev=True, **checks)


def forward_over_reverse(layer_fn, x, weight, b, grad, tangents):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, b) if t is not None]
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(t, d) for t, d in zip(leaves, tangents)]
        y = layer_fn(*duals, *([None] if b is None else []))
        grads = torch.autograd.grad(y, leaves, forward_ad.make_dual(grad.detach(), tangents[-1].new_ones(y.shape)))
        return [forward_ad.unpack_dual(y).tangent] + [u for g in grads for u in forward_ad.unpack_dual(g)]


@pytest.mark.parametrize("i, o, bias", SHAPES)
def test_pointwise_equals_plain_ops(i, o, bias):
    x, weight, b, grad = operands(i, o, bias, seed=1)
    layer = Pointwise(i, o, bias=bias).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias:
            layer.bias.copy_(b)
    fields = x.reshape(2, i, 5, 1)
    assert_equal_to_1e12(layer(fields).reshape(2, o, 5), plain(x, weight, b))
    expected = torch.autograd.grad(plain(x, weight, b), [t for t in (x, weight, b) if t is not None], grad)
    actual = torch.autograd.grad(layer(fields), [fields, *layer.parameters()], grad.reshape(2, o, 5, 1))
    for a, e in zip(actual, expected):
        assert_equal_to_1e12(a.reshape(e.shape), e)
    tangents = [torch.randn_like(t) for t in (x, weight, b) if t is not None]

    def module(a, w, *rest):
        return torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], (w, *rest))),
                                          (a.reshape(2, i, 5, 1),)).reshape(2, o, 5)

    for a, e in zip(forward_over_reverse(module, x, weight, b, grad, tangents),
                    forward_over_reverse(plain, x, weight, b, grad, tangents)):
        assert_equal_to_1e12(a, e)


def test_tangent_only_weight_gradients_have_zero_values_and_the_same_tangents():
    x, weight, b, grad = operands(3, 4, True, seed=2)
    tangents = [torch.randn_like(t) for t in (x, weight, b)]
    results = {}
    for declared in (False, True):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, b)]
        with forward_ad.dual_level():
            duals = [forward_ad.make_dual(t, d) for t, d in zip(leaves, tangents)]
            y = PointwiseAffine.apply(*duals)
            with tangent_only_gradients(duals[1:] if declared else ()):
                grads = torch.autograd.grad(y, leaves, forward_ad.make_dual(grad.detach(), torch.ones_like(grad)))
            results[declared] = [forward_ad.unpack_dual(g) for g in grads]
    full, declared = results[False], results[True]
    assert_equal_to_1e12(declared[0].primal, full[0].primal)  # the input's gradient is computed
    for k in (1, 2):
        assert torch.count_nonzero(declared[k].primal) == 0 and torch.count_nonzero(full[k].primal) > 0
    for d, f in zip(declared, full):
        assert_equal_to_1e12(d.tangent, f.tangent)
    assert TANGENT not in (SKIP, FULL)
