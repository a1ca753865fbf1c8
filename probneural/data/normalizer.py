"""Per-channel affine normalisation of fields, independent of the grid resolution."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


class ChannelNormalizer(nn.Module):
    """``encode(x) = (x − mean) / (std + eps)`` with one mean and std per channel.

    The statistics are taken over the batch and all spatial axes, so they do not depend on
    the resolution: a normaliser fitted at ``s`` applies unchanged at ``2s`` (zero-shot
    super-resolution). Fit it on the training split only.

    The buffers ``mean``, ``std`` (shape `(1, c, 1, ..., 1)`, one trailing 1 per spatial
    axis of the fitted data) and ``eps`` (0-d) are saved in ``state_dict``; rebuild with
    :meth:`from_state_dict`. Computations follow the input's device and dtype.

    Args:
        mean: `(1, c, 1, ..., 1)` per-channel mean.
        std: `(1, c, 1, ..., 1)` per-channel standard deviation, non-negative.
        eps: guard added to ``std``; ``None`` means the machine epsilon of ``mean``'s dtype
            (it only matters for a constant channel, which then encodes to 0).
    """

    mean: torch.Tensor
    std: torch.Tensor
    eps: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, eps: float | None = None) -> None:
        super().__init__()
        if (
            not isinstance(mean, torch.Tensor)
            or mean.ndim < 2
            or mean.shape[0] != 1
            or any(d != 1 for d in mean.shape[2:])
        ):
            raise ValueError(
                f"mean must have shape (1, c, 1, ..., 1), got {getattr(mean, 'shape', type(mean).__name__)}"
            )
        if not isinstance(std, torch.Tensor) or std.shape != mean.shape:
            raise ValueError(
                f"std must have mean's shape {tuple(mean.shape)}, got {getattr(std, 'shape', type(std).__name__)}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std < 0).any():
            raise ValueError("mean and std must be finite and std non-negative")
        if eps is None:
            eps = torch.finfo(mean.dtype).eps
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone().to(mean.dtype))
        self.register_buffer("eps", torch.tensor(float(eps), dtype=mean.dtype, device=mean.device))

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float | None = None) -> ChannelNormalizer:
        """Fit to the training fields ``x``.

        Args:
            x: `(n, c, *spatial)` training fields (statistics accumulated in float64).
            eps: see the class docstring.

        Returns:
            A normaliser with buffers in ``x``'s dtype on ``x``'s device.
        """
        if not isinstance(x, torch.Tensor) or x.ndim < 3 or not x.is_floating_point():
            raise ValueError(
                f"x must be a floating tensor of shape (n, c, *spatial), got {getattr(x, 'shape', type(x).__name__)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or Inf values")
        axes = (0, *range(2, x.ndim))
        var, mean = torch.var_mean(x.to(torch.float64), dim=axes, correction=0, keepdim=True)
        return cls(mean.to(x.dtype), var.sqrt().to(x.dtype), eps=eps)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> ChannelNormalizer:
        """Rebuild a normaliser from the ``state_dict()`` of another."""
        missing = {"mean", "std", "eps"} - set(state)
        if missing:
            raise ValueError(f"state must hold 'mean', 'std' and 'eps'; missing {sorted(missing)}")
        return cls(state["mean"], state["std"], eps=float(state["eps"]))

    def _stats(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std + eps`` on ``x``'s device and dtype, shaped to broadcast against ``x``."""
        channels = self.mean.shape[1]
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[1] != channels:
            raise ValueError(
                f"{name} must have shape (batch, {channels}, *spatial), got {getattr(x, 'shape', type(x).__name__)}"
            )
        if not x.is_floating_point():  # integer statistics would truncate (an integer 3 encoded to inf)
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        shape = (1, channels) + (1,) * (x.ndim - 2)
        mean = self.mean.reshape(shape).to(device=x.device, dtype=x.dtype)
        scale = (self.std + self.eps).reshape(shape).to(device=x.device, dtype=x.dtype)
        return mean, scale

    def encode(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Normalise ``x``: `(b, c, *spatial)` → `(b, c, *spatial)`, any resolution; errors call it ``name``."""
        mean, scale = self._stats(x, name)
        return (x - mean) / scale

    def decode(self, z: torch.Tensor, name: str = "z") -> torch.Tensor:
        """Undo :meth:`encode`: `(b, c, *spatial)` → `(b, c, *spatial)`; errors call it ``name``."""
        mean, scale = self._stats(z, name)
        return z * scale + mean

    def decode_variance(self, variance: torch.Tensor) -> torch.Tensor:
        """Map a variance in normalised units back to data units: multiply by ``(std + eps)²``.

        Args:
            variance: `(b, c, *spatial)` predictive variance of normalised fields.

        Returns:
            `(b, c, *spatial)` variance of the decoded fields.
        """
        _, scale = self._stats(variance, "variance")
        return variance * scale.square()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(x)

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}, eps={float(self.eps):.3g}"
