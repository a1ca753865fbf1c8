"""The training recipe of a run config, for UQ methods that train new operators (an ensemble's members)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

__all__ = ["training_recipe"]


def training_recipe(cfg: DictConfig) -> dict[str, Any]:
    """The settings that trained a run: ``epochs``, ``lr``, ``weight_decay``, ``loss``, ``optimizer``,
    ``scheduler``, ``grad_clip`` and ``precision`` (of a composed train config or a run's ``config.yaml``)."""
    return {
        "epochs": cfg.trainer.epochs, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
        "loss": cfg.trainer.loss, "optimizer": cfg.optim.optimizer, "scheduler": cfg.optim.scheduler,
        "grad_clip": cfg.trainer.grad_clip, "precision": cfg.precision.name,
    }
