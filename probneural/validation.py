"""Argument checks shared by the library: each raises ``ValueError`` naming the argument, what was expected and
what came; :func:`warn_unused` warns of an option that the other options make ineffective."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "InertOptionWarning", "check_float", "check_floating_dtype", "check_int", "check_positive_ints", "warn_unused",
]


def check_int(name: str, value: Any, least: int | None = None) -> int:
    """``value`` as an int if it is an integer (NumPy's included; not a bool) and ``>= least`` (when
    given), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (least is not None and value < least):
        bound = "" if least is None else f" >= {least}"
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    """``float(value)`` if it is a finite real number (optionally ``> 0`` or ``>= 0``), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def check_floating_dtype(name: str, value: Any) -> torch.dtype:
    """``value`` if it is a real floating ``torch.dtype``, else ``ValueError``."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"{name} must be a floating torch.dtype, got {value!r}")
    return value


def check_positive_ints(name: str, values: Any) -> tuple[int, ...]:
    """``values`` as a tuple of ints if it is a non-empty sequence (or array) of integers ``>= 1``,
    else ``ValueError``."""
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):  # NumPy arrays, tensors
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name}: expected a non-empty sequence of positive integers; got {values!r}")
    return tuple(check_int(name, value, 1) for value in values)


class InertOptionWarning(UserWarning):
    """An option is set away from its default where the other options make it have no effect."""


def warn_unused(options: Mapping[str, Any], defaults: Mapping[str, Any], names: Sequence[str], *,
                used: bool, because: str, stacklevel: int = 2) -> None:
    """An :class:`InertOptionWarning` for each of ``names`` set away from its default when it is not ``used``.

    A warning, not an error: a sweep over the other options (``structure=last_layer,low_rank``
    with ``rank=20``) legitimately reaches settings where an option does nothing.

    Args:
        options: the values (at least ``names``).
        defaults: their defaults.
        names: options that only matter when ``used``.
        used: whether the other options make ``names`` matter.
        because: completes "only used ...", e.g. ``"with structure='low_rank'"``.
        stacklevel: as for ``warnings.warn``, counted from the caller of this function.
    """
    if used:
        return
    for name in names:
        if options[name] != defaults[name]:
            warnings.warn(f"{name}={options[name]!r} has no effect: {name} is only used {because}",
                          InertOptionWarning, stacklevel=stacklevel + 1)
