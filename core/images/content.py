"""A content-addressed blob store laid out as an OCI image layout (``blobs/sha256/<hex>``).

Blobs enter only through :meth:`ContentStore.commit`, which checks the bytes against their digest and
renames them into place atomically, so a reader never sees a partial or unverified blob.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import DigestMismatch, ImageError, LimitExceeded, NotFound
from .reference import DIGEST_RE

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """Digest and size of a file, read in large chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ImageError(f"invalid or unsupported digest {digest!r} (only sha256 is accepted)")
    return digest


class ContentStore:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"

    def init(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            layout.write_bytes(OCI_LAYOUT)

    def path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest)[7:]

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def temp_path(self) -> Path:
        """A fresh path in the ingest area; GC removes those left behind by a crash."""
        return self.ingest_dir / f"{uuid.uuid4().hex}.part"

    def commit(self, tmp: Path, digest: str, size: int | None = None, *, verified: bool = False) -> None:
        """Move a downloaded or written file into the store under ``digest``, verifying it first.

        ``verified`` skips re-hashing when the caller hashed the bytes while writing them.
        """
        check_digest(digest)
        try:
            if not verified:
                got, n = sha256_file(tmp)
                if got != digest:
                    raise DigestMismatch(f"blob {digest} has digest {got}: content does not match")
                if size is not None and n != size:
                    raise DigestMismatch(f"blob {digest} is {n} bytes, expected {size}")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, self.path(digest))
        finally:
            if tmp.exists():
                tmp.unlink()

    def put(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data``; with ``digest`` given, the data must match it."""
        got = sha256_bytes(data)
        if digest is not None and got != digest:
            raise DigestMismatch(f"content for {digest} has digest {got}")
        if not self.has(got):
            tmp = self.temp_path()
            tmp.write_bytes(data)
            self.commit(tmp, got, verified=True)
        return got

    def read(self, digest: str, limit: int) -> bytes:
        """Read a small blob (manifest, config), checking its size limit and re-verifying it."""
        p = self.path(digest)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None
        if size > limit:
            raise LimitExceeded(f"blob {digest} is {size} bytes, over the limit of {limit}")
        data = p.read_bytes()
        if sha256_bytes(data) != digest:
            raise DigestMismatch(f"stored blob {digest} is corrupted on disk")
        return data

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def delete(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def digests(self) -> Iterator[str]:
        if self.blobs.exists():
            for entry in os.scandir(self.blobs):
                yield "sha256:" + entry.name

    def clean_ingest(self, older_than: float = 3600.0) -> int:
        """Remove partial downloads older than ``older_than`` seconds; returns how many."""
        n = 0
        cutoff = time.time() - older_than
        if self.ingest_dir.exists():
            for entry in os.scandir(self.ingest_dir):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    n += 1
        return n
