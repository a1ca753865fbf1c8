"""The exact GGN of a linear read-out in closed form: last-layer curvature for Laplace.

When a model's output is a linear read-out ``y = W φ + b`` of features ``φ`` — an ``nn.Linear``
layer, or a :class:`Pointwise` layer applied at every grid point, like the FNO's
``projection_out`` on ``act(projection_hidden(model.features(x)))`` — the output is linear in
``(W, b)``. The GGN of ``"mse"`` / ``"gaussian_nll"`` with respect to ``(W, b)`` is then their
exact Hessian, and a single Kronecker product:

    ``G = Σ_{n, p} Λ ⊗ φ̃ φ̃ᵀ = Λ ⊗ Σ_{n, p} φ̃ φ̃ᵀ``,   ``φ̃ = [φ; 1]``,

summed over the samples ``n`` and the locations ``p`` (grid points) at which the read-out runs,
with ``Λ = diag(1/σ_c²)`` the per-channel loss Hessian (``I`` for ``"mse"``). Products, the
diagonal, solves and log-determinants cost ``O(o³ + i³)`` for ``o`` outputs and ``i`` features.
It equals the K-FAC block of the read-out (:func:`kfac_operator`), computed here without backward passes.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from probneural.hessian.ggn import functional_model, loss_hessian_sqrt
from probneural.hessian.kfac import (
    KroneckerBlock,
    KroneckerOperator,
    batches,
    has_trainable_bias,
    layer_moment,
    layer_rows,
    parameter_names,
    recording,
    trainable_layers,
)
from probneural.hessian.structure import cast

__all__ = ["last_layer_ggn"]


def last_layer_ggn(
    model: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    *,
    layer: str | None = None,
    loss: str = "mse",
    noise_variance: float | Sequence[float] | Tensor = 1.0,
    dtype: torch.dtype | None = None,
) -> KroneckerOperator:
    """The exact GGN (= Hessian) of ``loss`` summed over ``inputs`` with respect to the read-out's ``(W, b)``.

    Args:
        model: the network; its output must be the output of the read-out layer (checked).
        inputs: one `(b, ...)` input batch or an iterable of them; summed over all batches.
        layer: name of the read-out in ``model.named_modules()``, an ``nn.Linear`` or
            :class:`Pointwise` layer with a trainable weight; ``None`` takes the last such layer
            (``projection_out`` for the FNO).
        loss: ``"mse"`` or ``"gaussian_nll"``.
        noise_variance: ``σ²`` for ``gaussian_nll``: a number or one value per output channel
            (axis 1 of the `(b, c, ...)` output).
        dtype: ``None`` for the model's dtype; ``torch.float64`` computes the features and the
            sums from a float64 copy of the parameters, inputs and buffers.

    Returns:
        A one-block :class:`KroneckerOperator` over ``[weight.flatten(); bias]`` of the read-out
        (its ``names``), ``B = Λ`` `(o, o)` and ``A = Σ φ̃ φ̃ᵀ`` `(i + 1, i + 1)`; ``to_dense()`` is the
        dense matrix.

    Raises:
        ValueError: no such read-out, a model output that is not the read-out's output, a
            ``Λ`` that differs between locations (per-channel noise on a ``Linear`` read-out
            whose output has more than two axes), no input batch, or an unknown ``loss``.
    """
    modules = trainable_layers(model)
    candidates = list(modules)
    if not candidates:
        raise ValueError(
            f"model: expected an nn.Linear or Pointwise read-out with a trainable weight; {type(model).__name__} has none"
        )
    if layer is None:
        layer = candidates[-1]
    elif layer not in candidates:
        raise ValueError(f"layer: expected the name of an nn.Linear or Pointwise module with a trainable weight, "
                         f"one of {candidates}; "
                         f"got {layer!r}")
    readout = modules[layer]
    bias = has_trainable_bias(readout)
    gram: Tensor | None = None
    precision: Tensor | None = None
    for x in batches(inputs):
        model_fn, params = functional_model(model, x)
        with recording({layer: readout}) as records, torch.no_grad():
            output = model_fn(cast(params, dtype))
        calls = records[layer]
        if not calls or not torch.equal(torch.cat([s for _, s in calls]), output):
            raise ValueError(f"layer: the model output is not the output of {layer!r}, so it is not a linear "
                             "read-out of that layer's input")
        moment, _ = layer_moment(torch.cat([a for a, _ in calls]), readout, bias)
        gram = moment if gram is None else gram + moment
        lam = layer_rows(loss_hessian_sqrt(loss, output, noise_variance).square().expand_as(output), readout)
        if not torch.equal(lam, lam[:1].expand_as(lam)):
            raise ValueError(f"noise_variance: Λ must be the same at every location of {layer!r} for a Kronecker "
                             "product; per-channel noise varies along axis 1, which is not the read-out's features")
        precision = lam[0]
    if gram is None:
        raise ValueError("inputs: expected at least one input batch; got none")
    return KroneckerOperator([KroneckerBlock(parameter_names(layer, readout), gram, torch.diag(precision))])
