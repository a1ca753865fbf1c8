"""Fused CPU passes of the Navier–Stokes solver, from the package's optional C library.

A 256² Navier–Stokes step spends as much time in its elementwise passes and transposes (a
dozen torch operations per advection evaluation, each a pass over its arrays plus a dispatch)
as in its four line FFTs. The C library ``spectral_passes.c`` (built at install time when a C
compiler is present, loaded here with ``ctypes``, which releases the GIL during each call) does
each group of two or three of those operations in one pass. Each function below states the
torch operations it replaces; :class:`probneural.data.navier_stokes._Spectral` runs those
where :func:`available` is false for the arrays at hand (other devices, or no library), and the
tests compare both paths.

Arrays: CPU, float32 or float64 (complex64 or complex128 for complex ones), one dtype per call;
complex arrays are passed as they are (interleaved real and imaginary parts). Row and batch
strides are read from the tensors; the last axis must be contiguous. :class:`RowProducts` and
:class:`Transpose` check and copy their index tables once, when they are made (a solver makes them
with its other tables), so that each call only checks the shapes of its arrays.

Set ``PROBNEURAL_NATIVE=0`` in the environment to use torch operations everywhere.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import warnings
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["RowProducts", "Transpose", "available", "rk3_stage", "square_in_place"]

_SUFFIX = {torch.complex64: "f32", torch.complex128: "f64"}
_REAL = {torch.complex64: ctypes.c_float, torch.complex128: ctypes.c_double}
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "gathered_products": (_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _I64),
    "lines_to_columns": (_I64, _I64, _I64, _PTR, _I64, _I64, _PTR, _I64, _PTR, _I64, _I64),
    "columns_to_lines": (_I64, _I64, _I64, _PTR, _I64, _I64, _PTR, _I64, _PTR, _I64, _I64),
    "square_in_place": (_I64, _I64, _PTR, _PTR),
    "rk3_stage": (_I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _I64, None),
}


# Bumped with every change to the C functions' signatures or meaning; a library built from other
# sources (an install older than this module) reports another value and is not used.
ABI_VERSION = 1


@cache
def _library() -> ctypes.CDLL | None:
    """The built library next to this module, or ``None`` (not built, built from other sources, or
    disabled by ``PROBNEURAL_NATIVE=0``)."""
    if os.environ.get("PROBNEURAL_NATIVE", "1") == "0":
        return None
    here = Path(__file__).parent
    path = next((p for suffix in importlib.machinery.EXTENSION_SUFFIXES
                 if (p := here / f"_spectral_passes{suffix}").exists()), None)
    if path is None:
        return None
    library = ctypes.CDLL(str(path))
    library.spectral_passes_abi.restype = ctypes.c_int
    if library.spectral_passes_abi() != ABI_VERSION:
        warnings.warn(f"{path} was built from other sources (ABI {library.spectral_passes_abi()}, expected "
                      f"{ABI_VERSION}): reinstall probneural to rebuild it; using torch operations meanwhile",
                      RuntimeWarning, stacklevel=2)
        return None
    for name, argtypes in _SIGNATURES.items():
        for dtype, real in _REAL.items():
            function = getattr(library, f"{name}_{_SUFFIX[dtype]}")
            function.argtypes = [real if a is None else a for a in argtypes]
            function.restype = None
    return library


def available(*tensors: Tensor) -> bool:
    """Whether the library is loaded and can take these tensors: on the CPU, one complex dtype."""
    if _library() is None:
        return False
    dtypes = {t.dtype for t in tensors}
    return len(dtypes) == 1 and dtypes.pop() in _SUFFIX and all(t.device.type == "cpu" for t in tensors)


def _function(name: str, dtype: torch.dtype):
    return getattr(_library(), f"{name}_{_SUFFIX[dtype]}")


def _strides(name: str, tensor: Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of ``tensor``, checked to be a CPU tensor of ``dtype`` and ``shape`` with a contiguous last axis.

    Called for every array of every call, so it reads each attribute once (about 1 µs in all).
    """
    strides = tensor.stride()
    if tensor.dtype != dtype or not tensor.is_cpu or tensor.shape != shape or strides[-1] != 1:
        raise ValueError(
            f"{name}: expected a CPU {dtype} tensor of shape {shape} with a contiguous last axis, got "
            f"{tensor.dtype} on {tensor.device} with shape {tuple(tensor.shape)} and strides {strides}"
        )
    return strides


def _index_table(name: str, table: Tensor, limit: int) -> Tensor:
    """A validated contiguous int64 CPU copy of the 1-D index ``table``, entries in ``[0, limit)``."""
    table = torch.as_tensor(table)
    if table.ndim != 1 or table.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: expected a 1-D integer tensor, got {table.dtype} of shape {tuple(table.shape)}")
    table = table.to("cpu", torch.int64).contiguous().clone()
    if table.numel() and not (int(table.min()) >= 0 and int(table.max()) < limit):
        raise ValueError(f"{name}: entries must lie in [0, {limit}), got {table.tolist()}")
    return table


def _factor_table(name: str, factor: Tensor, rows: int) -> Tensor:
    """A contiguous CPU copy of a complex `(rows, n)` factor."""
    if factor.ndim != 2 or factor.shape[0] != rows or factor.dtype not in _SUFFIX:
        raise ValueError(f"{name}: expected a complex64 or complex128 tensor of shape ({rows}, n), got "
                         f"{factor.dtype} of shape {tuple(factor.shape)}")
    return factor.to("cpu").contiguous().clone()


def _batch_stride(tensor: Tensor, batch: int) -> int:
    """Stride of the leading axis: 0 for a single table shared by the batch."""
    return 0 if tensor.shape[0] == 1 and batch > 1 else tensor.stride(0)


class RowProducts:
    """``out[b, i] = first[i] * src[b, first_rows[i]] (+ second[i] * src[b, second_rows[i]])``.

    One pass instead of ``index_select`` and one or two of ``mul`` / ``addcmul``. The factors and
    row tables are checked and copied once, here.

    Args:
        first: `(R, n)` complex factors.
        first_rows: `(R,)` rows of ``src`` they multiply.
        source_rows: ``M``, the rows of ``src``.
        second, second_rows: an optional second term like the first (same dtype and shape).
    """

    def __init__(self, first: Tensor, first_rows: Tensor, source_rows: int, second: Tensor | None = None,
                 second_rows: Tensor | None = None) -> None:
        rows = first.shape[0]
        self._first = _factor_table("first", first, rows)
        self._first_rows = _index_table("first_rows", first_rows, source_rows)
        self._second = self._second_rows = None
        if second is not None:
            self._second = _factor_table("second", second, rows)
            self._second_rows = _index_table("second_rows", second_rows, source_rows)
            if self._second.shape != self._first.shape or self._second.dtype != self._first.dtype:
                raise ValueError(f"second: expected {self._first.dtype} of shape {tuple(self._first.shape)} like "
                                 f"first, got {second.dtype} of shape {tuple(second.shape)}")
        if self._first_rows.shape != (rows,) or self._second_rows is not None and self._second_rows.shape != (rows,):
            raise ValueError(f"first_rows, second_rows: expected {rows} rows each (the rows of first)")
        self.source_rows, self.dtype = source_rows, self._first.dtype
        self._call = _function("gathered_products", self.dtype)
        self._tables = (self._first.data_ptr(), self._first_rows.data_ptr(),
                        None if second is None else self._second.data_ptr(),
                        None if second is None else self._second_rows.data_ptr())

    def __call__(self, out: Tensor, src: Tensor) -> Tensor:
        """Fill ``out`` `(B, R, n)` (contiguous rows) from ``src`` `(B, M, n)` (contiguous rows); returns ``out``."""
        (rows, n), batch = self._first.shape, out.shape[0]
        out_strides = _strides("out", out, self.dtype, (batch, rows, n))
        src_strides = _strides("src", src, self.dtype, (batch, self.source_rows, n))
        if out_strides[1] != n or src_strides[1] != n:
            raise ValueError(f"out, src: expected contiguous rows, got strides {out_strides} and {src_strides}")
        self._call(batch, rows, n, *self._tables, src.data_ptr(), src_strides[0], out.data_ptr(), out_strides[0])
        return out


class Transpose:
    """Between `(B, L, n)` lines and a `(B, n, C)` grid: line ``i`` is column ``columns[i]``,
    conjugated for ``i >= conjugate_from``.

    One pass instead of a transposing copy and one or two transposing ``conj_physical``. Rows of
    either side may be padded (any row stride); the last axes must be contiguous.

    Args:
        columns: `(L,)` column of each line.
        conjugate_from: first conjugated line.
        grid_columns: ``C``.
    """

    def __init__(self, columns: Tensor, conjugate_from: int, grid_columns: int) -> None:
        self._columns = _index_table("columns", columns, grid_columns)
        self.conjugate_from, self.grid_columns = int(conjugate_from), grid_columns
        self._pointer = self._columns.data_ptr()

    def _run(self, name: str, lines: Tensor, grid: Tensor) -> None:
        batch, count, n = lines.shape
        if lines.dtype not in _SUFFIX:
            raise ValueError(f"lines: expected complex64 or complex128, got {lines.dtype}")
        line_strides = _strides("lines", lines, lines.dtype, (batch, self._columns.shape[0], n))
        grid_strides = _strides("grid", grid, lines.dtype, (batch, n, self.grid_columns))
        (src, src_strides), (dst, dst_strides) = (
            ((lines, line_strides), (grid, grid_strides)) if name == "lines_to_columns"
            else ((grid, grid_strides), (lines, line_strides))
        )
        _function(name, lines.dtype)(batch, count, n, src.data_ptr(), src_strides[0], src_strides[1], self._pointer,
                                     self.conjugate_from, dst.data_ptr(), dst_strides[0], dst_strides[1])

    def to_grid(self, grid: Tensor, lines: Tensor) -> Tensor:
        """``grid[b, j, columns[i]] = lines[b, i, j]`` (other columns untouched); returns ``grid``."""
        self._run("lines_to_columns", lines, grid)
        return grid

    def to_lines(self, lines: Tensor, grid: Tensor) -> Tensor:
        """``lines[b, i, j] = grid[b, j, columns[i]]``; returns ``lines``."""
        self._run("columns_to_lines", lines, grid)
        return lines


def square_in_place(z: Tensor, with_speed: bool) -> Tensor | None:
    """``z ← z²`` and, if asked, the speed ``max(|Re z| + |Im z|)`` of each sample before squaring.

    One pass (two with the speed) instead of ``mul_`` and ``abs``, ``abs``, ``add``, ``amax``.

    Args:
        z: `(B, ...)` contiguous complex64 or complex128 CPU tensor, overwritten.
        with_speed: also return the speed.

    Returns:
        `(B,)` real speed, or ``None``.
    """
    if z.dtype not in _SUFFIX or z.device.type != "cpu" or not z.is_contiguous() or z.ndim < 1:
        raise ValueError(f"z: expected a contiguous complex CPU tensor with a batch axis, got {z.dtype} on "
                         f"{z.device} with shape {tuple(z.shape)} and strides {z.stride()}")
    speed = torch.empty(z.shape[0], dtype=z.real.dtype) if with_speed else None
    _function("square_in_place", z.dtype)(z.shape[0], z[0].numel(), z.data_ptr(),
                                          None if speed is None else speed.data_ptr())
    return speed


def rk3_stage(w: Tensor, damping: Tensor, forcing: Tensor | None, factor: Tensor, advection: Tensor,
              previous: Tensor | None, ratio: float) -> Tensor:
    """One RK3–Crank–Nicolson stage in place: ``w ← damping w (+ forcing)``, and on the first
    ``R`` rows also ``+ factor (advection + ratio · previous)``.

    One pass (two with forcing) instead of ``mul_`` (or ``addcmul``), ``add`` and ``addcmul_``.

    Args:
        w: `(B, H, n)` contiguous complex half spectrum, overwritten.
        damping: `(B or 1, H, n)` contiguous complex factor.
        forcing: `(B or 1, H, n)` contiguous complex term, or ``None``.
        factor: `(B or 1, R, n)` contiguous complex factor of the advection, ``R <= H``.
        advection: `(B, R, n)` complex with contiguous rows.
        previous: `(B, R, n)` complex like ``advection``, or ``None``.
        ratio: real weight of ``previous``.

    Returns:
        ``w``.
    """
    batch, rows, n = w.shape
    advected = factor.shape[1] if factor.ndim == 3 else -1
    if w.dtype not in _SUFFIX or not w.is_contiguous() or not 0 <= advected <= rows:
        raise ValueError(f"w, factor: expected a contiguous complex w (B, H, n) and a factor (B or 1, R <= H, n), "
                         f"got {w.dtype} w {tuple(w.shape)} and factor {tuple(factor.shape)}")
    _strides("w", w, w.dtype, (batch, rows, n))
    for name, table, table_rows in (("damping", damping, rows), ("forcing", forcing, rows),
                                    ("factor", factor, advected)):
        if table is not None:
            _strides(name, table, w.dtype, (table.shape[0] if table.shape[0] in (1, batch) else batch, table_rows, n))
            if not table.is_contiguous():
                raise ValueError(f"{name}: expected a contiguous tensor, got strides {table.stride()}")
    term_strides = []
    for name, term in (("advection", advection), ("previous", previous)):
        if term is not None:
            strides = _strides(name, term, w.dtype, (batch, advected, n))
            if strides[1] != n:
                raise ValueError(f"{name}: expected contiguous rows, got strides {strides}")
            term_strides.append(strides[0])
    _function("rk3_stage", w.dtype)(
        batch, rows, advected, n, w.data_ptr(), damping.data_ptr(), _batch_stride(damping, batch),
        None if forcing is None else forcing.data_ptr(), 0 if forcing is None else _batch_stride(forcing, batch),
        factor.data_ptr(), _batch_stride(factor, batch), advection.data_ptr(), term_strides[0],
        None if previous is None else previous.data_ptr(), 0 if previous is None else term_strides[1], ratio,
    )
    return w
