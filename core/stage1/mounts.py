"""Bind mounts and unmounts through libc (no mount(8) process), and mount table queries."""

from __future__ import annotations

import ctypes
import errno
import os
import time

from . import Stage1Error

MS_BIND = 0x1000
MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def bind(source: str, target: str) -> None:
    """``mount --bind source target`` (target must exist)."""
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        e = ctypes.get_errno()
        raise Stage1Error(f"cannot bind {source} on {target}: {os.strerror(e)}")


def umount(target: str, *, retries: int = 5) -> bool:
    """Unmount ``target``; EBUSY is retried, then the mount is detached lazily (MNT_DETACH).

    Returns False when nothing was mounted there (EINVAL/ENOENT), True when it was unmounted.
    """
    delay = 0.005
    for attempt in range(retries + 1):
        if _libc.umount2(target.encode(), 0) == 0:
            return True
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):
            return False
        if e != errno.EBUSY:
            raise Stage1Error(f"cannot unmount {target}: {os.strerror(e)}")
        if attempt < retries:
            time.sleep(delay)
            delay *= 2
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise Stage1Error(f"cannot detach {target}: {os.strerror(e)}")
    return True


def mountpoints(prefix: str | None = None) -> list[str]:
    """Mount points of this mount namespace, optionally only those at or below ``prefix``."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if prefix is None or mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
                out.append(mp)
    return out


def is_mountpoint(path: str) -> bool:
    return path in mountpoints(path)
