"""GPyTorch heads: the exact GP against a direct Cholesky computation, SVGP at the data against the exact GP."""

from __future__ import annotations

import math

import pytest
import torch

from probneural import uq
from probneural.operators import FNO
from probneural.uq.gp import GPPosterior, _minibatches

DOUBLE = {"dtype": torch.float64}


def problem(channels: int = 1, fields: int = 6, points: int = 16):
    """A small 1-D FNO and targets it misses by a smooth function of the input plus noise."""
    torch.manual_seed(0)
    model = FNO(1, channels, [4], width=4, n_layers=2, projection_channels=8).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(fields, 1, points, generator=generator, **DOUBLE)
    with torch.no_grad():
        y = model(x) + 0.3 * torch.sin(3 * x) + 0.05 * torch.randn(fields, channels, points, generator=generator,
                                                                    **DOUBLE)
    x_test = torch.randn(2, 1, points, generator=generator, **DOUBLE)
    return model, [(x[: fields // 2], y[: fields // 2]), (x[fields // 2:], y[fields // 2:])], x_test


def matern52(a, b, lengthscale, outputscale):
    r = torch.cdist(a / lengthscale, b / lengthscale)
    return outputscale * (1 + math.sqrt(5) * r + 5 * r**2 / 3) * torch.exp(-math.sqrt(5) * r)


def all_points(posterior: GPPosterior, loader):
    """Standardised inputs `(n, d)`, residual targets `(n, c)` of every training point."""
    x = torch.cat([x for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    features = posterior.trunk.trunk(x)
    inputs = posterior.inputs.field(features).reshape(-1, posterior.inputs.center.shape[0])
    with torch.no_grad():
        residual = (y - posterior.inputs.mean(features)).flatten(2).mT.reshape(-1, y.shape[1])
    return inputs, residual


def test_exact_head_equals_a_direct_cholesky_computation():
    model, loader, x_test = problem()
    posterior = uq.fit("gp_exact", model, loader, points=10_000, epochs=30)  # every one of the 96 points
    assert posterior.summary()["points"] == 96
    kernel = posterior.latent.kernel
    lengthscale = kernel.base_kernel.lengthscale.detach()[0]
    outputscale = kernel.outputscale.detach()[0]
    noise = posterior.latent.noise[0]
    inputs, residual = all_points(posterior, loader)
    gram = matern52(inputs, inputs, lengthscale, outputscale) + (noise + 1e-6) * torch.eye(96, **DOUBLE)
    cholesky = torch.linalg.cholesky(gram)
    prediction = posterior.predict(x_test)
    features = posterior.trunk.trunk(x_test)
    test_inputs = posterior.inputs.field(features)
    with torch.no_grad():
        operator_mean = posterior.inputs.mean(features)
    for i in range(2):
        cross = matern52(test_inputs[i], inputs, lengthscale, outputscale)
        mean = operator_mean[i, 0] + cross @ torch.cholesky_solve(residual, cholesky)[:, 0]
        solved = torch.linalg.solve_triangular(cholesky, cross.T, upper=False)
        variance = outputscale - solved.square().sum(0) + noise
        torch.testing.assert_close(prediction.mean[i, 0], mean, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(prediction.variance[i, 0], variance, rtol=1e-8, atol=1e-10)
    assert (prediction.diagonal >= noise * (1 - 1e-12)).all()


def test_exact_head_agrees_with_gpytorch_own_predictive():
    model, loader, x_test = problem(channels=2)
    posterior = uq.fit("gp_exact", model, loader, points=10_000, epochs=10)
    prediction = posterior.predict(x_test)
    features = posterior.trunk.trunk(x_test)
    with torch.no_grad():
        operator_mean = posterior.inputs.mean(features)
    inputs, residual = all_points(posterior, loader)
    import gpytorch

    from probneural.uq.gp import _ExactModel

    likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=torch.Size([2])).double()
    gp = _ExactModel(inputs.expand(2, *inputs.shape), residual.T, likelihood).double()
    gp.covar_module.load_state_dict(posterior.latent.kernel.state_dict())
    likelihood.noise = posterior.latent.noise[:, None]
    gp.eval()
    likelihood.eval()
    test_inputs = posterior.inputs.field(features)
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False), gpytorch.settings.cholesky_jitter(1e-6):
        for i in range(2):
            theirs = likelihood(gp(test_inputs[i].expand(2, -1, -1)))
            # we add a 1e-6 jitter to K + σ²I (σ² ≈ 1e-2 here), gpytorch only when a factorisation fails
            torch.testing.assert_close(prediction.mean[i], operator_mean[i] + theirs.mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(prediction.variance[i], theirs.variance, rtol=1e-4, atol=1e-6)


def test_svgp_with_inducing_points_at_the_data_converges_to_the_exact_gp():
    # Same hyperparameters (both keep their initial values), inducing points at every training point:
    # the optimal q(u) is the exact posterior, and one full-batch natural-gradient step of size 1 finds it.
    model, loader, x_test = problem(fields=4)
    exact = uq.fit("gp_exact", model, loader, points=10_000, epochs=0, rank=64)
    x = torch.cat([x for x, _ in loader])
    features = exact.trunk.trunk(x)
    raw = features.flatten(2).mT.reshape(-1, features.shape[1])
    sparse = uq.fit("gp_svgp", model, loader, inducing_inputs=raw, learn_inducing=False, hyperparameters=False,
                    epochs=1, batch_points=64, natural_lr=1.0, rank=64)
    assert sparse.summary()["inducing"] == 64
    torch.testing.assert_close(sparse.latent.noise, exact.latent.noise)
    ours, theirs = sparse.predict(x_test), exact.predict(x_test)
    # up to the 1e-6 jitter on K_uu, which the exact GP does not have (K_uu is ill-conditioned here)
    torch.testing.assert_close(ours.mean, theirs.mean, rtol=0, atol=1e-3 * theirs.mean.abs().max().item())
    torch.testing.assert_close(ours.variance, theirs.variance, rtol=1e-3, atol=0)
    # and a few more natural-gradient steps with a smaller size stay there
    again = uq.fit("gp_svgp", model, loader, inducing_inputs=raw, learn_inducing=False, hyperparameters=False,
                   epochs=60, batch_points=64, natural_lr=0.2, rank=64)
    torch.testing.assert_close(again.predict(x_test).variance, theirs.variance, rtol=2e-3, atol=0)


def test_svgp_mixes_latent_gps_into_several_channels():
    model, loader, x_test = problem(channels=2)
    posterior = uq.fit("gp_svgp", model, loader, inducing=8, latents=3, epochs=20, batch_points=48, lr=0.05,
                       coordinates=True, rank=4)
    prediction = posterior.predict(x_test)
    assert prediction.mean.shape == (2, 2, 16) and prediction.factor.shape == (2, 12, 2, 16)
    assert posterior.latent.mixing.shape == (3, 2)
    assert (prediction.diagonal > 0).all()
    draws = prediction.sample(3, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (3, 2, 2, 16) and torch.isfinite(draws).all()


def test_svgp_mixing_equals_gpytorch_own_lmc_predictive():
    """The mixed predictive against GPyTorch's ``LMCVariationalStrategy`` with
    ``MultitaskGaussianLikelihood``, at a random variational posterior, Q = 3 latents, c = 2 channels:
    means and per-point variances (with noise) equal; the joint covariance across channels and
    points equals GPyTorch's less each latent's conditional prior ``k(X*, X*) − K*u K_uu⁻¹ K_u*``
    off the diagonal (the factor carries the inducing part; the rest is kept on the diagonal)."""
    import gpytorch

    from probneural.uq.gp import _SparseModel, _sparse_posterior

    torch.manual_seed(0)
    latents, channels, m, d, points = 3, 2, 6, 2, 7
    inducing = torch.randn(latents, m, d, dtype=torch.float64)
    gp = _SparseModel(inducing, channels, latents, learn_inducing=False).double()
    strategy = gp.variational_strategy
    with torch.no_grad():
        strategy.lmc_coefficients.copy_(torch.randn(latents, channels, dtype=torch.float64))
        gp.covar_module.outputscale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
        distribution = strategy.base_variational_strategy._variational_distribution
        mean = torch.randn(latents, m, dtype=torch.float64)
        root = torch.randn(latents, m, m, dtype=torch.float64) * 0.3
        covariance = root @ root.mT + 0.05 * torch.eye(m, dtype=torch.float64)
        precision = torch.linalg.inv(covariance)
        distribution.natural_vec.copy_((precision @ mean.unsqueeze(-1)).squeeze(-1))
        distribution.natural_mat.copy_(-0.5 * precision)
    likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=channels, has_global_noise=False).double()
    likelihood.task_noises = torch.tensor([0.01, 0.04], dtype=torch.float64)
    gp.eval()
    likelihood.eval()
    x = torch.randn(points, d, dtype=torch.float64)
    ours_mean, diagonal, factor = _sparse_posterior(gp, likelihood, channels, m, torch.float64).field(x)
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        theirs = likelihood(gp(x))  # (points, channels), covariance over point-major (point, channel) pairs
    torch.testing.assert_close(ours_mean, theirs.mean.T, rtol=1e-6, atol=1e-8)
    flat = factor.permute(0, 2, 1).reshape(factor.shape[0], -1)  # (Q r, points · channels), point-major
    joint = flat.T @ flat + torch.diag(diagonal.T.reshape(-1))
    with torch.no_grad():
        kernel = gp.covar_module
        cross = kernel(x.expand(latents, -1, -1), inducing).to_dense()  # (Q, points, m)
        inducing_matrix = kernel(inducing).to_dense() + 1e-6 * torch.eye(m, dtype=torch.float64)
        conditional = kernel(x.expand(latents, -1, -1)).to_dense() - cross @ torch.linalg.solve(inducing_matrix,
                                                                                             cross.mT)
        mixing = strategy.lmc_coefficients
        dropped = torch.einsum("qc,qe,qpr->pcre", mixing, mixing, conditional).reshape(joint.shape)
        expected = theirs.covariance_matrix - dropped + torch.diag(dropped.diagonal())
    torch.testing.assert_close(joint.diagonal(), theirs.covariance_matrix.diagonal(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(joint, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hyperparameters", [True, False])
def test_svgp_learns_inducing_inputs_and_mixing_with_or_without_hyperparameters(hyperparameters):
    model, loader, _ = problem(channels=2)
    options = {"inducing": 6, "latents": 2, "epochs": 5, "batch_points": 32, "lr": 0.05, "seed": 3,
               "hyperparameters": hyperparameters}

    def fit(**changes):
        torch.manual_seed(7)  # GPyTorch draws the initial LMC mixing from the global generator
        settings = options | changes
        if settings["epochs"] == 0:  # the training options would be inert (and warn)
            settings = {k: v for k, v in settings.items() if k not in ("batch_points", "lr", "hyperparameters")}
        return uq.fit("gp_svgp", model, loader, **settings)

    fixed, learnt, untrained = fit(learn_inducing=False), fit(learn_inducing=True), fit(epochs=0)
    assert (learnt.latent.anchors - fixed.latent.anchors).abs().max() > 1e-3
    assert (learnt.latent.mixing - untrained.latent.mixing).abs().max() > 1e-3
    outputscale = [r.summary()["outputscale"] for r in (fixed, untrained)]
    assert (outputscale[0] == outputscale[1]) is not hyperparameters  # kernel fixed only without hyperparameters


def test_joint_training_moves_the_projection_and_frozen_training_does_not():
    model, loader, _ = problem()
    before = model.projection_out.weight.detach().clone()
    frozen = uq.fit("gp_svgp", model, loader, inducing=8, epochs=5, batch_points=32, lr=0.05)
    joint = uq.fit("gp_svgp", model, loader, inducing=8, epochs=5, batch_points=32, lr=0.05, joint=True)
    assert torch.equal(model.projection_out.weight, before)  # the operator itself never changes
    assert torch.equal(frozen.inputs.projection["projection_out"].weight, before)
    assert not torch.equal(joint.inputs.projection["projection_out"].weight, before)


def test_bad_options_are_named():
    model, loader, _ = problem()
    with pytest.raises(ValueError, match="dtype: expected one of"):
        uq.fit("gp_exact", model, loader, dtype="float16")
    with pytest.raises(ValueError, match="inducing_inputs: expected shape"):
        uq.fit("gp_svgp", model, loader, inducing_inputs=torch.zeros(3, 7, **DOUBLE))
    with pytest.raises(ValueError, match="posterior heads need an FNO"):
        uq.fit("gp_exact", torch.nn.Conv1d(1, 1, 1), loader)


def test_svgp_minibatches_cover_fractional_passes_each_point_at_most_once_per_pass():
    passes = list(_minibatches(10, 3, 1.5, torch.Generator().manual_seed(0)))
    assert [[len(b) for b in batches] for batches in passes] == [[3, 3, 3, 1], [3]]  # ceil(1.5 · 10 / 3) = 5 steps
    assert sorted(torch.cat(passes[0]).tolist()) == list(range(10))
    quarter = list(_minibatches(100, 8, 0.25, torch.Generator().manual_seed(0)))
    assert len(quarter) == 1 and len(torch.cat(quarter[0]).unique()) == 32
    assert list(_minibatches(100, 8, 0.0, torch.Generator())) == []
