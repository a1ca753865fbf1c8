"""Scores of a :class:`~probneural.uq.prediction.Prediction` against the observed fields.

:func:`evaluate` gathers, for a batch of predictions and observed fields ``y``:

* accuracy of the mean: relative L2 and H1 errors;
* proper scores: the Gaussian negative log-likelihood of the marginals, the CRPS of the marginals
  and the energy score of whole fields (:func:`energy_score`);
* intervals: pointwise coverage and width, the coverage of whole fields by the simultaneous band
  and the calibration error over nominal levels (:func:`calibration_curve`);
* given out-of-distribution predictions, the AUROC (:func:`auroc`) of the mean predicted variance
  as an out-of-distribution detector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from probneural.train.losses import relative_h1, relative_l2
from probneural.uq.prediction import (
    LevelUnavailableError, MixturePrediction, Prediction, check_alpha, check_target,
)
from probneural.validation import check_int

__all__ = ["auroc", "calibration_curve", "energy_score", "evaluate"]

# elements of the joint draws held at once by energy_score (8 MiB in float64)
_DRAW_BUDGET = 2**20


def evaluate(
    pred: Prediction,
    y: Tensor,
    alpha: float = 0.1,
    *,
    ood: Prediction | None = None,
    n_samples: int = 100,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Accuracy, proper scores and interval quality of ``pred`` at the observed fields ``y``.

    Keys of the result (all Python floats; point averages run over every channel and point of every
    sample of the batch):

    * ``rel_l2``, ``rel_h1``: relative L2 / H1 error of ``pred.mean`` (batch means);
    * ``nll``: Gaussian negative log-likelihood of the marginals ``N(mean, variance)``, the point
      average of ``½ log(2π σ²) + (y − μ)² / (2σ²)``;
    * ``crps``: point average of ``pred.crps(y)``;
    * ``energy_score``: batch mean of :func:`energy_score` (RMS norm over the field);
    * ``coverage``, ``width``: fraction of points inside ``pred.interval(alpha)`` and the point
      average of ``upper − lower``;
    * ``function_coverage``: fraction of samples whose whole field lies inside
      ``pred.simultaneous_interval(alpha, n_samples=n_samples, generator=generator)``;
    * ``calibration_error``: mean over the levels ``p = 0.05, 0.10, …, 0.95`` of
      ``|observed − p|`` from :func:`calibration_curve` (over the levels ``pred`` can give: a
      conformal band from few calibration functions has no 95 % interval);
    * ``ood_auroc`` (only with ``ood``): :func:`auroc` of the per-sample mean predicted variance,
      ``pred``'s samples as negatives and ``ood``'s as positives.

    Args:
        pred: predictive distribution of a batch of fields `(b, c, *spatial)`.
        y: `(b, c, *spatial)` observed fields (converted to ``pred.mean``'s dtype and device).
        alpha: miscoverage level of the intervals, in (0, 1).
        ood: prediction of out-of-distribution inputs, any batch size and resolution.
        n_samples: joint draws (``>= 2``) for the energy score and the simultaneous band.
        generator: random generator of those draws.

    Returns:
        the scores by name.

    Raises:
        ValueError: naming ``pred`` that is not a prediction, ``y`` for another shape than
            ``pred.mean`` or non-finite values,
            ``alpha`` outside (0, 1), ``n_samples < 2``, ``ood`` that is not a prediction, or
            ``pred`` with a zero predicted variance somewhere (the Gaussian NLL is undefined there:
            include the observation noise in the prediction).
    """
    y = _check_target(pred, y)
    alpha = check_alpha(alpha)
    n_samples = check_int("n_samples", n_samples, 2)
    if ood is not None and not isinstance(ood, Prediction):
        raise ValueError(f"ood: expected a Prediction or None; got {type(ood).__name__}")
    mean = pred.mean
    nll = _gaussian_nll(mean, pred.variance, y).mean().item()  # first: it rejects a zero variance
    lower, upper = pred.interval(alpha)
    band_lower, band_upper = pred.simultaneous_interval(alpha, n_samples=n_samples, generator=generator)
    levels, observed = calibration_curve(pred, y)
    scores = {
        "rel_l2": relative_l2(mean, y).item(),
        "rel_h1": relative_h1(mean, y).item(),
        "nll": nll,
        "crps": _average(pred.crps(y)),
        "energy_score": _average(energy_score(pred, y, n_samples=n_samples, generator=generator)),
        "coverage": _average(_inside(lower, upper, y)),
        "width": _average(upper - lower),
        "function_coverage": _average(_inside(band_lower, band_upper, y).flatten(1).all(1)),
        "calibration_error": (observed - levels).abs().nanmean().item(),
    }
    if ood is not None:
        scores["ood_auroc"] = auroc(_mean_variance(pred), _mean_variance(ood))
    return scores


def energy_score(
    pred: Prediction, y: Tensor, *, n_samples: int = 100, generator: torch.Generator | None = None
) -> Tensor:
    """Energy score ``ES = E‖X − y‖ − ½ E‖X − X′‖`` of every whole field of the batch.

    ``X``, ``X′`` are independent joint draws of a sample's field (all channels and points) and
    ``‖v‖ = sqrt(mean_j v_j²)`` is the root mean square over its ``D = c·Π spatial`` values, the
    discrete L2 norm of the unit domain: the score does not grow with the resolution, a point mass
    scores its RMS error and a one-value field (``D = 1``) scores its CRPS.

    The score is estimated from ``n = n_samples`` draws ``X_i`` (``pred.sample``) without bias:
    ``(1/n) Σ_i ‖X_i − y‖ − 1/(2n(n−1)) Σ_{i≠j} ‖X_i − X_j‖``. A :class:`MixturePrediction` whose
    noise is zero everywhere is the empirical distribution of its ``m`` centers ``c_i``: its score
    is exact, ``(1/m) Σ_i ‖c_i − y‖ − 1/(2m²) Σ_{i,j} ‖c_i − c_j‖`` (like its closed-form CRPS).
    Computed in float64 over chunks of the batch, holding about ``2**20`` draw values at once.

    Args:
        pred: predictive distribution of a batch of fields `(b, c, *spatial)`.
        y: `(b, c, *spatial)` observed fields (converted to ``pred.mean``'s dtype and device).
        n_samples: number of joint draws, ``>= 2`` (unused for an empirical mixture).
        generator: random generator of the draws.

    Returns:
        `(b,)` energy scores, in ``pred.mean``'s dtype.

    Raises:
        ValueError: naming ``pred`` (not a prediction), ``y`` (shape or non-finite values) or
            ``n_samples``.
    """
    y = _check_target(pred, y)
    n_samples = check_int("n_samples", n_samples, 2)
    exact = isinstance(pred, MixturePrediction) and not bool((pred.noise > 0).any())
    n = pred.centers.shape[0] if exact else n_samples
    size = y[0].numel()
    step = max(1, _DRAW_BUDGET // (n * size))
    scores = []
    for start in range(0, y.shape[0], step):
        index = slice(start, start + step)
        draws = pred.centers[:, index] if exact else pred.select(index).sample(n, generator=generator)
        draws = draws.flatten(2).to(torch.float64)  # (n, chunk, D)
        target = y[index].flatten(1).to(torch.float64)  # (chunk, D)
        first = torch.linalg.vector_norm(draws - target, dim=2).mean(0) / math.sqrt(size)
        pairs = _pairwise_rms_sum(draws)
        scores.append(first - pairs / (2.0 * n * n if exact else 2.0 * n * (n - 1)))
    return torch.cat(scores).to(y.dtype)


def calibration_curve(
    pred: Prediction, y: Tensor, levels: Sequence[float] | Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Observed fraction of points inside the central intervals of nominal probability ``levels``.

    For each level ``p`` the fraction of all points of ``y`` inside ``pred.interval(1 − p)``; a
    calibrated prediction gives ``observed ≈ levels`` (the diagonal of a reliability diagram).

    A :class:`MixturePrediction` with positive noise everywhere has continuous marginals: ``y``
    lies in its central ``p``-interval exactly when ``|F(y) − ½| <= p/2``, so one evaluation of its
    CDF serves every level instead of two inversions of the CDF by bisection per level.

    Args:
        pred: predictive distribution of a batch of fields `(b, c, *spatial)`.
        y: `(b, c, *spatial)` observed fields (converted to ``pred.mean``'s dtype and device).
        levels: `(L,)` nominal probabilities in (0, 1); ``None`` means ``0.05, 0.10, …, 0.95``.

    Returns:
        ``(levels, observed)``, each `(L,)` float64 on ``y``'s device; ``observed`` is NaN at a
        level ``pred`` cannot give (a conformal band from fewer than ``⌈(n + 1) p⌉`` calibration
        functions).

    Raises:
        ValueError: naming ``pred`` (not a prediction), ``y`` (shape or non-finite values) or
            ``levels`` (not a non-empty 1-D sequence inside (0, 1)).
    """
    y = _check_target(pred, y)
    if levels is None:
        levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    else:
        levels = torch.as_tensor(levels, dtype=torch.float64)
        if levels.dim() != 1 or levels.numel() == 0 or not bool(((levels > 0) & (levels < 1)).all()):
            raise ValueError(f"levels: expected a non-empty 1-D sequence of probabilities in (0, 1); got {levels}")
    levels = levels.to(y.device)
    if isinstance(pred, MixturePrediction) and bool((pred.noise > 0).all()):
        distance = (pred.cdf(y) - 0.5).abs().flatten().to(torch.float64).sort().values
        inside = torch.searchsorted(distance, levels / 2.0, right=True)
        return levels, inside.to(torch.float64) / distance.numel()
    observed = []
    for p in levels.tolist():
        try:
            lower, upper = pred.interval(1.0 - p)
        except LevelUnavailableError:  # NaN (see Returns)
            observed.append(torch.tensor(math.nan, dtype=torch.float64, device=y.device))
            continue
        observed.append(_inside(lower, upper, y).to(torch.float64).mean())
    return levels, torch.stack(observed)


def auroc(negatives: Tensor | Sequence[float], positives: Tensor | Sequence[float]) -> float:
    """Area under the ROC curve of scores meant to be higher for ``positives`` than ``negatives``.

    The Mann–Whitney statistic: the fraction of (negative, positive) pairs where the positive
    scores higher, ties counting ``1/2``. ``1`` separates perfectly, ``0.5`` is chance.

    Args:
        negatives: `(n_neg,)` scores of the negatives.
        positives: `(n_pos,)` scores of the positives.

    Returns:
        the AUROC in [0, 1].

    Raises:
        ValueError: naming the argument that is not a non-empty 1-D sequence of finite numbers.
    """
    negatives = _scores("negatives", negatives)
    positives = _scores("positives", positives).to(negatives.device)
    ordered = negatives.sort().values
    below = torch.searchsorted(ordered, positives, right=False)  # negatives strictly lower
    not_above = torch.searchsorted(ordered, positives, right=True)  # negatives lower or tied
    return ((below + not_above).to(torch.float64).sum() / (2.0 * negatives.numel() * positives.numel())).item()


def _check_target(pred: Prediction, y: Tensor) -> Tensor:
    """``y`` in ``pred.mean``'s dtype and device, checked to match its shape and be finite."""
    if not isinstance(pred, Prediction):
        raise ValueError(f"pred: expected a Prediction; got {type(pred).__name__}")
    return check_target(y, pred.mean)


def _gaussian_nll(mean: Tensor, variance: Tensor, y: Tensor) -> Tensor:
    """Pointwise ``½ log(2π σ²) + (y − μ)² / (2σ²)`` in float64; a ``ValueError`` where ``σ² = 0``."""
    zero = int((variance <= 0).sum())
    if zero:
        raise ValueError(
            f"pred: the predicted variance is zero at {zero} point(s), where the Gaussian NLL is undefined; "
            "include the observation noise in the prediction"
        )
    variance = variance.to(torch.float64)
    residual = (y - mean).to(torch.float64)
    return 0.5 * torch.log(2.0 * math.pi * variance) + residual.square() / (2.0 * variance)


def _pairwise_rms_sum(draws: Tensor) -> Tensor:
    """``Σ_{i≠j} ‖X_i − X_j‖`` (RMS norm) per sample for draws `(n, chunk, D)`; returns `(chunk,)`.

    Uses the Gram matrix of the draws centred on their mean, so its entries stay on the scale of
    the spread and ``‖a‖² + ‖b‖² − 2a·b`` does not cancel catastrophically; its diagonal terms
    ``g + g − 2g`` are exactly zero, leaving the sum over ``i ≠ j``.
    """
    centred = (draws - draws.mean(0)).transpose(0, 1)  # (chunk, n, D)
    gram = centred @ centred.transpose(1, 2)
    norms = gram.diagonal(dim1=1, dim2=2)
    squared = (norms.unsqueeze(2) + norms.unsqueeze(1) - 2.0 * gram).clamp_min(0.0)
    return (squared / draws.shape[2]).sqrt().sum((1, 2))


def _inside(lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """Elementwise ``lower <= y <= upper``."""
    return (lower <= y) & (y <= upper)


def _average(values: Tensor) -> float:
    """Mean of all elements in float64, as a Python float."""
    return values.to(torch.float64).mean().item()


def _mean_variance(pred: Prediction) -> Tensor:
    """`(b,)` mean predicted variance over each sample's field."""
    return pred.variance.flatten(1).to(torch.float64).mean(1)


def _scores(name: str, values: Tensor | Sequence[float]) -> Tensor:
    """``values`` as a float64 tensor, checked to be a non-empty 1-D sequence of finite numbers."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() != 1 or values.numel() == 0 or not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of finite scores; got shape {tuple(values.shape)}")
    return values
