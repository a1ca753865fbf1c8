"""The GELU Functions against torch.nn.functional.gelu (float64).

* gradcheck / gradgradcheck of Gelu and GeluGrad (forward mode, forward-over-reverse, batched);
* gelu() equals F.gelu in value, gradient, double backward and forward-over-reverse to 1e-12,
  also through the blocked curvature term (more elements than one block) and for
  non-contiguous inputs;
* the Function runs only under a forward-mode tangent; the FNO looks activations up here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad, gradcheck, gradgradcheck

from probneural.operators import activations
from probneural.operators.activations import ACTIVATIONS, Gelu, GeluGrad, gelu, gelu_second
from probneural.operators.fno import _ACTIVATIONS

DOUBLE = torch.float64


def assert_equal_to_1e12(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_gelu_and_its_backward_pass_gradcheck_and_gradgradcheck():
    generator = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(3, 4, generator=generator, dtype=DOUBLE)).requires_grad_()
    g = torch.randn(3, 4, generator=generator, dtype=DOUBLE, requires_grad=True)
    for function, inputs in ((Gelu.apply, (x,)), (lambda a, b: GeluGrad.apply(a, b, None), (g, x))):
        assert gradcheck(function, inputs, check_forward_ad=True, check_batched_grad=True,
                         check_batched_forward_grad=True)
        assert gradgradcheck(function, inputs, check_fwd_over_rev=True, check_batched_grad=True)


def test_gelu_second_is_the_second_derivative():
    x = torch.linspace(-4, 4, 17, dtype=DOUBLE, requires_grad=True)
    (first,) = torch.autograd.grad(F.gelu(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)
    assert_equal_to_1e12(gelu_second(x.detach()), second)


def forward_over_reverse(act, x, dx, g, dg):
    """``(act(x), its tangent, the gradient g·act'(x), its tangent)`` by eager forward AD."""
    leaf = x.clone().requires_grad_()
    with forward_ad.dual_level():
        y = act(forward_ad.make_dual(leaf, dx))
        (grad,) = torch.autograd.grad(y, leaf, forward_ad.make_dual(g, dg))
        return (*forward_ad.unpack_dual(y), *forward_ad.unpack_dual(grad))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 300, 300)], ids=["small", "several-blocks"])
def test_gelu_equals_f_gelu_in_value_gradients_and_forward_over_reverse(shape, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # one pass or blocks (curvature term)
    generator = torch.Generator().manual_seed(1)
    x, dx, g, dg = (torch.randn(shape, generator=generator, dtype=DOUBLE) for _ in range(4))
    assert x.numel() < activations._BLOCK or x.numel() > 2 * activations._BLOCK
    for actual, expected in zip(forward_over_reverse(gelu, x, dx, g, dg), forward_over_reverse(F.gelu, x, dx, g, dg)):
        assert_equal_to_1e12(actual, expected)
    leaf = x.clone().requires_grad_()
    assert_equal_to_1e12(gelu(leaf), F.gelu(x))
    (grad,) = torch.autograd.grad(gelu(leaf), leaf, g, create_graph=True)
    (double,) = torch.autograd.grad(grad, leaf, dg)
    (grad_ref,) = torch.autograd.grad(F.gelu(leaf), leaf, g, create_graph=True)
    (double_ref,) = torch.autograd.grad(grad_ref, leaf, dg)
    assert_equal_to_1e12(grad, grad_ref)
    assert_equal_to_1e12(double, double_ref)


def test_non_contiguous_inputs_and_missing_tangents():
    generator = torch.Generator().manual_seed(2)
    x, dx, g, dg = (torch.randn(6, 4, generator=generator, dtype=DOUBLE).T for _ in range(4))
    for actual, expected in zip(forward_over_reverse(gelu, x, dx, g, dg), forward_over_reverse(F.gelu, x, dx, g, dg)):
        assert_equal_to_1e12(actual, expected)
    # a gradient without a tangent, and a tangent on an input that needs no gradient
    leaf = x.clone().requires_grad_()
    with forward_ad.dual_level():
        (grad,) = torch.autograd.grad(gelu(forward_ad.make_dual(leaf, dx)), leaf, g)
        (grad_ref,) = torch.autograd.grad(F.gelu(forward_ad.make_dual(leaf, dx)), leaf, g)
        assert_equal_to_1e12(forward_ad.unpack_dual(grad).tangent, forward_ad.unpack_dual(grad_ref).tangent)
        tangent = forward_ad.unpack_dual(gelu(forward_ad.make_dual(x, dx))).tangent
        assert_equal_to_1e12(tangent, forward_ad.unpack_dual(F.gelu(forward_ad.make_dual(x, dx))).tangent)


def test_reverse_over_forward_through_the_cached_derivative():
    generator = torch.Generator().manual_seed(3)
    x, dx, g, dg = (torch.randn(4, 3, generator=generator, dtype=DOUBLE) for _ in range(4))
    second, third = [], []
    for act in (gelu, F.gelu):
        leaf = x.clone().requires_grad_()
        with forward_ad.dual_level():
            tangent = forward_ad.unpack_dual(act(forward_ad.make_dual(leaf, dx))).tangent
            second.append(torch.autograd.grad(tangent.sin().sum(), leaf)[0])
            # reverse over forward over reverse: the tangent of the gradient, differentiated in x
            (grad,) = torch.autograd.grad(act(forward_ad.make_dual(leaf, dx)), leaf,
                                          forward_ad.make_dual(g, dg), create_graph=True)
            third.append(torch.autograd.grad(forward_ad.unpack_dual(grad).tangent.sin().sum(), leaf)[0])
    assert_equal_to_1e12(*second)
    assert_equal_to_1e12(*third)


def test_the_function_runs_only_under_a_forward_mode_tangent(monkeypatch):
    calls = []
    monkeypatch.setattr(Gelu, "forward", staticmethod(lambda x: calls.append(x) or F.gelu(x)))
    x = torch.randn(3, dtype=DOUBLE, requires_grad=True)
    gelu(x).sum().backward()
    with torch.no_grad():
        gelu(x)
    assert not calls
    with forward_ad.dual_level():
        gelu(forward_ad.make_dual(x, torch.ones_like(x)))
    assert len(calls) == 1


def test_the_fno_looks_activations_up_here():
    assert _ACTIVATIONS is ACTIVATIONS
    assert sorted(ACTIVATIONS) == ["gelu", "relu", "silu", "tanh"]
    x = torch.randn(5, dtype=DOUBLE)
    assert_equal_to_1e12(ACTIVATIONS["gelu"](x), F.gelu(x))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_hessian_vector_products_through_an_fno_with_every_activation(activation):
    """Forward-over-reverse needs a forward-mode rule for each activation's backward: PyTorch has
    none for silu's, so the FNO's silu is written out under a tangent (before, hvp failed for silu)."""
    from torch.func import functional_call

    from probneural import hessian
    from probneural.operators import FNO

    torch.manual_seed(0)
    model = FNO(1, 1, (3,), width=3, n_layers=2, projection_channels=5, activation=activation).double()
    x, y = torch.randn(2, 1, 8, dtype=DOUBLE), torch.randn(2, 1, 8, dtype=DOUBLE)
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    v = tuple(torch.randn_like(p) for p in params)

    def f(point):
        return (functional_call(model, dict(zip(names, point)), (x,)) - y).square().sum()

    leaves = tuple(p.clone().requires_grad_() for p in params)
    grads = torch.autograd.grad(f(leaves), leaves, create_graph=True)
    expected = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, v)), leaves)
    for actual, wanted in zip(hessian.hvp(f, params, v), expected):
        assert_equal_to_1e12(actual, wanted)
    with forward_ad.dual_level():
        z = torch.randn(4, 5, dtype=DOUBLE)
        assert_equal_to_1e12(forward_ad.unpack_dual(ACTIVATIONS[activation](forward_ad.make_dual(z, z))).primal,
                             ACTIVATIONS[activation](z))
