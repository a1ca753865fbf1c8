"""Every config composes against its schema; mistakes stop before any work; the CLI runs end to end."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from probneural.config import check_declared_keys, instantiate, register_schemas, to_kwargs
from probneural.config.paths import CONFIG_DIR
from probneural.data.problems import field_layout
from probneural.operators import FNO

register_schemas()
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
BENCHMARKS = sorted(p.stem for p in (CONFIG_DIR / "benchmark").glob("*.yaml"))


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds_its_model(experiment):
    cfg = compose_config("train", [f"experiment={experiment}"])
    check_declared_keys(cfg)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model)
    assert isinstance(model, FNO)
    assert model.config["modes"] == list(cfg.model.modes)
    from probneural.config.data import check_model_fits_data

    check_model_fits_data(cfg.model, cfg.data)  # every experiment's model takes its data


def test_zero_shot_options_without_a_zero_shot_split_warn():
    from probneural.config.data import warn_inert_data_options
    from probneural.validation import InertOptionWarning

    cfg = compose_config("train", ["data.n_zero_shot=7"])
    with pytest.warns(InertOptionWarning, match=r"data.n_zero_shot=7 has no effect: .* only used with "
                                                r"data.zero_shot_resolution set"):
        warn_inert_data_options(cfg.data)
    warn_inert_data_options(compose_config("train", ["experiment=quickstart"]).data)  # its zero-shot split: silent


def test_a_mistyped_experiment_stops_composition_instead_of_running_the_defaults():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Could not find 'experiment/quickstrat'"):
        compose_config("train", ["experiment=quickstrat"])
    assert compose_config("train", []).data.n_train == 1000  # no experiment: the groups' defaults


def test_darcy_fno_is_the_paper_setting():
    cfg = compose_config("train", ["experiment=darcy_fno"])
    assert (cfg.data.n_train, cfg.data.n_test, cfg.data.resolution, cfg.data.options.solve_resolution) == (1000, 200, 85, 421)
    assert (list(cfg.model.modes), cfg.model.width, cfg.model.n_layers) == ([12, 12], 32, 4)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.step_size, cfg.optim.gamma) == (1e-3, 1e-4, 100, 0.5)
    assert cfg.trainer.epochs == 500


@pytest.mark.parametrize("group", ["device", "precision", "optim"])
def test_every_option_of_every_group_composes(group):
    for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
        cfg = compose_config("train", [f"{group}={option}"])
        assert cfg[group] is not None


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_every_benchmark_composes(benchmark):
    cfg = compose_config("benchmark", [f"benchmark={benchmark}"])
    check_declared_keys(cfg)
    assert cfg.benchmark.name == benchmark


@pytest.mark.parametrize(
    "app, overrides",
    [("train", ["uq=laplace"]), ("evaluate", ["run_dir=run", "uq=conformal"]), ("generate", []), ("benchmark", [])],
)
def test_every_app_config_declares_its_keys(app, overrides):
    check_declared_keys(compose_config(app, overrides))


@pytest.mark.parametrize(
    "override, path",
    [
        ("+trainer.epoch=3", "trainer.epoch"),  # what Hydra suggests for the mistyped key above
        ("+report.bogus=1", "report.bogus"),
        ("+data.options.solve_res=9", "data.options.solve_res"),
        ("+data.shifts.contrast.bogus.x=1", None),  # named shifts are free-form: their consumer checks them
        ("+bogus=1", "bogus"),
    ],
)
def test_keys_appended_with_plus_must_be_declared(override, path):
    cfg = compose_config("train", [override])  # Hydra's append syntax composes
    if path is None:
        check_declared_keys(cfg)
        return
    with pytest.raises(ValueError, match=rf"^{path}: not an option of .* no effect; expected one of \["):
        check_declared_keys(cfg)


@pytest.mark.parametrize("override", ["model.modes=${model.modes}", "model.modes=[${model.width},4]",
                                      "data.shifts.contrast=${data.shifts.length_scale}"])
def test_interpolated_values_are_checked_where_their_targets_are(override):
    check_declared_keys(compose_config("train", [override]))


def test_free_form_option_nodes_are_left_to_their_consumers():
    cfg = compose_config("train", ["uq=laplace", "+uq.options.not_an_option=1"])
    check_declared_keys(cfg)  # UQSpec names the unknown option (tests/uq)


@pytest.mark.parametrize(
    "override, error",
    [
        ("trainer.epoch=3", ConfigCompositionException),      # mistyped key
        ("trainer.epochs=many", ConfigCompositionException),  # wrong type
        ("model.widht=8", ConfigCompositionException),
        ("data.options.solve_res=9", ConfigCompositionException),
        ("precision=fp8", ConfigCompositionException),        # unknown option
        ("data=darcy_schema", ConfigCompositionException),    # a schema is no option of the group it types
    ],
)
def test_mistakes_stop_at_composition(override, error):
    with pytest.raises(error):
        compose_config("train", [override])


def test_schema_types_are_enforced_on_merged_values():
    cfg = compose_config("train", [])
    with pytest.raises(ValidationError):
        cfg.trainer.batch_size = "large"
    with pytest.raises(ConfigAttributeError):
        cfg.optim.learning_rate = 1.0


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("app, groups", [
    ("train", ["data", "device", "experiment", "model", "optim", "precision", "trainer", "uq"]),
    ("evaluate", ["device", "uq"]),
    ("generate", ["data", "precision"]),
    ("benchmark", ["benchmark", "device", "precision"]),
])
def test_help_lists_the_config_groups_the_app_composes(app, groups, tmp_path):
    result = run_cli(f"probneural.{app}", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    lines = [line for line in listing.splitlines()[2:] if line.strip()]
    assert [line.split(":")[0] for line in lines] == groups  # no schema/* groups, none the app does not read
    if "data" in groups:
        assert "data: allen_cahn, burgers, darcy (selected), " in listing  # the options, the app's default marked
    if "precision" in groups:
        assert "precision: bf16, fp16, fp32 (selected), fp64" in listing
    if app == "train":
        assert "experiment: darcy_fno, quickstart, uq_darcy (none selected)" in listing


def test_help_marks_the_option_given_on_the_command_line(tmp_path):
    result = run_cli("probneural.generate", "--help", "data=burgers", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data: allen_cahn, burgers (selected), darcy, " in result.stdout
    assert result.stdout.startswith("python -m probneural.generate ")


def test_bad_override_fails_before_any_work(tmp_path):
    result = run_cli("probneural.train", "trainer.epoch=3", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode != 0
    assert "epoch" in result.stderr and not (tmp_path / "run" / "metrics.jsonl").exists()
    result = run_cli("probneural.train", "optim.optimizer=sgd", f"hydra.run.dir={tmp_path}/run2",
                     f"data.cache_dir={tmp_path}/cache", cwd=tmp_path)
    assert result.returncode != 0 and "optimizer" in result.stderr
    assert not (tmp_path / "cache").exists()  # failed before generating data
    result = run_cli("probneural.train", "uq=ensemble", "uq.options.members=0", f"hydra.run.dir={tmp_path}/run4",
                     f"data.cache_dir={tmp_path}/cache", cwd=tmp_path)
    assert result.returncode != 0 and "options: members must be an int >= 1" in result.stderr
    assert not (tmp_path / "cache").exists()  # a UQ option value fails before data and training, not after
    result = run_cli("probneural.train", "+trainer.epoch=3", f"hydra.run.dir={tmp_path}/run3", cwd=tmp_path)
    assert result.returncode != 0 and "trainer.epoch: not an option" in result.stderr
    assert not (tmp_path / "run3" / "config.yaml").exists()  # nothing written


def test_train_cli_writes_a_complete_run_directory_and_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["probneural.train", "experiment=quickstart", "data.n_train=16", "data.n_test=4", "data.n_zero_shot=2",
            "data.resolution=17", "data.zero_shot_resolution=33", "data.options.solve_resolution=33",
            "model.modes=[4,4]", "model.width=8", "trainer.epochs=2", "trainer.batch_size=8", "progress=false",
            "data.cache_dir=cache", f"hydra.run.dir={run}"]
    result = run_cli(*args[:-1], "resume=true", args[-1], cwd=tmp_path)  # nothing to resume: a first run
    assert result.returncode == 0, result.stderr
    assert f"resume=true: {run} holds no run yet; starting one there" in result.stdout
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "report.md", "learning_curves.png", "samples_0.png"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").glob("*.json")) == ["epoch-0001.json", "epoch-0002.json"]
    report = (run / "report.md").read_text()
    assert "test (s=17×17)" in report and "zero_shot (s=33×33)" in report and "trainable parameters" in report
    resolved = OmegaConf.load(run / "config.yaml")
    assert resolved.trainer.epochs == 2 and "${" not in (run / "config.yaml").read_text()
    assert not (run / "config.resumed.yaml").exists()
    assert resolved.data.cache_dir == str(tmp_path / "cache")  # recorded absolute: evaluate runs from anywhere
    environment = json.loads((run / "environment.json").read_text())
    assert environment["versions"]["torch"] == torch.__version__
    if platform.libc_ver()[0] == "glibc":  # the entry point kept freed memory in the heap (keep_freed_memory)
        assert environment["allocator"].startswith("mallopt")

    first = (run / "metrics.jsonl").read_text().splitlines()
    config = (run / "config.yaml").read_text()
    result = run_cli(*args[:-3], "trainer.epochs=3", "optim.lr=0.01", *args[-2:], cwd=tmp_path)  # no resume
    assert result.returncode != 0 and "already holds checkpoints" in result.stderr
    assert (run / "config.yaml").read_text() == config and (run / "metrics.jsonl").read_text().splitlines() == first
    environment = (run / "environment.json").read_text()
    result = run_cli(*args[:-3], "trainer.epochs=3", "optim.lr=0.01", "resume=true", *args[-2:], cwd=tmp_path)
    assert result.returncode != 0 and "was written with other settings" in result.stderr
    assert not (run / "config.resumed.yaml").exists()  # a refused resume records nothing: evaluate reads that file
    assert (run / "environment.json").read_text() == environment
    result = run_cli(*args[:-3], "trainer.epochs=3", "resume=true", *args[-2:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == first  # the first two epochs were not re-run
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert (run / "config.yaml").read_text() == config and (run / "config.resumed.yaml").is_file()


def test_benchmark_cli_writes_records_that_the_report_merges(tmp_path):
    run = tmp_path / "bench"
    result = run_cli("probneural.benchmark", "benchmark=throughput", "benchmark.resolutions=[16]",
                     "benchmark.batch_sizes=[2]", "benchmark.modes=[4,4]", "benchmark.width=8", "benchmark.n_layers=1",
                     "benchmark.warmup=1", "benchmark.repeats=1", "device=cpu", "progress=false",
                     f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in run.glob("*.json")]
    assert len(records) == 1 and records[0]["environment"]["precision"]["name"] == "fp32"
    assert "benchmark.resolutions=[16]" in records[0]["environment"]["overrides"]
    result = run_cli("probneural.report", str(run), "--out", str(tmp_path / "merged"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "merged" / "benchmark_report.md").is_file() and (tmp_path / "merged" / "benchmark_report.png").is_file()


def test_shifts_are_out_of_distribution_splits_of_the_same_generator(tmp_path):
    from probneural.config.data import build_splits

    cfg = compose_config("train", [
        "data.n_train=3", "data.n_test=2", "data.n_shift=2", "data.resolution=9", "data.options.solve_resolution=17",
        f"data.cache_dir={tmp_path}", "+data.shifts.coarse={resolution: 5}",
    ])
    splits = build_splits(cfg.data, progress=False)
    assert list(splits) == ["train", "test", "shift_contrast", "shift_length_scale", "shift_coarse"]
    contrast = splits["shift_contrast"]
    assert contrast.metadata["contrast"] == [24.0, 3.0] and contrast.metadata["seed"] == cfg.data.seed + 3
    assert set(contrast.x.unique().tolist()) <= {24.0, 3.0}
    assert splits["shift_length_scale"].metadata["grf"]["tau"] == 6.0
    assert splits["shift_coarse"].spatial_shape == (5, 5)
    # shared random draws: the contrast shift thresholds the same fields as the coarse one (strides 2 and 4 of 17²)
    assert torch.equal(contrast.x[:, :, ::2, ::2] == 24.0, splits["shift_coarse"].x == 12.0)


def test_unknown_shift_option_fails_before_generation(tmp_path):
    from probneural.config.data import build_splits

    cfg = compose_config("train", [f"data.cache_dir={tmp_path}/cache", "+data.shifts.bad={viscosity: 0.1}"])
    with pytest.raises(ValueError, match=r"data.shifts.bad: unknown option\(s\) \['viscosity'\]"):
        build_splits(cfg.data, progress=False)
    assert not (tmp_path / "cache").exists()


def test_every_split_is_checked_before_the_first_is_generated(tmp_path):
    from probneural.config.data import build_splits

    cfg = compose_config("train", ["data.n_train=2", "data.n_test=2", "data.resolution=5",
                                   "data.options.solve_resolution=9", "data.zero_shot_resolution=6",
                                   f"data.cache_dir={tmp_path}/cache"])
    with pytest.raises(ValueError, match=r"^data \(zero_shot split\): solve_resolution=9 cannot be subsampled to "
                                         r"resolution=6"):
        build_splits(cfg.data, progress=False)
    assert not (tmp_path / "cache").exists()  # the train and test splits were not generated first
    cfg = compose_config("train", ["data.n_train=2", "data.n_test=2", "data.resolution=5",
                                   "data.zero_shot_resolution=6", "data.zero_shot_solve_resolution=17",
                                   f"data.cache_dir={tmp_path}/cache"])
    with pytest.raises(ValueError, match=r"solve_resolution=17 cannot .* \[solve_resolution is "
                                         r"data.zero_shot_solve_resolution; resolution is data.zero_shot_resolution\]$"):
        build_splits(cfg.data, progress=False)  # the error names the config keys the user set
    cfg = compose_config("train", ["data=burgers", "data.n_train=0", "+data.shifts.coarse={resolution: 3}",
                                   f"data.cache_dir={tmp_path}/cache"])
    with pytest.raises(ValueError, match=r"^data \(train split\): n must .* \[n is data.n_train\]$"):
        build_splits(cfg.data, progress=False)
    cfg = compose_config("train", ["data=burgers", "+data.shifts.coarse={resolution: 3}",
                                   f"data.cache_dir={tmp_path}/cache"])
    with pytest.raises(ValueError, match=r"^data \(shift_coarse split\): .*\[solve_resolution is "
                                         r"data.options.solve_resolution \(or data.shifts.coarse.solve_resolution for "
                                         r"this split alone\); resolution is data.shifts.coarse.resolution\]$"):
        build_splits(cfg.data, progress=False)
    cfg = compose_config("train", ["data.shifts.contrast.contrast=[24.0,-3.0]", f"data.cache_dir={tmp_path}/cache"])
    with pytest.raises(ValueError, match=r"^data \(shift_contrast split\): contrast values .*"
                                         r"\[contrast is data.shifts.contrast.contrast\]$"):
        build_splits(cfg.data, progress=False)
    cfg = compose_config("train", ["data=navier_stokes", f"data.cache_dir={tmp_path}/cache",
                                   "+data.shifts.longer={t: 5.0}", "data.options.task=rollout"])
    with pytest.raises(ValueError, match=r"^data.shifts.longer: changes nothing the generator uses"), \
            pytest.warns(UserWarning, match="t=5.0 has no effect"):
        build_splits(cfg.data, progress=False)  # a shift of t would be a copy of the test split labelled OOD
    assert not (tmp_path / "cache").exists()


def test_data_are_stored_in_the_dtype_the_runs_precision_trains_in(tmp_path):
    from probneural.config.data import build_splits, data_dtype

    assert [data_dtype(p) for p in ("fp64", "fp32", "bf16", "fp16")] == [torch.float64] + [torch.float32] * 3
    cfg = compose_config("train", ["data.n_train=2", "data.n_test=1", "data.resolution=5", "~data.shifts.contrast",
                                   "~data.shifts.length_scale", "data.options.solve_resolution=9",
                                   f"data.cache_dir={tmp_path}"])
    double = build_splits(cfg.data, progress=False, dtype=torch.float64)
    single = build_splits(cfg.data, progress=False)
    assert double["train"].x.dtype == torch.float64 and double["train"].metadata["dtype"] == "float64"
    assert single["train"].y.dtype == torch.float32 and len(list(tmp_path.iterdir())) == 4  # cached apart
    torch.testing.assert_close(single["train"].y, double["train"].y.float(), rtol=0, atol=0)  # one solve, rounded


def test_generator_arguments_are_checked_without_generating(tmp_path):
    from probneural.data import check_arguments, generate

    arguments = {"n": 2, "resolution": 5, "solve_resolution": 9, "seed": 1, "cache_dir": tmp_path / "cache"}
    params = check_arguments("darcy", **arguments)
    assert not (tmp_path / "cache").exists()
    assert params == generate("darcy", progress=False, **arguments).metadata
    with pytest.raises(ValueError, match="alpha"):
        check_arguments("darcy", **arguments, alpha=-1.0)


def test_generate_cli_fills_the_cache_that_training_reads(tmp_path):
    overrides = ["data.n_train=4", "data.n_test=2", "data.n_shift=2", "data.n_validation=3", "data.resolution=9",
                 "data.options.solve_resolution=17", f"data.cache_dir={tmp_path}/cache", "progress=false"]
    result = run_cli("probneural.generate", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "darcy: 5 splits" in result.stdout and "shift_contrast (s=9×9): 2 samples" in result.stdout
    assert "validation (s=9×9): 3 samples" in result.stdout
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 5 and not list(tmp_path.glob("*.log"))
    again = run_cli("probneural.generate", *overrides, cwd=tmp_path)
    assert again.returncode == 0 and sorted((tmp_path / "cache").iterdir()) == files
    assert [f.stat().st_mtime_ns for f in files] == [f.stat().st_mtime_ns for f in sorted((tmp_path / "cache").iterdir())]


def test_generate_sweep_writes_the_cache_and_one_record_of_the_sweep(tmp_path):
    sizes = ["data.n_test=2", "data.n_shift=2", "data.n_validation=0", f"data.cache_dir={tmp_path}/cache"]
    result = run_cli("probneural.generate", "-m", "data=allen_cahn", "data.n_train=2,3", *sizes, "progress=false",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("allen_cahn: 4 splits") == 2
    # no Hydra date/time tree, no empty per-job directories: the sweep's config record under multirun/generate/
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "cache" not in p.parts)
    assert len(written) == 4 and written[:2] == ["multirun", "multirun/generate"], written
    assert written[3].endswith("/multirun.yaml")


def test_generate_for_an_experiment_fills_the_cache_its_training_run_reads(tmp_path):
    from probneural.config.data import build_splits

    sizes = ["data.n_train=4", "data.n_test=2", "data.n_zero_shot=2", "data.n_shift=2", "data.n_validation=2",
             f"data.cache_dir={tmp_path}/cache"]
    result = run_cli("probneural.generate", "for_experiment=quickstart", *sizes, "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "zero_shot (s=65×65): 2 samples" in result.stdout  # the experiment's resolutions, not the data default's
    files = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").iterdir()}
    assert len(files) == 6  # train, test, zero-shot, two shifts, validation
    build_splits(compose_config("train", ["experiment=quickstart", *sizes]).data, progress=False, validation=True)
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").iterdir()} == files  # read, nothing regenerated


TINY_DATA = {
    "darcy": ["data.resolution=9", "data.options.solve_resolution=17"],
    "burgers": ["data.resolution=32", "data.options.solve_resolution=64"],
    "kuramoto_sivashinsky": ["data.resolution=16"],
    "allen_cahn": ["data.resolution=16"],
    "navier_stokes": ["data.resolution=8", "data.options.solve_resolution=16"],
}


def test_every_data_config_is_tested():
    assert sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")) == sorted(TINY_DATA)


@pytest.mark.parametrize("problem", sorted(TINY_DATA))
def test_every_data_config_generates_its_splits_and_shifts(problem, tmp_path):
    from probneural.config.data import build_splits

    cfg = compose_config("train", [f"data={problem}", "data.n_train=2", "data.n_test=1", "data.n_shift=1",
                                   f"data.cache_dir={tmp_path}", *TINY_DATA[problem]])
    splits = build_splits(cfg.data, progress=False)
    assert set(splits) == {"train", "test", *(f"shift_{name}" for name in cfg.data.shifts)} and len(cfg.data.shifts) >= 2
    axes, in_channels, out_channels = field_layout(problem, **to_kwargs(cfg.data.options))  # known before generating
    x, y = splits["train"].x, splits["train"].y
    assert (x.dim() - 2, x.shape[1], y.shape[1]) == (axes, in_channels, out_channels)
    for name, changes in cfg.data.shifts.items():
        shifted = splits[f"shift_{name}"]
        assert shifted.metadata["problem"] == problem
        assert shifted.x.shape[1:] == splits["test"].x.shape[1:] or "resolution" in changes
        assert not torch.equal(shifted.y, splits["test"].y)


def test_navier_stokes_rollout_layout_is_known_before_generating(tmp_path):
    from probneural.config.data import build_splits

    cfg = compose_config("train", ["data=navier_stokes", "data.n_train=1", "data.n_test=1", "data.n_shift=1",
                                   "data.options.task=rollout", "data.options.n_input_steps=2",
                                   "data.options.n_output_steps=3", "data.options.snapshot_interval=0.01",
                                   f"data.cache_dir={tmp_path}", *TINY_DATA["navier_stokes"]])
    train = build_splits(cfg.data, progress=False)["train"]
    assert field_layout("navier_stokes", **to_kwargs(cfg.data.options)) == (2, 2, 3) == (
        train.x.dim() - 2, train.x.shape[1], train.y.shape[1])


@pytest.mark.parametrize("overrides, error", [
    (["data=burgers"], r"model.modes: data.problem=burgers has 1 spatial axis/axes but model.modes=\[12, 12\]"),
    (["data=navier_stokes", "data.options.task=rollout"],
     r"model.in_channels: data.problem=navier_stokes \(task rollout\) has 10 input channel\(s\); "
     r"got model.in_channels=1"),
    (["data=navier_stokes", "data.options.task=rollout", "model.in_channels=10"],
     r"model.out_channels: .* has 10 output channel\(s\); got model.out_channels=1"),
    (["data=navier_stokes", "data.options.task=rollout", "model.in_channels=10", "model.out_channels=10",
      "+data.shifts.short={n_input_steps: 5}"],
     r"model.in_channels: the shift_short split of data.problem=navier_stokes \(task rollout\) has 5 input "
     r"channel\(s\); got model.in_channels=10"),
    (["experiment=quickstart", "data.zero_shot_resolution=15"],
     r"data.zero_shot_resolution: the zero_shot split's grid of 15 points per axis is too coarse for "
     r"model.modes=\[8, 8\]; an FNO needs at least 16"),
    (["experiment=quickstart", "+data.shifts.coarse={resolution: 9}"], r"data.shifts.coarse.resolution: the shift_coarse"),
    (["experiment=quickstart", "data.resolution=12"], r"data.resolution: the train split's grid of 12 points"),
])
def test_a_model_that_cannot_take_the_data_is_named_before_generating(overrides, error):
    from probneural.config.data import check_model_fits_data

    cfg = compose_config("train", overrides)
    with pytest.raises(ValueError, match=error):
        check_model_fits_data(cfg.model, cfg.data)
    fitting = compose_config("train", ["data=burgers", "model.modes=[16]"])
    check_model_fits_data(fitting.model, fitting.data)
