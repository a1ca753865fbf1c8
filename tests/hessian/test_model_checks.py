"""What the curvature engine refuses or warns about: random or batch-dependent models, inert options, bad arguments."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from probneural import hessian
from probneural.hessian.ggn import loss_hessian_sqrt
from probneural.validation import InertOptionWarning


def mlp(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), middle, nn.Tanh(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("middle", [nn.Dropout(0.5), nn.BatchNorm1d(4)], ids=["dropout", "batch_norm"])
def test_train_mode_dropout_and_batch_norm_are_refused_by_every_model_entry_point(middle):
    model, x = mlp(middle), torch.randn(5, 3, dtype=torch.double)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    calls = {
        "functional_model": lambda: hessian.functional_model(model, x),
        "kfac_operator": lambda: hessian.kfac_operator(model, x),
        "last_layer_ggn": lambda: hessian.last_layer_ggn(model, x),
        "ggn_diagonal_mc": lambda: hessian.ggn_diagonal_mc(model, x),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"model: \['1'\] are random or couple the samples .* call model.eval\(\) first"):
            call()
    for name, buffer in model.named_buffers():  # batch norm's running averages untouched
        assert torch.equal(buffer, buffers[name])
    model.eval()
    model_fn, params = hessian.functional_model(model, x)
    operator = hessian.ggn_operator(model_fn, params)
    dense = operator.to_dense()
    torch.testing.assert_close(dense, dense.T)  # one function: a symmetric G
    torch.testing.assert_close(operator.diagonal(), dense.diagonal())


@pytest.mark.parametrize("middle, mode", [
    (nn.BatchNorm1d(4, track_running_stats=False), "eval"),  # batch statistics in eval mode too
    (nn.InstanceNorm1d(4, track_running_stats=True), "train"),  # its running averages change per call
    (nn.RReLU(), "train"),  # a random slope per call
])
def test_other_random_or_coupled_layers_are_refused(middle, mode):
    model = nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (4, 1)), middle, nn.Flatten(), nn.Linear(4, 2)).double()
    model.train(mode == "train")
    with pytest.raises(ValueError, match=r"model: \['2'\] are random or couple the samples"):
        hessian.functional_model(model, torch.randn(5, 3, dtype=torch.double))
    if mode == "train":  # in eval mode the same layers are one deterministic function
        hessian.functional_model(model.eval(), torch.randn(5, 3, dtype=torch.double))


def test_dropout_with_p_zero_in_train_mode_is_deterministic_and_accepted():
    model, x = mlp(nn.Dropout(0.0)), torch.randn(5, 3, dtype=torch.double)
    assert model.training
    model_fn, params = hessian.functional_model(model, x)
    assert model_fn(params).shape == (5, 2)


def test_hvp_of_a_function_that_ignores_its_parameters_is_zero():
    p, v = torch.randn(3, dtype=torch.double), torch.ones(3, dtype=torch.double)
    constant = lambda q: torch.tensor(1.0, dtype=torch.double)  # noqa: E731
    assert torch.count_nonzero(hessian.hvp(constant, p, v)) == 0
    assert torch.count_nonzero(hessian.dense(constant, p)) == 0


def test_last_layer_ggn_does_not_take_a_frozen_read_out():
    model, x = mlp(nn.Identity()), torch.randn(5, 3, dtype=torch.double)
    model[3].requires_grad_(False)
    with pytest.raises(ValueError, match=r"layer: expected the name of .* with a trainable weight, one of \['0'\]"):
        hessian.last_layer_ggn(model, x, layer="3")
    with pytest.raises(ValueError, match="the model output is not the output of '0'"):  # not a read-out
        hessian.last_layer_ggn(model, x)


def test_inert_options_warn():
    output = torch.zeros(2, 1, 4)
    with pytest.warns(InertOptionWarning, match="noise_variance has no effect: it is only used with loss='gaussian_nll'"):
        loss_hessian_sqrt("mse", output, 2.0)
    model, x = nn.Linear(2, 2), torch.randn(3, 2)
    with pytest.warns(InertOptionWarning, match="seed=3 has no effect: seed is only used with variant='mc'"):
        hessian.kfac_operator(model, x, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_hessian_sqrt("mse", output)
        loss_hessian_sqrt("mse", output, torch.tensor(1.0))
        loss_hessian_sqrt("gaussian_nll", output, 2.0)
        hessian.kfac_operator(model, x, variant="mc", seed=3)


def test_bad_arguments_name_the_argument():
    model, x = nn.Linear(2, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match="operator: expected a probneural.hessian.LinearOperator .* got Tensor"):
        hessian.lanczos(torch.eye(3), 1)
    with pytest.raises(ValueError, match="n_samples must be an int, got 1.5"):
        hessian.kfac_operator(model, x, variant="mc", n_samples=1.5)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        hessian.kfac_operator(model, x, seed=-1)
    with pytest.raises(ValueError, match="n_samples must be an int, got 2.5"):
        hessian.ggn_diagonal_mc(model, x, n_samples=2.5)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        hessian.ggn_diagonal_mc(model, x, seed=-1)
    with pytest.raises(ValueError, match=r"output: expected a batched output \(b, c, ...\) for per-channel noise"):
        loss_hessian_sqrt("gaussian_nll", torch.zeros(4), [1.0, 2.0])
