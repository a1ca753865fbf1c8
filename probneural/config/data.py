"""Data splits from a ``data`` config node (train, test and the optional zero-shot split)."""

from __future__ import annotations

from omegaconf import DictConfig

from probneural.config.instantiate import to_kwargs
from probneural.data import OperatorDataset, generate

__all__ = ["build_splits", "split_label"]


def split_label(kind: str, dataset: OperatorDataset) -> str:
    """A readable split name such as ``"test (s=33×33)"``."""
    return f"{kind} (s={'×'.join(str(n) for n in dataset.spatial_shape)})"


def _shift_changes(data: DictConfig, options: dict[str, object]) -> dict[str, dict[str, object]]:
    """``data.shifts`` as plain dicts, each key checked against the generator options."""
    valid = sorted({"resolution", *options})
    shifts = {}
    for name, node in data.shifts.items():
        changes = to_kwargs(node)
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ValueError(f"data.shifts.{name}: unknown option(s) {unknown}; expected some of {valid}")
        shifts[name] = changes
    return shifts


def build_splits(data: DictConfig, *, progress: bool = True) -> dict[str, OperatorDataset]:
    """Generate (or read from the cache) the splits described by ``data``.

    Returns:
        ``{"train": ..., "test": ..., "zero_shot": ..., "shift_<name>": ...}``: train and
        test drawn with seeds ``seed`` and ``seed + 1``; the zero-shot split (only when
        ``data.zero_shot_resolution`` is set) with ``seed + 2``; one split per entry of
        ``data.shifts`` with ``seed + 3``.

    Raises:
        ValueError: a shift changes an option the generator does not have (raised before
            any data are generated).
    """

    options = to_kwargs(data.options)
    shifts = _shift_changes(data, options)

    def make(n: int, resolution: int, seed: int, **changes: object) -> OperatorDataset:
        return generate(
            data.problem, n=n, resolution=resolution, seed=seed,
            cache_dir=data.cache_dir, progress=progress, **(options | changes),
        )

    splits = {
        "train": make(data.n_train, data.resolution, data.seed),
        "test": make(data.n_test, data.resolution, data.seed + 1),
    }
    if data.zero_shot_resolution is not None:
        changes = {}
        if data.zero_shot_solve_resolution is not None:
            changes["solve_resolution"] = data.zero_shot_solve_resolution
        splits["zero_shot"] = make(data.n_zero_shot, data.zero_shot_resolution, data.seed + 2, **changes)
    for name, changes in shifts.items():
        resolution = changes.pop("resolution", data.resolution)
        splits[f"shift_{name}"] = make(data.n_shift, resolution, data.seed + 3, **changes)
    return splits
