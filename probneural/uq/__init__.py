"""Uncertainty quantification for neural operators: one posterior interface over many methods.

>>> from probneural import uq
>>> post = uq.fit("laplace", model, train_loader)          # doctest: +SKIP
>>> pred = post.predict(x)                                   # doctest: +SKIP
>>> scores = uq.evaluate(pred, y, alpha=0.1)                 # doctest: +SKIP

``uq.METHODS.names()`` lists the registered methods; each module below registers its own.
"""

from probneural.uq.posterior import METHODS, Posterior, fit, predict_in_batches
from probneural.uq.prediction import GaussianPrediction, MixturePrediction, Prediction, cat
from probneural.uq.metrics import auroc, calibration_curve, evaluate

# method modules: importing each registers its methods in METHODS
# (one line per module, in the order they appear in the docs)
from probneural.uq import laplace  # noqa: F401  (registers "laplace")
from probneural.uq import conformal  # noqa: F401  (registers "conformal")
from probneural.uq import ensemble  # noqa: F401  (registers "ensemble")
from probneural.uq import dropout  # noqa: F401  (registers "mc_dropout" and "pno")
# the GPyTorch and Pyro heads are imported when first asked for (their libraries take ~0.5 s to import)
METHODS.defer("probneural.uq.gp", "gp_exact", "gp_svgp")
METHODS.defer("probneural.uq.pyro_head", "pyro_svi", "pyro_nuts")

__all__ = [
    "GaussianPrediction",
    "METHODS",
    "MixturePrediction",
    "Posterior",
    "Prediction",
    "auroc",
    "calibration_curve",
    "cat",
    "evaluate",
    "fit",
    "predict_in_batches",
]
