"""Matplotlib figures (Agg backend, imported lazily so that ``import probneural`` stays light)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "plot_calibration_curves",
    "plot_coverage_against_alpha",
    "plot_field_samples",
    "plot_learning_curves",
    "plot_posterior_samples",
    "plot_uncertainty_samples",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, title: str, dpi: int) -> Path:
    plt = _pyplot()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def _check_fields(name: str, field: Tensor) -> None:
    if field.dim() not in (3, 4):
        raise ValueError(f"{name}: expected 1-D or 2-D fields (n, c, *spatial); got shape {tuple(field.shape)}")


def _image(fig, ax, field: Tensor, *, cmap: str = "viridis", limits: tuple[float | None, float | None] = (None, None),
           colorbar: bool = True) -> None:
    """Draw a 2-D field on the unit square (axis 0 is x, drawn horizontally), with a colour bar unless told not to."""
    image = ax.imshow(field.T.numpy(), origin="lower", extent=(0, 1, 0, 1), cmap=cmap, vmin=limits[0], vmax=limits[1])
    if colorbar:
        fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks([])
    ax.set_yticks([])


def _cpu(field: Tensor) -> Tensor:
    return field.detach().float().cpu()


def plot_field_samples(x: Tensor, y: Tensor, pred: Tensor, path: str | Path, title: str = "") -> Path:
    """Input / truth / prediction / |error| for a few samples of 1-D or 2-D fields (channel 0).

    2-D fields are drawn as images (x horizontal); 1-D fields as curves, with truth and
    prediction on one axis.

    Args:
        x: `(n, c_in, *spatial)` inputs, one or two spatial axes.
        y: `(n, c_out, *spatial)` truths.
        pred: `(n, c_out, *spatial)` predictions.
        path: PNG file to write.
        title: figure title.
    """
    _check_fields("x", x)
    plt = _pyplot()
    n = x.shape[0]
    one_d = x.dim() == 3
    fig, axes = plt.subplots(n, 3 if one_d else 4, figsize=(12, 2.9 * n), squeeze=False)
    for i in range(n):
        source = x[i, 0].detach().float().cpu()
        truth, guess = y[i, 0].detach().float().cpu(), pred[i, 0].detach().float().cpu()
        error = (guess - truth).abs()
        if one_d:
            nodes = torch.linspace(0, 1, truth.shape[0])
            axes[i, 0].plot(torch.linspace(0, 1, source.shape[0]), source, color="tab:gray")
            axes[i, 1].plot(nodes, truth, label="truth", color="black")
            axes[i, 1].plot(nodes, guess, "--", label="prediction", color="tab:orange")
            axes[i, 2].semilogy(nodes, error.clamp_min(1e-12), color="tab:red")
            names = ("input", "truth and prediction", "|error|")
            axes[0, 1].legend(fontsize=8)
        else:
            limits = (min(truth.min(), guess.min()).item(), max(truth.max(), guess.max()).item())
            names = ("input", "truth", "prediction", "|error|")
            for j, field in enumerate((source, truth, guess, error)):
                # truth and prediction on one colour scale
                _image(fig, axes[i, j], field, cmap="magma" if j == 3 else "viridis",
                       limits=limits if j in (1, 2) else (None, None))
        if i == 0:
            for ax, name in zip(axes[0], names):
                ax.set_title(name)
    return _save(fig, path, title, dpi=90)


def plot_learning_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Training loss and validation relative L2 against epochs (log scale)."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(epochs, [r["train_loss"] for r in history], label="train loss")
    validated = [r for r in history if "val_rel_l2" in r]  # a run resumed with(out) a validation split has both
    if validated:
        ax.semilogy([r["epoch"] for r in validated], [r["val_rel_l2"] for r in validated],
                    label="validation relative L2")
    ax.set_xlabel("epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path, "", dpi=100)


def plot_uncertainty_samples(
    x: Tensor, y: Tensor, mean: Tensor, std: Tensor, lower: Tensor, upper: Tensor, path: str | Path, title: str = ""
) -> Path:
    """Input / truth / predictive mean / predictive std / |error| for a few samples (channel 0).

    2-D fields are drawn as images, truth and mean on one colour scale, std and |error| on another
    (so a calibrated std looks like the error), each with its colour bar (equal panel widths). 1-D fields are drawn as
    curves: the truth, the mean and the band ``[lower, upper]`` on one axis, std and |error| on another.

    Args:
        x: `(n, c_in, *spatial)` inputs, one or two spatial axes.
        y: `(n, c_out, *spatial)` truths.
        mean, std: `(n, c_out, *spatial)` predictive mean and standard deviation.
        lower, upper: `(n, c_out, *spatial)` predictive interval (drawn for 1-D fields).
        path: PNG file to write.
        title: figure title (e.g. the split and the interval's level).
    """
    _check_fields("x", x)
    plt = _pyplot()
    n = x.shape[0]
    one_d = x.dim() == 3
    fig, axes = plt.subplots(n, 3 if one_d else 5, figsize=(12 if one_d else 15, 2.9 * n), squeeze=False)
    for i in range(n):
        source, truth, centre, spread = (_cpu(t[i, 0]) for t in (x, y, mean, std))
        error = (centre - truth).abs()
        if one_d:
            nodes = torch.linspace(0, 1, truth.shape[0])
            axes[i, 0].plot(torch.linspace(0, 1, source.shape[0]), source, color="tab:gray")
            axes[i, 1].fill_between(nodes, _cpu(lower[i, 0]), _cpu(upper[i, 0]), color="tab:blue", alpha=0.25,
                                    label="interval")
            axes[i, 1].plot(nodes, truth, color="black", label="truth")
            axes[i, 1].plot(nodes, centre, "--", color="tab:blue", label="mean")
            axes[i, 2].semilogy(nodes, error.clamp_min(1e-12), color="tab:red", label="|error|")
            axes[i, 2].semilogy(nodes, spread.clamp_min(1e-12), color="tab:blue", label="std")
            names = ("input", "truth, mean and interval", "|error| and std")
            axes[0, 1].legend(fontsize=8)
            axes[0, 2].legend(fontsize=8)
        else:
            values = (min(truth.min(), centre.min()).item(), max(truth.max(), centre.max()).item())
            errors = (0.0, max(error.max(), spread.max()).item())
            names = ("input", "truth", "mean (truth's scale)", "std", "|error| (std's scale)")
            for j, field in enumerate((source, truth, centre, spread, error)):
                limits = values if j in (1, 2) else errors if j in (3, 4) else (None, None)
                _image(fig, axes[i, j], field, cmap="magma" if j >= 3 else "viridis", limits=limits)
        if i == 0:
            for ax, name in zip(axes[0], names):
                ax.set_title(name)
    return _save(fig, path, title, dpi=90)


def plot_calibration_curves(curves: Mapping[str, tuple[Tensor, Tensor]], path: str | Path, title: str = "") -> Path:
    """Observed against nominal coverage of central intervals, one line per split, and the diagonal.

    Args:
        curves: ``{split: (levels, observed)}``, each a `(L,)` tensor (see
            :func:`probneural.uq.metrics.calibration_curve`).
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="calibrated")
    for name, (levels, observed) in curves.items():
        ax.plot(_cpu(levels), _cpu(observed), marker=".", label=name)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, title, dpi=100)


def plot_coverage_against_alpha(
    pointwise: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    simultaneous: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Coverage of pointwise intervals (solid) and of whole fields by simultaneous bands (dashed) against α.

    Args:
        pointwise: ``{split: (alphas, coverage)}``: the fraction of points inside the ``1 − α`` intervals.
        simultaneous: ``{split: (alphas, coverage)}``: the fraction of fields inside the ``1 − α``
            simultaneous bands (NaN entries, levels a method cannot reach, are left out).
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    grid = torch.linspace(0, 1, 101)
    ax.plot(grid, 1 - grid, color="gray", linestyle=":", label="1 − α")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(dict.fromkeys([*pointwise, *simultaneous])):
        color = colors[k % len(colors)]
        if name in pointwise:
            ax.plot(*pointwise[name], color=color, marker=".", label=f"{name} (points)")
        if name in simultaneous:
            kept = [(a, c) for a, c in zip(*simultaneous[name]) if not math.isnan(c)]
            if kept:
                ax.plot(*zip(*kept), color=color, linestyle="--", marker="x", label=f"{name} (fields)")
    ax.set_xlabel("α (nominal miscoverage)")
    ax.set_ylabel("observed coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path, title, dpi=100)


def plot_posterior_samples(
    rows: Mapping[str, tuple[Tensor, Tensor, Tensor]], path: str | Path, title: str = ""
) -> Path:
    """Joint predictive draws next to the truth and the mean, one row per named sample (channel 0).

    2-D rows are drawn as images on the truth's colour scale (one colour bar per row); 1-D rows as
    the draws (thin) over the truth and the mean.

    Args:
        rows: ``{name: (truth, mean, draws)}`` with ``truth``, ``mean`` `(c, *spatial)` and
            ``draws`` `(k, c, *spatial)`, one or two spatial axes (rows may differ in grid).
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    if not rows:
        raise ValueError("rows: expected at least one (truth, mean, draws) row")
    k = max(draws.shape[0] for _, _, draws in rows.values())
    one_d = all(truth.dim() == 2 for truth, _, _ in rows.values())
    columns = 1 if one_d else 2 + k
    fig, axes = plt.subplots(len(rows), columns, figsize=(6 if one_d else 2.9 * columns, 2.7 * len(rows)),
                             squeeze=False)
    for i, (name, (truth, mean, draws)) in enumerate(rows.items()):
        _check_fields(f"rows[{name!r}] draws", draws)
        truth, mean, draws = _cpu(truth[0]), _cpu(mean[0]), _cpu(draws[:, 0])
        if truth.dim() == 1:
            nodes = torch.linspace(0, 1, truth.shape[0])
            for j, draw in enumerate(draws):
                axes[i, 0].plot(nodes, draw, color="tab:blue", linewidth=0.8, alpha=0.6,
                                label="draws" if j == 0 else None)
            axes[i, 0].plot(nodes, truth, color="black", label="truth")
            axes[i, 0].plot(nodes, mean, "--", color="tab:orange", label="mean")
            axes[i, 0].set_ylabel(name)
            axes[i, 0].legend(fontsize=7)
            continue
        limits = (truth.min().item(), truth.max().item())
        panels = [("truth", truth), ("mean", mean), *((f"draw {j + 1}", d) for j, d in enumerate(draws))]
        for j, (label, field) in enumerate(panels):
            _image(fig, axes[i, j], field, limits=limits, colorbar=j == len(panels) - 1)
            axes[i, j].set_title(f"{name}: {label}" if j == 0 else label, fontsize=9)
        for j in range(len(panels), columns):
            axes[i, j].axis("off")
    return _save(fig, path, title, dpi=90)
