"""flock(2) locks: the engine's only coordination between concurrent commands (no daemon).

The kernel drops a lock when its holder dies, so a lock never outlives a crashed command.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """Take a lock on an open fd without blocking; False if someone else holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def locked(path: str | os.PathLike, *, shared: bool = False) -> Iterator[int]:
    """Hold a blocking lock on the file at ``path`` (created if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def stripe(lock_dir: Path, key: str) -> Path:
    """A lock file for ``key`` among 256 fixed stripes: lock files are never deleted, so no
    unlink-while-locked race is possible, and 256 stripes keep contention negligible."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    h = key.rsplit(":", 1)[-1]
    return lock_dir / (h[:2] if len(h) >= 2 else "00")
