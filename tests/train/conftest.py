from __future__ import annotations

import pytest

from probneural.data import darcy


@pytest.fixture(scope="session")
def darcy_small():
    """(train, test) Darcy splits at 17² from a 33² solve: 24 and 8 samples."""
    return darcy.generate(n=32, resolution=17, solve_resolution=33, seed=0, progress=False).split(24)
