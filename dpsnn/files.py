"""Atomic file writing: a file is either whole or not there; and the lock that keeps one writer per folder.

Example::

    with atomic_path("results/table.csv") as partial:
        write_everything_to(partial)
    # renamed into place only if the block finished

    lock = try_lock(Path("results/.lock"))   # None while another process holds it
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        yield Path(partial)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)


def try_lock(path: Path) -> IO[str] | None:
    """An exclusive lock on ``path`` (created with its folder), held until :func:`release_lock`; None when taken.

    The lock is the operating system's (``flock``): it goes with the process that holds it, so a
    killed writer never leaves a folder locked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def release_lock(lock: IO[str]) -> None:
    """Release and close a lock taken by :func:`try_lock`."""
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
