"""The textbook FFT spectral layer, an independent reference for :class:`SpectralConv` in the tests."""

from __future__ import annotations

import torch

from probneural.operators import SpectralConv


def fft_spectral_forward(layer: SpectralConv, x: torch.Tensor) -> torch.Tensor:
    """The textbook spectral layer: rfftn, keep the modes, complex einsum, zero-fill, irfftn.

    On a non-last axis of exactly ``2m`` points the kept frequency ``-m`` is the Nyquist frequency;
    its coefficient is halved (split evenly with the ``+m`` that is not kept), as on finer grids.
    """
    spatial = x.shape[2:]
    dims = tuple(range(2, x.dim()))
    x_ft = torch.fft.rfftn(x, dim=dims)[..., : layer.modes[-1]]
    for axis, m in enumerate(layer.modes[:-1]):
        kept = torch.cat((torch.arange(m), torch.arange(spatial[axis] - m, spatial[axis])))
        x_ft = x_ft.index_select(2 + axis, kept)
        if spatial[axis] == 2 * m:
            share = torch.ones(2 * m, dtype=x_ft.real.dtype)
            share[m] = 0.5
            x_ft = x_ft * share.reshape(-1, *[1] * (x_ft.dim() - 3 - axis))
    weight = torch.complex(layer.weight[..., 0], layer.weight[..., 1])
    axes = "klm"[: layer.dim]
    y_ft = torch.einsum(f"bi{axes},{axes}io->bo{axes}", x_ft, weight)
    for axis, m in enumerate(layer.modes[:-1]):
        gap = list(y_ft.shape)
        gap[2 + axis] = spatial[axis] - 2 * m
        low, high = y_ft.split(m, dim=2 + axis)
        y_ft = torch.cat((low, y_ft.new_zeros(gap), high), dim=2 + axis)
    gap = list(y_ft.shape)
    gap[-1] = spatial[-1] // 2 + 1 - layer.modes[-1]
    y_ft = torch.cat((y_ft, y_ft.new_zeros(gap)), dim=-1)
    return torch.fft.irfftn(y_ft, s=spatial, dim=dims)
