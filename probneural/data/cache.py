"""On-disk cache of generated :class:`OperatorDataset` objects, keyed by their generation parameters.

A data set generated from ``params`` is stored in
``<cache_dir>/<problem>-<key[:16]>.safetensors``, where ``key`` is the SHA-256 of the
canonical JSON of ``{"format": FORMAT_VERSION, "params": params}`` and ``problem`` is
``params["problem"]``. The file holds the tensors ``x``, ``y`` and ``grid_<axis>``; its
safetensors header metadata holds the format version, the full key, the parameters, the
data set's metadata (JSON) and a SHA-256 checksum of the tensors (names, dtypes, shapes
and bytes).

Files are written to a temporary file in the same directory, fsync'd, then renamed over
the target (``os.replace``), so a crash never leaves a partial cache file under the final
name. A file that cannot be read, is truncated, fails the checksum or belongs to other
parameters is reported with a :class:`CacheWarning` naming it and regenerated; it is never
used silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from probneural.data.dataset import OperatorDataset
from probneural.io import atomic_write

FORMAT_VERSION = 1
"""Version of the file layout; part of every key, so a layout change never reads old files."""

_PROBLEM_NAME = re.compile(r"[A-Za-z0-9_]+")


class CacheWarning(UserWarning):
    """A cache file was unreadable, corrupted or mismatched and is being regenerated."""


class CacheError(Exception):
    """A cache file cannot be used; the message says why."""


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def cache_key(params: dict[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``params`` and :data:`FORMAT_VERSION`.

    Args:
        params: JSON-serialisable generation parameters (dict keys are sorted, so their
            order does not matter; ``1`` and ``1.0`` differ).

    Returns:
        64-character lowercase hex string.
    """
    try:
        text = _canonical_json({"format": FORMAT_VERSION, "params": params})
    except (TypeError, ValueError) as err:
        raise ValueError(f"params must be JSON-serialisable without NaN/Inf: {err}") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def cache_path(cache_dir: str | os.PathLike[str], params: dict[str, Any]) -> Path:
    """``<cache_dir>/<problem>-<key[:16]>.safetensors`` for ``params`` (which must name its ``"problem"``)."""
    problem = params.get("problem")
    if not isinstance(problem, str) or not _PROBLEM_NAME.fullmatch(problem):
        raise ValueError(f"params['problem'] must be a name of letters, digits and '_', got {problem!r}")
    return Path(cache_dir) / f"{problem}-{cache_key(params)[:16]}.safetensors"


def _tensors(dataset: OperatorDataset) -> dict[str, torch.Tensor]:
    tensors = {"x": dataset.x, "y": dataset.y}
    tensors.update({f"grid_{axis}": g for axis, g in enumerate(dataset.grid)})
    # Own, contiguous CPU copies: safetensors refuses tensors that share memory (e.g. equal grids).
    return {name: t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format) for name, t in tensors.items()}


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(_canonical_json([name, str(t.dtype), list(t.shape)]).encode("ascii"))
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write(path: str | os.PathLike[str], dataset: OperatorDataset, params: dict[str, Any]) -> None:
    """Atomically write ``dataset`` as the cache entry of ``params`` at ``path``.

    Args:
        path: target file; its directory is created if missing.
        dataset: the data set generated from ``params``.
        params: generation parameters (JSON-serialisable).
    """
    path = Path(path)
    tensors = _tensors(dataset)
    header = {
        "format": str(FORMAT_VERSION),
        "key": cache_key(params),
        "params": _canonical_json(params),
        "metadata": _canonical_json(dataset.metadata),
        "checksum": _checksum(tensors),
    }
    payload = save_safetensors(tensors, metadata=header)
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def read(path: str | os.PathLike[str], params: dict[str, Any]) -> OperatorDataset:
    """Read and verify the cache entry of ``params`` at ``path``.

    Args:
        path: cache file.
        params: generation parameters the entry must have been written for.

    Returns:
        The cached data set, on the CPU.

    Raises:
        CacheError: the file is unreadable, truncated, corrupted (checksum mismatch),
            of another format version, or was written for other parameters.
    """
    try:
        with safe_open(Path(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError, ValueError) as err:
        raise CacheError(f"unreadable safetensors file ({err})") from None
    if header.get("format") != str(FORMAT_VERSION):
        raise CacheError(f"format version {header.get('format')!r}, expected {FORMAT_VERSION}")
    if header.get("key") != cache_key(params):
        raise CacheError("written for other generation parameters (key mismatch)")
    if header.get("checksum") != _checksum(tensors):
        raise CacheError("tensor checksum mismatch (corrupted data)")
    try:
        metadata = json.loads(header["metadata"])
        grid = tuple(tensors[f"grid_{axis}"] for axis in range(tensors["x"].ndim - 2))
        return OperatorDataset(tensors["x"], tensors["y"], grid, metadata)
    except (KeyError, ValueError) as err:
        raise CacheError(f"inconsistent contents ({err})") from None


def load_or_build(
    cache_dir: str | os.PathLike[str], params: dict[str, Any], build: Callable[[], OperatorDataset]
) -> OperatorDataset:
    """The cached data set of ``params`` if a valid entry exists, else ``build()`` written to the cache.

    Args:
        cache_dir: cache directory (created if missing).
        params: every generation parameter, JSON-serialisable, with a ``"problem"`` name.
        build: generates the data set from ``params`` (called only on a miss or a bad file).

    Returns:
        The data set; from the cache it is on the CPU, from ``build`` as built.
    """
    path = cache_path(cache_dir, params)
    if path.exists():
        try:
            return read(path, params)
        except CacheError as err:
            warnings.warn(f"cache file {path} is not usable: {err}; regenerating it", CacheWarning, stacklevel=2)
    dataset = build()
    write(path, dataset, params)
    return dataset
