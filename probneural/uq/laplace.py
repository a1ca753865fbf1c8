"""Laplace approximations of a trained operator, with the linearised (GLM) predictive as a function-space Gaussian.

Around the trained weights ``θ*`` the posterior is ``N(θ*, P⁻¹)`` with precision
``P = G / σ² + δ I``: ``G`` the generalised Gauss–Newton of the summed squared error over the
training data (from :mod:`probneural.hessian`), ``σ²`` the observation noise and ``δ`` the prior
precision of ``N(0, δ⁻¹ I)``. Linearising the operator in its weights, ``f(x; θ) ≈ f(x; θ*) + J(x)(θ − θ*)``,
gives a Gaussian over whole output fields, ``N(f(x; θ*), J P⁻¹ Jᵀ + σ² I)``: the mean is the trained
operator's prediction, and the covariance has a low-rank factor so samples are coherent across the field.

Structures of ``G`` (:class:`Structure`):

* ``last_layer``: the exact GGN of the linear read-out (``projection_out`` of an FNO) in closed form,
  ``G = Λ ⊗ Σ φ̃ φ̃ᵀ``; the posterior over the read-out is a full Gaussian and the predictive is
  exact, with a factor ``φ̃(x)ᵀ L_c`` of rank ``features + 1`` per channel (channels independent:
  ``GaussianPrediction(per_channel=True)``). Observation noise per output channel.
* ``diagonal``: all weights (the complex spectral weights through their real view), a Monte Carlo
  estimate of the GGN diagonal (:func:`~probneural.hessian.ggn_diagonal_mc`).
* ``kfac``: all weights; K-FAC blocks for the linear, pointwise and spectral layers (the spectral
  ones widely linear in the complex weights, :class:`SpectralKroneckerBlock`), the GGN diagonal
  for the rest (biases outside linear layers).
* ``low_rank``: all weights; the top eigenpairs ``(λ, V)`` of the GGN by Lanczos (on a subset of the
  training data, rescaled to its size), and in the remaining directions their mean curvature
  ``c = tr((I − VVᵀ) G) / (P − k)`` (Hutchinson, :data:`REMAINDER_PROBES` Rademacher probes projected
  off ``V``): ``G ≈ V diag(λ) Vᵀ + c (I − VVᵀ)``. With zero curvature there (the prior alone, as in
  laplace-torch's low-rank Laplace) the marginal likelihood is degenerate: its optimum is exactly
  ``δ = γ / ‖θ*‖²`` with ``γ = Σ λ/(λ + δσ²) <= k``, a prior fitted to ``k`` directions and spread
  over all ``P``, whose bands are the prior's.

For the all-weights structures the predictive factor is ``J(x) Δθ_s / √S`` for ``S`` posterior draws
``Δθ_s ~ N(0, P⁻¹)`` pushed through the operator by forward-mode differentiation (one ``jvp`` each).

The prior precision and the observation noise are tuned by maximising the Laplace approximation of
the marginal likelihood (MacKay 1992; Immer et al. 2021), which is closed-form in both given the
eigenvalues of ``G``. The work happens in the operator's normalised units when the model is a
:class:`~probneural.train.NormalizedOperator`; predictions are mapped back to data units.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.func import jvp

from probneural import hessian
from probneural.hessian import functional_model, kfac_operator, lanczos, last_layer_ggn
from probneural.hessian.ggn import ggn_vp
from probneural.hessian.kfac import KroneckerBlock, SpectralKroneckerBlock, recording
from probneural.hessian.operator import LinearOperator
from probneural.hessian.structure import flatten, unflatten
from probneural.uq.posterior import (
    METHODS, Batches, Posterior, model_parameters, normalized_parts, switched_mode, to_data_units,
)
from probneural.uq.options import checked_options
from probneural.uq.prediction import GaussianPrediction
from probneural.validation import check_float, check_int, warn_unused

__all__ = ["LaplacePosterior", "MarginalLikelihood", "Structure", "fit_laplace"]

_LINALG = torch.float64


class Structure(str, Enum):
    """Which weights the Laplace posterior covers and how their curvature is represented (see the module docstring)."""

    LAST_LAYER = "last_layer"
    DIAGONAL = "diagonal"
    KFAC = "kfac"
    LOW_RANK = "low_rank"


@dataclass
class MarginalLikelihood:
    """The Laplace approximation of the log marginal likelihood as a function of ``(δ, σ²)``.

    ``log p(D) ≈ Σ_g [−n_g/2 · log(2π σ_g²) − r_g / (2 σ_g²)] − δ/2 · ‖θ*‖² + P/2 · log δ − ½ log det(G/σ² + δ I)``,
    with ``log det(G/σ² + δ I) = Σ_g Σ_m log(λ_gm / σ_g² + δ) + n_zero · log δ``.

    Attributes:
        eigenvalues: `(groups, m)` eigenvalues ``λ`` of ``G`` at unit noise, one row per noise group
            (output channels for the last layer, one group otherwise).
        n_zero: eigenvalues of ``G`` taken as zero (directions the curvature does not see).
        squared_errors: `(groups,)` sums of squared residuals ``r_g`` of the trained operator.
        counts: `(groups,)` numbers of observed values ``n_g``.
        map_norm: ``‖θ*‖²`` of the covered weights.
        n_params: ``P``, the covered weights.
    """

    eigenvalues: Tensor
    n_zero: int
    squared_errors: Tensor
    counts: Tensor
    map_norm: float
    n_params: int

    def __call__(self, prior_precision: Tensor, noise_variance: Tensor) -> Tensor:
        """``log p(D)`` at ``δ`` (0-d) and ``σ²`` `(groups,)` (differentiable in both)."""
        delta, sigma2 = prior_precision, noise_variance
        fit = -0.5 * (self.counts * torch.log(2 * math.pi * sigma2) + self.squared_errors / sigma2).sum()
        logdet = torch.log(self.eigenvalues / sigma2[:, None] + delta).sum() + self.n_zero * torch.log(delta)
        return fit - 0.5 * delta * self.map_norm + 0.5 * self.n_params * torch.log(delta) - 0.5 * logdet

    def maximise(self, prior_precision: float | None, noise_variance: Tensor | None) -> tuple[float, Tensor]:
        """The ``(δ, σ²)`` maximising ``log p(D)``; a given value is held fixed.

        Optimised over ``log δ`` and ``log σ²`` by L-BFGS in float64 from ``δ = 1`` and the
        residual variance ``r_g / n_g``.
        """
        initial_noise = (self.squared_errors / self.counts).clamp_min(1e-12)
        log_delta = torch.zeros((), dtype=_LINALG) if prior_precision is None else None
        log_sigma2 = initial_noise.log().clone() if noise_variance is None else None
        free = [t.requires_grad_() for t in (log_delta, log_sigma2) if t is not None]

        def values() -> tuple[Tensor, Tensor]:
            delta = log_delta.exp() if log_delta is not None else torch.tensor(prior_precision, dtype=_LINALG)
            sigma2 = log_sigma2.exp() if log_sigma2 is not None else noise_variance.to(initial_noise)
            return delta, sigma2

        if free:
            optimizer = torch.optim.LBFGS(free, lr=1.0, max_iter=200, line_search_fn="strong_wolfe",
                                          tolerance_grad=1e-10, tolerance_change=1e-14)

            def closure() -> Tensor:
                optimizer.zero_grad()
                loss = -self(*values())
                loss.backward()
                return loss

            optimizer.step(closure)
        delta, sigma2 = values()
        return float(delta.detach()), sigma2.detach()


def _residual_statistics(operator: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-channel sums of squared residuals `(c,)` and observation counts `(c,)` on normalised batches."""
    squared, counts = 0.0, 0.0
    with torch.no_grad():
        for index, (x, y) in enumerate(batches):
            output = operator(x)
            if output.shape != y.shape:  # broadcasting would fit a 1-channel y to every output channel
                raise ValueError(f"loader: batch {index} has y of shape {tuple(y.shape)}; the operator answers "
                                 f"{tuple(output.shape)}")
            residual = (output - y).to(_LINALG)
            squared = squared + residual.square().transpose(0, 1).reshape(residual.shape[1], -1).sum(1)
            counts = counts + torch.full((residual.shape[1],), residual[:, 0].numel(), dtype=_LINALG,
                                         device=residual.device)
    return squared, counts


class _LastLayer:
    """Full Gaussian posterior over the read-out ``(W, b)``: per channel ``Σ_c = (A/σ_c² + δ I)⁻¹``."""

    def __init__(self, operator: nn.Module, inputs: list[Tensor]) -> None:
        # features in the model's dtype (a float64 forward pass of a float32 FNO is slower and
        # allocation-bound); the eigendecomposition in float64
        ggn = last_layer_ggn(operator, inputs, loss="mse")
        (block,) = ggn.blocks
        self.names = block.names
        self.layer = block.names[0].rsplit(".", 1)[0] if "." in block.names[0] else ""
        gram = block.input_factor.to(_LINALG)  # (i + 1, i + 1) with bias, Σ φ̃ φ̃ᵀ
        values, self.vectors = torch.linalg.eigh(gram)
        self.values = values.clamp_min(0.0)
        self.bias = block.bias
        self.channels = block.out_features
        state = dict(operator.named_parameters())
        self.map_norm = sum(float(state[name].detach().to(_LINALG).square().sum()) for name in self.names)
        self.n_params = block.size

    def marginal_likelihood(self, squared_errors: Tensor, counts: Tensor) -> MarginalLikelihood:
        return MarginalLikelihood(self.values.expand(self.channels, -1), 0, squared_errors, counts,
                                  self.map_norm, self.n_params)

    def readout_features(self, operator: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """The operator's output `(b, c, *spatial)` and the augmented read-out input ``φ̃`` `(b, i [+ 1], *spatial)`."""
        modules = dict(operator.named_modules())
        with recording({self.layer: modules[self.layer]}) as records, torch.no_grad():
            output = operator(x)
        phi = torch.cat([a for a, _ in records[self.layer]])
        if self.bias:
            phi = torch.cat((phi, torch.ones_like(phi[:, :1])), dim=1)
        return output, phi

    def factor(self, phi: Tensor, prior_precision: float, noise_variance: Tensor) -> Tensor:
        """`(b, i [+ 1], c, *spatial)` per-channel factor ``φ̃ᵀ L_c`` with ``L_c L_cᵀ = Σ_c``.

        The read-outs of different channels are independent a posteriori (the GGN is
        ``diag(1/σ²) ⊗ Σ φ̃ φ̃ᵀ`` and the prior isotropic): a :class:`GaussianPrediction` with
        ``per_channel=True`` (one shared set of normals would correlate the channels' deviations
        completely; a block-diagonal factor would store ``c − 1`` zeros for every entry).
        """
        scales = (self.values / noise_variance[:, None] + prior_precision).rsqrt()  # (c, m)
        roots = self.vectors.unsqueeze(0) * scales.unsqueeze(1)  # (c, i + 1, m): U diag(scale)
        return torch.einsum("bj...,cjm->bmc...", phi, roots.to(phi.dtype))


class _Segment(ABC):
    """Curvature of a slice ``[start, stop)`` of the flattened weights, with eigenvalues and posterior draws."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    @abstractmethod
    def eigenvalues(self) -> Tensor:
        """The eigenvalues of this slice's curvature at unit noise (fewer than its size: the rest are zero)."""

    @abstractmethod
    def sample(self, z: Tensor, prior_precision: float, noise_variance: float) -> Tensor:
        """``P⁻¹ᐟ²`` applied to standard normal ``z`` `(S, stop − start)`: draws of the deviation ``Δθ``."""


class _Diagonal(_Segment):
    def __init__(self, start: int, stop: int, diagonal: Tensor) -> None:
        super().__init__(start, stop)
        self.diagonal = diagonal.to(_LINALG).clamp_min(0.0)

    def eigenvalues(self) -> Tensor:
        return self.diagonal

    def sample(self, z: Tensor, prior_precision: float, noise_variance: float) -> Tensor:
        return z * (self.diagonal / noise_variance + prior_precision).rsqrt()


class _Kronecker(_Segment):
    """``B ⊗ A`` on ``[weight.flatten(); bias]``: draws ``U_B (Z ⊙ (s_B s_Aᵀ/σ² + δ)^{-½}) U_Aᵀ``."""

    def __init__(self, start: int, block: KroneckerBlock) -> None:
        super().__init__(start, start + block.size)
        self.block = block
        a_values, self.a_vectors = torch.linalg.eigh(block.input_factor.to(_LINALG))
        b_values, self.b_vectors = torch.linalg.eigh(block.output_factor.to(_LINALG))
        self.values = torch.outer(b_values.clamp_min(0.0), a_values.clamp_min(0.0))  # (o, i [+ 1])

    def eigenvalues(self) -> Tensor:
        return self.values.reshape(-1)

    def sample(self, z: Tensor, prior_precision: float, noise_variance: float) -> Tensor:
        o, i = self.block.out_features, self.block.in_features
        columns = self.values.shape[1]
        scaled = z.view(-1, o, columns) * (self.values / noise_variance + prior_precision).rsqrt()
        matrices = self.b_vectors @ scaled @ self.a_vectors.T  # (S, o, i [+ 1]) augmented weights
        pieces = [matrices[..., :i].reshape(z.shape[0], -1)] + ([matrices[..., i]] if self.block.bias else [])
        return torch.cat(pieces, dim=1)


class _SpectralKronecker(_Segment):
    """A spectral layer's K-FAC block (complex weight, real view): draws ``f(G) z`` with ``f(e) = (e/σ² + δ)^{-½}``
    in the block's orthogonal eigenbasis (:meth:`SpectralKroneckerBlock.apply_function`)."""

    def __init__(self, start: int, block: SpectralKroneckerBlock) -> None:
        super().__init__(start, start + block.size)
        self.block = SpectralKroneckerBlock(block.names, block.input_factor.to(_LINALG),
                                            block.output_factor.to(_LINALG))

    def eigenvalues(self) -> Tensor:
        return self.block.eigenvalues().clamp_min(0.0)

    def sample(self, z: Tensor, prior_precision: float, noise_variance: float) -> Tensor:
        scale = lambda values: (values.clamp_min(0.0) / noise_variance + prior_precision).rsqrt()  # noqa: E731
        return self.block.apply_function(scale, z.T).T


class _LowRank(_Segment):
    """Top-``k`` eigenpairs ``(λ, V)`` of ``G`` and the curvature ``c`` of every other direction:
    ``G = V diag(λ) Vᵀ + c (I − VVᵀ)``."""

    def __init__(self, start: int, stop: int, values: Tensor, vectors: Tensor, remainder: float) -> None:
        super().__init__(start, stop)
        self.values = values.to(_LINALG).clamp_min(0.0)
        self.vectors = vectors.to(_LINALG)
        self.remainder = max(float(remainder), 0.0)

    def eigenvalues(self) -> Tensor:
        rest = self.values.new_full((self.stop - self.start - self.values.numel(),), self.remainder)
        return torch.cat((self.values, rest))

    def sample(self, z: Tensor, prior_precision: float, noise_variance: float) -> Tensor:
        rest_scale = (self.remainder / noise_variance + prior_precision) ** -0.5
        scales = (self.values / noise_variance + prior_precision).rsqrt() - rest_scale
        return rest_scale * z + ((z @ self.vectors) * scales) @ self.vectors.T


REMAINDER_PROBES = 16
"""Rademacher probes of the low-rank structure's remainder curvature (see the module docstring)."""


def _remainder_curvature(ggn: LinearOperator, vectors: Tensor, seed: int) -> tuple[float, float]:
    """``tr(Π G Π) / (P − k)`` with ``Π = I − VVᵀ``, the mean curvature of ``G`` outside the orthonormal
    columns ``V`` `(P, k)`, and its standard error: :func:`~probneural.hessian.hutchinson_trace` of
    ``Π G Π`` over :data:`REMAINDER_PROBES` probes (each term ``(Πz)ᵀ G (Πz) >= 0`` for a positive
    semi-definite ``G``)."""
    size, k = vectors.shape
    if k == size:
        return 0.0, 0.0

    def project(v: Tensor) -> Tensor:
        return v - vectors @ (vectors.T @ v)

    projected = LinearOperator(size, lambda v: project(ggn.matvec(project(v))), dtype=ggn.dtype, device=ggn.device)
    trace, error = hessian.hutchinson_trace(projected, REMAINDER_PROBES, seed=seed + 1)
    return trace / (size - k), error / (size - k)


class _AllWeights:
    """Posterior over every trainable weight, as :class:`_Segment` pieces covering the flattened real vector."""

    def __init__(self, operator: nn.Module, segments: list[_Segment], n_params: int,
                 details: Mapping[str, float] | None = None) -> None:
        self.segments = segments
        self.n_params = n_params
        self.details = dict(details or {})  # estimates behind the curvature, for the posterior's summary
        self.device = model_parameters(operator)[0]
        covered = sum(s.stop - s.start for s in segments)
        if covered != n_params:
            raise RuntimeError(f"curvature segments cover {covered} of {n_params} weights")
        self.map_norm = sum(float(p.detach().to(_LINALG).square().sum())
                            for p in operator.parameters() if p.requires_grad)

    def marginal_likelihood(self, squared_errors: Tensor, counts: Tensor) -> MarginalLikelihood:
        values = torch.cat([s.eigenvalues() for s in self.segments])
        n_zero = self.n_params - values.numel()
        return MarginalLikelihood(values.unsqueeze(0), n_zero, squared_errors.sum().view(1), counts.sum().view(1),
                                  self.map_norm, self.n_params)

    def sample(self, n: int, prior_precision: float, noise_variance: float, generator: torch.Generator) -> Tensor:
        """`(n, P)` draws of ``Δθ ~ N(0, P⁻¹)`` in float64 on the operator's device (``generator``: a CPU one)."""
        draws = torch.empty(n, self.n_params, dtype=_LINALG, device=self.device)
        for segment in self.segments:
            z = torch.randn(n, segment.stop - segment.start, generator=generator, dtype=_LINALG).to(self.device)
            draws[:, segment.start : segment.stop] = segment.sample(z, prior_precision, noise_variance)
        return draws


def _offsets(operator: nn.Module) -> dict[str, tuple[int, int]]:
    """``name → (start, stop)`` of every trainable weight in the flattened real vector."""
    offsets, start = {}, 0
    for name, p in operator.named_parameters():
        if p.requires_grad:
            size = p.numel() * (2 if p.is_complex() else 1)
            offsets[name] = (start, start + size)
            start += size
    return offsets


def _diagonal_segments(diagonal: Tensor, offsets: dict[str, tuple[int, int]], names: list[str]) -> list[_Segment]:
    return [_Diagonal(*offsets[name], diagonal[slice(*offsets[name])]) for name in names]


def _summed_ggn(operator: nn.Module, inputs: list[Tensor], scale: float) -> LinearOperator:
    """``scale · Σ_batches Jᵀ J``, the GGN of the unit-noise squared error, as a matrix-free operator."""
    functions = [functional_model(operator, x) for x in inputs]
    reference = functions[0][1]

    def matvec(vector: Tensor) -> Tensor:
        v = unflatten(vector.to(reference[0].dtype), reference)
        total = sum(flatten(ggn_vp(fn, params, v)) for fn, params in functions)
        return (scale * total).to(vector.dtype)

    size = sum(p.numel() for p in reference)
    return LinearOperator(size, matvec, dtype=reference[0].dtype, device=reference[0].device)


class LaplacePosterior(Posterior):
    """A fitted Laplace approximation; see the module docstring.

    Attributes:
        structure: the :class:`Structure`.
        prior_precision: ``δ``.
        noise_variance: ``σ²`` in normalised units, `(c,)` for the last layer, `(1,)` otherwise.
        log_marginal_likelihood: the maximised (or evaluated) ``log p(D)``.
    """

    def __init__(self, model: nn.Module, structure: Structure, curvature: _LastLayer | _AllWeights,
                 prior_precision: float, noise_variance: Tensor, log_marginal_likelihood: float,
                 samples: int, seed: int) -> None:
        self.model = model
        self.operator, self.x_normalizer, self.y_normalizer = normalized_parts(model)
        self.structure = structure
        self.curvature = curvature
        self.prior_precision = prior_precision
        self.noise_variance = noise_variance
        self.log_marginal_likelihood = log_marginal_likelihood
        self.samples = samples
        self.seed = seed
        self._draws: Tensor | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "structure": self.structure.value,
            "prior_precision": self.prior_precision,
            "noise_variance": self.noise_variance.tolist(),
            "log_marginal_likelihood": self.log_marginal_likelihood,
            "n_params": self.curvature.n_params,
            "predictive_rank": None if self.structure is Structure.LAST_LAYER else self.samples,
            **(self.curvature.details if isinstance(self.curvature, _AllWeights) else {}),
        }

    def _weight_draws(self) -> Tensor:
        """The ``S`` posterior draws of ``Δθ`` `(S, P)`, drawn once so every prediction uses the same ones."""
        if self._draws is None:
            generator = torch.Generator().manual_seed(self.seed)
            self._draws = self.curvature.sample(
                self.samples, self.prior_precision, float(self.noise_variance[0]), generator
            )
        return self._draws

    def predict(self, x: Tensor) -> GaussianPrediction:
        """Linearised predictive `(b, c, *spatial)` at any resolution the operator runs at; see the module docstring."""
        device, dtype = model_parameters(self.operator)
        x = x.to(device, dtype)
        z = self.x_normalizer.encode(x) if self.x_normalizer is not None else x
        with switched_mode(self.operator, False):
            if self.structure is Structure.LAST_LAYER:
                mean, phi = self.curvature.readout_features(self.operator, z)
                factor = self.curvature.factor(phi, self.prior_precision, self.noise_variance.to(device))
            else:
                mean, factor = self._linearised(z)
        noise = self.noise_variance.to(device, dtype).view(1, -1, *([1] * (mean.dim() - 2)))
        prediction = GaussianPrediction(mean, noise.expand_as(mean), factor,
                                        per_channel=self.structure is Structure.LAST_LAYER)
        return to_data_units(prediction, self.y_normalizer)

    def _linearised(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The operator's output and the factor ``J(z) Δθ_s / √S`` `(b, S, c, *spatial)` by one ``jvp`` per draw."""
        model_fn, params = functional_model(self.operator, z)
        draws = self._weight_draws()
        columns = []
        mean = None
        with torch.no_grad():
            for draw in draws:
                tangent = unflatten(draw.to(params[0].device, params[0].dtype), params)
                mean, column = jvp(model_fn, (params,), (tangent,))
                columns.append(column)
        return mean, torch.stack(columns, dim=1) / math.sqrt(len(columns))


def _curvature(structure: Structure, operator: nn.Module, inputs: list[Tensor], *, rank: int,
               curvature_samples: int, subset: int, seed: int) -> _LastLayer | _AllWeights:
    if structure is Structure.LAST_LAYER:
        return _LastLayer(operator, inputs)
    offsets = _offsets(operator)
    n_params = max(stop for _, stop in offsets.values())
    names = list(offsets)
    if structure is Structure.LOW_RANK:
        kept, count = [], 0
        for x in inputs:
            if count >= subset:
                break
            kept.append(x[: subset - count])
            count += kept[-1].shape[0]
        total = sum(x.shape[0] for x in inputs)
        ggn = _summed_ggn(operator, kept, total / count)
        values, vectors = lanczos(ggn, min(rank, n_params), seed=seed)
        remainder, error = _remainder_curvature(ggn, vectors, seed)
        return _AllWeights(operator, [_LowRank(0, n_params, values, vectors, remainder)], n_params,
                           {"remainder_curvature": remainder, "remainder_curvature_stderr": error})
    def mc_diagonal() -> Tensor:
        return hessian.ggn_diagonal_mc(operator, inputs, loss="mse", n_samples=curvature_samples, seed=seed)

    if structure is Structure.DIAGONAL:
        return _AllWeights(operator, _diagonal_segments(mc_diagonal(), offsets, names), n_params)
    kfac = kfac_operator(operator, inputs, loss="mse", variant="mc", n_samples=curvature_samples, seed=seed,
                         spectral=True)
    segments: list[_Segment] = [
        (_SpectralKronecker if isinstance(block, SpectralKroneckerBlock) else _Kronecker)(
            offsets[block.names[0]][0], block)
        for block in kfac.blocks
    ]
    uncovered = [name for name in names if name not in set(kfac.names)]
    if uncovered:  # weights no Kronecker block covers (none in an FNO) get the diagonal
        segments += _diagonal_segments(mc_diagonal(), offsets, uncovered)
    return _AllWeights(operator, sorted(segments, key=lambda s: s.start), n_params)


def _check_options(options: dict[str, Any], defaults: Mapping[str, Any], on_posterior: bool) -> None:
    """The option check of :func:`fit_laplace` (see :mod:`probneural.uq.options`)."""
    try:
        options["structure"] = structure = Structure(options["structure"])
    except ValueError:
        raise ValueError(f"structure: expected one of {[s.value for s in Structure]}; "
                         f"got {options['structure']!r}") from None
    for name in ("samples", "rank", "subset", "curvature_samples"):
        options[name] = check_int(name, options[name], 1)
    options["seed"] = check_int("seed", options["seed"], 0)
    if options["prior_precision"] is not None:
        options["prior_precision"] = check_float("prior_precision", options["prior_precision"], positive=True)
    noise = options["noise_variance"]
    if noise is not None:
        try:
            values = torch.as_tensor(noise, dtype=_LINALG).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            values = torch.empty(0)
        if values.numel() == 0 or not bool(torch.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"noise_variance: expected a positive number or one per output channel; got {noise!r}")
    warn_unused(options, defaults, ("rank", "subset"), used=structure is Structure.LOW_RANK,
                  because="with structure='low_rank'")
    warn_unused(options, defaults, ("curvature_samples",), used=structure in (Structure.DIAGONAL, Structure.KFAC),
                  because="with structure='diagonal' or 'kfac' (Monte Carlo curvature)")
    warn_unused(options, defaults, ("samples",), used=structure is not Structure.LAST_LAYER,
                  because="by the all-weights structures (the last-layer predictive is closed-form)")


@METHODS.register("laplace")
@checked_options(_check_options)
def fit_laplace(
    model: nn.Module,
    loader: Batches,
    *,
    structure: Structure | str = Structure.LAST_LAYER,
    prior_precision: float | None = None,
    noise_variance: float | list[float] | None = None,
    samples: int = 32,
    rank: int = 10,
    subset: int = 128,
    curvature_samples: int = 1,
    seed: int = 0,
) -> LaplacePosterior:
    """Fit a Laplace approximation around the trained weights of ``model``.

    Args:
        model: the trained operator (a :class:`~probneural.train.NormalizedOperator` or any module
            mapping `(b, c_in, *spatial)` to `(b, c_out, *spatial)`); its weights are not changed.
        loader: the training ``(x, y)`` batches.
        structure: ``"last_layer"`` (default), ``"diagonal"``, ``"kfac"`` or ``"low_rank"``.
        prior_precision: ``δ``; ``None`` tunes it by the marginal likelihood.
        noise_variance: ``σ²`` in the operator's (normalised) units, one number or one per output
            channel (last layer only); ``None`` tunes it by the marginal likelihood.
        samples: posterior draws ``S`` behind the all-weights predictive (its rank): an unbiased
            estimate of ``J Σ Jᵀ`` whose pointwise variance has relative standard deviation
            ``√(2/S)`` (25 % at 32), from the same draws for every input.
        rank: eigenpairs for ``"low_rank"``.
        subset: training samples the ``"low_rank"`` Lanczos iterations see (the curvature is
            rescaled to the full data set).
        curvature_samples: Monte Carlo draws per datum for the ``"diagonal"`` and ``"kfac"`` curvature.
        seed: seed of every random draw (curvature estimates, Lanczos start, predictive draws).

    Returns:
        A :class:`LaplacePosterior`.
    """
    operator, x_normalizer, y_normalizer = normalized_parts(model)
    device, dtype = model_parameters(operator)
    batches = []
    for index, (x, y) in enumerate(loader):
        if not torch.isfinite(y).all():  # shapes are checked against the operator's output below
            raise ValueError(f"loader: batch {index} has NaN or Inf targets y")
        x, y = x.to(device, dtype), y.to(device, dtype)
        batches.append((x_normalizer.encode(x) if x_normalizer is not None else x,
                        y_normalizer.encode(y, "y") if y_normalizer is not None else y))
    if not batches:
        raise ValueError("loader: expected at least one (x, y) batch; got none")
    with switched_mode(operator, False):
        squared_errors, counts = _residual_statistics(operator, batches)
        curvature = _curvature(structure, operator, [x for x, _ in batches], rank=rank,
                               curvature_samples=curvature_samples, subset=subset, seed=seed)
    evidence = curvature.marginal_likelihood(squared_errors, counts)
    groups = evidence.counts.numel()
    fixed_noise = None
    if noise_variance is not None:
        fixed_noise = torch.as_tensor(noise_variance, dtype=_LINALG).reshape(-1)
        if fixed_noise.numel() == 1:
            fixed_noise = fixed_noise.expand(groups).clone()
        if fixed_noise.numel() != groups or not (fixed_noise > 0).all():
            raise ValueError(f"noise_variance: expected a positive number or {groups} positive values; "
                             f"got {noise_variance!r}")
    delta, sigma2 = evidence.maximise(prior_precision, fixed_noise)
    log_evidence = float(evidence(torch.tensor(delta, dtype=_LINALG), sigma2))
    return LaplacePosterior(model, structure, curvature, delta, sigma2, log_evidence, samples, seed)
