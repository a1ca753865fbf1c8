"""Every notebook runs top to bottom at smoke size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_size(notebook, tmp_path):
    env = os.environ | {"PROBNEURAL_SMOKE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(notebook)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "zero-shot" in result.stdout


def test_notebooks_are_jupytext_percent_files():
    for notebook in NOTEBOOKS:
        assert jupytext.read(notebook).cells, notebook
