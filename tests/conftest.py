"""Fixtures for the data tests: the ``device`` fixture runs a test on the CPU and, when present, on CUDA."""

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
