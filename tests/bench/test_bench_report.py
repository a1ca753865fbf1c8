"""The ``python -m probneural.report`` command on a directory of records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from probneural.bench import write_record


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "probneural.report", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_report_merges_directories(
    tmp_path: Path, cpu_environment: dict[str, Any], gpu_environment: dict[str, Any]
) -> None:
    metrics = {"train_step_ms": 4.0, "inference_ms": 1.0}
    for env, name in ((cpu_environment, "a"), (gpu_environment, "b")):
        write_record(tmp_path / name, "throughput", {"resolution": 32}, metrics, env)
    out = tmp_path / "report"
    result = _run(str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    table = (out / "benchmark_report.md").read_text()
    assert "cuda · NVIDIA A100-SXM4-80GB · bf16" in table and "| throughput · resolution=32 |" in table
    assert table.strip() in result.stdout
    assert (out / "benchmark_report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_defaults_to_the_first_directory_and_fails_clearly(
    tmp_path: Path, cpu_environment: dict[str, Any]
) -> None:
    write_record(tmp_path, "throughput", {"resolution": 32}, {"train_step_ms": 4.0}, cpu_environment)
    assert _run(str(tmp_path)).returncode == 0
    assert (tmp_path / "benchmark_report.md").is_file() and (tmp_path / "benchmark_report.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(str(empty))
    assert result.returncode == 2 and "no benchmark records" in result.stderr
