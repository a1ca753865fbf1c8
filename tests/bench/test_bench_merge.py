"""Merging records of two machines into one Markdown table and one PNG."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from probneural.bench import merge_table, plot_records, read_records, write_record


def _write_runs(out: Path, env_a: dict[str, Any], env_b: dict[str, Any]) -> None:
    for env, scale in ((env_a, 1.0), (env_b, 0.05)):
        for resolution in (64, 32):
            case = {"resolution": resolution, "batch_size": 16, "modes": [12, 12]}
            metrics = {"train_step_ms": scale * resolution, "inference_ms": scale * resolution / 3}
            write_record(out / env["hostname"], "throughput", case, metrics, env)


def test_two_machines_give_one_table_with_both_columns(
    tmp_path: Path, cpu_environment: dict[str, Any], gpu_environment: dict[str, Any]
) -> None:
    _write_runs(tmp_path, cpu_environment, gpu_environment)
    table = merge_table(read_records([tmp_path]))
    lines = table.splitlines()
    cpu_label = f"cpu · {cpu_environment['device']['name']} · fp32"
    assert lines[0] == f"| case | {cpu_label} | cuda · NVIDIA A100-SXM4-80GB · bf16 |"
    assert len(lines) == 4  # header, separator, two cases
    assert lines[2].startswith(
        "| throughput · resolution=32, batch_size=16, modes=12x12 | step 32.0 ms; inference 10.7 ms"
    )
    assert "step 3.2 ms; inference 1.1 ms |" in lines[3]


def test_same_label_columns_are_told_apart_and_newest_record_wins(
    tmp_path: Path, cpu_environment: dict[str, Any]
) -> None:
    other = copy.deepcopy(cpu_environment)
    other["hostname"] = "twin"
    newer = {**cpu_environment, "timestamp": "2999-01-01T00:00:00+00:00"}
    case = {"resolution": 32}
    records = [
        {"suite": "s", "case": case, "metrics": {"train_step_ms": 1.0}, "environment": cpu_environment},
        {"suite": "s", "case": case, "metrics": {"train_step_ms": 2.0}, "environment": newer},
        {"suite": "s", "case": case, "metrics": {"train_step_ms": 5.0}, "environment": other},
    ]
    header, _, row, _, note = merge_table(records).splitlines()
    assert "host=twin" in header and f"host={cpu_environment['hostname']}" in header
    assert "step 2.0 ms" in row and "step 1.0 ms" not in row
    assert note.startswith("1 older record(s) not shown")


def test_plot_writes_a_png(tmp_path: Path, cpu_environment: dict[str, Any], gpu_environment: dict[str, Any]) -> None:
    _write_runs(tmp_path, cpu_environment, gpu_environment)
    path = plot_records(read_records([tmp_path]), tmp_path / "figs" / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_records_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="records"):
        merge_table([])
    with pytest.raises(ValueError, match="records"):
        plot_records([], tmp_path / "x.png")
