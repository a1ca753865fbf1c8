"""Fixtures of the benchmark tests: environments of two (fake) machines."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from probneural.bench import capture_environment


@pytest.fixture(scope="module")
def cpu_environment() -> dict[str, Any]:
    """The real environment of this machine on the CPU, fp32."""
    return capture_environment("fp32", "cpu")


@pytest.fixture
def gpu_environment(cpu_environment: dict[str, Any]) -> dict[str, Any]:
    """A fake environment of another machine with a GPU, bf16."""
    env = copy.deepcopy(cpu_environment)
    env["hostname"] = "gpu-node-7"
    env["device"] = {"type": "cuda", "name": "NVIDIA A100-SXM4-80GB", "cuda_version": "12.4", "driver_version": "550"}
    env["precision"] = {**env["precision"], "name": "bf16", "autocast_dtype": "bfloat16"}
    return env
