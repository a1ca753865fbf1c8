"""The PDE-problem registry: every data generator, by name.

``generate("darcy", n=1000, resolution=85, seed=0)`` calls the registered generator with
the keyword arguments; an unknown name fails with the list of valid names.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from probneural.data import allen_cahn, burgers, darcy, generation, kuramoto_sivashinsky, navier_stokes
from probneural.data.dataset import OperatorDataset
from probneural.registry import Registry

PROBLEMS: Registry[Callable[..., OperatorDataset]] = Registry("PDE problem")
PROBLEMS.register("darcy")(darcy.generate)
PROBLEMS.register("burgers")(burgers.generate)
PROBLEMS.register("kuramoto_sivashinsky")(kuramoto_sivashinsky.generate)
PROBLEMS.register("allen_cahn")(allen_cahn.generate)
PROBLEMS.register("navier_stokes")(navier_stokes.generate)


# spatial axes of each problem's fields (the generators' grids)
_SPATIAL_AXES = {"darcy": 2, "burgers": 1, "kuramoto_sivashinsky": 1, "allen_cahn": 1, "navier_stokes": 2}


def field_layout(problem: str, **options: Any) -> tuple[int, int, int]:
    """``(spatial axes, input channels, output channels)`` of the data ``problem`` generates with the
    generator ``options``, known without generating anything (to check a model against it).

    Every problem maps one input field to one output field, except Navier–Stokes ``task="rollout"``:
    ``n_input_steps`` snapshots in, ``n_output_steps`` out.
    """
    generator = PROBLEMS.get(problem)
    if problem not in _SPATIAL_AXES:
        raise ValueError(f"problem: {problem!r} is registered without a field layout; add it to _SPATIAL_AXES")
    if problem == "navier_stokes":
        defaults = {name: p.default for name, p in inspect.signature(generator).parameters.items()}
        settings = defaults | options
        if settings["task"] == "rollout":
            return _SPATIAL_AXES[problem], settings["n_input_steps"], settings["n_output_steps"]
    return _SPATIAL_AXES[problem], 1, 1


def check_arguments(problem: str, **kwargs: Any) -> dict[str, Any]:
    """Check the arguments :func:`generate` would be given, generating and reading nothing.

    Returns:
        The generation parameters: the metadata of the data set the arguments describe, without the
        ``"implementation"`` a generator may add.

    Raises:
        ValueError: an argument the generator refuses (its message names the argument).
    """
    return generation.checked_params(PROBLEMS.get(problem), **kwargs)


def generate(problem: str, **kwargs: Any) -> OperatorDataset:
    """Generate the data set of ``problem`` with the generator's keyword arguments.

    Args:
        problem: registered name (see ``PROBLEMS.names()``).
        **kwargs: passed to the generator, e.g. ``n``, ``resolution``, ``seed``.

    Returns:
        The generated :class:`OperatorDataset`.
    """
    return PROBLEMS.get(problem)(**kwargs)
