"""PDE data for operator learning: random fields, solvers, data sets, normalisers and an on-disk cache.

>>> from probneural.data import darcy
>>> train = darcy.generate(n=1000, resolution=85, seed=0)   # doctest: +SKIP
>>> u = darcy.solve(a, f)                                   # doctest: +SKIP
"""

from probneural.data import allen_cahn, burgers, darcy, generation, grf, kuramoto_sivashinsky, navier_stokes
from probneural.data.dataset import OperatorDataset
from probneural.data.normalizer import ChannelNormalizer
from probneural.data.problems import PROBLEMS, check_arguments, generate
from probneural.data.readers import read_neuralop_darcy, read_pdebench

__all__ = [
    "ChannelNormalizer",
    "OperatorDataset",
    "PROBLEMS",
    "allen_cahn",
    "burgers",
    "check_arguments",
    "darcy",
    "generate",
    "generation",
    "grf",
    "kuramoto_sivashinsky",
    "navier_stokes",
    "read_neuralop_darcy",
    "read_pdebench",
]
