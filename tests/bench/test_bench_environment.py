"""capture_environment: every field a merged report needs is present and JSON-able."""

from __future__ import annotations

import json

import pytest
import torch

import probneural
from probneural.bench import capture_environment


def test_environment_has_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1073741824")
    env = capture_environment("bf16", "cpu", overrides=["benchmark=throughput", "precision=bf16"])
    assert {
        "hostname", "platform", "cpu", "device", "versions", "torch_num_threads", "precision",
        "git_commit", "overrides", "allocator", "timestamp",
    } <= env.keys()
    assert env["device"] == {"type": "cpu", "name": env["cpu"]["model"]}
    assert env["cpu"]["model"] and env["cpu"]["logical_cores"] >= 1
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["probneural"] == probneural.__version__
    assert {"python", "numpy"} <= env["versions"].keys()
    assert env["torch_num_threads"] == torch.get_num_threads()
    assert env["precision"]["name"] == "bf16" and env["precision"]["fft_dtype"] == "float32"
    assert env["overrides"] == ["benchmark=throughput", "precision=bf16"]
    assert env["allocator"] == "glibc.malloc.mmap_threshold=1073741824"
    assert env["timestamp"].endswith("+00:00")
    json.dumps(env, allow_nan=False)


def test_environment_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    env = capture_environment("fp32", "cpu")
    assert env["allocator"] == "default" and env["overrides"] == []
    with pytest.raises(ValueError, match="precision"):
        capture_environment("fp8", "cpu")
    with pytest.raises(ValueError, match="overrides"):
        capture_environment("fp32", "cpu", overrides="a=b")  # type: ignore[arg-type]
