"""Parameter counting that is honest about complex numbers."""

from __future__ import annotations

from torch import nn

__all__ = ["count_parameters"]


def count_parameters(model: nn.Module) -> int:
    """Number of real trainable parameters of ``model``: a complex entry counts as two."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters() if p.requires_grad)
