"""Planned line FFTs of fixed CPU tensors through FFTW, where pyFFTW is installed (``probneural[fftw]``).

A 256² Navier–Stokes evaluation spends about two thirds of its time in batches of 256-point complex
FFTs along the last axis, one sample per call. torch's CPU FFT prepares an MKL descriptor at every
call; an FFTW plan is made once per buffer. On this project's CPU (AMD EPYC, one thread) 256 such
lines in complex128 took 160–260 µs through ``torch.fft`` and 110–160 µs through a plan; whole
256² solves took 0.67–0.85× the time (same-process A/Bs at one and two threads, ADR 0019).
:class:`LineFFT` plans one transform between two tensors the solver allocates once and executes it
with the GIL released, so the solver's worker threads transform in parallel.

Plans use ``FFTW_ESTIMATE``: the algorithm then depends only on the problem, the CPU's vector
instructions and the arrays' alignment (the solver's buffers are fresh, aligned allocations), never
on timings, so a solve gives the same bits in every run on a machine. (FFTW
reuses wisdom the process already holds for the same transform, e.g. from pyFFTW's builders, which
plan with ``FFTW_MEASURE``.) ``FFTW_MEASURE`` picks by timing, which may differ between runs, and
was only 3–7 % faster here. Results agree with torch's FFTs to rounding, not bit for bit.

pyFFTW (BSD) loads FFTW, which is GPL-2.0-or-later: it is an optional extra, never a requirement,
and used wherever it is installed. Without it, on other devices, with ``PROBNEURAL_FFTW=0`` in the
environment, or with ``PROBNEURAL_NATIVE=0`` (which also turns off the C library of
:mod:`probneural.data.spectral_passes`), :func:`available` is false and the solvers use
``torch.fft``. The transforms write behind autograd's back: they are for solvers that are not
differentiated.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import cache
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["LineFFT", "available", "version"]

_COMPLEX = (torch.complex64, torch.complex128)


@cache
def _pyfftw() -> ModuleType | None:
    """The pyfftw module, or ``None``: not installed, not loadable (warns), or turned off by
    ``PROBNEURAL_FFTW=0`` or ``PROBNEURAL_NATIVE=0``."""
    if os.environ.get("PROBNEURAL_FFTW", "1") == "0" or os.environ.get("PROBNEURAL_NATIVE", "1") == "0":
        return None
    if importlib.util.find_spec("pyfftw") is None:
        return None
    try:
        import pyfftw
    except Exception as error:  # installed, but its extension, FFTW or its numpy build fails to load
        warnings.warn(f"pyfftw cannot be used ({type(error).__name__}: {error}); the solvers use torch.fft",
                      RuntimeWarning, stacklevel=3)
        return None
    return pyfftw


def available(*tensors: Tensor) -> bool:
    """Whether FFTW is loaded and can transform these tensors: strided CPU tensors, complex64 or complex128."""
    return _pyfftw() is not None and all(
        t.device.type == "cpu" and t.layout == torch.strided and t.dtype in _COMPLEX for t in tensors
    )


def version() -> str | None:
    """pyFFTW's version where it is loaded (:func:`available`), else ``None``."""
    pyfftw = _pyfftw()
    return None if pyfftw is None else pyfftw.__version__


def _byte_range(tensor: Tensor) -> tuple[int, int]:
    """``[start, end)``: the bytes from the first to the last element of a non-empty ``tensor``."""
    size = tensor.element_size()
    last = sum((n - 1) * stride for n, stride in zip(tensor.shape, tensor.stride()))
    return tensor.data_ptr(), tensor.data_ptr() + (last + 1) * size


def _overlaps_itself(tensor: Tensor) -> bool:
    """Whether two elements of ``tensor`` may share memory: a stride 0, or an axis whose stride is smaller
    than the span of the axes of smaller stride (conservative: some layouts of distinct elements, with
    interleaved axes, are refused too)."""
    extent = 1  # elements spanned by the axes of smaller stride
    for stride, size in sorted((abs(st), n) for n, st in zip(tensor.shape, tensor.stride()) if n > 1):
        if stride < extent:
            return True
        extent += stride * (size - 1)
    return False


class LineFFT:
    """``destination ← DFT(source)`` along the last axis, unnormalised, planned once.

    Forward: ``torch.fft.fft(source, dim=-1)``. Inverse: ``torch.fft.ifft(source, dim=-1,
    norm="forward")`` (no ``1/n``). Every line of ``source`` is transformed at each call, whatever
    its strides (rows padded in memory, say; elements outside the two views are never touched).
    ``source`` is not modified. The plan holds both tensors: ``source`` is read and ``destination``
    written in place at every call, so neither may be resized or freed while the plan is used.
    Planning does not touch either (``FFTW_ESTIMATE``), so a plan may be made after ``source`` is
    filled.

    Args:
        source: `(..., n)` complex64 or complex128 strided CPU tensor, ``n >= 1``, not a conjugated view.
        destination: tensor of ``source``'s shape and dtype whose byte range does not overlap
            ``source``'s, with distinct memory for every element (see :func:`_overlaps_itself`).
        inverse: the inverse (``e^{+2πi jk/n}``) transform instead of the forward one.

    Raises:
        RuntimeError: FFTW is not available (check :func:`available` first).
        ValueError: the tensors do not meet the above.
    """

    def __init__(self, source: Tensor, destination: Tensor, *, inverse: bool = False) -> None:
        pyfftw = _pyfftw()
        if pyfftw is None:
            raise RuntimeError("FFTW is not loaded (pyfftw not installed, or PROBNEURAL_FFTW=0 or "
                               "PROBNEURAL_NATIVE=0): check fftw.available() before planning")
        for name, tensor in (("source", source), ("destination", destination)):
            if not isinstance(tensor, Tensor) or not available(tensor):
                got = (f"{tensor.dtype} on {tensor.device} ({tensor.layout})" if isinstance(tensor, Tensor)
                       else type(tensor).__name__)
                raise ValueError(f"{name}: expected a strided complex64 or complex128 CPU tensor, got {got}")
            if tensor.ndim == 0 or tensor.numel() == 0:
                raise ValueError(f"{name}: expected a non-empty tensor of shape (..., n), got {tuple(tensor.shape)}")
            if tensor.is_conj() or tensor.is_neg():
                raise ValueError(f"{name}: expected a tensor without a conjugate or negative bit; resolve it first")
        if destination.shape != source.shape or destination.dtype != source.dtype:
            raise ValueError(f"destination: expected {source.dtype} of shape {tuple(source.shape)} like source, got "
                             f"{destination.dtype} of shape {tuple(destination.shape)}")
        (start, end), (out_start, out_end) = _byte_range(source), _byte_range(destination)
        if out_start < end and start < out_end:
            raise ValueError("destination: expected memory of its own, got a tensor whose byte range overlaps "
                             "source's")
        if _overlaps_itself(destination):
            raise ValueError("destination: expected distinct memory for every element, got a view whose elements "
                             f"may overlap (shape {tuple(destination.shape)}, strides {destination.stride()})")
        self.source, self.destination = source, destination
        direction = "FFTW_BACKWARD" if inverse else "FFTW_FORWARD"
        self._plan = pyfftw.FFTW(source.detach().numpy(), destination.detach().numpy(), axes=(-1,),
                                 direction=direction, flags=("FFTW_ESTIMATE",), threads=1)

    def __call__(self) -> Tensor:
        """Transform ``source`` into ``destination`` (the GIL released meanwhile) and return ``destination``."""
        self._plan.execute()
        return self.destination
