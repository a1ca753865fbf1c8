"""Laplace posteriors against closed forms: Bayesian linear regression, its evidence, and the posterior draws."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probneural import hessian, uq
from probneural.data.normalizer import ChannelNormalizer
from probneural.hessian.kfac import KroneckerBlock, SpectralKroneckerBlock
from probneural.operators import FNO
from probneural.operators.pointwise import Pointwise
from probneural.train.normalized import NormalizedOperator
from probneural.uq.laplace import (
    MarginalLikelihood, _Diagonal, _Kronecker, _LowRank, _remainder_curvature, _SpectralKronecker,
)

DOUBLE = {"dtype": torch.float64}


class RandomFeatures(nn.Module):
    """``y = W tanh(V x) + b`` at every grid point with ``V`` frozen: linear in its trainable weights."""

    def __init__(self, features: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = Pointwise(2, features)
        self.features.requires_grad_(False)
        self.readout = Pointwise(features, 1)

    def forward(self, x):
        return self.readout(torch.tanh(self.features(x)))


def design(model, x):
    """Rows ``[φ; 1]`` `(n · points, features + 1)` of the read-out."""
    with torch.no_grad():
        phi = torch.tanh(model.features(x))
    rows = phi.transpose(1, 2).reshape(-1, phi.shape[1])
    return torch.cat((rows, torch.ones_like(rows[:, :1])), dim=1)


def bayesian_linear_regression(phi, y, delta, sigma2):
    covariance = torch.linalg.inv(phi.T @ phi / sigma2 + delta * torch.eye(phi.shape[1], **DOUBLE))
    return covariance @ phi.T @ y / sigma2, covariance


def linear_problem(delta=2.0, sigma2=0.09):
    model = RandomFeatures().double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20, 2, 8, generator=generator, **DOUBLE)
    y = torch.sin(x[:, :1] * 2) + sigma2**0.5 * torch.randn(20, 1, 8, generator=generator, **DOUBLE)
    phi = design(model, x)
    mean, covariance = bayesian_linear_regression(phi, y.reshape(-1), delta, sigma2)
    with torch.no_grad():  # the trained weights: the posterior mode
        model.readout.weight.copy_(mean[:-1].view(1, -1))
        model.readout.bias.copy_(mean[-1:])
    return model, x, y, phi, covariance


def dense_covariance(prediction, i):
    """The joint covariance over ``(channel, *spatial)`` of sample ``i``."""
    factor = prediction.factor[i]  # (k, c, *spatial)
    if prediction.per_channel:  # block diagonal: channel c's own k columns
        blocks = [f.reshape(f.shape[0], -1) for f in factor.unbind(1)]
        low_rank = torch.block_diag(*[block.T @ block for block in blocks])
    else:
        flat = factor.reshape(factor.shape[0], -1)
        low_rank = flat.T @ flat
    return low_rank + torch.diag(prediction.diagonal[i].reshape(-1))


def test_last_layer_equals_bayesian_linear_regression():
    delta, sigma2 = 2.0, 0.09
    model, x, y, _, covariance = linear_problem(delta, sigma2)
    loader = [(x[:12], y[:12]), (x[12:], y[12:])]
    posterior = uq.fit("laplace", model, loader, prior_precision=delta, noise_variance=sigma2)
    x_test = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2), **DOUBLE)
    prediction = posterior.predict(x_test)
    phi_test = design(model, x_test).view(3, 8, -1)
    for i in range(3):
        expected = phi_test[i] @ covariance @ phi_test[i].T + sigma2 * torch.eye(8, **DOUBLE)
        torch.testing.assert_close(dense_covariance(prediction, i), expected, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(prediction.mean, model(x_test), rtol=0, atol=0)


def test_last_layer_channels_are_independent_with_their_own_noise():
    """Two output channels: each is Bayesian linear regression with its own noise, and the
    channels' posterior deviations are uncorrelated (the joint covariance is block diagonal)."""
    delta, noise = 2.0, (0.09, 0.3)
    model = RandomFeatures().double()
    model.readout = Pointwise(5, 2).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20, 2, 8, generator=generator, **DOUBLE)
    phi = design(model, x)
    targets = torch.cat([torch.sin(x[:, :1] * (2 + c)) + noise[c] ** 0.5 * torch.randn(20, 1, 8, generator=generator,
                                                                                   **DOUBLE) for c in range(2)], 1)
    covariances = []
    for c in range(2):
        mean, covariance = bayesian_linear_regression(phi, targets[:, c].reshape(-1), delta, noise[c])
        covariances.append(covariance)
        with torch.no_grad():
            model.readout.weight[c].copy_(mean[:-1])
            model.readout.bias[c].copy_(mean[-1])
    posterior = uq.fit("laplace", model, [(x, targets)], prior_precision=delta,
                       noise_variance=torch.tensor(noise, **DOUBLE))
    x_test = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2), **DOUBLE)
    prediction = posterior.predict(x_test)
    phi_test = design(model, x_test).view(3, 8, -1)
    for i in range(3):
        joint = dense_covariance(prediction, i)  # over (channel, point)
        expected = torch.block_diag(*[phi_test[i] @ covariances[c] @ phi_test[i].T + noise[c] * torch.eye(8, **DOUBLE)
                                      for c in range(2)])
        torch.testing.assert_close(joint, expected, rtol=1e-10, atol=1e-12)
    # joint draws have that covariance: independent channels, each with its own normals
    draws = prediction.sample(20_000, generator=torch.Generator().manual_seed(5))[:, 0].reshape(20_000, -1)
    empirical = torch.cov(draws.T)
    _assert_within_monte_carlo_error(empirical, dense_covariance(prediction, 0), 20_000)
    assert prediction.factor.shape == (3, 6, 2, 8)  # rank features + 1 per channel, no zero blocks stored


def _assert_within_monte_carlo_error(estimate, exact, samples):
    """``estimate`` `(n, n)` a covariance from ``samples`` zero-mean Gaussian draws of covariance ``exact``:
    each entry within 5 standard errors ``sqrt((C_ii C_jj + C_ij²) / S)``."""
    standard_error = ((exact.diagonal()[:, None] * exact.diagonal()[None, :] + exact.square()) / samples).sqrt()
    z = (estimate - exact).abs() / standard_error
    assert ((estimate - exact).abs() <= 5 * standard_error + 1e-12).all(), z.max()


@pytest.mark.parametrize("structure", ["kfac", "low_rank", "diagonal"])
def test_all_weights_predictives_push_the_posterior_through_the_jacobian(structure):
    """On a model linear in its weights, K-FAC and a full-rank low-rank posterior are the exact
    Bayesian linear regression; the diagonal posterior is ``diag(1 / (d/σ² + δ))`` of its own GGN
    diagonal ``d``. The predictive's epistemic covariance ``(J Δθ_s)(J Δθ_s)ᵀ / S`` must match
    ``J Σ Jᵀ`` within its Monte Carlo error."""
    delta, sigma2, samples = 2.0, 0.09, 1500
    model, x, y, _, covariance = linear_problem(delta, sigma2)
    rank = {"rank": 6} if structure == "low_rank" else {}
    posterior = uq.fit("laplace", model, [(x, y)], structure=structure, prior_precision=delta, noise_variance=sigma2,
                       samples=samples, **rank)
    if structure == "diagonal":
        diagonal = torch.cat([segment.diagonal for segment in posterior.curvature.segments])
        covariance = torch.diag(1 / (diagonal / sigma2 + delta))
    x_test = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2), **DOUBLE)
    prediction = posterior.predict(x_test)
    phi_test = design(model, x_test).view(3, 8, -1)
    for i in range(3):
        epistemic = dense_covariance(prediction, i) - sigma2 * torch.eye(8, **DOUBLE)
        _assert_within_monte_carlo_error(epistemic, phi_test[i] @ covariance @ phi_test[i].T, samples)


def test_marginal_likelihood_is_the_exact_evidence_of_the_linear_model():
    delta, sigma2 = 2.0, 0.09
    model, x, y, phi, _ = linear_problem(delta, sigma2)
    posterior = uq.fit("laplace", model, [(x, y)], prior_precision=delta, noise_variance=sigma2)
    evidence = torch.distributions.MultivariateNormal(
        torch.zeros(phi.shape[0], **DOUBLE), phi @ phi.T / delta + sigma2 * torch.eye(phi.shape[0], **DOUBLE)
    ).log_prob(y.reshape(-1))
    assert posterior.log_marginal_likelihood == pytest.approx(evidence.item(), rel=1e-10)


def test_tuning_maximises_the_marginal_likelihood():
    model, x, y, _, _ = linear_problem()
    posterior = uq.fit("laplace", model, [(x, y)])
    best = posterior.log_marginal_likelihood
    evidence: MarginalLikelihood = posterior.curvature.marginal_likelihood(
        *uq.laplace._residual_statistics(model, [(x, y)])
    )
    delta, sigma2 = posterior.prior_precision, posterior.noise_variance
    for factor in (0.8, 1.25):
        assert evidence(torch.tensor(delta * factor, **DOUBLE), sigma2) < best
        assert evidence(torch.tensor(delta, **DOUBLE), sigma2 * factor) < best


def _empirical_covariance(segment, delta, sigma2, n=200_000):
    z = torch.randn(n, segment.stop - segment.start, generator=torch.Generator().manual_seed(3), **DOUBLE)
    draws = segment.sample(z, delta, sigma2)
    return draws.T @ draws / n


@pytest.mark.parametrize("kind", ["diagonal", "kronecker", "spectral_kronecker", "low_rank"])
def test_posterior_draws_have_the_inverse_posterior_precision_as_covariance(kind):
    generator = torch.Generator().manual_seed(4)
    delta, sigma2 = 0.7, 0.5
    if kind == "diagonal":
        values = torch.rand(6, generator=generator, **DOUBLE) * 3
        segment, curvature = _Diagonal(0, 6, values), torch.diag(values)
    elif kind == "kronecker":
        a = torch.randn(4, 3, generator=generator, **DOUBLE)
        b = torch.randn(2, 2, generator=generator, **DOUBLE)
        block = KroneckerBlock(("w", "b"), a.T @ a, b @ b.T)  # o = 2, i = 2 (+ bias)
        segment = _Kronecker(0, block)
        curvature = block.matmat(torch.eye(block.size, **DOUBLE))
    elif kind == "spectral_kronecker":
        a = torch.randn(2, 5, 2, generator=generator, **DOUBLE)  # F = 2 modes, i = 1 complex input channel
        b = torch.randn(2, 4, 4, generator=generator, **DOUBLE)  # o = 2 complex output channels
        block = SpectralKroneckerBlock(("weight",), a.mT @ a, b @ b.mT)
        segment = _SpectralKronecker(0, block)
        curvature = block.matmat(torch.eye(block.size, **DOUBLE))
    else:
        vectors, _ = torch.linalg.qr(torch.randn(6, 2, generator=generator, **DOUBLE))
        values = torch.tensor([5.0, 2.0], **DOUBLE)
        segment = _LowRank(0, 6, values, vectors, remainder=0.3)
        curvature = vectors @ torch.diag(values) @ vectors.T + 0.3 * (torch.eye(6, **DOUBLE) - vectors @ vectors.T)
    expected = torch.linalg.inv(curvature / sigma2 + delta * torch.eye(curvature.shape[0], **DOUBLE))
    assert torch.allclose(_empirical_covariance(segment, delta, sigma2), expected, atol=0.02 * expected.abs().max())
    assert torch.allclose(segment.eigenvalues().sort().values[-2:],
                          torch.linalg.eigvalsh(curvature)[-2:], rtol=1e-10)


def test_a_normalised_operator_predicts_in_data_units():
    model, x, y, _, _ = linear_problem()
    x_norm = ChannelNormalizer(torch.full((1, 2, 1), 0.5, **DOUBLE), torch.full((1, 2, 1), 2.0, **DOUBLE))
    y_norm = ChannelNormalizer(torch.full((1, 1, 1), 3.0, **DOUBLE), torch.full((1, 1, 1), 4.0, **DOUBLE))
    wrapped = NormalizedOperator(model, x_norm, y_norm)
    raw = uq.fit("laplace", model, [(x_norm.encode(x), y_norm.encode(y))], prior_precision=1.0, noise_variance=0.1)
    posterior = uq.fit("laplace", wrapped, [(x, y)], prior_precision=1.0, noise_variance=0.1)
    x_test = torch.randn(2, 2, 8, **DOUBLE)
    expected, prediction = raw.predict(x_norm.encode(x_test)), posterior.predict(x_test)
    scale = 4.0 + torch.finfo(torch.float64).eps
    torch.testing.assert_close(prediction.mean, y_norm.decode(expected.mean))
    torch.testing.assert_close(prediction.variance, expected.variance * scale**2)


@pytest.mark.parametrize("structure", ["last_layer", "diagonal", "kfac", "low_rank"])
def test_every_structure_fits_an_fno_with_its_defaults(structure):
    torch.manual_seed(0)
    model = FNO(1, 1, (3, 3), width=4, n_layers=2, projection_channels=8).double()
    x = torch.randn(6, 1, 8, 8, **DOUBLE)
    y = x.roll(1, dims=-1) + 0.1 * torch.randn_like(x)
    samples = {} if structure == "last_layer" else {"samples": 8}  # the last layer's predictive is closed-form
    posterior = uq.fit("laplace", model, [(x[:3], y[:3]), (x[3:], y[3:])], structure=structure, **samples)
    prediction = posterior.predict(torch.randn(2, 1, 12, 12, **DOUBLE))  # another resolution
    assert prediction.mean.shape == (2, 1, 12, 12)
    assert (prediction.variance > posterior.noise_variance.min() * 0.999).all()
    assert math.isfinite(posterior.log_marginal_likelihood) and posterior.prior_precision > 0
    draws = prediction.sample(4)
    assert draws.shape == (4, 2, 1, 12, 12) and torch.isfinite(draws).all()


def test_bad_options_name_the_argument():
    model, x, y, _, _ = linear_problem()
    with pytest.raises(ValueError, match="structure"):
        uq.fit("laplace", model, [(x, y)], structure="full")
    with pytest.raises(ValueError, match="noise_variance"):
        uq.fit("laplace", model, [(x, y)], noise_variance=[1.0, 2.0])
    with pytest.raises(ValueError, match="loader"):
        uq.fit("laplace", model, [])
    with pytest.raises(ValueError, match="loader: expected re-iterable .* one-shot iterator \\(generator\\)"):
        uq.fit("laplace", model, ((a, b) for a, b in [(x, y)]))
    from probneural.data import OperatorDataset

    dataset = OperatorDataset(x, y, (torch.linspace(0, 1, x.shape[-1]),), {})
    with pytest.raises(ValueError, match=r"loader: .* got an OperatorDataset: pass torch.utils.data.DataLoader"):
        uq.fit("laplace", model, dataset)
    with pytest.raises(ValueError, match=r"loader: batch 0 has y of shape \(20, 1, 4\)"):
        uq.fit("laplace", model, [(x, y[..., :4])])
    with pytest.raises(ValueError, match="loader: batch 1 has NaN or Inf targets"):
        uq.fit("laplace", model, [(x, y), (x, torch.full_like(y, float("nan")))])
    two_channels = RandomFeatures().double()
    two_channels.readout = Pointwise(5, 2).double()
    with pytest.raises(ValueError, match=r"loader: batch 0 has y of shape \(20, 1, 8\); the operator answers"):
        uq.fit("laplace", two_channels, [(x, y)])  # would broadcast y to both channels
    normalized = NormalizedOperator(model, ChannelNormalizer.fit(x), ChannelNormalizer.fit(y))
    with pytest.raises(ValueError, match=r"y must have shape \(batch, 1, \*spatial\)"):
        uq.fit("laplace", normalized, [(x, y.expand(-1, 2, -1))])
    with pytest.raises(KeyError, match="laplace"):
        uq.fit("laplce", model, [(x, y)])


def test_low_rank_remainder_is_the_mean_curvature_outside_the_top_eigenvectors():
    generator = torch.Generator().manual_seed(5)
    factor = torch.randn(40, 60, generator=generator, **DOUBLE) * torch.linspace(3, 0.1, 60, **DOUBLE)
    matrix = factor @ factor.T
    values, vectors = torch.linalg.eigh(matrix)
    top = vectors[:, -5:]
    exact = values[:-5].mean().item()  # tr((I − VVᵀ) G) / (P − k)
    operator = hessian.LinearOperator(40, lambda v: matrix @ v, dtype=torch.float64, device=torch.device("cpu"))
    estimates = torch.tensor([_remainder_curvature(operator, top, seed)[0] for seed in range(200)], **DOUBLE)
    assert (estimates >= 0).all()
    assert abs(estimates.mean().item() - exact) < 3 * estimates.std().item() / 200**0.5
    assert _remainder_curvature(operator, vectors, 0) == (0.0, 0.0)  # k = P: nothing remains


def test_low_rank_evidence_is_not_degenerate():
    # with zero curvature outside the top-k directions the evidence's optimum is δ‖θ*‖² = γ <= k whatever the data;
    # with the remainder the prior precision depends on the curvature of every direction
    eigenvalues = torch.cat((torch.tensor([50.0, 20.0], **DOUBLE), torch.full((98,), 0.5, **DOUBLE)))
    options = {"squared_errors": torch.tensor([10.0], **DOUBLE), "counts": torch.tensor([100.0], **DOUBLE),
               "map_norm": 400.0, "n_params": 100}
    degenerate = MarginalLikelihood(eigenvalues[:2].unsqueeze(0), 98, **options)
    delta, sigma2 = degenerate.maximise(None, torch.tensor([0.1], **DOUBLE))
    gamma = (eigenvalues[:2] / (eigenvalues[:2] + delta * 0.1)).sum().item()
    assert delta * 400.0 == pytest.approx(gamma, rel=1e-6)
    full = MarginalLikelihood(eigenvalues.unsqueeze(0), 0, **options)
    delta_full, _ = full.maximise(None, torch.tensor([0.1], **DOUBLE))
    gamma_full = (eigenvalues / (eigenvalues + delta_full * 0.1)).sum().item()
    assert delta_full * 400.0 == pytest.approx(gamma_full, rel=1e-6) and gamma_full > 10 * gamma


def test_low_rank_fit_gives_the_remaining_directions_their_mean_curvature():
    # the linear model's GGN is ΦᵀΦ (6 × 6); rank 2 leaves 4 directions whose mean eigenvalue is the remainder
    model, x, y, phi, _ = linear_problem()
    posterior = uq.fit("laplace", model, [(x, y)], structure="low_rank", rank=2, noise_variance=0.09)
    eigenvalues = torch.linalg.eigvalsh(phi.T @ phi)
    summary = posterior.summary()
    remainder, error = summary["remainder_curvature"], summary["remainder_curvature_stderr"]
    assert 0 < error < 0.5 * remainder
    assert abs(remainder - eigenvalues[:4].mean().item()) < 4 * error
    segment = posterior.curvature.segments[0]
    assert segment.remainder == remainder
    torch.testing.assert_close(segment.eigenvalues().sort().values,
                               torch.cat((torch.full((4,), remainder, **DOUBLE), eigenvalues[4:])), rtol=1e-8, atol=0)
