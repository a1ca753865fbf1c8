"""An operator wrapped with the data normalisers it was trained with: raw fields in, raw fields out."""

from __future__ import annotations

from torch import Tensor, nn

from probneural.data.normalizer import ChannelNormalizer

__all__ = ["NormalizedOperator"]


class NormalizedOperator(nn.Module):
    """``decode_y(operator(encode_x(x)))``: what users, metrics and posteriors call.

    Args:
        operator: a neural operator mapping normalised inputs to normalised outputs.
        x_normalizer: normaliser of the inputs, fitted on the training split.
        y_normalizer: normaliser of the outputs, fitted on the training split.

    Shapes:
        input `(b, c_in, *spatial)`, output `(b, c_out, *spatial)`, in data units.
    """

    def __init__(self, operator: nn.Module, x_normalizer: ChannelNormalizer, y_normalizer: ChannelNormalizer) -> None:
        super().__init__()
        self.operator = operator
        self.x_normalizer = x_normalizer
        self.y_normalizer = y_normalizer

    def forward(self, x: Tensor) -> Tensor:
        # under autocast the operator may answer in half precision: decode in the input's dtype
        z = self.operator(self.x_normalizer.encode(x)).to(x.dtype)
        return self.y_normalizer.decode(z)
