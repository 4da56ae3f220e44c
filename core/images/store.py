"""The image store: pulls and imports into the content store, snapshots and metadata.

Every source (a registry, an OCI layout or archive, a docker archive, a rootfs tarball) ends in
``_ingest``: blobs are verified into the content store, each layer is unpacked once into its
snapshot, and only then is the image recorded, in one transaction. A crash at any point leaves
at most unreferenced blobs and staging dirs, which the next pull reuses and ``gc`` removes.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from ..config import Config
from ..errors import Conflict, ImageError, NotFound, UsageError
from ..lock import locked, stripe
from . import manifest as mf
from . import reference
from .content import ContentStore, sha256_bytes
from .metadata import Image, Layer, Metadata
from .snapshots import Snapshots

# progress(digest, done_bytes, total_bytes, status): status is "pulling", "unpacking", "done" or "exists"
Progress = Callable[[str, int, int, str], None]


class BlobSource(Protocol):
    """Where an image's blobs come from while it is ingested."""

    def fetch(self, desc: mf.Descriptor, dest: Path, progress: Callable[[int], None] | None) -> None:
        """Write the bytes of ``desc`` into ``dest`` (the store verifies them)."""


@dataclass
class GcReport:
    images: list[str] = field(default_factory=list)
    blobs: int = 0
    snapshots: int = 0
    partial: int = 0
    bytes_freed: int = 0


def local_name(text: str) -> str:
    """The name of a locally made image: ``foo`` is ``localhost/foo:latest``."""
    first = text.split("/", 1)[0]
    if "/" in text and ("." in first or ":" in first or first == "localhost"):
        return str(reference.parse(text))
    return str(reference.parse("localhost/" + text))


class ImageStore:
    def __init__(self, config: Config):
        self.config = config
        root = config.data_dir
        self.content = ContentStore(root / "images")
        self.snapshots = Snapshots(root / "snapshots", self.content, config.limits)
        self.meta = Metadata(root / "images.db")
        self._gc_lock = root / "images" / "gc.lock"
        self._ready = False

    def _init(self) -> None:
        if not self._ready:
            self.content.init()
            self.snapshots.init()
            self._ready = True

    def close(self) -> None:
        self.meta.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Pulls and imports hold the store shared; gc's sweep holds it exclusively, so it never
        deletes a blob that a pull has stored but not yet recorded."""
        self._init()
        with locked(self._gc_lock, shared=True):
            yield

    # -- lookup -----------------------------------------------------------------------------
    def resolve(self, name: str) -> Image:
        """Find an image by ID (``sha256:...`` or a unique prefix of at least 4 hex digits), by
        name (normalized as Docker does), or by ``repo@digest``."""
        if not self._has_db():
            raise NotFound(f"image {name!r} not found (the store is empty)")
        image_id = self._resolve_id(name)
        img = self.meta.get(image_id) if image_id else None
        if img is None:
            raise NotFound(f"image {name!r} not found")
        return img

    def _resolve_id(self, name: str) -> str | None:
        if name.startswith("sha256:") and len(name) == 71:
            return name
        hexpart = name[7:] if name.startswith("sha256:") else name
        if 4 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart):
            ids = self.meta.by_id_prefix("sha256:" + hexpart)
            if len(ids) > 1:
                raise UsageError(f"image ID prefix {name!r} is ambiguous")
            if ids:
                return ids[0]
        found = self.meta.by_name(name)
        if found:
            return found
        stored = self._stored_name(name)
        if stored:
            return self.meta.by_name(stored)
        try:
            ref = reference.parse(name)
        except UsageError:
            return None
        return self.meta.by_repo_digest(ref.repository, ref.digest) if ref.digest else None

    def _stored_name(self, name: str) -> str | None:
        """The stored name that ``name`` means: as given, Docker-normalized, or as a local name."""
        for normalize in (str, lambda n: str(reference.parse(n)), local_name):
            try:
                candidate = normalize(name)
            except UsageError:
                continue
            if self.meta.by_name(candidate):
                return candidate
        return None

    def list(self) -> list[Image]:
        if not self._has_db():
            return []
        return self.meta.images()

    def _has_db(self) -> bool:
        """Whether the metadata DB exists; PermissionError (not False) when the caller may not
        look (outside the data dir's group)."""
        try:
            os.stat(self.meta.path)
            return True
        except FileNotFoundError:
            return False

    def manifest_bytes(self, img: Image) -> bytes:
        return self.content.read(img.manifest_digest, self.config.limits.max_manifest)

    def image_config(self, img: Image) -> mf.ImageConfig:
        return mf.parse_config(self.content.read(img.id, self.config.limits.max_config))

    def layer_dirs(self, img: Image) -> list[Path]:
        """Snapshot dirs of the image's layers, bottom first (an empty dir for a layerless image)."""
        dirs = [self.snapshots.path(la.diff_id) for la in img.layers]
        for d, la in zip(dirs, img.layers):
            if not d.is_dir():  # removed behind our back: unpack it again from its blob
                self._init()
                self.snapshots.ensure(la.diff_id, la.blob)
        return dirs or [self.snapshots.empty]

    # -- pulls ------------------------------------------------------------------------------
    def pull(self, ref: str, *, platform: str | None = None, progress: Progress | None = None,
             auths: dict | None = None) -> Image:
        from . import trust
        from .registry import RegistryClient  # only pulls pay for httpx

        r = reference.parse(ref)
        want = mf.parse_platform(platform)
        gate = trust.Gate(self.config, r)  # a "reject" rule refuses before anything is fetched
        with self._writing(), RegistryClient(self.config, auths) as client:
            top = client.get_manifest(r, mf.ACCEPT)
            gate.verify(client, top.digest)  # signatures, before any of the image is stored
            doc = mf.parse(top.data, top.media_type)
            extra = []
            if isinstance(doc, mf.Index):
                self.content.put(top.data, top.digest)
                extra.append(top.digest)
                desc = mf.select(doc, want)
                got = client.get_manifest(reference.Reference(r.host, r.path, None, desc.digest), mf.ACCEPT)
                mdata, mdigest, mtype = got.data, got.digest, got.media_type
            else:
                mdata, mdigest, mtype = top.data, top.digest, top.media_type
            names = [str(r)] if r.tag and not r.digest else []
            source = _RegistrySource(client, r)
            return self._ingest(source, mdata, mdigest, mtype, names, [f"{r.repository}@{top.digest}"],
                                extra, want, progress)

    # -- local sources ----------------------------------------------------------------------
    def import_source(self, spec: str, *, name: str | None = None, platform: str | None = None,
                      progress: Progress | None = None) -> Image:
        """Import from ``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]`` or ``docker-archive:FILE[:REF]``.
        Local sources are not signature-checked; a trust policy that rejects their name refuses them."""
        from . import sources, trust

        kind, _, rest = spec.partition(":")
        path, _, ref = rest.partition(":")
        if not path:
            raise UsageError(f"invalid image source {spec!r}")
        want = mf.parse_platform(platform)
        with self._writing():
            if kind == "docker-archive":
                src = sources.DockerArchive(Path(path), self.config.limits)
                return self._ingest_docker(src, ref or None, name, want, progress, spec)
            if kind == "oci":
                layout: sources.Layout = sources.DirLayout(Path(path))
            elif kind == "oci-archive":
                layout = sources.TarLayout(Path(path))
            else:
                raise UsageError(f"unknown image source {kind!r} (use docker://, oci:, oci-archive:, "
                                 "docker-archive:)")
            with layout:
                desc, ref_name = layout.find(ref or None, self.config.limits)
                names = [local_name(name)] if name else _layout_names(ref_name, Path(path))
                trust.check_local(self.config, names, spec)
                data = layout.read(desc, self.config.limits.max_manifest)
                extra = []
                doc = mf.parse(data, desc.media_type)
                if isinstance(doc, mf.Index):
                    self.content.put(data, desc.digest)
                    extra.append(desc.digest)
                    desc = mf.select(doc, want)
                    data = layout.read(desc, self.config.limits.max_manifest)
                return self._ingest(layout, data, desc.digest, desc.media_type, names, [], extra, want, progress)

    def _ingest_docker(self, src, ref: str | None, name: str | None, want: mf.Platform,
                       progress: Progress | None, spec: str) -> Image:
        from . import trust

        with src:
            entry = src.find(ref)
            tags = entry.get("RepoTags") or []
            names = [local_name(name)] if name else [str(reference.parse(t)) for t in tags]
            trust.check_local(self.config, names, spec)
            config_bytes = src.read_member(entry["Config"], self.config.limits.max_config)
            cfg = mf.parse_config(config_bytes)
            config_digest = self.content.put(config_bytes)
            layers = []
            for path in entry["Layers"]:
                with src.open_member(path) as f:
                    layers.append(self._store_stream(f, progress))
            manifest = _oci_manifest(config_digest, len(config_bytes), layers)
            data = json.dumps(manifest, separators=(",", ":")).encode()
            return self._ingest(None, data, sha256_bytes(data), mf.OCI_MANIFEST, names, [], [], want, progress)

    def import_rootfs(self, tar_path: Path, name: str, progress: Progress | None = None) -> Image:
        """Make a one-layer image from a plain rootfs tarball (``podman import``)."""
        from . import trust
        from .unpack import diff_id_of

        trust.check_local(self.config, [local_name(name)], str(tar_path))
        with self._writing():
            with open(tar_path, "rb") as f:
                blob, size, mtype = self._store_stream(f, progress)
            with self.content.open(blob) as f:
                diff_id = diff_id_of(f, self.config.limits)
            plat = mf.host_platform()
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            config = {"created": now, "architecture": plat.architecture, "os": plat.os,
                      "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
                      "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                      "history": [{"created": now, "created_by": f"pypod image import {tar_path.name}"}]}
            cbytes = json.dumps(config, separators=(",", ":")).encode()
            cdigest = self.content.put(cbytes)
            manifest = _oci_manifest(cdigest, len(cbytes), [(blob, size, mtype)])
            data = json.dumps(manifest, separators=(",", ":")).encode()
            return self._ingest(None, data, sha256_bytes(data), mf.OCI_MANIFEST, [local_name(name)], [], [],
                                plat, progress)

    def _store_stream(self, f, progress: Progress | None) -> tuple[str, int, str]:
        """Copy a stream into the content store; returns (digest, size, layer media type)."""
        import hashlib

        tmp = self.content.temp_path()
        h = hashlib.sha256()
        n = 0
        head = b""
        try:
            with open(tmp, "wb") as out:
                while chunk := f.read(1 << 20):
                    if not head:
                        head = chunk[:4]
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
            digest = "sha256:" + h.hexdigest()
            self.content.commit(tmp, digest, n, verified=True)
        finally:
            tmp.unlink(missing_ok=True)
        if progress:
            progress(digest, n, n, "done")
        from .unpack import GZIP_MAGIC, ZSTD_MAGIC
        mtype = mf.OCI_LAYER_GZIP if head[:2] == GZIP_MAGIC else mf.OCI_LAYER_ZSTD if head == ZSTD_MAGIC \
            else mf.OCI_LAYER
        return digest, n, mtype

    def _ingest(self, source: BlobSource | None, mdata: bytes, mdigest: str, mtype: str | None,
                names: list[str], repo_digests: list[str], extra: list[str], want: mf.Platform,
                progress: Progress | None) -> Image:
        limits = self.config.limits
        if len(mdata) > limits.max_manifest:
            raise ImageError(f"manifest {mdigest} is larger than {limits.max_manifest} bytes")
        m = mf.parse(mdata, mtype)
        if not isinstance(m, mf.Manifest):
            raise ImageError("malformed image: an index points at another index where a manifest was expected")
        if m.config.size > limits.max_config:
            raise ImageError(f"image config is {m.config.size} bytes, over the limit of {limits.max_config}")
        self._ensure_blob(source, m.config, None)
        cfg = mf.parse_config(self.content.read(m.config.digest, limits.max_config))
        mf.check_layers(m, cfg)
        if cfg.architecture and cfg.os and (cfg.os != want.os or cfg.architecture != want.architecture):
            raise ImageError(f"image is for {cfg.os}/{cfg.architecture}, not {want} (use --platform)")

        def one_layer(pair: tuple[mf.Descriptor, str]) -> None:
            desc, diff_id = pair
            if self.snapshots.has(diff_id) and self.content.has(desc.digest):
                if progress:
                    progress(desc.digest, desc.size, desc.size, "exists")
                return
            self._ensure_blob(source, desc, progress)
            if progress:
                progress(desc.digest, desc.size, desc.size, "unpacking")
            self.snapshots.ensure(diff_id, desc.digest)
            if progress:
                progress(desc.digest, desc.size, desc.size, "done")

        pairs = list(zip(m.layers, cfg.diff_ids))
        workers = max(1, min(self.config.pull_concurrency, len(pairs)))
        if workers == 1:
            for p in pairs:
                one_layer(p)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="pull") as pool:
                for fut in [pool.submit(one_layer, p) for p in pairs]:
                    fut.result()
        self.content.put(mdata, mdigest)
        now = time.time()
        img = Image(id=m.config.digest, manifest_digest=mdigest, manifest_media_type=m.media_type,
                    size=len(mdata) + m.config.size + sum(la.size for la in m.layers),
                    os=cfg.os, architecture=cfg.architecture, created=cfg.raw.get("created"),
                    imported=now, last_used=now, names=names, repo_digests=repo_digests,
                    layers=[Layer(d.digest, diff, d.media_type, d.size) for d, diff in pairs])
        self.meta.add_image(img, extra)
        self._write_index()
        return self.resolve(img.id)

    def _ensure_blob(self, source: BlobSource | None, desc: mf.Descriptor, progress: Progress | None) -> None:
        if self.content.has(desc.digest):
            return
        if source is None:
            raise ImageError(f"blob {desc.digest} is missing from the source")
        with locked(stripe(self.content.root / "locks", desc.digest)):
            if self.content.has(desc.digest):
                return
            tmp = self.content.temp_path()
            done = 0

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(desc.digest, done, desc.size, "pulling")
            try:
                source.fetch(desc, tmp, step)
                self.content.commit(tmp, desc.digest, desc.size)
            finally:
                tmp.unlink(missing_ok=True)

    def _write_index(self) -> None:
        """Keep ``images/index.json`` listing every named image, so the store is an OCI layout."""
        manifests = []
        for name, image_id in self.meta.names_iter():
            img = self.meta.get(image_id)
            if img is None:
                continue
            manifests.append({"mediaType": img.manifest_media_type, "digest": img.manifest_digest,
                              "size": self.content.size(img.manifest_digest),
                              "annotations": {"org.opencontainers.image.ref.name": name}})
        index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": manifests}
        tmp = self.content.root / f".index.json.{os.getpid()}.{id(self)}"
        tmp.write_text(json.dumps(index, indent=1))
        os.rename(tmp, self.content.root / "index.json")

    def commit_layer(self, base: Image, layer: Path, diff_id: str, name: str, *, created_by: str) -> Image:
        """A new image: ``base`` plus one layer (a tar, maybe compressed, whose uncompressed digest
        is ``diff_id``), named ``name`` (``pypod export``)."""
        with self._writing():
            with open(layer, "rb") as f:
                blob, size, mtype = self._store_stream(f, None)
            raw = dict(self.image_config(base).raw)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            raw["created"] = now
            raw["rootfs"] = {"type": "layers", "diff_ids": [*self.image_config(base).diff_ids, diff_id]}
            raw["history"] = [*(raw.get("history") or []), {"created": now, "created_by": created_by}]
            cbytes = json.dumps(raw, separators=(",", ":")).encode()
            cdigest = self.content.put(cbytes)
            layers = [(la.blob, la.size, la.media_type) for la in base.layers] + [(blob, size, mtype)]
            data = json.dumps(_oci_manifest(cdigest, len(cbytes), layers), separators=(",", ":")).encode()
            plat = mf.Platform(base.os or "linux", base.architecture or mf.host_platform().architecture)
            return self._ingest(None, data, sha256_bytes(data), mf.OCI_MANIFEST, [local_name(name)], [], [],
                                plat, None)

    # -- names and removal ------------------------------------------------------------------
    def tag(self, name: str, new_name: str) -> Image:
        img = self.resolve(name)
        target = str(reference.parse(new_name)) if "/" in new_name else local_name(new_name)
        if reference.parse(target).digest:
            raise UsageError("a tag cannot contain a digest")
        self.meta.set_name(target, img.id)
        self._write_index()
        return self.resolve(img.id)

    def remove(self, name: str, *, force: bool = False) -> list[str]:
        """Remove a name, or the whole image when named by ID or by its last name.

        Returns the IDs of removed images. An image a pod uses is refused unless ``force``.
        """
        self._init()
        img = self.resolve(name)
        stored = self._stored_name(name)
        if stored and len(img.names) > 1:
            self.meta.remove_name(stored)
            self._write_index()
            return []
        holders = self.meta.holders(img.id)
        if holders and not force:
            raise Conflict(f"image {name} is in use by pod(s) {', '.join(holders)} (use --force)")
        self.meta.remove_image(img.id)
        self._write_index()
        with locked(self._gc_lock):
            self._sweep(GcReport())
        return [img.id]

    def hold(self, holder: str, img: Image) -> None:
        """Record that ``holder`` (a pod) uses ``img``: its layers survive image removal and gc."""
        self.meta.hold(holder, img.id, [la.diff_id for la in img.layers])
        self.meta.touch(img.id)

    def release(self, holder: str) -> None:
        if os.path.exists(self.meta.path):
            self.meta.release(holder)

    # -- garbage collection -----------------------------------------------------------------
    def gc(self, grace_period: float = 24 * 3600, *, is_holder_alive: Callable[[str], bool] | None = None
           ) -> GcReport:
        """Remove images unused for ``grace_period`` seconds and not held, then every orphan blob,
        snapshot, partial download and interrupted unpack. Idempotent; safe after a crash."""
        self._init()
        report = GcReport()
        if is_holder_alive is not None:
            for holder, _ in self.meta.all_holds():
                if not is_holder_alive(holder):
                    self.meta.release(holder)
        cutoff = time.time() - grace_period
        for img in self.meta.images():
            if img.last_used < cutoff and not self.meta.holders(img.id):
                self.meta.remove_image(img.id)
                report.images.append(img.id)
        self._write_index()
        with locked(self._gc_lock):
            self._sweep(report)
        return report

    def _sweep(self, report: GcReport) -> None:
        refs = self.meta.referenced_blobs()
        for digest in list(self.content.digests()):
            if digest not in refs:
                try:
                    report.bytes_freed += self.content.size(digest)
                except FileNotFoundError:
                    continue
                self.content.delete(digest)
                report.blobs += 1
        keep = self.meta.referenced_diff_ids()
        for diff_id in list(self.snapshots.diff_ids()):
            if diff_id not in keep:
                self.snapshots.remove(diff_id)
                report.snapshots += 1
        report.partial += self.content.clean_ingest(older_than=0)
        report.partial += self.snapshots.clean_staging()

    # -- export -----------------------------------------------------------------------------
    def export(self, name: str, out: Path, fmt: str = "oci-archive") -> Image:
        from . import sources

        img = self.resolve(name)
        if fmt not in ("oci-archive", "docker-archive", "oci"):
            raise UsageError(f"unknown export format {fmt!r} (oci-archive, docker-archive, oci)")
        sources.export(self, img, out, fmt)
        return img

    def render(self, name: str, dest: Path) -> Image:
        """Write the image's flattened rootfs into ``dest`` (rkt's ``image render``)."""
        from . import sources

        img = self.resolve(name)
        sources.render(self, img, dest)
        return img


def _layout_names(ref_name: str | None, path: Path) -> list[str]:
    """Name an image from a layout's ref.name annotation; a bare tag is taken as a tag of the
    layout's own name (``oci:/x/busybox`` tagged ``latest`` is ``localhost/busybox:latest``)."""
    if not ref_name:
        return []
    if ":" not in ref_name and "/" not in ref_name:
        base = path.name.lower().removesuffix(".tar") or "image"
        try:
            return [local_name(f"{base}:{ref_name}")]
        except UsageError:
            return []
    try:
        return [local_name(ref_name)]
    except UsageError:
        return []


def _oci_manifest(config_digest: str, config_size: int, layers: list[tuple[str, int, str]]) -> dict:
    return {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
            "config": {"mediaType": mf.OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": t, "digest": d, "size": s} for d, s, t in layers]}


class _RegistrySource:
    def __init__(self, client, ref: reference.Reference):
        self.client = client
        self.ref = ref

    def fetch(self, desc: mf.Descriptor, dest: Path, progress: Callable[[int], None] | None) -> None:
        self.client.fetch_blob(self.ref, desc.digest, dest, size=desc.size, progress=progress)
