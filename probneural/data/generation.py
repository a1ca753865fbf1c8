"""Batched generation of a data set from a per-batch sampler: progress bar, memory or streamed on-disk cache.

Every problem's ``generate`` describes its data by a JSON ``params`` dict and a closure
``sample_batch(start, count) -> (x, y)`` that returns samples ``start .. start + count − 1``
(depending only on those indices, so the data never depend on the batch size). :func:`build`
does the rest, identically for every problem.
"""

from __future__ import annotations

import os
import warnings
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from probneural.data import cache
from probneural.data.dataset import OperatorDataset
from probneural.validation import check_int

__all__ = ["SampleBatch", "build", "checked_params"]

SampleBatch = Callable[[int, int], "tuple[torch.Tensor, torch.Tensor]"]
"""``(start, count) -> (x, y)``: `(count, c_in, *spatial)` inputs and `(count, c_out, *spatial)` outputs."""


_CHECKING: ContextVar[bool] = ContextVar("probneural_data_checking", default=False)


class _ArgumentsChecked(BaseException):
    """Raised by :func:`build` under :func:`checked_params`, carrying the ``params`` it was given (a
    ``BaseException``, like ``GeneratorExit``: an ``except Exception`` in a generator must not stop it)."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__("arguments checked")
        self.params = params


def checked_params(generate: Callable[..., OperatorDataset], **kwargs: Any) -> dict[str, Any]:
    """Check a generator's arguments without generating or reading anything.

    ``generate`` (a problem's ``generate``, which checks its arguments and then calls
    :func:`build`) runs up to :func:`build`, which checks ``n`` and ``batch_size`` and stops.
    Used to check every split of a run before the first one is generated.

    Args:
        generate: a generator ending in :func:`build`.
        **kwargs: its arguments.

    Returns:
        The generation parameters ``params``: the data set's metadata, without the ``"implementation"``
        a generator may add (:func:`build`).

    Raises:
        ValueError: an argument the generator refuses.
    """
    token = _CHECKING.set(True)
    try:
        generate(**kwargs)
    except _ArgumentsChecked as checked:
        return checked.params
    finally:
        _CHECKING.reset(token)
    raise RuntimeError(f"{getattr(generate, '__qualname__', generate)} returned without calling generation.build")


def _batches(
    n: int, batch_size: int, sample_batch: SampleBatch, progress: bool, description: str
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    with tqdm(total=n, desc=description, unit="sample", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            x, y = sample_batch(start, count)
            if x.shape[0] != count or y.shape[0] != count:
                raise RuntimeError(
                    f"sample_batch({start}, {count}) returned {x.shape[0]} inputs and {y.shape[0]} outputs"
                )
            if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):  # before anything is cached
                raise RuntimeError(f"{description}: samples {start}..{start + count - 1} are not finite; "
                                   "the solver diverged for these generation parameters")
            yield start, x, y
            bar.update(count)


def _collect(n: int, batches: Iterator[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = y = None
    for start, x_batch, y_batch in batches:
        if x is None:
            x = x_batch.new_empty((n, *x_batch.shape[1:]))
            y = y_batch.new_empty((n, *y_batch.shape[1:]))
        x[start : start + x_batch.shape[0]] = x_batch
        y[start : start + y_batch.shape[0]] = y_batch
    return x, y


def build(
    params: dict[str, Any],
    n: int,
    sample_batch: SampleBatch,
    grid: tuple[torch.Tensor, ...],
    *,
    batch_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    description: str = "generating",
    device: torch.device | str | None = None,
    implementation: dict[str, Any] | None = None,
) -> OperatorDataset:
    """The data set of ``n`` samples described by ``params``, generated batch by batch or read from the cache.

    Without ``cache_dir`` the samples are collected in memory. With it, a valid cache entry
    of ``params`` is read (memory-mapped); otherwise the batches are streamed into a new
    entry one at a time (memory stays bounded by one batch) and the entry is then read. The
    entry is generated under :func:`~probneural.data.cache.entry_lock`: processes that need
    the same entry at the same time generate it once.

    Args:
        params: every generation parameter, JSON-serialisable, with a ``"problem"`` name;
            also the data set's metadata.
        n: number of samples, ``>= 1``.
        sample_batch: ``(start, count) -> (x, y)``, see :data:`SampleBatch`.
        grid: one 1-D coordinate tensor per spatial axis.
        batch_size: samples per call of ``sample_batch``.
        cache_dir: on-disk cache directory (:mod:`probneural.data.cache`), or ``None``.
        progress: show a tqdm progress bar.
        description: label of the progress bar.
        device: device of the returned data set (``None``: as generated, or CPU from the cache).
        implementation: how this process computes the samples where that changes them only at the
            rounding level (e.g. which FFT library runs), JSON-serialisable: recorded in the metadata
            as ``"implementation"`` but not part of the cache key, so an entry made elsewhere is
            reused and its metadata says how it was made.

    Returns:
        :class:`OperatorDataset` with metadata ``params`` and ``"implementation"`` as it was when the
        samples were computed, if given then (cache entries written before this key existed lack it:
        read it with ``metadata.get("implementation")``).
    """
    check_int("n", n, 1)
    check_int("batch_size", batch_size, 1)
    if _CHECKING.get():
        raise _ArgumentsChecked(params)
    batches = _batches(n, batch_size, sample_batch, progress, description)
    metadata = params if implementation is None else {**params, "implementation": implementation}
    if cache_dir is None:
        x, y = _collect(n, batches)
        return OperatorDataset(x, y, grid, metadata).to(device=device)
    path = cache.cache_path(cache_dir, params)
    dataset = cache.read_if_valid(path, params)
    if dataset is None:
        with cache.entry_lock(path, announce=progress):  # another process making it: wait, then read its entry
            with warnings.catch_warnings():  # a bad file was reported above
                warnings.simplefilter("ignore", cache.CacheWarning)
                dataset = cache.read_if_valid(path, params)
            if dataset is None:
                cache.write_batches(path, params, metadata, n, grid, batches)
                dataset = cache.read(path, params)
    return dataset.to(device=device)
