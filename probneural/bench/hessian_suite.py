"""The ``hessian`` benchmark suite: curvature products through the FNO, against one gradient.

For each case an FNO and a random batch with random targets are built, and four products of
the mean squared error ``L(θ) = mean((f_θ(x) − y)²)`` with the parameters ``θ`` are timed
with :func:`probneural.bench.measure`:

* ``grad``: one gradient, ``torch.autograd.grad``;
* ``hvp``: the exact Hessian-vector product :func:`probneural.hessian.hvp`
  (forward-over-reverse, through the whole-layer Functions of
  :mod:`probneural.operators.second_order`);
* ``double_backward``: the naive Hessian-vector product, a gradient with ``create_graph=True``
  and the gradient of its dot product with ``v``;
* ``ggn_vp``: the Gauss–Newton product :func:`probneural.hessian.ggn_vp` of ``½‖f_θ(x) − y‖²``.

The direction ``v`` is random with the parameters' structure. The loss is written out
rather than ``torch.nn.functional.mse_loss``, whose second derivative fails under
forward-over-reverse (pytorch#123996: "ZeroTensors are immutable").

Each product is timed on its own by :func:`~probneural.bench.measure`, one after the other.
On a shared machine the load drifts between those phases, so the suite then also times
``repeats`` interleaved rounds (``grad``, ``hvp``, ``double_backward`` back to back, CPU
sync per call on CUDA; the rounds cycle through the six orders of the three, so that no
product always follows the same one) and reports the medians and the extremes of the per-round
ratios, which compare the products under the same load.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.func import functional_call
from tqdm.auto import tqdm

from probneural import hessian
from probneural.bench.suites import SUITES, Case, ratio_metrics, timing_metrics
from probneural.bench.timing import interleaved_times, measure
from probneural.operators import FNO, count_parameters
from probneural.train.precision import PrecisionPolicy, resolve_device
from probneural.validation import check_int, check_positive_ints

__all__ = ["hessian_products"]

_PRODUCTS = ("grad", "hvp", "double_backward", "ggn_vp")


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors flattened and concatenated, `(P,)`."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _products(
    model: FNO, x: Tensor, y: Tensor, v: tuple[Tensor, ...], policy: PrecisionPolicy, device: torch.device
) -> dict[str, Callable[[], tuple[Tensor, ...]]]:
    """The four products of :data:`_PRODUCTS` as calls without arguments, each returning its result.

    Args:
        model: the FNO (its parameters are the point of evaluation).
        x: `(b, c_in, *spatial)` input batch.
        y: `(b, c_out, *spatial)` targets.
        v: direction, one tensor per parameter of ``model``.
    """
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    leaves = tuple(model.parameters())

    def predict(point: tuple[Tensor, ...]) -> Tensor:
        with policy.autocast(device):
            return functional_call(model, dict(zip(names, point)), (x,)).to(y.dtype)

    def loss(point: tuple[Tensor, ...]) -> Tensor:
        return (predict(point) - y).square().mean()

    def double_backward() -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(loss(leaves), leaves, create_graph=True)
        return torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, v)), leaves)

    return {
        "grad": lambda: torch.autograd.grad(loss(leaves), leaves),
        "hvp": lambda: hessian.hvp(loss, params, v),
        "double_backward": double_backward,
        "ggn_vp": lambda: hessian.ggn_vp(predict, params, v, loss="mse"),
    }


def _interleaved_ratios(
    products: dict[str, Callable[[], Any]], device: torch.device, rounds: int
) -> dict[str, float]:
    """Per-round ratios ``hvp`` / ``grad`` and ``hvp`` / ``double_backward`` over ``rounds`` interleaved rounds
    (:func:`~probneural.bench.timing.interleaved_times`: each round runs the three products in the next of
    their six orders).

    Returns:
        ``hvp_over_{grad,double_backward}_interleaved`` (medians) and the same names with
        ``_min`` / ``_max`` (extremes over the rounds).
    """
    names = ("grad", "hvp", "double_backward")
    times = interleaved_times({name: products[name] for name in names}, device=device, rounds=rounds, warmup=0)
    metrics = {}
    for name in ("grad", "double_backward"):
        metrics |= ratio_metrics(f"hvp_over_{name}_interleaved", times["hvp"], times[name])
    return metrics


@SUITES.register("hessian")
def hessian_products(
    *,
    resolutions: Sequence[int] = (64,),
    batch_sizes: Sequence[int] = (16,),
    modes: Sequence[int] = (12, 12),
    width: int = 32,
    n_layers: int = 4,
    precision: str = "fp32",
    device: str | torch.device = "auto",
    warmup: int = 2,
    repeats: int = 6,
    seed: int = 0,
    progress: bool = True,
) -> list[Case]:
    """Cost of a Hessian-vector product through the FNO relative to a gradient and to double backward.

    Each case builds ``FNO(1, 1, modes, width, n_layers)`` (``len(modes)`` spatial axes,
    ``resolution`` points each), a random batch, random targets and a random direction
    ``v``, checks that the two Hessian-vector products agree, then times the products of the
    module docstring (forward passes under the precision policy's autocast).

    Args:
        resolutions: points per spatial axis; each at least ``2 * max(modes)``.
        batch_sizes: samples per batch.
        modes: kept Fourier modes per spatial axis.
        width: hidden channels of the FNO.
        n_layers: Fourier layers of the FNO.
        precision: precision policy (``fp32``, ``fp64``, ``bf16``, ``fp16``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        warmup: untimed calls of each product before timing.
        repeats: timed calls of each product.
        seed: seed of the weights, the batch, the targets and ``v``.
        progress: show a progress bar over the cases.

    Returns:
        ``(case, metrics)`` per (resolution, batch size): ``case`` holds ``resolution``,
        ``batch_size``, ``modes``, ``width``, ``n_layers``; ``metrics`` holds ``parameters``,
        for each product ``p`` in ``grad``, ``hvp``, ``double_backward``, ``ggn_vp`` the
        timings ``p_ms`` (median), ``p_min_ms``, ``p_iqr_ms``, ``p_samples_per_s`` and
        ``p_peak_memory_bytes``, then ``memory_source``, the time ratios ``hvp_over_grad``,
        ``hvp_over_double_backward`` and ``ggn_vp_over_grad`` (medians),
        ``hvp_over_grad_interleaved`` and ``hvp_over_double_backward_interleaved`` (medians
        of per-round ratios over ``repeats`` interleaved rounds, see the module docstring) with
        their extremes ``..._interleaved_min`` / ``..._interleaved_max``, and
        ``hvp_double_backward_rel_diff``, the relative difference of the two Hessian-vector
        products (round-off only).

    Raises:
        ValueError: an argument is out of range (e.g. a resolution too coarse for ``modes``).
    """
    resolutions = check_positive_ints("resolutions", resolutions)
    batch_sizes = check_positive_ints("batch_sizes", batch_sizes)
    modes = check_positive_ints("modes", modes)
    for name, value in (("width", width), ("n_layers", n_layers), ("repeats", repeats)):
        check_int(name, value, 1)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    if min(resolutions) < 2 * max(modes):
        raise ValueError(f"resolutions: {min(resolutions)} is too coarse for modes {modes}; need >= {2 * max(modes)}")
    policy = PrecisionPolicy.from_name(precision)
    device = resolve_device(device)
    results: list[Case] = []
    cases = [(resolution, batch) for resolution in resolutions for batch in batch_sizes]
    for resolution, batch in tqdm(cases, desc="hessian", unit="case", disable=not progress):
        torch.manual_seed(seed)
        model = FNO(1, 1, modes, width, n_layers).to(device=device, dtype=policy.param_dtype)
        generator = torch.Generator().manual_seed(seed)
        shape = (batch, 1, *(resolution,) * len(modes))
        x = torch.randn(shape, generator=generator).to(device, policy.param_dtype)
        y = torch.randn(shape, generator=generator).to(device, policy.param_dtype)
        v = tuple(torch.randn(p.shape, generator=generator).to(device, p.dtype) for p in model.parameters())
        products = _products(model, x, y, v, policy, device)
        exact, naive = _flat(products["hvp"]()), _flat(products["double_backward"]())
        timings = {name: measure(products[name], device=device, warmup=warmup, repeats=repeats) for name in _PRODUCTS}
        metrics: dict[str, Any] = {"parameters": count_parameters(model)}
        for name, timing in timings.items():
            metrics.update(timing_metrics(name, timing, batch))
        metrics["memory_source"] = timings["grad"]["memory_source"]
        metrics["hvp_over_grad"] = metrics["hvp_ms"] / metrics["grad_ms"]
        metrics["hvp_over_double_backward"] = metrics["hvp_ms"] / metrics["double_backward_ms"]
        metrics["ggn_vp_over_grad"] = metrics["ggn_vp_ms"] / metrics["grad_ms"]
        metrics.update(_interleaved_ratios(products, device, repeats))
        metrics["hvp_double_backward_rel_diff"] = ((exact - naive).norm() / naive.norm()).item()
        case = {
            "resolution": resolution, "batch_size": batch, "modes": list(modes), "width": width, "n_layers": n_layers
        }
        results.append((case, metrics))
    return results
