"""Per-sample SciPy reference for the Darcy solver: assemble the 5-point system and solve it directly.

The same discretisation as :func:`probneural.data.darcy.solve` (nodes ``x_i = i/(s − 1)``,
face coefficient = mean of the two nodal values, ``u = 0`` on the boundary), one sample at
a time with ``scipy.sparse.linalg.spsolve``: what a user would write without batching. The
matrix is symmetric positive definite, so SuperLU orders it symmetrically
(:data:`ORDERING`: minimum degree on the pattern of ``Aᵀ + A``), 1.5× faster than its
default column ordering (COLAMD) at 421², with the same solution to 1e-12.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from probneural.bench.baselines import working_dtype

__all__ = ["ORDERING", "solve_scipy"]

ORDERING = "MMD_AT_PLUS_A"


def solve_scipy(a: np.ndarray, f: np.ndarray | float = 1.0) -> np.ndarray:
    """Solve ``−∇·(a ∇u) = f`` for one sample.

    Args:
        a: `(s, s)` nodal coefficient; float32 is solved in float32, anything else in float64.
        f: `(s, s)` nodal source or a constant.

    Returns:
        `(s, s)` solution with ``u = 0`` on the boundary, in the working dtype.
    """
    dtype = working_dtype(a)
    a = np.asarray(a, dtype=dtype)
    s = a.shape[0]
    m = s - 2
    f = np.broadcast_to(np.asarray(f, dtype=dtype), (s, s))
    face_x = 0.5 * (a[1:, 1:-1] + a[:-1, 1:-1])  # (s-1, m): between (i, j) and (i+1, j)
    face_y = 0.5 * (a[1:-1, 1:] + a[1:-1, :-1])  # (m, s-1): between (i, j) and (i, j+1)
    diagonal = face_x[:-1] + face_x[1:] + face_y[:, :-1] + face_y[:, 1:]
    index = np.arange(m * m).reshape(m, m)
    rows = [index.ravel(), index[1:].ravel(), index[:-1].ravel(), index[:, 1:].ravel(), index[:, :-1].ravel()]
    cols = [index.ravel(), index[:-1].ravel(), index[1:].ravel(), index[:, :-1].ravel(), index[:, 1:].ravel()]
    inner_x, inner_y = face_x[1:-1], face_y[:, 1:-1]
    vals = [diagonal.ravel(), -inner_x.ravel(), -inner_x.ravel(), -inner_y.ravel(), -inner_y.ravel()]
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m * m, m * m)
    )
    u = np.zeros((s, s), dtype=dtype)
    rhs = f[1:-1, 1:-1].ravel() / dtype.type((s - 1) ** 2)
    u[1:-1, 1:-1] = scipy.sparse.linalg.spsolve(matrix.tocsc(), rhs, permc_spec=ORDERING).reshape(m, m)
    return u
