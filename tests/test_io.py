"""atomic_write: complete or untouched, with the permissions the umask gives a new file."""

from __future__ import annotations

import os
import stat

import pytest

from probneural.io import atomic_write


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_write_follows_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        path = atomic_write(tmp_path / f"file-{mask:o}", lambda tmp: tmp.write_text("done"))
    finally:
        os.umask(previous)
    assert path.read_text() == "done"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "file", lambda tmp: tmp.write_text("old"))

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file"]
