"""Hydra configuration: dataclass schemas and the instantiate helper.

The only package module besides the ``python -m`` entry points that imports Hydra.
"""

from probneural.config.instantiate import instantiate, to_kwargs
from probneural.config.schema import check_declared_keys, register_schemas

__all__ = ["check_declared_keys", "instantiate", "register_schemas", "to_kwargs"]
