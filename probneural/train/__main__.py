"""``python -m probneural.train``: generate data, train an operator, write checkpoints and a report.

Examples::

    python -m probneural.train experiment=quickstart
    python -m probneural.train experiment=darcy_fno device=cuda precision=bf16
    python -m probneural.train -m optim.lr=1e-3,5e-4
    python -m probneural.train experiment=quickstart uq=laplace   # then fit and report a UQ method
    python -m probneural.train --help            # lists the config groups
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from probneural.allocator import keep_freed_memory
from probneural.bench.environment import capture_environment
from probneural.config import check_declared_keys, instantiate, register_schemas, to_kwargs
from probneural.config.data import (
    build_splits, check_model_fits_data, data_dtype, split_label, warn_inert_data_options,
)
from probneural.config.paths import CONFIG_DIR
from probneural.config.recipe import training_recipe
from probneural.io import atomic_write
from probneural.train.checkpoint import check_no_checkpoints
from probneural.train.precision import PrecisionPolicy
from probneural.train.report import write_training_report
from probneural.train.trainer import Trainer, normalize
from probneural.uq.report import (
    FIT_SPLITS, UQSpec, check_report_options, follow_training_recipe, run_uq, summary_lines, uq_precision,
)

register_schemas()


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    check_declared_keys(cfg)  # a key added with '+' that nothing reads would silently do nothing
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    # a resumed run keeps the configuration it started with and records the resuming one beside it (a
    # first run with resume=true has nothing to resume: it writes config.yaml); the cache directory is
    # recorded absolute, so that evaluate finds the data from any working directory
    if cfg.data.cache_dir is not None:
        cfg.data.cache_dir = str(Path(cfg.data.cache_dir).resolve())
    if not cfg.resume:  # before anything is written: a run directory in use belongs to its run
        check_no_checkpoints(run_dir)
    resuming = cfg.resume and (run_dir / "config.yaml").is_file()
    if cfg.resume and not resuming:  # the way a preemptible job starts; or a run directory mistyped
        print(f"resume=true: {run_dir} holds no run yet; starting one there")

    # model, trainer, UQ method and report options first: a bad option fails before anything is written and any
    # data are generated (a UQ method's option names and values here; those that depend on the model or the data
    # when it runs)
    uq = None if cfg.uq is None else UQSpec(**follow_training_recipe(to_kwargs(cfg.uq), training_recipe(cfg)))
    check_report_options(cfg.report.alpha, cfg.trainer.batch_size, cfg.report.n_samples, cfg.report.n_plot_samples)
    if uq is not None:
        uq.check_calibration_size(cfg.data.n_calibration, cfg.report.alpha, size_name="data.n_calibration",
                                  alpha_name="report.alpha")
    check_model_fits_data(cfg.model, cfg.data)
    warn_inert_data_options(cfg.data)
    torch.manual_seed(cfg.seed)
    operator = instantiate(cfg.model)
    trainer = Trainer(
        **to_kwargs(cfg.optim),
        **to_kwargs(cfg.trainer),
        precision=cfg.precision.name,
        device=cfg.device.name,
        seed=cfg.seed,
        run_dir=run_dir,
        progress=cfg.progress,
    )
    splits = build_splits(cfg.data, progress=cfg.progress, calibration=uq is not None and uq.fit_split == "calibration",
                          validation=True, dtype=data_dtype(cfg.precision.name))
    validation = splits.pop("validation", None)  # the per-epoch error only: neither a test nor a fit split
    model = normalize(operator, splits["train"])
    if resuming:  # a refused resume (other settings, model or data) must not rewrite the run's record
        trainer.check_resume(model, splits["train"])
    config_name = "config.resumed.yaml" if resuming else "config.yaml"
    atomic_write(run_dir / config_name, lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True)))
    environment = capture_environment(cfg.precision.name, cfg.device.name, list(HydraConfig.get().overrides.task))
    atomic_write(run_dir / "environment.json", lambda tmp: tmp.write_text(json.dumps(environment, indent=1)))
    history = trainer.fit(model, splits["train"], validation, resume=cfg.resume)
    tests = {split_label(kind, ds): ds for kind, ds in splits.items() if kind not in FIT_SPLITS}
    experiment = HydraConfig.get().runtime.choices.get("experiment") or "custom"
    title = f"{cfg.data.problem}: {type(model.operator).__name__} ({experiment})"
    results = write_training_report(
        run_dir, model, tests, history,
        device=trainer.device, precision=cfg.precision.name, n_plot_samples=cfg.report.n_plot_samples, title=title,
    )
    print(f"report: {run_dir / 'report.md'}")
    for name, scores in results.items():
        print(f"  {name}: relative L2 {scores['rel_l2']:.4f}, relative H1 {scores['rel_h1']:.4f}")
    if uq is not None:
        out_dir = run_dir / "uq" / uq.name
        uq_results = run_uq(
            uq, model, splits, out_dir,
            alpha=cfg.report.alpha, batch_size=cfg.trainer.batch_size, n_samples=cfg.report.n_samples,
            n_plot_samples=cfg.report.n_plot_samples, seed=cfg.seed, progress=cfg.progress, title=f"{title}: {uq.name}",
        )
        uq_environment = environment | {"precision": PrecisionPolicy.from_name(uq_precision(model)).as_dict()}
        atomic_write(out_dir / "environment.json", lambda tmp: tmp.write_text(json.dumps(uq_environment, indent=1)))
        print(f"uncertainty report: {out_dir / 'report.md'} (fit {uq_results['fit_seconds']:.1f} s)")
        for line in summary_lines(uq_results):
            print(f"  {line}")
    return results


if __name__ == "__main__":
    main()
