"""``python -m probneural.benchmark``: run a benchmark suite and write one JSON record per case.

Examples::

    python -m probneural.benchmark benchmark=throughput
    python -m probneural.benchmark benchmark=compare_neuralop
    python -m probneural.benchmark benchmark=throughput device=cuda precision=bf16
    python -m probneural.report outputs/benchmark/*/*      # merge records of any machines
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from probneural.allocator import keep_freed_memory
from probneural.bench.environment import capture_environment
from probneural.bench.suites import run_suite
from probneural.config import check_declared_keys, register_schemas, to_kwargs
from probneural.config.paths import CONFIG_DIR

register_schemas()


@hydra.main(config_path=str(CONFIG_DIR), config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> list[Path]:
    check_declared_keys(cfg)  # a key added with '+' that nothing reads would silently do nothing
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    environment = capture_environment(cfg.precision.name, cfg.device.name, list(HydraConfig.get().overrides.task))
    paths = run_suite(
        cfg.benchmark.name,
        run_dir,
        environment,
        device=cfg.device.name,
        precision=cfg.precision.name,
        seed=cfg.seed,
        progress=cfg.progress,
        **to_kwargs(cfg.benchmark, drop=("name",)),
    )
    print(f"{len(paths)} records in {run_dir}; merge with: python -m probneural.report {run_dir}")
    return paths


if __name__ == "__main__":
    main()
