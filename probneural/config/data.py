"""Data splits from a ``data`` config node (train, test, and the optional zero-shot, shifted and calibration splits)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from probneural.config.instantiate import to_kwargs
from probneural.config.schema import DataConfig, register_schemas
from probneural.data import OperatorDataset, check_arguments, generate
from probneural.data.problems import field_layout
from probneural.train.precision import PrecisionPolicy
from probneural.validation import warn_unused

__all__ = [
    "build_splits", "check_model_fits_data", "data_dtype", "load_run_data", "run_config_path", "split_label",
    "warn_inert_data_options",
]


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


# Seed of each kind of split: data.seed plus this offset (every shift shares one).
_SEED_OFFSETS = {"train": 0, "test": 1, "zero_shot": 2, "shift": 3, "calibration": 4, "validation": 5}


def _kind(split: str) -> str:
    """``"shift"`` for a shifted split (``shift_<name>``), else the split's own name."""
    return "shift" if split.startswith("shift_") else split


def _split_arguments(data: DictConfig, calibration: bool, validation: bool = False,
                     dtype: torch.dtype = torch.float32) -> dict[str, dict[str, object]]:
    """The generator arguments of every split ``data`` describes (see :func:`build_splits`), by split name."""
    options = to_kwargs(data.options)
    shared = {"cache_dir": data.cache_dir, "dtype": dtype} | options

    def split(kind: str, resolution: int, **changes: object) -> dict[str, object]:
        n, seed = data[f"n_{kind}"], data.seed + _SEED_OFFSETS[kind]
        return shared | {"n": n, "resolution": resolution, "seed": seed} | changes

    splits = {"train": split("train", data.resolution), "test": split("test", data.resolution)}
    if data.zero_shot_resolution is not None:
        changes = {}
        if data.zero_shot_solve_resolution is not None:
            changes["solve_resolution"] = data.zero_shot_solve_resolution
        splits["zero_shot"] = split("zero_shot", data.zero_shot_resolution, **changes)
    for name, changes in _shift_changes(data, options).items():
        resolution = changes.pop("resolution", data.resolution)
        splits[f"shift_{name}"] = split("shift", resolution, **changes)
    if calibration:
        splits["calibration"] = split("calibration", data.resolution)
    if data.n_validation < 0:
        raise ValueError(f"data.n_validation: expected a number of samples >= 0 (0: no validation split); "
                         f"got {data.n_validation}")
    if validation and data.n_validation > 0:
        splits["validation"] = split("validation", data.resolution)
    return splits


def warn_inert_data_options(data: DictConfig) -> None:
    """An :class:`~probneural.validation.InertOptionWarning` for each zero-shot option set away from
    its default without ``data.zero_shot_resolution`` (no zero-shot split is then made). For the
    commands that take a data config from their user (train, generate), not from a finished run."""
    warn_unused({f"data.{k}": data[k] for k in _ZERO_SHOT_OPTIONS}, _ZERO_SHOT_DEFAULTS,
                [f"data.{k}" for k in _ZERO_SHOT_OPTIONS], used=data.zero_shot_resolution is not None,
                because="with data.zero_shot_resolution set (no zero-shot split is made)")


def run_config_path(run_dir: str | Path) -> Path:
    """A training run's last record of its configuration: ``config.resumed.yaml`` after a resume, else
    ``config.yaml`` (which may not exist)."""
    resumed = Path(run_dir) / "config.resumed.yaml"
    return resumed if resumed.is_file() else Path(run_dir) / "config.yaml"


def data_dtype(precision: str) -> torch.dtype:
    """The dtype a run of the precision policy ``precision`` stores its data in: its parameter dtype
    (float64 for ``fp64``; float32 for ``fp32`` and for the autocast policies, whose weights are float32)."""
    return PrecisionPolicy.from_name(precision).param_dtype


def check_model_fits_data(model: DictConfig, data: DictConfig) -> None:
    """A ``ValueError`` naming ``model.modes``, ``model.in_channels`` or ``model.out_channels`` when the
    model config cannot take the data of one of the splits ``data`` describes (a shift may change the
    channels, e.g. Navier–Stokes ``n_input_steps``), or naming the split's resolution key when its grid
    has fewer than ``2 * modes`` points per axis (an FNO would refuse it only after training, when the
    report evaluates that split). Checked before any data are generated.

    Model configs without these keys are not checked.
    """
    for split, arguments in _split_arguments(data, calibration=False, validation=True).items():
        options = {k: v for k, v in arguments.items() if k in data.options}
        axes, in_channels, out_channels = field_layout(data.problem, **options)
        problem = f"data.problem={data.problem}" + (f" (task {options['task']})" if "task" in options else "")
        where = "" if split in ("train", "test") else f"the {split} split of "
        if "modes" in model and len(model.modes) != axes:
            example = "[16]" if axes == 1 else "[12, 12]"
            raise ValueError(f"model.modes: {where}{problem} has {axes} spatial axis/axes but "
                             f"model.modes={list(model.modes)} has {len(model.modes)}; set e.g. model.modes={example}")
        for key, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if key in model and model[key] != channels:
                raise ValueError(f"model.{key}: {where}{problem} has {channels} {key.split('_')[0]}put channel(s); "
                                 f"got model.{key}={model[key]}")
        if "modes" in model and arguments["resolution"] < 2 * max(model.modes):
            raise ValueError(f"{_resolution_key(split, data)}: the {split} split's grid of {arguments['resolution']} "
                             f"points per axis is too coarse for model.modes={list(model.modes)}; an FNO needs at "
                             f"least {2 * max(model.modes)}")


def _resolution_key(split: str, data: DictConfig) -> str:
    """The config key that sets the grid of ``split``."""
    if split == "zero_shot":
        return "data.zero_shot_resolution"
    name = split.removeprefix("shift_")
    if split.startswith("shift_") and "resolution" in data.shifts[name]:
        return f"data.shifts.{name}.resolution"
    return "data.resolution"


def _argument_keys(split: str, data: DictConfig) -> dict[str, str]:
    """The config key that sets each generator argument of ``split`` (see :func:`_split_arguments`)."""
    kind, shift = _kind(split), split.removeprefix("shift_")
    keys = {name: f"data.options.{name}" for name in data.options}
    if kind == "shift":
        keys |= {name: f"data.shifts.{shift}.{name}" for name in data.shifts[shift]}
    # a split with a grid of its own can also have a solve grid of its own
    own_solve = None
    if kind == "zero_shot":
        own_solve = "data.zero_shot_solve_resolution"
    elif kind == "shift" and "resolution" in data.shifts[shift]:
        own_solve = f"data.shifts.{shift}.solve_resolution"
    if kind == "zero_shot" and data.zero_shot_solve_resolution is not None:
        keys["solve_resolution"] = own_solve
    elif own_solve is not None and keys.get("solve_resolution", "").startswith("data.options."):
        keys["solve_resolution"] += f" (or {own_solve} for this split alone)"
    offset = _SEED_OFFSETS[kind]
    return keys | {"n": f"data.n_{kind}", "resolution": _resolution_key(split, data),
                   "seed": f"data.seed + {offset}" if offset else "data.seed", "cache_dir": "data.cache_dir"}


def _name_config_keys(message: str, split: str, data: DictConfig) -> str:
    """``message`` of a generator's error, followed by the config keys of the arguments it names
    (``solve_resolution=9`` or ``resolution must ...``): the generator knows its arguments, the user
    set config keys."""
    named = [f"{argument} is {key}" for argument, key in _argument_keys(split, data).items()
             if re.search(rf"\b{argument}(\[\d+\])?(=|:| must\b| values\b)", message)]
    return f"{message} [{'; '.join(named)}]" if named else message


def load_run_data(run_dir: str | Path) -> DictConfig:
    """The ``data`` node of a run's resolved ``config.resumed.yaml`` (its last resume), else its
    ``config.yaml``, merged onto its problem's schema: the splits its last training report scored.

    Fields added to the schema after the run was made take their defaults (e.g. ``n_calibration``).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.yaml``.
        ValueError: the file has no ``data.problem`` or names a problem without a data schema.
    """
    register_schemas()
    first = Path(run_dir) / "config.yaml"
    if not first.is_file():
        raise FileNotFoundError(f"run_dir: expected a training run directory with a config.yaml; {first} does not exist")
    path = run_config_path(run_dir)
    data = OmegaConf.load(path).get("data")
    problem = None if data is None else data.get("problem")
    schemas = {name.removesuffix(".yaml"): name for name in ConfigStore.instance().list("schema/data")}
    if problem not in schemas:
        raise ValueError(f"{path}: expected data.problem to be one of {sorted(schemas)}; got {problem!r}")
    return OmegaConf.merge(ConfigStore.instance().load(f"schema/data/{schemas[problem]}").node, data)


# options of the zero-shot split, inert without data.zero_shot_resolution (DataConfig's defaults)
_ZERO_SHOT_OPTIONS = ("n_zero_shot", "zero_shot_solve_resolution")
_ZERO_SHOT_DEFAULTS = {f"data.{field.name}": field.default for field in dataclasses.fields(DataConfig)
                       if field.name in _ZERO_SHOT_OPTIONS}


def _distribution(params: dict[str, object]) -> dict[str, object]:
    """Generation parameters without those that only pick samples (``n``, ``seed``)."""
    return {k: v for k, v in params.items() if k not in ("n", "seed")}


def build_splits(data: DictConfig, *, progress: bool = True, calibration: bool = False, validation: bool = False,
                 dtype: torch.dtype = torch.float32) -> dict[str, OperatorDataset]:
    """Generate (or read from the cache) the splits described by ``data``.

    Args:
        data: a ``data`` config node.
        progress: show the generators' progress bars.
        calibration: also make the calibration split (for UQ methods fitted on held-out data).
        validation: also make the validation split (for training's per-epoch error), unless
            ``data.n_validation`` is 0.
        dtype: dtype of the stored fields (the solvers compute in their own precision): the
            parameter dtype of the run's precision policy (:func:`data_dtype`), so that an
            ``fp64`` run trains on float64 data.

    Returns:
        ``{"train": ..., "test": ..., "zero_shot": ..., "shift_<name>": ..., "calibration": ..., "validation": ...}``:
        train and test drawn with seeds ``seed`` and ``seed + 1``; the zero-shot split (only when
        ``data.zero_shot_resolution`` is set) with ``seed + 2``; one split per entry of
        ``data.shifts`` with ``seed + 3``; the calibration split (only with ``calibration``) of
        ``data.n_calibration`` samples at ``data.resolution`` with ``seed + 4``; the validation
        split (only with ``validation``) of ``data.n_validation`` samples with ``seed + 5``.

    Raises:
        ValueError: a shift changes an option the generator does not have or nothing it uses, or
            the generator refuses the arguments of a split (every split is checked before the first
            one is generated).
    """
    splits = _split_arguments(data, calibration, validation, dtype)
    params = {}
    for name, arguments in splits.items():
        try:
            params[name] = check_arguments(data.problem, **arguments)
        except ValueError as error:
            raise ValueError(f"data ({name} split): {_name_config_keys(str(error), name, data)}") from error
    for name in (name for name in splits if name.startswith("shift_")):
        if _distribution(params[name]) == _distribution(params["test"]):
            raise ValueError(f"data.shifts.{name.removeprefix('shift_')}: changes nothing the generator uses, so its "
                             "split would be in-distribution test data scored as out-of-distribution")
    return {name: generate(data.problem, progress=progress, **arguments) for name, arguments in splits.items()}
