"""Generalised Gauss–Newton products ``G v = Jᵀ Λ J v`` for (model, loss) pairs, and the exact Hessian operator.

Supported losses, both with a diagonal loss Hessian ``Λ`` with respect to the outputs and
both *summed* over every output entry of the batch (not averaged: ``torch.nn.functional.mse_loss``
with its default mean reduction has the Hessian ``2 / N`` times this one):

* ``"mse"``: ``½ Σ (f − y)²``, ``Λ = I``;
* ``"gaussian_nll"``: ``Σ (f − y)² / (2 σ_c²)`` with a fixed noise variance per output channel
  (axis 1 of the output), ``Λ = diag(1 / σ_c²)``. A heteroscedastic model, whose outputs include
  the variance, is not covered.

``G = Σ_o (√Λ_o J_o)ᵀ (√Λ_o J_o)`` can therefore be formed blockwise from
:func:`loss_hessian_sqrt` and Jacobian rows.

Precision: the operators take ``dtype=``. ``None`` computes in the dtype of the parameters;
``torch.float64`` computes every product in float64 from a float64 copy of the parameters,
also for a float32 model. ``model_fn`` must then run at the dtype of the parameters it is
given; :func:`functional_model` builds such a function from an ``nn.Module`` (it casts the
input and the floating buffers to the parameters' dtype), so the whole forward pass runs in
float64, not only the accumulation.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from probneural.hessian.functional import hvp
from probneural.hessian.operator import LinearOperator
from probneural.hessian.structure import Params, as_tuple, cast, check_direction, flatten, from_real, to_real, unflatten
from probneural.validation import InertOptionWarning

__all__ = [
    "DIAGONAL_BLOCK_BYTES",
    "LOSSES",
    "functional_model",
    "ggn_diagonal",
    "ggn_operator",
    "ggn_vp",
    "hessian_operator",
    "loss_hessian_sqrt",
]

# Most bytes of Jacobian rows (or of their cotangents) that ggn_diagonal holds at once.
DIAGONAL_BLOCK_BYTES = 2**28

LOSSES = ("mse", "gaussian_nll")


def loss_hessian_sqrt(loss: str, output: Tensor, noise_variance: float | Sequence[float] | Tensor = 1.0) -> Tensor:
    """Diagonal of ``√Λ``, the square root of the loss Hessian with respect to the outputs.

    Args:
        loss: ``"mse"`` or ``"gaussian_nll"``.
        output: `(b, c, *spatial)` model output (only shape, dtype and device are used).
        noise_variance: ``σ²``, a number or one value per output channel (``gaussian_nll``).

    Returns:
        Tensor broadcastable to ``output``.

    Warns:
        InertOptionWarning: ``noise_variance`` is set with ``loss="mse"``, which ignores it.
    """
    if loss == "mse":
        if not bool((torch.as_tensor(noise_variance) == 1.0).all()):
            warnings.warn("noise_variance has no effect: it is only used with loss='gaussian_nll'",
                          InertOptionWarning, stacklevel=3)
        return torch.ones((), dtype=output.dtype, device=output.device)
    if loss == "gaussian_nll":
        variance = torch.as_tensor(noise_variance, dtype=output.dtype, device=output.device)
        if variance.dim() == 1:
            if output.dim() < 2:
                raise ValueError(f"output: expected a batched output (b, c, ...) for per-channel noise; "
                                 f"got shape {tuple(output.shape)}")
            if variance.numel() != output.shape[1]:
                raise ValueError(
                    f"noise_variance: expected one value per output channel ({output.shape[1]}); got {variance.numel()}"
                )
            variance = variance.view(1, -1, *([1] * (output.dim() - 2)))
        if not (torch.isfinite(variance) & (variance > 0)).all():
            raise ValueError("noise_variance: expected finite positive values")
        return variance.rsqrt()
    raise ValueError(f"loss: expected one of {LOSSES}; got {loss!r}")


def functional_model(
    model: nn.Module, x: Tensor
) -> tuple[Callable[[tuple[Tensor, ...]], Tensor], tuple[Tensor, ...]]:
    """A module as a function of its trainable parameters at a fixed input.

    Args:
        model: the network; run as it is (its train/eval mode is not changed). Refused if it
            is not one deterministic function of its parameters: dropout (``p > 0``) or RReLU in
            train mode, a norm layer updating running statistics, or a batch norm using batch
            statistics (call ``model.eval()`` first).
        x: `(b, ...)` input batch.

    Returns:
        ``(model_fn, params)``: ``params`` are the detached trainable parameters in the order of
        ``model.named_parameters()``; ``model_fn(params)`` runs ``model`` on ``x`` with them,
        the input, the frozen parameters and the floating buffers cast to the dtype of the
        given parameters (so a float64 copy of the parameters runs the whole forward pass in
        float64, also for a model with frozen parts).

    Raises:
        ValueError: no trainable parameter, or a layer that is random or couples the samples.
    """
    _check_deterministic(model)
    trainable = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"model: expected at least one trainable parameter; {type(model).__name__} has none")
    names = [name for name, _ in trainable]
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update(model.named_buffers())

    def model_fn(values: tuple[Tensor, ...]) -> Tensor:
        dtype = to_real(values[:1])[0].dtype
        complex_dtype = torch.promote_types(dtype, torch.complex64)
        state = {
            name: t.to(complex_dtype) if t.is_complex() else t.to(dtype) if t.is_floating_point() else t
            for name, t in fixed.items()
        }
        state.update(zip(names, values))
        return functional_call(model, state, (x.to(dtype) if x.is_floating_point() else x,))

    return model_fn, tuple(p for _, p in trainable)


def _check_deterministic(model: nn.Module) -> None:
    """Refuse layers that make ``model`` random or batch-dependent (:func:`_random_or_coupled`).

    A dropout layer draws a new mask on every call, so the two passes of a Gauss–Newton
    product or the samples of an estimate would see different functions (an asymmetric
    ``G``); a batch norm on batch statistics couples the samples, and a norm layer in train
    mode updates its running averages on every curvature product.
    """
    offending = [name or type(model).__name__ for name, module in model.named_modules() if _random_or_coupled(module)]
    if offending:
        raise ValueError(
            f"model: {offending} are random or couple the samples (in train mode dropout and RReLU draw anew "
            "per call and a norm layer updates its running averages; batch norm uses batch statistics in "
            "train mode, and in eval mode too without running statistics), so the curvature would not be "
            "that of one function; call model.eval() first"
        )


def _random_or_coupled(module: nn.Module) -> bool:
    """Whether ``module`` makes its output random, batch-dependent or its buffers change on every call."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.training or not module.track_running_stats
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return module.training and module.track_running_stats
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.training and module.p > 0
    return isinstance(module, nn.RReLU) and module.training


def _real_model(model_fn: Callable[[Params], Tensor], tensors: tuple[Tensor, ...], single: bool):
    def g(reals: tuple[Tensor, ...]) -> Tensor:
        params = from_real(reals, tensors)
        return model_fn(params[0] if single else params)

    return g


def ggn_vp(
    model_fn: Callable[[Params], Tensor],
    params: Params,
    v: Params,
    *,
    loss: str = "mse",
    noise_variance: float | Sequence[float] | Tensor = 1.0,
) -> Params:
    """``Jᵀ Λ J v``: a forward-mode pass for ``J v``, then a reverse-mode pass for ``Jᵀ (Λ J v)``.

    The model runs in each pass, so ``model_fn`` must be deterministic (no dropout masks drawn
    per call; :func:`functional_model` checks this for modules).

    Args:
        model_fn: called as ``model_fn(params)``; returns the `(b, c, *spatial)` output.
        params: point of evaluation (complex tensors through their real view).
        v: direction with the structure of ``params``.
        loss: ``"mse"`` (``½ Σ (f − y)²``, summed) or ``"gaussian_nll"`` (see the module docstring).
        noise_variance: ``σ²`` for ``gaussian_nll``.

    Returns:
        ``G v`` with the structure of ``params``.

    Raises:
        ValueError: ``v`` does not match ``params``.
    """
    tensors, single = as_tuple(params)
    directions = check_direction(v, tensors)
    g = _real_model(model_fn, tensors, single)
    reals = tuple(r.detach() for r in to_real(tensors))
    output, jv = jvp(g, (reals,), (to_real(directions),))
    sqrt_lambda = loss_hessian_sqrt(loss, output, noise_variance)
    _, pullback = vjp(g, reals)
    (product,) = pullback(jv * sqrt_lambda.square())
    result = from_real(product, tensors)
    return result[0] if single else result


def ggn_diagonal(
    model_fn: Callable[[Params], Tensor],
    params: Params,
    *,
    loss: str = "mse",
    noise_variance: float | Sequence[float] | Tensor = 1.0,
) -> Tensor:
    """Exact GGN diagonal `(P,)`: ``Σ_o Λ_o J_o²``, one vector–Jacobian product per output coordinate.

    The products run vmapped over blocks of output coordinates, each block's Jacobian rows at most
    :data:`DIAGONAL_BLOCK_BYTES` (and its cotangents too), squared and summed per parameter tensor
    as they come: time ``O(outputs)`` backward passes, memory one block. For small models
    (``ggn_diagonal_mc`` estimates the diagonal of large ones).
    """
    tensors, single = as_tuple(params)
    reals = tuple(r.detach() for r in to_real(tensors))
    output, pullback = vjp(_real_model(model_fn, tensors, single), reals)
    weights = loss_hessian_sqrt(loss, output, noise_variance).expand_as(output).reshape(-1)
    outputs, itemsize = output.numel(), reals[0].element_size()
    row_bytes = max(sum(r.numel() for r in reals), outputs) * itemsize
    block = max(1, min(outputs, DIAGONAL_BLOCK_BYTES // row_bytes))
    diagonal = [torch.zeros_like(r) for r in reals]
    for start in range(0, outputs, block):
        size = min(block, outputs - start)
        units = output.new_zeros(size, outputs)
        units.diagonal(start).copy_(weights[start:start + size])  # rows: √Λ_o e_o
        (rows,) = vmap(pullback)(units.view(size, *output.shape))
        for total, row in zip(diagonal, rows):
            total += row.square().sum(0)
    return flatten(tuple(diagonal))


def _structured_operator(
    apply: Callable[[Params], Params], params: Params, diagonal: Callable[[], Tensor] | None = None
) -> LinearOperator:
    """A :class:`LinearOperator` over the flattened real view of ``params`` from a structured product."""
    tensors, single = as_tuple(params)
    reals = tuple(r.detach() for r in to_real(tensors))
    flat = flatten(reals)

    def matvec(vector: Tensor) -> Tensor:
        v = from_real(unflatten(vector, reals), tensors)
        return flatten(to_real(as_tuple(apply(v[0] if single else v))[0]))

    return LinearOperator(flat.numel(), matvec, dtype=flat.dtype, device=flat.device, diagonal=diagonal)


def ggn_operator(
    model_fn: Callable[[Params], Tensor],
    params: Params,
    *,
    loss: str = "mse",
    noise_variance: float | Sequence[float] | Tensor = 1.0,
    dtype: torch.dtype | None = None,
) -> LinearOperator:
    """The GGN as a matrix-free `(P, P)` operator over the flattened real parameters.

    Its ``diagonal()`` is exact, from every Jacobian row (:func:`ggn_diagonal`: one
    vector–Jacobian product per output coordinate, small models only;
    :func:`~probneural.hessian.ggn_diagonal_mc` estimates it for large ones).

    Args:
        model_fn: as for :func:`ggn_vp`; with ``dtype`` set, it is called with parameters of that dtype.
        params: point of evaluation.
        loss: ``"mse"`` or ``"gaussian_nll"``.
        noise_variance: ``σ²`` for ``gaussian_nll``.
        dtype: ``None`` for the dtype of ``params``, or e.g. ``torch.float64`` to compute every
            product with a float64 copy of the parameters (see the module docstring).
    """
    params = cast(params, dtype)
    options = {"loss": loss, "noise_variance": noise_variance}
    return _structured_operator(
        lambda v: ggn_vp(model_fn, params, v, **options), params, lambda: ggn_diagonal(model_fn, params, **options)
    )


def hessian_operator(
    f: Callable[[Params], Tensor], params: Params, *, dtype: torch.dtype | None = None
) -> LinearOperator:
    """The exact Hessian of a scalar ``f(params)`` as a matrix-free operator (products by :func:`hvp`).

    Args:
        f: called as ``f(params)``; returns a 0-d tensor.
        params: point of evaluation.
        dtype: ``None`` for the dtype of ``params``, or e.g. ``torch.float64`` to compute every
            product with a float64 copy of the parameters (``f`` must then run in that dtype,
            e.g. a loss of a :func:`functional_model`).
    """
    params = cast(params, dtype)
    return _structured_operator(lambda v: hvp(f, params, v), params)
