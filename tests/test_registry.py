"""Registry: names list at once, deferred modules import on first use, wrong names list the valid ones."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from probneural.registry import Registry


def test_deferred_names_are_listed_and_their_module_imported_on_first_get(monkeypatch):
    registry: Registry = Registry("widget")
    registry.register("plain")(len)
    module = types.ModuleType("fake_widgets")
    imported = []

    def import_module(name):
        imported.append(name)
        registry.register("fancy")(max)  # what importing the module's decorators does
        return module

    monkeypatch.setattr("probneural.registry.importlib.import_module", import_module)
    registry.defer("fake_widgets", "fancy")
    assert registry.names() == ["fancy", "plain"] and "fancy" in registry and imported == []
    assert registry.get("fancy") is max and imported == ["fake_widgets"]
    assert registry.get("fancy") is max and imported == ["fake_widgets"]  # imported once
    with pytest.raises(ValueError, match="already registered"):
        registry.defer("elsewhere", "plain")
    with pytest.raises(KeyError, match="unknown widget 'fancyy'; expected one of: fancy, plain"):
        registry.get("fancyy")


def test_importing_uq_leaves_pyro_and_gpytorch_unimported_until_a_head_is_asked_for():
    script = (
        "import sys; from probneural import uq; "
        "print('pyro' in sys.modules, 'gpytorch' in sys.modules, {'gp_exact', 'pyro_svi'} <= set(uq.METHODS.names())); "
        "uq.METHODS.get('gp_svgp'); uq.METHODS.get('pyro_nuts'); "
        "print('pyro' in sys.modules, 'gpytorch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True", "True", "True"]
