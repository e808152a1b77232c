"""One writer per output: an exclusive lock on an output path for a whole command (stdlib only).

``with output_lock(path):`` takes ``fcntl.flock`` on ``<path>.lock`` beside the output (a file or a
dataset directory) and writes the holder's pid into it. A second writer fails at once with
``OutputLockedError`` naming that pid. The kernel releases a flock when its process ends, however
it ends, so a lock file left by a killed process (SIGKILL, OOM) is not locked: the next writer
takes it over and logs whose it was. A clean end removes the lock file.

The lock file is this module's own: a ``<path>.lock`` that holds anything but a pid was not
written here and is neither replaced nor removed (``OutputLockedError``).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
_PID_WAIT_S = 1.0  # a holder writes its pid right after locking; wait this long to read it


class OutputLockedError(RuntimeError):
    """The output is being written by another process, or its lock file is not ours."""


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def _read_pid(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64).decode("ascii", "replace").strip()


def _holder(fd: int) -> str:
    """The pid written by the process holding the lock (it may still be writing it)."""
    deadline = time.monotonic() + _PID_WAIT_S
    pid = _read_pid(fd)
    while not pid and time.monotonic() < deadline:
        time.sleep(0.05)
        pid = _read_pid(fd)
    return pid or "unknown"


def _acquire(path: Path, lock: Path) -> int:
    """An fd holding the flock of the file now at ``lock``; raises when another process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise OutputLockedError(
                f"{path} is being written by another imgcls process (pid {pid}, lock {lock}); "
                "wait for it to end or write to another output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed that file as we locked it: lock the current one


def _claim(fd: int, path: Path, lock: Path) -> None:
    earlier = _read_pid(fd)
    if earlier and not earlier.isdigit():
        raise OutputLockedError(f"{lock} exists and is not an imgcls lock file (it holds {earlier[:40]!r}); "
                                f"move it away to write {path}")
    if earlier and int(earlier) != os.getpid():
        log.warning("%s: taking over the lock of pid %s, which ended without releasing it (killed?)", path, earlier)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    os.fsync(fd)


def _missing_parents(path: Path) -> list[Path]:
    missing, parent = [], path.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock on ``path`` (a file or directory to be written) for the block.

    Creates missing parent folders for the lock file and removes them again if they are still empty
    at the end. Yields the lock file's path.
    """
    path = Path(path)
    lock = lock_path(path)
    created = _missing_parents(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path, lock)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        try:
            _claim(fd, path, lock)
        except OutputLockedError:
            os.close(fd)
            fd = -1
            raise
        yield lock
    finally:
        if fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # while still locked: a waiter that locked this inode sees it gone and retries
            os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return
