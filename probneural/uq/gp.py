"""GPyTorch heads: a Gaussian process over a frozen operator's per-point features (``"gp_exact"``, ``"gp_svgp"``).

Each grid point ``j`` of an input ``x`` has the operator's last hidden representation
``φ_j(x)`` (:meth:`~probneural.operators.FNO.features`), optionally with its coordinates. In the
operator's normalised units the head models

    ``y_c(x)_j = m_c(φ_j(x)) + f_c(φ_j(x)) + ε_c``,   ``ε_c ~ N(0, σ_c²)``,

with ``m`` the operator's own projection (the GP corrects the trained prediction instead of
relearning it) and ``f`` Gaussian processes with Matérn-5/2 ARD kernels on the standardised
inputs. Kernel hyperparameters and noise maximise the (variational) marginal likelihood; with
``joint=True`` the projection ``m`` is trained with them, otherwise it stays frozen.

* ``gp_exact``: one exact GP per output channel on a random subset of ``points`` training points
  (its cost is cubic in them; predictions cost ``points²`` per grid point).
* ``gp_svgp``: a sparse variational GP (Hensman et al. 2013) on ``inducing`` learned inducing
  points, trained by minibatches over every point of the training set (natural gradients for the
  variational distribution, Adam for the rest); several output channels are ``latents`` GPs
  mixed linearly (the linear model of coregionalisation, LMC).

Both reduce to latent GPs ``g_q`` with ``f_c = Σ_q a_qc g_q`` (for ``gp_exact``, ``a = I``) whose
posterior at test inputs ``X*`` is, with ``K* = k_q(X*, Z)`` against anchor inputs ``Z`` (training
or inducing points), mean ``K* w_q`` and covariance ``k_q(X*, X*) − K* M_q K*ᵀ``:

* exact: ``w = (K + σ²I)⁻¹ r``, ``M = (K + σ²I)⁻¹`` (``r`` the residuals ``y − m``);
* SVGP (whitened, ``K_uu = L Lᵀ``, ``q(v) = N(μ, S)``): ``w = L⁻ᵀ μ``, ``M = L⁻ᵀ (I − S) L⁻¹``.

Predictions are Gaussian over whole fields (:class:`GaussianPrediction`): exact marginal means
and variances, plus a factor ``K* W_q`` of rank ``rank`` per latent GP (exact: ``K⁻¹ − (K + σ²I)⁻¹``
on the eigendirections of ``K`` with the largest eigenvalues ``λ``, which carry the most
posterior covariance at the anchors, ``λσ²/(λ + σ²)`` each; SVGP: the leading eigendirections of
``L⁻ᵀ S L⁻¹``) so joint draws are coherent
across the field; the rest of the variance is on the diagonal. All posterior linear algebra
runs in ``dtype`` (float64 by default) whatever the operator's precision, with autocast off
(:func:`~probneural.uq.heads.without_autocast`) even when the caller runs under mixed precision.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

with warnings.catch_warnings():  # gpytorch 1.15 calls the deprecated torch.jit.script on import
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
    import gpytorch

from probneural.operators.fno import positional_grid
from probneural.uq.heads import FrozenTrunk, TrainingFields, check_dtype, random_points, without_autocast
from probneural.uq.options import checked_options
from probneural.uq.posterior import METHODS, Batches, Posterior
from probneural.uq.prediction import GaussianPrediction
from probneural.validation import check_float, check_int, warn_unused

__all__ = ["GPPosterior", "fit_gp_exact", "fit_gp_svgp"]

# Diagonal jitter on kernel matrices before a Cholesky factorisation (gpytorch's defaults).
_JITTER = {torch.float64: 1e-6, torch.float32: 1e-4}


def _kernel(dims: int, batch: torch.Size) -> gpytorch.kernels.Kernel:
    kernel = gpytorch.kernels.ScaleKernel(
        gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=dims, batch_shape=batch), batch_shape=batch
    )
    kernel.base_kernel.lengthscale = math.sqrt(dims)  # standardised inputs: typical distances are ~√dims
    return kernel


class _PointInputs(nn.Module):
    """GP inputs and the projection mean ``m`` of grid points, from trunk features `(b, width, *spatial)`.

    Inputs are each point's features and, with ``coordinates``, its coordinates ``i / (n − 1)``,
    standardised with the training points' mean and standard deviation, in ``dtype``.
    """

    def __init__(self, trunk: FrozenTrunk, coordinates: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.trunk = trunk
        self.coordinates = coordinates
        self.dtype = dtype
        self.projection = nn.ModuleDict(trunk.head_layers)
        self.center: Tensor | None = None
        self.spread: Tensor | None = None

    def raw(self, features: Tensor, fields: Tensor, points: Tensor) -> Tensor:
        """`(n, d)` unstandardised inputs of the points ``points`` of fields ``fields`` (index tensors `(n,)`)."""
        values = features.flatten(2)[fields, :, points]
        if self.coordinates:
            values = torch.cat((values, self._grid(features)[:, points].T), dim=1)
        return values.to(self.dtype)

    def field(self, features: Tensor) -> Tensor:
        """`(b, P, d)` standardised inputs of every point of every field."""
        values = features.flatten(2).mT
        if self.coordinates:
            values = torch.cat((values, self._grid(features).T.expand(values.shape[0], -1, -1)), dim=2)
        return self.standardise(values.to(self.dtype))

    @staticmethod
    def _grid(features: Tensor) -> Tensor:
        return positional_grid(features[:1], "nodes").flatten(2)[0]  # (dim, P)

    def standardise(self, raw: Tensor) -> Tensor:
        """`(..., d)` raw inputs standardised; the first call (on training points) fixes the centre and spread."""
        if self.center is None:
            points = raw.reshape(-1, raw.shape[-1])
            self.center, self.spread = points.mean(0), points.std(0).clamp_min(1e-12)
        return (raw - self.center) / self.spread

    def mean(self, features: Tensor) -> Tensor:
        """The projection ``m``: `(b, width, *spatial)` → `(b, c, *spatial)` in ``dtype``."""
        hidden = self.trunk.hidden_projection(features.to(self.dtype), dict(self.projection))
        return self.projection["projection_out"](hidden).to(self.dtype)

    def point_mean(self, features: Tensor, fields: Tensor, points: Tensor) -> Tensor:
        """`(n, c)` projection mean at the given (field, point) pairs."""
        values = features.flatten(2)[fields, :, points]  # (n, width)
        return self.mean(values.T.unsqueeze(0))[0].T


class _LatentPosterior:
    """Posterior of latent GPs ``g_q`` and their mixing into output channels; see the module docstring.

    Args:
        kernel: batched over ``Q`` latents.
        anchors: `(Q, n, d)` training or inducing inputs.
        weights: `(Q, n)` ``w_q``.
        reduction: `(Q, n, n)` ``M_q``.
        factor: `(Q, n, r)` ``W_q``.
        mixing: `(Q, c)` ``a``.
        noise: `(c,)` observation noise variances.
    """

    def __init__(self, kernel: gpytorch.kernels.Kernel, anchors: Tensor, weights: Tensor, reduction: Tensor,
                 factor: Tensor, mixing: Tensor, noise: Tensor) -> None:
        self.kernel, self.anchors, self.weights = kernel, anchors, weights
        self.reduction, self.factor, self.mixing, self.noise = reduction, factor, mixing, noise

    @torch.no_grad()
    def field(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residual mean `(c, P)`, predictive variance `(c, P)` and factor `(Q r, c, P)` at `(P, d)` inputs."""
        q = self.anchors.shape[0]
        cross = self.kernel(inputs.expand(q, *inputs.shape), self.anchors).to_dense()  # (Q, P, n)
        prior = self.kernel(inputs.expand(q, *inputs.shape), diag=True)  # (Q, P)
        mean = (cross @ self.weights.unsqueeze(-1)).squeeze(-1)  # (Q, P)
        variance = prior - ((cross @ self.reduction) * cross).sum(-1)
        factor = cross @ self.factor  # (Q, P, r)
        mixing = self.mixing
        out_mean = mixing.T @ mean  # (c, P)
        out_variance = (mixing.T**2) @ variance.clamp_min(0.0)
        out_factor = factor.permute(0, 2, 1).unsqueeze(2) * mixing[:, None, :, None]  # (Q, r, c, P)
        out_factor = out_factor.reshape(-1, *out_factor.shape[2:])
        diagonal = (out_variance - out_factor.square().sum(0)).clamp_min(0.0) + self.noise[:, None]
        return out_mean, diagonal, out_factor


def _initialise(kernel: gpytorch.kernels.Kernel, likelihood: gpytorch.likelihoods.Likelihood,
                residuals: Tensor) -> None:
    """Start outputscale at the residuals' variance per channel `(n, c)` and the noise at half of it.

    Lengthscales start at ``√d`` (:func:`_kernel`). With several channels and LMC latents the
    scales start at the mean variance.
    """
    variance = residuals.var(dim=0).clamp_min(1e-12)  # (c,)
    scale = kernel.outputscale
    kernel.outputscale = variance if scale.numel() == variance.numel() else variance.mean().expand_as(scale)
    noise = likelihood.task_noises if hasattr(likelihood, "task_noises") else likelihood.noise
    half = (variance / 2).reshape(noise.shape) if noise.numel() == variance.numel() else variance.mean() / 2
    if hasattr(likelihood, "task_noises"):
        likelihood.task_noises = half
    else:
        likelihood.noise = half


def _top_factor(matrix: Tensor, rank: int, transform: Tensor | None = None) -> Tensor:
    """`(Q, n, r)` ``T V_r Λ_r^{1/2}`` from the top ``rank`` eigenpairs of symmetric PSD `(Q, m, m)` ``matrix``."""
    values, vectors = torch.linalg.eigh(matrix)
    r = min(rank, values.shape[-1])
    values, vectors = values[..., -r:].clamp_min(0.0), vectors[..., -r:]
    root = vectors * values.sqrt().unsqueeze(-2)
    return root if transform is None else transform @ root


class GPPosterior(Posterior):
    """A fitted GP head; see the module docstring.

    Attributes:
        inputs: the point inputs and projection mean.
        latent: the latent GPs' posterior.
        details: hyperparameters and settings reported by :meth:`summary`.
    """

    def __init__(self, trunk: FrozenTrunk, inputs: _PointInputs, latent: _LatentPosterior,
                 details: dict[str, Any]) -> None:
        self.trunk, self.inputs, self.latent, self.details = trunk, inputs, latent, details

    def summary(self) -> dict[str, Any]:
        return dict(self.details)

    @torch.no_grad()
    @without_autocast()
    def predict(self, x: Tensor) -> GaussianPrediction:
        """Gaussian over the fields `(b, c, *spatial)` at inputs ``x`` `(b, c_in, *spatial)` (data units)."""
        features = self.trunk.trunk(x)
        spatial = tuple(x.shape[2:])
        operator_mean = self.inputs.mean(features)  # (b, c, *spatial)
        inputs = self.inputs.field(features)  # (b, P, d)
        means, diagonals, factors = [], [], []
        for field in inputs:
            mean, diagonal, factor = self.latent.field(field)
            means.append(mean)
            diagonals.append(diagonal)
            factors.append(factor)
        b, c = operator_mean.shape[:2]
        dtype = self.trunk.dtype
        mean = (operator_mean + torch.stack(means).reshape(b, c, *spatial)).to(dtype)
        diagonal = torch.stack(diagonals).reshape(b, c, *spatial).to(dtype)
        factor = torch.stack(factors).reshape(b, -1, c, *spatial).to(dtype)
        return self.trunk.to_data_units(GaussianPrediction(mean, diagonal, factor))


def _training_points(trunk: FrozenTrunk, loader: Batches, coordinates: bool, dtype: torch.dtype
                     ) -> tuple[TrainingFields, _PointInputs]:
    fields = trunk.collect(loader)
    return fields, _PointInputs(trunk, coordinates, dtype).to(dtype)


def _check_common(options: dict[str, Any], defaults: Mapping[str, Any], training: tuple[str, ...]) -> None:
    """The checks the GP heads share; ``training`` names the options only their training reads."""
    options["rank"] = check_int("rank", options["rank"], 1)
    options["lr"] = check_float("lr", options["lr"], positive=True)
    options["seed"] = check_int("seed", options["seed"], 0)
    check_dtype(options["dtype"])
    warn_unused(options, defaults, training, used=options["epochs"] > 0, because="when training, with epochs > 0")


def _check_exact_options(options: dict[str, Any], defaults: Mapping[str, Any], on_posterior: bool) -> None:
    """The option check of :func:`fit_gp_exact` (see :mod:`probneural.uq.options`)."""
    options["points"] = check_int("points", options["points"], 2)
    options["epochs"] = check_int("epochs", options["epochs"], 0)
    _check_common(options, defaults, ("lr", "joint"))


def _check_sparse_options(options: dict[str, Any], defaults: Mapping[str, Any], on_posterior: bool) -> None:
    """The option check of :func:`fit_gp_svgp` (see :mod:`probneural.uq.options`)."""
    options["inducing"] = check_int("inducing", options["inducing"], 1)
    options["batch_points"] = check_int("batch_points", options["batch_points"], 1)
    options["natural_lr"] = check_float("natural_lr", options["natural_lr"], positive=True)
    options["epochs"] = check_float("epochs", options["epochs"], nonnegative=True)
    if options["latents"] is not None:
        options["latents"] = check_int("latents", options["latents"], 1)
    _check_common(options, defaults,
                  ("lr", "natural_lr", "batch_points", "joint", "learn_inducing", "hyperparameters"))


class _ExactModel(gpytorch.models.ExactGP):
    def __init__(self, inputs: Tensor, targets: Tensor, likelihood: gpytorch.likelihoods.Likelihood) -> None:
        super().__init__(inputs, targets, likelihood)
        batch = torch.Size([targets.shape[0]])
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=batch)
        self.covar_module = _kernel(inputs.shape[-1], batch)

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@METHODS.register("gp_exact")
@checked_options(_check_exact_options)
@without_autocast()
def fit_gp_exact(
    model: nn.Module,
    loader: Batches,
    *,
    points: int = 1024,
    coordinates: bool = False,
    joint: bool = False,
    epochs: int = 100,
    lr: float = 0.05,
    rank: int = 32,
    dtype: str = "float64",
    seed: int = 0,
) -> GPPosterior:
    """Exact GP head on a random subset of training points; see the module docstring.

    Args:
        model: the trained FNO (or ``NormalizedOperator`` around one); it is not modified.
        loader: the training ``(x, y)`` batches.
        points: training points (over all fields and grid points) the GP conditions on.
        coordinates: append each point's coordinates to its features.
        joint: train the projection mean with the hyperparameters (else it stays frozen).
        epochs: Adam iterations on the exact marginal likelihood (each sees all ``points``).
        lr: Adam's learning rate.
        rank: rank of each channel's joint-covariance factor.
        dtype: ``"float64"`` or ``"float32"``: the GP's linear algebra.
        seed: seed of the point subset.

    Returns:
        A :class:`GPPosterior`.
    """
    dtype = check_dtype(dtype)
    trunk = FrozenTrunk(model)
    fields, inputs = _training_points(trunk, loader, coordinates, dtype)
    generator = torch.Generator().manual_seed(seed)
    field_index, point_index = random_points(fields.targets.shape[0], fields.points, points, generator)
    field_index, point_index = field_index.to(trunk.device), point_index.to(trunk.device)
    x = inputs.standardise(inputs.raw(fields.trunk, field_index, point_index))  # (n, d)
    y = fields.targets.flatten(2)[field_index, :, point_index].to(dtype)  # (n, c)

    def residuals() -> Tensor:
        return (y - inputs.point_mean(fields.trunk, field_index, point_index)).T  # (c, n)

    channels = y.shape[1]
    likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=torch.Size([channels])).to(trunk.device, dtype)
    with torch.no_grad():
        initial = residuals()
    gp = _ExactModel(x.expand(channels, *x.shape), initial, likelihood).to(trunk.device, dtype)
    _initialise(gp.covar_module, likelihood, initial.T)
    parameters = list(gp.parameters()) + (list(inputs.projection.parameters()) if joint else [])
    inputs.projection.requires_grad_(joint)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, gp)
    gp.train()
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        targets = residuals() if joint else initial
        loss = -mll(gp(*gp.train_inputs), targets).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    gp.eval()
    inputs.projection.requires_grad_(False)
    with torch.no_grad():
        targets = residuals()
        noise = likelihood.noise.reshape(channels).detach()
        kernel_matrix = gp.covar_module(gp.train_inputs[0]).to_dense()  # (c, n, n)
        jitter = _JITTER[dtype] * torch.eye(x.shape[0], dtype=dtype, device=x.device)
        noisy = kernel_matrix + noise[:, None, None] * torch.eye(x.shape[0], dtype=dtype, device=x.device)
        cholesky = torch.linalg.cholesky(noisy + jitter)
        weights = torch.cholesky_solve(targets.unsqueeze(-1), cholesky).squeeze(-1)
        reduction = torch.cholesky_inverse(cholesky)
        # K⁻¹ − (K + σ²I)⁻¹ = U diag(σ² / (λ (λ + σ²))) Uᵀ; at the anchors a direction adds λσ² / (λ + σ²)
        # to the covariance (K U diag(·) Uᵀ K), increasing in λ: keep those of K's largest λ
        values, vectors = torch.linalg.eigh(kernel_matrix + jitter)
        r = min(rank, x.shape[0])
        values, vectors = values[..., -r:].clamp_min(_JITTER[dtype]), vectors[..., -r:]
        scales = (noise[:, None] / (values * (values + noise[:, None]))).sqrt()
        factor = vectors * scales.unsqueeze(-2)
    latent = _LatentPosterior(gp.covar_module, gp.train_inputs[0], weights, reduction, factor,
                              torch.eye(channels, dtype=dtype, device=x.device), noise)
    details = {"points": int(x.shape[0]), "joint": joint, "coordinates": coordinates, "epochs": epochs,
               "noise_variance": noise.tolist(), "outputscale": gp.covar_module.outputscale.detach().tolist(),
               "final_loss": losses[-1] if losses else None, "rank": r}
    return GPPosterior(trunk, inputs, latent, details)


class _SparseModel(gpytorch.models.ApproximateGP):
    def __init__(self, inducing: Tensor, channels: int, latents: int, learn_inducing: bool) -> None:
        batch = torch.Size([latents]) if channels > 1 else torch.Size([])
        distribution = gpytorch.variational.NaturalVariationalDistribution(inducing.shape[-2], batch_shape=batch)
        strategy = gpytorch.variational.VariationalStrategy(
            self, inducing, distribution, learn_inducing_locations=learn_inducing
        )
        if channels > 1:
            strategy = gpytorch.variational.LMCVariationalStrategy(
                strategy, num_tasks=channels, num_latents=latents, latent_dim=-1
            )
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=batch)
        self.covar_module = _kernel(inducing.shape[-1], batch)

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _minibatches(total: int, size: int, epochs: float, generator: torch.Generator) -> Iterator[list[Tensor]]:
    """Minibatches of indices into ``total`` points for ``epochs`` passes: one list of `(≤ size,)` index
    tensors per (possibly partial, last) pass, each pass a fresh random permutation."""
    steps = math.ceil(epochs * total / size)
    per_pass = math.ceil(total / size)
    while steps > 0:
        batches = torch.randperm(total, generator=generator).split(size)[: min(steps, per_pass)]
        steps -= len(batches)
        yield list(batches)


@METHODS.register("gp_svgp")
@checked_options(_check_sparse_options)
@without_autocast()
def fit_gp_svgp(
    model: nn.Module,
    loader: Batches,
    *,
    inducing: int = 256,
    latents: int | None = None,
    coordinates: bool = False,
    joint: bool = False,
    learn_inducing: bool = True,
    hyperparameters: bool = True,
    epochs: float = 0.25,
    lr: float = 0.01,
    natural_lr: float = 0.1,
    batch_points: int = 4096,
    rank: int = 32,
    dtype: str = "float64",
    seed: int = 0,
    inducing_inputs: Tensor | None = None,
) -> GPPosterior:
    """Sparse variational GP head trained by minibatches over every training point; see the module docstring.

    Args:
        model: the trained FNO (or ``NormalizedOperator`` around one); it is not modified.
        loader: the training ``(x, y)`` batches.
        inducing: inducing points, initialised at random training points.
        latents: latent GPs ``Q`` mixed into the output channels (LMC); default: one per channel.
            Ignored for a single output channel.
        coordinates: append each point's coordinates to its features.
        joint: train the projection mean with the variational parameters and hyperparameters.
        learn_inducing: optimise the inducing inputs (else they stay where initialised).
        hyperparameters: optimise kernel and noise (else they keep their initial values: outputscale
            the residuals' variance, noise half of it, lengthscales ``√d``, as ``gp_exact`` with
            ``epochs=0``). The variational distribution, the inducing inputs (``learn_inducing``)
            and, for several channels, the LMC mixing are fitted either way.
        epochs: passes over all training points, fractional allowed (``0.25``: a random quarter of
            them, each once). Neighbouring grid points of a field carry nearly the same information,
            so a fraction of a pass fits about as well at a fraction of the cost (on the Darcy study a quarter
            pass scored as half a pass did).
        lr: Adam's learning rate for the hyperparameters (and the projection with ``joint``).
        natural_lr: step of the natural-gradient updates of the variational distribution
            (Salimbeni et al. 2018); ``1`` solves for the optimal ``q`` of a full batch in one step.
        batch_points: training points per step.
        rank: rank of each latent GP's joint-covariance factor.
        dtype: ``"float64"`` or ``"float32"``: the GP's linear algebra.
        seed: seed of the inducing initialisation and the minibatch order.
        inducing_inputs: `(m, d)` inducing inputs (features, then coordinates if used) to start from
            instead of ``inducing`` random training points; e.g. every training point, which makes the
            SVGP's optimum the exact GP.

    Returns:
        A :class:`GPPosterior`.
    """
    dtype = check_dtype(dtype)
    trunk = FrozenTrunk(model)
    fields, inputs = _training_points(trunk, loader, coordinates, dtype)
    n_fields, per_field = fields.targets.shape[0], fields.points
    channels = fields.targets.shape[1]
    latents = channels if latents is None or channels == 1 else latents
    generator = torch.Generator().manual_seed(seed)
    device = trunk.device
    # standardisation from a random sample of points (at most 65536)
    sample_fields, sample_points = random_points(n_fields, per_field, 65536, generator)
    inputs.standardise(inputs.raw(fields.trunk, sample_fields.to(device), sample_points.to(device)))
    if inducing_inputs is None:
        start_fields, start_points = random_points(n_fields, per_field, inducing, generator)
        start = inputs.standardise(inputs.raw(fields.trunk, start_fields.to(device), start_points.to(device)))
    else:
        if inducing_inputs.dim() != 2 or inducing_inputs.shape[1] != inputs.center.shape[0]:
            raise ValueError(f"inducing_inputs: expected shape (m, {inputs.center.shape[0]}); "
                             f"got {tuple(inducing_inputs.shape)}")
        start = inputs.standardise(inducing_inputs.to(device, dtype))
    if channels > 1:
        start = start.expand(latents, *start.shape).clone()
    gp = _SparseModel(start, channels, latents, learn_inducing).to(device, dtype)
    if channels == 1:
        likelihood = gpytorch.likelihoods.GaussianLikelihood()
    else:
        likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=channels, has_global_noise=False)
    likelihood = likelihood.to(device, dtype)
    with torch.no_grad():
        sample_targets = fields.targets.flatten(2)[sample_fields.to(device), :, sample_points.to(device)].to(dtype)
        _initialise(gp.covar_module, likelihood,
                    sample_targets - inputs.point_mean(fields.trunk, sample_fields.to(device), sample_points.to(device)))
    total = n_fields * per_field
    elbo = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=total)
    inputs.projection.requires_grad_(joint)
    # the inducing inputs (if learnt) and the LMC mixing are trained with or without the hyperparameters
    structural = ("inducing_points", "lmc_coefficients")
    named = list(gp.named_hyperparameters())
    parameters = [p for name, p in named if name.endswith(structural)]
    if hyperparameters:
        parameters += [p for name, p in named if not name.endswith(structural)] + list(likelihood.parameters())
    parameters += list(inputs.projection.parameters()) if joint else []
    optimizer = torch.optim.Adam(parameters, lr=lr) if parameters else None
    natural = gpytorch.optim.NGD(gp.variational_parameters(), num_data=total, lr=natural_lr)
    gp.train()
    likelihood.train()
    losses = []
    for batches in _minibatches(total, batch_points, epochs, generator):
        pass_loss, pass_points = 0.0, 0
        for batch in batches:
            batch = batch.to(device)
            field_index, point_index = batch // per_field, batch % per_field
            x = inputs.standardise(inputs.raw(fields.trunk, field_index, point_index))
            y = fields.targets.flatten(2)[field_index, :, point_index].to(dtype)
            residual = y - inputs.point_mean(fields.trunk, field_index, point_index)
            if not joint:
                residual = residual.detach()
            natural.zero_grad(set_to_none=True)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            loss = -elbo(gp(x), residual[:, 0] if channels == 1 else residual)
            loss.backward()
            natural.step()
            if optimizer is not None:
                optimizer.step()
            pass_loss, pass_points = pass_loss + loss.item() * len(batch), pass_points + len(batch)
        losses.append(pass_loss / pass_points)
    gp.eval()
    likelihood.eval()
    inputs.projection.requires_grad_(False)
    latent = _sparse_posterior(gp, likelihood, channels, rank, dtype)
    details = {"inducing": int(start.shape[-2]), "latents": latents, "joint": joint, "coordinates": coordinates,
               "outputscale": gp.covar_module.outputscale.detach().reshape(-1).tolist(),
               "epochs": epochs, "noise_variance": latent.noise.tolist(), "train_losses": losses}
    return GPPosterior(trunk, inputs, latent, details)


@torch.no_grad()
def _sparse_posterior(gp: _SparseModel, likelihood: gpytorch.likelihoods.Likelihood, channels: int, rank: int,
                      dtype: torch.dtype) -> _LatentPosterior:
    """The :class:`_LatentPosterior` of a trained (whitened) SVGP; see the module docstring."""
    if channels > 1:
        base = gp.variational_strategy.base_variational_strategy
        mixing = gp.variational_strategy.lmc_coefficients.detach()  # (Q, c)
        noise = likelihood.task_noises.detach()
    else:
        base = gp.variational_strategy
        mixing = torch.ones(1, 1, dtype=dtype, device=base.inducing_points.device)
        noise = likelihood.noise.detach().reshape(1)
    anchors = base.inducing_points.detach()
    q = base.variational_distribution
    mu, covariance = q.mean.detach(), q.covariance_matrix.detach()
    if anchors.dim() == 2:
        anchors, mu, covariance = anchors.unsqueeze(0), mu.unsqueeze(0), covariance.unsqueeze(0)
    m = anchors.shape[-2]
    eye = torch.eye(m, dtype=dtype, device=anchors.device)
    kernel_matrix = gp.covar_module(anchors).to_dense().reshape(-1, m, m)
    cholesky = torch.linalg.cholesky(kernel_matrix + _JITTER[dtype] * eye)
    inverse_transpose = torch.linalg.solve_triangular(cholesky, eye.expand_as(cholesky), upper=False).mT  # L⁻ᵀ
    weights = (inverse_transpose @ mu.unsqueeze(-1)).squeeze(-1)
    reduction = inverse_transpose @ (eye - covariance) @ inverse_transpose.mT
    factor = _top_factor(covariance, rank, inverse_transpose)
    return _LatentPosterior(gp.covar_module, anchors, weights, reduction, factor, mixing, noise)
