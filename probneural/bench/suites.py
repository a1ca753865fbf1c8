"""Benchmark suites, registered by name in :data:`SUITES`, and :func:`run_suite` that records them.

A suite is a function with explicit keyword arguments returning a list of
``(case, metrics)`` pairs: ``case`` says what was benchmarked, ``metrics`` what was
measured. Every suite takes ``progress`` (show tqdm bars). :func:`run_suite` runs one and
writes a JSON record per case (:func:`probneural.bench.write_record`).

Timing metrics follow one naming scheme so reports can merge suites: ``train_step_ms``
and ``inference_ms`` (medians), with ``_min_ms``, ``_iqr_ms``, ``_samples_per_s`` and
``_peak_memory_bytes`` variants (see :func:`probneural.bench.measure` for what the
memory figure means on each device).
"""

from __future__ import annotations

import inspect
from itertools import product
from pathlib import Path
from statistics import median
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import probneural
from probneural.bench.records import write_record
from probneural.bench.timing import fno_forward_flops, interleaved_times, matmul_peak_gflops, measure
from probneural.data import darcy
from probneural.operators import FNO, count_parameters
from probneural.registry import Registry
from probneural.validation import check_int, check_positive_ints
from probneural.train.precision import PrecisionPolicy, resolve_device
from probneural.train.trainer import Trainer, evaluate, normalize

__all__ = ["SUITES", "compare_neuralop", "neuralop_fno", "run_suite", "throughput"]

Case = tuple[dict[str, Any], dict[str, Any]]
SUITES: Registry[Callable[..., list[Case]]] = Registry("benchmark suite")


def timing_metrics(prefix: str, timing: dict[str, Any], batch: int) -> dict[str, Any]:
    """The metrics of one :func:`probneural.bench.measure` result under the suites' naming scheme (module docstring)."""
    return {
        f"{prefix}_ms": 1e3 * timing["median_s"],
        f"{prefix}_min_ms": 1e3 * timing["min_s"],
        f"{prefix}_iqr_ms": 1e3 * timing["iqr_s"],
        f"{prefix}_samples_per_s": batch / timing["median_s"],
        f"{prefix}_peak_memory_bytes": timing["peak_memory_bytes"],
    }


def ratio_metrics(key: str, numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """Per-round time ratios of two interleaved calls (:func:`probneural.bench.timing.interleaved_times`):
    ``key`` their median, ``key_min`` and ``key_max`` their extremes."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {key: median(ratios), f"{key}_min": min(ratios), f"{key}_max": max(ratios)}


def _speed(
    calls: dict[str, Callable[[], None]], model: nn.Module, x: Tensor, *, device: torch.device, warmup: int, repeats: int
) -> dict[str, Any]:
    """Timings of the ``train_step`` and ``inference`` calls of :func:`_speed_calls`, and ``model``'s forward GFLOP/s.

    Args:
        calls: :func:`_speed_calls` of ``model`` on a batch whose input is ``x``.
        model: operator on ``device``.
        x: `(b, c_in, *spatial)` input batch.
    """
    step = measure(calls["train_step"], device=device, warmup=warmup, repeats=repeats)
    forward = measure(calls["inference"], device=device, warmup=warmup, repeats=repeats)
    flops = fno_forward_flops(model, x)
    batch = x.shape[0]
    return {
        **timing_metrics("train_step", step, batch),
        **timing_metrics("inference", forward, batch),
        "memory_source": step["memory_source"],
        "forward_gflop": flops / 1e9,
        "forward_gflops_per_s": flops / forward["median_s"] / 1e9,
    }


def _speed_calls(
    model: nn.Module, x: Tensor, y: Tensor, *, policy: PrecisionPolicy, device: torch.device, lr: float
) -> dict[str, Callable[[], None]]:
    """The timed calls of ``model`` on the batch ``(x, y)``, each without arguments.

    ``train_step`` is :meth:`probneural.train.Trainer.train_step` in training mode with the
    trainer's defaults (relative L2 loss, Adam with learning rate ``lr``, the policy's autocast
    and grad scaler); it changes ``model``'s weights. ``inference`` is a forward pass without
    gradients in eval mode under the same autocast.

    Args:
        model: operator on ``device`` in ``policy.param_dtype``.
        x: `(b, c_in, *spatial)` input batch.
        y: `(b, c_out, *spatial)` target batch.
    """
    trainer = Trainer(lr=lr, precision=policy.name.value, device=device, progress=False)
    optimizer, _ = trainer.make_optimizer(model)
    scaler = policy.make_grad_scaler(device)

    def train_step() -> None:
        if not model.training:  # a walk over the module tree, only when the other call ran last
            model.train()
        trainer.train_step(model, optimizer, scaler, x, y)

    def inference() -> None:
        if model.training:
            model.eval()
        with torch.no_grad(), policy.autocast(device):
            model(x)

    return {"train_step": train_step, "inference": inference}


def _matmul_dtype(policy: PrecisionPolicy) -> torch.dtype:
    """The dtype the dense layers compute in under ``policy``: the autocast dtype, else the parameters'."""
    return policy.autocast_dtype or policy.param_dtype


@SUITES.register("throughput")
def throughput(
    *,
    resolutions: Sequence[int] = (32, 64),
    batch_sizes: Sequence[int] = (4, 16),
    modes: Sequence[int] = (12, 12),
    width: int = 32,
    n_layers: int = 4,
    precision: str = "fp32",
    device: str | torch.device = "auto",
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    matmul_size: int = 2048,
    progress: bool = True,
) -> list[Case]:
    """Training-step and inference speed of our FNO on random data, over resolutions × batch sizes.

    Each case builds ``FNO(1, 1, modes, width, n_layers)`` (``len(modes)`` spatial axes,
    ``resolution`` points each) and times a training step and an inference pass on a
    random batch (see :func:`probneural.bench.measure`).

    Args:
        resolutions: points per spatial axis; each at least ``2 * max(modes)``.
        batch_sizes: samples per batch.
        modes: kept Fourier modes per spatial axis.
        width: hidden channels of the FNO.
        n_layers: Fourier layers of the FNO.
        precision: precision policy (``fp32``, ``fp64``, ``bf16``, ``fp16``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        warmup: untimed calls before timing.
        repeats: timed calls.
        seed: seed of the weights and the random batch.
        matmul_size: side of the square matmul measuring the device's peak GFLOP/s.
        progress: show a progress bar over the cases.

    Returns:
        ``(case, metrics)`` per (resolution, batch size): ``case`` holds ``resolution``,
        ``batch_size``, ``modes``, ``width``, ``n_layers``; ``metrics`` the timings
        (``train_step_*``, ``inference_*``), ``parameters``, ``forward_gflop``,
        ``forward_gflops_per_s``, ``matmul_peak_gflops`` and ``forward_fraction_of_peak``.

    Raises:
        ValueError: an argument is out of range (e.g. a resolution too coarse for ``modes``).
    """
    resolutions = check_positive_ints("resolutions", resolutions)
    batch_sizes = check_positive_ints("batch_sizes", batch_sizes)
    modes = check_positive_ints("modes", modes)
    for name, value in (("width", width), ("n_layers", n_layers), ("repeats", repeats), ("matmul_size", matmul_size)):
        check_int(name, value, 1)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    if min(resolutions) < 2 * max(modes):
        raise ValueError(f"resolutions: {min(resolutions)} is too coarse for modes {modes}; need >= {2 * max(modes)}")
    policy = PrecisionPolicy.from_name(precision)
    device = resolve_device(device)
    peak = matmul_peak_gflops(device, _matmul_dtype(policy), matmul_size)
    results: list[Case] = []
    cases = list(product(resolutions, batch_sizes))
    for resolution, batch in tqdm(cases, desc="throughput", unit="case", disable=not progress):
        torch.manual_seed(seed)
        model = FNO(1, 1, modes, width, n_layers).to(device=device, dtype=policy.param_dtype)
        generator = torch.Generator().manual_seed(seed)
        shape = (batch, 1, *(resolution,) * len(modes))
        x = torch.randn(shape, generator=generator).to(device, policy.param_dtype)
        y = torch.randn(shape, generator=generator).to(device, policy.param_dtype)
        metrics = {
            "parameters": count_parameters(model),
            **_speed(_speed_calls(model, x, y, policy=policy, device=device, lr=1e-3), model, x, device=device,
                     warmup=warmup, repeats=repeats),
            "matmul_peak_gflops": peak,
        }
        metrics["forward_fraction_of_peak"] = metrics["forward_gflops_per_s"] / peak
        case = {
            "resolution": resolution, "batch_size": batch, "modes": list(modes), "width": width, "n_layers": n_layers
        }
        results.append((case, metrics))
    return results


def _neuralop() -> ModuleType:
    """The ``neuralop`` package (the optional ``compare`` extra), or an ImportError saying how to install it."""
    try:
        import neuralop
        import neuralop.models
    except ImportError as error:
        raise ImportError(
            "the compare_neuralop benchmark needs neuraloperator 2.0.0, an optional extra: "
            "pip install probneural[compare]"
        ) from error
    return neuralop


def neuralop_fno(modes: int, width: int, n_layers: int) -> nn.Module:
    """neuraloperator's 2-D FNO keeping the same ``2·modes × modes`` Fourier block as ours.

    neuraloperator counts both signs per axis and keeps ``n // 2 + 1`` frequencies on the
    last one, so ``n_modes=(2·modes, 2·modes − 1)`` matches our ``modes=(modes, modes)``.

    Raises:
        ImportError: neuraloperator is not installed.
    """
    return _neuralop().models.FNO(
        n_modes=(2 * modes, 2 * modes - 1), in_channels=1, out_channels=1, hidden_channels=width, n_layers=n_layers
    )


@SUITES.register("compare_neuralop")
def compare_neuralop(
    *,
    resolution: int = 64,
    n_train: int = 1000,
    n_test: int = 200,
    epochs: int = 20,
    batch_size: int = 16,
    modes: int = 12,
    width: int = 32,
    n_layers: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    solve_resolution: int | None = None,
    data_cache_dir: str | Path | None = None,
    warmup: int = 2,
    repeats: int = 5,
    matmul_size: int = 2048,
    progress: bool = True,
) -> list[Case]:
    """Our FNO against neuraloperator 2.0.0's on Darcy flow: same data, loop, epochs, batch size, seed and lr.

    Generates ``n_train + n_test`` Darcy samples once, then for each model: seeds torch,
    builds it (neuraloperator's ``FNO(n_modes=(2·modes, 2·modes − 1), hidden_channels=width,
    n_layers=n_layers)`` and ours ``FNO(1, 1, (modes, modes), width, n_layers)`` keep the same
    Fourier block), wraps it with :func:`~probneural.train.normalize`, trains it with the
    same :class:`~probneural.train.Trainer`, evaluates it on the test split, then times a
    training step and inference on the first ``batch_size`` training samples.

    Args:
        resolution: grid points per axis of the data.
        n_train: training samples.
        n_test: test samples.
        epochs: training epochs of each model.
        batch_size: batch size of training and of the timed batch.
        modes: kept Fourier modes per axis (our convention; ``resolution >= 2 * modes``).
        width: hidden channels.
        n_layers: Fourier layers.
        lr: Adam learning rate.
        seed: seed of the data, the weights and the batch order.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: precision policy (``fp32``, ``fp64``, ``bf16``, ``fp16``).
        solve_resolution: Darcy solve grid (:func:`probneural.data.darcy.generate`).
        data_cache_dir: on-disk data cache, or ``None``.
        warmup: untimed calls before timing.
        repeats: timed calls.
        matmul_size: side of the square matmul measuring the device's peak GFLOP/s.
        progress: show progress bars (data generation, training).

    Returns:
        Two ``(case, metrics)`` pairs, ``case["model"]`` ``"neuraloperator"`` then
        ``"probneural"``. Metrics: ``parameters`` (real numbers; a complex weight counts
        two), ``test_rel_l2``, ``test_rel_h1``, ``final_train_loss``, ``train_epoch_s``
        (median), the timings (``train_step_*``, ``inference_*``), ``forward_gflop``,
        ``forward_gflops_per_s``, ``matmul_peak_gflops``, ``library_version``; ours also
        ``train_step_ratio_ours_theirs`` and ``inference_ratio_ours_theirs`` (time ratios of the
        medians, below 1 when ours is faster), and the same names with ``_interleaved``: the
        median per-round ratio of ``2 · repeats`` rounds in which the two trained models' calls
        alternate (with ``_min`` / ``_max``, the extremes), which compares them under the same load.

    Raises:
        ImportError: neuraloperator is not installed.
        ValueError: an argument is out of range.
    """
    for name, value in (
        ("resolution", resolution),
        ("n_train", n_train),
        ("n_test", n_test),
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("modes", modes),
        ("width", width),
        ("n_layers", n_layers),
        ("repeats", repeats),
        ("matmul_size", matmul_size),
    ):
        check_int(name, value, 1)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    if resolution < 2 * modes:
        raise ValueError(f"resolution: {resolution} is too coarse for modes={modes}; need >= {2 * modes}")
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate; got {lr!r}")
    policy = PrecisionPolicy.from_name(precision)
    device = resolve_device(device)
    neuralop_version = _neuralop().__version__  # fails early if neuraloperator is missing
    data = darcy.generate(
        n_train + n_test,
        resolution,
        seed=seed,
        solve_resolution=solve_resolution,
        cache_dir=data_cache_dir,
        progress=progress,
    )
    train, test = data.split(n_train)
    peak = matmul_peak_gflops(device, _matmul_dtype(policy), matmul_size)
    x = train.x[:batch_size].to(device, policy.param_dtype)
    y = train.y[:batch_size].to(device, policy.param_dtype)
    builders: dict[str, tuple[Callable[[], nn.Module], str]] = {
        "neuraloperator": (lambda: neuralop_fno(modes, width, n_layers), neuralop_version),
        "probneural": (lambda: FNO(1, 1, (modes, modes), width, n_layers), probneural.__version__),
    }
    results: list[Case] = []
    calls: dict[str, dict[str, Callable[[], None]]] = {}  # per library: its trained model's timed calls
    for name, (build, version) in builders.items():
        torch.manual_seed(seed)
        operator = build()
        model = normalize(operator, train)
        trainer = Trainer(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            precision=precision,
            progress=progress,
        )
        history = trainer.fit(model, train)
        scores = evaluate(model, test, batch_size=batch_size, device=device, precision=precision)
        calls[name] = _speed_calls(model, x, y, policy=policy, device=device, lr=lr)
        metrics = {
            "parameters": count_parameters(operator),
            "test_rel_l2": scores["rel_l2"],
            "test_rel_h1": scores["rel_h1"],
            "final_train_loss": history[-1]["train_loss"],
            "train_epoch_s": median([record["seconds"] for record in history]),
            **_speed(calls[name], model, x, device=device, warmup=warmup, repeats=repeats),
            "matmul_peak_gflops": peak,
            "library_version": version,
        }
        case = {
            "model": name,
            "resolution": resolution,
            "solve_resolution": data.metadata["solve_resolution"],
            "n_train": n_train,
            "n_test": n_test,
            "epochs": epochs,
            "batch_size": batch_size,
            "modes": modes,
            "width": width,
            "n_layers": n_layers,
            "lr": lr,
            "seed": seed,
        }
        results.append((case, metrics))
    theirs_metrics, ours_metrics = results[0][1], results[1][1]
    for metric in ("train_step", "inference"):
        ours_metrics[f"{metric}_ratio_ours_theirs"] = ours_metrics[f"{metric}_ms"] / theirs_metrics[f"{metric}_ms"]
        # the two libraries' calls alternated (ours first in every other round): ratios under the same load
        times = interleaved_times({name: calls[name][metric] for name in calls}, device=device, rounds=2 * repeats,
                                  warmup=max(1, warmup))
        ours_metrics |= ratio_metrics(f"{metric}_ratio_ours_theirs_interleaved", times["probneural"],
                                      times["neuraloperator"])
    return results


def _effective(suite: Callable[..., Any], kwargs: dict[str, Any], name: str) -> Any:
    return kwargs.get(name, inspect.signature(suite).parameters[name].default)


def run_suite(
    name: str,
    out_dir: str | Path,
    environment: dict[str, Any],
    *,
    progress: bool = True,
    **kwargs: Any,
) -> list[Path]:
    """Run the suite registered as ``name`` and write one JSON record per case to ``out_dir``.

    Args:
        name: a name in :data:`SUITES` (``"throughput"``, ``"compare_neuralop"``, ``"data_generation"``,
            ``"hessian"``, ``"curvature_compare"``; ``SUITES.names()`` lists them).
        out_dir: directory of the records.
        environment: :func:`probneural.bench.capture_environment` of this run; its device
            type and precision must be those the suite runs with.
        progress: show progress bars.
        **kwargs: the suite's keyword arguments.

    Returns:
        Paths of the written records, one per case.

    Raises:
        KeyError: unknown suite ``name`` (the message lists the valid ones).
        ValueError: an argument the suite does not take, or an ``environment`` that
            disagrees with the suite's device type or precision.
    """
    suite = SUITES.get(name)
    accepted = set(inspect.signature(suite).parameters) - {"progress"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"{name} benchmark: unknown arguments {unknown}; it takes {sorted(accepted)}")
    precision = PrecisionPolicy.from_name(_effective(suite, kwargs, "precision")).name.value
    device_type = resolve_device(_effective(suite, kwargs, "device")).type
    recorded = (environment.get("precision", {}).get("name"), environment.get("device", {}).get("type"))
    if recorded != (precision, device_type):
        raise ValueError(
            f"environment: records precision={recorded[0]!r}, device type={recorded[1]!r} but the {name} "
            f"benchmark runs precision={precision!r} on {device_type!r}; capture the environment with the same settings"
        )
    results = suite(progress=progress, **kwargs)
    return [write_record(out_dir, name, case, metrics, environment) for case, metrics in results]
