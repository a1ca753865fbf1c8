"""Readers of operator-learning data published by other projects, each returning an :class:`OperatorDataset`.

* :func:`read_pdebench` — PDEBench HDF5 files (Takamoto et al. 2022) in the four layouts the
  PDEBench generators write (``pdebench/data_gen/data_gen_NLE/Data_Merge.py``,
  ``gen_diff_react.py``, ``gen_diff_sorp.py``, ``gen_radial_dam_break.py``) and its
  ``pdebench/models/fno/utils.py`` data sets read; the layout is detected from the keys:

  ``tensor``
      ``tensor`` `(N, T, *spatial)`, ``x-coordinate`` [, ``y-coordinate`` [, ``z-coordinate``]],
      optional ``t-coordinate``. E.g. ``1D_Burgers_Sols_Nu0.1.hdf5``,
      ``1D_Advection_Sols_beta0.4.hdf5``, ``ReacDiff_Nu0.5_Rho1.0.hdf5``.
  ``darcy``
      ``nu`` `(N, X, Y)` coefficient, ``tensor`` `(N, 1, X, Y)` solution, ``x-coordinate``,
      ``y-coordinate``. E.g. ``2D_DarcyFlow_beta1.0_Train.hdf5``.
  ``cfd``
      ``density``, ``pressure``, ``Vx`` [, ``Vy`` [, ``Vz``]], each `(N, T, *spatial)`; coordinates
      as for ``tensor``. E.g. ``1D_CFD_Rand_Eta0.01_Zeta0.01_periodic_Train.hdf5``, ``2D_CFD_...``.
  ``groups``
      one group per sample (``0000``, ``0001``, ..., read in sorted order) holding ``data``
      `(T, *spatial, C)`, ``grid/x`` [, ``grid/y`` [, ``grid/z``]] and optional ``grid/t``. E.g.
      ``2D_diff-react_NA_NA.h5`` (C = 2), ``2D_rdb_NA_NA.h5`` (shallow water, C = 1),
      ``1D_diff-sorp_NA_NA.h5``.

  PDEBench writes ``t-coordinate`` with one entry more than there are snapshots
  (``tc = arange(it_tot + 1) * dt_save`` for ``it_tot`` snapshots); snapshot ``i`` is at
  ``t[i]``, so the first ``T`` entries are used.

* :func:`read_neuralop_darcy` — neuraloperator's Darcy ``.pt`` files (``darcy_train_16.pt``,
  ``darcy_test_32.pt``, ...; the same layout as its ``nsforcing_*.pt``): a dict whose ``"x"``
  and ``"y"`` tensors are `(N, s, s)` (neuraloperator 2.0.0's ``PTDataset`` adds the channel
  axis) or `(N, C, s, s)`. Loaded with ``torch.load(..., weights_only=True)`` only.

h5py is imported only when a PDEBench file is read (``pip install probneural[formats]``).
"""

from __future__ import annotations

import datetime
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

import probneural
from probneural.data.dataset import OperatorDataset
from probneural.validation import check_floating_dtype, check_int

__all__ = ["read_neuralop_darcy", "read_pdebench"]

Steps = int | slice | Sequence[int]
"""A time selection: one index, a slice, or a sequence of indices (negative ones count from the end)."""

_AXES = ("x", "y", "z")
_CFD_FIELDS = ("density", "pressure", "Vx", "Vy", "Vz")
_CFD_REQUIRED = 3  # density, pressure and Vx are always written; Vy, Vz from 2-D, 3-D on
_NEURALOP_GRIDS = ("neuralop", "nodes")


# --------------------------------------------------------------------------- shared helpers


def _existing_file(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path must name an existing file, got {str(path)!r}")
    return path


def _provenance(path: Path) -> dict[str, Any]:
    """Cheap identity of the source file: name, size in bytes and modification time (UTC, ISO 8601)."""
    stat = path.stat()
    mtime = datetime.datetime.fromtimestamp(stat.st_mtime, tz=datetime.timezone.utc)
    return {"source_file": path.name, "source_size": stat.st_size, "source_mtime": mtime.isoformat()}


def _check_n(n: int | None, available: int, source: str) -> int:
    if n is None:
        return available
    check_int("n", n, least=1)
    if n > available:
        raise ValueError(f"n must be <= the {available} samples in {source}, got {n}")
    return n


def _check_stride(stride: int | Sequence[int], n_axes: int) -> tuple[int, ...]:
    """One positive step per spatial axis, from an int (shared) or a sequence of ``n_axes`` ints."""
    if isinstance(stride, int) and not isinstance(stride, bool):
        return (check_int("stride", stride, least=1),) * n_axes
    if not isinstance(stride, Sequence) or len(stride) != n_axes:
        raise ValueError(
            f"stride must be an int >= 1 or a sequence of {n_axes} such ints (one per spatial axis), got {stride!r}"
        )
    return tuple(check_int("stride", step, least=1) for step in stride)


# --------------------------------------------------------------------------- PDEBench


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "read_pdebench needs h5py to read HDF5 files; install it with `pip install probneural[formats]`"
        ) from err
    return h5py


class _Series(NamedTuple):
    """A time-dependent PDEBench file, described before anything large is read.

    ``read(n, steps, spatial, channels)`` returns `(n, len(steps), len(channels), *spatial')` for
    the first ``n`` samples, the strictly increasing time indices ``steps``, the spatial slices and
    the channel indices ``channels``.
    """

    n_samples: int
    n_times: int
    spatial: tuple[int, ...]
    channel_names: tuple[str, ...] | None
    n_channels: int
    coordinates: tuple[np.ndarray, ...]
    times: np.ndarray | None
    read: Callable[[int, list[int], tuple[slice, ...], list[int]], np.ndarray]


def _keys_text(group: Any) -> str:
    keys = list(group.keys())
    shown = ", ".join(repr(k) for k in keys[:10])
    return f"[{shown}{', ...' if len(keys) > 10 else ''}]"


def _dataset(group: Any, key: str, source: str, expected: str, ndims: Sequence[int]) -> Any:
    """``group[key]`` if it is an HDF5 data set of one of the ranks ``ndims``, else ``ValueError``."""
    h5py = _import_h5py()
    where = f"{source}:{group.name.rstrip('/')}/{key}"
    if key not in group:
        raise ValueError(
            f"{source}: expected data set '{group.name.rstrip('/')}/{key}' of shape {expected}, "
            f"found keys {_keys_text(group)}"
        )
    value = group[key]
    if not isinstance(value, h5py.Dataset):
        raise ValueError(f"{where} must be a data set of shape {expected}, got a {type(value).__name__}")
    if value.ndim not in ndims:
        raise ValueError(f"{where} must have shape {expected}, got {value.shape}")
    if value.dtype.kind not in "biuf":
        raise ValueError(f"{where} must hold real numbers, got dtype {value.dtype}")
    return value


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s data where possible (native byte order, contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))


def _coordinates(group: Any, keys: Sequence[str], spatial: Sequence[int], source: str) -> tuple[np.ndarray, ...]:
    """The 1-D node coordinates ``group[keys[d]]``, checked against the field's spatial sizes."""
    result = []
    for key, size in zip(keys, spatial, strict=True):
        values = _dataset(group, key, source, f"({size},)", (1,))
        if values.shape != (size,):
            raise ValueError(
                f"{source}:{values.name} must have shape ({size},) to match the fields, got {values.shape}"
            )
        result.append(np.asarray(values[()], dtype=np.float64))
    return tuple(result)


def _times(group: Any, key: str, n_times: int, source: str) -> np.ndarray | None:
    """Snapshot times from ``group[key]`` (length ``T`` or PDEBench's ``T + 1``), ``None`` when absent."""
    if key not in group:
        return None
    values = _dataset(group, key, source, f"({n_times},) or ({n_times + 1},)", (1,))
    if values.shape[0] not in (n_times, n_times + 1):
        raise ValueError(
            f"{source}:{values.name} must have shape ({n_times},) or ({n_times + 1},) for {n_times} snapshots, "
            f"got {values.shape}"
        )
    return np.asarray(values[:n_times], dtype=np.float64)


def _detect_layout(f: Any, source: str) -> str:
    h5py = _import_h5py()
    keys = set(f.keys())
    if {"tensor", "nu"} <= keys:
        return "darcy"
    if "tensor" in keys:
        return "tensor"
    if "density" in keys:
        return "cfd"
    if keys and all(isinstance(f[k], h5py.Group) for k in keys):
        return "groups"
    raise ValueError(
        f"{source} is not in a PDEBench layout: found top-level keys {_keys_text(f)}; expected 'tensor' "
        "(with 'nu' for Darcy flow), the CFD fields 'density', 'pressure', 'Vx', or one group per sample "
        "('0000/data', '0000/grid/x', ...)"
    )


def _describe_tensor(f: Any, source: str) -> _Series:
    data = _dataset(f, "tensor", source, "(N, T, *spatial) with 1-3 spatial axes", (3, 4, 5))
    n_samples, n_times, *spatial = data.shape
    coordinates = _coordinates(f, [f"{a}-coordinate" for a in _AXES[: len(spatial)]], spatial, source)

    def read(n: int, steps: list[int], where: tuple[slice, ...], channels: list[int]) -> np.ndarray:
        return data[(slice(0, n), steps, *where)][:, :, None]

    times = _times(f, "t-coordinate", n_times, source)
    return _Series(n_samples, n_times, tuple(spatial), None, 1, coordinates, times, read)


def _describe_cfd(f: Any, source: str) -> _Series:
    names = [name for name in _CFD_FIELDS if name in f]
    missing = [name for name in _CFD_FIELDS[:_CFD_REQUIRED] if name not in f]
    if missing:
        required = list(_CFD_FIELDS[:_CFD_REQUIRED])
        raise ValueError(f"{source}: the CFD layout needs data sets {required}, missing {missing}")
    fields = [_dataset(f, name, source, "(N, T, *spatial) with 1-3 spatial axes", (3, 4, 5)) for name in names]
    shape = fields[0].shape
    for name, field in zip(names, fields, strict=True):
        if field.shape != shape:
            raise ValueError(f"{source}:/{name} must have the shape {shape} of /density, got {field.shape}")
    n_samples, n_times, *spatial = shape
    coordinates = _coordinates(f, [f"{a}-coordinate" for a in _AXES[: len(spatial)]], spatial, source)

    def read(n: int, steps: list[int], where: tuple[slice, ...], channels: list[int]) -> np.ndarray:
        return np.stack([fields[c][(slice(0, n), steps, *where)] for c in channels], axis=2)

    times = _times(f, "t-coordinate", n_times, source)
    return _Series(n_samples, n_times, tuple(spatial), tuple(names), len(names), coordinates, times, read)


def _describe_groups(f: Any, source: str) -> _Series:
    names = sorted(f.keys())
    first = f[names[0]]
    expected = "(T, *spatial, C) with 1-3 spatial axes"
    shape = _dataset(first, "data", source, expected, (3, 4, 5)).shape
    n_times, *spatial, n_channels = shape
    grid_keys = [f"grid/{a}" for a in _AXES[: len(spatial)]]
    coordinates = _coordinates(first, grid_keys, spatial, source)

    def read(n: int, steps: list[int], where: tuple[slice, ...], channels: list[int]) -> np.ndarray:
        out = None
        for i, name in enumerate(names[:n]):
            group = f[name]
            data = _dataset(group, "data", source, str(shape), (len(shape),))
            if data.shape != shape:
                raise ValueError(
                    f"{source}:{data.name} must have the shape {shape} of sample {names[0]!r}, got {data.shape}"
                )
            for key, reference in zip(grid_keys, coordinates, strict=True):
                values = _dataset(group, key, source, f"({reference.shape[0]},)", (1,))
                if values.shape != reference.shape or not np.array_equal(values[()], reference):
                    raise ValueError(
                        f"{source}:{values.name} differs from sample {names[0]!r}'s grid; "
                        "an OperatorDataset needs one grid shared by all samples"
                    )
            block = np.moveaxis(data[(steps, *where)], -1, 1)[:, channels]  # (k, C', *spatial')
            if out is None:
                out = np.empty((n, *block.shape), dtype=block.dtype)
            out[i] = block
        return out

    times = _times(first, "grid/t", n_times, source)
    return _Series(len(names), n_times, tuple(spatial), None, n_channels, coordinates, times, read)


def _resolve_steps(name: str, steps: Steps, n_times: int, source: str) -> list[int]:
    """Non-negative time indices selected by ``steps`` among ``n_times`` snapshots."""
    if isinstance(steps, slice):
        chosen = list(range(n_times)[steps])
    elif isinstance(steps, int) and not isinstance(steps, bool):
        chosen = [steps]
    elif isinstance(steps, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in steps):
        chosen = list(steps)
    else:
        raise ValueError(f"{name} must be an int, a slice or a sequence of ints, got {steps!r}")
    if not chosen:
        raise ValueError(f"{name} must select at least one of the {n_times} snapshots in {source}, got {steps!r}")
    bad = [t for t in chosen if not -n_times <= t < n_times]
    if bad:
        raise ValueError(
            f"{name} must index the {n_times} snapshots in {source} (-{n_times} <= t < {n_times}), got {bad}"
        )
    return [t % n_times for t in chosen]


def _resolve_channels(channels: Sequence[int | str] | None, series: _Series, source: str) -> list[int]:
    count = series.n_channels
    if channels is None:
        return list(range(count))
    names = series.channel_names or ()
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise ValueError(f"channels must be a non-empty sequence of channel indices or names, got {channels!r}")
    result = []
    for channel in channels:
        if isinstance(channel, str) and channel in names:
            result.append(names.index(channel))
        elif isinstance(channel, int) and not isinstance(channel, bool) and -count <= channel < count:
            result.append(channel % count)
        else:
            valid = f"indices in [{-count}, {count})" + (f" or names {list(names)}" if names else "")
            raise ValueError(f"channels must hold {valid} for the {count} channels in {source}, got {channel!r}")
    return result


def _json_attrs(attrs: Any) -> dict[str, Any]:
    """HDF5 attributes that are strings or finite numbers (or short lists of them), as JSON values."""
    result: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, np.ndarray) and value.size <= 64 and value.dtype.kind in "biuf":
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (str, bool, int)) or (isinstance(value, float) and np.isfinite(value)):
            result[key] = value
        elif isinstance(value, list) and np.isfinite(np.asarray(value, dtype=np.float64)).all():
            result[key] = value
    return result


def _read_darcy(
    f: Any, source: str, n: int | None, stride: int | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, tuple[np.ndarray, ...], dict[str, Any]]:
    nu = _dataset(f, "nu", source, "(N, X, Y)", (3,))
    tensor = _dataset(f, "tensor", source, f"({nu.shape[0]}, 1, {nu.shape[1]}, {nu.shape[2]})", (4,))
    if tensor.shape != (nu.shape[0], 1, *nu.shape[1:]):
        raise ValueError(
            f"{source}:/tensor must have shape {(nu.shape[0], 1, *nu.shape[1:])} to match /nu {nu.shape}, "
            f"got {tensor.shape}"
        )
    n = _check_n(n, nu.shape[0], source)
    steps = _check_stride(stride, 2)
    where = tuple(slice(None, None, s) for s in steps)
    coordinates = _coordinates(f, ["x-coordinate", "y-coordinate"], nu.shape[1:], source)
    x = _as_tensor(nu[(slice(0, n), *where)]).unsqueeze(1)
    y = _as_tensor(tensor[(slice(0, n), slice(None), *where)])
    grid = tuple(c[w] for c, w in zip(coordinates, where, strict=True))
    return x, y, grid, {"n": n, "n_available": nu.shape[0], "stride": list(steps)}


def _read_series(
    series: _Series,
    source: str,
    input_steps: Steps,
    output_steps: Steps,
    channels: Sequence[int | str] | None,
    n: int | None,
    stride: int | Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, tuple[np.ndarray, ...], dict[str, Any]]:
    n = _check_n(n, series.n_samples, source)
    steps = _check_stride(stride, len(series.spatial))
    where = tuple(slice(None, None, s) for s in steps)
    chosen_in = _resolve_steps("input_steps", input_steps, series.n_times, source)
    chosen_out = _resolve_steps("output_steps", output_steps, series.n_times, source)
    chosen_channels = _resolve_channels(channels, series, source)
    needed = sorted(set(chosen_in) | set(chosen_out))
    position = {t: i for i, t in enumerate(needed)}
    block = _as_tensor(series.read(n, needed, where, chosen_channels))  # (n, k, C', *spatial')
    x = block[:, [position[t] for t in chosen_in]].flatten(1, 2)
    y = block[:, [position[t] for t in chosen_out]].flatten(1, 2)
    grid = tuple(c[w] for c, w in zip(series.coordinates, where, strict=True))
    names = series.channel_names
    selection: dict[str, Any] = {
        "n": n,
        "n_available": series.n_samples,
        "n_times": series.n_times,
        "stride": list(steps),
        "input_steps": chosen_in,
        "output_steps": chosen_out,
        "channels": [names[c] for c in chosen_channels] if names else chosen_channels,
    }
    if series.times is not None:
        selection["input_times"] = [float(series.times[t]) for t in chosen_in]
        selection["output_times"] = [float(series.times[t]) for t in chosen_out]
    return x, y, grid, selection


def read_pdebench(
    path: str | os.PathLike[str],
    *,
    input_steps: Steps | None = None,
    output_steps: Steps | None = None,
    channels: Sequence[int | str] | None = None,
    n: int | None = None,
    stride: int | Sequence[int] = 1,
    dtype: torch.dtype = torch.float32,
) -> OperatorDataset:
    """Read a PDEBench HDF5 file as input/output pairs (layouts in the module docstring).

    The layout is detected from the file's keys. Only the selected samples, snapshots and
    strided nodes are read from disk (h5py hyperslabs), so a subset of a large file stays cheap.

    Time-dependent layouts (``tensor``, ``cfd``, ``groups``) become pairs of snapshots of the
    same trajectory: ``x`` stacks the snapshots ``input_steps`` and ``y`` the snapshots
    ``output_steps`` along the channel axis, time-major: channel ``i * C + c`` is field ``c``
    at the ``i``-th selected time (the order of PDEBench's own FNO/U-Net training code). The
    default pairs the first snapshot with the last; ``input_steps=slice(0, 10),
    output_steps=slice(10, 15)`` maps the first 10 snapshots to the next 5. Darcy files pair
    ``nu`` (``x``) with the steady solution ``tensor`` (``y``).

    Args:
        path: the ``.hdf5`` / ``.h5`` file.
        input_steps: snapshots forming ``x``: an index, a slice or a sequence of indices
            (negative ones count from the end); default ``0``. Not for Darcy files.
        output_steps: snapshots forming ``y``, as ``input_steps``; default ``-1``. Not for Darcy files.
        channels: fields to keep, by index along the file's channel axis or, for the ``cfd``
            layout, by name (``"density"``, ``"pressure"``, ``"Vx"``, ``"Vy"``, ``"Vz"``); default
            all. Not for Darcy files.
        n: read only the first ``n`` samples (default all).
        stride: keep every ``stride``-th node along each spatial axis, from the first; an int
            or one int per spatial axis.
        dtype: floating dtype of the returned tensors and grid.

    Returns:
        A CPU :class:`OperatorDataset` with ``x`` `(n, len(input_steps) * C, *spatial)`,
        ``y`` `(n, len(output_steps) * C, *spatial)` (Darcy: `(n, 1, X, Y)` each), ``grid``
        from the file's coordinates and ``metadata`` = ``{"problem": "pdebench", "source_file",
        "source_size", "source_mtime", "layout", "n", "n_available", "stride", ...,
        "attrs": <the file's scalar attributes, e.g. Nu or beta>, "probneural_version"}``; time-dependent files add
        ``"n_times"``, the resolved ``"input_steps"``, ``"output_steps"``, ``"channels"`` and,
        when the file has times, ``"input_times"`` and ``"output_times"``.

    Raises:
        ImportError: h5py is not installed.
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not HDF5 or not in a PDEBench layout (naming the missing or
            malformed key and the shape expected), its samples do not share one grid, or an
            argument is invalid.
    """
    h5py = _import_h5py()
    path = _existing_file(path)
    check_floating_dtype("dtype", dtype)
    source = path.name
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{source} is not a readable HDF5 file: {err}") from None
    with handle as f:
        layout = _detect_layout(f, source)
        if layout == "darcy":
            options = {"input_steps": input_steps, "output_steps": output_steps, "channels": channels}
            given = [name for name, value in options.items() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} must be None for {source}: a Darcy file has no time axis and one channel"
                )
            x, y, grid, selection = _read_darcy(f, source, n, stride)
        else:
            describe = {"tensor": _describe_tensor, "cfd": _describe_cfd, "groups": _describe_groups}[layout]
            x, y, grid, selection = _read_series(
                describe(f, source),
                source,
                0 if input_steps is None else input_steps,
                -1 if output_steps is None else output_steps,
                channels,
                n,
                stride,
            )
        attrs = _json_attrs(f.attrs)
    metadata = {
        "problem": "pdebench",
        **_provenance(path),
        "layout": layout,
        **selection,
        "attrs": attrs,
        "probneural_version": probneural.__version__,
    }
    return OperatorDataset(x.to(dtype), y.to(dtype), tuple(_as_tensor(g).to(dtype) for g in grid), metadata)


# --------------------------------------------------------------------------- neuraloperator


def _load_weights_only(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers; memory-mapped when the file allows it."""
    try:
        # mmap needs the zip format (torch.save's default since 1.6); then only the slices kept are read.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except PermissionError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        message = str(err)
        reason = (re.search(r"(Unsupported global: [^\n]+|unsupported GLOBAL [^\s]+)", message)
                  or re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", message, flags=re.DOTALL))
        if reason:
            detail = reason.group(1)
        elif isinstance(err, (OSError, EOFError, zipfile.BadZipFile)):
            detail = f"{type(err).__name__}: {message.strip() or 'no data'} (truncated, or not a torch file?)"
        else:
            detail = (message.strip().splitlines() or [type(err).__name__])[0]
        detail = detail.strip().rstrip(".")
        raise ValueError(
            f"{path.name} could not be loaded as a dict of tensors with torch.load(weights_only=True): {detail}. "
            "ProbNeural never unpickles other objects; re-save the data as {'x': tensor, 'y': tensor}"
        ) from None


def _pt_field(data: dict[Any, Any], key: str, source: str) -> torch.Tensor:
    expected = "(N, s1, s2) or (N, C, s1, s2)"
    if key not in data:
        raise ValueError(
            f"{source}: expected key {key!r} holding a tensor of shape {expected}, found keys {sorted(map(str, data))}"
        )
    value = data[key]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{source}: {key!r} must be a tensor of shape {expected}, got {type(value).__name__}")
    if value.ndim not in (3, 4) or value.is_complex():
        raise ValueError(
            f"{source}: {key!r} must be a real tensor of shape {expected}, got {value.dtype} {tuple(value.shape)}"
        )
    return value.unsqueeze(1) if value.ndim == 3 else value


def read_neuralop_darcy(
    path: str | os.PathLike[str],
    *,
    n: int | None = None,
    stride: int | Sequence[int] = 1,
    grid: str = "neuralop",
    dtype: torch.dtype = torch.float32,
) -> OperatorDataset:
    """Read a neuraloperator Darcy ``.pt`` file (``darcy_train_16.pt``, ``darcy_test_32.pt``, ...).

    The file is a dict with ``"x"`` (coefficient) and ``"y"`` (solution) tensors `(N, s1, s2)`,
    to which neuraloperator 2.0.0's ``PTDataset`` adds a channel axis at 1, or already
    `(N, C, s1, s2)`; other keys are ignored. It is loaded with ``torch.load(...,
    weights_only=True)`` — a file holding anything but tensors and plain containers is refused —
    and memory-mapped when in torch's zip format, so ``n`` and ``stride`` copy only what is kept.

    The files carry no coordinates. ``grid="neuralop"`` gives ``x_i = i / s`` on each axis,
    the positional encoding neuraloperator's ``GridEmbeddingND``/``GridEmbedding2D`` attach
    (``regular_grid_nd``: ``linspace(0, 1, s + 1)[:-1]``); ``grid="nodes"`` gives ``x_i = i / (s - 1)``,
    nodes including both boundaries as in the original FNO Darcy data and
    :mod:`probneural.data.darcy`. Either is computed at the file's resolution before striding.

    Args:
        path: the ``.pt`` file.
        n: read only the first ``n`` samples (default all).
        stride: keep every ``stride``-th node along each spatial axis; an int or two ints.
        grid: ``"neuralop"`` or ``"nodes"`` (see above).
        dtype: floating dtype of the returned tensors and grid.

    Returns:
        A CPU :class:`OperatorDataset` with ``x`` `(n, C_in, s1', s2')`, ``y`` `(n, C_out, s1', s2')`
        and ``metadata`` = ``{"problem": "neuralop_darcy", "source_file", "source_size",
        "source_mtime", "channels_in_file", "n", "n_available", "stride", "grid", "probneural_version"}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a weights-only torch file, lacks ``"x"``/``"y"`` tensors of
            matching shapes, or an argument is invalid.
    """
    path = _existing_file(path)
    check_floating_dtype("dtype", dtype)
    if grid not in _NEURALOP_GRIDS:
        raise ValueError(f"grid must be one of {list(_NEURALOP_GRIDS)}, got {grid!r}")
    source = path.name
    data = _load_weights_only(path)
    if not isinstance(data, dict):
        raise ValueError(f"{source} must hold a dict with keys 'x' and 'y', got {type(data).__name__}")
    x, y = _pt_field(data, "x", source), _pt_field(data, "y", source)
    if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
        raise ValueError(
            f"{source}: 'y' must have the sample count and spatial shape of 'x' {tuple(x.shape)}, got {tuple(y.shape)}"
        )
    n = _check_n(n, x.shape[0], source)
    steps = _check_stride(stride, 2)
    where = (slice(0, n), slice(None), *(slice(None, None, s) for s in steps))
    sizes = x.shape[2:]
    if grid == "neuralop":
        nodes = [torch.linspace(0, 1, s + 1, dtype=torch.float64)[:-1] for s in sizes]
    else:
        nodes = [torch.linspace(0, 1, s, dtype=torch.float64) for s in sizes]
    metadata = {
        "problem": "neuralop_darcy",
        **_provenance(path),
        "channels_in_file": data["x"].ndim == 4,
        "n": n,
        "n_available": x.shape[0],
        "stride": list(steps),
        "grid": grid,
        "probneural_version": probneural.__version__,
    }
    # copy=True: the result must not keep the memory-mapped file (or the whole loaded tensor) alive.
    return OperatorDataset(
        x[where].to(dtype=dtype, copy=True),
        y[where].to(dtype=dtype, copy=True),
        tuple(g[::s].to(dtype) for g, s in zip(nodes, steps, strict=True)),
        metadata,
    )
