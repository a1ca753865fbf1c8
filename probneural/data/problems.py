"""The PDE-problem registry: every data generator, by name.

``generate("darcy", n=1000, resolution=85, seed=0)`` calls the registered generator with
the keyword arguments; an unknown name fails with the list of valid names.
"""

from __future__ import annotations

from typing import Any, Callable

from probneural.data import allen_cahn, burgers, darcy, kuramoto_sivashinsky, navier_stokes
from probneural.data.dataset import OperatorDataset
from probneural.registry import Registry

PROBLEMS: Registry[Callable[..., OperatorDataset]] = Registry("PDE problem")
PROBLEMS.register("darcy")(darcy.generate)
PROBLEMS.register("burgers")(burgers.generate)
PROBLEMS.register("kuramoto_sivashinsky")(kuramoto_sivashinsky.generate)
PROBLEMS.register("allen_cahn")(allen_cahn.generate)
PROBLEMS.register("navier_stokes")(navier_stokes.generate)


def generate(problem: str, **kwargs: Any) -> OperatorDataset:
    """Generate the data set of ``problem`` with the generator's keyword arguments.

    Args:
        problem: registered name (see ``PROBLEMS.names()``).
        **kwargs: passed to the generator, e.g. ``n``, ``resolution``, ``seed``.

    Returns:
        The generated :class:`OperatorDataset`.
    """
    return PROBLEMS.get(problem)(**kwargs)
