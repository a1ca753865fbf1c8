"""Pyro heads: a Bayesian projection (optionally with the last Fourier layer) on a frozen operator.

The trained FNO is split (:class:`~probneural.uq.heads.FrozenTrunk`): its trunk stays frozen and
the head becomes a ``PyroModule`` whose weights have Gaussian priors ``N(0, prior_scale²)``:

* ``head="readout"``: only the read-out ``projection_out`` is random; the model is linear in its
  weights given the frozen hidden activations (Bayesian linear regression at every point);
* ``head="projection"``: both layers of the pointwise projection are random;
* ``fourier_layer=True`` (SVI only): the last Fourier layer is random too, with independent
  Gaussian priors on the real and imaginary parts of its spectral weights (stored as their real
  view) and on its skip path.

In the operator's normalised units, ``y_c(x)_j ~ N(head(x)_{c,j}, σ²_{c,j})``, with the noise
homoscedastic (one variance per output channel) or heteroscedastic (``log σ²`` a pointwise
linear map of the frozen features). Noise parameters are point estimates: SVI maximises the
ELBO in them, starting from the trained operator's mean squared residual on the training set;
NUTS uses ``noise_variance`` or, by default, that residual.

* ``pyro_svi``: stochastic variational inference with ``AutoNormal`` (mean field) or
  ``AutoLowRankMultivariateNormal``, initialised at the trained weights; each step sees
  ``batch_size`` training fields and ``points`` random grid points of them, the likelihood
  scaled to the whole training set (Pyro's subsampling plates).
* ``pyro_nuts``: the No-U-Turn sampler for the read-out head, conditioned on every training
  point through the likelihood's sufficient statistics (:meth:`FrozenTrunk.readout_statistics`:
  a gradient costs ``O(c i²)``, not a pass over the data) and run in whitened coordinates
  (:class:`_WhitenedReadout`); ``chains`` chains, one after another, from dispersed starts; the
  Gelman–Rubin ``R̂`` of every weight is reported.

Predictions are posterior-predictive mixtures (:class:`MixturePrediction`): the head's output
for ``samples`` posterior draws of the weights, with the observation noise on each.
"""

from __future__ import annotations

import copy
import math
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import numpy as np

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal, init_to_value
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.ops.stats import gelman_rubin
from torch import Tensor, nn
from torch.distributions import constraints

from probneural.operators.pointwise import Pointwise
from probneural.uq.heads import FrozenTrunk, ReadoutStatistics, check_dtype, without_autocast
from probneural.uq.options import checked_options
from probneural.uq.posterior import METHODS, Batches, Posterior
from probneural.uq.prediction import MixturePrediction
from probneural.uq.training import seeded
from probneural.validation import check_float, check_int, warn_unused

__all__ = ["BayesianHead", "PyroPosterior", "fit_pyro_nuts", "fit_pyro_svi"]

HEADS = {"readout": ("projection_out",), "projection": ("projection_hidden", "projection_out")}
NOISES = ("homoscedastic", "heteroscedastic")
GUIDES = ("normal", "low_rank")


class BayesianHead(PyroModule):
    """The head with Gaussian priors on its random layers; see the module docstring.

    ``forward(trunk, spatial, points)`` maps a trunk output `(b, width, *grid)` to the head's
    mean `(b, c, p)` and noise variance (`(1, c, 1)` or `(b, c, p)`) at the grid points
    ``points`` `(p,)` (all points, `(b, c, P)`, when ``None``); each call draws the random weights
    once (or takes them from a guide or a trace being replayed).

    Args:
        trunk: the split operator (its head layers are copied, not changed).
        head: ``"readout"`` or ``"projection"``.
        noise: ``"homoscedastic"`` or ``"heteroscedastic"``.
        noise_variance: the noise variance in normalised units, one number or `(c,)`: fixed, or the
            starting value when learned (heteroscedastic: the starting value of every point).
        prior_scale: standard deviation of every weight prior.
        dtype: dtype of the head's computations.
        learn_noise: fit the homoscedastic noise (a ``PyroParam``) instead of keeping ``noise_variance``.
    """

    def __init__(self, trunk: FrozenTrunk, head: str, noise: str, noise_variance: float | Tensor,
                 prior_scale: float, dtype: torch.dtype, *, learn_noise: bool = True) -> None:
        super().__init__()
        self.trunk, self.dtype = trunk, dtype
        random = HEADS[head] + (("spectral", "skip") if trunk.fourier_layer else ())
        self.trained: dict[str, Tensor] = {}
        for name, layer in trunk.head_layers.items():
            layer = copy.deepcopy(layer).to(dtype).requires_grad_(False)
            if name not in random:
                _freeze(layer)
            else:
                pyro.nn.module.to_pyro_module_(layer)
                for parameter_name, value in list(layer.named_parameters(recurse=False)):
                    self.trained[f"{name}.{parameter_name}"] = value.detach().clone()
                    prior = dist.Normal(torch.zeros_like(value), prior_scale).to_event(value.dim())
                    setattr(layer, parameter_name, PyroSample(prior))
            setattr(self, name, layer)
        channels = trunk.operator.out_channels
        initial_log_noise = torch.as_tensor(noise_variance, dtype=dtype, device=trunk.device).log().expand(channels)
        initial_log_noise = initial_log_noise.clone()
        self.heteroscedastic = noise == "heteroscedastic"
        if self.heteroscedastic:
            log_noise = Pointwise(trunk.operator.config["width"], channels).to(dtype)
            with torch.no_grad():
                log_noise.weight.zero_()
                log_noise.bias.copy_(initial_log_noise)
            pyro.nn.module.to_pyro_module_(log_noise)  # its weights become Pyro parameters, fitted by SVI
            self.log_noise = log_noise
        elif learn_noise:
            self.log_noise_variance = PyroParam(initial_log_noise)
        else:
            self.register_buffer("log_noise_variance", initial_log_noise)

    def forward(self, trunk: Tensor, spatial: tuple[int, ...], points: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        trunk = trunk.to(self.dtype)
        if self.trunk.fourier_layer:
            features = self.trunk.operator.unpad(self.spectral(trunk) + self.skip(trunk), spatial)
            frozen = self.trunk.operator.unpad(trunk, spatial)
        else:
            features = frozen = trunk
        features, frozen = features.flatten(2), frozen.flatten(2)
        if points is not None:
            features, frozen = features[:, :, points], frozen[:, :, points]
        mean = self.projection_out(self.trunk.activation(self.projection_hidden(features)))
        if self.heteroscedastic:
            return mean, self.log_noise(frozen).exp()
        return mean, self.log_noise_variance.exp().view(1, -1, 1)


def _freeze(module: nn.Module) -> None:
    """Turn every parameter of ``module`` into a buffer: a frozen layer inside a ``PyroModule``."""
    for owner in module.modules():
        for name, value in list(owner.named_parameters(recurse=False)):
            delattr(owner, name)
            owner.register_buffer(name, value.detach())


def _likelihood(head: BayesianHead, trunk: Tensor, spatial: tuple[int, ...], fields: Tensor, points: Tensor,
                y: Tensor, sizes: tuple[int, int]) -> None:
    """Observe ``y`` `(b, c, p)` at the fields ``fields`` and grid ``points`` of a training set of ``sizes``."""
    mean, noise = head(trunk, spatial, points)
    noise = noise.expand_as(mean)
    with pyro.plate("fields", sizes[0], subsample=fields, dim=-2), \
            pyro.plate("points", sizes[1], subsample=points, dim=-1):
        pyro.sample("y", dist.Normal(mean.mT, noise.mT.sqrt()).to_event(1), obs=y.to(mean.dtype).mT)


class PyroPosterior(Posterior):
    """A fitted Pyro head: ``samples`` weight draws pushed through the head; see the module docstring.

    Attributes:
        head: the :class:`BayesianHead`.
        draws: one callable per posterior draw, running the head with that draw's weights.
        details: settings and diagnostics reported by :meth:`summary`.
    """

    def __init__(self, trunk: FrozenTrunk, head: BayesianHead, draws: list[Callable[..., tuple[Tensor, Tensor]]],
                 state: dict[str, Any], details: dict[str, Any]) -> None:
        self.trunk, self.head, self.draws, self.state, self.details = trunk, head, draws, state, details

    def summary(self) -> dict[str, Any]:
        return dict(self.details)

    @torch.no_grad()
    @without_autocast()
    def predict(self, x: Tensor) -> MixturePrediction:
        """Posterior-predictive mixture over the fields `(b, c, *spatial)` at inputs ``x`` (data units)."""
        trunk, spatial = self.trunk.trunk(x), tuple(x.shape[2:])
        centers, noise = [], None
        with pyro.get_param_store().scope(self.state):
            for draw in self.draws:
                mean, noise = draw(trunk, spatial)
                centers.append(mean)
        shape = (x.shape[0], self.trunk.operator.out_channels, *spatial)
        stacked = torch.stack(centers).reshape(len(centers), *shape).to(self.trunk.dtype)
        noise = noise.expand(x.shape[0], -1, math.prod(spatial)).reshape(shape).to(self.trunk.dtype)
        return self.trunk.to_data_units(MixturePrediction(stacked, noise))


def _check_head(options: dict[str, Any]) -> None:
    """The checks the Pyro heads share (``head`` and ``noise`` where the method has them)."""
    if options.get("head", "readout") not in HEADS:
        raise ValueError(f"head: expected one of {sorted(HEADS)}; got {options['head']!r}")
    noise = options.get("noise", "homoscedastic")
    if noise not in NOISES:
        raise ValueError(f"noise: expected one of {list(NOISES)}; got {noise!r}")
    options["prior_scale"] = check_float("prior_scale", options["prior_scale"], positive=True)
    options["samples"] = check_int("samples", options["samples"], 2)
    options["seed"] = check_int("seed", options["seed"], 0)
    check_dtype(options["dtype"])
    if options["noise_variance"] is not None:
        options["noise_variance"] = check_float("noise_variance", options["noise_variance"], positive=True)
        if noise == "heteroscedastic":
            raise ValueError("noise_variance: a fixed noise variance needs noise='homoscedastic'")


def _check_svi_options(options: dict[str, Any], defaults: Mapping[str, Any], on_posterior: bool) -> None:
    """The option check of :func:`fit_pyro_svi` (see :mod:`probneural.uq.options`)."""
    _check_head(options)
    if options["guide"] not in GUIDES:
        raise ValueError(f"guide: expected one of {list(GUIDES)}; got {options['guide']!r}")
    options["rank"] = check_int("rank", options["rank"], 1)
    options["epochs"] = check_int("epochs", options["epochs"], 0)
    options["lr"] = check_float("lr", options["lr"], positive=True)
    options["scale_lr"] = check_float("scale_lr", options["scale_lr"], positive=True)
    options["batch_size"] = check_int("batch_size", options["batch_size"], 1)
    options["points"] = check_int("points", options["points"], 1)
    warn_unused(options, defaults, ("rank",), used=options["guide"] == "low_rank", because="with guide='low_rank'")
    warn_unused(options, defaults, ("lr", "scale_lr", "batch_size", "points"), used=options["epochs"] > 0,
                  because="when training, with epochs > 0")


def _is_guide_scale(name: str) -> bool:
    """Whether the Pyro parameter ``name`` is a guide's (positive) scale: ``AutoNormal.scales.<site>`` or
    ``AutoLowRankMultivariateNormal.scale``; not a location, the low-rank factor or the noise."""
    return name.startswith("AutoNormal.scales.") or name == "AutoLowRankMultivariateNormal.scale"


def _check_nuts_options(options: dict[str, Any], defaults: Mapping[str, Any], on_posterior: bool) -> None:
    """The option check of :func:`fit_pyro_nuts` (see :mod:`probneural.uq.options`)."""
    _check_head(options)
    options["warmup"] = check_int("warmup", options["warmup"], 0)
    for name in ("draws", "chains", "max_tree_depth"):
        options[name] = check_int(name, options[name], 1)


def _replayed(head: BayesianHead, trace: poutine.Trace) -> Callable[..., tuple[Tensor, Tensor]]:
    return lambda trunk, spatial: poutine.replay(head, trace=trace)(trunk, spatial)


def _conditioned(head: BayesianHead, values: dict[str, Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    return lambda trunk, spatial: poutine.condition(head, data=values)(trunk, spatial)


@METHODS.register("pyro_svi")
@checked_options(_check_svi_options)
@without_autocast()
def fit_pyro_svi(
    model: nn.Module,
    loader: Batches,
    *,
    head: str = "projection",
    fourier_layer: bool = False,
    guide: str = "normal",
    rank: int = 8,
    noise: str = "homoscedastic",
    noise_variance: float | None = None,
    prior_scale: float = 1.0,
    epochs: int = 5,
    lr: float = 1e-3,
    scale_lr: float = 0.05,
    batch_size: int = 8,
    points: int = 512,
    samples: int = 32,
    dtype: str = "float64",
    seed: int = 0,
) -> PyroPosterior:
    """Bayesian head by stochastic variational inference; see the module docstring.

    Args:
        model: the trained FNO (or ``NormalizedOperator`` around one); it is not modified.
        loader: the training ``(x, y)`` batches.
        head: ``"projection"`` (both projection layers random) or ``"readout"`` (the last one).
        fourier_layer: also make the last Fourier layer random.
        guide: ``"normal"`` (``AutoNormal``) or ``"low_rank"`` (``AutoLowRankMultivariateNormal``).
        rank: rank of the low-rank guide.
        noise: ``"homoscedastic"`` or ``"heteroscedastic"``.
        noise_variance: fix the (homoscedastic) noise variance in normalised units instead of learning
            it; a learned noise starts at the operator's mean squared residual per output channel.
        prior_scale: prior standard deviation of every random weight.
        epochs: passes over the training fields.
        lr: initial learning rate of Adam (Pyro's ``ClippedAdam``), decayed geometrically to ``lr / 10``.
            Larger steps leave the variational means wandering around the trained weights (Darcy
            study: the predictive mean's relative L2 rose 4.2 % over the operator's at 5e-3, 1.4–1.6 % at 1e-3).
        scale_lr: initial learning rate of the guide's scales (the low-rank guide's diagonal part; its
            factor, which is not a log-scale, learns at ``lr``), decayed like ``lr``. The scales start
            at 1e-3 and must travel to the posterior's spread: Adam moves a log-scale by at most its
            learning rate per step, so at ``lr`` they would stay near their start (Darcy study, 625
            steps: within ×1.3, against a mean-field optimum 2–6 times larger), and the spread would
            be an artefact of the initialisation.
        batch_size: training fields per step.
        points: grid points per field and step.
        samples: posterior draws per prediction.
        dtype: ``"float64"`` or ``"float32"``: the head's computations.
        seed: seed of Pyro's draws and the minibatch order.

    Returns:
        A :class:`PyroPosterior`.
    """
    dtype = check_dtype(dtype)
    trunk = FrozenTrunk(model, fourier_layer=fourier_layer)
    fields = trunk.collect(loader)
    spatial, sizes = tuple(fields.targets.shape[2:]), (fields.targets.shape[0], fields.points)
    generator = torch.Generator().manual_seed(seed)
    with pyro.get_param_store().scope() as state, _pyro_seeded(seed, trunk.device):
        start = trunk.residual_variance(fields) if noise_variance is None else noise_variance
        bayesian = BayesianHead(trunk, head, noise, start, prior_scale, dtype, learn_noise=noise_variance is None)

        def model_fn(trunk_batch: Tensor, field_index: Tensor, point_index: Tensor, y: Tensor) -> None:
            _likelihood(bayesian, trunk_batch, spatial, field_index, point_index, y, sizes)

        init = init_to_value(values=bayesian.trained)
        if guide == "normal":
            approximation = AutoNormal(model_fn, init_loc_fn=init, init_scale=1e-3)
        else:
            approximation = AutoLowRankMultivariateNormal(model_fn, init_loc_fn=init, init_scale=1e-3, rank=rank)
        steps = epochs * math.ceil(sizes[0] / batch_size)
        decay = 0.1 ** (1 / max(steps, 1))  # the step size falls to lr / 10 over training
        rates = lambda name: {"lr": scale_lr if _is_guide_scale(name) else lr, "lrd": decay}  # noqa: E731
        svi = SVI(model_fn, approximation, pyro.optim.ClippedAdam(rates), Trace_ELBO())
        losses = []
        for _ in range(epochs):
            total = 0.0
            for batch in torch.randperm(sizes[0], generator=generator).split(batch_size):
                point_index = torch.randperm(sizes[1], generator=generator)[:points].to(trunk.device)
                batch = batch.to(trunk.device)
                y = fields.targets[batch].flatten(2)[:, :, point_index]
                total += svi.step(fields.trunk[batch], batch, point_index, y)
            losses.append(total / sizes[0])
        draws = []
        for _ in range(samples):
            guide_trace = poutine.trace(approximation).get_trace(
                fields.trunk[:1], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                fields.targets[:1].flatten(2)[:, :, :1])
            draws.append(_replayed(bayesian, guide_trace))
    details = {"head": head, "fourier_layer": fourier_layer, "guide": guide, "noise": noise,
               "prior_scale": prior_scale, "epochs": epochs, "train_losses": losses,
               "n_random_weights": sum(v.numel() for v in bayesian.trained.values())}
    return PyroPosterior(trunk, bayesian, draws, state, details)


@METHODS.register("pyro_nuts")
@checked_options(_check_nuts_options)
@without_autocast()
def fit_pyro_nuts(
    model: nn.Module,
    loader: Batches,
    *,
    noise_variance: float | None = None,
    prior_scale: float = 1.0,
    warmup: int = 200,
    draws: int = 200,
    chains: int = 4,
    max_tree_depth: int = 6,
    samples: int = 32,
    dtype: str = "float64",
    seed: int = 0,
) -> PyroPosterior:
    """Bayesian read-out by NUTS, conditioned on every training point; see the module docstring.

    Args:
        model: the trained FNO (or ``NormalizedOperator`` around one); it is not modified.
        loader: the training ``(x, y)`` batches.
        noise_variance: homoscedastic noise variance in normalised units (every output channel);
            ``None``: the operator's mean squared residual on the training set, per output channel.
        prior_scale: prior standard deviation of every random weight.
        warmup: warm-up (step-size adaptation) steps per chain.
        draws: kept draws per chain.
        chains: chains, run one after another from different seeds and starting points (``>= 2``
            for ``R̂``).
        max_tree_depth: NUTS's maximum tree depth (at most ``2^depth − 1`` gradient steps per draw).
        samples: posterior draws per prediction, spread evenly over all kept draws.
        dtype: ``"float64"`` or ``"float32"``: the sampler's and the head's computations.
        seed: seed of the chains.

    Returns:
        A :class:`PyroPosterior` whose ``summary()`` holds ``r_hat_max`` (over every weight), each
        chain's adapted ``step_sizes`` and its number of ``divergences``.
    """
    dtype = check_dtype(dtype)
    trunk = FrozenTrunk(model)
    statistics = trunk.readout_statistics(loader)
    channels = statistics.squares.shape[0]
    if noise_variance is None:
        noise = statistics.squares / statistics.count
    else:
        noise = torch.full((channels,), noise_variance, dtype=torch.float64)
    with pyro.get_param_store().scope() as state, _pyro_seeded(seed, trunk.device):
        bayesian = BayesianHead(trunk, "readout", "homoscedastic", noise, prior_scale, dtype, learn_noise=False)
        whitened = _WhitenedReadout(statistics, bayesian.trained, noise, prior_scale, dtype)
        kept, step_sizes, divergences = [], [], []
        for chain in range(chains):
            pyro.set_rng_seed(seed + chain)
            # dispersed starts: the trained weights plus a draw of the posterior's covariance
            start = {"z": torch.randn(whitened.shape, dtype=dtype, device=trunk.device)}
            kernel = NUTS(whitened.model, max_tree_depth=max_tree_depth, max_plate_nesting=0,
                          init_strategy=init_to_value(values=start))
            mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
            mcmc.run()
            kept.append(mcmc.get_samples()["z"])
            step_sizes.append(kernel.step_size)
            divergences.append(len(mcmc.diagnostics()["divergences"]["chain 0"]))
    stacked = whitened.weights(torch.stack(kept))  # (chains, draws, c, i + 1) weights
    r_hat = float(gelman_rubin(stacked.flatten(2)).max()) if chains > 1 else None
    picks = torch.linspace(0, chains * draws - 1, samples).round().long()
    weights = stacked.flatten(0, 1)[picks]  # (samples, c, i + 1)
    conditioned = [_conditioned(bayesian, whitened.named(w)) for w in weights]
    details = {"head": "readout", "noise_variance": noise.tolist(), "prior_scale": prior_scale,
               "points": statistics.count, "warmup": warmup, "draws": draws, "chains": chains,
               "r_hat_max": r_hat, "step_sizes": step_sizes, "divergences": divergences,
               "n_random_weights": whitened.shape.numel()}
    return PyroPosterior(trunk, bayesian, conditioned, state, details)


@contextmanager
def _pyro_seeded(seed: int, device: torch.device) -> Iterator[None]:
    """``pyro.set_rng_seed(seed)`` (torch, NumPy and ``random``) within; the caller's generators are restored
    afterwards, so a fit does not change the random stream around it. The block may reseed (NUTS per chain)."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with seeded(seed, device):
        pyro.set_rng_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


class _WhitenedReadout:
    """The read-out's exact log posterior over ``z``, with weights ``w_c = ŵ_c + L_c⁻ᵀ z_c``.

    ``L_c L_cᵀ = A/σ_c² + I/s²`` is the (constant) Hessian of the negative log posterior of channel
    ``c`` (:class:`~probneural.uq.heads.ReadoutStatistics` ``A``, prior standard deviation ``s``),
    ``ŵ`` the trained weights: in ``z`` the posterior is a unit-covariance Gaussian, which NUTS
    crosses in a few leapfrog steps whatever the conditioning of ``A`` (the read-out's inputs
    are strongly correlated; on the Darcy study the sampler in the weights themselves, with an
    adapted dense mass matrix, had not mixed after 200 warm-up steps: R̂ 5.7).

    Args:
        statistics: sums over the training points.
        trained: the trained read-out's ``"projection_out.weight"`` `(c, i)` and ``".bias"`` `(c,)`.
        noise: `(c,)` noise variances.
        prior_scale: ``s``.
        dtype: dtype of ``z`` and of the weights.
    """

    def __init__(self, statistics: ReadoutStatistics, trained: dict[str, Tensor], noise: Tensor,
                 prior_scale: float, dtype: torch.dtype) -> None:
        weight, bias = trained["projection_out.weight"], trained["projection_out.bias"]
        device = weight.device
        self.start = torch.cat((weight, bias[:, None]), dim=1).to(dtype)  # (c, i + 1)
        self.shape = self.start.shape
        self.noise = noise.to(device, dtype)
        self.prior_scale = prior_scale
        gram = statistics.gram.to(device)  # float64
        self.gram = gram.to(dtype)
        self.gradient = statistics.cross.T.to(device, dtype)  # (c, i + 1): g_c = Σ φ̃ r_c
        # factorised in float64 whatever ``dtype``: A sums millions of points and is ill-conditioned
        eye = torch.eye(self.shape[1], dtype=torch.float64, device=device)
        precision = gram / noise.to(device, torch.float64)[:, None, None] + eye / prior_scale**2
        self.cholesky = torch.linalg.cholesky(precision).to(dtype)  # (c, i + 1, i + 1)

    def _step(self, z: Tensor) -> Tensor:
        """``L⁻ᵀ z``: the weights' offset `(..., c, i + 1)` from the trained ones."""
        return torch.linalg.solve_triangular(self.cholesky.mT, z.unsqueeze(-1), upper=True).squeeze(-1)

    def weights(self, z: Tensor) -> Tensor:
        """Weights `(..., c, i + 1)` of whitened coordinates ``z`` `(..., c, i + 1)`."""
        return self.start + self._step(z)

    def named(self, w: Tensor) -> dict[str, Tensor]:
        """The read-out's weight `(c, i)` and bias `(c,)` sites of weights ``w`` `(c, i + 1)`."""
        return {"projection_out.weight": w[:, :-1], "projection_out.bias": w[:, -1]}

    def model(self) -> None:
        """Pyro model: ``z`` with the posterior density ``p(y | w(z)) p(w(z))`` (up to a constant)."""
        z = pyro.sample("z", dist.ImproperUniform(constraints.real, (), self.shape))
        step = self._step(z)
        squared_error = 2 * (step * self.gradient).sum(-1) + ((step @ self.gram) * step).sum(-1)  # (c,) minus Σ r²
        log_likelihood = -0.5 * (squared_error / self.noise).sum()
        log_prior = -0.5 * (self.start + step).square().sum() / self.prior_scale**2
        pyro.factor("log_posterior", log_likelihood + log_prior)
