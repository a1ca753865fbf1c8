"""What a benchmark ran on: machine, device, library versions, threads, precision and allocator.

Every benchmark record carries this dictionary, so figures from many machines can be
merged into one table (:mod:`probneural.bench.merge`) and a surprising number can be
traced back to its setting (e.g. glibc's allocator tunables, which change CPU timings
of large-buffer workloads several-fold).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import probneural
from probneural.allocator import allocator_setting
from probneural.data import fftw
from probneural.train.checkpoint import git_commit
from probneural.train.precision import PrecisionPolicy, resolve_device

__all__ = ["capture_environment"]

_CPUINFO = Path("/proc/cpuinfo")
_CPU_MODEL_KEYS = ("model name", "Hardware", "Processor", "cpu model")


def _cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else :mod:`platform`'s best guess."""
    try:
        lines = _CPUINFO.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for key in _CPU_MODEL_KEYS:
        for line in lines:
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cores() -> int | None:
    """Cores this process may run on (CPU affinity, e.g. a SLURM allocation), when the OS tells."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version reported by ``nvidia-smi``, or ``None`` if it cannot be asked."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()
    return first[0].strip() if first else None


def _device_info(device: torch.device) -> dict[str, Any]:
    """Type and name of ``device``; on CUDA also its memory, capability, CUDA and driver versions."""
    if device.type != "cuda":
        return {"type": device.type, "name": _cpu_model()}
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "type": "cuda",
        "name": props.name,
        "index": index,
        "total_memory_bytes": props.total_memory,
        "capability": f"{props.major}.{props.minor}",
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        "driver_version": _nvidia_driver(),
    }


def capture_environment(
    precision: str,
    device: str | torch.device = "auto",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Describe the machine and settings a benchmark runs with, as a JSON-able dictionary.

    Args:
        precision: precision policy name (``fp32``, ``fp64``, ``bf16``, ``fp16``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: the device the benchmark uses.
        overrides: the Hydra command-line overrides of the run (recorded verbatim), if any.

    Returns:
        ``hostname``, ``platform``, ``cpu`` (model, logical and usable cores), ``device``
        (type and name; on CUDA also memory, capability, CUDA, cuDNN and driver versions),
        ``versions`` (python, torch, probneural, numpy; pyfftw where the solvers use it, else ``None``),
        ``torch_num_threads``,
        ``precision`` (:meth:`PrecisionPolicy.as_dict`), ``git_commit``, ``overrides``,
        ``allocator`` (:func:`probneural.allocator.allocator_setting`: ``GLIBC_TUNABLES``, the
        in-process ``mallopt`` setting of the entry points, or ``"default"``) and
        ``timestamp`` (UTC, ISO 8601).

    Raises:
        ValueError: unknown ``precision`` or ``device``, or ``overrides`` not a list of strings.
    """
    policy = PrecisionPolicy.from_name(precision)
    resolved = resolve_device(device)
    if overrides is not None and (
        not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides)
    ):
        raise ValueError(f"overrides: expected a list of strings or None; got {overrides!r}")
    import numpy

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": {"model": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": _usable_cores()},
        "device": _device_info(resolved),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "probneural": probneural.__version__,
            "numpy": numpy.__version__,
            "pyfftw": fftw.version(),
        },
        "torch_num_threads": torch.get_num_threads(),
        "precision": policy.as_dict(),
        "git_commit": git_commit(),
        "overrides": list(overrides or []),
        "allocator": allocator_setting(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
