"""Stochastic diagonal estimates with their standard errors."""

from __future__ import annotations

import torch
from torch import Tensor

from probneural.hessian.operator import LinearOperator
from probneural.validation import check_int

__all__ = ["hutchinson_diagonal"]


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
        z = (torch.randint(0, 2, (operator.size,), generator=generator) * 2 - 1).to(operator.device, operator.dtype)
        samples.append(z * operator.matvec(z))
    stacked = torch.stack(samples)
    return stacked.mean(0), stacked.std(0) / n_samples**0.5
