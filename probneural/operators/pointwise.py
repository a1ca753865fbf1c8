"""Pointwise (1 × 1) channel mixing on channels-first fields."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Pointwise"]


class Pointwise(nn.Module):
    """An affine map applied independently at every grid point: ``y[:, :, p] = W x[:, :, p] + b``.

    Implemented as one batched matmul over the flattened grid with the weight expanded
    over the batch (``baddbmm``): its backward hands contiguous gradients to the layer
    below, whereas a broadcasting ``matmul`` hands back transposed ones that make the
    following activation's backward ~10× slower on CPU. Together 2.5× faster than
    a broadcasting matmul and 3-4× faster than a 1 × 1 ``Conv2d`` for a training step.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        bias: whether to add a per-channel bias.

    Shapes:
        input `(b, in_channels, *spatial)`; output `(b, out_channels, *spatial)`.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        bound = 1.0 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        b, _, *spatial = x.shape
        flat = x.reshape(b, self.in_channels, -1)
        weight = self.weight.expand(b, -1, -1)  # (b, o, i), no copy
        if self.bias is None:
            y = torch.bmm(weight, flat)
        else:
            y = torch.baddbmm(self.bias[:, None].expand(b, -1, flat.shape[-1]), weight, flat)
        return y.reshape(b, self.out_channels, *spatial)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"
