"""The closed-form last-layer GGN against the dense Hessian of the loss (torch.func.hessian), float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from probneural import hessian
from probneural.hessian.ggn import loss_hessian_sqrt
from probneural.hessian.kfac import kfac_operator
from probneural.hessian.last_layer import last_layer_ggn
from probneural.operators import FNO

DOUBLE = {"dtype": torch.float64}


def small_fno(**kwargs):
    torch.manual_seed(0)
    return FNO(1, 2, (2, 2), width=3, n_layers=1, projection_channels=4, **kwargs).double()


def read_out_hessian(model, x, y, names, variance):
    """Dense Hessian of Σ (f − y)² / (2 σ_c²) with respect to the read-out's (weight, bias)."""
    def f(params):
        pred = functional_call(model, dict(zip(names, params)), (x,))
        shape = (1, -1) + (1,) * (pred.dim() - 2)
        return ((pred - y).square() / (2 * variance.view(shape))).sum()

    state = dict(model.named_parameters())
    return hessian.dense(f, tuple(state[name].detach() for name in names))


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("loss, noise", [("mse", 1.0), ("gaussian_nll", [0.5, 2.0])])
def test_matches_the_dense_hessian_of_the_loss_on_a_small_fno(loss, noise):
    model = small_fno()
    x, y = torch.randn(3, 1, 5, 4, **DOUBLE), torch.randn(3, 2, 5, 4, **DOUBLE)
    operator = last_layer_ggn(model, x, loss=loss, noise_variance=noise)
    assert operator.names == ("projection_out.weight", "projection_out.bias")
    variance = torch.as_tensor(noise if loss == "gaussian_nll" else [1.0, 1.0], **DOUBLE)
    expected = read_out_hessian(model, x, y, operator.names, variance)
    assert relative_error(operator.to_dense(), expected) < 1e-8
    torch.testing.assert_close(operator.diagonal(), torch.diagonal(expected), rtol=1e-8, atol=1e-12)
    # the closed form from the features the FNO exposes: φ = act(projection_hidden(features(x)))
    with torch.no_grad():
        phi = model.act(model.projection_hidden(model.features(x))).movedim(1, -1).reshape(-1, 4)
    phi = torch.cat((phi, torch.ones(len(phi), 1, **DOUBLE)), dim=1)
    torch.testing.assert_close(operator.blocks[0].input_factor, phi.T @ phi)
    torch.testing.assert_close(operator.blocks[0].output_factor, torch.diag(1 / variance))


def test_equals_the_k_fac_block_of_the_read_out_and_follows_batches_and_chunks():
    x = torch.randn(3, 1, 5, 4, **DOUBLE)
    options = {"loss": "gaussian_nll", "noise_variance": [0.5, 2.0]}
    operator = last_layer_ggn(small_fno(), x, **options)
    kfac = kfac_operator(small_fno(), x, **options)
    torch.testing.assert_close(operator.to_dense(), kfac.to_dense()[-operator.size:, -operator.size:],
                               rtol=1e-10, atol=1e-10)
    chunked = last_layer_ggn(small_fno(cpu_chunk_bytes=1), [x[:1], x[1:]], **options)
    torch.testing.assert_close(chunked.to_dense(), operator.to_dense(), rtol=1e-12, atol=1e-12)


def test_linear_read_out_of_an_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(7, 3, **DOUBLE), torch.randn(7, 2, **DOUBLE)
    operator = last_layer_ggn(model, x, loss="gaussian_nll", noise_variance=[0.25, 3.0])
    assert operator.names == ("2.weight", "2.bias")
    expected = read_out_hessian(model, x, y, operator.names, torch.tensor([0.25, 3.0], **DOUBLE))
    assert relative_error(operator.to_dense(), expected) < 1e-8
    v = torch.randn(operator.size, **DOUBLE)
    damped = expected + 0.1 * torch.eye(operator.size, **DOUBLE)
    torch.testing.assert_close(operator.solve(v, 0.1), torch.linalg.solve(damped, v))
    torch.testing.assert_close(operator.logdet(0.1), torch.logdet(damped))


def test_bad_arguments():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="not the output of '0'"):
        last_layer_ggn(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), x)
    with pytest.raises(ValueError, match="layer: expected the name of an nn.Linear or Pointwise module"):
        last_layer_ggn(nn.Sequential(nn.Linear(3, 2)), x, layer="head")
    with pytest.raises(ValueError, match="model: expected an nn.Linear or Pointwise read-out"):
        last_layer_ggn(nn.Sequential(nn.Tanh()), x)
    with pytest.raises(ValueError, match="noise_variance: Λ must be the same at every location"):
        last_layer_ggn(nn.Linear(3, 2), torch.randn(4, 2, 3), loss="gaussian_nll", noise_variance=[1.0, 2.0])
    with pytest.raises(ValueError, match="inputs: expected at least one input batch"):
        last_layer_ggn(nn.Linear(3, 2), [])


def test_loss_hessian_square_root_refuses_a_non_finite_noise_variance():
    output = torch.zeros(2, 1, 4)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="noise_variance: expected finite positive"):
            loss_hessian_sqrt("gaussian_nll", output, bad)
