"""The training loop shared by the UQ methods that train (ensembles, MC dropout, PNO) and its helpers.

:class:`~probneural.train.Trainer` is the full recipe (precision policy, checkpoints, resume) for
the operator itself; UQ methods train copies of it on the same ``(x, y)`` batches with the same
base recipe — Adam with weight decay, a relative loss — through the lighter :func:`train_operator`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from probneural.train.losses import relative_l2
from probneural.train.trainer import NonFiniteLossError
from probneural.uq.posterior import Batches, model_parameters, switched_mode
from probneural.validation import check_float, check_int

__all__ = ["check_training_options", "residual_variance", "seeded", "train_operator"]


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNGs (CPU and ``device``'s) seeded by ``seed``, restored afterwards.

    Dropout masks and ``nn.Module`` initialisers draw from the global generator, so this is how a
    method's seed fixes them without disturbing the caller's random stream.
    """
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_training_options(epochs: Any, lr: Any, weight_decay: Any, seed: Any) -> tuple[int, float, float, int]:
    """The options of :func:`train_operator`, checked: ``epochs >= 0``, ``lr > 0``, ``weight_decay >= 0``,
    ``seed >= 0``."""
    return (check_int("epochs", epochs, 0), check_float("lr", lr, positive=True),
            check_float("weight_decay", weight_decay, nonnegative=True), check_int("seed", seed, 0))


def train_operator(
    model: nn.Module,
    loader: Batches,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 1e-4,
    loss: Callable[[Tensor, Tensor], Tensor] = relative_l2,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train ``model`` in place on ``loader``: Adam, a cosine learning rate decaying to 0 over ``epochs``.

    The model is in training mode throughout (dropout active) and returns to its previous mode
    afterwards. ``seed`` fixes the dropout masks and the batch order of a shuffling ``DataLoader``
    (both draw from the global generator, which is restored afterwards).

    Args:
        model: maps `(b, c_in, *spatial)` inputs to what ``loss`` compares with the targets.
        loader: re-iterable ``(x, y)`` batches, `(b, c_in, *spatial)` and `(b, c_out, *spatial)`,
            moved to the model's device and dtype.
        epochs: passes over ``loader`` (``0`` trains nothing).
        lr: initial learning rate.
        weight_decay: Adam's weight decay.
        loss: ``loss(model(x), y)`` → scalar tensor; by default the relative L2 error.
        seed: seed of the global RNG during training.
        progress: show a progress bar over epochs.

    Returns:
        The mean training loss of each epoch (over samples).

    Raises:
        NonFiniteLossError: a batch loss is NaN or Inf (no step is taken with it).
    """
    epochs, lr, weight_decay, seed = check_training_options(epochs, lr, weight_decay, seed)
    if not callable(loss):
        raise ValueError(f"loss: expected a callable (pred, y) -> scalar tensor; got {loss!r}")
    if epochs == 0:
        return []
    device, dtype = model_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history: list[float] = []
    with switched_mode(model, True), seeded(seed, device):
        bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress)
        for epoch in bar:
            history.append(_epoch(model, loader, loss, optimizer, epoch, device, dtype))
            scheduler.step()
            bar.set_postfix(loss=f"{history[-1]:.4g}")
    return history


def _epoch(model: nn.Module, loader: Batches, loss: Callable[[Tensor, Tensor], Tensor],
           optimizer: torch.optim.Optimizer, epoch: int, device: torch.device, dtype: torch.dtype) -> float:
    """One pass over ``loader``; returns the mean loss over samples."""
    total, count = 0.0, 0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, dtype), y.to(device, dtype)
        value = loss(model(x), y)
        if not torch.isfinite(value):
            raise NonFiniteLossError(f"training loss is {value.item()} at epoch {epoch + 1}, step {step + 1}; "
                                     "try a smaller lr")
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total += value.item() * len(y)
        count += len(y)
    if count == 0:
        raise ValueError("loader: expected at least one (x, y) batch; got none")
    return total / count


@torch.no_grad()
def residual_variance(predict_mean: Callable[[Tensor], Tensor], loader: Batches, *, device: torch.device,
                      dtype: torch.dtype) -> Tensor:
    """Aleatoric noise per output channel: the mean squared residual ``mean_{n, points} (ŷ − y)²``.

    On the training data this underestimates the noise (the operator has partly fitted it);
    pass held-out batches for an unbiased estimate.

    Args:
        predict_mean: maps `(b, c_in, *spatial)` inputs to the point prediction `(b, c_out, *spatial)`.
        loader: re-iterable ``(x, y)`` batches, moved to ``device`` and ``dtype``.
        device: where ``predict_mean`` computes.
        dtype: the dtype it computes in.

    Returns:
        `(1, c_out, 1, ..., 1)` variances (one trailing 1 per spatial axis), broadcastable to the targets.
    """
    total, count = None, 0
    for x, y in loader:
        x, y = x.to(device, dtype), y.to(device, dtype)
        squared = (predict_mean(x) - y).square()
        axes = (0, *range(2, y.dim()))
        batch_sum = squared.sum(axes, keepdim=True)
        total = batch_sum if total is None else total + batch_sum
        count += squared.numel() // squared.shape[1]
    if total is None:
        raise ValueError("loader: expected at least one (x, y) batch; got none")
    return total / count
