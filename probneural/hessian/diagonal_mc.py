"""Monte Carlo GGN diagonal from per-sample gradients: unbiased, with a variance that does not grow with the model.

For the losses of :mod:`probneural.hessian.ggn` the GGN is ``G = Σ_n J_nᵀ Λ_n J_n`` (``J_n`` the
Jacobian of sample ``n``'s output, ``Λ_n`` the diagonal loss Hessian). For a probe ``z`` of the
output shape with ``E[z zᵀ] = I``,

    ``E[(J_nᵀ √Λ_n z)²] = diag(J_nᵀ Λ_n J_n)``   (the square taken elementwise),

so one gradient per sample and probe, squared, is an unbiased estimate of the diagonal. With
``a = √Λ_n J_n[:, p]`` the column of parameter ``p``, one probe has variance ``2 ‖a‖⁴`` for
Gaussian ``z`` and ``2 (‖a‖⁴ − Σ_m a_m⁴)`` for Rademacher ``z``: relative to the value ``‖a‖²`` at
most ``√2``, whatever the number of parameters. Hutchinson's ``z ⊙ G z`` has variance
``Σ_{q ≠ p} G_pq²`` at ``p``, which grows with the number of parameters it is coupled to. With one
scalar output per sample, Rademacher probes give the exact diagonal (``z² = 1``).

The per-sample gradients ``J_nᵀ √Λ_n z`` are computed with ``torch.func``: ``vmap`` over the samples
of a chunk, of one ``vjp`` per sample whose pullback is ``vmap``-ed over the probes (one forward
pass per sample, one backward pass per sample and probe).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from probneural.hessian.ggn import LOSSES, functional_model, loss_hessian_sqrt
from probneural.hessian.kfac import batches
from probneural.hessian.structure import cast, flatten, from_real, to_real
from probneural.validation import check_int

__all__ = ["PROBES", "ggn_diagonal_mc"]

PROBES = ("gaussian", "rademacher")


def _probes(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Float64 probes with ``E[z zᵀ] = I`` on the CPU, from ``generator``."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    return torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1


def ggn_diagonal_mc(
    model: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    *,
    loss: str = "mse",
    noise_variance: float | Sequence[float] | Tensor = 1.0,
    n_samples: int = 1,
    seed: int = 0,
    probes: str = "gaussian",
    dtype: torch.dtype | None = None,
    chunk_size: int = 8,
    with_error: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Monte Carlo estimate of the GGN diagonal of ``loss`` summed over every sample of ``inputs``.

    The estimate is ``Σ_n (1/S) Σ_s (J_nᵀ √Λ_n z_ns)²`` over the samples ``n`` and ``S = n_samples``
    probes ``z_ns`` per sample (see the module docstring).

    Args:
        model: the network. Samples must not interact; it runs in its current train/eval mode,
            one sample at a time under ``vmap`` (dropout or batch norm in train mode is refused,
            see :func:`~probneural.hessian.functional_model`).
        inputs: one `(b, ...)` input batch or an iterable of them (e.g. ``(x for x, _ in loader)``).
        loss: ``"mse"`` or ``"gaussian_nll"`` (see :mod:`probneural.hessian.ggn`).
        noise_variance: ``σ²`` for ``gaussian_nll``: a number or one value per output channel.
        n_samples: probes per sample, at least 1 (at least 2 for ``with_error``).
        seed: seed of the probes; the result does not depend on ``chunk_size``.
        probes: ``"gaussian"`` (``z ~ N(0, I)``) or ``"rademacher"`` (``z = ±1``, a smaller
            variance, and exact for one scalar output per sample).
        dtype: ``None`` for the model's dtype; ``torch.float64`` computes with a float64 copy of
            the parameters, inputs and buffers (see :mod:`probneural.hessian.ggn`).
        chunk_size: samples whose gradients are computed together; memory grows as
            ``chunk_size · n_samples · P``.
        with_error: also return the standard error of the estimate.

    Returns:
        The estimate `(P,)` over the flattened real view of the trainable parameters in the order
        of ``model.named_parameters()`` (the layout of :func:`~probneural.hessian.ggn_diagonal`);
        with ``with_error``, the pair ``(estimate, standard_error)``, both `(P,)`. The standard
        error is ``√(Σ_n s_n² / S)`` with ``s_n²`` the unbiased variance of sample ``n``'s ``S`` draws.

    Raises:
        ValueError: an unknown ``loss`` or ``probes``, a bad ``n_samples`` or ``chunk_size``,
            no input batch, or an unbatched output.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}; got {loss!r}")
    if probes not in PROBES:
        raise ValueError(f"probes: expected one of {PROBES}; got {probes!r}")
    check_int("n_samples", n_samples)
    check_int("chunk_size", chunk_size)
    check_int("seed", seed, 0)
    if n_samples < (2 if with_error else 1):
        raise ValueError(f"n_samples: expected at least {2 if with_error else 1} probes per sample"
                         f"{' for a standard error' if with_error else ''}; got {n_samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive number of samples; got {chunk_size}")
    generator = torch.Generator().manual_seed(seed)
    output_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
    total: list[Tensor] | None = None
    variance: list[Tensor] = []
    for x in batches(inputs):
        model_fn, params = functional_model(model, x[:1])
        params = cast(params, dtype)
        reals = tuple(r.detach() for r in to_real(params))
        if tuple(x.shape[1:]) not in output_shapes:
            with torch.no_grad():
                output_shapes[tuple(x.shape[1:])] = tuple(model_fn(params).shape)
        output_shape = output_shapes[tuple(x.shape[1:])]
        if len(output_shape) < 2:
            raise ValueError(f"model: expected a batched output (b, c, ...); got shape {output_shape}")
        z = _probes(probes, (x.shape[0], n_samples, *output_shape), generator).to(reals[0])

        def gradients(x_n: Tensor, z_n: Tensor) -> tuple[Tensor, ...]:
            """One sample's ``J_nᵀ √Λ_n z_s`` for its probes: per parameter `(S, *real.shape)`."""
            sample_fn, _ = functional_model(model, x_n.unsqueeze(0))
            output, pullback = vjp(lambda r: sample_fn(from_real(r, params)), reals)
            (grads,) = vmap(pullback)(z_n * loss_hessian_sqrt(loss, output, noise_variance))
            return grads

        if total is None:
            total = [torch.zeros_like(r) for r in reals]
            variance = [torch.zeros_like(r) for r in reals] if with_error else []
        for x_chunk, z_chunk in zip(x.split(chunk_size), z.split(chunk_size)):
            # per parameter, never one (chunk, S, P) tensor: buffers above glibc's mmap threshold
            # (32 MB) are returned to the OS after each use and page-fault on every reuse
            for k, g in enumerate(vmap(gradients)(x_chunk, z_chunk)):  # (chunk, S, *shape)
                t = g.square_()
                total[k] += t.sum((0, 1)) / n_samples
                if with_error:
                    sums = t.sum(1)
                    spread = t.square_().sum(1) - sums.square() / n_samples
                    variance[k] += spread.clamp_min(0).sum(0) / (n_samples - 1)
    if total is None:
        raise ValueError("inputs: expected at least one input batch; got none")
    estimate = flatten(tuple(total))
    return (estimate, (flatten(tuple(variance)) / n_samples).sqrt()) if with_error else estimate
