"""keep_freed_memory: freed tensor memory stays in the heap, so reusing it costs no page faults."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from probneural.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD

# Counts the minor page faults of filling a 64 MB tensor that a freed one of the same size preceded,
# before and after keep_freed_memory(), in a fresh interpreter (the setting is process-wide). The fewest
# of five rounds: with the heap kept, its first few 64 MB blocks are new (a freed block is a little too
# small for the next aligned request until freed blocks coalesce).
_SCRIPT = """
import resource, torch
from probneural.allocator import allocator_setting, heap_kept, keep_freed_memory

def faults_per_reuse():
    torch.ones(2**24)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(2**24)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4

default, kept_before = min(faults_per_reuse() for _ in range(5)), heap_kept()
applied = keep_freed_memory()
kept = min(faults_per_reuse() for _ in range(5))
print(default, applied, kept, keep_freed_memory(), allocator_setting(), kept_before, heap_kept(), sep="|")
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory sets glibc's mallopt; other C libraries have no such setting")
def test_freed_memory_is_reused_without_page_faults() -> None:
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    default, applied, kept, again, setting, *heap = result.stdout.strip().split("|")
    pages = 2**26 // os.sysconf("SC_PAGE_SIZE")
    assert float(default) > 0.9 * pages  # glibc's default: a fresh mapping, every page faults
    assert applied == again == "True"
    assert float(kept) < 0.01 * pages
    assert setting == f"mallopt mmap_threshold={MMAP_THRESHOLD} trim_threshold={TRIM_THRESHOLD}"
    assert heap == ["False", "True"]  # heap_kept() before and after
