"""Fixtures: ``device`` runs a test on the CPU and, when present, on CUDA; ``set_threads`` sets torch's thread count."""

from __future__ import annotations

import os

import pytest
import torch


def _devices() -> list[str]:
    requested = os.environ.get("PROBNEURAL_TEST_DEVICE")
    if requested:
        return sorted({"cpu", requested})
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=_devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    """CPU always; CUDA when available or named by ``PROBNEURAL_TEST_DEVICE``."""
    return torch.device(request.param)


@pytest.fixture
def set_threads():
    """``torch.set_num_threads`` for the test; the thread count is restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
