"""Curvature engine: exact Hessian-vector products and dense Hessians (complex weights via their real view).

>>> from probneural import hessian
>>> hv = hessian.hvp(f, params, v)    # doctest: +SKIP
>>> H = hessian.dense(f, params)      # doctest: +SKIP
"""

from probneural.hessian.functional import dense, hvp

__all__ = ["dense", "hvp"]
