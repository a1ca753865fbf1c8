"""hvp and dense against torch.func.hessian on an MLP, a small FNO and complex parameters (float64)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from probneural import hessian
from probneural.operators import FNO


def loss_of(model, x, y):
    names = [name for name, _ in model.named_parameters()]

    def f(params):
        pred = functional_call(model, dict(zip(names, params)), (x,))
        return 0.5 * (pred - y).pow(2).sum() + 0.1 * pred.tanh().sum()

    return f, tuple(p.detach() for p in model.parameters())


def reference_hessian(f, params):
    sizes = [p.numel() for p in params]

    def flat_f(vector):
        return f(tuple(piece.view(p.shape) for piece, p in zip(vector.split(sizes), params)))

    return torch.func.hessian(flat_f)(torch.cat([p.reshape(-1) for p in params]))


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
