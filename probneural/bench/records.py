"""Benchmark records: one JSON file per benchmark case, with the environment it ran in.

A record is a JSON object::

    {"format": "probneural-benchmark-record/1",
     "suite": "throughput",
     "case": {"resolution": 64, "batch_size": 16, ...},      # what was benchmarked
     "metrics": {"train_step_ms": 41.2, ...},                 # what was measured
     "environment": {...}}                                    # see capture_environment

Files are written atomically (temporary file, then rename), so an interrupted run never
leaves a half-written record behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from probneural.io import atomic_write

__all__ = ["RECORD_FORMAT", "RecordError", "format_case_value", "read_records", "write_record"]

RECORD_FORMAT = "probneural-benchmark-record/1"
_FORMAT_PREFIX = "probneural-benchmark-record/"
_CONTENT_KEYS = ("suite", "case", "metrics", "environment")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_MAX_SLUG = 96


class RecordError(ValueError):
    """A benchmark record file is unreadable or does not follow the record format."""


def format_case_value(value: Any) -> str:
    """Compact text of a case parameter: sequences joined by ``x`` (``[12, 12]`` → ``12x12``)."""
    if isinstance(value, (list, tuple)):
        return "x".join(format_case_value(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-")[:_MAX_SLUG] or "case"


def _check_json_dict(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a dict; got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: must be JSON-serialisable without NaN or Inf ({error})") from None


def write_record(
    out_dir: str | Path,
    suite: str,
    case: dict[str, Any],
    metrics: dict[str, Any],
    environment: dict[str, Any],
) -> Path:
    """Write one benchmark case to ``out_dir`` as a JSON record, atomically.

    The file name joins the suite, the case parameters and a short hash of the whole
    record, e.g. ``throughput--resolution=64_batch_size=16--3fa2c1d0.json``, so records of
    different runs and machines can share a directory.

    Args:
        out_dir: directory of the record (created if needed).
        suite: name of the benchmark suite.
        case: the case's parameters (JSON-able).
        metrics: the measured figures (JSON-able, finite numbers or ``None``).
        environment: the run's environment (:func:`probneural.bench.capture_environment`).

    Returns:
        Path of the written file.

    Raises:
        ValueError: an argument is of the wrong type or not JSON-serialisable.
    """
    if not isinstance(suite, str) or not suite:
        raise ValueError(f"suite: expected a non-empty string; got {suite!r}")
    _check_json_dict("case", case)
    _check_json_dict("metrics", metrics)
    _check_json_dict("environment", environment)
    record = {"format": RECORD_FORMAT, "suite": suite, "case": case, "metrics": metrics, "environment": environment}
    text = json.dumps(record, indent=1) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    params = "_".join(f"{key}={format_case_value(value)}" for key, value in case.items())
    path = Path(out_dir) / f"{_slug(suite)}--{_slug(params)}--{digest}.json"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _validate(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """Return ``record`` if it follows the record format; raise :class:`RecordError` naming ``path`` otherwise."""
    problems = []
    if record.get("format") != RECORD_FORMAT:
        problems.append(f"format is {record.get('format')!r}, expected {RECORD_FORMAT!r}")
    if not isinstance(record.get("suite"), str) or not record.get("suite"):
        problems.append("suite must be a non-empty string")
    for key in ("case", "metrics", "environment"):
        if not isinstance(record.get(key), dict):
            problems.append(f"{key} must be an object")
    environment = record.get("environment")
    if isinstance(environment, dict):
        device, precision = environment.get("device"), environment.get("precision")
        if not isinstance(device, dict) or not {"type", "name"} <= device.keys():
            problems.append("environment.device must be an object with 'type' and 'name'")
        if not isinstance(precision, dict) or "name" not in precision:
            problems.append("environment.precision must be an object with 'name'")
        if not isinstance(environment.get("hostname"), str):
            problems.append("environment.hostname must be a string")
    if problems:
        raise RecordError(f"benchmark record {path} is malformed: " + "; ".join(problems))
    return record


def _is_record_like(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    declared = isinstance(data.get("format"), str) and data["format"].startswith(_FORMAT_PREFIX)
    return declared or all(key in data for key in _CONTENT_KEYS)


def _parse(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"benchmark record {path} cannot be read as JSON ({error})") from None


def read_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read benchmark records from files and directories.

    Directories are searched recursively for ``*.json`` files; JSON files that are not
    records (e.g. checkpoint metadata) are skipped. A file named explicitly must be a record.

    Args:
        paths: record files and/or directories holding them.

    Returns:
        The records, in the order of ``paths`` (and of sorted file names within a directory).

    Raises:
        ValueError: ``paths`` is a single path instead of an iterable of paths.
        FileNotFoundError: a path does not exist.
        RecordError: a file cannot be parsed as JSON, a record-like object breaks the
            record format, or an explicitly named file is not a record. The message names the file.
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"paths: expected an iterable of paths; got the single path {paths!r}, wrap it in a list")
    records: list[dict[str, Any]] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            for path in sorted(p for p in entry.rglob("*.json") if p.is_file()):
                data = _parse(path)
                if _is_record_like(data):
                    records.append(_validate(data, path))
        elif entry.is_file():
            data = _parse(entry)
            if not _is_record_like(data):
                raise RecordError(
                    f"{entry} is not a benchmark record: expected a JSON object with keys {('format', *_CONTENT_KEYS)}"
                )
            records.append(_validate(data, entry))
        else:
            raise FileNotFoundError(f"paths: {entry} does not exist")
    return records
