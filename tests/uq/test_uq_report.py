"""The UQ report: scores and figures of a hand-made posterior; method specs checked before any work."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from probneural import uq
from probneural.data import OperatorDataset
from probneural.operators import FNO
from probneural.uq.prediction import GaussianPrediction
from probneural.uq.report import SCORES, UQSpec, run_uq, summary_lines, write_uq_report


class Known(uq.Posterior):
    """``y ~ N(x, sigma²)`` at every point: the exact predictive of :func:`noisy` data."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma
        self.method = "known"
        self.fit_seconds = 0.5

    def predict(self, x: Tensor) -> GaussianPrediction:
        return GaussianPrediction(x.clone(), torch.full_like(x, self.sigma**2))

    def summary(self) -> dict:
        return {"sigma": self.sigma}


def noisy(n: int, spatial: tuple[int, ...], sigma: float, seed: int) -> OperatorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, *spatial, generator=generator)
    y = x + sigma * torch.randn(x.shape, generator=generator)
    return OperatorDataset(x, y, tuple(torch.linspace(0, 1, s) for s in spatial), {"problem": "toy"})


@pytest.mark.parametrize("spatial", [(32,), (8, 8)])
def test_report_of_a_calibrated_posterior(tmp_path, spatial):
    # the shifted split has 3x the noise the posterior knows: undercovered, yet its variance equals the test one's
    splits = {"test": noisy(64, spatial, 0.1, 0), "shift_noisy": noisy(16, spatial, 0.3, 1)}
    results = write_uq_report(tmp_path, Known(0.1), splits, alpha=0.1, ood=["shift_noisy"], n_samples=20,
                              n_plot_samples=2, extra={"uq": {"name": "known"}})
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    test, shift = results["splits"]["test"], results["splits"]["shift_noisy"]
    assert set(SCORES) - {"ood_auroc"} <= set(test) and "ood_auroc" not in test
    assert abs(test["coverage"] - 0.9) < 0.02 and test["calibration_error"] < 0.02
    assert shift["coverage"] < 0.6 and shift["ood_auroc"] == 0.5  # equal variances cannot tell them apart
    assert (test["n"], test["grid"]) == (64, list(spatial))
    observed = test["calibration"]["observed"]
    assert len(observed) == len(test["calibration"]["levels"]) and all(0 <= o <= 1 for o in observed)
    assert test["band_coverage"]["coverage"][1] == pytest.approx(test["function_coverage"])  # alpha = 0.1 is listed
    assert results["posterior"] == {"method": "known", "fit_seconds": 0.5, "summary": {"sigma": 0.1}}
    assert results["fit_seconds"] == 0.5 and results["alpha"] == 0.1 and results["uq"] == {"name": "known"}
    report = (tmp_path / "report.md").read_text()
    assert "| test | 64 |" in report and "| shift_noisy | 16 |" in report and "sigma: `0.1`" in report
    for png in ("calibration.png", "coverage.png", "posterior_samples.png", "samples_test.png",
                "samples_shift_noisy.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
        assert f"({png})" in report
    line = summary_lines(results)[1]
    assert line.startswith("shift_noisy: relative L2") and line.endswith("OOD AUROC 0.500")


def test_report_rejects_bad_arguments(tmp_path):
    splits = {"test": noisy(4, (8,), 0.1, 0)}
    with pytest.raises(ValueError, match=r"ood: \['shift'\] are not splits"):
        write_uq_report(tmp_path, Known(0.1), splits, ood=["shift"])
    with pytest.raises(ValueError, match="reference: expected one of the splits"):
        write_uq_report(tmp_path, Known(0.1), splits, reference="train", ood=["test"])
    with pytest.raises(ValueError, match="other than the ood ones"):
        write_uq_report(tmp_path, Known(0.1), splits, reference="test", ood=["test"])
    with pytest.raises(ValueError, match="alpha"):
        write_uq_report(tmp_path, Known(0.1), splits, alpha=1.5)
    with pytest.raises(ValueError, match="splits: expected at least one"):
        write_uq_report(tmp_path, Known(0.1), {})


def test_spec_checks_methods_and_options_before_any_work():
    assert UQSpec("laplace_kfac", "laplace", {"structure": "kfac"}).options == {"structure": "kfac"}
    with pytest.raises(KeyError, match="unknown UQ method 'laplce'; expected one of: .*laplace"):
        UQSpec("x", "laplce")
    with pytest.raises(ValueError, match=r"options: method 'laplace' has no option\(s\) \['strcture'\]; expected"):
        UQSpec("x", "laplace", {"strcture": "kfac"})
    with pytest.raises(ValueError, match=r"base_options: method 'laplace' has no option\(s\) \['members'\]"):
        UQSpec("x", "conformal", fit_split="calibration", base="laplace", base_options={"members": 3})
    with pytest.raises(ValueError, match="base_options: given without a base method"):
        UQSpec("x", "conformal", fit_split="calibration", base_options={"structure": "kfac"})
    with pytest.raises(ValueError, match=r"fit_split: expected one of \['train', 'calibration'\]; got 'test'"):
        UQSpec("x", "conformal", fit_split="test")
    with pytest.raises(ValueError, match="fit_split: 'conformal' needs held-out data"):
        UQSpec("x", "conformal", fit_split="train")
    with pytest.raises(ValueError, match="base: 'conformal' needs held-out data"):
        UQSpec("x", "conformal", fit_split="calibration", base="conformal")
    assert UQSpec("x", "conformal").fit_split == "calibration" and UQSpec("x", "laplace").fit_split == "train"


def test_spec_seeds_the_methods_with_the_run_seed(monkeypatch):
    seen = []
    monkeypatch.setattr("probneural.uq.report.fit", lambda method, target, loader, **options: seen.append(
        (method, options)) or target)
    splits = {"train": noisy(2, (8,), 0.1, 0), "calibration": noisy(2, (8,), 0.1, 1)}
    model = nn.Linear(1, 1)
    UQSpec("l", "laplace").fit(model, splits, seed=5, progress=False)
    UQSpec("l", "laplace", {"seed": 2}).fit(model, splits, seed=5, progress=False)  # an explicit option wins
    UQSpec("l", "laplace").fit(model, splits, progress=False)  # no run seed: the method's default
    UQSpec("c", "conformal", fit_split="calibration", base="ensemble").fit(model, splits, seed=7, progress=False)
    assert [options.get("seed") for _, options in seen] == [5, 2, None, 7, None]  # conformal has no seed option
    assert [method for method, _ in seen][-2:] == ["ensemble", "conformal"]


def test_run_uq_fits_conformal_on_a_laplace_base_with_the_calibration_split(tmp_path):
    torch.manual_seed(0)
    model = FNO(in_channels=1, out_channels=1, modes=(3,), width=4, n_layers=1, projection_channels=4)
    splits = {"train": noisy(8, (16,), 0.1, 0), "calibration": noisy(19, (16,), 0.1, 1),
              "test": noisy(6, (16,), 0.1, 2), "shift_a": noisy(4, (16,), 0.3, 3)}
    spec = UQSpec("conformal_laplace", "conformal", fit_split="calibration", base="laplace",
                  base_options={"structure": "last_layer"})
    results = run_uq(spec, model, splits, tmp_path, n_samples=10, n_plot_samples=1, progress=False)
    assert list(results["splits"]) == ["test", "shift_a"] and "ood_auroc" in results["splits"]["shift_a"]
    record = results["posterior"]
    assert record["method"] == "conformal" and record["summary"]["n_calibration"] == 19
    assert record["base"]["method"] == "laplace" and record["base"]["summary"]["structure"] == "last_layer"
    assert results["fit_seconds"] == pytest.approx(record["fit_seconds"] + record["base"]["fit_seconds"])
    assert results["uq"]["base"] == "laplace" and "on the base posterior" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match=r"splits: conformal needs the split\(s\) \['calibration'\]"):
        UQSpec("conformal", "conformal", fit_split="calibration").fit(nn.Linear(1, 1), {"train": splits["train"]})


def test_uq_runs_in_the_parameters_precision_without_autocast():
    # a bf16- or fp16-autocast run keeps float32 parameters: its posterior is fitted and scored in fp32,
    # and that is what the uq/ environment records (not the training run's autocast policy)
    from probneural.uq.report import uq_precision

    assert uq_precision(torch.nn.Linear(2, 2)) == "fp32"
    assert uq_precision(torch.nn.Linear(2, 2).double()) == "fp64"


def test_an_inert_option_warns_once_when_the_spec_is_made_not_again_when_it_is_fitted():
    import warnings

    from probneural.validation import InertOptionWarning

    torch.manual_seed(0)
    model = FNO(in_channels=1, out_channels=1, modes=(3,), width=4, n_layers=1, projection_channels=4)
    splits = {"train": noisy(8, (16,), 0.1, 0), "calibration": noisy(19, (16,), 0.1, 1)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = UQSpec("c", "conformal", {"scale_split": 0.3}, fit_split="calibration", base="laplace")
        spec.check_calibration_size(19, 0.1)
        spec.fit(model, splits, progress=False)
    inert = [w for w in caught if issubclass(w.category, InertOptionWarning)]
    assert len(inert) == 1 and "scale_split=0.3 has no effect" in str(inert[0].message)
