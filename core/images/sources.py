"""Local image sources and sinks: OCI layout dirs and archives, docker-save archives, export, render.

Archives are read in place (random access by member name); nothing from them is written to disk
except verified blobs in the content store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from ..config import Limits
from ..errors import ImageError, LimitExceeded, NotFound
from . import manifest as mf
from .content import check_digest, sha256_bytes

if TYPE_CHECKING:
    from .metadata import Image
    from .store import ImageStore

REF_ANNOTATION = "org.opencontainers.image.ref.name"


class Layout:
    """An OCI image layout; subclasses say how to open its files."""

    where: str

    def __enter__(self) -> "Layout":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def _read_file(self, name: str, limit: int) -> bytes:
        with self._open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise LimitExceeded(f"{self.where}: {name} is larger than {limit} bytes")
        return data

    def find(self, ref: str | None, limits: Limits) -> tuple[mf.Descriptor, str | None]:
        """The index entry named ``ref`` (its ref.name annotation), or the only entry."""
        index = mf.parse(self._read_file("index.json", limits.max_manifest), mf.OCI_INDEX)
        if not isinstance(index, mf.Index):
            raise ImageError(f"{self.where}: index.json is not an image index")
        named = [(d, d.annotations.get(REF_ANNOTATION)) for d in index.manifests]
        if ref is None:
            if len(named) != 1:
                refs = ", ".join(n or d.digest for d, n in named) or "none"
                raise ImageError(f"{self.where} holds {len(named)} images ({refs}); name one as :REF")
            return named[0]
        for d, n in named:
            if n == ref or d.digest == ref:
                return d, n
        refs = ", ".join(n for _, n in named if n) or "none"
        raise NotFound(f"no image {ref!r} in {self.where} (it has: {refs})")

    def read(self, desc: mf.Descriptor, limit: int) -> bytes:
        if desc.size > limit:
            raise LimitExceeded(f"{self.where}: {desc.digest} is {desc.size} bytes, over {limit}")
        data = self._read_file(blob_name(desc.digest), limit)
        if sha256_bytes(data) != desc.digest:
            raise ImageError(f"{self.where}: blob {desc.digest} does not match its digest")
        return data

    def fetch(self, desc: mf.Descriptor, dest: Path, progress: Callable[[int], None] | None) -> None:
        with self._open(blob_name(desc.digest)) as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                if progress:
                    progress(len(chunk))


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + check_digest(digest)[7:]


class DirLayout(Layout):
    def __init__(self, path: Path):
        self.path = path
        self.where = f"oci:{path}"
        if not (path / "oci-layout").is_file():
            raise ImageError(f"{path} is not an OCI image layout (no oci-layout file)")

    def _open(self, name: str) -> BinaryIO:
        try:
            return open(self.path / name, "rb")
        except FileNotFoundError:
            raise ImageError(f"{self.where}: {name} is missing") from None


class _TarMembers:
    """Random access to the regular files of a tar archive, by normalized name."""

    def __init__(self, path: Path, what: str):
        self.where = f"{what}:{path}"
        self.lock = threading.Lock()  # members share one file: each read seeks it first
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {os.path.normpath(m.name.lstrip("/")): m for m in self.tar.getmembers() if m.isreg()}
        except FileNotFoundError:
            raise NotFound(f"{path}: no such file") from None
        except (tarfile.TarError, EOFError) as e:
            raise ImageError(f"{path} is not a readable tar archive: {e}") from None

    def open_member(self, name: str) -> BinaryIO:
        m = self.members.get(os.path.normpath(name.lstrip("/")))
        f = self.tar.extractfile(m) if m else None
        if f is None:
            raise ImageError(f"{self.where}: {name} is missing")
        return _Serialized(f, self.lock)  # type: ignore[return-value]

    def close(self) -> None:
        self.tar.close()


class _Serialized:
    """A member reader safe to use from several threads at once (layers are fetched in parallel)."""

    def __init__(self, f: BinaryIO, lock: threading.Lock):
        self.f, self.lock = f, lock

    def read(self, n: int = -1) -> bytes:
        with self.lock:
            return self.f.read(n)

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "_Serialized":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TarLayout(Layout):
    def __init__(self, path: Path):
        self.archive = _TarMembers(path, "oci-archive")
        self.where = self.archive.where
        if "oci-layout" not in self.archive.members:
            self.archive.close()
            raise ImageError(f"{path} is not an OCI archive (no oci-layout file)")

    def _open(self, name: str) -> BinaryIO:
        return self.archive.open_member(name)

    def close(self) -> None:
        self.archive.close()


class DockerArchive:
    """A ``docker save`` archive: manifest.json naming a config and layer tars per image."""

    def __init__(self, path: Path, limits: Limits):
        self.archive = _TarMembers(path, "docker-archive")
        self.where = self.archive.where
        self.limits = limits

    def __enter__(self) -> "DockerArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.archive.close()

    def read_member(self, name: str, limit: int) -> bytes:
        with self.archive.open_member(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise LimitExceeded(f"{self.where}: {name} is larger than {limit} bytes")
        return data

    def open_member(self, name: str) -> BinaryIO:
        return self.archive.open_member(name)

    def find(self, ref: str | None) -> dict:
        from . import reference

        try:
            entries = json.loads(self.read_member("manifest.json", self.limits.max_manifest))
        except ValueError as e:
            raise ImageError(f"{self.where}: malformed manifest.json ({e})") from None
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get("Config"), str) and isinstance(e.get("Layers"), list)
                for e in entries):
            raise ImageError(f"{self.where}: malformed manifest.json (expected a list of "
                             "{Config, RepoTags, Layers})")
        if ref is None:
            if len(entries) != 1:
                raise ImageError(f"{self.where} holds {len(entries)} images; name one as :REF")
            return entries[0]
        want = str(reference.parse(ref))
        for e in entries:
            if any(t == ref or str(reference.parse(t)) == want for t in e.get("RepoTags") or []):
                return e
        raise NotFound(f"no image {ref!r} in {self.where}")


# -- export -------------------------------------------------------------------------------------
def export(store: "ImageStore", img: "Image", out: Path, fmt: str) -> None:
    if fmt == "docker-archive":
        _export_docker(store, img, out)
        return
    blobs = [img.manifest_digest, img.id] + [la.blob for la in img.layers]
    desc = {"mediaType": img.manifest_media_type, "digest": img.manifest_digest,
            "size": store.content.size(img.manifest_digest)}
    manifests = [dict(desc, annotations={REF_ANNOTATION: n}) for n in img.names] or [desc]
    index = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": manifests}).encode()
    files: list[tuple[str, Path | bytes]] = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                                             ("index.json", index)]
    files += [(blob_name(d), store.content.path(d)) for d in dict.fromkeys(blobs)]
    if fmt == "oci":
        for name, src in files:
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dest.write_bytes(src)
            else:
                shutil.copyfile(src, dest)
        return
    _write_tar(out, files)


def _export_docker(store: "ImageStore", img: "Image", out: Path) -> None:
    from .unpack import decompressor

    with tempfile.TemporaryDirectory(dir=store.content.ingest_dir) as tmp:
        files: list[tuple[str, Path | bytes]] = [(f"{img.id[7:]}.json", store.content.path(img.id))]
        layer_names = []
        for la in img.layers:
            plain = Path(tmp) / la.diff_id[7:]
            with store.content.open(la.blob) as f, open(plain, "wb") as dst:
                src = decompressor(f)
                shutil.copyfileobj(src, dst, 1 << 20)
            name = f"{la.diff_id[7:]}/layer.tar"
            files.append((name, plain))
            layer_names.append(name)
        tags = [n for n in img.names if "@" not in n]
        manifest = [{"Config": f"{img.id[7:]}.json", "RepoTags": tags, "Layers": layer_names}]
        files.append(("manifest.json", json.dumps(manifest).encode()))
        repos: dict[str, dict[str, str]] = {}
        for t in tags:
            repo, _, tag = t.rpartition(":")
            repos.setdefault(repo, {})[tag] = img.layers[-1].diff_id[7:] if img.layers else img.id[7:]
        files.append(("repositories", json.dumps(repos).encode()))
        _write_tar(out, files)


def _write_tar(out: Path, files: list[tuple[str, Path | bytes]]) -> None:
    tmp = out.with_name(f".{out.name}.part")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, src in files:
                info = tarfile.TarInfo(name)
                info.mode = 0o644
                if isinstance(src, bytes):
                    info.size = len(src)
                    tar.addfile(info, _BytesReader(src))
                else:
                    info.size = src.stat().st_size
                    with open(src, "rb") as f:
                        tar.addfile(info, f)
        os.rename(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


class _BytesReader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk = self.data[self.pos:end].tobytes()
        self.pos += len(chunk)
        return chunk


def render(store: "ImageStore", img: "Image", dest: Path) -> None:
    """Flatten the image into ``dest`` by copying a read-only overlay of its snapshots.

    The overlay lives in a private mount namespace of the copying process, so it vanishes with
    that process even if pypod is killed halfway.
    """
    from ..mount import overlay_options

    dest.mkdir(parents=True, exist_ok=True)
    opts = overlay_options([store.snapshots.empty, *store.layer_dirs(img)])
    with tempfile.TemporaryDirectory(prefix="pypod-render-") as mnt:
        script = 'mount -t overlay -o ro,"$1" overlay "$2" && exec cp -a --no-preserve=context "$2/." "$3"'
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                            opts, mnt, str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageError(f"render into {dest} failed: {r.stderr.strip()}")


def write_diff_layer(upper: Path, out: Path) -> tuple[str, int]:
    """Turn an overlayfs upper dir (an app's changes) into a gzip OCI layer at ``out``.

    Overlay whiteouts (0/0 character devices) become ``.wh.NAME`` entries and opaque directories
    get ``.wh..wh..opq``, so the layer applies on top of the image it came from. Returns the
    layer's diff_id and its uncompressed size."""
    import hashlib
    import stat as st_mod

    from isal import igzip

    class _Hashing:
        def __init__(self, raw):
            self.raw, self.hash, self.size = raw, hashlib.sha256(), 0

        def write(self, data) -> int:
            self.hash.update(data)
            self.size += len(data)
            return self.raw.write(data)

        def flush(self) -> None:
            self.raw.flush()

    links: dict[tuple[int, int], str] = {}
    with open(out, "wb") as raw, igzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        sink = _Hashing(gz)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
            for dirpath, dirnames, filenames in os.walk(upper):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, upper)
                for name in sorted(dirnames) + sorted(filenames):
                    path = os.path.join(dirpath, name)
                    arc = os.path.normpath(os.path.join(rel_dir, name))
                    s = os.lstat(path)
                    if st_mod.S_ISCHR(s.st_mode) and s.st_rdev == 0:
                        wh = tarfile.TarInfo(os.path.join(os.path.dirname(arc), ".wh." + name))
                        wh.mtime = int(s.st_mtime)
                        tar.addfile(wh)
                        continue
                    info = tar.gettarinfo(path, arc)
                    info.uname = info.gname = ""
                    key = (s.st_dev, s.st_ino)
                    if info.isreg() and s.st_nlink > 1:
                        if key in links:
                            info.type, info.linkname, info.size = tarfile.LNKTYPE, links[key], 0
                            tar.addfile(info)
                            continue
                        links[key] = arc
                    caps = _xattr(path, "security.capability")
                    if caps is not None:
                        info.pax_headers["SCHILY.xattr.security.capability"] = caps.decode("latin-1")
                    if info.isreg():
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
                    if info.isdir() and _xattr(path, "trusted.overlay.opaque") == b"y":
                        opq = tarfile.TarInfo(os.path.join(arc, ".wh..wh..opq"))
                        opq.mtime = int(s.st_mtime)
                        tar.addfile(opq)
    return "sha256:" + sink.hash.hexdigest(), sink.size


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None
