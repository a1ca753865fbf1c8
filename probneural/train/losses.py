"""Relative L2 and H1 losses for fields `(b, c, *spatial)`, averaged over the batch."""

from __future__ import annotations

import torch
from torch import Tensor

from probneural.registry import Registry

__all__ = ["LOSSES", "relative_l2", "relative_h1", "gradients"]

LOSSES: Registry = Registry("loss")


def _per_sample_norm(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1)


@LOSSES.register("rel_l2")
def relative_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``||pred - target||_2 / ||target||_2`` (all channels together).

    Args:
        pred: `(b, c, *spatial)` prediction.
        target: `(b, c, *spatial)` truth.

    Returns:
        scalar tensor.
    """
    _check_pair(pred, target)
    return (_per_sample_norm(pred - target) / _per_sample_norm(target)).mean()


def gradients(u: Tensor) -> tuple[Tensor, ...]:
    """First derivatives of `(b, c, *spatial)` fields along each spatial axis.

    Second-order finite differences (central inside, one-sided at the ends) on the node
    grid ``x_i = i / (n - 1)`` of the unit interval, so the H1 norm needs no periodicity.
    Returns one `(b, c, *spatial)` tensor per spatial axis.
    """
    axes = tuple(range(2, u.dim()))
    if any(u.shape[a] < 3 for a in axes):
        raise ValueError(f"u: second-order differences need at least 3 points per spatial axis; got shape "
                         f"{tuple(u.shape)}")
    spacing = [1.0 / (u.shape[a] - 1) for a in axes]
    return torch.gradient(u, spacing=spacing, dim=axes, edge_order=2)


@LOSSES.register("rel_h1")
def relative_h1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean relative H1 error: ``sqrt(|e|^2 + |∇e|^2) / sqrt(|y|^2 + |∇y|^2)`` per sample.

    Gradients come from :func:`gradients`; ``pred``/``target`` as in :func:`relative_l2`.
    """
    _check_pair(pred, target)

    def h1_norm(u: Tensor) -> Tensor:
        # the norm of the per-part norms, not the square root of a sum of squares: its gradient at an exact
        # fit (u = 0) is the norm's subgradient 0, where sqrt's would be 0 · ∞ = NaN
        parts = [_per_sample_norm(u), *(_per_sample_norm(du) for du in gradients(u))]
        return torch.linalg.vector_norm(torch.stack(parts), dim=0)

    return (h1_norm(pred - target) / h1_norm(target)).mean()


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
