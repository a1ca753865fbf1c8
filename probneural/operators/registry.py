"""The operator registry: every operator family registers its constructor by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from probneural.operators.fno import FNO
from probneural.registry import Registry

__all__ = ["OPERATORS", "build", "name_of"]

OPERATORS: Registry[type[nn.Module]] = Registry("operator")
OPERATORS.register("fno")(FNO)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Construct the operator registered as ``name`` with keyword arguments ``kwargs``."""
    return OPERATORS.get(name)(**kwargs)


def name_of(model: nn.Module) -> str:
    """The registry name of ``model``'s class (used by checkpoints to rebuild it)."""
    for name in OPERATORS:
        if type(model) is OPERATORS.get(name):
            return name
    raise ValueError(f"model: {type(model).__name__} is not a registered operator; known: {OPERATORS.names()}")
