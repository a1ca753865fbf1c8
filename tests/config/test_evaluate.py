"""UQ configs name registered methods and real options; the calibration split; train's `uq=` hook; evaluate CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from probneural import uq
from probneural.config import register_schemas, to_kwargs
from probneural.config.data import build_splits, load_run_data
from probneural.config.paths import CONFIG_DIR
from probneural.train.trainer import evaluate, load_model
from probneural.uq.report import SCORES, UQSpec

register_schemas()
UQ_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "uq").glob("*.yaml"))


def compose_config(name: str, overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra)


@pytest.mark.parametrize("name", UQ_CONFIGS)
def test_every_uq_config_is_a_valid_spec_in_both_apps(name):
    for app, extra in (("evaluate", ["run_dir=run"]), ("train", [])):
        cfg = compose_config(app, [f"uq={name}", *extra])
        spec = UQSpec(**to_kwargs(cfg.uq))  # registered method and base, real options only
        assert spec.name == name


def test_every_registered_method_has_a_config():
    used = set()
    for name in UQ_CONFIGS:
        cfg = OmegaConf.load(CONFIG_DIR / "uq" / f"{name}.yaml")
        used |= {cfg.method} | ({cfg.base} if cfg.get("base") else set())
    assert used == set(uq.METHODS.names()) == {
        "conformal", "ensemble", "gp_exact", "gp_svgp", "laplace", "mc_dropout", "pno", "pyro_nuts", "pyro_svi",
    }


def test_evaluate_writes_next_to_the_run_and_train_has_no_uq_by_default():
    cfg = compose_config("evaluate", ["run_dir=outputs/train/a", "uq=laplace_kfac"], hydra=True)
    assert Path(cfg.hydra.run.dir) == Path("outputs/train/a/uq/laplace_kfac") and cfg.alpha == 0.1
    assert compose_config("train", []).uq is None
    with pytest.raises(ConfigCompositionException):
        compose_config("evaluate", ["run_dir=run", "uq.optons.alpha=0.2"])  # mistyped key
    with pytest.raises(ConfigCompositionException):
        compose_config("evaluate", ["run_dir=run", "uq=bayes"])  # unknown option


def test_calibration_split_only_when_asked(tmp_path):
    cfg = compose_config("train", ["data.n_train=2", "data.n_test=2", "data.n_shift=1", "data.n_calibration=3",
                                   "data.resolution=9", "data.options.solve_resolution=17",
                                   f"data.cache_dir={tmp_path}"])
    assert "calibration" not in build_splits(cfg.data, progress=False)
    splits = build_splits(cfg.data, progress=False, calibration=True)
    calibration = splits["calibration"]
    assert len(calibration) == 3 and calibration.spatial_shape == (9, 9)
    assert calibration.metadata["seed"] == cfg.data.seed + 4 and calibration.metadata["contrast"] == [12.0, 3.0]


def test_validation_split_only_when_asked_and_never_negative(tmp_path):
    sizes = ["data.n_train=2", "data.n_test=2", "data.n_shift=1", "data.resolution=9", "data.options.solve_resolution=17",
             f"data.cache_dir={tmp_path}"]
    cfg = compose_config("train", [*sizes, "data.n_validation=3"])
    assert "validation" not in build_splits(cfg.data, progress=False)
    splits = build_splits(cfg.data, progress=False, validation=True)
    validation, test = splits["validation"], splits["test"]
    assert len(validation) == 3 and validation.spatial_shape == (9, 9) and validation.metadata["seed"] == cfg.data.seed + 5
    assert not torch.equal(validation.x[:2], test.x)  # other draws than the test split's
    assert "validation" not in build_splits(compose_config("train", [*sizes, "data.n_validation=0"]).data,
                                            progress=False, validation=True)
    with pytest.raises(ValueError, match=r"data.n_validation: expected a number of samples >= 0 .*got -1"):
        build_splits(compose_config("train", [*sizes, "data.n_validation=-1"]).data, progress=False)


def test_load_run_data_fills_new_fields_and_names_bad_runs(tmp_path):
    config = OmegaConf.to_container(compose_config("train", ["data.n_train=7"]), resolve=True)
    del config["data"]["n_calibration"]  # a run made before the field existed
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(config))
    data = load_run_data(tmp_path)
    assert data.n_train == 7 and data.n_calibration == 200 and data.options.contrast == [12.0, 3.0]
    resumed = OmegaConf.to_container(compose_config("train", ["data.n_train=7", "data.n_test=3"]), resolve=True)
    (tmp_path / "config.resumed.yaml").write_text(OmegaConf.to_yaml(resumed))
    assert load_run_data(tmp_path).n_test == 3  # the last resume's splits, which its report scored
    (tmp_path / "config.resumed.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="run_dir: expected a training run directory"):
        load_run_data(tmp_path / "missing")
    (tmp_path / "config.yaml").write_text("data:\n  problem: heat\n")
    with pytest.raises(ValueError, match="expected data.problem to be one of .*darcy.*; got 'heat'"):
        load_run_data(tmp_path)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def check_uq_report(out: Path, name: str, splits: list[str]) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["uq"]["name"] == name and results["alpha"] == 0.1 and results["fit_seconds"] > 0
    assert list(results["splits"]) == splits
    for split, scores in results["splits"].items():
        assert all(math.isfinite(scores[key]) for key in SCORES if key != "ood_auroc"), (name, split, scores)
        assert 0 <= scores["coverage"] <= 1 and 0 <= scores["function_coverage"] <= 1
        assert ("ood_auroc" in scores) == split.startswith("shift_")
    report = (out / "report.md").read_text()
    assert all(f"| {split} |" in report for split in splits)
    for png in ("calibration.png", "coverage.png", "posterior_samples.png", *(f"samples_{s}.png" for s in splits)):
        assert (out / png).is_file(), (name, png)
    return results


def test_train_uq_hook_and_evaluate_cli(tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "probneural.train", "experiment=quickstart", "uq=laplace", "data.n_train=16", "data.n_test=8",
        "data.n_shift=4", "data.n_calibration=19", "data.n_validation=5", "data.resolution=17",
        "data.zero_shot_resolution=null", "data.n_zero_shot=50", "data.options.solve_resolution=33",
        "~data.shifts.length_scale",
        "model.modes=[4,4]", "model.width=8", "trainer.epochs=1", "trainer.batch_size=8", "report.n_plot_samples=1",
        "report.n_samples=10", "device=cpu", "progress=false", "seed=3", f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # the per-epoch error is the validation split's (5 samples, seed + 5), which no report scores as a test
    data = load_run_data(run)
    splits = build_splits(data, progress=False, validation=True)
    validation = splits["validation"]
    assert len(validation) == 5 and validation.metadata["seed"] == data.seed + 5
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    model = load_model(run / "checkpoints")
    assert record["val_rel_l2"] == pytest.approx(evaluate(model, validation)["rel_l2"], rel=1e-6)
    assert record["val_rel_l2"] != pytest.approx(evaluate(model, splits["test"])["rel_l2"], rel=1e-3)
    assert "validation" not in (run / "report.md").read_text()
    assert "uncertainty report:" in result.stdout and "calibration" not in (run / "report.md").read_text()
    assert json.loads((run / "uq" / "laplace" / "environment.json").read_text())["precision"]["name"] == "fp32"
    splits = ["test", "shift_contrast"]
    laplace = check_uq_report(run / "uq" / "laplace", "laplace", splits)
    assert laplace["posterior"]["summary"]["structure"] == "last_layer"

    # conformal on the point predictor and on the Laplace posterior, calibrated on 19 new samples (seed + 4);
    # a setting that changes the scores (n_samples) names a subdirectory, the plots' n_plot_samples does not
    result = run_cli("probneural.evaluate", "-m", f"run_dir={run}", "uq=conformal,conformal_laplace", "device=cpu",
                     "n_samples=10", "n_plot_samples=1", "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("conformal", "conformal_laplace"):
        results = check_uq_report(run / "uq" / name / "n_samples=10", name, splits)
        assert results["posterior"]["summary"]["n_calibration"] == 19
        assert results["seed"] == 3  # the run's seed, as train uq=... would use it
        assert (run / "uq" / name / "n_samples=10" / "environment.json").is_file()
    assert results["posterior"]["base"]["method"] == "laplace"
    assert len(list((tmp_path / "cache").iterdir())) == 5  # train, test, shift, calibration, validation: each made once
    # a sweep over another option: one directory per job (none overwrites another)
    result = run_cli("probneural.evaluate", "-m", f"run_dir={run}", "uq=conformal", "n_samples=11,12", "device=cpu",
                     "n_plot_samples=0", "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for n in (11, 12):
        assert json.loads((run / "uq" / "conformal" / f"n_samples={n}" / "results.json").read_text())["n_samples"] == n
    result = run_cli("probneural.evaluate", f"run_dir={run}", "uq=laplace", "n_calibration=7", "device=cpu",
                     "n_samples=10", "n_plot_samples=0", "progress=false", f"hydra.run.dir={tmp_path / 'again'}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "n_calibration=7 has no effect: laplace is fitted on the train split" in result.stderr


def test_bad_report_options_fail_before_any_data_or_training(tmp_path):
    result = run_cli(
        "probneural.train", "experiment=quickstart", "uq=laplace", "report.alpha=2", "device=cpu", "progress=false",
        f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )
    assert result.returncode != 0 and "alpha" in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "checkpoints").exists()
    result = run_cli("probneural.train", "experiment=quickstart", "report.n_plot_samples=-1", "device=cpu",
                     f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run1'}", cwd=tmp_path)
    assert result.returncode != 0 and "n_plot_samples must be an int >= 0" in result.stderr  # without uq too
    assert not (tmp_path / "cache").exists()
    # a level the calibration split is too small for: 30 functions, half of them for the band's scale
    result = run_cli(
        "probneural.train", "experiment=quickstart", "uq=conformal", "report.alpha=0.05", "data.n_calibration=30",
        "device=cpu", "progress=false", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run2'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert ("data.n_calibration=30 is too small for conformal's bands at its fit level options.alpha=0.1 and the "
            "report's report.alpha=0.05: alpha: 0.05 needs at least 19 calibration functions for the function-level "
            "band (rank ⌈(n + 1)(1 − alpha)⌉ <= n); got n = 15") in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run2" / "checkpoints").exists()
