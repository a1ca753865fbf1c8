"""Fit a UQ method to a trained operator and report its predictive quality on named test splits.

:class:`UQSpec` names a method and its options (checked against the method's signature when it is
made, before any data are generated or fitted). :func:`run_uq` fits it (:meth:`UQSpec.fit`) and
writes the report (:func:`write_uq_report`) into one directory:

* ``results.json``: per split the scores of :func:`probneural.uq.metrics.evaluate` (plus
  ``ood_auroc`` of each out-of-distribution split against the reference split), the calibration
  curve, the coverage of simultaneous bands against α and the prediction time; the posterior's
  method, fit time and :meth:`~probneural.uq.Posterior.summary` (and its base's); ``alpha``;
* ``report.md``: the table of scores per split, fit time and summary, and the figures:
* ``calibration.png`` (observed against nominal coverage), ``coverage.png`` (coverage against α,
  pointwise and of whole fields), ``posterior_samples.png`` (joint draws) and
  ``samples_<split>.png`` (input, truth, mean, std, |error|; 1-D: curves with the interval).

Both ``python -m probneural.evaluate`` and the ``uq=`` option of ``python -m probneural.train``
call :func:`run_uq`.
"""

from __future__ import annotations

import inspect
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from probneural.data.dataset import OperatorDataset
from probneural.io import atomic_write
from probneural.plots import (
    plot_calibration_curves,
    plot_coverage_against_alpha,
    plot_posterior_samples,
    plot_uncertainty_samples,
)
from probneural.uq.conformal import check_calibration_size
from probneural.uq.metrics import calibration_curve, evaluate
from probneural.uq.options import check_method_options
from probneural.uq.posterior import METHODS, Posterior, fit, model_parameters, predict_in_batches
from probneural.uq.prediction import LevelUnavailableError, Prediction, check_alpha
from probneural.validation import InertOptionWarning, check_int

__all__ = [
    "FIT_SPLITS", "HELD_OUT_METHODS", "SCORES", "UQSpec", "check_report_options", "posterior_record", "run_uq",
    "follow_training_recipe", "summary_lines", "uq_precision", "write_uq_report",
]

FIT_SPLITS = ("train", "calibration")
"""Splits a method can be fitted on: the training data, or a held-out calibration set (split conformal)."""

HELD_OUT_METHODS = frozenset({"conformal"})
"""Methods whose guarantee needs data disjoint from the training data: fitted on ``"calibration"`` only."""

SCORES = ("rel_l2", "nll", "crps", "energy_score", "coverage", "width", "function_coverage", "calibration_error",
          "ood_auroc")
"""The columns of the report's table (keys of :func:`probneural.uq.metrics.evaluate`)."""

_HEADERS = ("rel. L2", "NLL", "CRPS", "energy", "coverage", "width", "field coverage", "calib. error", "OOD AUROC")
# levels of the simultaneous bands in coverage.png (the pointwise curve reuses the calibration curve's levels)
_BAND_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
_N_DRAWS_PLOTTED = 3


def _method_options(name: str, options: Mapping[str, Any], argument: str, *, on_posterior: bool) -> dict[str, Any]:
    """``options`` checked against the keyword options of the registered method ``name``: their names,
    and their values with the method's own check (:mod:`probneural.uq.options`), which fits nothing."""
    method = METHODS.get(name)
    parameters = inspect.signature(method).parameters
    valid = sorted(k for k, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(valid))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(f"{argument}: method {name!r} has no option(s) {unknown}; expected some of {valid}")
    try:
        check_method_options(method, options, on_posterior=on_posterior)
    except ValueError as error:
        raise ValueError(f"{argument}: {error}") from error
    return dict(options)


@dataclass(frozen=True)
class UQSpec:
    """A UQ method to fit to a trained operator, checked when made.

    Args:
        name: what the results are called (the report's directory name, e.g. ``"laplace_kfac"``).
        method: a registered method (``probneural.uq.METHODS.names()``).
        options: its keyword options (its defaults otherwise).
        fit_split: ``"train"``, or ``"calibration"`` for methods fitted on held-out data (conformal);
            ``None`` (default): ``"calibration"`` for :data:`HELD_OUT_METHODS`, else ``"train"``.
        base: a registered method first fitted on the training split; its posterior, instead of the
            operator, is what ``method`` is fitted to (conformal bands on a Laplace posterior).
        base_options: ``base``'s keyword options.

    Raises:
        KeyError: an unregistered ``method`` or ``base`` (listing the registered ones).
        ValueError: naming ``options`` or ``base_options`` with an option the method does not have,
            or a value its check refuses (:mod:`probneural.uq.options`, which also warns of
            options the others make ineffective; nothing is fitted to check them); ``fit_split``
            not in :data:`FIT_SPLITS` (or not ``"calibration"`` for a method of
            :data:`HELD_OUT_METHODS`), a ``base`` of :data:`HELD_OUT_METHODS`, or ``base_options``
            without ``base``.
    """

    name: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fit_split: str | None = None
    base: str | None = None
    base_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty string; got {self.name!r}")
        object.__setattr__(self, "options", _method_options(self.method, self.options, "options",
                                                            on_posterior=self.base is not None))
        if self.fit_split is None:
            object.__setattr__(self, "fit_split", "calibration" if self.method in HELD_OUT_METHODS else "train")
        if self.fit_split not in FIT_SPLITS:
            raise ValueError(f"fit_split: expected one of {list(FIT_SPLITS)}; got {self.fit_split!r}")
        if self.method in HELD_OUT_METHODS and self.fit_split != "calibration":
            raise ValueError(f"fit_split: {self.method!r} needs held-out data (its coverage guarantee does not hold "
                             f"on the training data); expected 'calibration', got {self.fit_split!r}")
        if self.base is None and self.base_options:
            raise ValueError(f"base_options: given without a base method; got {dict(self.base_options)}")
        if self.base is not None:
            object.__setattr__(self, "base_options",
                               _method_options(self.base, self.base_options, "base_options", on_posterior=False))
            if self.base in HELD_OUT_METHODS:
                raise ValueError(f"base: {self.base!r} needs held-out data, but a base is fitted on the training split")

    def check_calibration_size(self, n_calibration: int, alpha: float, *, size_name: str = "n_calibration",
                               alpha_name: str = "alpha") -> None:
        """For a method fitted on held-out data (conformal): check that ``n_calibration`` functions allow
        its bands at its own level and at the report's level ``alpha`` (known before any data exist).

        Args:
            n_calibration: size of the calibration split.
            alpha: the report's miscoverage level.
            size_name, alpha_name: what the caller calls them (config paths), for the message.

        Raises:
            ValueError: naming ``size_name`` with the size the levels need, or ``scale_split``.
        """
        if self.method not in HELD_OUT_METHODS:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InertOptionWarning)  # given when the spec was made
            options = check_method_options(METHODS.get(self.method), self.options, on_posterior=self.base is not None)
        n = check_int(size_name, n_calibration, 1)
        try:
            check_calibration_size(n, [options["alpha"], alpha], scale_split=options["scale_split"],
                                   on_posterior=self.base is not None)
        except ValueError as error:
            raise ValueError(f"{size_name}={n} is too small for {self.name}'s bands at its fit level "
                             f"options.alpha={options['alpha']} and the report's {alpha_name}={alpha}: "
                             f"{error}") from error

    def fit(
        self, model: nn.Module, splits: Mapping[str, OperatorDataset], *, batch_size: int = 32, progress: bool = True,
        seed: int | None = None,
    ) -> Posterior:
        """Fit the method (after its base, if any) to the trained ``model``.

        Args:
            model: the trained operator, raw fields in and out (usually a ``NormalizedOperator``).
            splits: named data sets holding ``"train"`` and, for ``fit_split="calibration"``,
                ``"calibration"``; moved to the model's device and dtype and read in order in
                batches of ``batch_size``.
            batch_size: samples per batch of the fitting loaders.
            progress: show the methods' progress bars (for methods with a ``progress`` option
                that ``options`` does not set).
            seed: the seed of methods with a ``seed`` option that ``options`` does not set (the
                run's seed; ``None`` leaves the methods' defaults).

        Returns:
            The fitted posterior (``method`` fitted on ``splits[fit_split]``).

        Raises:
            ValueError: naming ``splits`` if a split the method needs is missing.
        """
        batch_size = check_int("batch_size", batch_size, 1)
        needed = ["train"] if self.base is not None else []
        missing = [s for s in dict.fromkeys([*needed, self.fit_split]) if s not in splits]
        if missing:
            raise ValueError(f"splits: {self.name} needs the split(s) {missing}; got {sorted(splits)}")
        device, dtype = model_parameters(model)

        def loader(split: str) -> DataLoader:
            return DataLoader(splits[split].to(device, dtype), batch_size=batch_size, shuffle=False)

        def fitted(method: str, target: nn.Module | Posterior, split: str, options: Mapping[str, Any]) -> Posterior:
            parameters = inspect.signature(METHODS.get(method)).parameters
            defaults = {"progress": progress} if "progress" in parameters else {}
            if seed is not None and "seed" in parameters:
                defaults["seed"] = check_int("seed", seed, 0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InertOptionWarning)  # given once, when the spec was made
                return fit(method, target, loader(split), **(defaults | dict(options)))

        target = model if self.base is None else fitted(self.base, model, "train", self.base_options)
        return fitted(self.method, target, self.fit_split, self.options)


def posterior_record(posterior: Posterior) -> dict[str, Any]:
    """``{"method", "fit_seconds", "summary"}`` of a fitted posterior, with ``"base"`` the same for the
    posterior it was built on (a conformal posterior's ``base``), if any."""
    record = {"method": posterior.method, "fit_seconds": posterior.fit_seconds, "summary": posterior.summary()}
    base = getattr(posterior, "base", None)
    if isinstance(base, Posterior):
        record["base"] = posterior_record(base)
    return record


def _total_fit_seconds(record: Mapping[str, Any]) -> float:
    return record["fit_seconds"] + (_total_fit_seconds(record["base"]) if "base" in record else 0.0)


def _band_coverage(pred: Prediction, y: torch.Tensor, alpha: float, n_samples: int,
                   generator: torch.Generator) -> float:
    """Fraction of fields of ``y`` inside the simultaneous ``1 − alpha`` band; NaN at a level ``pred`` cannot
    give (a conformal band needs ``⌈(n + 1)(1 − alpha)⌉ <= n`` calibration functions)."""
    try:
        lower, upper = pred.simultaneous_interval(alpha, n_samples=n_samples, generator=generator)
    except LevelUnavailableError:
        return math.nan
    inside = ((lower <= y) & (y <= upper)).flatten(1).all(1)
    return inside.to(torch.float64).mean().item()


# The options a method that trains new operators takes from the run's recipe unless given (else it would
# train them with its own defaults, e.g. an ensemble's 20 epochs beside a base model trained for 500) ...
_RECIPE_OPTIONS = {"ensemble": ("epochs", "lr", "weight_decay", "loss")}
# ... and the recipe settings it cannot follow, with what it uses instead.
_FIXED_TRAINING = {"optimizer": "adam", "scheduler": "cosine", "grad_clip": None}


def follow_training_recipe(spec: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``UQSpec`` keyword arguments whose method (or base method) trains new operators, with the options
    that the run's training recipe fixes filled in where ``spec`` does not set them.

    Args:
        spec: ``UQSpec`` keyword arguments (``name``, ``method``, ``options``, ``base``, ``base_options``...).
        recipe: the run's :func:`~probneural.config.recipe.training_recipe`.

    Returns:
        ``spec`` with its options completed (other methods: unchanged).

    Warns:
        UserWarning: naming the recipe settings the new operators cannot follow (they train with
        Adam, a cosine schedule, no gradient clipping and without autocast).
    """
    spec = dict(spec)
    for method_key, options_key in (("method", "options"), ("base", "base_options")):
        # AdamW's decoupled weight decay is no value for Adam's coupled one: only an Adam run's is taken
        names = [n for n in _RECIPE_OPTIONS.get(spec.get(method_key) or "", ())
                 if n != "weight_decay" or recipe["optimizer"] == "adam"]
        if not names:
            continue
        spec[options_key] = {name: recipe[name] for name in names} | dict(spec.get(options_key) or {})
        differ = {k: recipe[k] for k, used in _FIXED_TRAINING.items() if recipe[k] != used}
        if recipe["precision"] not in ("fp32", "fp64"):
            differ["precision"] = recipe["precision"]
        if differ:
            warnings.warn(f"{spec[method_key]}: new members train with Adam, a cosine schedule, no gradient clipping "
                          f"and without autocast, unlike the run ({differ}); {', '.join(names)} follow the run",
                          stacklevel=2)
    return spec


def uq_precision(model: nn.Module) -> str:
    """The precision policy UQ methods run ``model`` under: its parameters' dtype, without autocast.

    A run trained with ``bf16`` or ``fp16`` autocast keeps float32 parameters, and its posterior is
    fitted and scored in float32 (curvature or kernel algebra in half precision would be useless).
    """
    return "fp64" if model_parameters(model)[1] == torch.float64 else "fp32"


def check_report_options(alpha: float, batch_size: int, n_samples: int, n_plot_samples: int
                         ) -> tuple[float, int, int, int]:
    """The report's options, checked (see :func:`write_uq_report`): entry points call this before any
    training or fitting, so that a bad value fails at once rather than after the work."""
    return (check_alpha(alpha), check_int("batch_size", batch_size, 1), check_int("n_samples", n_samples, 2),
            check_int("n_plot_samples", n_plot_samples, 0))


def write_uq_report(
    out_dir: str | Path,
    posterior: Posterior,
    splits: Mapping[str, OperatorDataset],
    *,
    alpha: float = 0.1,
    reference: str | None = "test",
    ood: Collection[str] = (),
    batch_size: int = 32,
    n_samples: int = 100,
    n_plot_samples: int = 4,
    seed: int = 0,
    title: str = "Uncertainty report",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``posterior`` on every split and write ``results.json``, ``report.md`` and figures into ``out_dir``.

    Args:
        out_dir: the report's directory (created).
        posterior: a fitted posterior.
        splits: named test sets, e.g. ``{"test": ..., "zero_shot": ..., "shift_contrast": ...}``,
            evaluated in this order (the reference first) and predicted ``batch_size`` samples at a
            time as stored: on the device and dtype the posterior's model expects.
        alpha: miscoverage level of the scored intervals, in (0, 1).
        reference: the in-distribution split the ``ood`` splits are told apart from.
        ood: splits given ``ood_auroc``: the AUROC of the mean predicted variance separating them
            from ``reference`` (:func:`probneural.uq.metrics.evaluate` with ``ood``).
        batch_size: samples per :meth:`Posterior.predict` call.
        n_samples: joint predictive draws behind the energy score and the simultaneous bands.
        n_plot_samples: samples drawn per split in ``samples_<split>.png`` (1-D and 2-D fields; 0: none).
        seed: seeds the predictive draws of every split (the same draws whatever the split order).
        title: the report's heading.
        extra: JSON-serialisable entries added to ``results.json`` (e.g. the method's configuration).

    Returns:
        The content of ``results.json``: ``{"title", "alpha", "n_samples", "batch_size", "seed", "posterior",
        "fit_seconds", "splits": {split: {scores..., "n", "grid", "predict_seconds", "calibration",
        "band_coverage"}}, **extra}``.

    Raises:
        ValueError: naming ``splits`` (empty), ``reference`` or ``ood`` (not a split), ``alpha``,
            ``batch_size``, ``n_samples`` or ``n_plot_samples``.
    """
    alpha, batch_size, n_samples, n_plot_samples = check_report_options(alpha, batch_size, n_samples, n_plot_samples)
    if not splits:
        raise ValueError("splits: expected at least one named test set; got none")
    unknown = sorted(set(ood) - set(splits))
    if unknown:
        raise ValueError(f"ood: {unknown} are not splits; expected some of {sorted(splits)}")
    if ood and (reference not in splits or reference in ood):
        raise ValueError(f"reference: expected one of the splits {sorted(splits)} other than the ood ones "
                         f"{sorted(ood)}; got {reference!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = sorted(splits, key=lambda name: name != reference)  # stable: the reference first
    scores: dict[str, dict[str, Any]] = {}
    curves, points, bands, draws = {}, {}, {}, {}
    reference_prediction = None
    for name in order:
        data = splits[name]
        began = time.perf_counter()
        pred = predict_in_batches(posterior, data.x, batch_size)
        seconds = time.perf_counter() - began
        y = data.y.to(pred.mean.device, pred.mean.dtype)

        def generator() -> torch.Generator:
            return torch.Generator(pred.mean.device).manual_seed(seed)

        split_scores = evaluate(pred, y, alpha, n_samples=n_samples, generator=generator())
        if name in ood:
            split_scores["ood_auroc"] = evaluate(reference_prediction, splits[reference].y, alpha, ood=pred,
                                                 n_samples=n_samples, generator=generator())["ood_auroc"]
        levels, observed = calibration_curve(pred, y)
        coverage = [_band_coverage(pred, y, a, n_samples, generator()) for a in _BAND_ALPHAS]
        scores[name] = {
            **split_scores,
            "n": len(data),
            "grid": list(data.spatial_shape),
            "predict_seconds": seconds,
            "calibration": {"levels": levels.tolist(), "observed": observed.tolist()},
            "band_coverage": {"alphas": list(_BAND_ALPHAS), "coverage": coverage},
        }
        curves[name] = (levels, observed)
        points[name] = ((1 - levels).tolist(), observed.tolist())
        bands[name] = (list(_BAND_ALPHAS), coverage)
        if len(data.spatial_shape) <= 2:
            first = pred.select(slice(0, 1))
            draws[name] = (y[0], first.mean[0], first.sample(_N_DRAWS_PLOTTED, generator=generator())[:, 0])
            if n_plot_samples:
                shown = pred.select(slice(0, min(n_plot_samples, len(data))))
                plot_uncertainty_samples(data.x[: n_plot_samples], y[: n_plot_samples], shown.mean, shown.std,
                                         *shown.interval(alpha), out_dir / f"samples_{name}.png",
                                         title=f"{name}: {1 - alpha:.0%} interval" if len(data.spatial_shape) == 1
                                         else f"{name}: predictive mean and standard deviation")
        if name == reference:
            reference_prediction = pred
    plot_calibration_curves(curves, out_dir / "calibration.png")
    plot_coverage_against_alpha(points, bands, out_dir / "coverage.png")
    if draws:
        plot_posterior_samples(draws, out_dir / "posterior_samples.png",
                               title="joint predictive draws of the first sample (observation noise included)")
    record = posterior_record(posterior)
    results = {
        "title": title,
        "alpha": alpha,
        "n_samples": n_samples,
        "batch_size": batch_size,
        "seed": seed,
        "posterior": record,
        "fit_seconds": _total_fit_seconds(record),
        "splits": {name: scores[name] for name in splits},
        **(extra or {}),
    }
    atomic_write(out_dir / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1)))
    lines = _markdown(results, samples=[name for name in splits if (out_dir / f"samples_{name}.png").exists()],
                      posterior_samples=bool(draws))
    atomic_write(out_dir / "report.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return results


def _number(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _short(value: Any, limit: int = 90) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit_lines(record: Mapping[str, Any], indent: str = "") -> list[str]:
    lines = [f"{indent}- {record['method']}: fitted in {record['fit_seconds']:.2f} s"]
    lines += [f"{indent}  - {key}: `{_short(value)}`" for key, value in record["summary"].items()]
    if "base" in record:
        lines += [f"{indent}  - on the base posterior:", *_fit_lines(record["base"], indent + "    ")]
    return lines


def _markdown(results: Mapping[str, Any], *, samples: list[str], posterior_samples: bool) -> list[str]:
    alpha = results["alpha"]
    lines = [
        f"# {results['title']}",
        "",
        f"Intervals at α = {alpha:g} ({1 - alpha:.0%} nominal coverage, pointwise and of whole fields); "
        f"sampled scores from {results['n_samples']} joint draws. Lower is better except coverage and field "
        f"coverage (target {1 - alpha:g}) and OOD AUROC (higher is better, against the reference split: 0.5 when the "
        "variance does not tell shifted fields apart, below 0.5 when it is lower on them). NLL is the Gaussian "
        "NLL of the predictive mean and variance, per point (for a mixture, of the Gaussian with its moments); "
        "the calibration error averages |observed − nominal| over the levels 0.05, …, 0.95 the method can give.",
        "",
        "| split | samples | grid | " + " | ".join(_HEADERS) + " |",
        "|---|---|---|" + "---|" * len(_HEADERS),
    ]
    for name, scores in results["splits"].items():
        grid = "×".join(str(n) for n in scores["grid"])
        values = " | ".join(_number(scores.get(key)) for key in SCORES)
        lines.append(f"| {name} | {scores['n']} | {grid} | {values} |")
    lines += ["", f"Fit time: {results['fit_seconds']:.2f} s.", "", "## Posterior", "",
              *_fit_lines(results["posterior"])]
    lines += ["", "## Calibration", "", "![calibration](calibration.png)", "", "![coverage against α](coverage.png)"]
    if posterior_samples:
        lines += ["", "## Joint draws", "", "![posterior samples](posterior_samples.png)"]
    for name in samples:
        lines += ["", f"## {name}", "", f"![{name}](samples_{name}.png)"]
    return lines


def run_uq(
    spec: UQSpec,
    model: nn.Module,
    splits: Mapping[str, OperatorDataset],
    out_dir: str | Path,
    *,
    alpha: float = 0.1,
    batch_size: int = 32,
    n_samples: int = 100,
    n_plot_samples: int = 4,
    seed: int = 0,
    progress: bool = True,
    title: str | None = None,
) -> dict[str, Any]:
    """Fit ``spec`` to ``model`` and write its report on the test splits into ``out_dir``.

    Args:
        spec: the method.
        model: the trained operator (raw fields in and out).
        splits: the splits of :func:`probneural.config.data.build_splits` (moved to the model's
            device and dtype): ``"train"``, ``"test"``,
            and optionally ``"calibration"`` (needed for ``fit_split="calibration"``),
            ``"zero_shot"`` and ``"shift_<name>"``. Every split but train and calibration is
            evaluated; each ``shift_*`` split gets its ``ood_auroc`` against ``"test"``.
        out_dir: the report's directory.
        alpha, n_samples, n_plot_samples, seed: see :func:`write_uq_report`; ``seed`` also seeds the
            method (see :meth:`UQSpec.fit`).
        batch_size: samples per fitting batch and per prediction.
        progress: show the methods' progress bars.
        title: the report's heading (default: the spec's name and method).

    Returns:
        The content of ``results.json`` (:func:`write_uq_report`), with the spec under ``"uq"``.
    """
    device, dtype = model_parameters(model)
    splits = {name: data.to(device, dtype) for name, data in splits.items()}
    posterior = spec.fit(model, splits, batch_size=batch_size, progress=progress, seed=seed)
    tests = {name: data for name, data in splits.items() if name not in FIT_SPLITS}
    return write_uq_report(
        out_dir, posterior, tests,
        alpha=alpha, reference="test", ood=[name for name in tests if name.startswith("shift_")],
        batch_size=batch_size, n_samples=n_samples, n_plot_samples=n_plot_samples, seed=seed,
        title=title or f"Uncertainty: {spec.name} ({spec.method})",
        extra={"uq": asdict(spec)},
    )


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per split of a :func:`write_uq_report` result: relative L2, NLL, CRPS, coverage (and OOD AUROC)."""
    lines = []
    for name, s in results["splits"].items():
        ood = f", OOD AUROC {s['ood_auroc']:.3f}" if "ood_auroc" in s else ""
        lines.append(f"{name}: relative L2 {s['rel_l2']:.4f}, NLL {s['nll']:.3f}, CRPS {s['crps']:.4g}, "
                     f"coverage {s['coverage']:.3f} at α = {results['alpha']:g}{ood}")
    return lines
