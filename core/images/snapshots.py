"""Per-layer snapshots: each layer unpacked once, keyed by its diff_id, shared by every image.

``snapshots/<hex>/`` exists only when complete: unpacking happens in ``snapshots/.staging`` and
ends with an atomic rename, under a lock so that concurrent pulls never unpack a layer twice.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..config import Limits
from ..lock import locked, stripe, try_lock
from .content import ContentStore, check_digest
from .unpack import apply_layer


class Snapshots:
    def __init__(self, root: Path, content: ContentStore, limits: Limits):
        self.root = root
        self.content = content
        self.limits = limits
        self.staging = root / ".staging"
        self.locks = root / ".locks"
        self.empty = root / ".empty"  # the lower dir of an image without layers

    def init(self) -> None:
        for d in (self.root, self.staging, self.locks, self.empty):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, diff_id: str) -> Path:
        return self.root / check_digest(diff_id)[7:]

    def has(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir()

    def ensure(self, diff_id: str, blob: str) -> Path:
        """The snapshot of layer ``blob`` (whose uncompressed digest is ``diff_id``), unpacking it once."""
        final = self.path(diff_id)
        if final.is_dir():
            return final
        with locked(stripe(self.locks, diff_id)):
            if final.is_dir():  # another pull finished it while we waited
                return final
            tmp = self.staging / f"{final.name}.{uuid.uuid4().hex[:8]}"
            tmp.mkdir(mode=0o755)
            try:
                with self.content.open(blob) as f:
                    apply_layer(f, str(tmp), self.limits, diff_id)
                os.rename(tmp, final)
            except BaseException:
                remove_tree(tmp)
                raise
        return final

    def diff_ids(self) -> Iterator[str]:
        for entry in os.scandir(self.root):
            if not entry.name.startswith("."):
                yield "sha256:" + entry.name

    def remove(self, diff_id: str) -> None:
        """Delete a snapshot: first renamed into staging (atomic), then removed at leisure."""
        with locked(stripe(self.locks, diff_id)):
            final = self.path(diff_id)
            if not final.exists():
                return
            doomed = self.staging / f"rm-{uuid.uuid4().hex}"
            os.rename(final, doomed)
        remove_tree(doomed)

    def clean_staging(self) -> int:
        """Remove unpacks interrupted by a crash (and removals cut short). An unpack in progress
        holds its layer's lock, so an entry whose lock is free belongs to nobody."""
        n = 0
        for entry in os.scandir(self.staging):
            name = entry.name
            if name.startswith("rm-"):
                remove_tree(Path(entry.path))
                n += 1
                continue
            fd = os.open(stripe(self.locks, "sha256:" + name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if try_lock(fd):
                    remove_tree(Path(entry.path))
                    n += 1
            finally:
                os.close(fd)
        return n


def remove_tree(path: Path) -> None:
    """rmtree that also copes with read-only directories left by images."""
    def onerror(func, p, exc_info):
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        parent = os.path.dirname(p)
        os.chmod(parent, 0o755)
        func(p)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)
