"""On-disk cache of generated :class:`OperatorDataset` objects, keyed by their generation parameters.

A data set generated from ``params`` is stored in
``<cache_dir>/<problem>-<key[:16]>.safetensors``, where ``key`` is the SHA-256 of the
canonical JSON of ``{"format": FORMAT_VERSION, "params": params}`` and ``problem`` is
``params["problem"]``. The file is a standard safetensors file holding the tensors ``x``,
``y`` and ``grid_<axis>``; its header metadata holds the format version, the full key, the
parameters, the data set's metadata (JSON) and a SHA-256 checksum of those two JSON texts and
of the tensors (names, dtypes, shapes and bytes).

Writing streams: :func:`write_batches` lays out the file from the first batch's shapes,
allocates its disk space (``posix_fallocate``: a disk too small fails after the first batch,
naming the free and needed space) and writes each batch in place, so generating a data set
larger than memory needs one batch at a time. The file is filled under a temporary name in
the same directory, its checksum is computed by reading it back in chunks and patched into
the header, and only then is it
fsync'd and renamed over the target (``os.replace``): a crash never leaves a partial file
under the final name. :func:`read` memory-maps the file copy-on-write, so the tensors are
paged in from disk on use. A file that cannot be read, is truncated, fails the checksum or
belongs to other parameters raises :class:`CacheError`; :func:`read_if_valid` reports it
with a :class:`CacheWarning` naming the file, and the caller regenerates it. A bad file is
never used silently.

Processes that need the same missing entry at once (the parallel jobs of a sweep) generate it
once: :func:`probneural.data.generation.build` writes under :func:`entry_lock`, and the others
wait for the lock and read the entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
import torch

from probneural.data.dataset import OperatorDataset
from probneural.io import atomic_write

__all__ = ["CacheError", "CacheWarning", "cache_key", "cache_path", "read", "read_if_valid", "write", "write_batches"]

FORMAT_VERSION = 2
"""Version of the file layout; part of every key, so a layout change never reads old files."""

_PROBLEM_NAME = re.compile(r"[A-Za-z0-9_]+")
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
_TORCH_DTYPES = {code: dtype for dtype, code in _SAFETENSORS_DTYPES.items()}
_CHECKSUM_PLACEHOLDER = "0" * 64
_CHUNK_BYTES = 1 << 24


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


def _acquire(lock: Path, path: Path, announce: bool) -> int | None:
    """A file descriptor of ``lock`` holding an exclusive ``flock``, or ``None`` where none can be had."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    try:  # read-only: a lock file left by another user's killed process can still be locked
        descriptor = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:  # e.g. a read-only cache directory
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if announce:
                print(f"waiting for another process generating {path}", file=sys.stderr)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError as error:  # a file system without flock (NFS without a lock daemon, some Lustre mounts)
        os.close(descriptor)
        lock.unlink(missing_ok=True)
        warnings.warn(f"cache entry {path} is generated without a lock ({error}): parallel runs may each "
                      "generate it (the files stay whole)", CacheWarning, stacklevel=4)
        return None
    return descriptor


@contextmanager
def entry_lock(path: str | os.PathLike[str], *, announce: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the cache entry ``path`` while it is generated.

    A second process that needs the same entry (the parallel jobs of a sweep) waits here, then
    finds the entry written and reads it instead of generating it again. The lock is
    ``fcntl.flock`` on ``<path>.lock``, which the kernel releases when its holder exits: a crashed
    generator may leave the (empty) lock file behind, never a held lock. The lock file is removed
    on release. Where no lock can be had (no ``fcntl`` on Windows, a read-only directory, a file
    system without ``flock``, the latter with a :class:`CacheWarning`) nothing is locked: each
    process generates, and the last atomic rename wins, as without the lock.

    Args:
        path: the entry's file (:func:`cache_path`).
        announce: say on stderr when another process holds the lock.
    """
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _acquire(lock, path, announce)
    try:
        yield
    finally:
        if descriptor is not None:
            lock.unlink(missing_ok=True)  # a process still waiting on it re-checks the entry once it holds it
            os.close(descriptor)  # releases the lock


class _Layout:
    """Names, dtypes, shapes and byte ranges of the tensors of one file, in file order."""

    def __init__(self, entries: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
        self.entries = entries
        self.ranges: dict[str, tuple[int, int]] = {}
        self.size = 0
        for name, (dtype, shape) in entries.items():
            end = self.size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.ranges[name] = (self.size, end)
            self.size = end

    def header(self, metadata: dict[str, str]) -> bytes:
        """The safetensors header: length prefix and space-padded JSON (8-byte aligned)."""
        body: dict[str, Any] = {"__metadata__": metadata}
        for name, (dtype, shape) in self.entries.items():
            body[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": list(self.ranges[name])}
        text = json.dumps(body, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text


def _checksum(
    texts: dict[str, Any], buffers: Iterable[tuple[str, torch.dtype, tuple[int, ...], Iterator[memoryview]]]
) -> str:
    """SHA-256 over the header's ``params`` and ``metadata`` JSON texts, then each tensor's name, dtype,
    shape and raw bytes, in name order (a value missing from ``texts`` enters as ``null``)."""
    digest = hashlib.sha256()
    digest.update(_canonical_json([texts.get("params"), texts.get("metadata")]).encode("ascii"))
    for name, dtype, shape, chunks in sorted(buffers, key=lambda item: item[0]):
        digest.update(_canonical_json([name, str(dtype), list(shape)]).encode("ascii"))
        for chunk in chunks:
            digest.update(chunk)
    return digest.hexdigest()


def _file_chunks(handle: BinaryIO, start: int, stop: int) -> Iterator[memoryview]:
    handle.seek(start)
    remaining = stop - start
    while remaining > 0:
        chunk = handle.read(min(_CHUNK_BYTES, remaining))
        if not chunk:
            raise CacheError("file is truncated")
        remaining -= len(chunk)
        yield memoryview(chunk)


def _array_chunks(array: np.ndarray) -> Iterator[memoryview]:
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK_BYTES):
        yield memoryview(flat[start : start + _CHUNK_BYTES])


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def write_batches(
    path: str | os.PathLike[str],
    params: dict[str, Any],
    metadata: dict[str, Any],
    n: int,
    grid: tuple[torch.Tensor, ...],
    batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
) -> Path:
    """Atomically write a data set of ``n`` samples to ``path`` from a stream of batches.

    Args:
        path: target file; its directory is created if missing.
        params: generation parameters (JSON) the entry is keyed by.
        metadata: the data set's metadata (JSON).
        n: total number of samples.
        grid: one 1-D coordinate tensor per spatial axis.
        batches: ``(start, x, y)`` with ``x`` `(count, c_in, *spatial)` and ``y``
            `(count, c_out, *spatial)` holding samples ``start .. start + count − 1``; all
            batches share dtype and per-sample shapes and together cover ``0 .. n − 1``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a batch disagrees with the first one in dtype or shape, or the batches
            do not cover every sample exactly once.
    """
    header_metadata = {
        "format": str(FORMAT_VERSION),
        "key": cache_key(params),
        "params": _canonical_json(params),
        "metadata": _canonical_json(metadata),
        "checksum": _CHECKSUM_PLACEHOLDER,
    }

    def fill(tmp: Path) -> None:
        with open(tmp, "r+b") as handle:
            layout, data_start = None, 0
            written = torch.zeros(n, dtype=torch.bool)
            for start, x, y in batches:
                if layout is None:
                    layout = _Layout(
                        {"x": (x.dtype, (n, *x.shape[1:])), "y": (y.dtype, (n, *y.shape[1:]))}
                        | {f"grid_{axis}": (g.dtype, tuple(g.shape)) for axis, g in enumerate(grid)}
                    )
                    header = layout.header(header_metadata)
                    data_start = len(header)
                    handle.write(header)
                    _reserve(handle, data_start + layout.size, path)
                    for axis, g in enumerate(grid):
                        handle.seek(data_start + layout.ranges[f"grid_{axis}"][0])
                        handle.write(_raw_bytes(g))
                count = x.shape[0]
                if start < 0 or start + count > n or written[start : start + count].any() or y.shape[0] != count:
                    raise ValueError(f"batch at sample {start} of size {count} overlaps another or exceeds n = {n}")
                written[start : start + count] = True
                for name, batch in (("x", x), ("y", y)):
                    dtype, shape = layout.entries[name]
                    if batch.dtype != dtype or tuple(batch.shape[1:]) != shape[1:]:
                        raise ValueError(
                            f"batch {name} at sample {start} has dtype {batch.dtype} and sample shape "
                            f"{tuple(batch.shape[1:])}, expected {dtype} and {shape[1:]} as in the first batch"
                        )
                    row_bytes = (layout.ranges[name][1] - layout.ranges[name][0]) // n
                    handle.seek(data_start + layout.ranges[name][0] + start * row_bytes)
                    handle.write(_raw_bytes(batch))
            if layout is None or not written.all():
                raise ValueError(f"the batches do not cover all {n} samples")
            checksum = _checksum(
                header_metadata,
                ((name, dtype, shape, _file_chunks(handle, data_start + begin, data_start + end))
                 for name, (dtype, shape) in layout.entries.items()
                 for begin, end in [layout.ranges[name]]),
            )
            patched = layout.header(header_metadata | {"checksum": checksum})
            handle.seek(0)
            handle.write(patched)

    return atomic_write(path, fill)


def _reserve(handle: BinaryIO, size: int, path: str | os.PathLike[str]) -> None:
    """Grow the open file to ``size`` bytes, its disk blocks allocated now where the OS can.

    With ``posix_fallocate`` a disk too small for the whole data set fails after its first batch,
    not hours later at the batch that fills it (``truncate`` alone makes a sparse file); the
    caller's atomic write then removes the temporary file.

    Raises:
        OSError: naming the cache directory, the bytes needed and those free, when the disk is full.
    """
    handle.truncate(size)
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: a sparse file, filled as the batches come
        return
    try:
        os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: sparse, as above
            return
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(Path(path).parent).free
        raise OSError(error.errno, f"cache: {Path(path).parent} has {free / 2**30:.2f} GiB free; this data set "
                      f"needs {size / 2**30:.2f} GiB (set data.cache_dir or PROBNEURAL_CACHE_DIR elsewhere)") from None


def write(path: str | os.PathLike[str], dataset: OperatorDataset, params: dict[str, Any]) -> Path:
    """Atomically write an in-memory ``dataset`` as the cache entry of ``params`` at ``path``."""
    return write_batches(path, params, dataset.metadata, len(dataset), dataset.grid, [(0, dataset.x, dataset.y)])


def _parse_header(mapped: np.ndarray) -> tuple[dict[str, Any], int]:
    if mapped.size < 8:
        raise CacheError("file is truncated (no header)")
    (length,) = struct.unpack("<Q", mapped[:8].tobytes())
    if length > mapped.size - 8:
        raise CacheError("file is truncated (header)")
    try:
        header = json.loads(mapped[8 : 8 + length].tobytes())
    except (UnicodeDecodeError, ValueError) as err:
        raise CacheError(f"unreadable header ({err})") from None
    if not isinstance(header, dict):
        raise CacheError("unreadable header (not a JSON object)")
    return header, 8 + length


def read(path: str | os.PathLike[str], params: dict[str, Any]) -> OperatorDataset:
    """Read and verify the cache entry of ``params`` at ``path``.

    The tensors are copy-on-write memory maps of the file: pages are read from disk when
    used, and writing to a tensor never changes the file.

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
        mapped = np.memmap(Path(path), dtype=np.uint8, mode="c")
    except (OSError, ValueError) as err:
        raise CacheError(f"unreadable file ({err})") from None
    header, data_start = _parse_header(mapped)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CacheError(f"inconsistent header (metadata of type {type(meta).__name__})")
    if meta.get("format") != str(FORMAT_VERSION):
        raise CacheError(f"format version {meta.get('format')!r}, expected {FORMAT_VERSION}")
    if meta.get("key") != cache_key(params):
        raise CacheError("written for other generation parameters (key mismatch)")
    arrays: dict[str, tuple[torch.dtype, tuple[int, ...], np.ndarray]] = {}
    try:
        for name, entry in header.items():
            dtype, shape = _TORCH_DTYPES[entry["dtype"]], tuple(int(d) for d in entry["shape"])
            begin, end = (data_start + int(o) for o in entry["data_offsets"])
            if end > mapped.size or end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise CacheError(f"file is truncated or inconsistent at tensor {name!r}")
            arrays[name] = (dtype, shape, mapped[begin:end])
    except (KeyError, TypeError, ValueError) as err:
        raise CacheError(f"inconsistent header ({err!r})") from None
    checksum = _checksum(meta, ((name, dtype, shape, _array_chunks(raw)) for name, (dtype, shape, raw) in arrays.items()))
    if meta.get("checksum") != checksum:
        raise CacheError("checksum mismatch (corrupted data or metadata)")
    tensors = {name: torch.from_numpy(raw).view(dtype).reshape(shape) for name, (dtype, shape, raw) in arrays.items()}
    try:
        metadata = json.loads(meta["metadata"])
        grid = tuple(tensors[f"grid_{axis}"] for axis in range(tensors["x"].ndim - 2))
        return OperatorDataset(tensors["x"], tensors["y"], grid, metadata)
    except (KeyError, TypeError, ValueError) as err:
        raise CacheError(f"inconsistent contents ({err})") from None


def read_if_valid(path: str | os.PathLike[str], params: dict[str, Any]) -> OperatorDataset | None:
    """The entry at ``path`` if it exists and is valid; ``None`` (with a :class:`CacheWarning` for a bad file) otherwise."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read(path, params)
    except CacheError as err:
        warnings.warn(f"cache file {path} is not usable: {err}; regenerating it", CacheWarning, stacklevel=3)
        return None
