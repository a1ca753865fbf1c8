"""Name → object registries: one per extensible family (operators, PDE problems, benchmark suites, UQ methods).

A wrong name fails with the list of valid names, so a typo in a config or a notebook
says how to fix it.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A visible, ordered mapping from names to constructors.

    Args:
        family: what the registry holds, used in error messages (e.g. ``"operator"``).
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}
        self._deferred: dict[str, str] = {}  # name -> module whose import registers it

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is an error."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is already registered")
            self._entries[name] = obj
            self._deferred.pop(name, None)
            return obj

        return decorator

    def defer(self, module: str, *names: str) -> None:
        """Declare that importing ``module`` registers ``names``: they are listed at once and the
        module is imported on the first :meth:`get` of one of them (for methods whose modules
        import heavy libraries, e.g. Pyro and GPyTorch, ~0.5 s that a run not using them skips)."""
        for name in names:
            if name in self._entries or name in self._deferred:
                raise ValueError(f"{self.family} {name!r} is already registered")
            self._deferred[name] = module

    def get(self, name: str) -> T:
        """The entry called ``name``; a ``KeyError`` listing the valid names otherwise."""
        if name in self._deferred:
            importlib.import_module(self._deferred[name])
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise KeyError(f"unknown {self.family} {name!r}; expected one of: {valid}") from None

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._deferred})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._deferred

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
