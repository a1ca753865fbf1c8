"""Independent parts of a CPU solve spread over worker threads, one intra-op thread each.

The PDE solvers hand every part of a batch to the same function. On a CPU, letting torch
split each operation of the whole batch between its threads pays a fork and a join per
operation (tens of microseconds each), which is a large share of the small FFTs and
elementwise passes of a time step; whole parts per worker thread, each running its
operations on one thread, avoid it. Torch operations release the GIL, so the workers run in
parallel. A part's result does not depend on the other parts or on which thread computed it.
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
    function it returns to the parts ``j, j + W, j + 2W, ...``, under the caller's gradient
    mode (a thread-local setting). With one worker (one part, one thread, or a call from a
    worker) everything runs in the calling thread with its thread count unchanged. When a
    worker fails, the others stop before their next part and the first error is raised here.

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

    grad_enabled = torch.is_grad_enabled()
    per_worker: list[list[Result]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def run(first: int) -> None:
        torch.set_num_threads(1)  # this worker thread only (OpenMP and MKL thread limits are per thread)
        try:
            with torch.set_grad_enabled(grad_enabled):
                work = make_worker()
                for i in range(first, len(parts), workers):
                    if stop.is_set():
                        return
                    per_worker[first].append(work(parts[i]))
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)
            stop.set()

    threads = torch.get_num_threads()
    pool = [threading.Thread(target=run, args=(j,), name=f"{name}-{j}") for j in range(workers)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    except BaseException:  # e.g. KeyboardInterrupt while waiting: the workers stop after their current part
        stop.set()
        raise
    finally:
        torch.set_num_threads(threads)  # also resets the default that new threads inherit
    if errors:
        raise errors[0]
    return [per_worker[i % workers][i // workers] for i in range(len(parts))]
