"""hvp and dense against torch.func.hessian on an MLP, a small FNO and complex parameters (float64).

hvp runs eager forward-mode AD over one backward pass, through the custom Functions of the
operators (GELU, pointwise layers, spectral contraction); torch.func.jvp(torch.func.grad(.))
through plain operations is the reference it must equal to 1e-12 (and what hvp falls back to
inside a torch.func transform or a dual level).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import functional_call

from probneural import hessian
from probneural.operators import FNO


def loss_of(model, x, y):
    names = [name for name, _ in model.named_parameters()]

    def f(params):
        pred = functional_call(model, dict(zip(names, params)), (x,))
        return 0.5 * (pred - y).pow(2).sum() + 0.1 * pred.tanh().sum()

    return f, tuple(p.detach() for p in model.parameters())


def _flat(f, params):
    sizes = [p.numel() for p in params]

    def flat_f(vector):
        return f(tuple(piece.view(p.shape) for piece, p in zip(vector.split(sizes), params)))

    return flat_f, torch.cat([p.reshape(-1) for p in params])


def reference_hessian(f, params):
    flat_f, point = _flat(f, params)
    return torch.func.hessian(flat_f)(point)


def double_backward_hessian(f, params):
    """The Jacobian of the autograd gradient (reverse over reverse): independent of ``torch.func``."""
    flat_f, point = _flat(f, params)

    def gradient(vector):
        return torch.autograd.grad(flat_f(vector), vector, create_graph=True)[0]

    return torch.autograd.functional.jacobian(gradient, point)


def models():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    fno = FNO(1, 1, (2, 2), width=3, n_layers=1, projection_channels=4).double()
    return [(mlp, torch.randn(4, 3, dtype=torch.double), torch.randn(4, 2, dtype=torch.double)),
            (fno, torch.randn(2, 1, 5, 4, dtype=torch.double), torch.randn(2, 1, 5, 4, dtype=torch.double))]


@pytest.mark.parametrize("case", range(2), ids=["mlp", "fno"])
def test_dense_and_hvp_match_torch_func_hessian(case):
    model, x, y = models()[case]
    f, params = loss_of(model, x, y)
    expected = reference_hessian(f, params)
    H = hessian.dense(f, params)
    torch.testing.assert_close(H, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(H, double_backward_hessian(f, params), rtol=1e-8, atol=1e-10)
    torch.manual_seed(1)
    v = tuple(torch.randn_like(p) for p in params)
    hv = torch.cat([t.reshape(-1) for t in hessian.hvp(f, params, v)])
    torch.testing.assert_close(hv, expected @ torch.cat([t.reshape(-1) for t in v]), rtol=1e-8, atol=1e-10)


def test_complex_parameters_are_differentiated_through_their_real_view():
    torch.manual_seed(2)
    a = torch.randn(3, dtype=torch.complex128)
    b = torch.randn(2, dtype=torch.double)
    target = torch.randn(3, dtype=torch.complex128)

    def f(params):
        z, r = params
        return ((z * r.sum() - target).abs() ** 2).sum() + (z.real * z.imag).sum() ** 2

    def f_real(vector):
        z = torch.view_as_complex(vector[:6].view(3, 2))
        return f((z, vector[6:]))

    point = torch.cat((torch.view_as_real(a).reshape(-1), b))
    expected = torch.func.hessian(f_real)(point)
    H = hessian.dense(f, (a, b))
    assert H.shape == (8, 8)  # each complex entry counts twice
    torch.testing.assert_close(H, expected, rtol=1e-10, atol=1e-12)
    v = (torch.randn(3, dtype=torch.complex128), torch.randn(2, dtype=torch.double))
    hv_z, hv_r = hessian.hvp(f, (a, b), v)
    assert hv_z.is_complex() and hv_z.shape == a.shape
    flat_v = torch.cat((torch.view_as_real(v[0]).reshape(-1), v[1]))
    torch.testing.assert_close(torch.cat((torch.view_as_real(hv_z).reshape(-1), hv_r)), expected @ flat_v)


def test_single_tensor_structure_is_kept():
    x = torch.randn(4, dtype=torch.double)
    A = torch.randn(4, 4, dtype=torch.double)
    A = A + A.T

    def f(p):
        return 0.5 * p @ A @ p

    torch.testing.assert_close(hessian.dense(f, x), A)
    v = torch.randn(4, dtype=torch.double)
    out = hessian.hvp(f, x, v)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, A @ v)


def test_mismatched_direction_is_rejected():
    with pytest.raises(ValueError, match="v: expected the structure"):
        hessian.hvp(lambda p: p.sum(), torch.zeros(3), torch.zeros(4))


def fno_loss(dim_modes=(3, 3), grid=(8, 7), dtype=torch.double, **kwargs):
    torch.manual_seed(3)
    model = FNO(1, 2, dim_modes, width=4, n_layers=2, projection_channels=6, **kwargs).to(dtype)
    x = torch.randn(3, 1, *grid, dtype=dtype)
    y = torch.randn(3, 2, *grid, dtype=dtype)
    names = [name for name, _ in model.named_parameters()]

    def f(params):  # written out: F.mse_loss fails under torch.func forward-over-reverse (pytorch#123996)
        return (functional_call(model, dict(zip(names, params)), (x,)) - y).square().mean()

    return f, tuple(p.detach() for p in model.parameters())


def reference_hvp(f, params, v):
    """torch.func.jvp of torch.func.grad: plain operations for GELU and the pointwise layers."""
    return torch.func.jvp(torch.func.grad(f), (params,), (v,))[1]


@pytest.mark.parametrize("chunked", [False, True])
def test_hvp_through_the_fno_equals_plain_operations_to_1e12(chunked):
    f, params = fno_loss(cpu_chunk_bytes=1 if chunked else None)
    torch.manual_seed(4)
    v = tuple(torch.randn_like(p) for p in params)
    actual, expected = hessian.hvp(f, params, v), reference_hvp(f, params, v)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    for p in params:  # the point of evaluation is left alone
        assert not p.requires_grad


def test_hvp_inside_a_transform_falls_back_to_torch_func():
    f, params = fno_loss()
    vs = torch.stack([torch.cat([torch.randn_like(p).reshape(-1) for p in params]) for _ in range(2)])

    def product(flat):
        pieces = flat.split([p.numel() for p in params])
        return torch.cat([t.reshape(-1) for t in hessian.hvp(f, params, tuple(
            q.view(p.shape) for q, p in zip(pieces, params)))])

    batched = torch.func.vmap(product)(vs)
    for row, flat in zip(batched, vs):
        torch.testing.assert_close(row, product(flat), rtol=1e-12, atol=1e-12)
    with forward_ad.dual_level(), pytest.raises(RuntimeError, match="Nested forward mode AD"):
        product(vs[0])  # as torch.func.jvp: PyTorch has a single forward-AD level


def test_hvp_of_unused_and_linear_parameters_is_zero():
    a, b, c = (torch.randn(3, dtype=torch.double) for _ in range(3))
    out = hessian.hvp(lambda p: (p[0] ** 3).sum() + p[1].sum(), (a, b, c), (torch.ones(3, dtype=torch.double),) * 3)
    torch.testing.assert_close(out[0], 6 * a)
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out[2]) == 0


def test_non_scalar_function_is_rejected():
    with pytest.raises(ValueError, match="f: expected a 0-d tensor"):
        hessian.hvp(lambda p: p * 2, torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"f: expected a 0-d tensor .* of shape \(3,\)"):
        hessian.dense(lambda p: p**2, torch.zeros(3))
    with pytest.raises(ValueError, match="f: expected a 0-d tensor"):  # inside a torch.func transform too
        torch.func.vmap(lambda v: hessian.hvp(lambda p: p * 2, torch.zeros(3), v))(torch.zeros(2, 3))
