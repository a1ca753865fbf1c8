"""The spectral layer's custom autograd Functions against plain-ops references (float64).

* the contraction: outputs, gradients and tangents equal the previous plain-ops implementation;
  gradcheck / gradgradcheck (also forward mode and batched) for 1-, 2- and 3-D weights;
* the contraction's backward under forward-mode AD (ContractGrad): gradcheck / gradgradcheck,
  equal to the plain-ops backward, tangent-only weight gradients;
* the constant product: gradcheck / gradgradcheck, forward mode, torch.func;
* the helpers: apply (Function.apply without signature binding), has_tangent;
* Hessians through small FNOs (Functions under ``torch.func``) against ``torch.func.hessian``
  of the same FNOs with a textbook FFT spectral layer.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad, gradcheck, gradgradcheck
from torch.func import functional_call

from spectral_reference import fft_spectral_forward

from probneural import hessian
from probneural.operators import FNO, SpectralConv, spectral_contract
from probneural.operators.spectral_autograd import (
    FULL,
    SKIP,
    ConstantMatmul,
    ContractGrad,
    SpectralContract,
    _adjoint_rows,
    apply,
    constant_matmul,
    has_tangent,
    tangent_only_gradients,
)

DOUBLE = torch.float64
SHAPES = {1: (), 2: (4,), 3: (4, 2)}  # kept non-last-axis frequencies k of a 1-, 2- and 3-D weight


def plain_contract(x_ft: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The previous implementation of ``spectral_contract``: plain torch ops, autograd's derivatives."""
    b, i = x_ft.shape[:2]
    k = x_ft.shape[2:-1]
    p, o = weight.shape[-4], weight.shape[-2]
    n_freq = weight.shape[:-3].numel()
    x = x_ft.reshape(b, i, -1, 2, p).permute(2, 4, 3, 0, 1).reshape(n_freq, 2 * b, i)
    products = torch.bmm(x, weight.reshape(n_freq, i, 2 * o)).view(n_freq, 2, b, o, 2)
    real = products[:, 0, ..., 0] - products[:, 1, ..., 1]
    imag = products[:, 0, ..., 1] + products[:, 1, ..., 0]
    y = torch.stack((real, imag), dim=1).view(-1, p, 2, b, o)
    return y.permute(3, 4, 0, 2, 1).reshape(b, o, *k, 2 * p)


def operands(dim: int, seed: int = 0, b: int = 2, i: int = 3, o: int = 2, p: int = 3):
    """Random ``x_ft`` `(b, i, *k, 2p)` and ``weight`` `(*k, p, i, o, 2)` for a ``dim``-D layer."""
    generator = torch.Generator().manual_seed(seed)
    k = SHAPES[dim]
    x = torch.randn(b, i, *k, 2 * p, generator=generator, dtype=DOUBLE)
    weight = torch.randn(*k, p, i, o, 2, generator=generator, dtype=DOUBLE)
    return x, weight


def assert_equal_to_1e12(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_outputs_and_gradients_equal_the_plain_ops_implementation(dim):
    x, weight = (t.requires_grad_() for t in operands(dim))
    y = spectral_contract(x, weight)
    expected = plain_contract(x, weight)
    assert_equal_to_1e12(y, expected)
    grad_y = torch.randn_like(y)
    for actual, wanted in zip(torch.autograd.grad(y, (x, weight), grad_y),
                              torch.autograd.grad(expected, (x, weight), grad_y)):
        assert_equal_to_1e12(actual, wanted)
    with torch.no_grad():  # the path without the Function
        assert_equal_to_1e12(spectral_contract(x, weight), expected)
    with torch.inference_mode():
        assert_equal_to_1e12(spectral_contract(x.detach(), weight.detach()), expected.detach())


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_gradcheck_and_gradgradcheck(dim):
    x, weight = (t.requires_grad_() for t in operands(dim, seed=1))
    assert gradcheck(spectral_contract, (x, weight), check_forward_ad=True, check_batched_grad=True,
                     check_batched_forward_grad=True)
    assert gradgradcheck(spectral_contract, (x, weight), check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("tangents", ["both", "x", "weight"])
def test_forward_mode_equals_the_plain_ops_implementation(dim, tangents):
    x, weight = operands(dim, seed=2)
    dx, dw = (torch.randn_like(t) for t in (x, weight))
    if tangents == "x":
        args, directions = (x,), (dx,)
        call = lambda f: lambda a: f(a, weight)  # noqa: E731
    elif tangents == "weight":
        args, directions = (weight,), (dw,)
        call = lambda f: lambda w: f(x, w)  # noqa: E731
    else:
        args, directions = (x, weight), (dx, dw)
        call = lambda f: f  # noqa: E731
    _, expected = torch.func.jvp(call(plain_contract), args, directions)
    _, actual = torch.func.jvp(call(spectral_contract), args, directions)
    assert_equal_to_1e12(actual, expected)
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(a, d) for a, d in zip(args, directions)]
        dual_out = call(spectral_contract)(*duals)
        assert_equal_to_1e12(forward_ad.unpack_dual(dual_out).tangent, expected)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_torch_func_transforms_equal_the_plain_ops_implementation(dim):
    x, weight = operands(dim, seed=3)
    batch = torch.randn(4, *x.shape, dtype=DOUBLE)
    assert_equal_to_1e12(torch.func.vmap(spectral_contract, (0, None))(batch, weight),
                         torch.func.vmap(plain_contract, (0, None))(batch, weight))
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        for actual, expected in zip(transform(spectral_contract, argnums=(0, 1))(x, weight),
                                    transform(plain_contract, argnums=(0, 1))(x, weight)):
            assert_equal_to_1e12(actual, expected)

    def loss(f):
        return lambda a, w: f(a, w).tanh().square().sum()

    for actual, expected in zip(torch.func.hessian(loss(spectral_contract), argnums=1)(x, weight),
                                torch.func.hessian(loss(plain_contract), argnums=1)(x, weight)):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_backward_builds_no_graph_unless_asked_and_supports_create_graph():
    x, weight = (t.requires_grad_() for t in operands(2, seed=4))
    y = spectral_contract(x, weight)
    grad_x, grad_w = torch.autograd.grad(y.square().sum(), (x, weight))
    assert grad_x.grad_fn is None and grad_w.grad_fn is None
    grad_x, grad_w = torch.autograd.grad(spectral_contract(x, weight).square().sum(), (x, weight), create_graph=True)
    assert grad_x.requires_grad and grad_w.requires_grad


@pytest.mark.parametrize(
    "x_shape, w_shape",
    [
        ((2, 3, 4, 6), (4, 3, 3, 2)),  # weight lacks the trailing (real, imag) axis
        ((2, 3, 4, 6), (5, 3, 3, 2, 2)),  # kept frequencies differ
        ((2, 3, 4, 6), (4, 2, 3, 2, 2)),  # p differs from half the pair axis
        ((2, 3, 4, 6), (4, 3, 4, 2, 2)),  # input channels differ
    ],
)
def test_mismatched_shapes_raise_value_error(x_shape, w_shape):
    with pytest.raises(ValueError, match=r"x_ft, weight: expected shapes \(b, i, \*k, 2p\) and \(\*k, p, i, o, 2\)"):
        spectral_contract(torch.zeros(x_shape), torch.zeros(w_shape))


def test_constant_matmul_gradchecks_and_skips_the_matrix():
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(2, 3, 4, generator=generator, dtype=DOUBLE, requires_grad=True)
    matrix = torch.randn(4, 5, generator=generator, dtype=DOUBLE)

    def product(a):
        return ConstantMatmul.apply(a, matrix)

    assert gradcheck(product, (z,), check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradgradcheck(product, (z,), check_fwd_over_rev=True, check_batched_grad=True)
    assert_equal_to_1e12(constant_matmul(z, matrix), z @ matrix)
    v = torch.randn_like(z)

    def f(mm):
        return lambda a: mm(a, matrix).sin().sum()

    _, expected = torch.func.jvp(torch.func.grad(f(torch.matmul)), (z.detach(),), (v,))
    _, actual = torch.func.jvp(torch.func.grad(f(constant_matmul)), (z.detach(),), (v,))
    assert_equal_to_1e12(actual, expected)


FNOS = {  # modes, grid: small FNOs in 1, 2 and 3 spatial dimensions
    1: ((3,), (7,)),
    2: ((2, 2), (5, 4)),
    3: ((1, 1, 2), (3, 2, 4)),
}


def small_fno(dim: int):
    modes, grid = FNOS[dim]
    torch.manual_seed(6)
    model = FNO(1, 1, modes, width=3, n_layers=2, projection_channels=4).double()
    x = torch.randn(2, 1, *grid, dtype=DOUBLE)
    y = torch.randn(2, 1, *grid, dtype=DOUBLE)
    names = [name for name, _ in model.named_parameters()]

    def f(params):
        pred = functional_call(model, dict(zip(names, params)), (x,))
        return 0.5 * (pred - y).square().mean() + 0.1 * pred.tanh().sum()

    return f, tuple(p.detach() for p in model.parameters())


def flat_hessian(f, params):
    sizes = [p.numel() for p in params]

    def flat_f(vector):
        return f(tuple(piece.view(p.shape) for piece, p in zip(vector.split(sizes), params)))

    return torch.func.hessian(flat_f)(torch.cat([p.reshape(-1) for p in params]))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def test_fft_reference_layer_equals_spectral_conv():
    torch.manual_seed(7)
    for dim, (modes, grid) in FNOS.items():
        layer = SpectralConv(2, 3, modes).double()
        x = torch.randn(2, 2, *grid, dtype=DOUBLE)
        torch.testing.assert_close(layer(x), fft_spectral_forward(layer, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_hvp_and_dense_through_fno_match_torch_func_hessian_of_fft_reference(dim, monkeypatch):
    f, params = small_fno(dim)
    with monkeypatch.context() as patch:
        patch.setattr(SpectralConv, "forward", fft_spectral_forward)
        expected = flat_hessian(f, params)
    assert relative_error(hessian.dense(f, params), expected) < 1e-8
    v = tuple(torch.randn_like(p) for p in params)
    flat_v = torch.cat([t.reshape(-1) for t in v])
    hv = torch.cat([t.reshape(-1) for t in hessian.hvp(f, params, v)])
    assert relative_error(hv, expected @ flat_v) < 1e-8
    leaves = tuple(p.clone().requires_grad_() for p in params)  # reverse-over-reverse through the Functions
    grads = torch.autograd.grad(f(leaves), leaves, create_graph=True)
    double_backward = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, v)), leaves)
    assert relative_error(torch.cat([t.reshape(-1) for t in double_backward]), expected @ flat_v) < 1e-8


def frequency_major(dim: int, seed: int):
    """Random frequency-major operands of SpectralContract: x `(F, 2, b, i)`, weight, grad `(F, 2, b, o)`."""
    x_ft, weight = operands(dim, seed=seed)
    b, i = x_ft.shape[:2]
    p = weight.shape[-4]
    x = x_ft.reshape(b, i, -1, 2, p).permute(2, 4, 3, 0, 1).reshape(-1, 2, b, i).contiguous()
    grad = torch.randn(x.shape[0], 2, b, weight.shape[-2], dtype=DOUBLE)
    return x.requires_grad_(), weight.requires_grad_(), grad.requires_grad_()


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_contract_grad_gradcheck_and_equals_the_plain_backward(dim):
    x, weight, grad = frequency_major(dim, seed=8)

    def backward(g, a, w):
        return ContractGrad.apply(_adjoint_rows(g), a, w, (FULL, FULL))

    assert gradcheck(backward, (grad, x, weight), check_forward_ad=True, check_batched_grad=True,
                     check_batched_forward_grad=True)
    assert gradgradcheck(backward, (grad, x, weight), check_fwd_over_rev=True, check_batched_grad=True)
    expected = torch.autograd.grad(SpectralContract.apply(x, weight), (x, weight), grad)
    for actual, wanted in zip(backward(grad, x, weight), expected):
        assert_equal_to_1e12(actual, wanted)
    grad_x, grad_w = ContractGrad.apply(_adjoint_rows(grad), x, weight, (SKIP, FULL))
    assert grad_x is None
    assert_equal_to_1e12(grad_w, expected[1])


@pytest.mark.parametrize("declared", [False, True])
def test_forward_over_reverse_through_the_contraction_and_tangent_only_weight_gradients(declared):
    x, weight, grad = frequency_major(2, seed=9)
    dx, dw, dg = (torch.randn_like(t) for t in (x, weight, grad))

    def forward_over_reverse(contract, declare):
        leaves = (x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_())
        with forward_ad.dual_level():
            duals = (forward_ad.make_dual(leaves[0], dx), forward_ad.make_dual(leaves[1], dw))
            y = contract(*duals)
            with tangent_only_gradients(duals[1:] if declare else ()):
                grads = torch.autograd.grad(y, leaves, forward_ad.make_dual(grad.detach(), dg))
            return [forward_ad.unpack_dual(g) for g in grads]

    ours = forward_over_reverse(SpectralContract.apply, declared)
    reference = forward_over_reverse(SpectralContract.forward, False)  # plain ops, autograd's own rules
    for actual, expected in zip(ours, reference):
        assert_equal_to_1e12(actual.tangent, expected.tangent)
    assert_equal_to_1e12(ours[0].primal, reference[0].primal)
    if declared:
        assert torch.count_nonzero(ours[1].primal) == 0
    else:
        assert_equal_to_1e12(ours[1].primal, reference[1].primal)


def test_apply_and_has_tangent():
    z = torch.randn(2, 3, dtype=DOUBLE, requires_grad=True)
    matrix = torch.randn(3, 4, dtype=DOUBLE)
    y = apply(ConstantMatmul, z, matrix)
    assert type(y.grad_fn).__name__ == "ConstantMatmulBackward"
    assert_equal_to_1e12(y, z @ matrix)
    assert not has_tangent(z, None)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(z, torch.ones_like(z))
        assert has_tangent(None, dual) and not has_tangent(z)
        assert_equal_to_1e12(forward_ad.unpack_dual(apply(ConstantMatmul, dual, matrix)).tangent,
                             torch.ones_like(z) @ matrix)
    jacobian = torch.func.jacrev(lambda a: apply(ConstantMatmul, a, matrix))(z)  # under a transform
    assert_equal_to_1e12(jacobian, torch.func.jacrev(lambda a: a @ matrix)(z))
