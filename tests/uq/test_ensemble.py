"""The shared UQ training loop and deep ensembles: training works, members are seeded, mixture and noise formulas."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from probneural import uq
from probneural.data.grf import grf_periodic
from probneural.data.normalizer import ChannelNormalizer
from probneural.operators import FNO
from probneural.train.losses import relative_l2
from probneural.train.normalized import NormalizedOperator
from probneural.train.trainer import NonFiniteLossError
from probneural.uq.ensemble import EnsemblePosterior, fit_ensemble, reinitialised_copy
from probneural.uq.training import train_operator

GRID = 32


def smoothing_problem(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``x`` a periodic GRF `(n, 1, 32)`; ``y`` `(n, 2, 32)`: two linear smoothings of ``x`` plus offsets."""
    x = grf_periodic(n, GRID, alpha=2.5, tau=3.0, seed=seed, dtype=torch.float32).unsqueeze(1) * 10.0
    k = torch.fft.rfftfreq(GRID, d=1.0 / GRID)
    spectrum = torch.fft.rfft(x)
    smooth = torch.fft.irfft(spectrum / (1 + (k / 3) ** 2), n=GRID)
    smoother = torch.fft.irfft(spectrum / (1 + (k / 2) ** 4), n=GRID)
    return x, torch.cat([1.0 + smooth, 2.0 * smoother - 1.0], dim=1)


@pytest.fixture(scope="module")
def problem():
    """A trained tiny FNO (normalised), its training batches and held-out data."""
    x, y = smoothing_problem(64, seed=0)
    torch.manual_seed(0)
    operator = FNO(1, 2, (4,), width=8, n_layers=2, projection_channels=16, positional_grid="periodic")
    model = NormalizedOperator(operator, ChannelNormalizer.fit(x), ChannelNormalizer.fit(y))
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    history = train_operator(model, loader, epochs=40, lr=1e-2)
    return model.eval(), loader, history, smoothing_problem(16, seed=1)


def test_train_operator_learns_a_smoothing_operator(problem):
    model, _, history, (x_test, y_test) = problem
    assert len(history) == 40
    assert history[-1] < 0.15 * history[0]
    with torch.no_grad():
        assert relative_l2(model(x_test), y_test) < 0.05


def test_train_operator_is_seeded_and_leaves_the_global_rng_alone(problem):
    _, loader, _, (x_test, _) = problem
    runs = []
    for _ in range(2):
        torch.manual_seed(5)  # the same initialisation, then training draws dropout masks from `seed`
        model = FNO(1, 2, (4,), width=4, n_layers=1, projection_channels=8, dropout=0.3)
        state = torch.get_rng_state()
        runs.append((train_operator(model, loader, epochs=2, lr=1e-2, seed=3), model.eval()(x_test)))
        assert torch.equal(torch.get_rng_state(), state)
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_train_operator_restores_the_mode_and_stops_on_a_non_finite_loss(problem):
    _, loader, _, _ = problem
    model = FNO(1, 2, (4,), width=4, n_layers=1, projection_channels=8).eval()
    train_operator(model, loader, epochs=1, lr=1e-3)
    assert not model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        train_operator(model, loader, epochs=1, lr=1e-3, loss=lambda pred, y: pred.sum() * float("nan"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, match",
    [({"epochs": -1}, "epochs"), ({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay"),
     ({"loss": "rel_l2"}, "loss"), ({"seed": -1}, "seed")],
)
def test_train_operator_rejects_bad_options(kwargs, match):
    model = FNO(1, 1, (2,), width=2, n_layers=1, projection_channels=2)
    with pytest.raises(ValueError, match=match):
        train_operator(model, [], **({"epochs": 1, "lr": 1e-3} | kwargs))
    with pytest.raises(ValueError, match="loader"):
        train_operator(model, [], epochs=1, lr=1e-3)


def test_reinitialised_copy_is_fresh_seeded_and_keeps_the_normalisers(problem):
    model, _, _, _ = problem
    state = torch.get_rng_state()
    first, again, other = (reinitialised_copy(model, seed) for seed in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(first, NormalizedOperator) and first.operator.config == model.operator.config
    assert torch.equal(first.y_normalizer.std, model.y_normalizer.std)
    assert first.y_normalizer is not model.y_normalizer
    weights = lambda m: torch.cat([p.flatten() for p in m.parameters()])  # noqa: E731
    assert torch.equal(weights(first), weights(again))
    assert not torch.allclose(weights(first), weights(other))
    assert not torch.allclose(weights(first), weights(model))


def test_reinitialised_copy_of_an_unregistered_model_resets_its_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 1), nn.GELU(), nn.Conv1d(4, 1, 1))
    fresh = reinitialised_copy(model, seed=1)
    torch.manual_seed(1)
    expected = nn.Sequential(nn.Conv1d(1, 4, 1), nn.GELU(), nn.Conv1d(4, 1, 1))  # same draws as a reset
    for got, want in zip(fresh.parameters(), expected.parameters()):
        assert torch.equal(got, want)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 1, 1)
            self.scale = nn.Parameter(torch.ones(()))

    with pytest.raises(ValueError, match=r"model: cannot re-initialise Scaled: parameters \['scale'\]"):
        reinitialised_copy(Scaled(), seed=0)


@pytest.fixture(scope="module")
def ensemble(problem):
    model, loader, _, _ = problem
    return fit_ensemble(model, loader, members=3, epochs=6, lr=1e-2, seed=0)


def test_predict_leaves_the_callers_model_in_its_mode(problem, ensemble):
    model, _, _, (x_test, _) = problem
    model.train()
    model.operator.projection_hidden.eval()  # a mixed state, restored module by module
    ensemble.predict(x_test)
    assert model.training and not model.operator.projection_hidden.training and model.operator.lifting.training
    model.eval()


def test_members_differ_and_the_mixture_averages_them(problem, ensemble):
    model, _, _, (x_test, _) = problem
    prediction = ensemble.predict(x_test)
    assert isinstance(prediction, uq.MixturePrediction) and prediction.centers.shape == (3, 16, 2, GRID)
    with torch.no_grad():
        members = torch.stack([member.eval()(x_test) for member in ensemble.members])
        assert torch.equal(members[0], model(x_test))  # include_model: member 0 is the given model
    torch.testing.assert_close(prediction.mean, members.mean(0))
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(members[i], members[j], atol=1e-3)
    assert (prediction.variance >= members.var(0, correction=0)).all()


def test_noise_is_the_mean_squared_residual_of_the_ensemble_mean_per_channel(ensemble, problem):
    _, loader, _, _ = problem
    x = torch.cat([batch[0] for batch in loader])
    y = torch.cat([batch[1] for batch in loader])
    with torch.no_grad():
        mean = torch.stack([member(x) for member in ensemble.members]).mean(0)
    expected = (mean - y).square().mean(dim=(0, 2), keepdim=True)
    assert ensemble.noise.shape == (1, 2, 1)
    torch.testing.assert_close(ensemble.noise, expected, rtol=1e-5, atol=1e-9)
    assert (ensemble.predict(x[:2]).noise == ensemble.noise.expand(2, 2, GRID)).all()


def test_summary_is_json_and_reports_members_noise_and_losses(ensemble):
    summary = json.loads(json.dumps(ensemble.summary()))
    assert summary["members"] == 3 and len(summary["noise"]) == 2
    assert summary["train_losses"][0] == []  # the given model was not retrained
    assert [len(losses) for losses in summary["train_losses"][1:]] == [6, 6]
    assert all(losses[-1] < losses[0] for losses in summary["train_losses"][1:])


def test_equal_seeds_give_equal_ensembles_and_include_model_false_trains_every_member(problem, ensemble):
    model, loader, _, (x_test, _) = problem
    fitted = [uq.fit("ensemble", model, loader, members=2, epochs=2, lr=1e-2, include_model=False, seed=s)
              for s in (1, 1, 2)]
    centers = [post.predict(x_test).centers for post in fitted]
    assert isinstance(fitted[0], EnsemblePosterior) and fitted[0].method == "ensemble"
    assert torch.equal(centers[0], centers[1])
    assert not torch.allclose(centers[0], centers[2])
    assert all(member is not model for member in fitted[0].members)
    assert [len(losses) for losses in fitted[0].train_losses] == [2, 2]


def test_members_train_with_the_loss_asked_for(problem):
    # member 1 (seed 1) trained for one epoch: its first reported loss is that epoch's mean of the named loss
    model, loader, _, _ = problem
    fitted = {name: uq.fit("ensemble", model, loader, members=2, epochs=1, lr=1e-2, loss=name, seed=0)
              for name in ("rel_l2", "rel_h1")}
    l2, h1 = (fitted[name].train_losses[1][0] for name in ("rel_l2", "rel_h1"))
    assert h1 > l2 > 0  # the H1 seminorm adds the (larger) relative error of the derivatives


def test_parallel_processes_match_sequential_training(problem):
    model, loader, _, (x_test, _) = problem
    options = dict(members=3, epochs=2, lr=1e-2, seed=4)
    sequential = fit_ensemble(model, loader, processes=1, **options)
    parallel = fit_ensemble(model, loader, processes=2, **options)
    torch.testing.assert_close(parallel.predict(x_test).centers, sequential.predict(x_test).centers,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parallel.noise, sequential.noise, rtol=1e-4, atol=1e-7)
    assert parallel.members[0] is model


@pytest.mark.parametrize(
    "kwargs, match",
    [({"members": 0}, "members"), ({"epochs": 0}, "epochs"), ({"processes": 0}, "processes"),
     ({"lr": -1.0}, "lr"), ({"seed": -2}, "seed")],
)
def test_bad_ensemble_options_name_the_argument(problem, kwargs, match):
    model, loader, _, _ = problem
    with pytest.raises(ValueError, match=match):
        fit_ensemble(model, loader, **kwargs)


def test_members_trained_elsewhere_join_from_their_checkpoints(problem, tmp_path):
    from probneural.train.checkpoint import save_checkpoint
    from probneural.train.trainer import _model_meta

    model, loader, _, (x_test, _) = problem
    other = reinitialised_copy(model, seed=7)
    train_operator(other, loader, epochs=2, lr=1e-2)
    save_checkpoint(tmp_path / "checkpoints", 2, model=other, model_meta=_model_meta(other))
    posterior = fit_ensemble(model, loader, members=2, member_runs=[tmp_path])
    with torch.no_grad():
        expected = torch.stack([model.eval()(x_test), other.eval()(x_test)])
    torch.testing.assert_close(posterior.predict(x_test).centers, expected)
    assert posterior.train_losses == [[], []]
    with pytest.raises(ValueError, match="members"):
        fit_ensemble(model, loader, members=1, member_runs=[tmp_path])
