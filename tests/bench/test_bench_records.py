"""Benchmark records: round trip, discovery in directories, clear errors for malformed files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from probneural.bench import RECORD_FORMAT, RecordError, read_records, write_record

CASE = {"resolution": 32, "batch_size": 4, "modes": [12, 12]}
METRICS = {"train_step_ms": 12.5, "inference_ms": 3.25, "peak": None}


def test_round_trip(tmp_path: Path, cpu_environment: dict[str, Any]) -> None:
    path = write_record(tmp_path / "run", "throughput", CASE, METRICS, cpu_environment)
    assert path.parent == tmp_path / "run" and path.suffix == ".json"
    assert path.name.startswith("throughput--resolution=32_batch_size=4_modes=12x12--")
    assert not list(path.parent.glob("*.tmp"))
    (record,) = read_records([tmp_path])
    assert record == {
        "format": RECORD_FORMAT, "suite": "throughput", "case": CASE, "metrics": METRICS, "environment": cpu_environment
    }
    assert read_records([path]) == [record]


def test_directories_are_searched_recursively_and_other_json_is_skipped(
    tmp_path: Path, cpu_environment: dict[str, Any]
) -> None:
    write_record(tmp_path / "a" / "deep", "throughput", CASE, METRICS, cpu_environment)
    write_record(tmp_path / "b", "throughput", {**CASE, "batch_size": 16}, METRICS, cpu_environment)
    (tmp_path / "a" / "epoch-0001.json").write_text(json.dumps({"epoch": 1, "model": {}}))
    (tmp_path / "b" / "notes.txt").write_text("not json")
    records = read_records([tmp_path / "a", str(tmp_path / "b")])
    assert [r["case"]["batch_size"] for r in records] == [4, 16]


def test_malformed_record_names_the_file(tmp_path: Path, cpu_environment: dict[str, Any]) -> None:
    path = write_record(tmp_path, "throughput", CASE, METRICS, cpu_environment)
    record = json.loads(path.read_text())
    record["metrics"] = [1, 2]
    del record["environment"]["device"]
    path.write_text(json.dumps(record))
    with pytest.raises(RecordError, match=rf"{path.name}.*metrics must be an object.*environment.device"):
        read_records([tmp_path])


def test_unreadable_and_foreign_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"suite": "throughput", "case": ')
    with pytest.raises(RecordError, match="broken.json.*cannot be read as JSON"):
        read_records([tmp_path])
    foreign = tmp_path / "other" / "config.json"
    foreign.parent.mkdir()
    foreign.write_text("{}")
    assert read_records([foreign.parent]) == []
    with pytest.raises(RecordError, match="config.json is not a benchmark record"):
        read_records([foreign])
    with pytest.raises(FileNotFoundError, match="missing"):
        read_records([tmp_path / "missing"])
    with pytest.raises(ValueError, match="iterable of paths"):
        read_records(tmp_path)  # type: ignore[arg-type]


def test_write_rejects_bad_arguments(tmp_path: Path, cpu_environment: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="suite"):
        write_record(tmp_path, "", CASE, METRICS, cpu_environment)
    with pytest.raises(ValueError, match="metrics"):
        write_record(tmp_path, "throughput", CASE, {"t": float("nan")}, cpu_environment)
    with pytest.raises(ValueError, match="case"):
        write_record(tmp_path, "throughput", [1], METRICS, cpu_environment)  # type: ignore[arg-type]
