"""Matplotlib figures (Agg backend, imported lazily so that ``import probneural`` stays light)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["plot_field_samples", "plot_learning_curves"]


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
    if x.dim() not in (3, 4):
        raise ValueError(f"x: expected 1-D or 2-D fields (n, c, *spatial); got shape {tuple(x.shape)}")
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
                shared = limits if j in (1, 2) else (None, None)  # truth and prediction on one colour scale
                # axis 0 is x: transpose so that x runs horizontally
                image = axes[i, j].imshow(field.T.numpy(), origin="lower", extent=(0, 1, 0, 1),
                                          cmap="magma" if j == 3 else "viridis", vmin=shared[0], vmax=shared[1])
                fig.colorbar(image, ax=axes[i, j], fraction=0.046)
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
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
    if history and "val_rel_l2" in history[0]:
        ax.semilogy(epochs, [r["val_rel_l2"] for r in history], label="test relative L2")
    ax.set_xlabel("epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path, "", dpi=100)
