"""MC dropout and PNO: sample scores against closed forms, dropout copies, and a PNO that learns the noise level."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from probneural import uq
from probneural.data.grf import grf_periodic
from probneural.data.normalizer import ChannelNormalizer
from probneural.operators import FNO
from probneural.train.losses import relative_l2
from probneural.train.normalized import NormalizedOperator
from probneural.uq.dropout import (
    DropoutPosterior,
    _passes,
    dropout_copy,
    fit_mc_dropout,
    fit_pno,
    relative_crps,
    relative_energy_score,
    sample_crps,
    sample_energy_score,
    stochastic_passes,
)
from probneural.uq.posterior import normalized_parts
from probneural.uq.prediction import gaussian_crps
from probneural.uq.training import train_operator

GRID = 32
SIGMA = 0.4  # pointwise noise std of the targets


def noisy_problem(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``x`` a periodic GRF `(n, 1, 32)`, ``y = 1 + smoothing(x) + SIGMA · ε`` with white Gaussian ``ε``."""
    x = grf_periodic(n, GRID, alpha=2.5, tau=3.0, seed=seed, dtype=torch.float32).unsqueeze(1) * 10.0
    k = torch.fft.rfftfreq(GRID, d=1.0 / GRID)
    smooth = torch.fft.irfft(torch.fft.rfft(x) / (1 + (k / 3) ** 2), n=GRID)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1000 + seed))
    return x, 1.0 + smooth + SIGMA * noise


@pytest.fixture(scope="module")
def problem():
    """A tiny FNO trained (deterministically) on the noisy data, the full-batch loader, held-out data."""
    x, y = noisy_problem(64, seed=0)
    torch.manual_seed(0)
    operator = FNO(1, 1, (4,), width=8, n_layers=2, projection_channels=16, positional_grid="periodic")
    model = NormalizedOperator(operator, ChannelNormalizer.fit(x), ChannelNormalizer.fit(y))
    loader = [(x, y)]
    train_operator(model, loader, epochs=60, lr=1e-2)
    return model.eval(), loader, noisy_problem(32, seed=1)


# --- sample scores ----------------------------------------------------------------------------


def test_sample_crps_is_unbiased_for_the_gaussian_closed_form():
    # two draws per point: the unbiased estimator averages to the CRPS; the plug-in (V-statistic)
    # one would be off by E|X − X'| / 4 = 1 / (2 sqrt(pi)) ≈ 0.28 here
    g = torch.Generator().manual_seed(0)
    n = 200_000
    mu, sigma = 0.3, 1.5
    y = torch.randn(1, 1, n, generator=g, dtype=torch.float64)
    draws = mu + sigma * torch.randn(2, 1, 1, n, generator=g, dtype=torch.float64)
    scores = sample_crps(draws, y)
    expected = gaussian_crps(torch.tensor(mu), torch.tensor(sigma), y)
    error = (scores - expected).mean().item()
    assert abs(error) < 4 * (scores - expected).std().item() / math.sqrt(n)


def test_sample_crps_with_many_draws_matches_the_closed_form_pointwise():
    g = torch.Generator().manual_seed(1)
    mu = torch.linspace(-1, 1, 8, dtype=torch.float64).view(2, 1, 4)
    sigma = torch.linspace(0.5, 2, 8, dtype=torch.float64).view(2, 1, 4)
    y = torch.randn(2, 1, 4, generator=g, dtype=torch.float64)
    draws = mu + sigma * torch.randn(20_000, 2, 1, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sample_crps(draws, y), gaussian_crps(mu, sigma, y), rtol=0, atol=0.02)


def test_sample_crps_sorted_pair_sum_equals_the_definition():
    g = torch.Generator().manual_seed(2)
    draws = torch.randn(5, 3, 2, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    m = draws.shape[0]
    pairs = sum((draws[i] - draws[j]).abs() for i in range(m) for j in range(m) if i != j)
    expected = (draws - y).abs().mean(0) - pairs / (2 * m * (m - 1))
    torch.testing.assert_close(sample_crps(draws, y), expected, rtol=1e-12, atol=1e-12)


def test_energy_score_of_a_point_mass_is_the_rms_distance_and_matches_crps_in_one_dimension():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    point_mass = z.expand(4, 3, 2, 5)
    torch.testing.assert_close(sample_energy_score(point_mass, y), (z - y).square().mean((1, 2)).sqrt())
    torch.testing.assert_close(relative_energy_score(point_mass, y), relative_l2(z, y))
    scalars = torch.randn(6, 3, 1, 1, generator=g, dtype=torch.float64)  # one point: ES is the CRPS
    torch.testing.assert_close(sample_energy_score(scalars, y[:, :1, :1]), sample_crps(scalars, y[:, :1, :1]).flatten())


def test_energy_score_is_unbiased_for_isotropic_gaussian_fields():
    # X ~ N(y, s² I_d), RMS norm: E‖X − y‖ = s · c_d, E‖X − X'‖ = sqrt(2) s · c_d with
    # c_d = sqrt(2 / d) Γ((d + 1) / 2) / Γ(d / 2); two draws per field
    g = torch.Generator().manual_seed(4)
    n, d, s = 100_000, 6, 0.7
    y = torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    draws = y + s * torch.randn(2, n, 1, d, generator=g, dtype=torch.float64)
    c_d = math.sqrt(2.0 / d) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    scores = sample_energy_score(draws, y)
    assert abs(scores.mean().item() - s * c_d * (1 - math.sqrt(2) / 2)) < 4 * scores.std().item() / math.sqrt(n)


def test_relative_crps_divides_by_the_mean_absolute_target():
    draws = torch.tensor([1.0, 3.0]).expand(2, 1, 1, 2)  # a point mass at the field (1, 3): CRPS = |X − y|
    assert relative_crps(draws, torch.tensor([[[2.0, 2.0]]])).item() == pytest.approx(1.0 / 2.0)
    assert relative_crps(draws, torch.tensor([[[4.0, 0.0]]])).item() == pytest.approx(3.0 / 2.0)


@pytest.mark.parametrize(
    "draws, y, match",
    [(torch.zeros(1, 2, 1, 4), torch.zeros(2, 1, 4), "draws"), (torch.zeros(3, 2, 1, 4), torch.zeros(2, 1, 5), "y")],
)
def test_scores_check_their_shapes(draws, y, match):
    for score in (sample_crps, sample_energy_score):
        with pytest.raises(ValueError, match=match):
            score(draws, y)


# --- dropout copies and MC dropout ---------------------------------------------------------------


def test_dropout_copy_of_an_fno_keeps_weights_normalisers_and_the_eval_output(problem):
    model, _, (x_test, _) = problem
    copy = dropout_copy(model, 0.2)
    assert isinstance(copy, NormalizedOperator) and copy.operator.config["dropout"] == 0.2
    assert model.operator.config["dropout"] == 0.0  # the given model is untouched
    assert torch.equal(copy.y_normalizer.mean, model.y_normalizer.mean)
    with torch.no_grad():
        assert torch.equal(copy.eval()(x_test), model(x_test))
    draws = stochastic_passes(copy, x_test, 3)
    assert draws.shape == (3, *x_test.shape) and not torch.allclose(draws[0], draws[1])
    assert not copy.training  # modes are restored after the passes
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        stochastic_passes(copy, x_test, 0)


def test_projection_dropout_leaves_the_features_deterministic_and_the_mask_mean_exact(problem):
    model, _, (x_test, _) = problem
    copy = dropout_copy(model, 0.3, layers="projection")
    assert copy.operator.config["dropout_layers"] == "projection"
    operator, z = copy.operator, copy.x_normalizer.encode(x_test)
    torch.manual_seed(0)
    draws = stochastic_passes(copy, x_test, 4000)
    with torch.no_grad():
        hidden = operator.act(operator.projection_hidden(operator.features(z)))  # the readout's input, no mask
        operator.train()
        assert torch.equal(operator.features(z), operator.eval().features(z))  # no dropout before the projection
        expected = copy.eval()(x_test)
    # the readout is linear in the mask: the pass mean tends to the dropout-free output
    weight = operator.projection_out.weight.reshape(-1)  # (projection_channels,) for one output channel
    mask_variance = 0.3 / 0.7 * torch.einsum("c,bcx->bx", weight**2, hidden**2).unsqueeze(1)
    scale = copy.y_normalizer.std.reshape(1, -1, 1)
    standard_error = (mask_variance.sqrt() * scale) / math.sqrt(4000)
    assert ((draws.mean(0) - expected).abs() < 5 * standard_error + 1e-6).all()
    torch.testing.assert_close(draws.var(0), mask_variance * scale**2, rtol=0.15, atol=1e-6)
    torch.manual_seed(1)
    shared_trunk = stochastic_passes(copy, x_test, 3)  # the trunk once, the projection three times
    torch.manual_seed(1)
    with torch.no_grad():
        copy.train()
        whole = torch.stack([copy(x_test) for _ in range(3)])  # three whole passes
    torch.testing.assert_close(shared_trunk, whole, rtol=1e-6, atol=1e-6)
    copy.operator.cpu_chunk_bytes = 1  # one sample per chunk: the same draws (masks drawn for the whole batch)
    assert copy.operator.chunk_size(x_test) == 1 < len(x_test)
    torch.manual_seed(1)
    torch.testing.assert_close(stochastic_passes(copy, x_test, 3), whole, rtol=1e-6, atol=1e-6)
    all_layers = dropout_copy(model, 0.3)
    with torch.no_grad():
        all_layers.operator.train()
        assert not torch.equal(all_layers.operator.features(z), all_layers.operator.features(z))


def test_dropout_copy_of_another_model_needs_dropout_layers():
    with pytest.raises(ValueError, match="model: Sequential is not an FNO and contains no dropout layers"):
        dropout_copy(nn.Sequential(nn.Conv1d(1, 4, 1), nn.GELU(), nn.Conv1d(4, 1, 1)), 0.1)
    with_dropout = nn.Sequential(nn.Conv1d(1, 4, 1), nn.GELU(), nn.Dropout(0.5), nn.Conv1d(4, 1, 1))
    copy = dropout_copy(with_dropout, 0.1)
    assert copy[2].p == 0.1 and with_dropout[2].p == 0.5
    with pytest.raises(ValueError, match="p: expected a dropout probability"):
        dropout_copy(with_dropout, 0.0)
    with pytest.raises(ValueError, match="layers: Sequential is not an FNO"):
        dropout_copy(with_dropout, 0.1, layers="projection")
    with pytest.raises(ValueError, match="layers: expected one of"):
        dropout_copy(with_dropout, 0.1, layers="fourier")
    with pytest.raises(ValueError, match="dropout_layers: expected one of"):
        FNO(1, 1, (4,), dropout=0.1, dropout_layers="fourier")


def test_mc_dropout_with_zero_epochs_uses_the_trained_weights(problem):
    model, loader, (x_test, _) = problem
    posterior = uq.fit("mc_dropout", model, loader, p=0.1, epochs=0, samples=16)
    assert isinstance(posterior, DropoutPosterior) and posterior.method == "mc_dropout"
    for name, value in model.state_dict().items():
        assert torch.equal(posterior.model.state_dict()[name], value)
    torch.manual_seed(0)
    prediction = posterior.predict(x_test)
    assert prediction.centers.shape == (16, *x_test.shape)
    spread = prediction.centers.var(0, correction=0)
    assert (spread > 0).float().mean() > 0.99  # dropout makes every point random
    x, y = loader[0]
    with torch.no_grad():  # per channel, the mean squared residual of the weight-scaled (trained) pass
        residual = (model(x) - y).square().mean(dim=(0, 2), keepdim=True)
    assert posterior.noise.shape == (1, 1, 1)
    torch.testing.assert_close(posterior.noise, residual, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(prediction.variance, spread + posterior.noise)
    summary = json.loads(json.dumps(posterior.summary()))
    assert summary["train_losses"] == [] and summary["samples"] == 16 and summary["p"] == 0.1


def test_readout_dropout_predictions_are_recentred_on_the_exact_mask_mean(problem):
    model, loader, (x_test, _) = problem
    posterior = uq.fit("mc_dropout", model, loader)  # defaults: post hoc, dropout before the read-out
    assert posterior.summary()["layers"] == "projection" and posterior.summary()["epochs"] == 0
    torch.manual_seed(3)
    prediction = posterior.predict(x_test)
    with torch.no_grad():
        torch.testing.assert_close(prediction.mean, model(x_test), rtol=1e-5, atol=1e-6)
    torch.manual_seed(posterior.seed)  # predict's first call draws its masks from the posterior's seed
    passes = stochastic_passes(posterior.model, x_test, 32)
    torch.testing.assert_close(prediction.variance, passes.var(0) + posterior.noise, rtol=1e-4, atol=1e-7)
    assert not posterior.model.training  # modes restored after the weight-scaled pass


def test_mc_dropout_fine_tunes_a_copy_reproducibly(problem):
    model, loader, (x_test, _) = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fits = [fit_mc_dropout(model, loader, epochs=3, samples=8, seed=1) for _ in range(2)]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(fits[0].summary()["train_losses"]) == 3
    torch.testing.assert_close(fits[0].noise, fits[1].noise, rtol=0, atol=0)
    predictions = []
    for posterior in fits:
        torch.manual_seed(2)
        predictions.append(posterior.predict(x_test).centers)
    assert torch.equal(predictions[0], predictions[1])
    # the noise is the fine-tuned copy's mean squared residual with dropout off (weight scaling)
    x, y = loader[0]
    copy = fits[0].model
    training = copy.training
    with torch.no_grad():
        residual = (copy.eval()(x) - y).square().mean(dim=(0, 2), keepdim=True)
    copy.train(training)
    torch.testing.assert_close(fits[0].noise, residual, rtol=1e-5, atol=1e-9)
    assert 0.5 * SIGMA**2 < fits[0].noise.item() < 2 * SIGMA**2  # of the order of the true noise
    with torch.no_grad():
        assert relative_l2(predictions[0].mean(0), model(x_test)) < 0.1


# --- probabilistic neural operator -----------------------------------------------------------------


@pytest.mark.parametrize("score, layers", [("energy", "projection"), ("crps", "projection"), ("energy", "all")])
def test_pno_learns_the_noise_level_of_the_data(problem, score, layers):
    model, loader, (x_test, y_test) = problem
    untrained = fit_pno(model, loader, score=score, layers=layers, epochs=0, samples=32)
    trained = uq.fit("pno", model, loader, score=score, layers=layers, epochs=60, lr=5e-2, samples=32)
    torch.manual_seed(0)
    before = untrained.predict(x_test).std.mean().item()
    prediction = trained.predict(x_test)
    after = prediction.std.mean().item()
    assert before < 0.5 * SIGMA  # the deterministic operator with dropout: little spread
    assert 0.5 * SIGMA < after < 2 * SIGMA  # the PNO's spread approaches the noise std
    assert (prediction.noise == 0).all()
    if layers == "all":  # its mean is learned; it stays about as accurate as the deterministic operator
        with torch.no_grad():
            assert relative_l2(prediction.mean, y_test) < 1.1 * relative_l2(model(x_test), y_test)
    summary = trained.summary()
    assert summary["score"] == score and len(summary["train_losses"]) == 60 and summary["noise"] == [0.0]


def test_projection_pno_keeps_the_trained_mean_and_trunk(problem):
    model, loader, (x_test, _) = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    posterior = fit_pno(model, loader, epochs=20, lr=5e-2, samples=16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    trained = posterior.model.operator.state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, before["operator." + k])}
    # the score trained the projection (not the read-out's bias, which cancels), not the trunk
    assert changed == {"projection_hidden.weight", "projection_hidden.bias", "projection_out.weight"}
    prediction = posterior.predict(x_test)
    with torch.no_grad():
        torch.testing.assert_close(prediction.mean, model(x_test), rtol=1e-5, atol=1e-5)
        # the training draws, dropout off: every deviation vanishes and what is left is the trained output
        centred = _passes(posterior.model.eval(), x_test, 2, normalized_parts(posterior.center)[0])
        torch.testing.assert_close(centred, model(x_test).expand_as(centred), rtol=1e-5, atol=1e-5)
    assert 0.5 * SIGMA < prediction.std.mean() < 2 * SIGMA


@pytest.mark.parametrize(
    "kwargs, match",
    [({"score": "nll"}, "score"), ({"train_samples": 1}, "train_samples"), ({"samples": 1}, "samples"),
     ({"p": 1.0}, "p"), ({"epochs": -1}, "epochs")],
)
def test_bad_pno_options_name_the_argument(problem, kwargs, match):
    model, loader, _ = problem
    with pytest.raises(ValueError, match=match):
        fit_pno(model, loader, **kwargs)


def test_prediction_masks_follow_the_seed_and_leave_the_callers_stream_alone(problem):
    model, loader, (x_test, _) = problem
    first = uq.fit("mc_dropout", model, loader, samples=8, seed=3)
    second = uq.fit("mc_dropout", model, loader, samples=8, seed=3)
    other = uq.fit("mc_dropout", model, loader, samples=8, seed=4)
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a, b = first.predict(x_test), first.predict(x_test)  # calls 0 and 1: masks from seeds 3 and 4
    assert torch.equal(torch.rand(2), expected)  # the caller's stream is untouched
    assert torch.equal(a.centers, second.predict(x_test).centers)  # the same seed repeats a run exactly
    assert not torch.equal(a.centers, b.centers)
    assert torch.equal(b.centers, other.predict(x_test).centers)
