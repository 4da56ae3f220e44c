"""Small file helpers the stage1 flavors share: markers whose mtimes are timestamps, pid files."""

from __future__ import annotations

import os
import shutil


def touch(path: str) -> None:
    """Create ``path`` (or bump its mtime): a marker whose mtime records when something happened."""
    with open(path, "a"):
        pass
    os.utime(path)


def mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def read_int(path: str) -> int | None:
    """The integer in a pid or exit-code file; None when missing or not (yet) complete."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
