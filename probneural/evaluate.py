"""``python -m probneural.evaluate``: fit a UQ method to a trained run and report its predictive quality.

Examples::

    python -m probneural.evaluate run_dir=outputs/train/<time> uq=laplace
    python -m probneural.evaluate run_dir=<run> uq=conformal_laplace alpha=0.05 device=cpu
    python -m probneural.evaluate -m run_dir=<run> uq=laplace,laplace_kfac,ensemble,conformal

The run's ``config.yaml`` gives the data (regenerated, or read from the cache) and its
``checkpoints/`` the model. The report (:func:`probneural.uq.report.run_uq`) goes to
``<run_dir>/uq/<uq.name>`` unless ``hydra.run.dir`` says otherwise, next to ``environment.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from probneural.allocator import keep_freed_memory
from probneural.bench.environment import capture_environment
from probneural.config import check_declared_keys, register_schemas, to_kwargs
from probneural.config.data import build_splits, data_dtype, load_run_data, run_config_path
from probneural.config.paths import CONFIG_DIR
from probneural.config.recipe import training_recipe
from probneural.io import atomic_write
from probneural.train import load_model, resolve_device
from probneural.uq.report import (
    UQSpec, check_report_options, follow_training_recipe, run_uq, summary_lines, uq_precision,
)

register_schemas()


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    check_declared_keys(cfg)  # a key added with '+' that nothing reads would silently do nothing
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir = Path(cfg.run_dir)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    # every mistake (unknown method, bad option names or values, a bad report option, a calibration split
    # too small for the levels, missing run or checkpoint) stops before data are generated
    data = load_run_data(run_dir)
    # the configuration a resume recorded beside the first (more epochs, say) is the one that trained the model
    run_config = OmegaConf.load(run_config_path(run_dir))
    spec = UQSpec(**follow_training_recipe(to_kwargs(cfg.uq), training_recipe(run_config)))
    batch_size = run_config.trainer.batch_size if cfg.batch_size is None else cfg.batch_size
    check_report_options(cfg.alpha, batch_size, cfg.n_samples, cfg.n_plot_samples)
    if cfg.n_calibration is not None:
        if spec.fit_split != "calibration":
            warnings.warn(f"n_calibration={cfg.n_calibration} has no effect: {spec.name} is fitted on the "
                          f"{spec.fit_split} split, not on a calibration split", stacklevel=1)
        data.n_calibration = cfg.n_calibration
    size_name = "n_calibration" if cfg.n_calibration is not None else "the run's data.n_calibration"
    spec.check_calibration_size(data.n_calibration, cfg.alpha, size_name=size_name)
    checkpoints = run_dir / "checkpoints"
    model = load_model(checkpoints if cfg.checkpoint is None else checkpoints / cfg.checkpoint,
                       map_location=resolve_device(cfg.device.name))
    environment = capture_environment(uq_precision(model), cfg.device.name, list(HydraConfig.get().overrides.task))
    atomic_write(out_dir / "environment.json", lambda tmp: tmp.write_text(json.dumps(environment, indent=1)))

    seed = run_config.get("seed", 0) if cfg.seed is None else cfg.seed
    torch.manual_seed(seed)
    splits = build_splits(data, progress=cfg.progress, calibration=spec.fit_split == "calibration",
                          dtype=data_dtype(run_config.precision.name))
    results = run_uq(
        spec, model, splits, out_dir,
        alpha=cfg.alpha, batch_size=batch_size, n_samples=cfg.n_samples, n_plot_samples=cfg.n_plot_samples,
        seed=seed, progress=cfg.progress,
        title=f"{data.problem}: {spec.name} on {run_dir.resolve().name}"
        + ("" if cfg.checkpoint is None else f" ({cfg.checkpoint})"),
    )
    print(f"report: {out_dir / 'report.md'} (fit {results['fit_seconds']:.1f} s)")
    for line in summary_lines(results):
        print(f"  {line}")
    return results


if __name__ == "__main__":
    main()
