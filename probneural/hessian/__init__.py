"""Curvature engine: exact Hessian-vector products, dense Hessians, GGN products and diagonals (exact and Monte Carlo), K-FAC, the closed-form last layer, Lanczos.

Complex parameters are differentiated through their real view. Every curvature object is a
matrix-free :class:`LinearOperator` over the flattened real parameter vector.

>>> from probneural import hessian
>>> hv = hessian.hvp(f, params, v)    # doctest: +SKIP
>>> H = hessian.dense(f, params)      # doctest: +SKIP
"""

from probneural.hessian.diagonal_mc import ggn_diagonal_mc
from probneural.hessian.functional import dense, hvp
from probneural.hessian.ggn import (
    functional_model,
    ggn_diagonal,
    ggn_operator,
    ggn_vp,
    hessian_operator,
    loss_hessian_sqrt,
)
from probneural.hessian.hutchinson import hutchinson_diagonal, hutchinson_trace
from probneural.hessian.kfac import (
    KFACVariant,
    KroneckerBlock,
    KroneckerOperator,
    SpectralKroneckerBlock,
    kfac_operator,
)
from probneural.hessian.last_layer import last_layer_ggn
from probneural.hessian.lanczos import lanczos
from probneural.hessian.operator import LinearOperator

__all__ = [
    "KFACVariant",
    "KroneckerBlock",
    "KroneckerOperator",
    "LinearOperator",
    "SpectralKroneckerBlock",
    "dense",
    "functional_model",
    "ggn_diagonal",
    "ggn_diagonal_mc",
    "ggn_operator",
    "ggn_vp",
    "hessian_operator",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hvp",
    "kfac_operator",
    "lanczos",
    "last_layer_ggn",
    "loss_hessian_sqrt",
]
