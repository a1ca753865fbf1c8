"""Crash-safe file writing shared by checkpoints, the data cache, benchmark records and reports."""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]

_ORPHAN_AGE_S = 3600.0  # a temporary file unchanged this long, of an exited process, is an orphan


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` so that it is either complete or untouched, whatever happens meanwhile.

    ``write(tmp)`` fills a temporary file in the same directory (named after ``path``, this host
    and this process; such files of exited processes are removed first); the file is fsync'd,
    given the permissions of a new file under the umask (``mkstemp`` creates 0600), renamed over
    ``path``, and the directory entry is fsync'd. On any error the temporary file is removed and
    the error re-raised.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{socket.gethostname()}."
    _remove_orphans(path.parent, prefix)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return path


def _remove_orphans(directory: Path, prefix: str) -> None:
    """Remove temporary files ``{prefix}{pid}.*.tmp`` whose writing process (on this host) has exited.

    A process killed while writing (SIGKILL, out of memory, power loss) cannot remove its
    temporary file, which can be as large as the data set; the next write of the same path
    removes it. Left alone: files of live processes (another writer of the same path), of other
    hosts (a shared file system), written to in the last :data:`_ORPHAN_AGE_S` seconds (a writer
    in another PID namespace under the same host name) and everything off POSIX.
    """
    if os.name != "posix":
        return
    for tmp in directory.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        try:
            stale = time.time() - tmp.stat().st_mtime > _ORPHAN_AGE_S
        except FileNotFoundError:
            continue
        if stale and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    """The process's file-mode creation mask: from ``/proc/self/status`` (Linux), else by setting and
    restoring it (which other threads creating files at that instant would see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable where the platform allows opening a directory (POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
