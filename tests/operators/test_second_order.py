"""The whole-layer Functions of forward-over-reverse products (probneural.operators.second_order).

Their rules are checked where they are used, in :func:`probneural.hessian.hvp`, against
``torch.func.jvp(torch.func.grad(f))`` (which runs the layer-by-layer operations: inside a
``torch.func`` transform the whole-layer Functions are never used) to 1e-12 in float64; a spy
asserts that the Functions did run. Their reverse-mode derivatives pass ``gradcheck`` and
``gradgradcheck``.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from probneural import hessian
from probneural.operators import FNO, Pointwise, SpectralConv
from probneural.operators import fno as fno_module
from probneural.operators import second_order
from probneural.operators.second_order import FourierLayerProduct, ProjectionProduct

DTYPE = torch.float64


@pytest.fixture
def calls(monkeypatch):
    """Counts of the FNO's calls of the two whole-layer products."""
    counts = {"layer": 0, "projection": 0}

    def spy(name, function):
        def counted(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return counted

    monkeypatch.setattr(fno_module, "fourier_layer_product", spy("layer", second_order.fourier_layer_product))
    monkeypatch.setattr(fno_module, "projection_product", spy("projection", second_order.projection_product))
    return counts


def reference_hvp(f, params, v):
    return torch.func.jvp(torch.func.grad(f), (params,), (v,))[1]


def assert_hvp_matches(f, params, seed=0):
    torch.manual_seed(seed)
    v = tuple(torch.randn_like(p) for p in params)
    for actual, expected in zip(hessian.hvp(f, params, v), reference_hvp(f, params, v)):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def layer_loss(model, i, h, target, names):
    """The mean squared error of Fourier layer ``i``'s output as a function of ``(h, *layer weights)``."""
    def f(params):
        field, *weights = params
        out = functional_call(model, dict(zip(names, weights)), (i, field), strict=False)
        return (out - target).square().mean() + out.mean() ** 3
    return f


class MethodCall(torch.nn.Module):
    """``getattr(model, method)(*args)`` as a module call, for ``functional_call``."""

    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


@pytest.mark.parametrize("modes,grid", [((3,), (10,)), ((3, 2), (8, 7)), ((2, 2, 2), (5, 4, 6))], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("activate", [True, False], ids=["gelu", "last"])
def test_fourier_layer_product_gives_the_hessian_vector_product(calls, modes, grid, activate):
    torch.manual_seed(0)
    model = FNO(1, 1, modes, width=3, n_layers=2 if activate else 1, projection_channels=4).to(DTYPE)
    call = MethodCall(model, "fourier_layer")
    names = ["model.spectral.0.weight", "model.skips.0.weight", "model.skips.0.bias"]
    weights = [call.get_parameter(name).detach() for name in names]
    h = torch.randn(2, 3, *grid, dtype=DTYPE)
    target = torch.randn(2, 3, *grid, dtype=DTYPE)
    assert_hvp_matches(layer_loss(call, 0, h, target, names), (h, *weights))
    assert calls["layer"] == 1
    # only the spectral weight (the field without a tangent), only the skip path's
    for chosen in ([0], [1, 2]):
        picked = [names[k] for k in chosen]

        def f(params, picked=picked):
            out = functional_call(call, dict(zip(picked, params)), (0, h), strict=False)
            return (out - target).square().mean()

        assert_hvp_matches(f, tuple(weights[k] for k in chosen))
    assert calls["layer"] == 3


def test_fourier_layer_product_without_a_skip_bias(calls):
    torch.manual_seed(1)
    model = FNO(1, 1, (3, 3), width=3, n_layers=2, projection_channels=4).to(DTYPE)
    model.skips[0] = Pointwise(3, 3, bias=False).to(DTYPE)
    call = MethodCall(model, "fourier_layer")
    names = ["model.spectral.0.weight", "model.skips.0.weight"]
    h, target = torch.randn(2, 3, 8, 6, dtype=DTYPE), torch.randn(2, 3, 8, 6, dtype=DTYPE)
    assert_hvp_matches(layer_loss(call, 0, h, target, names), (h, *[call.get_parameter(n).detach() for n in names]))
    assert calls["layer"] == 1


@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_projection_product_gives_the_hessian_vector_product(calls, outputs, bias):
    torch.manual_seed(2)
    model = FNO(1, outputs, (2, 2), width=3, n_layers=1, projection_channels=5).to(DTYPE)
    model.projection_hidden = Pointwise(3, 5, bias=bias).to(DTYPE)
    model.projection_out = Pointwise(5, outputs, bias=bias).to(DTYPE)
    call = MethodCall(model, "project")
    names = [f"model.{name}" for name, _ in model.named_parameters() if name.startswith("projection")]
    weights = [call.get_parameter(name).detach() for name in names]
    h = torch.randn(2, 3, 6, 5, dtype=DTYPE)
    target = torch.randn(2, outputs, 6, 5, dtype=DTYPE)

    def f(params):
        features, *rest = params
        out = functional_call(call, dict(zip(names, rest)), (features,), strict=False)
        return (out - target).square().mean() + (out ** 3).mean()

    assert_hvp_matches(f, (h, *weights))
    assert calls["projection"] == 1


def _zero_tangents(*tensors):
    return tuple(None if t is None else torch.zeros_like(t) for t in tensors)


@pytest.mark.parametrize("activate", [True, False], ids=["gelu", "last"])
def test_fourier_layer_product_passes_gradcheck_and_gradgradcheck(activate):
    torch.manual_seed(3)
    conv = SpectralConv(2, 3, (2, 2)).to(DTYPE)
    h = torch.randn(2, 2, 5, 4, dtype=DTYPE, requires_grad=True)
    weights = (conv.weight.detach().clone().requires_grad_(), torch.randn(3, 2, dtype=DTYPE, requires_grad=True),
               torch.randn(3, dtype=DTYPE, requires_grad=True))

    def layer(h, *weights):
        return FourierLayerProduct.apply(h, *weights, _zero_tangents(h, *weights), conv, activate)

    assert gradcheck(layer, (h, *weights))
    assert gradgradcheck(layer, (h, *weights))


@pytest.mark.parametrize("outputs", [1, 2])
def test_projection_product_passes_gradcheck_and_gradgradcheck(outputs):
    torch.manual_seed(4)
    inputs = tuple(torch.randn(*shape, dtype=DTYPE, requires_grad=True)
                   for shape in ((2, 3, 7), (4, 3), (4,), (outputs, 4), (outputs,)))

    def projection(*inputs):
        return ProjectionProduct.apply(*inputs, _zero_tangents(*inputs))

    assert gradcheck(projection, inputs)
    assert gradgradcheck(projection, inputs)


@pytest.mark.parametrize("kwargs", [dict(padding=0.25), dict(dropout=0.3), dict(dropout=0.3, dropout_layers="projection")],
                         ids=["padding", "dropout", "projection-dropout"])
@pytest.mark.parametrize("modes,grid", [((3,), (11,)), ((2, 2, 2), (5, 4, 6))], ids=["1d", "3d"])
def test_hvp_through_the_fno_runs_the_whole_layer_products(calls, modes, grid, kwargs):
    torch.manual_seed(5)
    model = FNO(1, 2, modes, width=3, n_layers=2, projection_channels=4, **kwargs).to(DTYPE)
    x = torch.randn(2, 1, *grid, dtype=DTYPE)
    y = torch.randn(2, 2, *grid, dtype=DTYPE)
    names = [name for name, _ in model.named_parameters()]

    def f(params):
        torch.manual_seed(7)  # the same dropout draws in both products
        return (functional_call(model, dict(zip(names, params)), (x,)) - y).square().mean()

    assert_hvp_matches(f, tuple(p.detach() for p in model.parameters()))
    assert calls["layer"] == 2
    assert calls["projection"] == (0 if kwargs.get("dropout") else 1)  # not with the projection's dropout on


def test_the_products_are_not_used_outside_a_hessian_vector_product(calls):
    torch.manual_seed(6)
    model = FNO(1, 1, (2, 2), width=3, n_layers=2, projection_channels=4).to(DTYPE)
    x = torch.randn(2, 1, 6, 5, dtype=DTYPE)
    params = tuple(p.detach() for p in model.parameters())
    names = [name for name, _ in model.named_parameters()]

    def f(params):
        return functional_call(model, dict(zip(names, params)), (x,)).square().mean()

    torch.autograd.grad(f(tuple(model.parameters())), tuple(model.parameters()))  # training
    reference_hvp(f, params, params)  # torch.func
    with torch.autograd.forward_ad.dual_level():  # forward mode alone
        duals = tuple(torch.autograd.forward_ad.make_dual(p, p) for p in params)
        f(duals)
    assert calls == {"layer": 0, "projection": 0}


def test_other_activations_fuse_only_the_last_layer(calls):
    torch.manual_seed(7)
    model = FNO(1, 1, (2, 2), width=3, n_layers=2, projection_channels=4, activation="tanh").to(DTYPE)
    x, y = torch.randn(2, 1, 6, 5, dtype=DTYPE), torch.randn(2, 1, 6, 5, dtype=DTYPE)
    names = [name for name, _ in model.named_parameters()]

    def f(params):
        return (functional_call(model, dict(zip(names, params)), (x,)) - y).square().mean()

    assert_hvp_matches(f, tuple(p.detach() for p in model.parameters()))
    assert calls == {"layer": 1, "projection": 0}  # the last Fourier layer has no activation


def test_an_input_modified_in_place_is_an_error_not_a_wrong_product():
    torch.manual_seed(8)
    model = FNO(1, 1, (2, 2), width=3, n_layers=2, projection_channels=4).to(DTYPE)
    call = MethodCall(model, "fourier_layer")
    names = ["model.spectral.0.weight", "model.skips.0.weight", "model.skips.0.bias"]
    h = torch.randn(2, 3, 6, 5, dtype=DTYPE)

    def f(params):
        field = params[0] * 1.0
        out = functional_call(call, dict(zip(names, params[1:])), (0, field), strict=False)
        field.mul_(3.0)  # after the layer has used it
        return out.square().mean()

    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        hessian.hvp(f, (h, *[call.get_parameter(n).detach() for n in names]),
                    (h, *[torch.ones_like(call.get_parameter(n)) for n in names]))
