"""ProbNeural: neural operators with uncertainty quantification in PyTorch.

``import probneural as pn`` is cheap: submodules load on first attribute access, and
Hydra, Pyro, GPyTorch and BoTorch are never imported here.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("operators", "data", "hessian", "train", "uq", "bench", "config", "allocator")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'probneural' has no attribute {name!r}")
