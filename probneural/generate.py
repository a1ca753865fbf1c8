"""``python -m probneural.generate``: pre-generate the splits of a data config into the on-disk cache.

Examples::

    python -m probneural.generate data=darcy
    python -m probneural.generate data=burgers data.n_train=2048
    python -m probneural.generate for_experiment=quickstart  # the data a training run of it reads

Each split is streamed to its cache file batch by batch (memory stays bounded by one batch)
and verified; a later training run with the same data config reads the files.
"""

from __future__ import annotations

import time

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from probneural.allocator import keep_freed_memory
from probneural.config import check_declared_keys, register_schemas
from probneural.config.data import build_splits, data_dtype, split_label, warn_inert_data_options
from probneural.config.paths import CONFIG_DIR

register_schemas()


@hydra.main(config_path=str(CONFIG_DIR), config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, tuple[int, ...]]:
    check_declared_keys(cfg)  # a key added with '+' that nothing reads would silently do nothing
    if cfg.keep_freed_memory:
        keep_freed_memory()
    data, precision = cfg.data, cfg.precision.name
    if cfg.for_experiment is not None:  # the data and precision of a training run of the experiment
        data, precision = _training_data(cfg.for_experiment)
    warn_inert_data_options(data)
    if data.cache_dir is None:
        raise ValueError("data.cache_dir must be set: pre-generation writes to the on-disk cache")
    started = time.perf_counter()
    splits = build_splits(data, progress=cfg.progress, validation=True, dtype=data_dtype(precision))
    seconds = time.perf_counter() - started
    for kind, dataset in splits.items():
        print(f"{split_label(kind, dataset)}: {len(dataset)} samples, x {tuple(dataset.x.shape[1:])}, "
              f"y {tuple(dataset.y.shape[1:])}")
    print(f"{data.problem}: {len(splits)} splits in {data.cache_dir} ({seconds:.1f} s)")
    return {kind: tuple(dataset.x.shape) for kind, dataset in splits.items()}


def _training_data(experiment: str) -> tuple[DictConfig, str]:
    """The ``data`` node and precision name of ``train experiment=<experiment>`` with this command's other
    overrides (``data.*``, ``precision=...``), as the training run would compose them."""
    own = ("for_experiment=", "progress=", "keep_freed_memory=")
    overrides = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(own)]
    train = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])
    return train.data, train.precision.name


if __name__ == "__main__":
    main()
