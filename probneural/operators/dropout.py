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

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ChannelDropout"]


class ChannelDropout(nn.Dropout):
    """Inverted dropout of whole channels of `(b, c, *spatial)` fields, any number of spatial axes.

    In training mode each (sample, channel) is zeroed with probability ``p`` and kept scaled by
    ``1 / (1 − p)`` at every grid point; in evaluation mode it is the identity. A subclass of
    ``nn.Dropout`` (``p``, ``inplace``, and code that finds dropout layers by type keep working).

    Shapes:
        input `(b, c, *spatial)`; output the same.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.dim() < 3:
            raise ValueError(f"x: expected a field (b, c, *spatial); got shape {tuple(x.shape)}")
        mask = F.dropout(x.new_ones(*x.shape[:2], *([1] * (x.dim() - 2))), self.p, training=True)
        return x.mul_(mask) if self.inplace else x * mask
