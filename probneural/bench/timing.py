"""Wall-clock timing, peak memory, a matmul roofline and forward-pass FLOP counts.

:func:`measure` times any callable the way benchmarks need it (warm-up calls, CUDA
synchronisation, robust statistics, peak memory); :func:`interleaved_times` times several in
interleaved rounds, for ratios under the same load. :func:`matmul_peak_gflops` measures the
rate a large dense matmul reaches, the practical ceiling for an operator's GFLOP/s.
:func:`fno_forward_flops` counts the floating-point work of one forward pass, FFTs included.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from probneural.train.precision import resolve_device
from probneural.validation import check_int

__all__ = ["fno_forward_flops", "interleaved_times", "matmul_peak_gflops", "measure", "timed_call"]

_STATM = Path("/proc/self/statm")
_SAMPLE_INTERVAL_S = 1e-3
_MATMUL_REPEATS = 3

aten = torch.ops.aten
_MATMULS = {aten.mm: 0, aten.bmm: 0, aten.addmm: 1, aten.baddbmm: 1}  # op -> index of the first factor


def _return_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS (``malloc_trim(0)``); a no-op elsewhere.

    Without it the allocator keeps pages freed by earlier work resident, the calls reuse
    them, and the resident set barely grows however much memory they need.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class _ResidentSetSampler:
    """Peak resident-set size of this process, sampled from ``/proc/self/statm`` by a thread.

    The baseline is read after returning freed heap memory to the OS (glibc), so the
    increase approximates what the sampled work needs. Approximate by construction:
    allocations that live shorter than the sampling interval (~1 ms, longer while the main
    thread holds the GIL) can be missed, and the resident set counts pages the allocator
    keeps after ``free`` as well as memory of other threads.
    """

    def __init__(self, interval: float = _SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.baseline = 0
        self.peak = 0
        self._fd = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @staticmethod
    def available() -> bool:
        return _STATM.is_file()

    def _read(self) -> int:
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[1]) * self.page_size

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._read())

    def __enter__(self) -> "_ResidentSetSampler":
        self._fd = os.open(_STATM, os.O_RDONLY)
        _return_freed_memory()
        self.baseline = self.peak = self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())
        os.close(self._fd)


def timed_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call ``fn()``, the device synchronised before and after on CUDA."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved_times(
    calls: Mapping[str, Callable[[], Any]], *, device: str | torch.device, rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, timed in ``rounds`` interleaved rounds.

    After ``warmup`` untimed rounds, round ``r`` calls each once, in the ``r``-th of their
    orders (cycling through the permutations): on a shared machine the load drifts, and ratios
    of calls from the same round compare them under the same load. With ``rounds`` a multiple
    of ``n!`` (2 for two calls, 6 for three) every order occurs equally often, so that each call
    comes first, between and last, after each of the others, as often as the others.

    Args:
        calls: name → work, called without arguments (a few: ``n!`` orders are listed).
        device: device the work runs on (synchronised around every call on CUDA).
        rounds: number of timed rounds.
        warmup: untimed rounds first.

    Returns:
        name → the ``rounds`` times, in round order.
    """
    check_int("rounds", rounds, 1)
    check_int("warmup", warmup, 0)
    device = resolve_device(device)
    orders = list(itertools.permutations(calls))
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        for name in orders[round_ % len(orders)]:
            times[name].append(timed_call(calls[name], device))
    return times


def measure(
    fn: Callable[[], Any],
    *,
    device: str | torch.device,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, Any]:
    """Time ``fn()`` and record the peak memory its calls need.

    ``fn`` is called ``warmup`` times untimed, then ``repeats`` times timed one by one; on
    CUDA the device is synchronised before and after every timed call.

    Peak memory is read during one further, untimed call, so that measuring it does not
    disturb the times:

    * CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak statistics, i.e.
      the most memory held by tensors at any moment, including tensors that existed before.
    * CPU: the peak increase of the process's resident set over its value before the first
      call (read after handing freed heap pages back to the OS), sampled every ~1 ms from ``/proc/self/statm`` by a background thread. This is
      approximate (short-lived buffers can be missed; the allocator's retained pages and
      other threads count) and ``None`` where ``/proc`` does not exist.

    Args:
        fn: the work to time, called without arguments.
        device: device the work runs on (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``).
        warmup: untimed calls first (compilation, caches, allocator, lazy state).
        repeats: timed calls.

    Returns:
        ``median_s``, ``min_s``, ``iqr_s`` (seconds per call), ``times_s`` (every timed call),
        ``warmup``, ``repeats``, ``peak_memory_bytes`` (int or ``None``) and ``memory_source``
        (``"cuda_max_memory_allocated"``, ``"cpu_rss_increase_approx"`` or ``"unavailable"``).

    Raises:
        ValueError: ``fn`` not callable, or ``warmup``/``repeats`` out of range.
    """
    if not callable(fn):
        raise ValueError(f"fn: expected a callable; got {type(fn).__name__}")
    check_int("warmup", warmup, 0)
    check_int("repeats", repeats, 1)
    device = resolve_device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = [timed_call(fn, device) for _ in range(repeats)]
    # memory comes from one further call: a sampling thread during the timed calls would
    # compete with torch's threads for the cores and inflate the times
    peak: int | None
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak, source = torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    elif _ResidentSetSampler.available():
        with _ResidentSetSampler() as sampler:
            fn()
        peak, source = max(0, sampler.peak - sampler.baseline), "cpu_rss_increase_approx"
    else:
        peak, source = None, "unavailable"
    t = torch.tensor(times, dtype=torch.float64)
    q25, q50, q75 = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {
        "median_s": q50,
        "min_s": t.min().item(),
        "iqr_s": q75 - q25,
        "times_s": times,
        "warmup": warmup,
        "repeats": repeats,
        "peak_memory_bytes": peak,
        "memory_source": source,
    }


def matmul_peak_gflops(
    device: str | torch.device, dtype: torch.dtype = torch.float32, size: int = 2048
) -> float:
    """Measured rate of a dense ``size × size`` matmul in GFLOP/s (``2·size³`` flops per call).

    The best of a few calls after one warm-up: a practical ceiling for the dense parts of
    an operator on this device, dtype and thread count.

    Raises:
        ValueError: ``dtype`` is not a floating dtype, or ``size`` is not a positive integer.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch.dtype; got {dtype!r}")
    check_int("size", size, 1)
    device = resolve_device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    timing = measure(lambda: torch.mm(a, b, out=out), device=device, warmup=1, repeats=_MATMUL_REPEATS)
    return 2.0 * size**3 / timing["min_s"] / 1e9


def _fft_points(shape: torch.Size, dims: list[int]) -> int:
    return math.prod(shape[d % len(shape)] for d in dims)


class _SpectralFlops(TorchDispatchMode):
    """Counts what :class:`FlopCounterMode` leaves out: FFTs, and the complex part of matmuls.

    An FFT of ``N`` points costs ``2.5·N·log2(N)`` real flops if its signal is real
    (``_fft_r2c``, ``_fft_c2r``) and ``5·N·log2(N)`` if complex (``_fft_c2c``); ``N`` is the
    product of the transformed axes' lengths and one call transforms ``numel / N`` signals.
    A complex multiply-add is 8 real flops where ``FlopCounterMode`` counts 2, so complex
    matmuls add 3 times its count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet is aten._fft_r2c:
            x, dims = args[0], list(args[1])
            self.flops += round(2.5 * x.numel() * math.log2(_fft_points(x.shape, dims)))
        elif packet is aten._fft_c2c:
            x, dims = args[0], list(args[1])
            self.flops += round(5.0 * x.numel() * math.log2(_fft_points(x.shape, dims)))
        elif packet is aten._fft_c2r:
            x, dims, last_size = args[0], list(args[1]), int(args[3])
            signals = x.numel() // _fft_points(x.shape, dims)
            n = _fft_points(x.shape, dims[:-1]) * last_size
            self.flops += round(2.5 * signals * n * math.log2(n))
        elif packet in _MATMULS:
            first = _MATMULS[packet]
            a, b = args[first], args[first + 1]
            if a.is_complex() or b.is_complex():
                self.flops += 3 * 2 * a.numel() * b.shape[-1]
        return func(*args, **kwargs)


def fno_forward_flops(model: nn.Module, x: Tensor) -> int:
    """Floating-point operations of one forward pass ``model(x)``, FFTs included.

    Matmuls, batched matmuls and convolutions are counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (``2·m·k·n`` per product);
    FFTs, which it ignores, are counted from the ``aten._fft_*`` calls the forward makes,
    at ``2.5·N·log2(N)`` flops per real and ``5·N·log2(N)`` per complex transform of ``N``
    points; complex matmuls count 8 real flops per multiply-add. Elementwise work
    (activations, normalisation) is not counted. Works for any operator, not only FNOs.

    Args:
        model: the operator.
        x: `(b, c, *spatial)` input batch.

    Returns:
        FLOPs of the forward pass on this batch (runs it once, without gradients).
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter, _SpectralFlops() as spectral:
        model(x)
    return counter.get_total_flops() + spectral.flops
