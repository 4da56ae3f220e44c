"""Mounts through the syscalls themselves (no mount(8) fork on the hot path)."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Sequence

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: str | os.PathLike, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode() if fstype else None, flags,
                   data.encode() if data is not None else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype or 'bind'} {source} on {target}: {os.strerror(e)}")


def umount(target: str | os.PathLike, *, detach_on_busy: bool = True) -> None:
    """Unmount ``target``; a busy mount is detached lazily (rkt's lesson: GC must finish)."""
    t = os.fsencode(target)
    if _libc.umount2(t, 0) == 0:
        return
    e = ctypes.get_errno()
    if e == errno.EINVAL or e == errno.ENOENT:
        return  # not a mount point (any more)
    if e == errno.EBUSY and detach_on_busy and _libc.umount2(t, MNT_DETACH) == 0:
        return
    raise OSError(e, f"umount {target}: {os.strerror(e)}")


def mounted_under(prefix: str | os.PathLike) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount them)."""
    p = os.path.realpath(prefix)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == p or point.startswith(p + "/"):
                found.append(point)
    return sorted(found, key=lambda m: m.count("/"), reverse=True)


def overlay_options(lowers: Sequence[Path], upper: Path | None = None, work: Path | None = None) -> str:
    """``lowers`` are bottom first, as images list layers; overlayfs wants the top first."""
    opts = "lowerdir=" + ":".join(str(p).replace(":", r"\:") for p in reversed(lowers))
    if upper is not None and work is not None:
        opts += f",upperdir={upper},workdir={work}"
    return opts


# -- idmapped mounts (Linux >= 5.12; on overlayfs lower layers >= 5.19) ------------------------
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # same on every architecture
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH, _AT_RECURSIVE = 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def idmapped_bind(source: str | os.PathLike, target: str | os.PathLike, userns_fd: int) -> None:
    """Bind ``source`` on ``target`` (which must exist) through the id mapping of the user
    namespace ``userns_fd``: a file owned by uid N on disk shows as owned by the id N maps to.
    open_tree(OPEN_TREE_CLONE) + mount_setattr(MOUNT_ATTR_IDMAP) + move_mount."""
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC
    fd = _libc.syscall(_SYS_OPEN_TREE, -100, os.fsencode(source), flags)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"open_tree {source}: {os.strerror(e)}")
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        if _libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                         ctypes.sizeof(attr)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"idmapping {source}: {os.strerror(e)}")
        if _libc.syscall(_SYS_MOVE_MOUNT, fd, b"", -100, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"move_mount {source} to {target}: {os.strerror(e)}")
    finally:
        os.close(fd)
