"""Resolve an app's user and groups through its image's /etc/passwd and /etc/group.

The files are opened with openat2(RESOLVE_IN_ROOT), so a hostile image whose /etc/passwd is a
symlink to a host file reads its own rootfs, never the host.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from ..errors import UsageError
from .fsutil import open_in_root

_MAX_FILE = 4 << 20


def read_in_root(root: str, path: str, limit: int = _MAX_FILE) -> bytes | None:
    """The contents of ``path`` resolved inside ``root`` as if chrooted there; None if missing."""
    try:
        fd = open_in_root(root, path, os.O_RDONLY)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


@dataclass
class Identity:
    uid: int
    gid: int
    additional_gids: list[int]
    home: str | None = None


def _table(root: str, path: str) -> list[list[str]]:
    data = read_in_root(root, path) or b""
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) < 2**32 - 1 else None


def resolve(root: str, user: str, group: str | None, extra_gids: list[int], *, where: str = "app") -> Identity:
    """uid, gid and supplementary gids for ``user[:group]`` in the rootfs at ``root``.

    Numbers need no entry (as Docker); names must exist. The user's groups from /etc/group are
    added to ``extra_gids`` (as Docker and rkt do)."""
    passwd = _table(root, "/etc/passwd")
    uid = _number(user)
    entry = next((e for e in passwd if len(e) >= 4 and (e[0] == user or (uid is not None and e[2] == user))), None)
    if uid is None:
        if entry is None:
            raise UsageError(f"{where}: user {user!r} not found in the image's /etc/passwd")
        uid = _number(entry[2])
        if uid is None:
            raise UsageError(f"{where}: /etc/passwd has an invalid uid for {user!r}")
    groups = _table(root, "/etc/group")
    if group is not None:
        gid = _number(group)
        if gid is None:
            g = next((e for e in groups if len(e) >= 3 and e[0] == group), None)
            if g is None or _number(g[2]) is None:
                raise UsageError(f"{where}: group {group!r} not found in the image's /etc/group")
            gid = _number(g[2])
    else:
        gid = _number(entry[3]) if entry is not None and _number(entry[3]) is not None else 0
    name = entry[0] if entry is not None else None
    member_of = [_number(g[2]) for g in groups if len(g) >= 4 and name and name in g[3].split(",")]
    extra = list(dict.fromkeys([*(g for g in member_of if g is not None and g != gid), *extra_gids]))
    home = entry[5] if entry is not None and len(entry) >= 6 else None
    return Identity(uid, gid, extra, home)  # type: ignore[arg-type]
