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
* ``pyro_nuts``: the No-U-Turn sampler on a fixed random subset of ``points`` training points,
  ``chains`` chains run one after another; the split-free Gelman–Rubin ``R̂`` of every weight
  is reported.

Predictions are posterior-predictive mixtures (:class:`MixturePrediction`): the head's output
for ``samples`` posterior draws of the weights, with the observation noise on each.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal, init_to_value
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.ops.stats import gelman_rubin
from torch import Tensor, nn

from probneural.operators.pointwise import Pointwise
from probneural.uq.heads import FrozenTrunk, TrainingFields, check_dtype, random_points, without_autocast
from probneural.uq.posterior import METHODS, Batches, Posterior
from probneural.uq.prediction import MixturePrediction
from probneural.validation import check_float, check_int

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


def _check_head(head: str, noise: str, prior_scale: float, samples: int, dtype: str) -> torch.dtype:
    if head not in HEADS:
        raise ValueError(f"head: expected one of {sorted(HEADS)}; got {head!r}")
    if noise not in NOISES:
        raise ValueError(f"noise: expected one of {list(NOISES)}; got {noise!r}")
    check_float("prior_scale", prior_scale, positive=True)
    check_int("samples", samples, 2)
    return check_dtype(dtype)


def _replayed(head: BayesianHead, trace: poutine.Trace) -> Callable[..., tuple[Tensor, Tensor]]:
    return lambda trunk, spatial: poutine.replay(head, trace=trace)(trunk, spatial)


def _conditioned(head: BayesianHead, values: dict[str, Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    return lambda trunk, spatial: poutine.condition(head, data=values)(trunk, spatial)


@METHODS.register("pyro_svi")
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
            study: the predictive mean's relative L2 rose 4.2 % over the operator's at 5e-3, 1.5 % at 1e-3).
        batch_size: training fields per step.
        points: grid points per field and step.
        samples: posterior draws per prediction.
        dtype: ``"float64"`` or ``"float32"``: the head's computations.
        seed: seed of Pyro's draws and the minibatch order.

    Returns:
        A :class:`PyroPosterior`.
    """
    dtype = _check_head(head, noise, prior_scale, samples, dtype)
    if guide not in GUIDES:
        raise ValueError(f"guide: expected one of {list(GUIDES)}; got {guide!r}")
    rank = check_int("rank", rank, 1)
    check_int("epochs", epochs, 0)
    check_float("lr", lr, positive=True)
    batch_size, points = check_int("batch_size", batch_size, 1), check_int("points", points, 1)
    if noise_variance is not None:
        noise_variance = check_float("noise_variance", noise_variance, positive=True)
        if noise == "heteroscedastic":
            raise ValueError("noise_variance: a fixed noise variance needs noise='homoscedastic'")
    trunk = FrozenTrunk(model, fourier_layer=fourier_layer)
    fields = trunk.collect(loader)
    spatial, sizes = tuple(fields.targets.shape[2:]), (fields.targets.shape[0], fields.points)
    generator = torch.Generator().manual_seed(seed)
    with pyro.get_param_store().scope() as state:
        pyro.set_rng_seed(seed)
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
        svi = SVI(model_fn, approximation, pyro.optim.ClippedAdam({"lr": lr, "lrd": decay}), Trace_ELBO())
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
@without_autocast()
def fit_pyro_nuts(
    model: nn.Module,
    loader: Batches,
    *,
    head: str = "readout",
    noise_variance: float | None = None,
    prior_scale: float = 1.0,
    points: int = 1024,
    warmup: int = 200,
    draws: int = 200,
    chains: int = 2,
    max_tree_depth: int = 6,
    samples: int = 32,
    dtype: str = "float64",
    seed: int = 0,
) -> PyroPosterior:
    """Bayesian head by NUTS on a fixed random subset of training points; see the module docstring.

    Args:
        model: the trained FNO (or ``NormalizedOperator`` around one); it is not modified.
        loader: the training ``(x, y)`` batches.
        head: ``"readout"`` (default; small) or ``"projection"``.
        noise_variance: homoscedastic noise variance in normalised units; ``None``: the operator's
            mean squared residual on the training set (over all output channels).
        prior_scale: prior standard deviation of every random weight.
        points: training points (over all fields and grid points) the sampler conditions on.
        warmup: warm-up (adaptation) steps per chain.
        draws: kept draws per chain.
        chains: chains, run one after another from different seeds (``>= 2`` for ``R̂``).
        max_tree_depth: NUTS's maximum tree depth (at most ``2^depth − 1`` gradient steps per draw).
        samples: posterior draws per prediction, spread evenly over all kept draws.
        dtype: ``"float64"`` or ``"float32"``.
        seed: seed of the subset and of the chains.

    Returns:
        A :class:`PyroPosterior` whose ``summary()`` holds ``r_hat_max``.
    """
    dtype = _check_head(head, "homoscedastic", prior_scale, samples, dtype)
    points, warmup = check_int("points", points, 1), check_int("warmup", warmup, 0)
    draws, chains = check_int("draws", draws, 1), check_int("chains", chains, 1)
    max_tree_depth = check_int("max_tree_depth", max_tree_depth, 1)
    trunk = FrozenTrunk(model)
    fields = trunk.collect(loader)
    spatial, sizes = tuple(fields.targets.shape[2:]), (fields.targets.shape[0], fields.points)
    generator = torch.Generator().manual_seed(seed)
    field_index, point_index = random_points(*sizes, points, generator)
    field_index, point_index = field_index.to(trunk.device), point_index.to(trunk.device)
    # the subset as one "field" of n points: trunk features `(1, width, n)`, targets `(1, c, n)`
    subset = TrainingFields(fields.trunk.flatten(2)[field_index, :, point_index].T.unsqueeze(0),
                            fields.targets.flatten(2)[field_index, :, point_index].T.unsqueeze(0))
    n = subset.targets.shape[-1]
    if noise_variance is None:
        noise_variance = float(trunk.residual_variance(fields).mean())
    noise_variance = check_float("noise_variance", noise_variance, positive=True)
    all_points = torch.arange(n, device=trunk.device)
    single = torch.zeros(1, dtype=torch.long, device=trunk.device)
    with pyro.get_param_store().scope() as state:
        bayesian = BayesianHead(trunk, head, "homoscedastic", noise_variance, prior_scale, dtype, learn_noise=False)

        if head == "readout":  # the hidden activations are fixed: compute them once, not at every gradient
            with torch.no_grad():
                hidden = bayesian.trunk.activation(bayesian.projection_hidden(subset.trunk.to(dtype)))
            noise = torch.full_like(subset.targets[:, :, :1], noise_variance, dtype=dtype)

            def model_fn() -> None:
                mean = bayesian.projection_out(hidden)
                with pyro.plate("points", n, dim=-1):
                    pyro.sample("y", dist.Normal(mean.mT, noise.mT.sqrt()).to_event(1), obs=subset.targets.to(dtype).mT)
        else:
            def model_fn() -> None:
                _likelihood(bayesian, subset.trunk, (n,), single, all_points, subset.targets, (1, n))

        kept: dict[str, list[Tensor]] = {}
        for chain in range(chains):
            pyro.set_rng_seed(seed + chain)
            initial = {name: value + 0.01 * prior_scale * torch.randn_like(value)
                       for name, value in bayesian.trained.items()}
            # a dense mass matrix: the read-out's weights are strongly correlated (the hidden features are),
            # which with a diagonal one drives every tree to its maximum depth
            kernel = NUTS(model_fn, full_mass=True, max_tree_depth=max_tree_depth)
            mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, initial_params=initial, disable_progbar=True)
            mcmc.run()
            for name, values in mcmc.get_samples().items():
                kept.setdefault(name, []).append(values)
    stacked = {name: torch.stack(values) for name, values in kept.items()}  # (chains, draws, *shape)
    r_hat = max(float(gelman_rubin(values.flatten(2)).max()) for values in stacked.values()) if chains > 1 else None
    flat = {name: values.flatten(0, 1) for name, values in stacked.items()}
    picks = torch.linspace(0, chains * draws - 1, samples).round().long()
    conditioned = [_conditioned(bayesian, {name: values[i] for name, values in flat.items()}) for i in picks]
    details = {"head": head, "noise_variance": noise_variance, "prior_scale": prior_scale, "points": n,
               "warmup": warmup, "draws": draws, "chains": chains, "r_hat_max": r_hat,
               "n_random_weights": sum(v.numel() for v in bayesian.trained.values())}
    return PyroPosterior(trunk, bayesian, conditioned, state, details)
