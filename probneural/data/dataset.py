"""In-memory operator-learning data set: input and output fields on a common grid, with provenance."""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from torch.utils.data import Dataset


def _check_field(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim < 3:
        raise ValueError(
            f"{name} must have shape (n, channels, *spatial) with at least one spatial axis, got {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if value.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(value.shape)}")
    if min(value.shape[1:]) < 1:
        raise ValueError(f"{name} must have at least one channel and one point per spatial axis, "
                         f"got shape {tuple(value.shape)}")
    if not _all_finite(value):
        raise ValueError(f"{name} contains NaN or Inf values")
    return value


_FINITE_CHECK_ELEMENTS = 1 << 22  # per chunk: its boolean mask is 4 MB, however large the data set


def _all_finite(value: torch.Tensor) -> bool:
    """Whether every element of ``value`` is finite, checked in chunks of samples so that the mask
    stays bounded (a cached data set is a memory map: one mask of the whole would cost a quarter
    of the float32 data in memory)."""
    rows = max(1, _FINITE_CHECK_ELEMENTS // value[0].numel())
    return all(bool(torch.isfinite(chunk).all()) for chunk in value.split(rows))


class OperatorDataset(Dataset):
    """Pairs ``(x_i, y_i)`` of input and output fields sampled on one grid.

    Args:
        x: `(n, c_in, *spatial)` input fields.
        y: `(n, c_out, *spatial)` output fields, same ``n``, spatial shape, device and dtype as ``x``.
        grid: node coordinates, one 1-D tensor per spatial axis: ``grid[d]`` has
            length ``spatial[d]`` and ``x[..., i_0, ..., i_{D-1}]`` sits at
            ``(grid[0][i_0], ..., grid[D-1][i_{D-1}])``. Stored on ``x``'s device and dtype.
        metadata: JSON-serialisable provenance (problem, every generation parameter,
            solver settings, seed, probneural version). Deep-copied.

    Raises:
        ValueError: a tensor has the wrong shape, dtype or device, or holds NaN/Inf;
            ``metadata`` is not JSON-serialisable.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        grid: tuple[torch.Tensor, ...] | list[torch.Tensor],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        x = _check_field("x", x)
        y = _check_field("y", y)
        if y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"y must have shape (n, c_out, *spatial) = ({x.shape[0]}, c_out, {', '.join(map(str, x.shape[2:]))}) "
                f"to match x {tuple(x.shape)}, got {tuple(y.shape)}"
            )
        if y.device != x.device or y.dtype != x.dtype:
            raise ValueError(f"y must be on x's device and dtype ({x.device}, {x.dtype}), got ({y.device}, {y.dtype})")
        spatial = tuple(x.shape[2:])
        grid = tuple(grid)
        if len(grid) != len(spatial) or any(
            not isinstance(g, torch.Tensor) or g.shape != (size,) for g, size in zip(grid, spatial, strict=True)
        ):
            got = [tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__ for g in grid]
            raise ValueError(f"grid must be {len(spatial)} 1-D tensors of lengths {spatial}, got {got}")
        if not all(torch.isfinite(g).all() for g in grid):
            raise ValueError("grid contains NaN or Inf values")
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a JSON-serialisable dict, got {type(metadata).__name__}")
        try:
            json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata must be a JSON-serialisable dict: {err}") from None
        self.x = x
        self.y = y
        self.grid = tuple(g.to(device=x.device, dtype=x.dtype) for g in grid)
        self.metadata: dict[str, Any] = copy.deepcopy(metadata)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Grid points per spatial axis."""
        return tuple(self.x.shape[2:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_i, y_i)``: `(c_in, *spatial)` and `(c_out, *spatial)` views of sample ``index``."""
        return self.x[index], self.y[index]

    def _subset(self, start: int, stop: int) -> OperatorDataset:
        metadata = copy.deepcopy(self.metadata)
        offset = metadata.get("subset", [0, len(self)])[0]
        metadata["subset"] = [offset + start, offset + stop]
        return OperatorDataset(self.x[start:stop], self.y[start:stop], self.grid, metadata)

    def split(self, n_first: int) -> tuple[OperatorDataset, OperatorDataset]:
        """Split into the first ``n_first`` samples and the rest (e.g. train and test).

        The parts share storage with this data set; their metadata records the sample
        range ``[start, stop)`` under ``"subset"``.

        Args:
            n_first: size of the first part, ``0 < n_first < len(self)``.

        Returns:
            ``(first, rest)`` data sets.
        """
        if isinstance(n_first, bool) or not isinstance(n_first, int) or not 0 < n_first < len(self):
            raise ValueError(f"n_first must be an int in [1, {len(self) - 1}], got {n_first!r}")
        return self._subset(0, n_first), self._subset(n_first, len(self))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> OperatorDataset:
        """Move to ``device`` and/or cast to ``dtype`` (``None`` keeps either); unchanged tensors are shared.

        Returns:
            A new data set with the same metadata.
        """
        return OperatorDataset(
            self.x.to(device=device, dtype=dtype), self.y.to(device=device, dtype=dtype), self.grid, self.metadata
        )

    def __repr__(self) -> str:
        problem = self.metadata.get("problem", "unknown problem")
        return (
            f"OperatorDataset({problem}: n={len(self)}, x={tuple(self.x.shape[1:])}, y={tuple(self.y.shape[1:])}, "
            f"dtype={self.x.dtype}, device={self.x.device})"
        )
