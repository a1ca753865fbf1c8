"""Fused CPU passes of the Navier–Stokes solver, from the package's optional C library.

Timed in place, a 256² Navier–Stokes evaluation of the advection term spent about half as long in
its elementwise passes and transposes (a dozen torch operations, each a pass over arrays no longer
in cache plus a dispatch) as in its four line FFTs. The C library ``spectral_passes.c`` does each
group of two to four of those operations, and each RK3 stage, in one pass over memory.
``setup.py`` builds it at install time where a C compiler is present (``make`` reports whether it
did); it is loaded here with ``ctypes``, which releases the GIL during each call, and is not a
Python module (importing ``_spectral_passes`` fails). Each function below names the torch
operations it replaces; the solver runs those where :func:`available` is false (other devices, no
library, or ``PROBNEURAL_NATIVE=0`` in the environment), and the tests compare both paths.

Arrays are CPU tensors of complex64 or complex128 (one dtype per call), passed as they are
(interleaved real and imaginary parts); the arrays a function reads need a contiguous last axis,
the arrays it writes must be contiguous and must not overlap what it reads. Each call checks
this, that no view is conjugated, and that every view lies inside its storage (~2 µs per array),
unless called with ``check=False``, as the solver calls them for the arrays it made itself: at two
threads the checks, which hold the GIL, cost about half of what the fused passes save.
:class:`RowProducts` and :class:`Transpose` check and copy their index tables once, when made.
The C code writes behind autograd's back: these functions are for solvers that are not
differentiated.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import os
import warnings
from functools import cache
from typing import NamedTuple
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["RowProducts", "Transpose", "available", "rk3_stage", "square_in_place", "source_digest"]

_HERE = Path(__file__).parent
# The library's sources; setup.py compiles their SHA-256 into it (spectral_passes_source()).
SOURCES = ("spectral_passes.c", "spectral_passes_body.h")
_SUFFIX = {torch.complex64: "f32", torch.complex128: "f64"}
_REAL = {torch.complex64: ctypes.c_float, torch.complex128: ctypes.c_double}
_I64, _PTR, _FLOAT = ctypes.c_int64, ctypes.c_void_p, None  # _FLOAT: the function's real type
_SIGNATURES = {
    "gathered_products": (_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _I64),
    "lines_to_grid": (_I64, _I64, _I64, _PTR, _I64, _I64, _PTR, _I64, _PTR, _I64, _I64),
    "grid_to_lines": (_I64, _I64, _I64, _PTR, _I64, _I64, _PTR, _I64, _PTR, _I64, _I64),
    "square_in_place": (_I64, _I64, _I64, _PTR, _PTR),
    "rk3_stage": (_I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _I64, _FLOAT),
}


def source_digest(directory: Path = _HERE) -> str | None:
    """SHA-256 of the library's sources in ``directory`` (as setup.py computes it), or ``None`` where they
    are not (an installed wheel)."""
    paths = [directory / name for name in SOURCES]
    if not all(path.exists() for path in paths):
        return None
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


@cache
def _library() -> ctypes.CDLL | None:
    """The built library next to this module, or ``None``: not built, disabled by ``PROBNEURAL_NATIVE=0``,
    built from other sources than those next to it (an editable install not rebuilt since they
    changed), or not loadable (both warn)."""
    if os.environ.get("PROBNEURAL_NATIVE", "1") == "0":
        return None
    path = next((p for suffix in importlib.machinery.EXTENSION_SUFFIXES
                 if (p := _HERE / f"_spectral_passes{suffix}").exists()), None)
    if path is None:
        return None
    try:
        library = ctypes.CDLL(str(path))
        library.spectral_passes_source.restype = ctypes.c_char_p
        built_from = library.spectral_passes_source().decode()
        for name, argtypes in _SIGNATURES.items():
            for dtype, real in _REAL.items():
                function = getattr(library, f"{name}_{_SUFFIX[dtype]}")
                function.argtypes = [real if a is _FLOAT else a for a in argtypes]
                function.restype = None
    except (OSError, AttributeError) as error:
        warnings.warn(f"{path} cannot be used ({error}); the solvers use torch operations", RuntimeWarning,
                      stacklevel=3)
        return None
    digest = source_digest()
    if digest is not None and built_from != digest:
        warnings.warn(f"{path} was built from other sources than those next to it: reinstall probneural "
                      "(`pip install -e .` or `make`) to rebuild it; the solvers use torch operations meanwhile",
                      RuntimeWarning, stacklevel=3)
        return None
    return library


def available(*tensors: Tensor) -> bool:
    """Whether the library is loaded and can take these tensors: on the CPU, one complex dtype."""
    if _library() is None:
        return False
    dtypes = {t.dtype for t in tensors}
    return len(dtypes) == 1 and dtypes.pop() in _SUFFIX and all(t.device.type == "cpu" for t in tensors)


def _function(name: str, dtype: torch.dtype):
    library = _library()
    if library is None:
        raise RuntimeError("the C library of fused solver passes is not loaded (not built, or PROBNEURAL_NATIVE=0): "
                           "check spectral_passes.available() before calling it")
    return getattr(library, f"{name}_{_SUFFIX[dtype]}")


class _View(NamedTuple):
    """A checked array: its strides and the byte range ``[start, end)`` its elements occupy."""

    strides: tuple[int, ...]
    start: int
    end: int


def _view(name: str, tensor: Tensor, dtype: torch.dtype, shape: tuple[int, ...], *,
          contiguous: bool = False, check: bool = True) -> _View:
    """``tensor`` checked: a CPU tensor of ``dtype`` and ``shape`` with a contiguous last axis (wholly
    contiguous if ``contiguous``), not a conjugated or negated view, with its elements inside its storage.
    With ``check=False`` only its strides and address are read (``end`` is then not computed)."""
    if not check:
        return _View(tensor.stride(), tensor.data_ptr(), 0)
    strides = tensor.stride() if tensor.layout == torch.strided else (0,)
    if (tensor.dtype != dtype or not tensor.is_cpu or tensor.shape != shape or strides[-1] != 1
            or contiguous and not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg()):
        raise ValueError(
            f"{name}: expected a CPU {dtype} tensor of shape {tuple(shape)} with a contiguous "
            f"{'layout' if contiguous else 'last axis'} (not a conjugated view), got {tensor.dtype} "
            f"{tensor.layout} on {tensor.device} with shape {tuple(tensor.shape)} and strides {strides}"
            + (" (conjugated)" if tensor.is_conj() else "")
        )
    start = end = tensor.data_ptr()
    if tensor.numel():
        last = 0
        for size, stride in zip(shape, strides):
            last += (size - 1) * stride
        end = start + (last + 1) * tensor.element_size()
        storage = tensor.untyped_storage() if start else None
        if storage is None or start < storage.data_ptr() or end > storage.data_ptr() + storage.nbytes():
            raise ValueError(f"{name}: its elements lie outside its storage (freed, resized or a zero tensor)")
    return _View(strides, start, end)


def _disjoint(name: str, written: _View, *read: _View | None, check: bool = True) -> None:
    """Raise unless the memory of ``written`` overlaps none of the ``read`` arrays' (nothing if not ``check``)."""
    for other in read if check else ():
        if other is not None and written.start < other.end and other.start < written.end:
            raise ValueError(f"{name}: expected memory of its own, got a tensor overlapping an input")


def _index_table(name: str, table: Tensor, limit: int) -> Tensor:
    """A validated contiguous int64 CPU copy of the 1-D index ``table``, entries in ``[0, limit)``."""
    table = torch.as_tensor(table)
    if table.ndim != 1 or table.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: expected a 1-D integer tensor, got {table.dtype} of shape {tuple(table.shape)}")
    table = table.to("cpu", torch.int64).contiguous().clone()
    if table.numel() and not (int(table.min()) >= 0 and int(table.max()) < limit):
        raise ValueError(f"{name}: entries must lie in [0, {limit}), got entries from {int(table.min())} to "
                         f"{int(table.max())}")
    return table


def _factor_table(name: str, factor: Tensor, rows: int) -> Tensor:
    """A contiguous CPU copy of a complex `(rows, n)` factor (conjugated views resolved)."""
    if factor.ndim != 2 or factor.shape[0] != rows or factor.dtype not in _SUFFIX:
        raise ValueError(f"{name}: expected a complex64 or complex128 tensor of shape ({rows}, n), got "
                         f"{factor.dtype} of shape {tuple(factor.shape)}")
    return factor.to("cpu").resolve_conj().resolve_neg().contiguous().clone()


class RowProducts:
    """``out[b, i] = first[i] * src[b, first_rows[i]] (+ second[i] * src[b, second_rows[i]])``.

    One pass instead of ``index_select`` and one or two of ``mul`` / ``addcmul``. The factors and
    row tables are checked and copied once, here.

    Args:
        first: `(R, n)` complex factors.
        first_rows: `(R,)` rows of ``src`` they multiply.
        source_rows: ``M``, the rows of ``src``.
        second, second_rows: an optional second term like the first (same dtype and shape; both or neither).
    """

    def __init__(self, first: Tensor, first_rows: Tensor, source_rows: int, second: Tensor | None = None,
                 second_rows: Tensor | None = None) -> None:
        if (second is None) != (second_rows is None):
            raise ValueError("second, second_rows: expected both or neither")
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
        self._tables = (self._first.data_ptr(), self._first_rows.data_ptr(),
                        None if second is None else self._second.data_ptr(),
                        None if second is None else self._second_rows.data_ptr())

    def __call__(self, out: Tensor, src: Tensor, *, check: bool = True) -> Tensor:
        """Fill ``out`` `(B, R, n)` (contiguous) from ``src`` `(B, M, n)` (contiguous rows); returns ``out``.
        ``check=False`` skips the checks (for a caller that made both arrays to this shape itself)."""
        (rows, n), batch = self._first.shape, out.shape[0]
        out_view = _view("out", out, self.dtype, (batch, rows, n), contiguous=True, check=check)
        src_view = _view("src", src, self.dtype, (batch, self.source_rows, n), check=check)
        if src_view.strides[1] != n:
            raise ValueError(f"src: expected contiguous rows, got strides {src_view.strides}")
        _disjoint("out", out_view, src_view, check=check)
        _function("gathered_products", self.dtype)(batch, rows, n, *self._tables, src_view.start,
                                                   src_view.strides[0], out_view.start, out_view.strides[0])
        return out


class Transpose:
    """Between `(B, L, n)` lines and a `(B, n, C)` grid: line ``i`` is column ``columns[i]``,
    conjugated for ``i >= conjugate_from``.

    One pass instead of a transposing copy and one or two transposing ``conj_physical``. The side
    read may have padded rows; the side written must be contiguous.

    Args:
        columns: `(L,)` column of each line.
        conjugate_from: first conjugated line.
        grid_columns: ``C``.
    """

    def __init__(self, columns: Tensor, conjugate_from: int, grid_columns: int) -> None:
        self._columns = _index_table("columns", columns, grid_columns)
        self.conjugate_from, self.grid_columns = int(conjugate_from), grid_columns
        self._pointer = self._columns.data_ptr()

    def _run(self, to_grid: bool, lines: Tensor, grid: Tensor, check: bool) -> None:
        if lines.dtype not in _SUFFIX or lines.ndim != 3:
            raise ValueError(f"lines: expected a complex64 or complex128 tensor of shape (B, L, n), got "
                             f"{lines.dtype} of shape {tuple(lines.shape)}")
        batch, count, n = lines.shape
        lines_view = _view("lines", lines, lines.dtype, (batch, self._columns.shape[0], n), contiguous=not to_grid,
                           check=check)
        grid_view = _view("grid", grid, lines.dtype, (batch, n, self.grid_columns), contiguous=to_grid, check=check)
        src, dst = (lines_view, grid_view) if to_grid else (grid_view, lines_view)
        _disjoint("grid" if to_grid else "lines", dst, src, check=check)
        _function("lines_to_grid" if to_grid else "grid_to_lines", lines.dtype)(
            batch, count, n, src.start, src.strides[0], src.strides[1], self._pointer, self.conjugate_from,
            dst.start, dst.strides[0], dst.strides[1],
        )

    def to_grid(self, grid: Tensor, lines: Tensor, *, check: bool = True) -> Tensor:
        """``grid[b, j, columns[i]] = lines[b, i, j]`` for ``grid`` `(B, n, C)` and ``lines`` `(B, L, n)` (other
        columns untouched); returns ``grid``. ``check=False`` as for :class:`RowProducts`."""
        self._run(True, lines, grid, check)
        return grid

    def to_lines(self, lines: Tensor, grid: Tensor, *, check: bool = True) -> Tensor:
        """``lines[b, i, j] = grid[b, j, columns[i]]`` for ``lines`` `(B, L, n)` and ``grid`` `(B, n, C)`;
        returns ``lines``. ``check=False`` as for :class:`RowProducts`."""
        self._run(False, lines, grid, check)
        return lines


def square_in_place(z: Tensor, with_speed: bool, *, check: bool = True) -> Tensor | None:
    """``z ← z²`` and, if asked, the speed ``max(|Re z| + |Im z|)`` of each sample before squaring.

    One pass over memory instead of ``mul_`` and ``abs``, ``abs``, ``add``, ``amax`` (row by row of
    the last axis: the speed's scan and the square each run over a row in cache). NaN propagates
    into the speed, as with ``amax``.

    Args:
        z: `(B, ...)` contiguous complex64 or complex128 CPU tensor, ``B >= 1``, overwritten.
        with_speed: also return the speed.
        check: ``False`` skips the checks (for a caller that made ``z`` itself).

    Returns:
        `(B,)` real speed, or ``None``.
    """
    if z.dtype not in _SUFFIX or z.ndim < 1 or z.shape[0] < 1:
        raise ValueError(f"z: expected a complex64 or complex128 tensor with a batch axis of at least one sample, "
                         f"got {z.dtype} of shape {tuple(z.shape)}")
    _view("z", z, z.dtype, z.shape, contiguous=True, check=check)
    speed = torch.empty(z.shape[0], dtype=z.real.dtype) if with_speed else None
    _function("square_in_place", z.dtype)(z.shape[0], z[0].numel(), max(1, z.shape[-1]) if z.ndim > 1 else 1,
                                          z.data_ptr(), None if speed is None else speed.data_ptr())
    return speed


def rk3_stage(w: Tensor, damping: Tensor, forcing: Tensor | None, factor: Tensor, advection: Tensor,
              previous: Tensor | None, ratio: float, *, check: bool = True) -> Tensor:
    """One RK3–Crank–Nicolson stage of :mod:`probneural.data.navier_stokes` in place:
    ``w ← damping w (+ forcing)``, and on the first ``R`` rows also ``+ factor (advection + ratio · previous)``.

    One pass over memory instead of ``mul_`` (or ``addcmul``), ``add`` and ``addcmul_`` (row by row:
    the stage's two or three loops run over each row in cache).

    Args:
        w: `(B, H, n)` contiguous complex half spectrum, overwritten.
        damping: `(B or 1, H, n)` contiguous complex factor.
        forcing: `(B or 1, H, n)` contiguous complex term, or ``None``.
        factor: `(B or 1, R, n)` contiguous complex factor of the advection, ``R <= H``.
        advection: `(B, R, n)` complex with contiguous rows.
        previous: `(B, R, n)` complex like ``advection``, or ``None``.
        ratio: real weight of ``previous``.
        check: ``False`` skips the checks (for a caller that made every array itself).

    Returns:
        ``w``.
    """
    if w.dtype not in _SUFFIX or w.ndim != 3 or factor.ndim != 3 or not 0 <= factor.shape[1] <= w.shape[1]:
        raise ValueError(f"w, factor: expected a complex w (B, H, n) and a factor (B or 1, R <= H, n), got "
                         f"{w.dtype} w {tuple(w.shape)} and factor {tuple(factor.shape)}")
    (batch, rows, n), advected = w.shape, factor.shape[1]
    if advection is None:
        raise ValueError("advection: expected a tensor, got None")
    w_view = _view("w", w, w.dtype, (batch, rows, n), contiguous=True, check=check)
    tables = []
    for name, table, table_rows in (("damping", damping, rows), ("forcing", forcing, rows),
                                    ("factor", factor, advected)):
        leading = table.shape[0] if table is not None and table.ndim and table.shape[0] in (1, batch) else batch
        view = None if table is None else _view(name, table, w.dtype, (leading, table_rows, n), contiguous=True,
                                                check=check)
        tables.append((view, 0 if view is None or leading == 1 else view.strides[0]))
    terms = []
    for name, term in (("advection", advection), ("previous", previous)):
        view = None if term is None else _view(name, term, w.dtype, (batch, advected, n), check=check)
        if view is not None and view.strides[1] != n:
            raise ValueError(f"{name}: expected contiguous rows, got strides {view.strides}")
        terms.append((view, 0 if view is None else view.strides[0]))
    _disjoint("w", w_view, *(view for view, _ in tables + terms), check=check)
    (damping_view, damping_batch), (forcing_view, forcing_batch), (factor_view, factor_batch) = tables
    (advection_view, advection_batch), (previous_view, previous_batch) = terms
    _function("rk3_stage", w.dtype)(
        batch, rows, advected, n, w_view.start, damping_view.start, damping_batch,
        None if forcing_view is None else forcing_view.start, forcing_batch, factor_view.start, factor_batch,
        advection_view.start, advection_batch, None if previous_view is None else previous_view.start,
        previous_batch, ratio,
    )
    return w
