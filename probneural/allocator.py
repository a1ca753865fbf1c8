"""Keep the memory of freed tensors in the process heap (glibc) instead of handing it back to the OS.

PyTorch's CPU tensors are plain ``malloc`` blocks. glibc serves blocks above its mmap threshold
(adjusted at run time, at most 32 MB) with fresh mappings that it unmaps on ``free``, and it
trims the top of the heap whenever more than its trim threshold lies free there. The next
tensor of that size then page-faults on every 4 KB page it touches: on the 2-core VM these
figures come from, a fault costs ~2.6 µs, so filling a fresh 64 MB tensor took 50 ms against
7.5 ms for a reused one. Forward-over-reverse Hessian-vector products through the FNO
(35,000-64,000 faults per product), double backward, Laplace fits and big-batch inference free
and re-allocate such blocks on every call; ``make demo`` took 4.5 million faults and 14 s of
system time by default against 0.29 million and 1.4 s with the heap kept.

:func:`keep_freed_memory` sets glibc's thresholds for this process (``mallopt``): blocks below
1 GiB come from the heap, and the heap is never trimmed below 2 GiB free. Freed memory then
stays with the process and is reused, and the resident set stays at its peak. It is the
setting ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=...``
gives at start-up, applied from inside the process. The command-line entry points apply it
unless ``keep_freed_memory=false``; notebooks call it themselves. Elsewhere than glibc (macOS,
musl, Windows) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["allocator_setting", "heap_kept", "keep_freed_memory"]

MMAP_THRESHOLD = 1 << 30  # bytes: smaller blocks come from the heap
TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept (mallopt takes a C int)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>

_SETTING = f"mallopt mmap_threshold={MMAP_THRESHOLD} trim_threshold={TRIM_THRESHOLD}"
_applied: str | None = None  # what mallopt accepted, as allocator_setting reports it


def keep_freed_memory() -> bool:
    """Keep freed memory in this process's heap (glibc ``mallopt``): no page faults when it is reused.

    Process-wide and not undone; the resident set no longer shrinks after a peak. See the
    module docstring for what it saves.

    Returns:
        ``True`` if the setting is in effect; ``False`` where the C library is not glibc or glibc
        refused a value (:func:`allocator_setting` then names what did apply).
    """
    global _applied
    if heap_kept():
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = [f"{name}={value}" for name, option, value in (("mmap_threshold", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                             ("trim_threshold", _M_TRIM_THRESHOLD, TRIM_THRESHOLD))
               if mallopt(option, value)]
    _applied = "mallopt " + " ".join(applied) if applied else None
    return heap_kept()


def heap_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process.

    Code that owns work buffers only to spare fresh allocations their page faults can use fresh
    tensors instead where the heap is kept (the Navier–Stokes solver's transforms: it saves a copy).
    """
    return _applied == _SETTING


def allocator_setting() -> str:
    """The process's allocator setting as benchmark records name it.

    ``GLIBC_TUNABLES`` if set at start-up, the ``mallopt`` setting if :func:`keep_freed_memory`
    applied it (both, separated by ``"; "``), else ``"default"``.
    """
    parts = [part for part in (os.environ.get("GLIBC_TUNABLES"), _applied) if part]
    return "; ".join(parts) or "default"
