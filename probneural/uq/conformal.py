"""Split conformal prediction: distribution-free bands for any operator or posterior.

:func:`fit_conformal` (registered as ``"conformal"``) scores a trained model on a calibration set
disjoint from its training data. The model is either

* a :class:`Posterior`: its prediction gives the mean ``μ`` and the scale ``σ = std``, and a
  calibration point scores the normalised residual ``r = |y − μ| / σ``; or
* a plain ``nn.Module`` point predictor: ``μ = model(x)`` (in eval mode, without gradients; the
  module's training mode is restored after), ``σ ≡ 1`` and ``r = |y − μ|``.

With ``n`` exchangeable calibration functions and ``k = ⌈(n + 1)(1 − α)⌉ <= n``, the bands are

* **pointwise**: ``μ_j ± q_j σ_j`` with ``q_j`` the ``k``-th smallest of the ``n`` scores at location
  ``j`` (channel × grid point). Then ``P(y_j ∈ band_j) >= 1 − α`` at every location, and
  ``<= 1 − α + 1/(n + 1)`` when the scores have no ties;
* **function-level** (simultaneous): ``μ_j ± q̂ s_j σ_j`` with ``q̂`` the ``k``-th smallest of the
  function scores ``max_j r_j / s_j``, so ``P(y ∈ band at every j) >= 1 − α``. For a Posterior base
  ``s_j ≡ 1``. For a point predictor ``s_j`` is the mean absolute residual at location ``j`` over the
  first ``round(scale_split · n)`` calibration functions (loader order), and ``q̂`` is the conformal
  quantile of the remaining ones: the scale never sees the functions it is calibrated on, so the
  guarantee holds with ``n`` replaced by the size of that second part.

All scores are kept, so :meth:`ConformalPrediction.interval` and
:meth:`ConformalPrediction.simultaneous_interval` take any ``alpha`` (as long as ``k <= n``).
Asked at another grid than the calibration one, the quantile map ``q`` and the scale ``s`` are
interpolated (piecewise linear, ``align_corners=True``: grids are nodes ``i/(s − 1)``): an
approximation that carries no finite-sample guarantee.

Everything else (variance, samples, CRPS) is the base distribution with its deviations from the
mean rescaled pointwise by ``κ_j = q_j(α_fit) / z_{1 − α_fit/2}``, so that its Gaussian interval at
``α_fit`` is the conformal band; a point predictor's base is ``N(μ, 1)``, hence variance ``κ²``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probneural.uq.options import checked_options
from probneural.uq.posterior import METHODS, Batches, Posterior, model_parameters, switched_mode
from probneural.uq.prediction import (
    GaussianPrediction, LevelUnavailableError, Prediction, affine_arguments, cat, check_alpha, normal_quantile,
)
from probneural.validation import check_float, warn_unused

__all__ = ["ConformalPosterior", "ConformalPrediction", "ConformalScores", "conformal_rank", "fit_conformal"]

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def conformal_rank(n: int, alpha: float, band: str = "band") -> int:
    """The rank ``k = ⌈(n + 1)(1 − alpha)⌉`` (1-based) of the conformal quantile among ``n`` scores.

    Args:
        n: number of calibration scores.
        alpha: miscoverage level in (0, 1).
        band: what the quantile is for, used in the error message.

    Returns:
        ``k`` in ``[1, n]`` (round-off in ``(n + 1)(1 − alpha)`` is forgiven up to ``1e-9``).

    Raises:
        LevelUnavailableError: (a ``ValueError``) naming ``alpha`` when ``k > n``, with the smallest
            ``n`` that allows it.
    """
    alpha = check_alpha(alpha)
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if k > n:
        needed = math.ceil(1.0 / alpha - 1.0 - 1e-9)
        raise LevelUnavailableError(
            f"alpha: {alpha} needs at least {needed} calibration functions for the {band} "
            f"(rank ⌈(n + 1)(1 − alpha)⌉ <= n); got n = {n}"
        )
    return max(k, 1)


def _resample(field: Tensor, spatial: Sequence[int]) -> Tensor:
    """``field`` `(c, *grid)` interpolated to `(c, *spatial)` (nodes ``i/(s − 1)``); unchanged on the same grid."""
    spatial, grid = tuple(spatial), tuple(field.shape[1:])
    if grid == spatial:
        return field
    if len(spatial) != len(grid) or len(grid) not in _INTERPOLATION:
        raise ValueError(
            f"spatial: expected a grid with the calibration grid's {len(grid)} dimensions (1 to 3 to interpolate); "
            f"got {spatial} against {grid}"
        )
    mode = _INTERPOLATION[len(grid)]
    return F.interpolate(field.unsqueeze(0), size=spatial, mode=mode, align_corners=True).squeeze(0)


class ConformalScores:
    """Sorted calibration scores and the per-location scale of the function-level band.

    Args:
        pointwise: `(n, c, *grid)` normalised residuals ``r``, sorted ascending along the first axis.
        function: `(m,)` function scores ``max_j r_j / s_j``, sorted ascending.
        scale: `(c, *grid)` positive per-location scale ``s`` of the function-level band.
    """

    def __init__(self, pointwise: Tensor, function: Tensor, scale: Tensor) -> None:
        self.pointwise = pointwise
        self.function = function
        self.scale = scale

    @property
    def grid(self) -> tuple[int, ...]:
        """The calibration grid's spatial shape."""
        return tuple(self.pointwise.shape[2:])

    def pointwise_quantile(self, alpha: float, spatial: Sequence[int] | None = None) -> Tensor:
        """`(c, *spatial)` conformal quantiles ``q_j`` at ``alpha``, interpolated to ``spatial`` if given."""
        k = conformal_rank(self.pointwise.shape[0], alpha, "pointwise band")
        return _resample(self.pointwise[k - 1], self.grid if spatial is None else spatial)

    def function_quantile(self, alpha: float) -> Tensor:
        """The conformal quantile ``q̂`` of the function scores at ``alpha`` (a 0-d tensor)."""
        return self.function[conformal_rank(self.function.shape[0], alpha, "function-level band") - 1]

    def scale_map(self, spatial: Sequence[int] | None = None) -> Tensor:
        """`(c, *spatial)` scale ``s`` of the function-level band, interpolated to ``spatial`` if given."""
        return _resample(self.scale, self.grid if spatial is None else spatial)


class ConformalPrediction(Prediction):
    """A base prediction whose intervals are the conformal bands; see the module docstring.

    Args:
        mean: `(b, c, *spatial)` the base mean ``μ``.
        unit: `(b, c, *spatial)` the band unit ``σ`` (the base std; ones for a point predictor),
            times ``|scale|`` after :meth:`affine`.
        scaled: the base distribution with deviations from the mean rescaled by ``κ``, serving
            variance, samples and CRPS.
        scores: the calibration scores the bands come from.
    """

    def __init__(self, mean: Tensor, unit: Tensor, scaled: Prediction, scores: ConformalScores) -> None:
        self._mean = mean
        self.unit = unit
        self.scaled = scaled
        self.scores = scores

    @property
    def mean(self) -> Tensor:
        return self._mean

    @property
    def variance(self) -> Tensor:
        return self.scaled.variance

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        return self.scaled.sample(n, generator=generator)

    def interval(self, alpha: float) -> tuple[Tensor, Tensor]:
        """The conformal pointwise band ``μ ± q_j(alpha) σ_j``; ``(lower, upper)`` each `(b, c, *spatial)`."""
        half = self.scores.pointwise_quantile(alpha, self._mean.shape[2:]).to(self._mean) * self.unit
        return self._mean - half, self._mean + half

    def simultaneous_interval(
        self, alpha: float, *, n_samples: int = 1000, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """The conformal function-level band ``μ ± q̂(alpha) s_j σ_j``; ``(lower, upper)`` each `(b, c, *spatial)`.

        The band is exact: ``n_samples`` and ``generator`` (the sampling options of other predictions) are unused.
        """
        spatial = self._mean.shape[2:]
        q = self.scores.function_quantile(alpha).to(self._mean)
        half = q * self.scores.scale_map(spatial).to(self._mean) * self.unit
        return self._mean - half, self._mean + half

    def crps(self, y: Tensor) -> Tensor:
        return self.scaled.crps(y)

    def affine(self, scale: Tensor | float, shift: Tensor | float) -> ConformalPrediction:
        scale, shift = affine_arguments(scale, shift, self._mean)
        unit = self.unit * scale.abs()
        return ConformalPrediction(self._mean * scale + shift, unit, self.scaled.affine(scale, shift), self.scores)

    def select(self, index: slice | Tensor) -> ConformalPrediction:
        return ConformalPrediction(self._mean[index], self.unit[index], self.scaled.select(index), self.scores)

    @classmethod
    def concatenate(cls, predictions: list[ConformalPrediction]) -> ConformalPrediction:
        if any(p.scores is not predictions[0].scores for p in predictions):
            raise ValueError("predictions: conformal predictions calibrated on different scores")
        return ConformalPrediction(
            torch.cat([p.mean for p in predictions]),
            torch.cat([p.unit for p in predictions]),
            cat([p.scaled for p in predictions]),
            predictions[0].scores,
        )


def _base_prediction(model: Posterior | nn.Module, x: Tensor) -> tuple[Prediction, Tensor]:
    """``(base prediction, band unit σ)`` of ``model`` at ``x`` `(b, c_in, *spatial)`."""
    if isinstance(model, Posterior):
        prediction = model.predict(x)
        return prediction, prediction.std.detach()
    device, dtype = model_parameters(model)
    with switched_mode(model, False), torch.no_grad():
        mean = model(x.to(device, dtype))
    ones = torch.ones_like(mean)
    return GaussianPrediction(mean, ones), ones


class ConformalPosterior(Posterior):
    """A model or posterior with split-conformal bands; build it with :func:`fit_conformal`.

    Args:
        base: the :class:`Posterior` or point-predicting ``nn.Module`` that was calibrated.
        scores: its calibration scores.
        alpha: the level ``α_fit`` of the rescaling ``κ`` applied to the base distribution.
        mean_unit: `(c, *grid)` mean band unit ``σ`` over the calibration set (for :meth:`summary`).
    """

    def __init__(self, base: Posterior | nn.Module, scores: ConformalScores, alpha: float, mean_unit: Tensor) -> None:
        self.base = base
        self.scores = scores
        self.alpha = check_alpha(alpha)
        self.mean_unit = mean_unit

    def predict(self, x: Tensor) -> ConformalPrediction:
        """The conformal prediction of ``y`` `(b, c_out, *spatial)` given ``x`` `(b, c_in, *spatial)`.

        Raises:
            ValueError: naming ``x`` if the model's output has other channels or another number of
                spatial dimensions than the calibration data.
        """
        prediction, unit = _base_prediction(self.base, x)
        mean = prediction.mean.detach()
        channels, grid = self.scores.pointwise.shape[1], self.scores.grid
        if mean.dim() != 2 + len(grid) or mean.shape[1] != channels:
            raise ValueError(
                f"x: expected inputs whose predictions have {channels} channel(s) on a {len(grid)}-D grid like the "
                f"calibration data; the model gave shape {tuple(mean.shape)}"
            )
        z = normal_quantile(1.0 - self.alpha / 2.0).item()
        kappa = self.scores.pointwise_quantile(self.alpha, mean.shape[2:]).to(mean) / z
        scaled = prediction.affine(kappa, (1.0 - kappa) * mean)
        return ConformalPrediction(mean, unit, scaled, self.scores)

    def summary(self) -> dict[str, Any]:
        """Calibration sizes, the fit level and the mean band half-widths over the calibration set."""
        q = self.scores.pointwise_quantile(self.alpha)
        q_hat = self.scores.function_quantile(self.alpha)
        n = self.scores.pointwise.shape[0]
        return {
            "base": type(self.base).__name__,
            "n_calibration": n,
            "n_scale": n - self.scores.function.shape[0],
            "alpha": self.alpha,
            "resolution": list(self.scores.grid),
            "mean_quantile": q.mean().item(),
            "function_quantile": q_hat.item(),
            "mean_half_width": (q * self.mean_unit).mean().item(),
            "mean_simultaneous_half_width": (q_hat * self.scores.scale * self.mean_unit).mean().item(),
        }


def check_calibration_size(n: int, alphas: Sequence[float], *, scale_split: float, on_posterior: bool) -> int:
    """Check that ``n`` calibration functions allow both bands at every level in ``alphas``.

    Known before any data exist (the train and evaluate commands check the calibration split's
    size against the fit's and the report's levels before generating it).

    Args:
        n: calibration functions.
        alphas: miscoverage levels the bands will be asked for.
        scale_split: the share of a point predictor's calibration functions that estimates the scale.
        on_posterior: the bands are scaled by a posterior's std (no scale split).

    Returns:
        The number of calibration functions that estimate the scale (``0`` on a posterior).

    Raises:
        ValueError: naming ``scale_split`` when a part is empty, or ``alpha`` with the ``n`` it needs.
    """
    n_scale = 0 if on_posterior else round(scale_split * n)
    if not on_posterior and not 1 <= n_scale <= n - 1:
        raise ValueError(
            f"scale_split: {scale_split} of n = {n} calibration functions gives {n_scale} for the scale and "
            f"{n - n_scale} for the function-level quantile; both parts need at least one"
        )
    for alpha in alphas:
        conformal_rank(n, alpha, "pointwise band")
        conformal_rank(n - n_scale, alpha, "function-level band")
    return n_scale


def _check_options(options: dict[str, Any], defaults: Mapping[str, Any], on_posterior: bool) -> None:
    """The option check of :func:`fit_conformal` (see :mod:`probneural.uq.options`)."""
    options["alpha"] = check_alpha(options["alpha"])
    options["scale_split"] = scale_split = check_float("scale_split", options["scale_split"])
    if not 0.0 < scale_split < 1.0:
        raise ValueError(f"scale_split: expected a fraction in (0, 1); got {scale_split}")
    warn_unused(options, defaults, ("scale_split",), used=not on_posterior,
                  because="for a point predictor (a posterior's std scales the band)")


@METHODS.register("conformal")
@checked_options(_check_options)
def fit_conformal(
    model: Posterior | nn.Module, loader: Batches, *, alpha: float = 0.1, scale_split: float = 0.5
) -> ConformalPosterior:
    """Calibrate split-conformal bands for ``model`` on ``loader`` (see the module docstring).

    Args:
        model: a fitted :class:`Posterior` (bands scaled by its std) or a point-predicting
            ``nn.Module`` mapping `(b, c_in, *spatial)` to `(b, c_out, *spatial)` in data units.
        loader: re-iterable ``(x, y)`` calibration batches, disjoint from the training data and
            exchangeable with the test data, all on one grid: ``x`` `(b, c_in, *spatial)`,
            ``y`` `(b, c_out, *spatial)`.
        alpha: the miscoverage level ``α_fit`` of the rescaled base distribution (the bands take
            any level later); ``⌈(n + 1)(1 − alpha)⌉ <= n`` is required of both bands.
        scale_split: for a point predictor, the share of the calibration functions (the first ones
            in loader order) that estimates the scale ``s`` of the function-level band; the rest
            calibrate it. Unused for a Posterior.

    Returns:
        The fitted :class:`ConformalPosterior`.

    Raises:
        ValueError: naming the argument for a model of another type, an empty loader, targets
            that do not match the model's output or contain NaN/Inf, batches on different grids,
            a ``scale_split`` leaving an empty part, or an ``alpha`` too small for ``n``.
    """
    if not isinstance(model, (Posterior, nn.Module)):
        raise ValueError(f"model: expected a Posterior or an nn.Module; got {type(model).__name__}")
    residuals, units = [], []
    for x, y in loader:
        prediction, unit = _base_prediction(model, x)
        mean = prediction.mean.detach()
        if y.shape != mean.shape:
            raise ValueError(f"y: expected shape {tuple(mean.shape)} (the model's output for x); got {tuple(y.shape)}")
        if residuals and y.shape[1:] != residuals[0].shape[1:]:
            raise ValueError(
                f"loader: expected every batch on one grid {tuple(residuals[0].shape[1:])}; got {tuple(y.shape[1:])}"
            )
        if not torch.isfinite(y).all():
            raise ValueError("loader: y contains NaN or Inf")
        # a zero std is floored at the dtype's tiny: the band there is as wide as its residuals demand
        residuals.append((y - mean).abs() / unit.clamp_min(torch.finfo(unit.dtype).tiny))
        units.append(unit)
    if not residuals:
        raise ValueError("loader: expected at least one (x, y) calibration batch; got none")
    r = torch.cat(residuals)
    n_scale = check_calibration_size(r.shape[0], [alpha], scale_split=scale_split,
                                     on_posterior=isinstance(model, Posterior))
    if isinstance(model, Posterior):
        scale = torch.ones_like(r[0])
        function = r.flatten(1).amax(1)
    else:
        scale = r[:n_scale].mean(0).clamp_min(torch.finfo(r.dtype).tiny)
        function = (r[n_scale:] / scale).flatten(1).amax(1)
    scores = ConformalScores(r.sort(0).values, function.sort().values, scale)
    return ConformalPosterior(model, scores, alpha, torch.cat(units).mean(0))
