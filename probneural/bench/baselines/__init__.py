"""Straightforward per-sample NumPy/SciPy solvers: the references our batched torch solvers are benchmarked against.

Each computes in the precision of its input, as our solvers do: float32 in, float32 arithmetic
(NumPy's FFTs and SciPy's sparse direct solver both have single-precision paths) and float32 out;
any other input is solved in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["working_dtype"]


def working_dtype(x: object) -> np.dtype:
    """``float32`` if ``x`` is a float32 NumPy array, else ``float64``: the real dtype a reference computes in."""
    return np.dtype(np.float32) if isinstance(x, np.ndarray) and x.dtype == np.float32 else np.dtype(np.float64)
