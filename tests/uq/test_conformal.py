"""Split conformal bands: finite-sample coverage on exchangeable data, exact order statistics, resolution, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from probneural import uq
from probneural.uq.conformal import (
    ConformalPosterior, ConformalPrediction, check_calibration_size, conformal_rank, fit_conformal,
)
from probneural.uq.prediction import GaussianPrediction, MixturePrediction, normal_quantile

GRID = 16
N_CAL = 49  # k = ⌈50 · 0.9⌉ = 45: pointwise coverage exactly 45/50 in expectation at alpha = 0.1
N_TEST = 20
TRIALS = 300
ALPHA = 0.1


class Imperfect(nn.Module):
    """A fixed, biased point predictor ``0.6 x`` of ``y = sin(x) + 0.5 x + noise`` (dropout: eval mode matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.6, dtype=torch.float64))
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.gain * x)


class FixedSigma(uq.Posterior):
    """A deliberately wrong posterior: ``N(model(x), sigma²)`` at every point."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        self.model = model.eval()
        self.sigma = sigma

    def predict(self, x: Tensor) -> GaussianPrediction:
        with torch.no_grad():
            mean = self.model(x)
        return GaussianPrediction(mean, torch.full_like(mean, self.sigma**2))


def synthetic(shape: tuple[int, ...], generator: torch.Generator, grid: int = GRID) -> tuple[Tensor, Tensor]:
    """Exchangeable 1-D fields `(*shape, 1, grid)`: a random Fourier mode and heteroscedastic noise."""
    t = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    a, b = torch.randn(2, *shape, 1, 1, generator=generator, dtype=torch.float64)
    x = a * torch.sin(2 * math.pi * t) + b * torch.cos(2 * math.pi * t)
    noise = (0.1 + 0.4 * t) * (1.0 + 0.5 * x.abs()) * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return x, torch.sin(x) + 0.5 * x + noise


def coverage_trials(model: nn.Module | uq.Posterior) -> dict[str, Tensor]:
    """Per-trial coverages `(TRIALS,)` over fresh i.i.d. calibration (49) and test (20) sets."""
    generator = torch.Generator().manual_seed(0)
    x, y = synthetic((TRIALS, N_CAL + N_TEST), generator)
    out: dict[str, list[float]] = {"point": [], "point_0.2": [], "function": [], "raw": []}
    for i in range(TRIALS):
        post = fit_conformal(model, [(x[i, :N_CAL], y[i, :N_CAL])], alpha=ALPHA)
        pred = post.predict(x[i, N_CAL:])
        y_test = y[i, N_CAL:]
        for key, alpha in (("point", ALPHA), ("point_0.2", 0.2)):
            lo, hi = pred.interval(alpha)
            out[key].append(((lo <= y_test) & (y_test <= hi)).double().mean().item())
        lo, hi = pred.simultaneous_interval(ALPHA)
        out["function"].append(((lo <= y_test) & (y_test <= hi)).flatten(1).all(1).double().mean().item())
        if isinstance(model, uq.Posterior):
            lo, hi = model.predict(x[i, N_CAL:]).interval(ALPHA)
            out["raw"].append(((lo <= y_test) & (y_test <= hi)).double().mean().item())
    return {key: torch.tensor(values) for key, values in out.items() if values}


@pytest.fixture(scope="module")
def point_trials() -> dict[str, Tensor]:
    return coverage_trials(Imperfect())


@pytest.fixture(scope="module")
def posterior_trials() -> dict[str, Tensor]:
    return coverage_trials(FixedSigma(Imperfect(), sigma=0.05))


def mean_and_se(values: Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


@pytest.mark.parametrize("base", ["point", "posterior"])
@pytest.mark.parametrize("alpha", [ALPHA, 0.2])
def test_pointwise_coverage_is_within_the_conformal_bounds(base, alpha, point_trials, posterior_trials):
    trials = point_trials if base == "point" else posterior_trials
    mean, se = mean_and_se(trials["point" if alpha == ALPHA else "point_0.2"])
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 1 / (N_CAL + 1) + 3 * se


@pytest.mark.parametrize("base", ["point", "posterior"])
def test_function_level_coverage_holds(base, point_trials, posterior_trials):
    trials = point_trials if base == "point" else posterior_trials
    mean, se = mean_and_se(trials["function"])
    # point predictor: the quantile uses the 25 functions after the scale split, 1/(25 + 1) slack
    n = N_CAL - round(0.5 * N_CAL) if base == "point" else N_CAL
    assert 1 - ALPHA - 3 * se <= mean <= 1 - ALPHA + 1 / (n + 1) + 3 * se


def test_wrong_posterior_is_repaired(posterior_trials):
    raw, raw_se = mean_and_se(posterior_trials["raw"])
    assert raw < 1 - ALPHA - 20 * raw_se  # σ = 0.05 is far too small: its own interval undercovers
    mean, se = mean_and_se(posterior_trials["point"])
    assert mean >= 1 - ALPHA - 3 * se


def calibrated(n: int = N_CAL, seed: int = 1) -> tuple[Imperfect, Tensor, Tensor, ConformalPosterior]:
    x, y = synthetic((n,), torch.Generator().manual_seed(seed))
    model = Imperfect()
    return model, x, y, fit_conformal(model, [(x[:20], y[:20]), (x[20:], y[20:])], alpha=ALPHA)


def test_bands_are_the_conformal_order_statistics():
    model, x, y, post = calibrated()
    r = (y - 0.6 * x).abs()
    k = conformal_rank(N_CAL, ALPHA)
    assert k == 45
    q = r.sort(0).values[k - 1]
    x_test, _ = synthetic((3,), torch.Generator().manual_seed(2))
    pred = post.predict(x_test)
    assert isinstance(pred, ConformalPrediction)
    torch.testing.assert_close(pred.mean, 0.6 * x_test)  # eval mode: no dropout
    lo, hi = pred.interval(ALPHA)
    torch.testing.assert_close(hi - pred.mean, q.expand_as(hi))
    torch.testing.assert_close(pred.mean - lo, q.expand_as(lo))
    # function level: s = mean |r| over the first 24, q̂ = the ⌈26 · 0.9⌉ = 24th smallest of the last 25
    s = r[:24].mean(0)
    q_hat = (r[24:] / s).flatten(1).amax(1).sort().values[conformal_rank(25, ALPHA) - 1]
    lo, hi = pred.simultaneous_interval(ALPHA, n_samples=7)
    torch.testing.assert_close(hi - pred.mean, (q_hat * s).expand_as(hi))
    # everything else is N(μ, κ²) with κ = q / z: its Gaussian interval at alpha is the band
    z = normal_quantile(1 - ALPHA / 2).item()
    torch.testing.assert_close(pred.variance, (q / z).square().expand_as(hi))
    gaussian = GaussianPrediction(pred.mean, pred.variance)
    torch.testing.assert_close(gaussian.interval(ALPHA), pred.interval(ALPHA))
    y_test = torch.zeros_like(x_test)
    torch.testing.assert_close(pred.crps(y_test), gaussian.crps(y_test))
    assert pred.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 3, 1, GRID)
    summary = post.summary()
    assert {key: summary.pop(key) for key in ("base", "n_calibration", "n_scale", "alpha", "resolution")} == {
        "base": "Imperfect", "n_calibration": N_CAL, "n_scale": 24, "alpha": ALPHA, "resolution": [GRID]
    }
    assert summary == pytest.approx({
        "mean_quantile": q.mean().item(), "function_quantile": q_hat.item(), "mean_half_width": q.mean().item(),
        "mean_simultaneous_half_width": (q_hat * s).mean().item(),
    })


def test_mixture_base_is_rescaled_about_its_mean():
    x, y = synthetic((N_CAL,), torch.Generator().manual_seed(3))
    model = Imperfect().eval()

    class Ensemble(uq.Posterior):
        def predict(self, x: Tensor) -> MixturePrediction:
            centers = torch.stack([model(x) + 0.1 * shift for shift in (-1.0, 0.0, 2.0)])
            return MixturePrediction(centers, noise=0.01)

    base = Ensemble()
    post = uq.fit("conformal", base, [(x, y)], alpha=0.2)
    assert post.method == "conformal" and post.fit_seconds >= 0
    calibration = base.predict(x)
    r = (y - calibration.mean).abs() / calibration.std
    q = r.sort(0).values[conformal_rank(N_CAL, 0.2) - 1]
    kappa = q / normal_quantile(0.9).item()
    base_pred, pred = base.predict(x[:4]), post.predict(x[:4])
    assert isinstance(pred.scaled, MixturePrediction)
    torch.testing.assert_close(pred.mean, base_pred.mean)
    torch.testing.assert_close(pred.variance, kappa.square() * base_pred.variance)
    lo, hi = pred.interval(0.2)
    torch.testing.assert_close(hi - lo, 2 * q * base_pred.std)
    # function level with s ≡ 1 over all 49 functions
    q_hat = r.flatten(1).amax(1).sort().values[conformal_rank(N_CAL, ALPHA) - 1]
    lo, hi = pred.simultaneous_interval(ALPHA)
    torch.testing.assert_close(hi - pred.mean, q_hat * base_pred.std)


def test_affine_and_select_keep_the_bands_consistent():
    _, _, _, post = calibrated()
    x_test, _ = synthetic((4,), torch.Generator().manual_seed(4))
    pred = post.predict(x_test)
    scale, shift = torch.tensor(-2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    moved = pred.affine(scale, shift)
    lo, hi = pred.interval(0.2)
    lo2, hi2 = moved.interval(0.2)
    torch.testing.assert_close(lo2, scale * hi + shift)
    torch.testing.assert_close(hi2, scale * lo + shift)
    torch.testing.assert_close(moved.variance, 4 * pred.variance)
    slo, shi = pred.simultaneous_interval(ALPHA)
    torch.testing.assert_close(moved.simultaneous_interval(ALPHA)[1], scale * slo + shift)
    numbers = pred.affine(-2.0, 1.0)  # plain numbers, as for the other predictions
    torch.testing.assert_close(numbers.interval(0.2)[0], lo2)
    with pytest.raises(ValueError, match="scale: expected a shape that broadcasts"):
        pred.affine(torch.ones(7, dtype=torch.float64), 0.0)
    picked = pred.select(slice(1, 3))
    torch.testing.assert_close(picked.interval(0.2)[0], lo[1:3])
    torch.testing.assert_close(picked.mean, pred.mean[1:3])


@pytest.mark.parametrize("grid, fine", [((GRID,), (31,)), ((6, GRID), (11, 31))])
def test_resolution_change_interpolates_the_quantile_map(grid, fine):
    """Residuals ``e_i (1 + t)`` make ``q`` and ``s`` linear in ``t``, which linear interpolation keeps exactly."""
    generator = torch.Generator().manual_seed(5)
    e = torch.rand(N_CAL, generator=generator, dtype=torch.float64) + 0.1
    x = torch.randn(N_CAL, 1, *grid, generator=generator, dtype=torch.float64)
    profile = 1.0 + torch.linspace(0.0, 1.0, grid[-1], dtype=torch.float64)
    y = 0.6 * x + e.view(-1, 1, *[1] * len(grid)) * profile
    post = fit_conformal(Imperfect(), [(x, y)], alpha=ALPHA)
    x_fine = torch.randn(2, 1, *fine, dtype=torch.float64)
    pred = post.predict(x_fine)
    fine_profile = 1.0 + torch.linspace(0.0, 1.0, fine[-1], dtype=torch.float64)
    lo, hi = pred.interval(ALPHA)
    q = e.sort().values[conformal_rank(N_CAL, ALPHA) - 1]
    torch.testing.assert_close(hi - pred.mean, (q * fine_profile).expand_as(hi))
    # the function scores are e_i / mean(e_first 24); band q̂ · s(t) = e_(k) of the last 25 · (1 + t)
    q_hat = e[24:].sort().values[conformal_rank(25, ALPHA) - 1]
    lo, hi = pred.simultaneous_interval(ALPHA)
    torch.testing.assert_close(hi - pred.mean, (q_hat * fine_profile).expand_as(hi))


def test_training_mode_is_restored():
    model = Imperfect().train()
    x, y = synthetic((20,), torch.Generator().manual_seed(6))
    post = fit_conformal(model, [(x, y)])
    assert model.training
    post.predict(x)
    assert model.training


def test_errors_name_the_argument():
    model, x, y, post = calibrated()
    with pytest.raises(ValueError, match=r"alpha: 0.01 needs at least 99 .*pointwise.*n = 49"):
        fit_conformal(model, [(x, y)], alpha=0.01)
    with pytest.raises(ValueError, match=r"alpha: .*needs at least 99"):
        post.predict(x).interval(0.01)
    # 0.03 needs 33: enough for the 49 pointwise scores, not for the 25 function scores
    post.predict(x).interval(0.03)
    with pytest.raises(ValueError, match=r"alpha: 0.03 needs at least 33 .*function-level.*n = 25"):
        post.predict(x).simultaneous_interval(0.03)
    with pytest.raises(ValueError, match="alpha: expected a miscoverage level"):
        post.predict(x).interval(1.5)
    with pytest.raises(ValueError, match="loader: expected at least one"):
        fit_conformal(model, [])
    with pytest.raises(ValueError, match=r"y: expected shape \(49, 1, 16\).*got \(49, 2, 16\)"):
        fit_conformal(model, [(x, y.repeat(1, 2, 1))])
    with pytest.raises(ValueError, match="loader: expected every batch on one grid"):
        fit_conformal(model, [(x, y), (x[:, :, :8], y[:, :, :8])])
    with pytest.raises(ValueError, match="loader: y contains NaN"):
        fit_conformal(model, [(x, torch.where(x > 1, float("nan"), y))])
    with pytest.raises(ValueError, match="scale_split: expected a fraction"):
        fit_conformal(model, [(x, y)], scale_split=1.0)
    with pytest.raises(ValueError, match="scale_split: 0.01 of n = 49 .* 0 for the scale"):
        fit_conformal(model, [(x, y)], scale_split=0.01)
    with pytest.raises(ValueError, match="model: expected a Posterior or an nn.Module; got function"):
        fit_conformal(lambda x: x, [(x, y)])
    with pytest.raises(ValueError, match=r"x: expected inputs whose predictions have 1 channel"):
        post.predict(x.repeat(1, 2, 1))
    with pytest.raises(KeyError, match="conformal"):
        uq.fit("conformall", model, [(x, y)])


def test_the_calibration_size_is_checked_against_every_level_before_any_data():
    # 19 functions: the pointwise band reaches alpha = 0.05 (rank 19 of 19); a point predictor's function-level
    # band has 19 - round(0.5 · 19) = 9 of them, enough for 0.1 (rank 9) but not for 0.05
    assert check_calibration_size(19, [0.1, 0.05], scale_split=0.5, on_posterior=True) == 0
    assert check_calibration_size(19, [0.1], scale_split=0.5, on_posterior=False) == 10
    with pytest.raises(ValueError, match=r"alpha: 0.05 needs at least 19 calibration functions for the "
                                         r"function-level band .* got n = 9"):
        check_calibration_size(19, [0.1, 0.05], scale_split=0.5, on_posterior=False)
    with pytest.raises(ValueError, match=r"alpha: 0.04 needs at least 24 calibration functions for the pointwise"):
        check_calibration_size(19, [0.04], scale_split=0.5, on_posterior=True)
    with pytest.raises(ValueError, match=r"scale_split: 0.99 of n = 19 calibration functions gives 19 for the scale"):
        check_calibration_size(19, [0.5], scale_split=0.99, on_posterior=False)


def test_a_point_predictor_gets_inputs_in_its_own_dtype():
    from probneural.operators import FNO

    torch.manual_seed(0)
    operator = FNO(1, 1, [2], width=4, n_layers=1)  # float32, which names a float64 input
    x = torch.randn(24, 1, 8, dtype=torch.float64)
    y = x + 0.1 * torch.randn(x.shape, dtype=torch.float64)
    posterior = fit_conformal(operator, [(x[:12], y[:12]), (x[12:], y[12:])], alpha=ALPHA)
    with torch.no_grad():
        torch.testing.assert_close(posterior.predict(x).mean, operator(x.float()))


def test_levels_beyond_the_calibration_set_are_nan_in_the_calibration_curve_not_a_crash():
    # 12 functions: the 95 % band needs rank ⌈(n + 1) · 0.95⌉ <= n, i.e. n >= 19
    x, y = synthetic((12,), torch.Generator().manual_seed(1))
    pred = fit_conformal(Imperfect(), [(x, y)], alpha=0.2).predict(x)
    levels, observed = uq.calibration_curve(pred, y)
    missing = torch.isnan(observed)
    assert missing[-1] and not missing[levels <= 0.5].any()
    scores = uq.evaluate(pred, y, alpha=0.2)
    assert scores["calibration_error"] == pytest.approx((observed - levels).abs()[~missing].mean().item())


def test_a_level_the_band_cannot_give_is_its_own_error_and_other_errors_still_raise():
    x, y = synthetic((12,), torch.Generator().manual_seed(1))
    pred = fit_conformal(Imperfect(), [(x, y)], alpha=0.2).predict(x)
    with pytest.raises(uq.prediction.LevelUnavailableError, match="alpha: 0.05 needs at least 19"):
        pred.interval(0.05)
    with pytest.raises(ValueError, match="y:") as caught:  # not a level: the curve does not turn it into NaN
        uq.calibration_curve(pred, y[..., :-1])
    assert not isinstance(caught.value, uq.prediction.LevelUnavailableError)
