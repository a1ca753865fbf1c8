"""Independent parts of a CPU solve spread over worker threads, one intra-op thread each.

The PDE solvers hand every part of a batch to the same function. On a CPU, letting torch
split each operation of the whole batch between its threads pays a fork and a join per
operation (tens of microseconds each), which is a large share of the small FFTs and
elementwise passes of a time step; whole parts per worker thread, each running its
operations on one thread, avoid it. Torch operations release the GIL, so the workers run in
parallel. A part's result does not depend on the other parts or on which thread computed it.

:func:`map_on_threads` starts its threads for one call: for work that runs long in every part
(a whole solve). :class:`ThreadTeam` keeps its threads for many short calls (one time step
each), so that a solve can run its large steps in parallel and its small ones, where threads
would only contend for the GIL, in the calling thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from types import TracebackType
from typing import TypeVar

import torch

__all__ = ["ThreadTeam", "map_on_threads"]

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


class ThreadTeam:
    """Worker threads kept for many short parallel maps, one intra-op thread each.

    ``with ThreadTeam() as team:`` makes a pool of ``team.size - 1`` worker threads (``size`` is
    ``torch.get_num_threads()`` on entry; they start with the first maps and live until the
    block ends) and sets the calling thread to one intra-op thread until the block ends, so
    that work it runs alone does not fork either. :meth:`map` then
    costs a hand-over to running threads (~140 µs for two parts here) where
    :func:`map_on_threads` starts new ones (~360 µs). On exit the workers stop and the thread
    count is restored. A team is entered once; :meth:`map` called from a part of a map runs
    inline, in that part's thread, as :func:`map_on_threads` does.

    Args:
        name: prefix of the worker threads' names.
    """

    def __init__(self, name: str = "probneural") -> None:
        self.name = name
        self.size = 1
        self._threads = 0
        self._owner: threading.Thread | None = None
        self._mapping = False  # the owner is running part 0 of a map
        self._executor: ThreadPoolExecutor | None = None

    def __enter__(self) -> ThreadTeam:
        if self._owner is not None:
            raise RuntimeError(f"ThreadTeam {self.name!r} is already entered; make one team per with-block")
        self._owner = threading.current_thread()
        self._threads = self.size = torch.get_num_threads()
        if self.size > 1:
            self._executor = ThreadPoolExecutor(
                self.size - 1, thread_name_prefix=self.name, initializer=torch.set_num_threads, initargs=(1,)
            )
            torch.set_num_threads(1)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
        finally:
            self._executor, self._owner = None, None
            if self.size > 1:
                torch.set_num_threads(self._threads)  # also resets the default that new threads inherit

    def map(self, function: Callable[[Part], Result], parts: Sequence[Part]) -> list[Result]:
        """``[function(part) for part in parts]``: part 0 in the calling thread, the others on the
        workers, under the caller's gradient and inference modes (not its autocast state).

        Every part has ended when this returns or raises. Part 0's error is raised if it failed,
        otherwise the first failing part's.

        Args:
            function: applied to each part; it must not write what another part reads.
            parts: the independent pieces of work, in order.

        Returns:
            The results, in the order of ``parts``.
        """
        nested = self._mapping or threading.current_thread() is not self._owner
        if self._executor is None or len(parts) <= 1 or nested:
            return [function(part) for part in parts]
        grad_enabled, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(part: Part) -> Result:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad_enabled):
                return function(part)

        futures = [self._executor.submit(run, part) for part in parts[1:]]
        self._mapping = True
        try:
            first = function(parts[0])
        finally:
            self._mapping = False
            wait(futures)  # no worker outlives the call, even when part 0 fails
        return [first, *(future.result() for future in futures)]
