"""Matplotlib figures (Agg backend, imported lazily so that ``import probneural`` stays light)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

__all__ = ["plot_field_samples", "plot_learning_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_field_samples(x: Tensor, y: Tensor, pred: Tensor, path: str | Path, title: str = "") -> Path:
    """Input / truth / prediction / |error| for a few samples of 2-D fields (channel 0).

    Args:
        x: `(n, c_in, h, w)` inputs.
        y: `(n, c_out, h, w)` truths.
        pred: `(n, c_out, h, w)` predictions.
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    n = x.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(12, 2.9 * n), squeeze=False)
    for i in range(n):
        truth, guess = y[i, 0].detach().float().cpu(), pred[i, 0].detach().float().cpu()
        limits = (min(truth.min(), guess.min()).item(), max(truth.max(), guess.max()).item())
        panels = (x[i, 0], truth, guess, (guess - truth).abs())
        for j, (field, name) in enumerate(zip(panels, ("input", "truth", "prediction", "|error|"))):
            ax = axes[i, j]
            shared = limits if j in (1, 2) else (None, None)  # truth and prediction on one colour scale
            # axis 0 is x: transpose so that x runs horizontally
            image = ax.imshow(field.detach().float().cpu().T.numpy(), origin="lower", extent=(0, 1, 0, 1),
                              cmap="magma" if j == 3 else "viridis", vmin=shared[0], vmax=shared[1])
            fig.colorbar(image, ax=ax, fraction=0.046)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
