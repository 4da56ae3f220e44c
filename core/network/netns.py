"""Persistent named network namespaces: ``/run/pypod/netns/<name>``, no ``ip netns exec``.

A namespace is made by a short-lived thread (a thread is a task of its own: ``unshare(CLONE_NEWNET)``
moves only that thread), which brings ``lo`` up inside it and bind-mounts ``/proc/thread-self/ns/net``
onto the target file; the mount keeps the namespace alive after the thread is gone. No fork of
the (possibly multi-threaded) engine, no helper process. The same trick with ``setns`` runs a
callable inside an existing namespace (:func:`run_in`).

Every error path removes what it made: the target file is created exclusively, and a failure after
that unmounts (if mounted) and unlinks it before the error propagates.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import Conflict, PypodError

NETNS_DIR = Path("/run/pypod/netns")
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

T = TypeVar("T")


class NetnsError(PypodError):
    """A network namespace could not be created, entered or removed."""


@dataclass(frozen=True)
class NetNS:
    name: str
    path: Path
    mounted: bool   # False: a stale file whose namespace is gone (e.g. after a crash mid-delete)


def _libc():
    import ctypes

    global _LIBC
    try:
        return _LIBC
    except NameError:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.unshare.argtypes = [ctypes.c_int]
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        _LIBC = lib
        return lib


def _errno_error(what: str) -> OSError:
    import ctypes

    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that ends afterwards, so a namespace switch dies with it."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=run, name="pypod-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")  # type: ignore[return-value]


def _lo_up() -> None:
    """Bring ``lo`` up in the calling thread's network namespace (SIOCSIFFLAGS, no netlink needed)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def path_of(name_or_path: str | os.PathLike, base: str | os.PathLike = NETNS_DIR) -> Path:
    s = os.fspath(name_or_path)
    if "/" in s:
        return Path(s)
    if not _NAME_RE.match(s):
        raise NetnsError(f"invalid network namespace name {s!r}")
    return Path(base, s)


def is_netns(path: str | os.PathLike) -> bool:
    """True when ``path`` is a live network namespace reference (an nsfs file of type net)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_dev != os.stat("/proc/self/ns/net").st_dev:  # nsfs has one superblock
        return False
    return _ns_type(path) in (None, CLONE_NEWNET)


def _ns_type(path: str | os.PathLike) -> int | None:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.ioctl(fd, 0xB703)  # NS_GET_NSTYPE
    except OSError:
        return None
    finally:
        os.close(fd)


def create(name: str, base: str | os.PathLike = NETNS_DIR) -> Path:
    """Create the namespace ``<base>/<name>`` with ``lo`` up; Conflict if the name is taken."""
    from ..mount import MS_BIND, mount

    target = path_of(name, base)
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            break
        except FileExistsError:
            if attempt == 2 or is_netns(target):
                raise Conflict(f"network namespace {target} already exists") from None
            _remove(target)  # a stale file left by a crash between create and mount
    os.close(fd)

    def make() -> None:
        if _libc().unshare(CLONE_NEWNET) != 0:
            raise _errno_error("unshare(CLONE_NEWNET)")
        _lo_up()
        mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", target, None, MS_BIND)

    try:
        _in_thread(make)
    except BaseException as e:
        _remove(target)
        if isinstance(e, OSError):
            raise NetnsError(f"creating network namespace {target}: {e.strerror or e}") from None
        raise
    return target


def _remove(target: Path) -> None:
    from ..mount import umount

    for _ in range(16):  # stacked mounts (a racing create) unmount one at a time
        if not is_netns(target):
            break
        umount(target)
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise NetnsError(f"{target} is a directory, not a network namespace") from None


def delete(name_or_path: str | os.PathLike, base: str | os.PathLike = NETNS_DIR) -> bool:
    """Unmount and remove a namespace file; False when there was nothing. Idempotent."""
    target = path_of(name_or_path, base)
    if not os.path.lexists(target):
        return False
    try:
        _remove(target)
    except OSError as e:
        raise NetnsError(f"removing network namespace {target}: {e.strerror or e}") from None
    return True


def list_netns(base: str | os.PathLike = NETNS_DIR) -> list[NetNS]:
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    return [NetNS(n, Path(base, n), is_netns(Path(base, n))) for n in names if not n.startswith(".")]


def run_in(path: str | os.PathLike, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside the network namespace at ``path`` (in a throwaway thread)."""
    def enter() -> T:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetnsError(f"network namespace {path}: {e.strerror}") from None
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                err = _errno_error(f"setns({path})")
                raise NetnsError(str(err) if err.errno != errno.EINVAL
                                 else f"{path} is not a network namespace")
        finally:
            os.close(fd)
        return fn()

    return _in_thread(enter)


def set_lo_up(path: str | os.PathLike) -> None:
    run_in(path, _lo_up)


def interfaces(path: str | os.PathLike) -> list[str]:
    """Names of the interfaces in the namespace at ``path``."""
    import socket

    return [n for _, n in run_in(path, socket.if_nameindex)]
