"""On-disk cache: streamed writes equal in-memory data, hits skip the sampler, bad files are reported and regenerated, writes are atomic."""

import errno
import json
import os
import threading
import time

import pytest
import torch
from safetensors import safe_open

from probneural.data import cache, generation
from probneural.data.cache import CacheWarning, cache_key, cache_path

PARAMS = {"problem": "toy", "n": 7, "seed": 0, "nested": {"alpha": 2.0, "contrast": [12.0, 3.0]}}
NODES = torch.linspace(0, 1, 5)


class Sampler:
    """Counts calls; sample ``i`` is a deterministic function of ``(i, version)``."""

    def __init__(self, version: int = 0) -> None:
        self.calls = 0
        self.version = version

    def __call__(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        index = torch.arange(start, start + count, dtype=torch.float32)[:, None, None, None] + 100 * self.version
        x = torch.sin(index + torch.arange(25.0).reshape(1, 1, 5, 5))
        y = torch.cat([x**2, x.cos()], dim=1)
        return x, y


def load_or_build(directory, params, sampler, batch_size=3):
    return generation.build(params, 7, sampler, (NODES, NODES), batch_size=batch_size, cache_dir=directory, progress=False)


def _only_entry(directory):
    files = sorted(os.listdir(directory))
    assert len(files) == 1, files  # no temporary file left behind
    return directory / files[0]


def test_second_call_reads_identical_tensors_without_building(tmp_path):
    sampler = Sampler()
    first = load_or_build(tmp_path, PARAMS, sampler)
    second = load_or_build(tmp_path, PARAMS, sampler)
    assert sampler.calls == 3
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert all(torch.equal(a, b) for a, b in zip(first.grid, second.grid))
    assert second.metadata == first.metadata == PARAMS
    path = _only_entry(tmp_path)
    assert path.name == f"toy-{cache_key(PARAMS)[:16]}.safetensors" and path == cache_path(tmp_path, PARAMS)


def test_key_is_canonical():
    reordered = {"seed": 0, "nested": {"contrast": [12.0, 3.0], "alpha": 2.0}, "n": 7, "problem": "toy"}
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


def _metadata_of_another_type(path):
    """Valid JSON, valid layout, but the metadata a list instead of a dict."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = ["not", "a", "dict"]
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + size :])


def _edit_metadata(path):
    """A header still valid JSON and safetensors, whose data-set metadata says something else."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = json.loads(header["__metadata__"]["metadata"]) | {"viscosity": 0.7}
    header["__metadata__"]["metadata"] = json.dumps(metadata)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + size :])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_flip_last_bytes, "checksum"),
        (_edit_metadata, "checksum mismatch"),
        (_truncate, "truncated"),
        (_corrupt_header, "unreadable"),
        (_empty, "unreadable"),
        (_metadata_of_another_type, "metadata of type list"),
    ],
)
def test_damaged_file_is_reported_and_regenerated(tmp_path, damage, reason):
    sampler = Sampler()
    load_or_build(tmp_path, PARAMS, sampler)
    path = _only_entry(tmp_path)
    damage(path)
    with pytest.warns(CacheWarning, match=rf"{path.name}.*{reason}"):
        rebuilt = load_or_build(tmp_path, PARAMS, sampler)
    assert sampler.calls == 6
    reread = load_or_build(tmp_path, PARAMS, sampler)
    assert sampler.calls == 6 and torch.equal(reread.x, rebuilt.x)
    assert _only_entry(tmp_path) == path


def test_file_of_other_parameters_is_not_used(tmp_path):
    other = {**PARAMS, "seed": 99}
    load_or_build(tmp_path, other, Sampler())
    os.replace(cache_path(tmp_path, other), cache_path(tmp_path, PARAMS))
    sampler = Sampler()
    with pytest.warns(CacheWarning, match="key mismatch"):
        load_or_build(tmp_path, PARAMS, sampler)
    assert sampler.calls == 3


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        load_or_build(tmp_path, PARAMS, Sampler())
    assert os.listdir(tmp_path) == []


def test_failed_generation_writes_nothing(tmp_path):
    sampler = Sampler()

    def fails_in_second_batch(start, count):
        if start > 0:
            raise RuntimeError("solver diverged")
        return sampler(start, count)

    with pytest.raises(RuntimeError, match="solver diverged"):
        load_or_build(tmp_path / "new", PARAMS, fails_in_second_batch)
    assert not (tmp_path / "new").exists() or os.listdir(tmp_path / "new") == []


@pytest.mark.parametrize("batch_size", [1, 3, 7, 50])
def test_streamed_file_equals_in_memory_generation_for_any_batch_size(tmp_path, batch_size):
    in_memory = generation.build(PARAMS, 7, Sampler(), (NODES, NODES), batch_size=4, progress=False)
    streamed = load_or_build(tmp_path, PARAMS, Sampler(), batch_size=batch_size)
    assert torch.equal(streamed.x, in_memory.x) and torch.equal(streamed.y, in_memory.y)
    assert streamed.y.shape == (7, 2, 5, 5) and streamed.metadata == in_memory.metadata == PARAMS


def test_cache_file_is_standard_safetensors_and_reads_copy_on_write(tmp_path):
    dataset = load_or_build(tmp_path, PARAMS, Sampler())
    path = _only_entry(tmp_path)
    with safe_open(path, framework="pt") as handle:
        assert torch.equal(handle.get_tensor("x"), dataset.x) and torch.equal(handle.get_tensor("grid_1"), NODES)
        assert handle.metadata()["key"] == cache_key(PARAMS)
    before = path.read_bytes()
    dataset.x.add_(1.0)  # tensors map the file copy-on-write: the cache entry is unchanged
    assert path.read_bytes() == before
    assert torch.equal(cache.read(path, PARAMS).x, load_or_build(tmp_path, PARAMS, Sampler()).x)


def test_inconsistent_batches_are_refused(tmp_path):
    def wrong_shape(start, count):
        x, y = Sampler()(start, count)
        return (x, y) if start == 0 else (x[..., :4], y[..., :4])

    with pytest.raises(ValueError, match=r"sample shape \(1, 5, 4\).*expected"):
        load_or_build(tmp_path, PARAMS, wrong_shape)
    assert os.listdir(tmp_path) == []


def test_a_diverged_batch_is_refused_before_anything_is_cached(tmp_path):
    def sample_batch(start, count):
        y = torch.ones(count, 1, 4)
        y[0, 0, 0] = float("nan") if start == 2 else 1.0
        return torch.ones(count, 1, 4), y

    params = {"problem": "toy", "n": 4}
    grid = (torch.linspace(0, 1, 4),)
    with pytest.raises(RuntimeError, match="samples 2..3 are not finite"):
        generation.build(params, 4, sample_batch, grid, batch_size=2, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary
    with pytest.raises(RuntimeError, match="samples 2..3 are not finite"):  # without a cache too
        generation.build(params, 4, sample_batch, grid, batch_size=2, progress=False)


def test_a_disk_too_small_for_the_data_set_fails_after_the_first_batch(tmp_path, monkeypatch):
    reserved = []

    def full_disk(fd, offset, size):
        reserved.append(size)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full_disk, raising=False)  # also where the OS has none
    sampler = Sampler()
    with pytest.raises(OSError, match=rf"cache: {tmp_path} has .* GiB free; this data set needs .* GiB"):
        load_or_build(tmp_path, PARAMS, sampler)
    assert sampler.calls == 1  # 3 batches of 7 samples: stopped after the first, not at the end
    assert reserved and reserved[0] > 7 * (25 + 50) * 4  # the whole file, header included
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    assert len(load_or_build(tmp_path, PARAMS, sampler)) == 7  # with room, the same call succeeds


def test_concurrent_builders_of_one_entry_generate_it_once(tmp_path, capsys):
    """A second builder of an entry being generated (a parallel job of a sweep) waits and reads it."""
    started, release = threading.Event(), threading.Event()
    first, second, results = Sampler(), Sampler(), {}

    def slow(start, count):
        started.set()
        assert release.wait(30)
        return first(start, count)

    def build(name, sampler):
        results[name] = generation.build(PARAMS, 7, sampler, (NODES, NODES), batch_size=3, cache_dir=tmp_path,
                                         progress=name == "b")

    a = threading.Thread(target=build, args=("a", slow))
    a.start()
    assert started.wait(30)
    b = threading.Thread(target=build, args=("b", second))
    b.start()
    waited = ""
    for _ in range(300):  # until b says it waits for a's lock
        waited += capsys.readouterr().err
        if "waiting for another process generating" in waited:
            break
        time.sleep(0.01)
    assert "waiting for another process generating" in waited and b.is_alive()
    release.set()
    a.join(30)
    b.join(30)
    assert first.calls == 3 and second.calls == 0
    assert torch.equal(results["a"].x, results["b"].x) and torch.equal(results["a"].y, results["b"].y)
    _only_entry(tmp_path)  # the lock file is gone


def test_a_file_system_without_flock_generates_without_the_lock(tmp_path, monkeypatch):
    import fcntl

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    sampler = Sampler()
    with pytest.warns(CacheWarning, match="generated without a lock .*No locks available"):
        dataset = load_or_build(tmp_path, PARAMS, sampler)
    assert sampler.calls == 3 and len(dataset) == 7
    _only_entry(tmp_path)
