"""Dataclass schemas of every config, registered in Hydra's ConfigStore.

Each YAML option in ``configs/<group>/`` starts its defaults list with its schema
(``defaults: [/schema/<group>/<name>@_here_, _self_]``; the primary configs with
``<app>_schema``), so a mistyped key or a value of the wrong type
stops the run with Hydra's error before any work starts. A key appended with Hydra's ``+``
syntax composes even into a schema-typed node; the entry points refuse it with
:func:`check_declared_keys`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from probneural.config.help import register_help_resolver

__all__ = ["check_declared_keys", "register_schemas"]


@dataclass
class DarcyOptions:
    """Generation options of :func:`probneural.data.darcy.generate` besides n, resolution, seed."""

    solve_resolution: Optional[int] = None
    contrast: List[float] = field(default_factory=lambda: [12.0, 3.0])
    alpha: float = 2.0
    tau: float = 3.0
    batch_size: int = 64


@dataclass
class BurgersOptions:
    """Generation options of :func:`probneural.data.burgers.generate` besides n, resolution, seed."""

    viscosity: float = 0.1
    t: float = 1.0
    solve_resolution: int = 8192
    alpha: float = 2.0
    tau: float = 5.0
    sigma: float = 25.0
    batch_size: int = 16


@dataclass
class KuramotoSivashinskyOptions:
    """Generation options of :func:`probneural.data.kuramoto_sivashinsky.generate` besides n, resolution, seed."""

    length: float = 22.0
    t: float = 10.0
    solve_resolution: Optional[int] = None
    alpha: float = 4.0
    tau: float = 20.0
    sigma: float = 1e5
    batch_size: int = 64


@dataclass
class AllenCahnOptions:
    """Generation options of :func:`probneural.data.allen_cahn.generate` besides n, resolution, seed."""

    epsilon: float = 0.02
    t: float = 2.0
    solve_resolution: Optional[int] = None
    alpha: float = 2.0
    tau: float = 20.0
    sigma: float = 100.0
    batch_size: int = 64


@dataclass
class NavierStokesOptions:
    """Generation options of :func:`probneural.data.navier_stokes.generate` besides n, resolution, seed."""

    viscosity: float = 1e-3
    task: str = "final"
    t: float = 1.0
    snapshot_interval: float = 1.0
    n_input_steps: int = 10
    n_output_steps: int = 10
    solve_resolution: int = 256
    forcing_amplitude: float = 0.1
    alpha: float = 2.5
    tau: float = 7.0
    sigma: float = 7**0.75
    cfl: float = 0.5
    batch_size: int = 1


@dataclass
class DataConfig:
    """Train / test / zero-shot / shifted splits of one PDE problem.

    The train, test and zero-shot splits use seeds ``seed``, ``seed + 1`` and ``seed + 2``
    (independent samples). The zero-shot split is generated at ``zero_shot_resolution``
    (solved at ``zero_shot_solve_resolution`` when set) with the same ``options`` otherwise,
    and tests the trained operator at a finer grid. Each entry of ``shifts`` names an
    out-of-distribution test set of ``n_shift`` samples: the same generator with some
    ``options`` (or ``resolution``) changed, drawn with seed ``seed + 3`` (all shifts share
    the underlying random draws, so they differ only by the shifted parameters). The
    calibration split (``n_calibration`` samples at ``resolution``, seed ``seed + 4``) is
    generated only for UQ methods fitted on held-out data (split conformal prediction). The
    validation split (``n_validation`` samples at ``resolution``, seed ``seed + 5``; ``0`` for
    none) gives the training command's per-epoch held-out error (``val_rel_l2``) and learning
    curve, so that choosing runs or settings by it never looks at the test split.
    """

    problem: str = MISSING
    n_train: int = 1000
    n_test: int = 200
    resolution: int = 85
    seed: int = 0
    zero_shot_resolution: Optional[int] = None
    n_zero_shot: int = 50
    zero_shot_solve_resolution: Optional[int] = None
    shifts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    n_shift: int = 50
    n_calibration: int = 200
    n_validation: int = 100
    cache_dir: Optional[str] = None


@dataclass
class DarcyDataConfig(DataConfig):
    problem: str = "darcy"
    options: DarcyOptions = field(default_factory=DarcyOptions)


@dataclass
class BurgersDataConfig(DataConfig):
    problem: str = "burgers"
    options: BurgersOptions = field(default_factory=BurgersOptions)


@dataclass
class KuramotoSivashinskyDataConfig(DataConfig):
    problem: str = "kuramoto_sivashinsky"
    options: KuramotoSivashinskyOptions = field(default_factory=KuramotoSivashinskyOptions)


@dataclass
class AllenCahnDataConfig(DataConfig):
    problem: str = "allen_cahn"
    options: AllenCahnOptions = field(default_factory=AllenCahnOptions)


@dataclass
class NavierStokesDataConfig(DataConfig):
    problem: str = "navier_stokes"
    options: NavierStokesOptions = field(default_factory=NavierStokesOptions)


@dataclass
class FNOConfig:
    """Constructor arguments of :class:`probneural.operators.FNO`."""

    _target_: str = "probneural.operators.FNO"
    in_channels: int = 1
    out_channels: int = 1
    modes: List[int] = field(default_factory=lambda: [12, 12])
    width: int = 32
    n_layers: int = 4
    projection_channels: int = 128
    positional_grid: Optional[str] = "nodes"
    padding: float = 0.0
    activation: str = "gelu"
    cpu_chunk_bytes: Optional[int] = 16777216
    dropout: float = 0.0
    dropout_layers: str = "all"


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule of :class:`probneural.train.Trainer`."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "step"
    step_size: int = 100
    gamma: float = 0.5


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 16
    loss: str = "rel_l2"
    grad_clip: Optional[float] = None
    checkpoint_keep: int = 2


@dataclass
class DeviceConfig:
    name: str = "auto"


@dataclass
class PrecisionConfig:
    name: str = "fp32"


@dataclass
class ReportConfig:
    """What a run's report draws and, for its UQ evaluation, which level and how many draws it scores with."""

    n_plot_samples: int = 4
    alpha: float = 0.1
    n_samples: int = 100


@dataclass
class UQConfig:
    """``configs/uq/``: a UQ method fitted to a trained operator (becomes a :class:`probneural.uq.report.UQSpec`,
    fitted by :meth:`probneural.uq.report.UQSpec.fit` inside :func:`probneural.uq.report.run_uq`).

    ``method`` names a registered method (``probneural.uq.METHODS``) and ``options`` its keyword
    options (the method's defaults otherwise). ``fit_split`` is the split it is fitted on:
    ``"train"``, or ``"calibration"`` for methods that need data disjoint from the training set
    (split conformal). With ``base``, the method ``base`` (options ``base_options``) is first
    fitted on the training split and the resulting posterior is what ``method`` is fitted to
    (conformal bands on a Laplace posterior). ``name`` names the output directory ``uq/<name>``.
    """

    name: str = MISSING
    method: str = MISSING
    options: Dict[str, Any] = field(default_factory=dict)
    fit_split: str = "train"
    base: Optional[str] = None
    base_options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainAppConfig:
    """``configs/train.yaml``: one training run and its report."""

    data: Any = MISSING
    model: Any = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    device: DeviceConfig = MISSING
    precision: PrecisionConfig = MISSING
    report: ReportConfig = field(default_factory=ReportConfig)
    uq: Optional[UQConfig] = None
    seed: int = 0
    resume: bool = False
    progress: bool = True
    keep_freed_memory: bool = True


@dataclass
class EvaluateAppConfig:
    """``configs/evaluate.yaml``: fit a UQ method to a trained run and report its predictive quality.

    ``run_dir`` is a training run directory (its ``config.yaml``, or ``config.resumed.yaml`` after
    a resume, gives the data, its ``checkpoints/`` the model; ``checkpoint`` picks a file there, the
    newest by default). ``n_calibration`` overrides the run's ``data.n_calibration``. ``alpha`` is
    the miscoverage level of the scored intervals, ``batch_size`` the samples per fitting batch and
    per prediction (default: the run's ``trainer.batch_size``, as ``train uq=...`` uses it, so that
    an ensemble's new members train as they would there), ``n_samples`` the predictive draws behind
    sampled scores and simultaneous bands, ``n_plot_samples`` the samples drawn per split. ``seed``
    (the UQ method's and the report's draws) defaults to the training run's seed, as ``train uq=...``
    uses it.
    """

    run_dir: str = MISSING
    checkpoint: Optional[str] = None
    uq: UQConfig = MISSING
    device: DeviceConfig = MISSING
    n_calibration: Optional[int] = None
    alpha: float = 0.1
    batch_size: Optional[int] = None
    n_samples: int = 100
    n_plot_samples: int = 4
    seed: Optional[int] = None
    progress: bool = True
    keep_freed_memory: bool = True


@dataclass
class ThroughputBenchmark:
    """Options of the ``throughput`` suite (:func:`probneural.bench.suites.throughput`)."""

    name: str = "throughput"
    resolutions: List[int] = field(default_factory=lambda: [32, 64])
    batch_sizes: List[int] = field(default_factory=lambda: [4, 16])
    modes: List[int] = field(default_factory=lambda: [12, 12])
    width: int = 32
    n_layers: int = 4
    warmup: int = 2
    repeats: int = 5


@dataclass
class CompareNeuralopBenchmark:
    """Options of the ``compare_neuralop`` suite (:func:`probneural.bench.suites.compare_neuralop`)."""

    name: str = "compare_neuralop"
    resolution: int = 64
    solve_resolution: Optional[int] = 253
    n_train: int = 1000
    n_test: int = 200
    epochs: int = 20
    batch_size: int = 16
    modes: int = 12
    width: int = 32
    n_layers: int = 4
    lr: float = 1e-3
    data_cache_dir: Optional[str] = None
    warmup: int = 3
    repeats: int = 10


@dataclass
class DataGenerationBenchmark:
    """Options of the ``data_generation`` suite (:func:`probneural.bench.data_generation.data_generation`)."""

    name: str = "data_generation"
    problems: List[str] = field(default_factory=lambda: ["darcy", "burgers", "navier_stokes"])
    n_samples: int = 16
    n_reference: int = 2
    darcy_resolution: int = 85
    darcy_solve_resolution: int = 421
    burgers_resolution: int = 1024
    burgers_solve_resolution: int = 8192
    burgers_viscosity: float = 0.1
    navier_stokes_resolution: int = 256
    navier_stokes_steps: int = 20
    repeats: int = 6


@dataclass
class HessianBenchmark:
    """Options of the ``hessian`` suite (:func:`probneural.bench.hessian_suite.hessian_products`)."""

    name: str = "hessian"
    resolutions: List[int] = field(default_factory=lambda: [64])
    batch_sizes: List[int] = field(default_factory=lambda: [16])
    modes: List[int] = field(default_factory=lambda: [12, 12])
    width: int = 32
    n_layers: int = 4
    warmup: int = 2
    repeats: int = 6  # the interleaved rounds cycle through the six orders of the three products


@dataclass
class CurvatureCompareBenchmark:
    """Options of the ``curvature_compare`` suite (:func:`probneural.bench.curvature_suite.curvature_compare`)."""

    name: str = "curvature_compare"
    resolution: int = 64
    batch_size: int = 16
    modes: int = 12
    width: int = 32
    n_layers: int = 4
    projection_channels: int = 128
    small_resolution: int = 16
    small_batch_size: int = 2
    small_modes: int = 4
    small_width: int = 8
    mc_samples: int = 1
    hutchinson_samples: int = 64
    reference_hutchinson: bool = True
    reference_columns: int = 128
    tolerance: float = 1e-5
    cases: List[str] = field(
        default_factory=lambda: ["kfac_mc", "kfac_type2", "ggn_diagonal_exact", "ggn_diagonal_hutchinson"]
    )
    warmup: int = 1
    repeats: int = 5


@dataclass
class BenchmarkAppConfig:
    """``configs/benchmark.yaml``: one benchmark suite on this machine."""

    benchmark: Any = MISSING
    device: DeviceConfig = MISSING
    precision: PrecisionConfig = MISSING
    seed: int = 0
    progress: bool = True
    keep_freed_memory: bool = True


@dataclass
class GenerateAppConfig:
    """``configs/generate.yaml``: pre-generate every split of one data config into the cache.

    ``for_experiment`` names an experiment whose data (and precision) to generate instead, composed
    as ``train experiment=<name>`` with the command's ``data.*`` and ``precision`` overrides (``experiment``
    itself is a config group, which this app does not compose: experiments set model and trainer keys).
    """

    data: Any = MISSING
    precision: PrecisionConfig = MISSING
    for_experiment: Optional[str] = None
    progress: bool = True
    keep_freed_memory: bool = True


def check_declared_keys(cfg: DictConfig | ListConfig, path: str = "") -> None:
    """Refuse keys that a composed config holds but its schema does not declare.

    Hydra's append syntax (``+report.bogus=1``, which Hydra itself suggests for a key that is
    not in a config) adds a key even to a schema-typed node, where nothing reads it: the run
    would go on as if the override had not been given. Free-form nodes (``Dict[str, Any]``
    fields such as ``uq.options``, which their consumers check) are not restricted.

    Args:
        cfg: a composed config (the entry points' ``cfg``); recursed into.
        path: the dotted path of ``cfg`` in the whole config (for messages).

    Raises:
        ValueError: naming the first undeclared key with its full path and the declared ones.
    """
    if isinstance(cfg, ListConfig):
        children = [(f"{path}[{index}]", cfg._get_node(index)) for index in range(len(cfg))]
    else:
        schema = OmegaConf.get_type(cfg)
        declared = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
        children = []
        for key in cfg.keys():
            where = f"{path}.{key}" if path else str(key)
            if declared is not None and key not in declared:
                raise ValueError(
                    f"{where}: not an option of {path or 'the config'} ({schema.__name__}), so it would have no "
                    f"effect; expected one of {declared}"
                )
            children.append((where, cfg._get_node(key)))
    for where, child in children:
        # an interpolation is checked where its target is defined; None and ??? have no keys
        if (isinstance(child, (DictConfig, ListConfig)) and not child._is_interpolation() and not child._is_none()
                and not child._is_missing()):
            check_declared_keys(child, where)


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore and register the help resolver (idempotent)."""
    register_help_resolver()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="benchmark_schema", node=BenchmarkAppConfig)
    cs.store(name="generate_schema", node=GenerateAppConfig)
    cs.store(name="evaluate_schema", node=EvaluateAppConfig)
    # the group options' schemas live in groups of their own (``schema/<group>``), so that they are not
    # options of the groups they type (``data=darcy_schema`` would compose a half-empty data config)
    for group, name, node in (
        ("data", "darcy", DarcyDataConfig),
        ("data", "burgers", BurgersDataConfig),
        ("data", "kuramoto_sivashinsky", KuramotoSivashinskyDataConfig),
        ("data", "allen_cahn", AllenCahnDataConfig),
        ("data", "navier_stokes", NavierStokesDataConfig),
        ("model", "fno", FNOConfig),
        ("optim", "optim", OptimConfig),
        ("trainer", "trainer", TrainerConfig),
        ("device", "device", DeviceConfig),
        ("precision", "precision", PrecisionConfig),
        ("uq", "uq", UQConfig),
        ("benchmark", "throughput", ThroughputBenchmark),
        ("benchmark", "compare_neuralop", CompareNeuralopBenchmark),
        ("benchmark", "data_generation", DataGenerationBenchmark),
        ("benchmark", "hessian", HessianBenchmark),
        ("benchmark", "curvature_compare", CurvatureCompareBenchmark),
    ):
        cs.store(group=f"schema/{group}", name=name, node=node)
