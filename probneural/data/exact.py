"""Exact and manufactured solutions the solvers are validated against (tests and ``experiments/data_engine``).

All in float64 on the CPU; the Bessel coefficients of the Cole–Hopf series come from SciPy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["allen_cahn_uniform", "burgers_sine", "darcy_manufactured", "taylor_green"]


def darcy_manufactured(s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth Darcy problem with known solution on the ``s × s`` nodes ``i / (s − 1)``.

    ``u = sin(πx) sin(πy)``, ``a = 1 + x² + ½ sin(2πy)`` and ``f = −∇·(a∇u)``.

    Returns:
        ``(a, f, u)``, each `(s, s)`.
    """
    t = torch.linspace(0, 1, s, dtype=torch.float64)
    x, y = torch.meshgrid(t, t, indexing="ij")
    pi = math.pi
    u = torch.sin(pi * x) * torch.sin(pi * y)
    a = 1 + x**2 + 0.5 * torch.sin(2 * pi * y)
    ux, uy = pi * torch.cos(pi * x) * torch.sin(pi * y), pi * torch.sin(pi * x) * torch.cos(pi * y)
    ax, ay = 2 * x, pi * torch.cos(2 * pi * y)
    f = -(ax * ux + ay * uy - 2 * pi**2 * a * u)
    return a, f, u


def burgers_sine(s: int, viscosity: float, t: float, terms: int = 60) -> torch.Tensor:
    """Exact viscous Burgers solution for ``u0 = sin 2πx`` on ``x_j = j / s``, `(s,)`.

    Cole–Hopf: ``u = −2ν φ_x / φ`` with ``φ_t = ν φ_xx`` and
    ``φ(x, 0) = exp(−(1/2ν) ∫ u0) = exp(c cos 2πx)``, ``c = 1 / (4πν)``. The generating
    function ``e^{c cos θ} = I₀(c) + 2 Σ_{n≥1} I_n(c) cos nθ`` gives
    ``φ = I₀(c) + 2 Σ_n I_n(c) e^{−ν(2πn)²t} cos 2πnx``; the scaled ``ive = e^{−c} I_n``
    cancels in the ratio.
    """
    from scipy.special import ive

    x = np.arange(s) / s
    c = 1 / (4 * np.pi * viscosity)
    n = np.arange(1, terms + 1)[:, None]
    weights = ive(n, c) * np.exp(-viscosity * (2 * np.pi * n) ** 2 * t)
    phi = ive(0, c) + 2 * (weights * np.cos(2 * np.pi * n * x)).sum(axis=0)
    phi_x = -2 * (weights * 2 * np.pi * n * np.sin(2 * np.pi * n * x)).sum(axis=0)
    return torch.from_numpy(-2 * viscosity * phi_x / phi)


def allen_cahn_uniform(u0: torch.Tensor, times: list[float]) -> torch.Tensor:
    """``u(t) = u0 eᵗ / sqrt(1 + u0² (e^{2t} − 1))``, the spatially uniform solutions of ``u' = u − u³``.

    Args:
        u0: `(B,)` uniform initial values.
        times: output times.

    Returns:
        `(B, len(times))` float64.
    """
    t = torch.tensor(times, dtype=torch.float64)
    u0 = u0.to(torch.float64)[:, None]
    return u0 * torch.exp(t) / torch.sqrt(1 + u0**2 * (torch.exp(2 * t) - 1))


def taylor_green(s: int, viscosity: float, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decaying Taylor–Green vortex on the unit torus, nodes ``j / s``.

    ``w = sin(2πx) sin(2πy) = 8π² ψ``: the advection term vanishes identically and
    ``w(t) = w0 exp(−8π² ν t)`` solves the vorticity equation without forcing.

    Returns:
        ``(w0, w(t))``, each `(s, s)` float64.
    """
    nodes = torch.arange(s, dtype=torch.float64) / s
    x, y = torch.meshgrid(nodes, nodes, indexing="ij")
    w0 = torch.sin(2 * math.pi * x) * torch.sin(2 * math.pi * y)
    return w0, w0 * math.exp(-8 * math.pi**2 * viscosity * t)
