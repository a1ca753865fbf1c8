"""The Markdown report of a training run: errors per test split, size, time, and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from probneural.data.dataset import OperatorDataset
from probneural.io import atomic_write
from probneural.operators.parameters import count_parameters
from probneural.plots import plot_field_samples, plot_learning_curves
from probneural.train.precision import PrecisionPolicy
from probneural.train.trainer import evaluate

__all__ = ["write_training_report"]


def write_training_report(
    run_dir: str | Path,
    model: nn.Module,
    splits: Mapping[str, OperatorDataset],
    history: Sequence[dict],
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    n_plot_samples: int = 4,
    title: str = "Training report",
) -> dict[str, dict[str, float]]:
    """Evaluate ``model`` on every split, plot samples and learning curves, write ``report.md``.

    Args:
        run_dir: directory receiving ``report.md``, ``samples_<i>.png`` (the ``i``-th split) and
            ``learning_curves.png``.
        model: trained raw-to-raw model.
        splits: named test sets, e.g. ``{"test (s=33)": ..., "zero-shot (s=65)": ...}``.
        history: per-epoch records from :meth:`Trainer.fit`.
        device: device for evaluation.
        precision: precision policy name for evaluation.
        n_plot_samples: samples drawn per split (1-D and 2-D problems).
        title: report heading.

    Returns:
        ``{split: {"rel_l2": ..., "rel_h1": ...}}``.
    """
    run_dir = Path(run_dir)
    results = {name: evaluate(model, ds, device=device, precision=precision) for name, ds in splits.items()}
    lines = [f"# {title}", "", "| test split | samples | grid | relative L2 | relative H1 |", "|---|---|---|---|---|"]
    for name, ds in splits.items():
        grid = "×".join(str(n) for n in ds.spatial_shape)
        lines.append(f"| {name} | {len(ds)} | {grid} | {results[name]['rel_l2']:.4f} | {results[name]['rel_h1']:.4f} |")
    seconds = sum(r["seconds"] for r in history)
    lines += [
        "",
        f"- trainable parameters: {count_parameters(model):,} (real; normaliser statistics excluded)",
        f"- device: {device}; precision: {precision}",
        f"- epochs: {len(history)}; training time: {seconds:.1f} s ({seconds / max(len(history), 1):.2f} s per epoch)",
        f"- final training loss: {history[-1]['train_loss']:.4f}" if history else "- no epochs run",
        "",
        "![learning curves](learning_curves.png)",
    ]
    plot_learning_curves(history, run_dir / "learning_curves.png")
    for index, (name, ds) in enumerate(splits.items()):
        if len(ds.spatial_shape) > 2 or n_plot_samples < 1:
            continue
        k = min(n_plot_samples, len(ds))
        parameter = next(model.parameters())
        with torch.no_grad(), PrecisionPolicy.from_name(precision).autocast(parameter.device):
            model.eval()
            pred = model(ds.x[:k].to(parameter.device, parameter.dtype)).float().cpu()
        png = f"samples_{index}.png"
        plot_field_samples(ds.x[:k], ds.y[:k], pred, run_dir / png, title=name)
        lines += ["", f"## {name}", "", f"![{name}]({png})"]
    atomic_write(run_dir / "report.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return results
