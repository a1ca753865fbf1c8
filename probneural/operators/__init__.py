"""Neural operators as ``torch.nn.Module``s: spectral layers and the FNO (1-, 2-, 3-D)."""

from probneural.operators.dropout import ChannelDropout
from probneural.operators.fno import FNO, positional_grid
from probneural.operators.parameters import count_parameters
from probneural.operators.pointwise import Pointwise
from probneural.operators.registry import OPERATORS, build, name_of
from probneural.operators.spectral import SpectralConv, kept_frequencies, kept_shape, kept_shares, spectral_contract

__all__ = [
    "ChannelDropout",
    "FNO",
    "OPERATORS",
    "Pointwise",
    "SpectralConv",
    "build",
    "count_parameters",
    "kept_frequencies",
    "kept_shape",
    "kept_shares",
    "name_of",
    "positional_grid",
    "spectral_contract",
]
