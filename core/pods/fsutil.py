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

