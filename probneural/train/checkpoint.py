"""Checkpoints that survive crashes and refuse corrupted or modified weights.

Layout of a checkpoint directory::

    epoch-0007.safetensors   every tensor: model weights, normalisers, optimizer state, RNG state
    epoch-0007.json          everything else: constructor arguments, epoch, optimizer and
                             scheduler settings, package version, git commit, the sha256
                             of the .safetensors file and the sha256 of this metadata itself

Both files are written to a temporary name and renamed into place, the JSON last: it is the
commit marker, so a kill at any moment leaves the previous checkpoint intact and the new one
either complete or invisible (re-saving an existing epoch removes its JSON first: a kill then
leaves that epoch without a checkpoint, never with one that fails its checksum). Reading verifies
both checksums (checkpoints written before the metadata checksum existed are read without it);
nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import probneural
from probneural.train.precision import resolve_device
from probneural.io import atomic_write

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "check_no_checkpoints",
    "git_commit",
    "checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_optimizer",
    "restore_rng",
    "save_checkpoint",
    "set_aside",
]

FORMAT_VERSION = 1
_NAME = re.compile(r"^epoch-(\d+)\.json$")
_REQUIRED = ("format_version", "epoch", "model", "weights_sha256")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, corrupted or modified."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: flat ``tensors`` and JSON ``meta``."""

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    def section(self, prefix: str) -> dict[str, Tensor]:
        """Tensors stored under ``prefix.``, with the prefix removed."""
        start = len(prefix) + 1
        return {k[start:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of ``cwd`` (default: the package's checkout), or ``None``."""
    where = cwd or Path(probneural.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _meta_sha256(meta: dict[str, Any]) -> str:
    """sha256 of the metadata without its own checksum, in a canonical JSON form."""
    content = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into tensors and JSON-able scalars."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    epoch: int,
    *,
    model: torch.nn.Module,
    model_meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``epoch`` atomically and prune all but the newest ``keep``.

    Args:
        directory: checkpoint directory (created if needed).
        epoch: number of completed epochs.
        model: module whose ``state_dict`` is saved under ``model.``.
        model_meta: how to rebuild ``model`` (e.g. operator name and constructor arguments).
        optimizer: optimizer whose state is saved under ``optimizer.``.
        scheduler: learning-rate scheduler whose (JSON-able) ``state_dict`` is saved.
        grad_scaler: mixed-precision loss scaler whose state (scale, growth tracker) is saved.
        extra: further JSON-able metadata (metrics, configuration).
        keep: number of newest checkpoints kept on disk.

    Returns:
        Path of the JSON file (the checkpoint's handle).
    """
    directory = Path(directory)
    stem = f"epoch-{epoch:04d}"
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "probneural_version": probneural.__version__,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "epoch": epoch,
        "model": model_meta,
        "extra": extra or {},
    }
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_tensors(optimizer.state_dict())
        tensors.update({f"optimizer.{k}": v.detach().contiguous() for k, v in opt_tensors.items()})
        meta["optimizer"] = {"class": type(optimizer).__name__, **opt_meta}
    if scheduler is not None:
        meta["scheduler"] = {"class": type(scheduler).__name__, "state": scheduler.state_dict()}
    if grad_scaler is not None:
        meta["grad_scaler"] = grad_scaler.state_dict()
    _meta_sha256(meta)  # metadata that cannot be written (as it is checksummed) fails before any file is touched
    weights, handle = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    # re-saving an epoch withdraws its handle first: while the weights are replaced no handle points
    # at them (a crash then leaves no checkpoint of this epoch, never one whose weights fail their checksum)
    handle.unlink(missing_ok=True)
    atomic_write(weights, lambda tmp: save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp)))
    meta["weights_sha256"] = _sha256(weights)
    meta["meta_sha256"] = _meta_sha256(meta)
    atomic_write(handle, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    for old in checkpoints(directory)[:-keep] if keep > 0 else []:
        if old != handle:  # never the checkpoint just written, whatever epochs lie beside it
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    return handle


def checkpoints(directory: str | Path) -> list[Path]:
    """JSON handles of the checkpoints in ``directory``, oldest first (empty if there is none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.glob("epoch-*.json") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def check_no_checkpoints(run_dir: str | Path) -> None:
    """Refuse to start a fresh run in ``run_dir`` when ``run_dir/checkpoints`` holds checkpoints.

    Its checkpoints and metrics would mix with the other run's (pruning keeps the highest
    epochs, so the new run's would be deleted as they are written).

    Raises:
        ValueError: naming ``run_dir``, its newest checkpoint and ``resume``.
    """
    existing = latest_checkpoint(Path(run_dir) / "checkpoints")
    if existing is not None:
        raise ValueError(
            f"run_dir: {run_dir} already holds checkpoints (newest {existing.name}); "
            "resume to continue that run, or use a new run_dir"
        )


def set_aside(handles: list[Path]) -> None:
    """Rename checkpoints (handle and weights) to ``*.unusable``, e.g. those that fail verification:
    the newest handle is then the checkpoint a run resumed from (or none), not a broken one that
    pruning would keep over the run's own."""
    for handle in handles:
        for path in (handle, handle.with_suffix(".safetensors")):
            if path.exists():
                path.replace(path.with_name(path.name + ".unusable"))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """Handle of the newest complete checkpoint in ``directory``, or ``None``."""
    handles = checkpoints(directory)
    return handles[-1] if handles else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint.

    Args:
        path: the checkpoint's ``.json`` handle, its ``.safetensors`` file, or a directory
            (its newest checkpoint is read).
        map_location: device for the tensors.

    Raises:
        CheckpointError: missing files, unreadable JSON, checksum mismatch (a corrupted or
            modified weights or metadata file) or an unsupported format version.
    """
    map_location = resolve_device(map_location)  # a bad device fails before the weights are hashed
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"checkpoint: no epoch-*.json checkpoint in directory {path}")
        path = found
    handle = path.with_suffix(".json")
    weights = path.with_suffix(".safetensors")
    try:
        meta = json.loads(handle.read_text())
    except FileNotFoundError:
        kept = [p.name for p in checkpoints(handle.parent)] if handle.parent.is_dir() else []
        raise CheckpointError(f"checkpoint: metadata file {handle} does not exist"
                              + (f"; the directory holds {kept} (only the newest are kept)" if kept else "")) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint: metadata file {handle} is not valid JSON ({error})") from None
    missing = [k for k in _REQUIRED if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint: metadata file {handle} lacks {missing}; it is not a probneural checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint: {handle} has format_version {meta.get('format_version') if isinstance(meta, dict) else None!r}; "
            f"expected {FORMAT_VERSION}"
        )
    if "meta_sha256" in meta and meta["meta_sha256"] != _meta_sha256(meta):
        raise CheckpointError(f"checkpoint: metadata file {handle} is corrupted or was modified (its sha256 differs)")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint: weights file {weights} does not exist")
    actual = _sha256(weights)
    if actual != meta.get("weights_sha256"):
        raise CheckpointError(
            f"checkpoint: weights file {weights} is corrupted or was modified "
            f"(sha256 {actual[:12]}…, expected {str(meta.get('weights_sha256'))[:12]}…)"
        )
    tensors = load_file(str(weights), device=str(map_location))
    return Checkpoint(path=handle, tensors=tensors, meta=meta)


def restore_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Load the optimizer state stored in ``checkpoint`` into ``optimizer``."""
    optimizer.load_state_dict(_optimizer_state(checkpoint.section("optimizer"), checkpoint.meta["optimizer"]))


def restore_rng(checkpoint: Checkpoint) -> None:
    """Restore the torch (and CUDA) random number generator states saved in ``checkpoint``."""
    torch.set_rng_state(checkpoint.tensors["rng.torch"].cpu())
    cuda = checkpoint.section("rng.cuda")
    if cuda and torch.cuda.is_available():  # the devices both machines have (fewer GPUs here: the first ones)
        for i in range(min(len(cuda), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda[str(i)].cpu(), i)
