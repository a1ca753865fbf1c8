"""atomic_write: complete or untouched, with the permissions the umask gives a new file."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

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


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(exited.stdout)
    prefix = f".data.{socket.gethostname()}."
    orphan = tmp_path / f"{prefix}{dead}.k1ll3d.tmp"  # SIGKILL mid-write: as large as the data set
    live = tmp_path / f"{prefix}{os.getppid()}.wr1t1ng.tmp"  # another process writing the same path now
    other_host = tmp_path / f".data.elsewhere.{dead}.x.tmp"  # a shared file system
    recent = tmp_path / f"{prefix}{dead}.r3c3nt.tmp"  # written a minute ago (another PID namespace?)
    hour_ago = time.time() - 2 * 3600
    for path in (orphan, live, other_host, recent):
        path.write_bytes(b"partial")
        if path is not recent:
            os.utime(path, (hour_ago, hour_ago))
    atomic_write(tmp_path / "data", lambda tmp: tmp.write_text("done"))
    assert not orphan.exists() and live.exists() and other_host.exists() and recent.exists()
    assert (tmp_path / "data").read_text() == "done"
