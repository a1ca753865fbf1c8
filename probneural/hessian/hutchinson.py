"""Stochastic estimates of diagonals and traces from Rademacher probes, with their standard errors."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probneural.hessian.operator import LinearOperator
from probneural.validation import check_int

__all__ = ["hutchinson_diagonal", "hutchinson_trace"]


def _probe(operator: LinearOperator, generator: torch.Generator) -> Tensor:
    """A Rademacher vector `(P,)` (entries ±1, ``E[zzᵀ] = I``) in the operator's dtype and device."""
    z = torch.randint(0, 2, (operator.size,), generator=generator, dtype=torch.int8) * 2 - 1
    return z.to(operator.device, operator.dtype)


def hutchinson_diagonal(operator: LinearOperator, n_samples: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Hutchinson estimate of ``diag(A)`` from Rademacher probes ``z``: the mean of ``z ⊙ A z``.

    Args:
        operator: `(P, P)` operator.
        n_samples: number of probes, at least 2 (for the standard error).
        seed: seed of the probes.

    Returns:
        estimate `(P,)` and its standard error `(P,)` (sample standard deviation / √n).
    """
    check_int("n_samples", n_samples, 2)  # two probes at least, for the standard error
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_samples):
        z = _probe(operator, generator)
        samples.append(z * operator.matvec(z))
    stacked = torch.stack(samples)
    return stacked.mean(0), stacked.std(0) / n_samples**0.5


def hutchinson_trace(operator: LinearOperator, n_samples: int, *, seed: int = 0) -> tuple[float, float]:
    """Hutchinson estimate of ``tr(A)`` from Rademacher probes ``z``: the mean of ``zᵀ A z``.

    Unlike the sum of :func:`hutchinson_diagonal`, it keeps one number per probe, not a `(P,)`
    vector. The probes are those of :func:`hutchinson_diagonal` for the same seed.

    Args:
        operator: `(P, P)` operator.
        n_samples: number of probes, at least 2 (for the standard error).
        seed: seed of the probes.

    Returns:
        the estimate and its standard error (sample standard deviation / √n).
    """
    check_int("n_samples", n_samples, 2)
    generator = torch.Generator().manual_seed(seed)
    terms = []
    for _ in range(n_samples):
        z = _probe(operator, generator)
        terms.append(float(torch.dot(z, operator.matvec(z))))
    values = torch.tensor(terms, dtype=torch.float64)
    return float(values.mean()), float(values.std()) / math.sqrt(n_samples)
