"""Supervised training of operators on `(x, y)` field pairs, with checkpoints and exact resume."""

from __future__ import annotations

import hashlib
import inspect
import math

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from probneural.data.dataset import OperatorDataset
from probneural.data.normalizer import ChannelNormalizer
from probneural.data.seeding import sample_generator
from probneural.operators.registry import build, name_of
from probneural.io import atomic_write
from probneural.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_no_checkpoints,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
    set_aside,
)
from probneural.train.losses import LOSSES, relative_h1, relative_l2
from probneural.train.normalized import NormalizedOperator
from probneural.train.precision import PrecisionPolicy, resolve_device
from probneural.validation import check_float, check_int, warn_unused

__all__ = ["NonFiniteLossError", "Trainer", "evaluate", "load_model", "normalize"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("step", "cosine", "constant")
_SHUFFLE_STREAM = 2**40


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the last good checkpoint is kept untouched."""


def normalize(operator: nn.Module, train: OperatorDataset) -> NormalizedOperator:
    """Wrap ``operator`` with channel normalisers fitted on the training split ``train``."""
    return NormalizedOperator(operator, ChannelNormalizer.fit(train.x), ChannelNormalizer.fit(train.y))


def _retarget_cosine(scheduler: Any, optimizer: Any, epochs: int) -> None:
    """A resumed cosine schedule re-targeted to ``epochs``: from here on the rate is a fresh
    ``epochs``-long cosine at the epochs already done (``CosineAnnealingLR`` steps recursively from
    the current rate, so changing ``T_max`` alone would keep a finished run's zero rate)."""
    scheduler.T_max = epochs
    done, floor = scheduler.last_epoch, scheduler.eta_min
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = floor + (base - floor) * (1 + math.cos(math.pi * done / epochs)) / 2


def _model_meta(model: nn.Module) -> dict[str, Any]:
    operator = model.operator if isinstance(model, NormalizedOperator) else model
    return {"operator": name_of(operator), "config": operator.config, "normalized": isinstance(model, NormalizedOperator)}


def _same_model(saved: dict[str, Any], model: nn.Module) -> bool:
    """Whether checkpoint metadata ``saved`` describes ``model``.

    Constructor options added after the checkpoint was written count as their defaults, so a
    checkpoint of an older version still resumes when the model is the same; the operator's
    ``EXECUTION_OPTIONS`` (how it runs, not what it computes) are not compared.
    """
    current = _model_meta(model)
    operator = model.operator if isinstance(model, NormalizedOperator) else model
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(type(operator).__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    saved = {**saved, "config": {**defaults, **saved.get("config", {})}}
    execution = getattr(type(operator), "EXECUTION_OPTIONS", ())

    def compared(meta: dict[str, Any]) -> dict[str, Any]:
        return {**meta, "config": {k: v for k, v in meta["config"].items() if k not in execution}}

    return compared(saved) == compared(current)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model (with its normalisers) from a checkpoint file or directory.

    Raises:
        CheckpointError: if the checkpoint is missing, corrupted or modified.
    """
    device = resolve_device(map_location)
    return _model_from(load_checkpoint(path, map_location=device), device)


def _model_from(checkpoint: Checkpoint, device: torch.device) -> nn.Module:
    meta = checkpoint.meta["model"]
    operator = build(meta["operator"], **meta["config"])
    weights = checkpoint.section("model")
    if meta["normalized"]:
        model: nn.Module = NormalizedOperator(
            operator,
            ChannelNormalizer.from_state_dict(checkpoint.section("model.x_normalizer")),
            ChannelNormalizer.from_state_dict(checkpoint.section("model.y_normalizer")),
        )
    else:
        model = operator
    # take the stored precision before copying the weights in, so float64 weights stay exact
    dtype = next(v.dtype for v in weights.values() if v.is_floating_point())
    PrecisionPolicy.from_name("fp64" if dtype == torch.float64 else "fp32").cast_module(model, device)
    model.load_state_dict(weights)
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: OperatorDataset,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: str | None = None,
) -> dict[str, float]:
    """Test relative L2 and H1 errors of ``model`` on ``dataset`` (means over samples).

    ``device`` and ``precision`` default to those of the model's parameters.

    Raises:
        ValueError: ``batch_size`` is not a positive integer, or ``precision`` computes in another
            dtype than the model's parameters (cast the model with the policy's ``cast_module``).
    """
    check_int("batch_size", batch_size, 1)
    parameter = next(model.parameters())
    device = parameter.device if device is None else resolve_device(device)
    policy = PrecisionPolicy.from_name(precision or ("fp64" if parameter.dtype == torch.float64 else "fp32"))
    if policy.param_dtype != parameter.dtype:
        raise ValueError(f"precision: {policy.name.value!r} computes with {policy.param_dtype} parameters, but the "
                         f"model's are {parameter.dtype}; cast the model first (PrecisionPolicy.cast_module) "
                         "or leave precision=None")
    model.eval()
    totals = {"rel_l2": 0.0, "rel_h1": 0.0}
    for start in range(0, len(dataset), batch_size):
        x = dataset.x[start : start + batch_size].to(device, policy.param_dtype)
        y = dataset.y[start : start + batch_size].to(device, policy.param_dtype)
        with policy.autocast(device):
            pred = model(x)
        pred = pred.to(y.dtype)
        totals["rel_l2"] += relative_l2(pred, y).item() * len(x)
        totals["rel_h1"] += relative_h1(pred, y).item() * len(x)
    return {k: v / len(dataset) for k, v in totals.items()}


# metadata that a copy, an upgrade or another machine changes, not the data (the values' checksum tells)
_NOT_DATA = ("probneural_version", "source_mtime", "implementation")


def _data_identity(dataset: OperatorDataset) -> dict[str, Any]:
    """What identifies a training set for a resume: its size, its field shapes, the sha256 of its
    metadata (every generation parameter and the seed; the package version and a source file's
    modification time left out) and the sha256 of its values (data sets without metadata, or read
    from files whose metadata does not describe them)."""
    metadata = {str(k): v for k, v in dataset.metadata.items() if k not in _NOT_DATA}
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True, default=str).encode()).hexdigest()
    values = hashlib.sha256()
    for field in (dataset.x, dataset.y):
        for chunk in field.detach().reshape(len(dataset), -1).split(max(1, 2**22 // field[0].numel())):
            values.update(chunk.cpu().contiguous().view(torch.uint8).numpy())
    return {"samples": len(dataset), "x": list(dataset.x.shape[1:]), "y": list(dataset.y.shape[1:]),
            "metadata_sha256": digest, "values_sha256": values.hexdigest()}


class Trainer:
    """Mini-batch training with a precision policy, checkpoints every epoch and exact resume.

    Library code: every option is an explicit keyword argument. A run directory, when
    given, receives ``metrics.jsonl`` (one JSON line per epoch) and ``checkpoints/``; only
    the main process writes (``is_main_process``). Distributed data parallelism is not supported
    yet: the batches are not split between ranks and a ``DistributedDataParallel`` wrapper is not
    a registered operator that checkpoints can rebuild.

    Args:
        epochs: total number of epochs (resume continues up to this number).
        batch_size: samples per optimisation step.
        loss: training loss name (``"rel_l2"`` or ``"rel_h1"``).
        optimizer: ``"adam"`` or ``"adamw"``.
        lr: learning rate.
        weight_decay: weight decay of the optimizer.
        scheduler: ``"step"`` (multiply by ``gamma`` every ``step_size`` epochs), ``"cosine"``
            (to zero over ``epochs``) or ``"constant"``.
        step_size: epochs between learning-rate drops for ``"step"``.
        gamma: factor of each drop for ``"step"``.
        grad_clip: maximum gradient norm, or ``None``.
        precision: precision policy name (``fp32``, ``fp64``, ``bf16``, ``fp16``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: fixes the batch order of every epoch (and, via the caller, initialisation).
        run_dir: where metrics and checkpoints go; ``None`` writes nothing.
        progress: show a progress bar.
        checkpoint_keep: newest checkpoints kept on disk.
        is_main_process: whether this process writes files (rank 0 under DDP).
    """

    def __init__(
        self,
        *,
        epochs: int = 10,
        batch_size: int = 16,
        loss: str = "rel_l2",
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str = "step",
        step_size: int = 100,
        gamma: float = 0.5,
        grad_clip: float | None = None,
        precision: str = "fp32",
        device: str | torch.device = "auto",
        seed: int = 0,
        run_dir: str | Path | None = None,
        progress: bool = True,
        checkpoint_keep: int = 2,
        is_main_process: bool = True,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}; got {optimizer!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: expected one of {SCHEDULERS}; got {scheduler!r}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("step_size", step_size),
                            ("checkpoint_keep", checkpoint_keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer; got {value!r}")
        if loss not in LOSSES.names():
            raise ValueError(f"loss: expected one of {LOSSES.names()}; got {loss!r}")
        for name, value in (("lr", lr), ("gamma", gamma), ("grad_clip", grad_clip if grad_clip is not None else 1.0)):
            check_float(name, value, positive=True)
        check_float("weight_decay", weight_decay, nonnegative=True)
        check_int("seed", seed, 0)
        defaults = {name: p.default for name, p in inspect.signature(Trainer.__init__).parameters.items()}
        warn_unused({"step_size": step_size, "gamma": gamma}, defaults, ("step_size", "gamma"),
                    used=scheduler == "step", because=f"with scheduler='step' (got scheduler={scheduler!r})")
        self.loss_fn: Callable[[Tensor, Tensor], Tensor] = LOSSES.get(loss)
        self.loss_name = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.scheduler_name = scheduler
        self.step_size = step_size
        self.gamma = gamma
        self.grad_clip = grad_clip
        self.policy = PrecisionPolicy.from_name(precision)
        self.device = resolve_device(device)
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.checkpoint_keep = checkpoint_keep
        self.is_main_process = is_main_process

    def settings(self) -> dict[str, Any]:
        """Everything that shapes the optimisation path; a resume must match it (``epochs`` may grow).

        ``step_size`` and ``gamma`` only with ``scheduler="step"``: otherwise they shape nothing, and a
        change of them must not block a resume.
        """
        schedule = {"step_size": self.step_size, "gamma": self.gamma} if self.scheduler_name == "step" else {}
        return {
            "loss": self.loss_name, "optimizer": self.optimizer_name, "lr": self.lr,
            "weight_decay": self.weight_decay, "scheduler": self.scheduler_name, **schedule,
            "grad_clip": self.grad_clip, "batch_size": self.batch_size,
            "precision": self.policy.name.value, "seed": self.seed,
        }

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir is not None else None

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   x: Tensor, y: Tensor) -> Tensor:
        """One optimisation step on the batch ``(x, y)`` under the precision policy; returns the loss.

        Raises:
            NonFiniteLossError: the loss or, without a gradient scaler (whose step skips them),
                the gradient is NaN or Inf (checked before any weight changes).
        """
        with self.policy.autocast(self.device):
            pred = model(x)
        loss = self.loss_fn(pred.to(y.dtype), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.grad_clip is not None or not scaler.is_enabled():
            scaler.unscale_(optimizer)  # fp16: clip the true gradients (a no-op without a scaler)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = nn.utils.get_total_norm(grads)
            if not scaler.is_enabled() and not torch.isfinite(norm):
                raise NonFiniteLossError(f"gradient norm is {norm.item()} with a finite training loss {loss.item()}")
            if self.grad_clip is not None:
                nn.utils.clip_grads_with_norm_(grads, self.grad_clip, norm)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    def make_optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer and learning-rate scheduler these settings describe, for ``model``'s parameters."""
        optimizer = OPTIMIZERS[self.optimizer_name](model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler_name == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)
        elif self.scheduler_name == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        else:
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        return optimizer, scheduler

    def _batches(self, n: int, epoch: int) -> list[Tensor]:
        """Index batches of ``epoch``: a permutation that depends only on (seed, epoch).

        Drawn from a stream of its own (index offset ``2**40``), apart from data sampling's.
        """
        order = torch.randperm(n, generator=sample_generator(self.seed, _SHUFFLE_STREAM + epoch))
        return list(order.split(self.batch_size))

    def fit(
        self,
        model: nn.Module,
        train: OperatorDataset,
        val: OperatorDataset | None = None,
        *,
        resume: bool = False,
    ) -> list[dict[str, float]]:
        """Train ``model`` (in place) on ``train``; validate on ``val`` after each epoch.

        Args:
            model: maps raw `(b, c_in, *spatial)` inputs to raw outputs, usually a
                :class:`NormalizedOperator` from :func:`normalize`.
            train: training pairs.
            val: validation pairs for the per-epoch relative L2.
            resume: continue from the newest checkpoint in ``run_dir`` (if any).

        Returns:
            One record per epoch: ``epoch``, ``train_loss``, ``val_rel_l2``, ``lr``, ``seconds``.

        Raises:
            NonFiniteLossError: when a batch loss is NaN or Inf.
            ValueError: ``resume`` is false but ``run_dir`` already holds checkpoints (a fresh run
                would mix its checkpoints and metrics with another run's); the model is not a
                registered operator (checkpoints could not rebuild it); or, resuming, the
                checkpoint was written with other settings, another model or other training data,
                or has trained more than ``epochs``.
        """
        if self.checkpoint_dir is not None:
            _model_meta(model)  # an operator checkpoints cannot rebuild fails now, not after the first epoch
            if not resume:
                check_no_checkpoints(self.checkpoint_dir.parent)
        device, policy = self.device, self.policy
        policy.cast_module(model, device)
        optimizer, scheduler = self.make_optimizer(model)
        scaler = policy.make_grad_scaler(device)
        history: list[dict[str, float]] = []
        start = 0
        data = _data_identity(train) if self.checkpoint_dir is not None else {}
        if resume:
            checkpoint = self._resumable_checkpoint(model, data)  # None: nothing to resume yet, a first run
            if checkpoint is not None:
                model.load_state_dict(checkpoint.section("model"))
                restore_optimizer(optimizer, checkpoint)
                scheduler.load_state_dict(checkpoint.meta["scheduler"]["state"])
                if self.scheduler_name == "cosine" and scheduler.T_max != self.epochs:
                    _retarget_cosine(scheduler, optimizer, self.epochs)
                scaler.load_state_dict(checkpoint.meta["grad_scaler"])
                restore_rng(checkpoint)
                start = checkpoint.meta["epoch"]
                history = checkpoint.meta["extra"]["history"][:start]
        x_all = train.x.to(device, policy.param_dtype)
        y_all = train.y.to(device, policy.param_dtype)
        bar = tqdm(range(start, self.epochs), desc="train", unit="epoch", disable=not self.progress,
                   initial=start, total=self.epochs)
        for epoch in bar:
            began = time.perf_counter()
            model.train()
            total, count = 0.0, 0
            for step, index in enumerate(self._batches(len(train), epoch)):
                try:
                    loss = self.train_step(model, optimizer, scaler, x_all[index], y_all[index])
                except NonFiniteLossError as error:
                    last = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
                    raise NonFiniteLossError(
                        f"{error} at epoch {epoch + 1}, step {step + 1}; stopped without saving. "
                        f"Last good checkpoint: {last or 'none'}. Try a smaller lr, grad_clip, or precision=fp32."
                    ) from None
                total += loss.item() * len(index)
                count += len(index)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            record = {"epoch": epoch + 1, "train_loss": total / count, "lr": lr}
            if val is not None:
                record["val_rel_l2"] = evaluate(
                    model, val, batch_size=self.batch_size, device=device, precision=policy.name.value
                )["rel_l2"]
            record["seconds"] = time.perf_counter() - began
            history.append(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_rel_l2")})
            if self.run_dir is not None and self.is_main_process:
                self._write(model, optimizer, scheduler, scaler, epoch + 1, history, data)
        return history

    def check_resume(self, model: nn.Module, train: OperatorDataset) -> int:
        """The epoch ``fit(model, train, resume=True)`` would continue from (0: ``run_dir`` holds no
        checkpoint yet), without training: lets a caller refuse a resume before it records anything.

        Raises:
            ValueError: as :meth:`fit` when resuming: no ``run_dir``, or the checkpoint was written with
                other settings, another model or other training data, or has trained more than ``epochs``.
        """
        checkpoint = self._resumable_checkpoint(model, _data_identity(train))
        return 0 if checkpoint is None else checkpoint.meta["epoch"]

    def _resumable_checkpoint(self, model: nn.Module, data: dict[str, Any]) -> Checkpoint | None:
        """The newest checkpoint that verifies (older ones are tried, with a warning, when it does not).

        ``data`` is the training set's :func:`_data_identity`.

        Raises:
            ValueError: no ``run_dir``, or the checkpoint was written with other settings, another
                model or other training data (its normalisers were fitted to that data).
        """
        if self.checkpoint_dir is None:
            raise ValueError("resume: needs a run_dir holding the checkpoints to resume from")
        unusable = []
        for handle in reversed(checkpoints(self.checkpoint_dir)):
            try:
                checkpoint = load_checkpoint(handle, map_location=self.device)
            except CheckpointError as error:
                warnings.warn(f"skipping unusable checkpoint (moved aside as *.unusable): {error}", stacklevel=3)
                unusable.append(handle)
                continue
            saved = checkpoint.meta["extra"].get("trainer", {})
            differ = {k: (saved.get(k), v) for k, v in self.settings().items() if saved.get(k) != v}
            if differ:
                raise ValueError(
                    f"resume: {handle} was written with other settings (saved, now): {differ}; "
                    "start a new run directory to change them"
                )
            if checkpoint.meta["epoch"] > self.epochs:
                raise ValueError(
                    f"resume: {handle} has trained {checkpoint.meta['epoch']} epochs, more than epochs={self.epochs}"
                )
            saved_data = checkpoint.meta["extra"].get("data")  # absent (or partial) in checkpoints of older versions
            if saved_data is not None and any(data.get(key) != value for key, value in saved_data.items()):
                raise ValueError(
                    f"resume: {handle} was trained on other data (saved {saved_data}, now {data}); its "
                    "normalisers were fitted to that data: start a new run directory to train on these"
                )
            if not _same_model(checkpoint.meta["model"], model):
                raise ValueError(
                    f"resume: {handle} holds model {checkpoint.meta['model']}, not {_model_meta(model)}"
                )
            set_aside(unusable)
            return checkpoint
        set_aside(unusable)
        return None

    def _write(self, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, epoch: int,
               history: list[dict], data: dict[str, Any]) -> None:
        assert self.run_dir is not None and self.checkpoint_dir is not None
        lines = "".join(json.dumps(r) + "\n" for r in history)
        atomic_write(self.run_dir / "metrics.jsonl", lambda tmp: tmp.write_text(lines))
        save_checkpoint(
            self.checkpoint_dir,
            epoch,
            model=model,
            model_meta=_model_meta(model),
            optimizer=optimizer,
            scheduler=scheduler,
            grad_scaler=scaler,
            extra={"history": history, "trainer": self.settings(), "data": data},
            keep=self.checkpoint_keep,
        )
