"""The ``curvature_compare`` benchmark suite: our curvature engine against curvlinops on the same FNO.

curvlinops (``curvlinops-for-pytorch``, the library laplace-torch's curvlinops backend calls)
does not know our :class:`~probneural.operators.pointwise.Pointwise` layers, so every case
runs it on a *twin* of our FNO: a copy with identical weights in which each ``Pointwise``
layer is an ``nn.Conv2d(kernel_size=1)`` (curvlinops' K-FAC supports ``Conv2d`` with
K-FAC-expand). The spectral layers stay as they are. Each case first checks that the twin's
output equals ours.

Cases (each returns its timings, the largest differences and what each side covers):

* ``kfac`` / ``mc`` at the full size: our :func:`~probneural.hessian.kfac_operator`
  (``variant="mc"``) against ``KFACLinearOperator(fisher_type="mc", kfac_approx="expand")``
  on the Conv2d parameters. The Monte-Carlo vectors are made identical: curvlinops draws its
  label through ``draw_label``, which the suite overrides to add ``√½ z`` with the very ``z``
  our operator draws (same seed, same stream), so both compute the same deterministic factors.
  The input factors ``A`` do not depend on the vectors at all.
* ``kfac`` / ``type2`` at the small size: ``variant="exact"`` against ``fisher_type="type-2"``.
  curvlinops treats every leading index of a `(b, ..., c)` output as an independent loss
  term and backpropagates them in parallel, which is exact only if those rows do not
  interact; the spectral layers mix grid points, so the reference runs on the twin with its
  output flattened to `(b, c · Π spatial)` (one loss term per sample, which is what our
  exact variant computes). The factors of the unflattened call are recorded too
  (``unflattened_B_max_rel_diff.*``) to show how far they are off.
* ``ggn_diagonal`` / ``exact`` at the small size: our :func:`~probneural.hessian.ggn_diagonal`
  (every parameter, the spectral weights included) against ``diag(Jᵀ J)`` from curvlinops'
  ``TransposedJacobianLinearOperator`` applied to blocks of unit output vectors (its cheapest
  exact route when outputs ≪ parameters: curvlinops has no exact GGN diagonal routine, and
  BackPACK's ``DiagGGNExact`` cannot run an FNO, it needs an extension for every module on
  the backward path). The pointwise parameters alone are also compared with the diagonal of
  curvlinops' ``GGNLinearOperator`` read off column by column (``G @ E``, one product per
  parameter). Also checks our Hutchinson estimate and its standard error against the exact diagonal.
* ``ggn_diagonal`` / ``hutchinson`` at the full size: our Hutchinson estimate
  (:func:`~probneural.hessian.hutchinson_diagonal` over :func:`~probneural.hessian.ggn_operator`
  products, every parameter) with its standard errors, against the same estimator built on
  curvlinops' GGN products with the same Rademacher probes (the two products of each probe are
  timed interleaved); plus one GGN-vector product of each, timed with repeats.

Loss convention: ours is ``½ Σ (f − y)²``; curvlinops runs ``nn.MSELoss(reduction="sum")``,
``Σ (f − y)²``, whose curvature is twice ours, so its ``B`` factors, GGN products and
diagonals are halved before comparing (an exact operation).

Differences are *relative to the largest entry*: ``max |ours − theirs| / max |theirs|`` per
factor or vector, in float64. Times are medians of calls of ours and theirs *interleaved*
(alternating which goes first), so that load changes on a shared machine hit both alike;
ratios are ``ours / theirs`` (below 1 when ours is faster).
"""

from __future__ import annotations

import copy
import math
import time
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from probneural.bench.suites import SUITES, Case
from probneural.bench.timing import measure
from probneural.hessian.ggn import functional_model, ggn_diagonal, ggn_operator
from probneural.hessian.hutchinson import hutchinson_diagonal
from probneural.hessian.kfac import KroneckerOperator, kfac_operator
from probneural.hessian.operator import LinearOperator
from probneural.operators import FNO
from probneural.operators.pointwise import Pointwise
from probneural.train.precision import resolve_device
from probneural.validation import check_float, check_int

__all__ = ["FlattenedOutput", "conv_twin", "curvature_compare"]

_DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
_PIP_HINT = (
    "pip install --no-deps curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0 einops==0.8.2 "
    "unfoldNd==0.2.3 linear_operator==0.6.1 (--no-deps: backpack's metadata asks for torchvision, which a CPU or "
    "CUDA torch would then be replaced for; curvlinops never imports it), or `make install-dev`"
)


def _curvlinops() -> ModuleType:
    """The ``curvlinops`` package, or an ImportError saying how to install it without another torch."""
    try:
        import curvlinops
    except ImportError as error:
        raise ImportError(f"the curvature_compare benchmark needs curvlinops 3: {_PIP_HINT}") from error
    return curvlinops


def _curvlinops_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("curvlinops-for-pytorch")
    except PackageNotFoundError:
        return "unknown"


def conv_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every :class:`Pointwise` layer is an ``nn.Conv2d(kernel_size=1)`` with its weights.

    The parameters keep their names and order (``weight`` `(o, i, 1, 1)` flattens like the
    pointwise `(o, i)`, then ``bias``); everything else (spectral layers, buffers) is copied.
    For 2-D models only.
    """
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if not isinstance(module, Pointwise):
            continue
        conv = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None)
        conv = conv.to(device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(module.weight.view(*module.weight.shape, 1, 1))
            if module.bias is not None:
                conv.bias.copy_(module.bias)
        parent, _, attribute = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, attribute, conv)
    return twin


class FlattenedOutput(nn.Module):
    """``model`` with its output `(b, c, *spatial)` flattened to `(b, c · Π spatial)`: one loss term per sample."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)


@lru_cache(maxsize=None)
def _matched_kfac_class() -> type:
    """curvlinops' ``KFACLinearOperator`` whose Monte-Carlo labels use the vectors our ``kfac_operator`` draws.

    Ours backpropagates ``√Λ z`` with ``z = randn(output.shape, generator=manual_seed(seed),
    dtype=float64)`` per batch and sample; curvlinops backpropagates the gradient of
    ``Σ (f − ỹ)²`` at ``ỹ = f + √½ z'``, i.e. ``−√2 z'``. With ``z' = z`` (cast to the output's
    dtype and shape; a CPU generator fills any shape of the same size in the same order) its
    ``B`` is exactly twice ours for ``"mse"``.
    """
    curvlinops = _curvlinops()

    class MatchedMonteCarloKFAC(curvlinops.KFACLinearOperator):
        def __init__(self, *args: Any, vector_seed: int, **kwargs: Any) -> None:
            self._vector_generator = torch.Generator().manual_seed(vector_seed)
            super().__init__(*args, **kwargs)

        def draw_label(self, output: Tensor) -> Tensor:
            z = torch.randn(output.numel(), generator=self._vector_generator, dtype=torch.float64)
            return output.detach() + math.sqrt(0.5) * z.to(output).view(output.shape)

    return MatchedMonteCarloKFAC


def _max_rel_diff(ours: Tensor, theirs: Tensor) -> float:
    """``max |ours − theirs| / max |theirs|`` in float64 (0 if both vanish)."""
    ours, theirs = ours.detach().double().cpu(), theirs.detach().double().cpu()
    scale = theirs.abs().max().item()
    difference = (ours - theirs).abs().max().item()
    return difference / scale if scale > 0 else difference


def _statistics(times: list[float]) -> dict[str, Any]:
    t = torch.tensor(times, dtype=torch.float64)
    q25, q50, q75 = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"median_s": q50, "min_s": t.min().item(), "iqr_s": q75 - q25, "times_s": times}


def _timed_pair(
    ours: Callable[[], Any], theirs: Callable[[], Any], device: torch.device, warmup: int, repeats: int
) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """Time ``ours`` and ``theirs`` interleaved, alternating which goes first, so that load changes
    on a shared machine hit both alike; then the peak memory of one more call of each
    (:func:`measure` with one repeat).

    Returns:
        the timing of each (``median_s``, ``min_s``, ``iqr_s``, ``times_s``, ``peak_memory_bytes``)
        and the result of each one's last call.
    """
    functions = {"ours": ours, "theirs": theirs}
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    for i in range(repeats):
        for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
            seconds, results[side] = _seconds(functions[side], device)
            times[side].append(seconds)
    timings = {}
    for side, fn in functions.items():
        timings[side] = _statistics(times[side])
        timings[side]["peak_memory_bytes"] = measure(fn, device=device, warmup=0, repeats=1)["peak_memory_bytes"]
    return timings["ours"], timings["theirs"], results["ours"], results["theirs"]


def _seconds(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall-clock seconds of one call of ``fn`` (synchronising CUDA) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def _pair(metrics: dict[str, Any], prefix: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Median times, peak memory and the time ratio of one ours-vs-theirs measurement into ``metrics``."""
    metrics[f"{prefix}ours_ms"] = 1e3 * ours["median_s"]
    metrics[f"{prefix}theirs_ms"] = 1e3 * theirs["median_s"]
    metrics[f"{prefix}ours_iqr_ms"] = 1e3 * ours["iqr_s"]
    metrics[f"{prefix}theirs_iqr_ms"] = 1e3 * theirs["iqr_s"]
    metrics[f"{prefix}ratio_ours_theirs"] = ours["median_s"] / theirs["median_s"]
    metrics[f"{prefix}ours_peak_memory_bytes"] = ours["peak_memory_bytes"]
    metrics[f"{prefix}theirs_peak_memory_bytes"] = theirs["peak_memory_bytes"]


class _Setup:
    """Our FNO, its Conv2d twin, a random batch, and which parameters each side covers."""

    def __init__(
        self,
        *,
        resolution: int,
        batch_size: int,
        modes: int,
        width: int,
        n_layers: int,
        projection_channels: int,
        dtype: torch.dtype,
        device: torch.device,
        seed: int,
    ) -> None:
        torch.manual_seed(seed)
        self.model = FNO(1, 1, (modes, modes), width, n_layers, projection_channels=projection_channels)
        self.model = self.model.to(device=device, dtype=dtype)
        self.twin = conv_twin(self.model)
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, 1, resolution, resolution, generator=generator).to(device, dtype)
        with torch.no_grad():
            output, twin_output = self.model(self.x), self.twin(self.x)
        self.output_shape = tuple(output.shape)
        self.twin_output_max_rel_diff = _max_rel_diff(twin_output, output)
        self.layers = [name for name, module in self.twin.named_modules() if isinstance(module, nn.Conv2d)]
        self.names = [name for name, _ in self.model.named_parameters()]
        self.supported_names = [
            f"{layer}.{kind}" for layer in self.layers for kind, _ in self.twin.get_submodule(layer).named_parameters()
        ]
        twin_parameters = dict(self.twin.named_parameters())
        self.twin_supported = [twin_parameters[name] for name in self.supported_names]
        self.twin_all = list(self.twin.parameters())
        sizes = {name: p.numel() for name, p in self.model.named_parameters()}
        offsets, start = {}, 0
        for name in self.names:
            offsets[name] = start
            start += sizes[name]
        spectral_names = [name for name in self.names if name.startswith("spectral.")]
        self.supported_index = self._index(self.supported_names, offsets, sizes, device)
        self.spectral_index = self._index(spectral_names, offsets, sizes, device)
        self.total_parameters = start
        self.supported_parameters = sum(sizes[name] for name in self.supported_names)
        self.spectral_parameters = sum(sizes[name] for name in spectral_names)

    @staticmethod
    def _index(names: Sequence[str], offsets: dict[str, int], sizes: dict[str, int], device: torch.device) -> Tensor:
        """Positions of the named parameters in the flattened parameter vector."""
        pieces = [torch.arange(offsets[name], offsets[name] + sizes[name]) for name in names]
        return (torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)).to(device)

    def data(self, flattened: bool = False) -> list[tuple[Tensor, Tensor]]:
        """One batch for curvlinops: the input and zero targets of the output's shape (targets do not enter GGN/K-FAC)."""
        shape = (self.output_shape[0], math.prod(self.output_shape[1:])) if flattened else self.output_shape
        return [(self.x, torch.zeros(shape, dtype=self.x.dtype, device=self.x.device))]

    def coverage(self, ours: int) -> dict[str, Any]:
        return {
            "total_parameters": self.total_parameters,
            "spectral_parameters": self.spectral_parameters,
            "pointwise_parameters": self.supported_parameters,
            "ours_parameters_covered": ours,
            "twin_output_max_rel_diff": self.twin_output_max_rel_diff,
        }


def _kfac_reference(
    setup: _Setup, fisher: str, *, mc_samples: int, seed: int, flattened: bool
) -> Any:
    """curvlinops' K-FAC of the twin's Conv2d layers, factors computed (``fisher``: ``"mc"`` or ``"type-2"``)."""
    curvlinops = _curvlinops()
    model = FlattenedOutput(setup.twin) if flattened else setup.twin
    options = dict(
        fisher_type=fisher, mc_samples=mc_samples, kfac_approx="expand", separate_weight_and_bias=False,
        check_deterministic=False, num_data=setup.x.shape[0],
    )
    loss = nn.MSELoss(reduction="sum")
    if fisher == "mc":
        operator = _matched_kfac_class()(
            model, loss, setup.twin_supported, setup.data(flattened), vector_seed=seed, **options
        )
    else:
        operator = curvlinops.KFACLinearOperator(model, loss, setup.twin_supported, setup.data(flattened), **options)
    operator.compute_kronecker_factors()
    return operator


def _curvlinops_factors(theirs: Any, layers: Sequence[str], prefix: str) -> list[tuple[Tensor, Tensor]]:
    """curvlinops' ``(A, B)`` per layer, ``B`` halved (its MSE is twice ours)."""
    inputs, outputs = getattr(theirs, "_input_covariances", None), getattr(theirs, "_gradient_covariances", None)
    if inputs is None or outputs is None:
        raise RuntimeError(
            "curvlinops' KFACLinearOperator no longer exposes _input_covariances/_gradient_covariances; "
            "this suite was written against curvlinops 3.0.1"
        )
    return [(inputs[prefix + layer], outputs[prefix + layer] / 2) for layer in layers]


def _our_factors(ours: KroneckerOperator, layers: Sequence[str]) -> list[tuple[Tensor, Tensor]]:
    """Our ``(A, B)`` per layer, checked to be in the twin's layer order."""
    for block, layer in zip(ours.blocks, layers):
        if block.names[0] != f"{layer}.weight":
            raise RuntimeError(f"layer order differs: ours {block.names[0]!r}, twin {layer!r}")
    return [(block.input_factor, block.output_factor) for block in ours.blocks]


def _factor_differences(ours: KroneckerOperator, theirs: Any, layers: Sequence[str], prefix: str) -> dict[str, float]:
    """Per-layer ``A`` and ``B`` differences, relative to curvlinops' largest entry."""
    differences: dict[str, float] = {}
    for layer, mine, reference in zip(layers, _our_factors(ours, layers), _curvlinops_factors(theirs, layers, prefix)):
        for factor, a, b in zip("AB", mine, reference):
            differences[f"{factor}_max_rel_diff.{layer}"] = _max_rel_diff(a, b)
    return differences


def _factor_errors(ours: KroneckerOperator, theirs: Any, exact: KroneckerOperator, layers: Sequence[str],
                   prefix: str) -> dict[str, float]:
    """Each side's ``A`` and ``B`` against the float64 factors ``exact``, relative to their largest entry.

    In float32 the two libraries' sums over the layer's rows round differently, so their mutual
    difference is bounded by the sum of their errors; these show whose error it is.
    """
    sides = {"ours": _our_factors(ours, layers), "theirs": _curvlinops_factors(theirs, layers, prefix)}
    errors: dict[str, float] = {}
    for index, (layer, truth) in enumerate(zip(layers, _our_factors(exact, layers))):
        for side, factors in sides.items():
            for factor, value, true in zip("AB", factors[index], truth):
                errors[f"{factor}_error_{side}.{layer}"] = _max_rel_diff(value, true)
    return errors


def _kfac_case(
    setup: _Setup,
    *,
    fisher: str,
    mc_samples: int,
    seed: int,
    tolerance: float,
    device: torch.device,
    warmup: int,
    repeats: int,
    record_unflattened: bool,
) -> dict[str, Any]:
    variant = "mc" if fisher == "mc" else "exact"
    ours_options = {"variant": variant, "seed": seed, **({"n_samples": mc_samples} if variant == "mc" else {})}
    flattened = fisher != "mc"
    ours_timing, theirs_timing, ours, theirs = _timed_pair(
        lambda: kfac_operator(setup.model, setup.x, **ours_options),
        lambda: _kfac_reference(setup, fisher, mc_samples=mc_samples, seed=seed, flattened=flattened),
        device, warmup, repeats,
    )
    metrics: dict[str, Any] = {}
    _pair(metrics, "", ours_timing, theirs_timing)
    differences = _factor_differences(ours, theirs, setup.layers, "model." if flattened else "")
    metrics.update(differences)
    metrics["max_rel_diff"] = max(differences.values())
    metrics["tolerance"] = tolerance
    metrics["within_tolerance"] = metrics["max_rel_diff"] <= tolerance
    exact = kfac_operator(setup.model, setup.x, dtype=torch.float64, **ours_options)
    errors = _factor_errors(ours, theirs, exact, setup.layers, "model." if flattened else "")
    metrics.update(errors)
    for side in ("ours", "theirs"):
        metrics[f"max_rel_error_{side}"] = max(v for k, v in errors.items() if f"_error_{side}." in k)
    if record_unflattened:
        naive = _kfac_reference(setup, fisher, mc_samples=mc_samples, seed=seed, flattened=False)
        for key, value in _factor_differences(ours, naive, setup.layers, "").items():
            if key.startswith("B_"):
                metrics[f"unflattened_{key}"] = value
    covered = sum(block.size for block in ours.blocks)
    metrics.update(setup.coverage(covered))
    metrics["theirs_parameters_covered"] = sum(p.numel() for p in setup.twin_supported)
    metrics["theirs_with_spectral_weights"] = _kfac_rejection(setup)
    return metrics


def _kfac_rejection(setup: _Setup) -> str:
    """What curvlinops' K-FAC says when the spectral weights are among its parameters."""
    curvlinops = _curvlinops()
    try:
        curvlinops.KFACLinearOperator(
            setup.twin, nn.MSELoss(reduction="sum"), setup.twin_all, setup.data(), check_deterministic=False,
            num_data=setup.x.shape[0], num_per_example_loss_terms=1,
        )
    except Exception as error:  # noqa: BLE001  (recorded, not handled)
        return f"{type(error).__name__}: {error}"
    return "accepted"


def _ggn_reference(setup: _Setup, parameters: list[nn.Parameter]) -> Any:
    return _curvlinops().GGNLinearOperator(
        setup.twin, nn.MSELoss(reduction="sum"), parameters, setup.data(), check_deterministic=False,
        num_data=setup.x.shape[0],
    )


def _reference_diagonal(operator: Any, size: int, columns: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The diagonal of a curvlinops operator from products with blocks of ``columns`` unit vectors, halved."""
    pieces = []
    for start in range(0, size, columns):
        k = min(columns, size - start)
        rows = torch.arange(start, start + k, device=device)
        units = torch.zeros(size, k, dtype=dtype, device=device)
        units[rows, torch.arange(k, device=device)] = 1
        pieces.append((operator @ units)[rows, torch.arange(k, device=device)] / 2)
    return torch.cat(pieces)


def _jacobian_diagonal(setup: _Setup, columns: int) -> Tensor:
    """``diag(Jᵀ J)`` over every parameter from curvlinops' transposed Jacobian applied to blocks of unit outputs.

    ``Jᵀ J`` is the GGN of our ``½ Σ (f − y)²``; this costs one vector-Jacobian product per
    output coordinate (like :func:`ggn_diagonal`), not one GGN product per parameter.
    """
    operator = _curvlinops().TransposedJacobianLinearOperator(
        setup.twin, setup.twin_all, setup.data(), check_deterministic=False, num_data=setup.x.shape[0]
    )
    outputs = math.prod(setup.output_shape)
    dtype, device = setup.x.dtype, setup.x.device
    diagonal = torch.zeros(setup.total_parameters, dtype=dtype, device=device)
    for start in range(0, outputs, columns):
        k = min(columns, outputs - start)
        units = torch.zeros(outputs, k, dtype=dtype, device=device)
        units[torch.arange(start, start + k, device=device), torch.arange(k, device=device)] = 1
        diagonal += (operator @ units).square().sum(1)
    return diagonal


def _ggn_exact_case(
    setup: _Setup,
    *,
    columns: int,
    hutchinson_samples: int,
    seed: int,
    tolerance: float,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    model_fn, params = functional_model(setup.model, setup.x)
    state = dict(setup.model.named_parameters())
    supported = tuple(state[name].detach() for name in setup.supported_names)

    def supported_fn(values: tuple[Tensor, ...]) -> Tensor:
        return functional_call(setup.model, dict(zip(setup.supported_names, values)), (setup.x,))

    dtype = setup.x.dtype
    ours_timing, theirs_timing, ours, theirs = _timed_pair(
        lambda: ggn_diagonal(model_fn, params), lambda: _jacobian_diagonal(setup, columns), device, warmup, repeats
    )
    reference = _ggn_reference(setup, setup.twin_supported)
    ours_supported_timing, columns_timing, ours_supported, by_columns = _timed_pair(
        lambda: ggn_diagonal(supported_fn, supported),
        lambda: _reference_diagonal(reference, setup.supported_parameters, columns, dtype, device),
        device, warmup, repeats,
    )
    metrics: dict[str, Any] = {
        "reference": "curvlinops TransposedJacobianLinearOperator @ unit outputs, diag = row sums of squares "
                     "(every parameter); pointwise_*: curvlinops GGNLinearOperator @ unit parameter vectors",
    }
    _pair(metrics, "", ours_timing, theirs_timing)
    _pair(metrics, "pointwise_", ours_supported_timing, columns_timing)
    metrics["max_rel_diff_all"] = _max_rel_diff(ours, theirs)
    metrics["max_rel_diff_spectral"] = _max_rel_diff(ours[setup.spectral_index], theirs[setup.spectral_index])
    metrics["max_rel_diff_pointwise"] = _max_rel_diff(ours[setup.supported_index], theirs[setup.supported_index])
    metrics["pointwise_max_rel_diff"] = _max_rel_diff(ours_supported, by_columns)
    differences = [metrics[key] for key in ("max_rel_diff_all", "max_rel_diff_spectral", "max_rel_diff_pointwise",
                                            "pointwise_max_rel_diff")]
    metrics["max_rel_diff"] = max(differences)
    metrics["tolerance"] = tolerance
    metrics["within_tolerance"] = metrics["max_rel_diff"] <= tolerance
    estimate, error = hutchinson_diagonal(ggn_operator(model_fn, params), hutchinson_samples, seed=seed)
    deviation = (estimate - ours).abs()
    positive = ours > 0
    metrics["hutchinson_samples"] = hutchinson_samples
    metrics["hutchinson_within_2se_fraction"] = (deviation <= 2 * error).double().mean().item()
    metrics["hutchinson_within_3se_fraction"] = (deviation <= 3 * error).double().mean().item()
    metrics["hutchinson_relative_error_median"] = (deviation[positive] / ours[positive]).median().item()
    metrics["hutchinson_relative_se_median"] = (error[positive] / ours[positive]).median().item()
    metrics.update(setup.coverage(ours.numel()))
    metrics["theirs_parameters_covered"] = setup.total_parameters
    return metrics


def _relative_error_summary(estimate: Tensor, error: Tensor, index: Tensor, name: str) -> dict[str, float]:
    """Median and 90th percentile over ``index`` of ``SE / |estimate|`` (the truth is unknown at this size)."""
    if index.numel() == 0:
        return {}
    relative = (error[index].double() / estimate[index].double().abs().clamp_min(1e-300)).cpu()
    q50, q90 = torch.quantile(relative[: 2**24], torch.tensor([0.5, 0.9], dtype=torch.float64)).tolist()
    return {f"{name}_se_over_abs_estimate_median": q50, f"{name}_se_over_abs_estimate_p90": q90}


def _hutchinson_case(
    setup: _Setup,
    *,
    hutchinson_samples: int,
    reference_hutchinson: bool,
    seed: int,
    tolerance: float,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    model_fn, params = functional_model(setup.model, setup.x)
    ours = ggn_operator(model_fn, params)
    reference_all = _ggn_reference(setup, setup.twin_all)
    reference_supported = _ggn_reference(setup, setup.twin_supported)
    theirs = LinearOperator(
        setup.total_parameters, lambda v: (reference_all @ v) / 2, dtype=ours.dtype, device=ours.device
    )
    generator = torch.Generator().manual_seed(seed + 1)
    v = (torch.randint(0, 2, (ours.size,), generator=generator) * 2 - 1).to(ours.device, ours.dtype)
    v_supported = v[setup.supported_index]
    ours_matvec_timing, theirs_matvec_timing, ours_product, theirs_product = _timed_pair(
        lambda: ours.matvec(v), lambda: theirs.matvec(v), device, warmup, repeats
    )
    _, pointwise_timing, _, _ = _timed_pair(
        lambda: ours.matvec(v), lambda: reference_supported @ v_supported, device, warmup, repeats
    )
    metrics: dict[str, Any] = {}
    _pair(metrics, "matvec_", ours_matvec_timing, theirs_matvec_timing)
    metrics["matvec_theirs_pointwise_only_ms"] = 1e3 * pointwise_timing["median_s"]
    metrics["matvec_max_rel_diff"] = _max_rel_diff(ours_product, theirs_product)
    differences = [metrics["matvec_max_rel_diff"]]

    # Our estimator; with the reference, every probe is also multiplied by curvlinops' GGN
    # (interleaved, alternating which goes first, so that load changes on a shared machine hit
    # both sides alike), and their estimate is accumulated from the same probes.
    seconds = {"ours": 0.0, "theirs": 0.0}
    theirs_sum = torch.zeros(ours.size, dtype=torch.float64, device=ours.device)
    probes = [0]

    def timed_product(side: str, operator: LinearOperator, z: Tensor) -> Tensor:
        elapsed, product = _seconds(lambda: operator.matvec(z), device)
        seconds[side] += elapsed
        return product

    def matvec(z: Tensor) -> Tensor:
        order = ("ours", "theirs") if probes[0] % 2 == 0 else ("theirs", "ours")
        probes[0] += 1
        products = {}
        for side in order if reference_hutchinson else ("ours",):
            products[side] = timed_product(side, ours if side == "ours" else theirs, z)
        if reference_hutchinson:
            theirs_sum.add_((z * products["theirs"]).double())
        return products["ours"]

    both = LinearOperator(ours.size, matvec, dtype=ours.dtype, device=ours.device)
    wall, (estimate, error) = _seconds(lambda: hutchinson_diagonal(both, hutchinson_samples, seed=seed), device)
    metrics["hutchinson_samples"] = hutchinson_samples
    metrics["hutchinson_ours_ms"] = 1e3 * seconds["ours"]
    metrics["hutchinson_wall_ms"] = 1e3 * wall
    if reference_hutchinson:
        metrics["hutchinson_theirs_ms"] = 1e3 * seconds["theirs"]
        metrics["hutchinson_ratio_ours_theirs"] = seconds["ours"] / seconds["theirs"]
        metrics["hutchinson_max_rel_diff"] = _max_rel_diff(estimate, theirs_sum / hutchinson_samples)
        differences.append(metrics["hutchinson_max_rel_diff"])
    metrics["max_rel_diff"] = max(differences)
    metrics["tolerance"] = tolerance
    metrics["within_tolerance"] = metrics["max_rel_diff"] <= tolerance
    metrics.update(_relative_error_summary(estimate, error, setup.spectral_index.to(estimate.device), "spectral"))
    metrics.update(_relative_error_summary(estimate, error, setup.supported_index.to(estimate.device), "pointwise"))
    metrics.update(setup.coverage(ours.size))
    metrics["theirs_parameters_covered"] = setup.total_parameters
    metrics["theirs_kfac_parameters_covered"] = setup.supported_parameters
    return metrics


@SUITES.register("curvature_compare")
def curvature_compare(
    *,
    resolution: int = 64,
    batch_size: int = 16,
    modes: int = 12,
    width: int = 32,
    n_layers: int = 4,
    projection_channels: int = 128,
    small_resolution: int = 16,
    small_batch_size: int = 2,
    small_modes: int = 4,
    small_width: int = 8,
    mc_samples: int = 1,
    hutchinson_samples: int = 64,
    reference_hutchinson: bool = True,
    reference_columns: int = 128,
    tolerance: float = 1e-5,
    cases: Sequence[str] = ("kfac_mc", "kfac_type2", "ggn_diagonal_exact", "ggn_diagonal_hutchinson"),
    device: str | torch.device = "auto",
    precision: str = "fp32",
    seed: int = 0,
    warmup: int = 1,
    repeats: int = 5,
    progress: bool = True,
) -> list[Case]:
    """K-FAC and GGN diagonals of one FNO, ours against curvlinops (see the module docstring for each case).

    The full-size cases use ``FNO(1, 1, (modes, modes), width, n_layers)`` on a random
    `(batch_size, 1, resolution, resolution)` batch; the small-size cases (exact type-2 K-FAC
    and the exact GGN diagonal, whose cost grows with outputs × parameters) use
    ``small_resolution``, ``small_batch_size``, ``small_modes`` and ``small_width``.

    Args:
        resolution: grid points per axis at the full size (``>= 2 * modes``).
        batch_size: samples at the full size.
        modes: kept Fourier modes per axis at the full size.
        width: hidden channels at the full size.
        n_layers: Fourier layers (both sizes).
        projection_channels: hidden channels of the projection (both sizes).
        small_resolution: grid points per axis at the small size.
        small_batch_size: samples at the small size.
        small_modes: kept Fourier modes per axis at the small size.
        small_width: hidden channels at the small size.
        mc_samples: Monte-Carlo vectors of the ``kfac_mc`` case (both sides use the same ones).
        hutchinson_samples: Rademacher probes of our Hutchinson estimates (at least 2).
        reference_hutchinson: also run the full-size Hutchinson estimate on curvlinops' products
            (same probes, interleaved with ours probe by probe) and compare the estimates.
        reference_columns: unit vectors per curvlinops product when reading off an exact diagonal.
        tolerance: the agreement target for ``within_tolerance``.
        cases: which of ``kfac_mc``, ``kfac_type2``, ``ggn_diagonal_exact``, ``ggn_diagonal_hutchinson`` to run.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``fp32`` or ``fp64``: the dtype of the model and of every product on both sides.
        seed: seed of the weights, the batch, the Monte-Carlo vectors and the probes.
        warmup: untimed calls of each side before timing.
        repeats: timed calls of each side, interleaved (the Hutchinson estimates run once; their
            ``hutchinson_*_ms`` sum the times of each side's products).
        progress: show a progress bar over the cases.

    Returns:
        One ``(case, metrics)`` pair per case. ``case`` holds ``comparison`` (``kfac`` or
        ``ggn_diagonal``), ``method`` and the sizes. ``metrics`` hold ``reference`` (what ran on
        curvlinops' side), the
        median times ``*ours_ms`` / ``*theirs_ms``, ``*ratio_ours_theirs`` (below 1: ours faster),
        peak memory, the per-layer / per-group ``*max_rel_diff``, ``max_rel_diff``,
        ``within_tolerance``, ``twin_output_max_rel_diff``, and the coverage:
        ``total_parameters``, ``spectral_parameters``, ``pointwise_parameters``,
        ``ours_parameters_covered``, ``theirs_parameters_covered``. The K-FAC cases also hold each
        side's difference to the float64 factors, ``{A,B}_error_{ours,theirs}.<layer>`` and
        ``max_rel_error_{ours,theirs}``: where the two sides differ, whose rounding it is.

    Raises:
        ImportError: curvlinops is not installed.
        ValueError: an argument is out of range.
    """
    for name, value in (
        ("resolution", resolution), ("batch_size", batch_size), ("modes", modes), ("width", width),
        ("n_layers", n_layers), ("projection_channels", projection_channels),
        ("small_resolution", small_resolution), ("small_batch_size", small_batch_size),
        ("small_modes", small_modes), ("small_width", small_width), ("mc_samples", mc_samples),
        ("reference_columns", reference_columns), ("repeats", repeats),
    ):
        check_int(name, value, 1)
    check_int("hutchinson_samples", hutchinson_samples, 2)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    check_float("tolerance", tolerance, positive=True)
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)} for the curvature_compare suite, got {precision!r}")
    valid = ("kfac_mc", "kfac_type2", "ggn_diagonal_exact", "ggn_diagonal_hutchinson")
    if isinstance(cases, str) or not set(cases) <= set(valid) or not cases:
        raise ValueError(f"cases: expected a non-empty list from {list(valid)}, got {cases!r}")
    if resolution < 2 * modes:
        raise ValueError(f"resolution: {resolution} is too coarse for modes={modes}; need >= {2 * modes}")
    if small_resolution < 2 * small_modes:
        raise ValueError(
            f"small_resolution: {small_resolution} is too coarse for small_modes={small_modes}; need >= {2 * small_modes}"
        )
    _curvlinops()  # fail early if it is missing
    dtype, target = _DTYPES[precision], resolve_device(device)
    timing = {"device": target, "warmup": warmup, "repeats": repeats}
    shared = {"n_layers": n_layers, "projection_channels": projection_channels, "dtype": dtype, "device": target,
              "seed": seed}
    full = {"resolution": resolution, "batch_size": batch_size, "modes": modes, "width": width}
    small = {"resolution": small_resolution, "batch_size": small_batch_size, "modes": small_modes,
             "width": small_width}
    setups: dict[str, _Setup] = {}

    def setup(size: str) -> _Setup:
        if size not in setups:
            setups.clear()  # one model at a time
            setups[size] = _Setup(**(full if size == "full" else small), **shared)
        return setups[size]

    version = _curvlinops_version()
    results: list[Case] = []
    for name in tqdm([c for c in valid if c in cases], desc="curvature_compare", unit="case", disable=not progress):
        size = "full" if name in ("kfac_mc", "ggn_diagonal_hutchinson") else "small"
        s = setup(size)
        if name == "kfac_mc":
            metrics = _kfac_case(s, fisher="mc", mc_samples=mc_samples, seed=seed, tolerance=tolerance,
                                 record_unflattened=False, **timing)
            metrics["reference"] = ("curvlinops KFACLinearOperator(fisher_type='mc', kfac_approx='expand', "
                                    "separate_weight_and_bias=False), Conv2d twin, our Monte-Carlo vectors")
            case = {"comparison": "kfac", "method": "mc", "mc_samples": mc_samples}
        elif name == "kfac_type2":
            metrics = _kfac_case(s, fisher="type-2", mc_samples=1, seed=seed, tolerance=tolerance,
                                 record_unflattened=True, **timing)
            metrics["reference"] = ("curvlinops KFACLinearOperator(fisher_type='type-2', kfac_approx='expand', "
                                    "separate_weight_and_bias=False), Conv2d twin, output flattened per sample")
            case = {"comparison": "kfac", "method": "type2"}
        elif name == "ggn_diagonal_exact":
            metrics = _ggn_exact_case(s, columns=reference_columns, hutchinson_samples=hutchinson_samples, seed=seed,
                                      tolerance=tolerance, **timing)
            case = {"comparison": "ggn_diagonal", "method": "exact"}
        else:
            metrics = _hutchinson_case(s, hutchinson_samples=hutchinson_samples,
                                       reference_hutchinson=reference_hutchinson, seed=seed,
                                       tolerance=tolerance, **timing)
            metrics["reference"] = "our Hutchinson estimator on curvlinops GGNLinearOperator products, same probes"
            case = {"comparison": "ggn_diagonal", "method": "hutchinson"}
        case.update({**(full if size == "full" else small), "n_layers": n_layers,
                     "projection_channels": projection_channels, "precision": precision, "seed": seed})
        metrics["curvlinops_version"] = version
        results.append((case, metrics))
    return results
