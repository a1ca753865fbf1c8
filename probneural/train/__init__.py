"""Training: the trainer, losses, precision policy, checkpoints and the run report.

``python -m probneural.train`` is the Hydra entry point (``probneural/train/__main__.py``).
"""

from probneural.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from probneural.train.losses import LOSSES, relative_h1, relative_l2
from probneural.train.normalized import NormalizedOperator
from probneural.train.precision import Precision, PrecisionPolicy, resolve_device
from probneural.train.trainer import NonFiniteLossError, Trainer, evaluate, load_model, normalize

__all__ = [
    "CheckpointError",
    "LOSSES",
    "NonFiniteLossError",
    "NormalizedOperator",
    "Precision",
    "PrecisionPolicy",
    "Trainer",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "normalize",
    "relative_h1",
    "relative_l2",
    "resolve_device",
    "save_checkpoint",
]
