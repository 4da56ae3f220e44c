"""Small filesystem primitives shared by the pod modules: atomic writes, dir fds, markers."""

from __future__ import annotations

import os

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def open_dir(path: str | os.PathLike) -> int | None:
    """An fd on the directory at ``path`` (for flock and ``dir_fd=`` calls), None if it is gone."""
    try:
        return os.open(path, O_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_atomic(name: str, data: bytes, *, dir_fd: int | None = None, mode: int = 0o644,
                 durable: bool = True, dir_group: bool = False) -> None:
    """Replace ``name`` (relative to ``dir_fd``, or a path) with ``data``: a temporary file in the
    same directory, fsync'd, then rename(2), so readers see the old or the new file, never a torn
    one. A crash leaves at most a ``.NAME.*.tmp`` file, which no reader looks at. ``dir_group``:
    the file gets its directory's group (when root writes it), e.g. a pod's manifest, which the
    members of the data dir's group read (see :mod:`pypod.access`)."""
    head, base = os.path.split(name)
    tmp = os.path.join(head, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            if dir_group and os.geteuid() == 0:
                gid = os.fstat(dir_fd).st_gid if dir_fd is not None else os.stat(head or ".").st_gid
                if gid:
                    os.fchown(fd, -1, gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def read_file(name: str, *, dir_fd: int | None = None, limit: int = 16 << 20) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = []
        size = 0
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                return b"".join(chunks)
            size += len(b)
            if size > limit:
                raise OSError(f"{name}: larger than {limit} bytes")
            chunks.append(b)
    finally:
        os.close(fd)


def create_marker(name: str, *, dir_fd: int | None = None, mtime_ns: int | None = None) -> bool:
    """Create the empty file ``name`` unless it exists; its mtime is the event's time. True if this
    call created it (so exactly one of several racing callers reports the event)."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        return False
    os.close(fd)
    if mtime_ns is not None:
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd)
    return True


def marker_time(path: str) -> float | None:
    """The mtime of the marker at ``path`` in seconds, None if absent."""
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except FileNotFoundError:
        return None


# -- paths inside a root (openat2 RESOLVE_IN_ROOT) ---------------------------------------------
# The one place where pypod resolves paths chosen by an image (its symlinks) against the host:
# users.py reads /etc/passwd through it, isolation.py resolves volume targets with it.
_SYS_OPENAT2 = 437  # the same number on every architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


def _libc():
    import ctypes

    global _LIBC
    try:
        return _LIBC
    except NameError:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        return _LIBC


def open_in_root(root: str | os.PathLike, path: str, flags: int = os.O_RDONLY) -> int:
    """An fd on ``path`` resolved inside ``root`` as if chrooted there (openat2 with
    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): absolute symlinks, relative ones and ``..`` never
    leave ``root``. Raises OSError (ENOENT, ENOTDIR, ELOOP, ...)."""
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    dirfd = os.open(root, O_DIR)
    try:
        how = OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        libc = _libc()
        fd = libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{path} in {os.fspath(root)}: {os.strerror(e)}")
        return fd
    finally:
        os.close(dirfd)


def resolve_in_root(root: str | os.PathLike, path: str) -> str:
    """``path`` as the kernel would resolve it inside ``root`` (a chroot view), returned as an
    absolute path relative to ``root`` with every symlink followed — e.g. an image's
    ``/data -> /etc`` gives ``/etc`` (the rootfs' own, never the host's), ``/up -> ../../..``
    gives ``/``. Dangling symlinks are followed too; components that do not exist are kept (a
    runtime creates them inside the root). Each step is an openat2(RESOLVE_IN_ROOT) lookup, so
    no step can leave ``root``. This is the secure join the CVE-2021-30465 class of attacks
    calls for."""
    import stat

    root_real = os.path.realpath(root)
    todo = [p for p in path.split("/") if p not in ("", ".")]
    cur: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if cur:
                cur.pop()
            continue
        candidate = "/" + "/".join(cur + [name])
        try:
            fd = open_in_root(root_real, candidate, os.O_PATH | os.O_NOFOLLOW)
        except FileNotFoundError:
            cur.append(name)  # missing: the rest is created as given (lexically, inside root)
            for rest in todo:
                if rest == "..":
                    if cur:
                        cur.pop()
                elif rest not in ("", "."):
                    cur.append(rest)
            break
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                links += 1
                if links > 40:
                    raise OSError(40, f"{path} in {root_real}: too many levels of symbolic links")
                target = os.readlink("", dir_fd=fd)
                if target.startswith("/"):
                    cur = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            else:
                cur.append(name)
        finally:
            os.close(fd)
    return "/" + "/".join(cur)
