"""The one place where config nodes become objects, and configs become library keyword arguments."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

__all__ = ["instantiate", "to_kwargs"]


def instantiate(node: DictConfig, **overrides: Any) -> Any:
    """Build the object described by a node with a ``_target_`` (containers become plain Python)."""
    return hydra_instantiate(node, _convert_="all", **overrides)


def to_kwargs(node: DictConfig, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config node as plain keyword arguments, without the keys in ``drop``."""
    kwargs = OmegaConf.to_container(node, resolve=True)
    assert isinstance(kwargs, dict)
    return {k: v for k, v in kwargs.items() if k not in drop}
