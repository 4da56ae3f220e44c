"""Image metadata in SQLite: images, their names, repo digests, layers, and who holds them.

WAL mode lets readers (``image list``) run while a pull writes; every change is one transaction,
so an image becomes visible only once all its blobs and snapshots are in place.

Readers without write access (members of the data dir's group, see :mod:`pypod.access`) open
the database read-only. SQLite lets a read-only connection read a WAL database only if the
``-wal`` and ``-shm`` files exist (it cannot create them in a directory it may not write), yet
by default the last connection to close deletes them. So writers keep them
(``SQLITE_FCNTL_PERSIST_WAL``, see :func:`_keep_wal`), and the database is created 0640 with the
data dir's group, which SQLite passes on to ``-wal`` and ``-shm``. With a read-only ``-shm``,
SQLite rebuilds the WAL index in the reader's memory: a reader never writes anything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..lock import locked

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,                 -- the config digest, as Docker and podman name images
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    size INTEGER NOT NULL,               -- manifest + config + compressed layers
    os TEXT NOT NULL,
    architecture TEXT NOT NULL,
    created TEXT,
    imported REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS repo_digests (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,                -- manifest or index digest the image was pulled by
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (repo, digest)
);
CREATE TABLE IF NOT EXISTS layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    blob TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE TABLE IF NOT EXISTS extra_blobs (  -- e.g. the index an image was selected from
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    PRIMARY KEY (image_id, digest)
);
CREATE TABLE IF NOT EXISTS holds (        -- pods using an image; their snapshots stay while held
    holder TEXT NOT NULL,
    image_id TEXT NOT NULL,
    diff_ids TEXT NOT NULL,
    PRIMARY KEY (holder, image_id)
);
CREATE INDEX IF NOT EXISTS names_by_image ON names(image_id);
"""


@dataclass
class Layer:
    blob: str
    diff_id: str
    media_type: str
    size: int


@dataclass
class Image:
    id: str
    manifest_digest: str
    manifest_media_type: str
    size: int
    os: str
    architecture: str
    created: str | None
    imported: float
    last_used: float
    names: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "id": self.id, "names": self.names, "repo_digests": self.repo_digests,
            "manifest_digest": self.manifest_digest, "manifest_media_type": self.manifest_media_type,
            "size": self.size, "os": self.os, "architecture": self.architecture, "created": self.created,
            "imported": self.imported, "last_used": self.last_used,
            "layers": [{"digest": la.blob, "diff_id": la.diff_id, "media_type": la.media_type, "size": la.size}
                       for la in self.layers],
        }


class Metadata:
    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path.exists() and not os.access(self.path, os.W_OK):  # a reader in the data dir's group
                db = sqlite3.connect(self.path.absolute().as_uri() + "?mode=ro", uri=True, timeout=30,
                                     isolation_level=None, check_same_thread=False)
                try:
                    db.execute("PRAGMA user_version").fetchone()
                except sqlite3.OperationalError as e:
                    db.close()
                    from ..errors import PermissionDenied

                    raise PermissionDenied(f"cannot read {self.path} without write access ({e}): its -wal and -shm "
                                           f"files must exist; `pypod setup` (as root) makes them") from None
                self._db = db
                return db
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            _keep_wal(db, self.path)
            db.execute("PRAGMA foreign_keys = ON")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                # Switching to WAL ignores the busy timeout: first users serialize on a file lock.
                with locked(self.path.with_name(self.path.name + ".lock")):
                    if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                        self._share_new()  # before the WAL switch: -wal and -shm take its mode and group
                        db.execute("PRAGMA journal_mode = WAL")
                        db.executescript(_SCHEMA)
                        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _share_new(self) -> None:
        """A new database is 0640, with the data dir's group when root makes it."""
        from ..access import shared_gid

        os.chmod(self.path, 0o640)
        gid = shared_gid(self.path.parent)
        if gid is not None:
            os.chown(self.path, -1, gid)

    def _tx(self) -> "_Tx":
        return _Tx(self.db)

    # -- writes ---------------------------------------------------------------------------
    def add_image(self, img: Image, extra_blobs: Iterable[str] = ()) -> None:
        """Insert or refresh an image with its layers, names and repo digests, atomically."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "manifest_digest=excluded.manifest_digest, manifest_media_type=excluded.manifest_media_type, "
                "size=excluded.size, last_used=excluded.last_used",
                (img.id, img.manifest_digest, img.manifest_media_type, img.size, img.os, img.architecture,
                 img.created, img.imported, img.last_used))
            db.execute("DELETE FROM layers WHERE image_id=?", (img.id,))
            db.executemany("INSERT INTO layers VALUES (?,?,?,?,?,?)",
                           [(img.id, i, la.blob, la.diff_id, la.media_type, la.size)
                            for i, la in enumerate(img.layers)])
            for name in img.names:
                db.execute("INSERT OR REPLACE INTO names VALUES (?,?)", (name, img.id))
            for rd in img.repo_digests:
                repo, digest = rd.split("@", 1)
                db.execute("INSERT OR REPLACE INTO repo_digests VALUES (?,?,?)", (repo, digest, img.id))
            db.executemany("INSERT OR IGNORE INTO extra_blobs VALUES (?,?)", [(img.id, d) for d in extra_blobs])

    def set_name(self, name: str, image_id: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO names VALUES (?,?)", (name, image_id))

    def remove_name(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM names WHERE name=?", (name,))

    def remove_image(self, image_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM images WHERE id=?", (image_id,))

    def touch(self, image_id: str) -> None:
        self.db.execute("UPDATE images SET last_used=? WHERE id=?", (time.time(), image_id))

    def hold(self, holder: str, image_id: str, diff_ids: list[str]) -> None:
        self.db.execute("INSERT OR REPLACE INTO holds VALUES (?,?,?)", (holder, image_id, json.dumps(diff_ids)))

    def release(self, holder: str) -> None:
        self.db.execute("DELETE FROM holds WHERE holder=?", (holder,))

    # -- reads ----------------------------------------------------------------------------
    def _rows_to_images(self, rows: list[tuple]) -> list[Image]:
        images = [Image(*row) for row in rows]
        if not images:
            return images
        by_id = {img.id: img for img in images}
        marks = ",".join("?" * len(by_id))
        ids = list(by_id)
        for name, iid in self.db.execute(f"SELECT name, image_id FROM names WHERE image_id IN ({marks}) "
                                         "ORDER BY name", ids):
            by_id[iid].names.append(name)
        for repo, digest, iid in self.db.execute(
                f"SELECT repo, digest, image_id FROM repo_digests WHERE image_id IN ({marks}) ORDER BY repo", ids):
            by_id[iid].repo_digests.append(f"{repo}@{digest}")
        for iid, blob, diff_id, mt, size in self.db.execute(
                f"SELECT image_id, blob, diff_id, media_type, size FROM layers WHERE image_id IN ({marks}) "
                "ORDER BY image_id, position", ids):
            by_id[iid].layers.append(Layer(blob, diff_id, mt, size))
        return images

    _COLS = "id, manifest_digest, manifest_media_type, size, os, architecture, created, imported, last_used"

    def images(self) -> list[Image]:
        rows = self.db.execute(f"SELECT {self._COLS} FROM images ORDER BY imported").fetchall()
        return self._rows_to_images(rows)

    def get(self, image_id: str) -> Image | None:
        rows = self.db.execute(f"SELECT {self._COLS} FROM images WHERE id=?", (image_id,)).fetchall()
        found = self._rows_to_images(rows)
        return found[0] if found else None

    def by_name(self, name: str) -> str | None:
        row = self.db.execute("SELECT image_id FROM names WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def by_repo_digest(self, repo: str, digest: str) -> str | None:
        row = self.db.execute("SELECT image_id FROM repo_digests WHERE repo=? AND digest=?",
                              (repo, digest)).fetchone()
        if row:
            return row[0]
        row = self.db.execute("SELECT id FROM images WHERE manifest_digest=?", (digest,)).fetchone()
        return row[0] if row else None

    def by_id_prefix(self, prefix: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM images WHERE id LIKE ?", (prefix + "%",))]

    def holders(self, image_id: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT holder FROM holds WHERE image_id=?", (image_id,))]

    def all_holds(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT holder, image_id FROM holds").fetchall()

    def referenced_blobs(self) -> set[str]:
        db = self.db
        refs = {r[0] for r in db.execute("SELECT manifest_digest FROM images")}
        refs |= {r[0] for r in db.execute("SELECT id FROM images")}
        refs |= {r[0] for r in db.execute("SELECT blob FROM layers")}
        refs |= {r[0] for r in db.execute("SELECT digest FROM extra_blobs")}
        return refs

    def referenced_diff_ids(self) -> set[str]:
        refs = {r[0] for r in self.db.execute("SELECT diff_id FROM layers")}
        for (ids,) in self.db.execute("SELECT diff_ids FROM holds"):
            refs.update(json.loads(ids))
        return refs

    def names_iter(self) -> Iterator[tuple[str, str]]:
        yield from self.db.execute("SELECT name, image_id FROM names ORDER BY name")


def _keep_wal(db: sqlite3.Connection, path: Path) -> bool:
    """Make ``db`` leave its ``-wal`` and ``-shm`` files in place when it closes, so that readers
    that may not create them can still open the database. True if that could be arranged.

    Python's sqlite3 has no ``sqlite3_file_control``; it is called through ctypes on the
    connection's ``sqlite3*`` (the first field of CPython's connection object, 3.8 to 3.13),
    which is used only once ``sqlite3_db_filename`` confirms that it is this database. Elsewhere
    Python 3.12's ``setconfig(SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE)`` keeps the files too (the WAL
    is then checkpointed only by SQLite's automatic checkpoints)."""
    if sys.implementation.name == "cpython" and (3, 8) <= sys.version_info[:2] <= (3, 13):
        try:
            import ctypes

            import _sqlite3

            lib = ctypes.CDLL(_sqlite3.__file__)
            if not hasattr(lib, "sqlite3_file_control"):
                lib = ctypes.CDLL("libsqlite3.so.0")
            lib.sqlite3_libversion.restype = ctypes.c_char_p
            if lib.sqlite3_libversion().decode() == sqlite3.sqlite_version:
                handle = ctypes.c_void_p.from_address(id(db) + object.__basicsize__).value
                lib.sqlite3_db_filename.restype = ctypes.c_char_p
                lib.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                name = lib.sqlite3_db_filename(handle, b"main") if handle else None
                if name and os.path.realpath(name.decode()) == os.path.realpath(path):
                    one = ctypes.c_int(1)
                    lib.sqlite3_file_control.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                                         ctypes.c_void_p]
                    if lib.sqlite3_file_control(handle, b"main", _SQLITE_FCNTL_PERSIST_WAL, ctypes.byref(one)) == 0:
                        return True
        except (OSError, AttributeError, ImportError, UnicodeDecodeError):
            pass
    if hasattr(db, "setconfig") and hasattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE"):
        db.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
        return True
    return False


_SQLITE_FCNTL_PERSIST_WAL = 10


class _Tx:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
