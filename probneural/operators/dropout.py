"""Channel dropout: one Bernoulli draw per (sample, channel), shared by every point of the field.

Before a pointwise (1 × 1) or spectral layer, zeroing channel ``c`` of a field is zeroing
column ``c`` of that layer's weight for this field, so a dropout pass is one draw of the
layer's weights applied to the whole function: the stochastic operator of MC dropout (Gal &
Ghahramani 2016) and of probabilistic neural operators, whose passes are then coherent
function draws. ``nn.Dropout`` instead draws a mask per grid point, a different weight at every
point, and its passes differ from the mean by spatially white noise (neighbouring deviations
uncorrelated). For convolutional features this is the "spatial dropout" of Tompson et al. (2015).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ChannelDropout"]


class ChannelDropout(nn.Dropout):
    """Inverted dropout of whole channels of `(b, c, *spatial)` fields, any number of spatial axes.

    In training mode each (sample, channel) is zeroed with probability ``p`` and kept scaled by
    ``1 / (1 − p)`` at every grid point; in evaluation mode it is the identity. A subclass of
    ``nn.Dropout`` (``p``, ``inplace``, and code that finds dropout layers by type keep working).

    A caller that runs a batch in parts can draw the masks of the whole batch first
    (:meth:`draw`) and hand each part its rows (:meth:`using`), so that the draws do not depend
    on how the batch is split.

    Shapes:
        input `(b, c, *spatial)`; output the same.
    """

    _masks: Iterator[Tensor] | None = None

    def draw(self, batch: int, channels: int, spatial_dims: int, dtype: torch.dtype,
             device: torch.device) -> Tensor:
        """One mask `(batch, channels, 1, ..., 1)` (``spatial_dims`` ones) of zeros and ``1 / (1 − p)``."""
        ones = torch.ones(batch, channels, *([1] * spatial_dims), dtype=dtype, device=device)
        return F.dropout(ones, self.p, training=True)

    @contextmanager
    def using(self, masks: Sequence[Tensor], rows: slice = slice(None)) -> Iterator[None]:
        """Within, the training-mode calls take these masks' ``rows`` (the samples of the part run)
        in order instead of drawing, one mask each.

        Raises:
            RuntimeError: a call finds no mask left, or masks are left over at the end.
        """
        previous, self._masks = self._masks, (mask[rows] for mask in masks)
        try:
            yield
            if next(self._masks, None) is not None:
                raise RuntimeError(f"ChannelDropout.using: {len(masks)} masks given, fewer dropout calls made")
        finally:
            self._masks = previous

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.dim() < 3:
            raise ValueError(f"x: expected a field (b, c, *spatial); got shape {tuple(x.shape)}")
        if self._masks is not None:
            mask = next(self._masks, None)
            if mask is None:
                raise RuntimeError("ChannelDropout.using: more dropout calls than masks given")
            mask = mask.to(x.dtype)
        else:
            mask = self.draw(*x.shape[:2], x.dim() - 2, x.dtype, x.device)
        return x.mul_(mask) if self.inplace else x * mask
