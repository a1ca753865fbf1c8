"""Pyro heads: SVI and NUTS on a head linear in its weights against the closed-form Bayesian linear regression."""

from __future__ import annotations

import pytest
import torch

from probneural import uq
from probneural.operators import FNO

DOUBLE = {"dtype": torch.float64}
NOISE, PRIOR = 0.1, 0.3  # a well-conditioned posterior, so that SVI converges in a few hundred steps


def exact_posterior(model, x, y, x_test, noise):
    """Mean and variance `(b, c, 16)` at ``x_test`` of the read-out's Bayesian linear regression, per channel.

    ``noise``: `(c,)` noise variances; the prior is ``N(0, PRIOR²)`` on every weight.
    """

    def design(inputs):
        with torch.no_grad():
            hidden = model.act(model.projection_hidden(model.features(inputs)))  # (b, 4, 16)
        rows = hidden.transpose(1, 2).reshape(-1, 4)
        return torch.cat((rows, torch.ones_like(rows[:, :1])), dim=1)

    phi, test = design(x), design(x_test)
    means, variances = [], []
    for c, sigma2 in enumerate(noise.tolist()):
        covariance = torch.linalg.inv(phi.T @ phi / sigma2 + torch.eye(5, **DOUBLE) / PRIOR**2)
        mean = covariance @ phi.T @ y[:, c].reshape(-1) / sigma2
        means.append((test @ mean).view(len(x_test), 16))
        variances.append(((test @ covariance) * test).sum(1).view(len(x_test), 16) + sigma2)
    return torch.stack(means, 1), torch.stack(variances, 1)


def problem(noise=NOISE, collinear=0.0, channels=1):
    """A small 1-D FNO whose read-out is linear in 5 weights per channel, data from it plus noise, the exact posterior.

    ``noise``: one variance or one per channel. ``collinear > 0`` makes the read-out's 4 inputs nearly
    collinear (hidden rows within ``collinear`` of each other), so the posterior over the weights is
    strongly correlated.
    """
    torch.manual_seed(0)
    model = FNO(1, channels, [4], width=4, n_layers=2, projection_channels=4).double()
    if collinear:
        hidden = model.projection_hidden
        with torch.no_grad():
            hidden.weight.copy_(hidden.weight[:1] + collinear * torch.randn_like(hidden.weight))
            hidden.bias.copy_(hidden.bias[:1] + collinear * torch.randn_like(hidden.bias))
    generator = torch.Generator().manual_seed(1)
    noise = torch.as_tensor(noise, **DOUBLE).expand(channels)
    x = torch.randn(4, 1, 16, generator=generator, **DOUBLE)
    with torch.no_grad():
        y = model(x) + noise.sqrt()[:, None] * torch.randn(4, channels, 16, generator=generator, **DOUBLE)
    x_test = torch.randn(2, 1, 16, generator=generator, **DOUBLE)
    exact_mean, exact_variance = exact_posterior(model, x, y, x_test, noise)
    return model, [(x[:2], y[:2]), (x[2:], y[2:])], x_test, exact_mean, exact_variance


def test_svi_readout_head_matches_the_exact_posterior():
    model, loader, x_test, exact_mean, exact_variance = problem()
    posterior = uq.fit("pyro_svi", model, loader, head="readout", guide="low_rank", rank=5, noise_variance=NOISE,
                       prior_scale=PRIOR, epochs=600, lr=0.02, scale_lr=0.02, batch_size=4, points=16,
                       samples=4000)  # one learning rate for every guide parameter: the converged posterior
    assert posterior.summary()["n_random_weights"] == 5
    prediction = posterior.predict(x_test)
    epistemic = (exact_variance - NOISE).sqrt()
    assert ((prediction.mean - exact_mean).abs() < 0.2 * epistemic).all()
    torch.testing.assert_close(prediction.variance, exact_variance, rtol=0.05, atol=0)


def test_svi_mean_field_spread_reaches_its_optimum_at_the_default_learning_rates():
    # the mean-field optimum of a Gaussian posterior with precision Λ has variances 1 / Λ_jj; the guide's scales
    # start at 1e-3, about 40 times too small here, and must get there at the default lr of the means
    model, loader, x_test, _, _ = problem()
    posterior = uq.fit("pyro_svi", model, loader, head="readout", noise_variance=NOISE, prior_scale=PRIOR,
                       epochs=400, batch_size=4, points=16, samples=4000)

    def design(inputs):
        with torch.no_grad():
            hidden = model.act(model.projection_hidden(model.features(inputs)))
        rows = hidden.transpose(1, 2).reshape(-1, 4)
        return torch.cat((rows, torch.ones_like(rows[:, :1])), dim=1)

    phi = design(torch.cat([x for x, _ in loader]))
    precision = phi.T @ phi / NOISE + torch.eye(5, **DOUBLE) / PRIOR**2
    mean_field = (design(x_test).square() / precision.diagonal()).sum(1).view(2, 1, 16)
    epistemic = posterior.predict(x_test).variance - NOISE
    torch.testing.assert_close(epistemic, mean_field, rtol=0.15, atol=0)


@pytest.mark.parametrize("noise, collinear", [(NOISE, 0.0), (1e-4, 0.01)])
def test_nuts_readout_head_mixes_and_matches_the_exact_posterior(noise, collinear):
    model, loader, x_test, exact_mean, exact_variance = problem(noise, collinear)
    posterior = uq.fit("pyro_nuts", model, loader, noise_variance=noise, prior_scale=PRIOR, warmup=100, draws=250,
                       chains=2, samples=500)
    summary = posterior.summary()
    assert summary["points"] == 64 and summary["r_hat_max"] < 1.05 and summary["divergences"] == [0, 0]
    prediction = posterior.predict(x_test)
    epistemic = (exact_variance - noise).sqrt()
    assert ((prediction.mean - exact_mean).abs() < 0.2 * epistemic).all()
    torch.testing.assert_close(prediction.variance, exact_variance, rtol=0.05, atol=0)


def test_nuts_with_two_channels_takes_each_channels_residual_as_its_noise():
    model, loader, x_test, _, _ = problem((0.05, 0.4), channels=2)
    x, y = (torch.cat(parts) for parts in zip(*loader))
    with torch.no_grad():
        residual_variance = (model(x) - y).square().mean((0, 2))  # the default noise, per channel
    exact_mean, exact_variance = exact_posterior(model, x, y, x_test, residual_variance)
    posterior = uq.fit("pyro_nuts", model, loader, prior_scale=PRIOR, warmup=100, draws=250, chains=2, samples=500)
    summary = posterior.summary()
    torch.testing.assert_close(torch.tensor(summary["noise_variance"], **DOUBLE), residual_variance)
    assert summary["n_random_weights"] == 10 and summary["r_hat_max"] < 1.05
    prediction = posterior.predict(x_test)
    epistemic = (exact_variance - residual_variance[:, None]).sqrt()
    assert ((prediction.mean - exact_mean).abs() < 0.2 * epistemic).all()
    torch.testing.assert_close(prediction.variance, exact_variance, rtol=0.05, atol=0)


@pytest.mark.parametrize("options", [
    {"noise": "heteroscedastic"},
    {"fourier_layer": True, "guide": "low_rank"},
])
def test_svi_variants_fit_and_predict_coherent_fields(options):
    model, loader, x_test, _, _ = problem()
    posterior = uq.fit("pyro_svi", model, loader, epochs=20, batch_size=2, points=8, samples=8, **options)
    prediction = posterior.predict(x_test)
    assert prediction.centers.shape == (8, 2, 1, 16) and torch.isfinite(prediction.centers).all()
    assert (prediction.noise > 0).all()
    losses = posterior.summary()["train_losses"]
    assert len(losses) == 20 and losses[-1] < losses[0]
    if options.get("fourier_layer"):
        spectral = model.spectral[-1].weight.numel() + model.skips[-1].weight.numel() + model.skips[-1].bias.numel()
        assert posterior.summary()["n_random_weights"] == spectral + 4 * 4 + 4 + 4 + 1
    else:  # the noise level follows the input
        assert prediction.noise.std() > 0


def test_bad_options_are_named():
    model, loader, _, _, _ = problem()
    with pytest.raises(ValueError, match="head: expected one of"):
        uq.fit("pyro_svi", model, loader, head="all")
    with pytest.raises(ValueError, match="guide: expected one of"):
        uq.fit("pyro_svi", model, loader, guide="flow")
    with pytest.raises(ValueError, match="noise_variance: a fixed noise variance needs"):
        uq.fit("pyro_svi", model, loader, noise="heteroscedastic", noise_variance=0.1)


@pytest.mark.parametrize("method, options", [("pyro_svi", {"epochs": 2, "samples": 4}),
                                             ("pyro_nuts", {"warmup": 5, "draws": 5, "chains": 2, "samples": 4})])
def test_a_fit_leaves_the_callers_random_streams_alone(method, options):
    import random

    import numpy as np

    model, loader, _, _, _ = problem()

    def streams():
        return torch.rand(2), np.random.rand(2), random.random()

    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    expected = streams()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    first = uq.fit(method, model, loader, seed=4, **options)
    after = streams()
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]
    again = uq.fit(method, model, loader, seed=4, **options)  # and the seed still fixes the fit
    torch.testing.assert_close(again.predict(loader[0][0]).mean, first.predict(loader[0][0]).mean, rtol=0, atol=0)
