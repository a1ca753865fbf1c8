"""Gaussian random fields with covariance ``sigma² (−Δ + τ² I)^(−α)``, sampled by Karhunen–Loève.

A field is ``u = Σ_k sqrt(λ_k) ξ_k φ_k`` with ``φ_k`` the eigenfunctions of the Laplacian
for the boundary condition (orthonormal in ``L²`` of the unit cube), ``ξ_k`` i.i.d.
``N(0, 1)`` and ``λ_k = sigma² (μ_k + τ²)^(−α)``, ``μ_k`` the Laplacian eigenvalue. The
sum is truncated to the modes the grid resolves. The constant mode ``k = 0`` is dropped
(``λ_0 = 0``), so every sample has zero spatial mean (exactly in the continuum and under the
trapezoidal rule on the nodes; the plain node average of a Neumann field is not zero); this
follows the FNO generators (Li et al. 2021), whose Darcy script removes the mean mode of the
cosine expansion.

``sigma`` defaults to ``τ^(α − d/2)``, the FNO scripts' normalisation, which makes the
point variance nearly independent of ``τ`` (the KL sum scales like ``τ^(d − 2α)``).

The noise of output sample ``j`` is drawn by
:func:`probneural.data.seeding.standard_normal` from ``(seed, start + j)``: samples are
fixed by the seed whatever ``n``, ``start`` or the device.
"""

from __future__ import annotations

import math

import torch

from probneural.data.seeding import standard_normal
from probneural.validation import check_float, check_int

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_args(n: int, resolution: int, dim: int, alpha: float, tau: float, dtype: torch.dtype) -> None:
    check_int("n", n, 1)
    check_int("resolution", resolution, 2)
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
    check_float("alpha", alpha, positive=True)
    check_float("tau", tau, positive=True)
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")


def _sqrt_eigenvalues(
    frequencies: list[torch.Tensor], laplace_factor: float, alpha: float, tau: float, sigma: float | None
) -> torch.Tensor:
    """``sqrt(λ_k) = sigma (laplace_factor·|k|² + τ²)^(−α/2)`` on the tensor grid of ``frequencies``, mean mode zero.

    Args:
        frequencies: ``d`` float64 1-D tensors, the integer wavenumbers along each axis.
        laplace_factor: ``μ_k / |k|²`` (``π²`` for cosines ``cos(π k x)``, ``4π²`` for ``exp(2πi k x)``).
        alpha: smoothness exponent ``α``.
        tau: inverse length scale ``τ``.
        sigma: amplitude; ``None`` means ``τ^(α − d/2)``.

    Returns:
        ``(len(frequencies[0]), ..., len(frequencies[-1]))`` float64 tensor.
    """
    dim = len(frequencies)
    if sigma is None:
        sigma = tau ** (alpha - dim / 2)
    elif not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite positive number or None, got {sigma!r}")
    squared = sum(k.reshape([-1 if i == axis else 1 for i in range(dim)]) ** 2 for axis, k in enumerate(frequencies))
    sqrt_eig = sigma * (laplace_factor * squared + tau**2) ** (-alpha / 2)
    sqrt_eig[(0,) * dim] = 0.0
    return sqrt_eig


def _cosine_basis(resolution: int, device: torch.device | str | None) -> torch.Tensor:
    """The ``L²(0, 1)``-orthonormal Neumann eigenfunctions on the node grid ``x_i = i / (s − 1)``.

    ``Φ[i, k] = c_k cos(π k x_i)`` with ``c_0 = 1`` and ``c_k = √2`` for ``k >= 1``,
    ``k = 0, ..., s − 1``: the (unnormalised) DCT-I matrix. The angle is reduced to
    ``π (k·i mod 2(s − 1)) / (s − 1)`` before the cosine, so it is exact to rounding.

    Args:
        resolution: number of nodes ``s >= 2``.
        device: device of the result.

    Returns:
        ``(s, s)`` float64 matrix, rows indexed by node ``i``, columns by mode ``k``.
    """
    index = torch.arange(resolution, dtype=torch.int64, device=device)
    angle = torch.outer(index, index).remainder(2 * (resolution - 1)).to(torch.float64) * (math.pi / (resolution - 1))
    scale = torch.full((resolution,), math.sqrt(2.0), dtype=torch.float64, device=device)
    scale[0] = 1.0
    return torch.cos(angle) * scale


def grf_neumann(
    n: int,
    resolution: int,
    *,
    dim: int = 2,
    alpha: float = 2.0,
    tau: float = 3.0,
    sigma: float | None = None,
    seed: int = 0,
    start: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gaussian random fields with covariance ``sigma² (−Δ + τ² I)^(−α)``, zero-Neumann boundary.

    The field lives on the nodes ``x_i = i / (s − 1)`` of ``[0, 1]^d``. The expansion uses
    the cosines ``Π_j c_{k_j} cos(π k_j x_j)``, ``k_j = 0, ..., s − 1``, with
    ``sqrt(λ_k) = sigma (π²|k|² + τ²)^(−α/2)``; the constant mode is dropped (see the
    module docstring). It is evaluated as one dense cosine-matrix product per axis
    (a DCT-I on the node grid) in float64 on ``device``. FNO's Darcy inputs use
    ``α = 2, τ = 3``, i.e. ``(−Δ + 9I)^(−2)``.

    Args:
        n: number of fields.
        resolution: nodes per axis ``s >= 2``.
        dim: spatial dimension ``d`` (1, 2 or 3).
        alpha: smoothness exponent ``α > 0``.
        tau: inverse length scale ``τ > 0``.
        sigma: amplitude; ``None`` means ``τ^(α − d/2)``.
        seed: data-set seed.
        start: data-set index of the first field; field ``j`` uses ``(seed, start + j)``.
        dtype: dtype of the result.
        device: device of the result and of the computation (default: CPU).

    Returns:
        ``(n, s, ..., s)`` tensor with ``d`` spatial axes.
    """
    _check_args(n, resolution, dim, alpha, tau, dtype)
    k = torch.arange(resolution, dtype=torch.float64, device=device)
    sqrt_eig = _sqrt_eigenvalues([k] * dim, math.pi**2, alpha, tau, sigma)
    field = standard_normal(n, (resolution,) * dim, seed=seed, start=start, device=device) * sqrt_eig
    basis = _cosine_basis(resolution, device)
    for axis in range(1, dim + 1):
        field = torch.movedim(torch.tensordot(field, basis, dims=([axis], [1])), -1, axis)
    return field.to(dtype)


def grf_periodic(
    n: int,
    resolution: int,
    *,
    dim: int = 1,
    alpha: float,
    tau: float,
    sigma: float | None = None,
    seed: int = 0,
    start: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Periodic Gaussian random fields with covariance ``sigma² (−Δ + τ² I)^(−α)``, zero mean mode.

    The field lives on ``x_j = j / s`` of the unit torus. With real white noise ``ξ`` on the
    grid, ``u = s^(d/2) · irfftn(sqrt(λ) · rfftn(ξ))`` (orthonormal FFTs), where
    ``sqrt(λ_k) = sigma (4π²|k|² + τ²)^(−α/2)`` for the grid's wavenumbers
    ``k ∈ {−⌊s/2⌋, ..., ⌈s/2⌉ − 1}^d`` and ``λ_0 = 0``. Its covariance is exactly the KL sum
    ``Σ_k λ_k exp(2πi k·(x − x'))`` over those wavenumbers.
    FNO's Burgers inputs use ``σ² = 625, α = 2, τ = 5``.

    Args:
        n: number of fields.
        resolution: points per axis ``s >= 2``.
        dim: spatial dimension ``d`` (1, 2 or 3).
        alpha: smoothness exponent ``α > 0``.
        tau: inverse length scale ``τ > 0``.
        sigma: amplitude; ``None`` means ``τ^(α − d/2)``.
        seed: data-set seed.
        start: data-set index of the first field; field ``j`` uses ``(seed, start + j)``.
        dtype: dtype of the result.
        device: device of the result and of the computation (default: CPU).

    Returns:
        ``(n, s, ..., s)`` tensor with ``d`` spatial axes.
    """
    _check_args(n, resolution, dim, alpha, tau, dtype)
    full = torch.fft.fftfreq(resolution, d=1.0 / resolution, dtype=torch.float64, device=device)
    half = torch.fft.rfftfreq(resolution, d=1.0 / resolution, dtype=torch.float64, device=device)
    sqrt_eig = _sqrt_eigenvalues([full] * (dim - 1) + [half], 4 * math.pi**2, alpha, tau, sigma)
    axes = tuple(range(1, dim + 1))
    noise = standard_normal(n, (resolution,) * dim, seed=seed, start=start, device=device)
    spectrum = torch.fft.rfftn(noise, dim=axes, norm="ortho") * sqrt_eig
    field = torch.fft.irfftn(spectrum, s=(resolution,) * dim, dim=axes, norm="ortho") * resolution ** (dim / 2)
    return field.to(dtype)
