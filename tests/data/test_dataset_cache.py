"""On-disk cache: hits skip the builder, bad files are reported and regenerated, writes are atomic."""

import os

import pytest
import torch

from probneural.data import OperatorDataset, cache
from probneural.data.cache import CacheWarning, cache_key, cache_path, load_or_build

PARAMS = {"problem": "toy", "n": 3, "seed": 0, "nested": {"alpha": 2.0, "contrast": [12.0, 3.0]}}


class Builder:
    """Counts calls; builds a small data set with shared grid tensors."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> OperatorDataset:
        self.calls += 1
        generator = torch.Generator().manual_seed(self.calls)
        nodes = torch.linspace(0, 1, 5)
        return OperatorDataset(
            torch.randn(3, 1, 5, 5, generator=generator),
            torch.randn(3, 2, 5, 5, generator=generator),
            (nodes, nodes),
            PARAMS,
        )


def _only_entry(directory):
    files = sorted(os.listdir(directory))
    assert len(files) == 1, files  # no temporary file left behind
    return directory / files[0]


def test_second_call_reads_identical_tensors_without_building(tmp_path):
    builder = Builder()
    first = load_or_build(tmp_path, PARAMS, builder)
    second = load_or_build(tmp_path, PARAMS, builder)
    assert builder.calls == 1
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert all(torch.equal(a, b) for a, b in zip(first.grid, second.grid))
    assert second.metadata == first.metadata == PARAMS
    path = _only_entry(tmp_path)
    assert path.name == f"toy-{cache_key(PARAMS)[:16]}.safetensors" and path == cache_path(tmp_path, PARAMS)


def test_key_is_canonical():
    reordered = {"seed": 0, "nested": {"contrast": [12.0, 3.0], "alpha": 2.0}, "n": 3, "problem": "toy"}
    assert cache_key(reordered) == cache_key(PARAMS)
    assert cache_key({**PARAMS, "seed": 1}) != cache_key(PARAMS)
    with pytest.raises(ValueError, match="params must be JSON-serialisable"):
        cache_key({"dtype": torch.float32})
    with pytest.raises(ValueError, match="problem"):
        cache_path("somewhere", {"problem": "../escape"})


def _flip_last_bytes(path):
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    path.write_bytes(bytes(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_header(path):
    data = bytearray(path.read_bytes())
    data[10:14] = b"\x00\xff\x00\xff"
    path.write_bytes(bytes(data))


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_flip_last_bytes, "checksum"),
        (_truncate, "unreadable"),
        (_corrupt_header, "unreadable"),
        (_empty, "unreadable"),
    ],
)
def test_damaged_file_is_reported_and_regenerated(tmp_path, damage, reason):
    builder = Builder()
    load_or_build(tmp_path, PARAMS, builder)
    path = _only_entry(tmp_path)
    damage(path)
    with pytest.warns(CacheWarning, match=rf"{path.name}.*{reason}"):
        rebuilt = load_or_build(tmp_path, PARAMS, builder)
    assert builder.calls == 2
    reread = load_or_build(tmp_path, PARAMS, builder)
    assert builder.calls == 2 and torch.equal(reread.x, rebuilt.x)
    assert _only_entry(tmp_path) == path


def test_file_of_other_parameters_is_not_used(tmp_path):
    other = {**PARAMS, "seed": 99}
    load_or_build(tmp_path, other, Builder())
    os.replace(cache_path(tmp_path, other), cache_path(tmp_path, PARAMS))
    builder = Builder()
    with pytest.warns(CacheWarning, match="key mismatch"):
        load_or_build(tmp_path, PARAMS, builder)
    assert builder.calls == 1


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        load_or_build(tmp_path, PARAMS, Builder())
    assert os.listdir(tmp_path) == []


def test_failed_build_writes_nothing(tmp_path):
    def failing_build():
        raise RuntimeError("solver diverged")

    with pytest.raises(RuntimeError, match="solver diverged"):
        load_or_build(tmp_path / "new", PARAMS, failing_build)
    assert not (tmp_path / "new").exists() or os.listdir(tmp_path / "new") == []
