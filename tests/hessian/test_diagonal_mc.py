"""Monte Carlo GGN diagonal against the exact diagonal from full Jacobians (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probneural.hessian import ggn_diagonal, ggn_diagonal_mc
from probneural.hessian.ggn import functional_model
from probneural.operators import FNO

DOUBLE = {"dtype": torch.float64}
NLL = {"loss": "gaussian_nll", "noise_variance": [0.5, 2.0]}


class ComplexLinear(nn.Module):
    """``y = Re(W x)`` with a complex parameter ``W`` `(2, 3)`: the real-view layout of complex parameters."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3, dtype=torch.complex128))

    def forward(self, x):
        return torch.tanh((x.to(self.weight.dtype) @ self.weight.T).real)


def fno():
    torch.manual_seed(0)
    return FNO(1, 2, (2, 2), width=3, n_layers=2, projection_channels=4).double(), torch.randn(3, 1, 5, 4, **DOUBLE)


def mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return model, torch.randn(4, 3, **DOUBLE)


def complex_linear():
    torch.manual_seed(2)
    return nn.Sequential(ComplexLinear(), nn.Linear(2, 2)).double(), torch.randn(4, 3, **DOUBLE)


def exact_diagonal(model, x, **options):
    model_fn, params = functional_model(model, x)
    return ggn_diagonal(model_fn, params, **options)


@pytest.mark.parametrize("build", [fno, mlp, complex_linear])
def test_mean_of_many_draws_agrees_with_the_exact_diagonal(build):
    model, x = build()
    exact = exact_diagonal(model, x, **NLL)
    estimate, error = ggn_diagonal_mc(model, (x[:2], x[2:]), n_samples=400, seed=3, with_error=True, **NLL)
    assert estimate.shape == exact.shape
    seen = error > 0
    assert not exact[~seen].any() and not estimate[~seen].any()  # parameters without any effect
    deviations = (estimate - exact)[seen].abs() / error[seen]
    assert (deviations < 3).float().mean() > 0.97  # 99.7 % of entries for a correct estimator
    assert deviations.max() < 5


def test_standard_error_is_that_of_gaussian_probes():
    """One Gaussian probe has variance ``2 d_n²`` at a coordinate whose per-sample diagonal is ``d_n``."""
    model, x = fno()
    per_sample = torch.stack([exact_diagonal(model, x[n : n + 1], **NLL) for n in range(x.shape[0])])
    expected = (2 * per_sample.square().sum(0) / 400).sqrt()
    _, error = ggn_diagonal_mc(model, x, n_samples=400, seed=4, with_error=True, **NLL)
    ratio = error[expected > 0] / expected[expected > 0]
    assert 0.9 < ratio.median() < 1.1
    assert not error[expected == 0].any()


@pytest.mark.parametrize("loss, noise", [("mse", 1.0), ("gaussian_nll", 0.25)])
def test_rademacher_probes_are_exact_for_one_scalar_output_per_sample(loss, noise):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x = torch.randn(6, 3, **DOUBLE)
    estimate = ggn_diagonal_mc(model, x, loss=loss, noise_variance=noise, probes="rademacher")
    torch.testing.assert_close(estimate, exact_diagonal(model, x, loss=loss, noise_variance=noise),
                               rtol=1e-12, atol=1e-14)


def test_chunking_does_not_change_the_estimate():
    model, x = fno()
    whole = ggn_diagonal_mc(model, x, n_samples=3, seed=6, chunk_size=8)
    torch.testing.assert_close(ggn_diagonal_mc(model, x, n_samples=3, seed=6, chunk_size=1), whole,
                               rtol=1e-12, atol=1e-14)


def test_float64_computation_of_a_float32_model():
    model, x = fno()
    reference = ggn_diagonal_mc(model, x, n_samples=2, seed=7)
    promoted = ggn_diagonal_mc(model.float(), x.float(), n_samples=2, seed=7, dtype=torch.float64)
    assert promoted.dtype == torch.float64
    torch.testing.assert_close(promoted, reference, rtol=1e-5, atol=1e-8)  # float32 weights, exact float64 maths


def test_bad_arguments():
    model, x = mlp()
    with pytest.raises(ValueError, match="loss: expected one of"):
        ggn_diagonal_mc(model, x, loss="l1")
    with pytest.raises(ValueError, match="probes: expected one of"):
        ggn_diagonal_mc(model, x, probes="uniform")
    with pytest.raises(ValueError, match="n_samples: expected at least 1"):
        ggn_diagonal_mc(model, x, n_samples=0)
    with pytest.raises(ValueError, match="n_samples: expected at least 2 probes per sample for a standard error"):
        ggn_diagonal_mc(model, x, with_error=True)
    with pytest.raises(ValueError, match="chunk_size: expected a positive"):
        ggn_diagonal_mc(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="inputs: expected at least one input batch"):
        ggn_diagonal_mc(model, [])
    with pytest.raises(ValueError, match="model: expected a batched output"):
        ggn_diagonal_mc(nn.Sequential(model, nn.Flatten(0)), x)
