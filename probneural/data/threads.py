"""Independent parts of a CPU solve spread over worker threads, one intra-op thread each.

The PDE solvers hand every part of a batch to the same function. On a CPU, letting torch
split each operation of the whole batch between its threads pays a fork and a join per
operation (tens of microseconds each), which is a large share of the small FFTs and
elementwise passes of a time step; whole parts per worker thread, each running its
operations on one thread, avoid it. Torch operations release the GIL, so the workers run in
parallel. Each part is computed by one thread alone, so a result does not depend on the
thread count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

__all__ = ["map_on_threads"]

Part = TypeVar("Part")
Result = TypeVar("Result")


def map_on_threads(
    parts: Sequence[Part], make_worker: Callable[[], Callable[[Part], Result]], *, name: str = "probneural"
) -> list[Result]:
    """``[work(part) for part in parts]`` on up to ``torch.get_num_threads()`` worker threads.

    Worker ``j`` of ``W = min(len(parts), torch.get_num_threads())`` sets one intra-op thread
    for itself, calls ``make_worker()`` once (for its own work buffers) and applies the
    function it returns to the parts ``j, j + W, j + 2W, ...``. With one worker everything runs
    in the calling thread with its thread count unchanged.

    Args:
        parts: the independent pieces of work, in order.
        make_worker: builds one worker's function of a part.
        name: prefix of the worker threads' names.

    Returns:
        The results, in the order of ``parts``.
    """
    workers = min(len(parts), torch.get_num_threads())
    if workers <= 1:
        work = make_worker()
        return [work(part) for part in parts]

    def run(first: int) -> list[Result]:
        torch.set_num_threads(1)  # this worker thread only (OpenMP and MKL thread limits are per thread)
        work = make_worker()
        return [work(parts[i]) for i in range(first, len(parts), workers)]

    per_worker: list[list[Result]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def target(first: int) -> None:
        try:
            per_worker[first] = run(first)
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)

    threads = torch.get_num_threads()
    pool = [threading.Thread(target=target, args=(j,), name=f"{name}-{j}") for j in range(workers)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        torch.set_num_threads(threads)  # also resets the default that new threads inherit
    if errors:
        raise errors[0]
    return [per_worker[i % workers][i // workers] for i in range(len(parts))]
