"""Predictive distributions of output fields: Gaussian (with a low-rank joint covariance) and mixtures.

Every posterior answers :meth:`Posterior.predict` with a :class:`Prediction` of the observed
field ``y`` (aleatoric noise included), for a batch of inputs:

* :class:`GaussianPrediction`: ``y ~ N(mean, F Fᵀ + diag(d))`` per sample, ``F`` a `(k, c·Π spatial)`
  low-rank factor (Laplace's linearised predictive) so that samples are coherent across the
  whole field; ``F`` may be absent (independent points);
* :class:`MixturePrediction`: an equal-weight mixture of Gaussians ``N(center_m, diag(noise))``
  (ensembles, MC dropout, stochastic operators; ``noise = 0`` makes it an empirical distribution
  of samples).

Shapes: ``mean`` and ``variance`` are `(b, c, *spatial)` like ``y``; ``sample(n)`` is
`(n, b, c, *spatial)`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Sequence

import torch
from torch import Tensor

from probneural.validation import check_float, check_int

__all__ = [
    "GaussianPrediction", "LevelUnavailableError", "MixturePrediction", "Prediction", "cat", "normal_quantile",
]

_SQRT_PI = math.sqrt(math.pi)
_MAX_STEPS = 60


def normal_quantile(p: float | Tensor) -> Tensor:
    """``Φ⁻¹(p)`` of the standard normal distribution (float64 for numbers)."""
    p = torch.as_tensor(p, dtype=torch.float64) if not isinstance(p, Tensor) else p
    return math.sqrt(2.0) * torch.special.erfinv(2.0 * p - 1.0)


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in (0, 1); a ``ValueError`` naming it otherwise."""
    alpha = check_float("alpha", alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a miscoverage level in (0, 1); got {alpha}")
    return alpha


def gaussian_crps(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Closed-form CRPS of ``N(mean, std²)`` at ``y``, elementwise (``std = 0`` gives ``|y − mean|``)."""
    safe = torch.where(std > 0, std, torch.ones_like(std))
    z = (y - mean) / safe
    pdf = torch.exp(-0.5 * z.square()) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    crps = safe * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / _SQRT_PI)
    return torch.where(std > 0, crps, (y - mean).abs())


def _expected_abs(mu: Tensor, variance: Tensor) -> Tensor:
    """``E|X|`` for ``X ~ N(mu, variance)``, elementwise (``|mu|`` at zero variance)."""
    std = variance.sqrt()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    z = mu / safe
    value = 2.0 * safe * torch.exp(-0.5 * z.square()) / math.sqrt(2.0 * math.pi) + mu * torch.erf(z / math.sqrt(2.0))
    return torch.where(std > 0, value, mu.abs())


class LevelUnavailableError(ValueError):
    """A prediction cannot give an interval at this level (a conformal band from too few calibration functions)."""


class Prediction(ABC):
    """A predictive distribution of a batch of fields `(b, c, *spatial)`; see the module docstring."""

    @property
    @abstractmethod
    def mean(self) -> Tensor:
        """`(b, c, *spatial)` predictive mean."""

    @property
    @abstractmethod
    def variance(self) -> Tensor:
        """`(b, c, *spatial)` marginal predictive variance (observation noise included)."""

    @abstractmethod
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` joint draws of the fields, `(n, b, c, *spatial)`."""

    @abstractmethod
    def interval(self, alpha: float) -> tuple[Tensor, Tensor]:
        """The pointwise central ``1 − alpha`` interval, ``(lower, upper)`` each `(b, c, *spatial)`."""

    @abstractmethod
    def crps(self, y: Tensor) -> Tensor:
        """Pointwise CRPS of the marginals at ``y`` `(b, c, *spatial)`; returns `(b, c, *spatial)`.

        Raises:
            ValueError: ``y`` does not have the prediction's shape.
        """

    @abstractmethod
    def affine(self, scale: Tensor, shift: Tensor) -> Prediction:
        """The distribution of ``scale · y + shift`` (``scale``, ``shift`` broadcast against `(b, c, *spatial)`)."""

    @abstractmethod
    def select(self, index: slice | Tensor) -> Prediction:
        """The prediction of the samples ``index`` of the batch."""

    @classmethod
    @abstractmethod
    def concatenate(cls, predictions: list[Prediction]) -> Prediction:
        """Predictions of consecutive batches (all of this class) as one, along the batch axis; see :func:`cat`."""

    @property
    def std(self) -> Tensor:
        """`(b, c, *spatial)` marginal standard deviation."""
        return self.variance.sqrt()

    def simultaneous_interval(
        self, alpha: float, *, n_samples: int = 1000, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """A band ``mean ± q_i · std`` holding the whole field ``i`` with probability ``1 − alpha``.

        ``q_i`` is the ``1 − alpha`` quantile of ``max_j |Y_j − mean_j| / std_j`` over ``n_samples``
        joint draws of sample ``i`` (a simultaneous credible band). Returns ``(lower, upper)``.
        """
        alpha = check_alpha(alpha)
        n_samples = check_int("n_samples", n_samples, 2)
        mean, std = self.mean, self.std
        safe = torch.where(std > 0, std, torch.ones_like(std))
        maxima = []
        for chunk in _chunks(n_samples, mean.numel()):
            draws = self.sample(chunk, generator=generator)
            maxima.append(((draws - mean) / safe).abs().flatten(2).amax(2))  # (chunk, b)
        q = torch.quantile(torch.cat(maxima).to(torch.float64), 1.0 - alpha, dim=0).to(mean.dtype)
        q = q.view(-1, *([1] * (mean.dim() - 1)))
        return mean - q * std, mean + q * std


def _chunks(n: int, draw_size: int, budget: int = 2**24) -> list[int]:
    """Split ``n`` draws of ``draw_size`` elements each (the whole batch) into chunks of at most ``budget`` elements."""
    per = max(1, budget // max(draw_size, 1))
    return [min(per, n - start) for start in range(0, n, per)]


def broadcastable(name: str, value: Tensor | float, like: Tensor) -> Tensor:
    """``value`` as a tensor of ``like``'s dtype and device, checked to broadcast to ``like``'s shape (a
    ``ValueError`` naming ``name`` otherwise)."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        shape = torch.broadcast_shapes(value.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(f"{name}: expected a shape that broadcasts to {tuple(like.shape)}; got {tuple(value.shape)}")
    return value


def check_target(y: Tensor, like: Tensor) -> Tensor:
    """``y`` in ``like``'s dtype and device, checked to have its shape (no silent broadcasting) and be finite."""
    y = torch.as_tensor(y, dtype=like.dtype, device=like.device)
    if y.shape != like.shape:
        raise ValueError(f"y: expected the prediction's shape {tuple(like.shape)}; got {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y: expected finite values; got NaN or Inf")
    return y


def affine_arguments(scale: Tensor | float, shift: Tensor | float, like: Tensor) -> tuple[Tensor, Tensor]:
    """``scale`` and ``shift`` as tensors of ``like``'s dtype and device, checked to broadcast to its shape."""
    return broadcastable("scale", scale, like), broadcastable("shift", shift, like)


class GaussianPrediction(Prediction):
    """``y_i ~ N(mean_i, F_i F_iᵀ + diag(d_i))`` for every sample ``i`` of the batch.

    Args:
        mean: `(b, c, *spatial)`.
        diagonal: `(b, c, *spatial)` (or broadcastable) non-negative independent variance ``d``,
            e.g. the observation noise.
        factor: `(b, k, c, *spatial)` low-rank factor ``F`` of the joint covariance, or ``None``.
        per_channel: the channels are independent: within channel ``c`` the covariance is
            ``Σ_k F[k, c] F[k, c]ᵀ`` and across channels zero (each channel draws its own ``k``
            normals), i.e. ``F`` stands for the block-diagonal factor of rank ``c k`` without
            storing its zeros.
    """

    def __init__(self, mean: Tensor, diagonal: Tensor, factor: Tensor | None = None, *,
                 per_channel: bool = False) -> None:
        diagonal = broadcastable("diagonal", diagonal, mean).expand_as(mean)
        if not torch.isfinite(mean).all():
            raise ValueError("mean: expected finite values; got NaN or Inf")
        if not (torch.isfinite(diagonal) & (diagonal >= 0)).all():
            raise ValueError("diagonal: expected finite non-negative variances; got negative, NaN or Inf values")
        if factor is not None and (factor.dim() != mean.dim() + 1 or factor.shape[0] != mean.shape[0]
                                   or factor.shape[2:] != mean.shape[1:]):
            raise ValueError(f"factor: expected shape ({mean.shape[0]}, k, {', '.join(map(str, mean.shape[1:]))}); "
                             f"got {tuple(factor.shape)}")
        if factor is not None and not torch.isfinite(factor).all():
            raise ValueError("factor: expected finite values; got NaN or Inf")
        self._mean = mean
        self.diagonal = diagonal
        self.factor = factor
        self.per_channel = per_channel

    @property
    def mean(self) -> Tensor:
        return self._mean

    @property
    def variance(self) -> Tensor:
        if self.factor is None:
            return self.diagonal
        return self.diagonal + self.factor.square().sum(1)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        n = check_int("n", n, 1)
        mean = self._mean
        noise = torch.randn((n, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device)
        draws = mean + self.diagonal.sqrt() * noise
        if self.factor is not None:
            k = self.factor.shape[1]
            if self.per_channel:  # one set of k normals per channel
                z = torch.randn((n, mean.shape[0], k, mean.shape[1]), generator=generator, dtype=mean.dtype,
                                device=mean.device)
                return draws + torch.einsum("nbkc,bkc...->nbc...", z, self.factor)
            z = torch.randn((n, mean.shape[0], k), generator=generator, dtype=mean.dtype, device=mean.device)
            draws = draws + torch.einsum("nbk,bk...->nb...", z, self.factor)
        return draws

    def interval(self, alpha: float) -> tuple[Tensor, Tensor]:
        z = normal_quantile(1.0 - check_alpha(alpha) / 2.0).item()
        std = self.std
        return self._mean - z * std, self._mean + z * std

    def crps(self, y: Tensor) -> Tensor:
        return gaussian_crps(self._mean, self.std, check_target(y, self._mean))

    def simultaneous_interval(
        self, alpha: float, *, n_samples: int = 1000, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.factor is not None:
            return super().simultaneous_interval(alpha, n_samples=n_samples, generator=generator)
        # independent points: P(all |Z_j| <= q) = (2Φ(q) − 1)^d, exactly
        d = self._mean[0].numel()
        q = normal_quantile(0.5 * (1.0 + (1.0 - check_alpha(alpha)) ** (1.0 / d))).item()
        std = self.std
        return self._mean - q * std, self._mean + q * std

    def affine(self, scale: Tensor, shift: Tensor) -> GaussianPrediction:
        scale, shift = affine_arguments(scale, shift, self._mean)
        # the factor's rank axis sits after the batch axis: align scale with (b, c, *spatial) first
        factor = None if self.factor is None else self.factor * scale.expand_as(self._mean).unsqueeze(1)
        return GaussianPrediction(self._mean * scale + shift, self.diagonal * scale.square(), factor,
                                  per_channel=self.per_channel)

    def select(self, index: slice | Tensor) -> GaussianPrediction:
        factor = None if self.factor is None else self.factor[index]
        return GaussianPrediction(self._mean[index], self.diagonal[index], factor, per_channel=self.per_channel)

    @classmethod
    def concatenate(cls, predictions: list[GaussianPrediction]) -> GaussianPrediction:
        factors = [p.factor for p in predictions]
        if any(f is None for f in factors) and not all(f is None for f in factors):
            raise ValueError("predictions: some have a low-rank factor and some not")
        if factors[0] is not None and len({f.shape[1] for f in factors}) != 1:
            raise ValueError("predictions: low-rank factors of different ranks")
        if len({p.per_channel for p in predictions}) != 1:
            raise ValueError("predictions: some have per-channel factors and some not")
        return GaussianPrediction(
            torch.cat([p.mean for p in predictions]),
            torch.cat([p.diagonal for p in predictions]),
            None if factors[0] is None else torch.cat(factors),
            per_channel=predictions[0].per_channel,
        )


class MixturePrediction(Prediction):
    """An equal-weight mixture ``(1/m) Σ_m N(center_m, diag(noise))`` for every sample of the batch.

    Args:
        centers: `(m, b, c, *spatial)` member predictions or stochastic draws, ``m >= 1``.
        noise: non-negative observation-noise variance broadcastable to `(b, c, *spatial)`
            (``0``: the empirical distribution of the centers).
    """

    def __init__(self, centers: Tensor, noise: Tensor | float = 0.0) -> None:
        if centers.dim() < 3:
            raise ValueError(f"centers: expected shape (m, b, c, *spatial); got {tuple(centers.shape)}")
        noise = broadcastable("noise", noise, centers[0]).expand(centers.shape[1:])
        if not torch.isfinite(centers).all():
            raise ValueError("centers: expected finite values; got NaN or Inf")
        if not (torch.isfinite(noise) & (noise >= 0)).all():
            raise ValueError("noise: expected finite non-negative variances; got negative, NaN or Inf values")
        self.centers = centers
        self.noise = noise

    @property
    def mean(self) -> Tensor:
        return self.centers.mean(0)

    @property
    def variance(self) -> Tensor:
        return self.centers.var(0, correction=0) + self.noise

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        n = check_int("n", n, 1)
        m, b = self.centers.shape[:2]
        pick = torch.randint(m, (n, b), generator=generator, device=self.centers.device)
        draws = self.centers[pick, torch.arange(b, device=pick.device)]  # (n, b, c, *spatial)
        noise = torch.randn(draws.shape, generator=generator, dtype=draws.dtype, device=draws.device)
        return draws + self.noise.sqrt() * noise

    def cdf(self, t: Tensor) -> Tensor:
        """Mixture CDF at ``t`` `(b, c, *spatial)` (a step function of the centers where ``noise = 0``)."""
        std = self.noise.sqrt()
        safe = torch.where(std > 0, std, torch.ones_like(std))
        z = (t - self.centers) / safe
        smooth = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
        return torch.where(std > 0, smooth, (self.centers <= t).to(t.dtype)).mean(0)

    def quantile(self, p: float) -> Tensor:
        """Pointwise ``p``-quantile `(b, c, *spatial)` (empirical where ``noise = 0``).

        Where ``noise > 0`` the components share one variance, so the quantile lies between the
        smallest and largest component quantile ``c_m + σ z_p``; safeguarded Newton steps on the
        CDF inside that bracket (bisection whenever a step leaves it) until the CDF is within
        ``10 ε^¾`` of ``p`` everywhere (6e-5 in float32, 2e-11 in float64), at most 60 steps.
        """
        p = check_float("p", p)
        if not 0.0 < p < 1.0:
            raise ValueError(f"p: expected a probability in (0, 1); got {p}")
        positive = self.noise > 0
        if not positive.any():
            return self._empirical_quantile(p)
        z = normal_quantile(p).item()
        std = torch.where(positive, self.noise.sqrt(), torch.ones_like(self.noise))
        low, high = self.centers.amin(0) + z * std, self.centers.amax(0) + z * std
        t = 0.5 * (low + high)
        tolerance = 10 * torch.finfo(t.dtype).eps ** 0.75
        for _ in range(_MAX_STEPS):
            u = (t - self.centers) / std
            error = 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0))).mean(0) - p
            if error.abs().max() <= tolerance:
                break
            density = torch.exp(-0.5 * u.square()).mean(0) / (math.sqrt(2.0 * math.pi) * std)
            below = error < 0
            low, high = torch.where(below, t, low), torch.where(below, high, t)
            step = t - error / density.clamp_min(torch.finfo(t.dtype).tiny)
            t = torch.where((step > low) & (step < high), step, 0.5 * (low + high))
        return t if positive.all() else torch.where(positive, t, self._empirical_quantile(p))

    @cached_property
    def _sorted_centers(self) -> Tensor:
        """`(m, b, c, *spatial)` centers sorted along the mixture axis, in float64 (sorted once per prediction)."""
        return self.centers.to(torch.float64).sort(0).values

    def _empirical_quantile(self, p: float) -> Tensor:
        """The centers' ``p``-quantile, linearly interpolated (as ``torch.quantile``) between sorted centers."""
        position = p * (self.centers.shape[0] - 1)
        low = math.floor(position)
        high = min(low + 1, self.centers.shape[0] - 1)
        below, above = self._sorted_centers[low], self._sorted_centers[high]
        return torch.lerp(below, above, position - low).to(self.centers.dtype)

    def interval(self, alpha: float) -> tuple[Tensor, Tensor]:
        alpha = check_alpha(alpha)
        return self.quantile(alpha / 2.0), self.quantile(1.0 - alpha / 2.0)

    def crps(self, y: Tensor) -> Tensor:
        """Closed form for Gaussian mixtures (Grimit et al. 2006):
        ``(1/m) Σ_m E|X_m − y| − (1/2m²) Σ_{m,l} E|X_m − X_l|``."""
        centers, noise = self.centers, self.noise
        y = check_target(y, noise)
        m = centers.shape[0]
        first = sum(_expected_abs(centers[i] - y, noise) for i in range(m)) / m
        second = sum(_expected_abs(centers[i] - centers[j], 2.0 * noise) for i in range(m) for j in range(i + 1, m))
        second = 2.0 * second / m**2 if m > 1 else torch.zeros_like(first)
        # the diagonal terms E|X_m − X'_m| = 2·sqrt(noise/π) each
        second = second + 2.0 * torch.sqrt(noise / math.pi) / m
        return first - 0.5 * second

    def affine(self, scale: Tensor, shift: Tensor) -> MixturePrediction:
        scale, shift = affine_arguments(scale, shift, self.noise)
        return MixturePrediction(self.centers * scale + shift, self.noise * scale.square())

    def select(self, index: slice | Tensor) -> MixturePrediction:
        return MixturePrediction(self.centers[:, index], self.noise[index])

    @classmethod
    def concatenate(cls, predictions: list[MixturePrediction]) -> MixturePrediction:
        if len({p.centers.shape[0] for p in predictions}) != 1:
            raise ValueError("predictions: mixtures with different numbers of components")
        return MixturePrediction(torch.cat([p.centers for p in predictions], 1), torch.cat([p.noise for p in predictions]))


def cat(predictions: Sequence[Prediction]) -> Prediction:
    """Concatenate predictions of consecutive batches along the batch axis (all of one kind)."""
    if not predictions:
        raise ValueError("predictions: expected at least one prediction")
    kinds = {type(p) for p in predictions}
    if len(kinds) != 1:
        raise ValueError(f"predictions: expected predictions of one kind; got {sorted(k.__name__ for k in kinds)}")
    return type(predictions[0]).concatenate(list(predictions))
