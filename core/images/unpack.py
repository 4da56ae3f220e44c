"""Unpack one image layer into its own snapshot directory, safely.

Layers are untrusted. Every entry is placed by resolving its parent inside the target the way a
chroot would (symlinks are followed but clamped to the target), so no entry, link or whiteout can
reach outside it. OCI whiteouts become overlayfs whiteouts (0/0 character devices and the
``trusted.overlay.opaque`` xattr) so that a stack of snapshots mounts as an overlay.

Python's ``tarfile`` parses the headers (it knows every tar dialect); writing is ours, because the
``data`` extraction filter rejects real layers (absolute symlinks) and because its extraction path
is slower than it needs to be.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from ..config import Limits
from ..errors import DigestMismatch, ImageError, LimitExceeded, PypodError

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_CHUNK = 1 << 20
# Layers may carry file capabilities and user xattrs; trusted.* (overlay metadata such as
# redirect or metacopy) and other security.* labels from an image are never applied.
_ALLOWED_XATTR_PREFIXES = ("user.", "security.capability")

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class LayerStats:
    diff_id: str
    unpacked_bytes: int
    entries: int


class _Reader(io.RawIOBase):
    """Counts and hashes the uncompressed tar stream; enforces the size limit (decompression bombs)."""

    def __init__(self, raw: BinaryIO, limit: int):
        self.raw = raw
        self.limit = limit
        self.count = 0
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else _CHUNK)
        self.count += len(data)
        if self.count > self.limit:
            raise LimitExceeded(f"layer expands past the limit of {self.limit} bytes (max_layer_unpacked)")
        self.hash.update(data)
        return data

    def readinto(self, b) -> int:  # pragma: no cover - tarfile uses read()
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def decompressor(f: BinaryIO) -> BinaryIO:
    """Wrap a layer blob in the right decompressor, chosen by its magic bytes (media types lie)."""
    head = f.read(4)
    f.seek(0)
    if head[:2] == GZIP_MAGIC:
        from isal import igzip_threaded

        # A background thread decompresses while this one writes files.
        return igzip_threaded.open(f, "rb", threads=1)
    if head == ZSTD_MAGIC:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f, read_size=_CHUNK)
    return f


def apply_layer(blob: BinaryIO, target: str, limits: Limits, diff_id: str | None = None) -> LayerStats:
    """Unpack the (possibly compressed) layer ``blob`` into the empty directory ``target``.

    Raises ImageError for hostile or malformed content and DigestMismatch when the uncompressed
    stream does not match ``diff_id``. The caller unpacks into a staging directory and discards
    it on error, so a failed unpack leaves nothing visible.
    """
    stream = decompressor(blob)
    reader = _Reader(stream, limits.max_layer_unpacked)
    ex = _Extractor(os.path.realpath(target), limits)
    try:
        # A small record buffer: tarfile's stream copies its whole buffer on every read.
        with tarfile.open(fileobj=io.BufferedReader(reader, _CHUNK), mode="r|", bufsize=16384) as tf:
            for member in tf:
                ex.entries += 1
                if ex.entries > limits.max_layer_entries:
                    raise LimitExceeded(f"layer has more than {limits.max_layer_entries} entries")
                ex.add(tf, member)
        reader.drain()
    except (tarfile.TarError, EOFError) as e:
        raise ImageError(f"truncated or malformed layer: {e}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ImageError(f"no space left while unpacking a layer into {target}") from None
        if e.errno is not None:
            raise
        raise ImageError(f"corrupted layer: {e}") from None  # e.g. BadGzipFile
    except PypodError:
        raise
    except Exception as e:  # decompressor errors (isal, zstandard) have their own types
        raise ImageError(f"corrupted layer: {type(e).__name__}: {e}") from None
    finally:
        if stream is not blob:
            stream.close()
    ex.finish()
    got = "sha256:" + reader.hash.hexdigest()
    if diff_id is not None and got != diff_id:
        raise DigestMismatch(f"layer content has diff_id {got}, the image config says {diff_id}")
    return LayerStats(got, reader.count, ex.entries)


def diff_id_of(blob: BinaryIO, limits: Limits) -> str:
    """The digest of a layer's uncompressed tar stream."""
    stream = decompressor(blob)
    try:
        reader = _Reader(stream, limits.max_layer_unpacked)
        reader.drain()
    finally:
        if stream is not blob:
            stream.close()
    return "sha256:" + reader.hash.hexdigest()


def _clean(name: str) -> str:
    """Normalize an entry name to a path relative to the layer root; '' is the root itself."""
    stripped = name.lstrip("/")  # absolute names are relative to the layer root, as tar does
    rel = posixpath.normpath(stripped) if stripped else "."
    if rel == ".." or rel.startswith("../"):
        raise ImageError(f"hostile layer: entry {name!r} points outside the layer")
    return "" if rel == "." else rel


class _Extractor:
    def __init__(self, root: str, limits: Limits):
        self.root = root
        self.limits = limits
        self.is_root = os.geteuid() == 0
        self.entries = 0
        self.dirs: dict[str, str] = {"": root}  # entry dir -> resolved real directory
        self.dir_times: list[tuple[str, float]] = []

    # -- path resolution ------------------------------------------------------------------
    def _resolve_dir(self, rel: str) -> str:
        """The real directory inside root that ``rel`` names, following symlinks as a chroot would.

        Missing components are created. Never returns a path outside root.
        """
        cached = self.dirs.get(rel)
        if cached is not None:
            return cached
        parts = [p for p in rel.split("/") if p and p != "."]
        cur: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if cur:
                    cur.pop()
                continue
            path = self.root + "/" + "/".join(cur + [part])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                cur.append(part)
                continue
            if stat.S_ISDIR(st.st_mode):
                cur.append(part)
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise ImageError(f"hostile layer: too many symlinks resolving {rel!r}")
                link = os.readlink(path)
                if link.startswith("/"):
                    cur = []
                parts = [p for p in link.split("/") if p] + parts
            else:
                raise ImageError(f"malformed layer: {rel!r} is used as a directory but is a file")
        resolved = self.root + ("/" + "/".join(cur) if cur else "")
        self.dirs[rel] = resolved
        return resolved

    def _place(self, rel: str) -> str:
        """Absolute path for entry ``rel``: resolved parent + its own (unresolved) name."""
        parent, base = posixpath.split(rel)
        if base in ("", ".", ".."):
            raise ImageError(f"hostile layer: invalid entry name {rel!r}")
        return self._resolve_dir(parent) + "/" + base

    def _clear(self, path: str, keep_dir: bool) -> None:
        """Remove whatever sits at ``path`` (an earlier entry of the same layer)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self.dirs = {"": self.root}  # a cached directory may have been replaced

    # -- entries --------------------------------------------------------------------------
    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if len(m.name) > self.limits.max_path:
            raise ImageError(f"hostile layer: entry name longer than {self.limits.max_path}")
        rel = _clean(m.name)
        base = posixpath.basename(rel)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(rel, base)
            return
        if rel == "":
            if m.isdir():
                self._meta(self.root, m, is_dir=True)
            return
        path = self._place(rel)
        if m.isdir():
            self._clear(path, keep_dir=True)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                pass
            self._meta(path, m, is_dir=True)
            return
        if m.isreg():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:  # an earlier entry of this layer: replace it
                self._clear(path, keep_dir=False)
                fd = os.open(path, flags, 0o600)
            try:
                # Plain members are read straight from the stream; sparse ones need tarfile's map.
                src = tf.fileobj if not m.issparse() else tf.extractfile(m)
                remaining = m.size
                while remaining > 0:
                    chunk = src.read(min(_CHUNK, remaining))  # type: ignore[union-attr]
                    if not chunk:
                        raise ImageError(f"truncated layer: {m.name!r} is cut short")
                    _write_all(fd, chunk)
                    remaining -= len(chunk)
                self._meta_fd(fd, m)
            finally:
                os.close(fd)
            return
        self._clear(path, keep_dir=False)
        if m.issym():
            os.symlink(m.linkname, path)
            self._meta(path, m, is_link=True)
        elif m.islnk():
            src_rel = _clean(m.linkname)
            if src_rel == "":
                raise ImageError(f"hostile layer: hardlink {m.name!r} to the layer root")
            src = self._place(src_rel)
            try:
                os.link(src, path, follow_symlinks=False)
            except FileNotFoundError:
                raise ImageError(f"malformed layer: hardlink {m.name!r} to missing {m.linkname!r}") from None
        elif m.ischr() or m.isblk() or m.isfifo():
            if not self.is_root:
                return  # an unprivileged unpack cannot create device nodes; skip them
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(path, kind | (m.mode & 0o7777), os.makedev(m.devmajor, m.devminor))
            self._meta(path, m)
        else:
            raise ImageError(f"unsupported tar entry type {m.type!r} for {m.name!r}")

    def _whiteout(self, rel: str, base: str) -> None:
        parent = self._resolve_dir(posixpath.dirname(rel))
        if base == OPAQUE:
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
            return
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", "..") or name.startswith(WHITEOUT_PREFIX):
            raise ImageError(f"hostile layer: invalid whiteout {rel!r}")
        path = parent + "/" + name
        self._clear(path, keep_dir=False)
        if not self.is_root:
            raise ImageError("unpacking a layer with whiteouts needs root (overlay whiteouts are devices)")
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    # -- metadata -------------------------------------------------------------------------
    def _xattrs(self, target: str | int, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if not name.startswith(_ALLOWED_XATTR_PREFIXES):
                continue
            raw = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, raw)
                else:
                    os.setxattr(target, name, raw, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise

    def _meta_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.is_root and (m.uid or m.gid):  # created by root: already 0:0
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)  # after chown: chown clears setuid bits
        if m.pax_headers:
            self._xattrs(fd, m)
        os.utime(fd, (m.mtime, m.mtime))

    def _meta(self, path: str, m: tarfile.TarInfo, *, is_dir: bool = False, is_link: bool = False) -> None:
        if self.is_root:
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if not is_link:
            os.chmod(path, m.mode & 0o7777)
        if m.pax_headers:
            self._xattrs(path, m)
        if is_dir:
            self.dir_times.append((path, m.mtime))
        else:
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        # Directory times last: creating children changed them.
        for path, mtime in reversed(self.dir_times):
            try:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            except FileNotFoundError:
                pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
