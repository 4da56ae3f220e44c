"""Test images for pypod, built offline from Debian's busybox-static.

Only the standard library is used (plus ``zstandard`` when it is importable,
with the ``zstd`` CLI as the fallback), never pypod itself, so that the tests
stay independent of the code they test.

Everything is deterministic: the same busybox binary gives the same digests.
Tar entries carry a fixed mtime, uid/gid 0 unless stated otherwise, numeric
owners only (empty uname/gname), and gzip streams carry no name and mtime 0.

Main entry points (each returns an :class:`Image`):

    build_busybox(dest)                 one layer: busybox + applet symlinks + /etc files
    build_layered(dest, compression=)   busybox + 2 layers with whiteouts / opaque dir
    build_configured(dest)              busybox + a rich config (User, Env, Entrypoint...)
    build_multiarch(dest, docker=False) image index (OCI) or manifest list (Docker)
    build_busybox_docker(dest)          Docker schema2 busybox
    build_all(outdir) -> TestImages     all of the above plus the archives below

Exporters: :func:`write_oci_archive`, :func:`write_docker_archive`,
:func:`write_rootfs_tar`. Benchmarks: :func:`build_bench_image`. Hostile
content for the security tests: :data:`HOSTILE_LAYERS`,
:func:`build_hostile_image` and the ``build_*`` functions in the
"hostile images" section.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import random
import struct
import subprocess
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

BUSYBOX = Path("/bin/busybox")

# Fixed timestamps: 2023-11-14T22:13:20Z.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_UNKNOWN_MANIFEST = "application/vnd.example.unknown.manifest.v1+json"

REF_NAME = "org.opencontainers.image.ref.name"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
app:x:1000:
extra:x:2000:app
nogroup:x:65534:
"""

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
           "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_arch() -> str:
    """The host's architecture in OCI/Go spelling (amd64, arm64, ...)."""
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    """Compact JSON, as manifests and configs are stored in the test images."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One layer of a built image."""
    media_type: str
    digest: str        # digest of the blob as stored (compressed bytes)
    size: int          # blob size in bytes
    diff_id: str       # digest of the uncompressed tar
    compression: str   # "gzip", "zstd" or "none"


@dataclass(frozen=True)
class Image:
    """An image written to an OCI image layout directory.

    ``digest`` is what a tag resolves to: the index digest for multi-platform
    images, the manifest digest otherwise. For an index, ``manifest_digest``,
    ``config_digest`` and ``layers`` describe the host platform's manifest and
    ``platforms`` maps "os/arch" to an :class:`Image` per platform manifest.
    """
    name: str
    layout: Path
    ref: str
    media_type: str                 # media type of the top-level manifest (or index)
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    config_media_type: str
    layers: tuple[Layer, ...]
    index_digest: str | None = None
    platforms: Mapping[str, "Image"] = field(default_factory=dict)
    # Paths (absolute, inside the image rootfs) that must / must not exist
    # once all layers are applied; for the tests that unpack the image.
    expected_present: tuple[str, ...] = ()
    expected_absent: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return self.index_digest or self.manifest_digest

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def oci_ref(self) -> str:
        """``DIR:REF`` as skopeo's and umoci's ``oci:`` transport spell it."""
        return f"{self.layout}:{self.ref}"

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.layout / "blobs" / algo / hexpart

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def manifest(self) -> dict:
        return json.loads(self.read_blob(self.manifest_digest))

    def config(self) -> dict:
        return json.loads(self.read_blob(self.config_digest))

    def index(self) -> dict | None:
        return json.loads(self.read_blob(self.index_digest)) if self.index_digest else None


@dataclass
class TestImages:
    """Everything :func:`build_all` produced."""
    __test__ = False  # not a pytest test class

    root: Path
    images: dict[str, Image]
    archives: dict[str, Path]

    def __getattr__(self, name: str):
        try:
            return self.__dict__["images"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Image:
        return self.images[name]


# --------------------------------------------------------------------------
# Tar layers
# --------------------------------------------------------------------------

class LayerTar:
    """Builds one layer tar with deterministic headers.

    Entries are written in the order they are added. With ``auto_parents``
    missing parent directories are added first (mode 0755, root-owned);
    hostile layers turn it off to control every entry.
    """

    def __init__(self, fileobj=None, *, auto_parents: bool = True):
        self._buf = fileobj if fileobj is not None else io.BytesIO()
        self._own = fileobj is None
        mode = "w" if self._own else "w|"
        self._tar = tarfile.open(fileobj=self._buf, mode=mode, format=tarfile.PAX_FORMAT)
        self._auto_parents = auto_parents
        self._seen: set[str] = set()

    def _info(self, name: str, type_: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = EPOCH
        return info

    def _parents(self, name: str) -> None:
        if not self._auto_parents:
            return
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._seen:
                self.dir(parent)

    def _add(self, info: tarfile.TarInfo, data: bytes | None = None, fileobj=None) -> None:
        self._parents(info.name)
        self._seen.add(info.name.strip("/"))
        if data is not None:
            info.size = len(data)
            fileobj = io.BytesIO(data)
        self._tar.addfile(info, fileobj)

    def dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._add(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name: str, data: bytes | str = b"", mode: int = 0o644,
             uid: int = 0, gid: int = 0) -> None:
        if isinstance(data, str):
            data = data.encode()
        self._add(self._info(name, tarfile.REGTYPE, mode, uid, gid), data)

    def file_stream(self, name: str, fileobj, size: int, mode: int = 0o644,
                    uid: int = 0, gid: int = 0) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = size
        self._add(info, fileobj=fileobj)

    def symlink(self, name: str, target: str, uid: int = 0, gid: int = 0) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid)
        info.linkname = target
        self._add(info)

    def hardlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = target
        self._add(info)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> None:
        info = self._info(name, tarfile.CHRTYPE, mode, 0, 0)
        info.devmajor, info.devminor = major, minor
        self._add(info)

    def fifo(self, name: str, mode: int = 0o644) -> None:
        self._add(self._info(name, tarfile.FIFOTYPE, mode, 0, 0))

    def whiteout(self, path: str) -> None:
        """OCI whiteout for ``path``: an empty file ``dir/.wh.base``."""
        head, _, base = path.strip("/").rpartition("/")
        self.file(f"{head}/.wh.{base}" if head else f".wh.{base}", b"")

    def opaque(self, directory: str) -> None:
        """Marks ``directory`` opaque (``dir/.wh..wh..opq``)."""
        self.file(f"{directory.strip('/')}/.wh..wh..opq", b"")

    def close(self) -> bytes | None:
        self._tar.close()
        return self._buf.getvalue() if self._own else None

    def bytes(self) -> bytes:
        data = self.close()
        assert data is not None
        return data


def busybox_applets() -> list[str]:
    """Applet paths (relative, e.g. ``bin/sh``) from ``busybox --list-full``."""
    out = subprocess.run([str(BUSYBOX), "--list-full"], check=True,
                         capture_output=True, text=True).stdout
    applets = set()
    for line in out.split():
        line = line.strip().strip("/")
        # /linuxrc would sit at the root; bin/busybox is the binary itself.
        if "/" not in line or line == "bin/busybox":
            continue
        applets.add(line)
    return sorted(applets)


def busybox_rootfs_tar(*, arch_file: str | None = None) -> bytes:
    """The busybox base rootfs as an uncompressed tar."""
    t = LayerTar()
    dirs = [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755),
            ("proc", 0o755), ("root", 0o700), ("run", 0o755), ("sbin", 0o755),
            ("sys", 0o755), ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755),
            ("usr/sbin", 0o755), ("usr/local", 0o755), ("usr/local/bin", 0o755),
            ("var", 0o755), ("var/tmp", 0o1777)]
    for name, mode in dirs:
        t.dir(name, mode)
    t.dir("home/app", 0o755, uid=1000, gid=1000)
    t.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in busybox_applets():
        t.symlink(applet, "/bin/busybox")
    t.file("etc/passwd", PASSWD)
    t.file("etc/group", GROUP)
    t.file("etc/shadow", "".join(f"{line.split(':')[0]}:*:19000:0:99999:7:::\n"
                                 for line in PASSWD.splitlines()), 0o640)
    t.file("etc/hostname", "")
    t.file("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    t.file("etc/os-release", 'NAME="pypod test busybox"\nID=busybox\n')
    if arch_file is not None:
        t.file("etc/arch", arch_file + "\n")
    return t.bytes()


# --------------------------------------------------------------------------
# Compression
# --------------------------------------------------------------------------

def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def zstd_bytes(data: bytes, level: int = 3) -> bytes:
    try:
        import zstandard
    except ImportError:
        return subprocess.run(["zstd", "-q", "-c", f"-{level}"], input=data,
                              check=True, capture_output=True).stdout
    return zstandard.ZstdCompressor(level=level).compress(data)


def zstd_decompress(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:
        return subprocess.run(["zstd", "-q", "-d", "-c"], input=data,
                              check=True, capture_output=True).stdout
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


_LAYER_TYPES = {
    ("oci", "gzip"): MT_OCI_LAYER_GZIP,
    ("oci", "zstd"): MT_OCI_LAYER_ZSTD,
    ("oci", "none"): MT_OCI_LAYER,
    ("docker", "gzip"): MT_DOCKER_LAYER_GZIP,
}


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip_bytes(data)
    if compression == "zstd":
        return zstd_bytes(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":
        return zstd_decompress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def compression_of(media_type: str) -> str:
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    return "none"


# --------------------------------------------------------------------------
# OCI image layout writer
# --------------------------------------------------------------------------

def descriptor(media_type: str, digest: str, size: int, **extra) -> dict:
    desc = {"mediaType": media_type, "digest": digest, "size": size}
    desc.update({k: v for k, v in extra.items() if v is not None})
    return desc


class Layout:
    """Writes an OCI image layout: ``oci-layout``, ``blobs/sha256/*``, ``index.json``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        index = self.path / "index.json"
        self.manifests: list[dict] = (json.loads(index.read_text())["manifests"]
                                      if index.exists() else [])

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.path / "blobs" / algo / hexpart

    def put(self, data: bytes, digest: str | None = None) -> tuple[str, int]:
        """Stores ``data``; ``digest`` overrides the name (for mismatch tests)."""
        digest = digest or sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists() or path.stat().st_size != len(data):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return digest, len(data)

    def put_file(self, src: Path, digest: str) -> tuple[str, int]:
        """Moves an already-hashed file into the blob store."""
        dst = self.blob_path(digest)
        os.replace(src, dst)
        return digest, dst.stat().st_size

    def put_json(self, obj, media_type: str, **extra) -> dict:
        digest, size = self.put(canonical_json(obj))
        return descriptor(media_type, digest, size, **extra)

    def tag(self, desc: dict, ref: str | None) -> None:
        entry = dict(desc)
        if ref is not None:
            entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: ref}
            self.manifests = [m for m in self.manifests
                              if m.get("annotations", {}).get(REF_NAME) != ref]
        self.manifests.append(entry)
        self.write_index()

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": self.manifests}
        (self.path / "index.json").write_bytes(canonical_json(index))


def _add_layer(layout: Layout, tar_bytes: bytes, compression: str,
               flavour: str = "oci") -> Layer:
    blob = compress(tar_bytes, compression)
    digest, size = layout.put(blob)
    return Layer(_LAYER_TYPES[(flavour, compression)], digest, size,
                 sha256_digest(tar_bytes), compression)


def _config(layers: Iterable[Layer], container: dict, *, arch: str | None = None,
            variant: str | None = None, history: list[str] | None = None) -> dict:
    layers = list(layers)
    history = history or [f"pypod test layer {i}" for i in range(len(layers))]
    cfg = {
        "created": CREATED,
        "author": "pypod tests",
        "architecture": arch or host_arch(),
        "os": "linux",
    }
    if variant:
        cfg["variant"] = variant
    cfg["config"] = container
    cfg["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    cfg["history"] = [{"created": CREATED, "created_by": h} for h in history]
    return cfg


def _write_manifest(layout: Layout, name: str, ref: str | None, layers: list[Layer],
                    config: dict | bytes, *, flavour: str = "oci",
                    config_media_type: str | None = None,
                    manifest_media_type: str | None = None,
                    annotations: dict | None = None,
                    expected_present=(), expected_absent=()) -> Image:
    config_mt = config_media_type or (MT_DOCKER_CONFIG if flavour == "docker" else MT_OCI_CONFIG)
    manifest_mt = manifest_media_type or (MT_DOCKER_MANIFEST if flavour == "docker"
                                          else MT_OCI_MANIFEST)
    cfg_bytes = config if isinstance(config, bytes) else canonical_json(config)
    cfg_digest, cfg_size = layout.put(cfg_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_mt,
        "config": descriptor(config_mt, cfg_digest, cfg_size),
        "layers": [descriptor(l.media_type, l.digest, l.size) for l in layers],
    }
    if annotations:
        manifest["annotations"] = annotations
    desc = layout.put_json(manifest, manifest_mt)
    if ref is not None:
        layout.tag(desc, ref)
    return Image(name=name, layout=layout.path, ref=ref or "", media_type=manifest_mt,
                 manifest_digest=desc["digest"], manifest_media_type=manifest_mt,
                 config_digest=cfg_digest, config_media_type=config_mt,
                 layers=tuple(layers), expected_present=tuple(expected_present),
                 expected_absent=tuple(expected_absent))


_busybox_tar_cache: dict[str | None, bytes] = {}


def _busybox_tar(arch_file: str | None = None) -> bytes:
    if arch_file not in _busybox_tar_cache:
        _busybox_tar_cache[arch_file] = busybox_rootfs_tar(arch_file=arch_file)
    return _busybox_tar_cache[arch_file]


BUSYBOX_CONTAINER_CONFIG = {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["sh"]}
BUSYBOX_PRESENT = ("/bin/busybox", "/bin/sh", "/bin/ls", "/usr/bin/env", "/etc/passwd",
                   "/etc/group", "/tmp", "/root", "/home/app")

# --------------------------------------------------------------------------
# The test images
# --------------------------------------------------------------------------


def build_busybox(dest: Path, ref: str = "latest", *, compression: str = "gzip") -> Image:
    """busybox: one layer with the binary, applet symlinks and /etc files."""
    layout = Layout(dest)
    base = _add_layer(layout, _busybox_tar(), compression)
    cfg = _config([base], dict(BUSYBOX_CONTAINER_CONFIG), history=["busybox rootfs"])
    return _write_manifest(layout, "busybox", ref, [base], cfg,
                           expected_present=BUSYBOX_PRESENT)


def build_busybox_docker(dest: Path, ref: str = "latest") -> Image:
    """busybox as a Docker schema2 image (same layer bytes, Docker media types)."""
    layout = Layout(dest)
    base = _add_layer(layout, _busybox_tar(), "gzip", flavour="docker")
    cfg = _config([base], dict(BUSYBOX_CONTAINER_CONFIG), history=["busybox rootfs"])
    return _write_manifest(layout, "busybox-docker", ref, [base], cfg, flavour="docker",
                           expected_present=BUSYBOX_PRESENT)


def layered_tars() -> list[bytes]:
    """Uncompressed tars of layers 2 and 3 of the ``layered`` image."""
    l2 = LayerTar()
    l2.file("data/keep", "keep\n")
    l2.file("data/remove-me", "this file is deleted by layer 3\n")
    l2.file("olddir/a", "a\n")
    l2.file("olddir/b", "b\n")
    l2.dir("olddir/sub")
    l2.file("olddir/sub/c", "c\n")
    l2.file("etc/layer2", "layer2\n")
    l3 = LayerTar()
    l3.dir("data")
    l3.whiteout("data/remove-me")
    l3.dir("olddir")
    l3.opaque("olddir")
    l3.file("olddir/new", "new\n")
    l3.file("etc/layer3", "layer3\n")
    return [l2.bytes(), l3.bytes()]


LAYERED_PRESENT = BUSYBOX_PRESENT + ("/data/keep", "/olddir/new", "/etc/layer2", "/etc/layer3")
LAYERED_ABSENT = ("/data/remove-me", "/data/.wh.remove-me", "/olddir/a", "/olddir/b",
                  "/olddir/sub", "/olddir/.wh..wh..opq")


def build_layered(dest: Path, ref: str = "latest", *, compression: str = "gzip") -> Image:
    """busybox (gzip) + layer 2 (files) + layer 3 (whiteout, opaque dir).

    ``compression`` ("gzip", "zstd", "none") applies to layers 2 and 3; the
    base layer stays gzip so that the image mixes layer media types.
    """
    layout = Layout(dest)
    layers = [_add_layer(layout, _busybox_tar(), "gzip")]
    layers += [_add_layer(layout, tar, compression) for tar in layered_tars()]
    cfg = _config(layers, dict(BUSYBOX_CONTAINER_CONFIG),
                  history=["busybox rootfs", "add /data and /olddir",
                           "whiteout /data/remove-me, opaque /olddir"])
    name = "layered" if compression == "gzip" else f"layered-{compression}"
    return _write_manifest(layout, name, ref, layers, cfg,
                           expected_present=LAYERED_PRESENT, expected_absent=LAYERED_ABSENT)


CONFIGURED_CONTAINER_CONFIG = {
    "User": "app",
    "Env": [f"PATH={DEFAULT_PATH}", "FOO=bar"],
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo hello"],
    "WorkingDir": "/home/app",
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
    "Labels": {"org.example.role": "test"},
    "StopSignal": "SIGTERM",
}


def build_configured(dest: Path, ref: str = "latest") -> Image:
    """busybox + a config with User, Env, Entrypoint, Cmd, WorkingDir, ports, labels."""
    layout = Layout(dest)
    base = _add_layer(layout, _busybox_tar(), "gzip")
    cfg = _config([base], json.loads(json.dumps(CONFIGURED_CONTAINER_CONFIG)),
                  history=["busybox rootfs"])
    return _write_manifest(layout, "configured", ref, [base], cfg,
                           expected_present=BUSYBOX_PRESENT)


MULTIARCH_PLATFORMS = (("amd64", None), ("arm64", "v8"))


def build_multiarch(dest: Path, ref: str = "latest", *, docker: bool = False) -> Image:
    """An OCI image index (or, with ``docker``, a Docker manifest list).

    Two platform manifests, linux/amd64 and linux/arm64. Both carry the same
    busybox layer (the host's binary) plus a small layer with /etc/arch
    naming the platform; the configs differ in architecture and in the label
    ``org.example.arch``.
    """
    flavour = "docker" if docker else "oci"
    layout = Layout(dest)
    base = _add_layer(layout, _busybox_tar(), "gzip", flavour)
    platforms: dict[str, Image] = {}
    entries = []
    for arch, variant in MULTIARCH_PLATFORMS:
        t = LayerTar()
        t.file("etc/arch", arch + "\n")
        arch_layer = _add_layer(layout, t.bytes(), "gzip", flavour)
        container = dict(BUSYBOX_CONTAINER_CONFIG, Labels={"org.example.arch": arch})
        cfg = _config([base, arch_layer], container, arch=arch, variant=variant,
                      history=["busybox rootfs", f"/etc/arch = {arch}"])
        img = _write_manifest(layout, f"multiarch-{arch}", None, [base, arch_layer], cfg,
                              flavour=flavour, expected_present=BUSYBOX_PRESENT + ("/etc/arch",))
        platforms[f"linux/{arch}"] = img
        plat = {"architecture": arch, "os": "linux"}
        if variant:
            plat["variant"] = variant
        entries.append(descriptor(img.manifest_media_type, img.manifest_digest,
                                  img.blob_path(img.manifest_digest).stat().st_size,
                                  platform=plat))
    index_mt = MT_DOCKER_LIST if docker else MT_OCI_INDEX
    index = {"schemaVersion": 2, "mediaType": index_mt, "manifests": entries}
    desc = layout.put_json(index, index_mt)
    layout.tag(desc, ref)
    host = platforms.get(f"linux/{host_arch()}", platforms["linux/amd64"])
    return Image(name="multiarch-docker" if docker else "multiarch", layout=layout.path,
                 ref=ref, media_type=index_mt, manifest_digest=host.manifest_digest,
                 manifest_media_type=host.manifest_media_type,
                 config_digest=host.config_digest, config_media_type=host.config_media_type,
                 layers=host.layers, index_digest=desc["digest"], platforms=platforms,
                 expected_present=host.expected_present)


# --------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------

def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, EPOCH
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _tar_add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
    info.uname = info.gname = ""
    tar.addfile(info)


def write_oci_archive(image: Image, dest: Path) -> Path:
    """An OCI archive: a tar of the image's whole layout directory."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(image.layout.rglob("*")):
            rel = path.relative_to(image.layout).as_posix()
            if path.is_dir():
                _tar_add_dir(tar, rel)
            else:
                info = tarfile.TarInfo(rel)
                info.size, info.mode, info.mtime = path.stat().st_size, 0o644, EPOCH
                info.uname = info.gname = ""
                with path.open("rb") as f:
                    tar.addfile(info, f)
    return dest


def write_docker_archive(image: Image, dest: Path, repo_tags: Iterable[str] = (),
                         platform_: str | None = None) -> Path:
    """A ``docker save`` archive of a single-platform image.

    Contains ``manifest.json`` (Config, RepoTags, Layers), the config as
    ``<hex>.json``, one ``<id>/layer.tar`` (uncompressed) per layer with the
    legacy ``<id>/VERSION`` and ``<id>/json``, and the legacy ``repositories``
    file. For an index pass ``platform_`` ("linux/arm64"); default: host.
    """
    if image.platforms:
        image = image.platforms[platform_ or f"linux/{host_arch()}"]
    repo_tags = list(repo_tags)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    config_bytes = image.read_blob(image.config_digest)
    config_name = image.config_digest.split(":", 1)[1] + ".json"
    layer_paths, parent = [], ""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for layer in image.layers:
            # Legacy v1 layer ids: a chain over the diff_ids, as docker does in spirit.
            layer_id = hashlib.sha256(f"{parent} {layer.diff_id}".encode()).hexdigest()
            tar_bytes = decompress(image.read_blob(layer.digest), layer.compression)
            _tar_add_dir(tar, layer_id)
            _tar_add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
            v1 = {"id": layer_id, "created": CREATED}
            if parent:
                v1["parent"] = parent
            _tar_add_bytes(tar, f"{layer_id}/json", canonical_json(v1))
            _tar_add_bytes(tar, f"{layer_id}/layer.tar", tar_bytes)
            layer_paths.append(f"{layer_id}/layer.tar")
            parent = layer_id
        _tar_add_bytes(tar, config_name, config_bytes)
        manifest = [{"Config": config_name, "RepoTags": repo_tags or None,
                     "Layers": layer_paths}]
        _tar_add_bytes(tar, "manifest.json", canonical_json(manifest))
        repositories: dict[str, dict[str, str]] = {}
        for repo_tag in repo_tags:
            repo, _, tag = repo_tag.rpartition(":")
            if "/" in tag or not repo:
                repo, tag = repo_tag, "latest"
            repositories.setdefault(repo, {})[tag] = parent
        if repositories:
            _tar_add_bytes(tar, "repositories", canonical_json(repositories))
    return dest


def write_rootfs_tar(dest: Path, compression: str = "none") -> Path:
    """A plain busybox rootfs tarball (for ``pypod image import``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(compress(_busybox_tar(), compression))
    return dest


# --------------------------------------------------------------------------
# build_all
# --------------------------------------------------------------------------

def build_all(outdir: Path) -> TestImages:
    """Builds every standard test image and archive under ``outdir``.

    Layouts: ``outdir/oci/<name>`` with ref "latest" for busybox, layered,
    layered-zstd, layered-none, configured, multiarch, busybox-docker,
    multiarch-docker. Archives: ``outdir/archives/`` busybox-oci.tar,
    layered-oci.tar, busybox-docker.tar, layered-docker.tar,
    configured-docker.tar, rootfs.tar, rootfs.tar.gz.
    """
    outdir = Path(outdir)
    oci = outdir / "oci"
    images = {
        "busybox": build_busybox(oci / "busybox"),
        "layered": build_layered(oci / "layered"),
        "layered_zstd": build_layered(oci / "layered-zstd", compression="zstd"),
        "layered_none": build_layered(oci / "layered-none", compression="none"),
        "configured": build_configured(oci / "configured"),
        "multiarch": build_multiarch(oci / "multiarch"),
        "busybox_docker": build_busybox_docker(oci / "busybox-docker"),
        "multiarch_docker": build_multiarch(oci / "multiarch-docker", docker=True),
    }
    arch = outdir / "archives"
    archives = {
        "busybox_oci": write_oci_archive(images["busybox"], arch / "busybox-oci.tar"),
        "layered_oci": write_oci_archive(images["layered"], arch / "layered-oci.tar"),
        "busybox_docker": write_docker_archive(images["busybox"], arch / "busybox-docker.tar",
                                               ["test/busybox:latest"]),
        "layered_docker": write_docker_archive(images["layered"], arch / "layered-docker.tar",
                                               ["test/layered:latest"]),
        "configured_docker": write_docker_archive(images["configured"],
                                                  arch / "configured-docker.tar",
                                                  ["test/configured:latest"]),
        "rootfs": write_rootfs_tar(arch / "rootfs.tar"),
        "rootfs_gz": write_rootfs_tar(arch / "rootfs.tar.gz", "gzip"),
    }
    return TestImages(root=outdir, images=images, archives=archives)


# --------------------------------------------------------------------------
# Streaming helpers (big layers)
# --------------------------------------------------------------------------

class _HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, sink=None):
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _stream_gzip_layer(layout: Layout, fill: Callable[[LayerTar], None],
                       level: int = 6) -> Layer:
    """Writes a gzip layer straight to the blob store without holding it in memory."""
    tmp = layout.path / "blobs" / "sha256" / f".building-{os.getpid()}-{random.random()}"
    with tmp.open("wb") as f:
        compressed = _HashingWriter(f)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=level, mtime=0,
                           filename="") as gz:
            raw = _HashingWriter(gz)
            t = LayerTar(raw)
            fill(t)
            t.close()
    digest, size = layout.put_file(tmp, compressed.digest)
    return Layer(MT_OCI_LAYER_GZIP, digest, size, raw.digest, "gzip")


class _PseudoRandomFile:
    """A readable file of ``size`` deterministic bytes, half random half text."""

    TEXT = (b"pypod benchmark payload: the quick brown fox jumps over the lazy dog. "
            b"0123456789 abcdefghijklmnopqrstuvwxyz\n")

    def __init__(self, seed: int, size: int):
        self.rng = random.Random(seed)
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        self.left -= n
        chunk = bytearray()
        while len(chunk) < n:
            piece = min(n - len(chunk), 16384)
            if self.rng.random() < 0.5:
                chunk += self.rng.randbytes(piece)
            else:
                reps = piece // len(self.TEXT) + 1
                chunk += (self.TEXT * reps)[:piece]
        return bytes(chunk)


def build_bench_image(dest: Path, ref: str = "latest", *, total_size: int = 200 << 20,
                      layers: int = 6, seed: int = 0) -> Image:
    """A ~``total_size`` (uncompressed) multi-layer gzip image for benchmarks.

    busybox base + ``layers`` layers of many files of varied sizes (256 B to
    8 MiB, log-uniform), deterministic pseudo-random content, about half of
    it compressible. Built only when called; streamed to disk.
    """
    layout = Layout(dest)
    result = [_add_layer(layout, _busybox_tar(), "gzip")]
    rng = random.Random(seed)
    per_layer = total_size // layers
    for n in range(layers):
        def fill(t: LayerTar, n=n) -> None:
            written, i = 0, 0
            while written < per_layer:
                size = min(int(2 ** rng.uniform(8, 23)), per_layer - written)
                t.file_stream(f"bench/layer{n}/d{i % 16:02d}/f{i:05d}.bin",
                              _PseudoRandomFile(rng.getrandbits(32), size), size)
                written += size
                i += 1
        result.append(_stream_gzip_layer(layout, fill))
    cfg = _config(result, dict(BUSYBOX_CONTAINER_CONFIG),
                  history=["busybox rootfs"] + [f"bench layer {i}" for i in range(layers)])
    return _write_manifest(layout, "bench", ref, result, cfg,
                           expected_present=BUSYBOX_PRESENT)


# --------------------------------------------------------------------------
# Hostile layers and images (security tests)
# --------------------------------------------------------------------------

def _raw_layer(fill: Callable[[LayerTar], None]) -> bytes:
    t = LayerTar(auto_parents=False)
    fill(t)
    return t.bytes()


def hostile_dotdot() -> bytes:
    """A file ``../escape``."""
    return _raw_layer(lambda t: t.file("../escape", "escaped via ..\n"))


def hostile_dotdot_nested() -> bytes:
    """A file ``a/../../escape-nested`` (dotdot in the middle of a path)."""
    def fill(t):
        t.dir("a")
        t.file("a/../../escape-nested", "escaped via a/../..\n")
    return _raw_layer(fill)


def hostile_absolute() -> bytes:
    """A file ``/abs-escape`` (sane unpackers strip the leading slash)."""
    return _raw_layer(lambda t: t.file("/abs-escape", "absolute path\n"))


def hostile_symlink_root() -> bytes:
    """Symlink ``evil -> /`` then a file ``evil/tmp/pwned``."""
    def fill(t):
        t.symlink("evil", "/")
        t.file("evil/tmp/pwned", "written through a symlink to /\n")
    return _raw_layer(fill)


def hostile_symlink_up() -> bytes:
    """Symlink ``up -> ../..`` then a file ``up/pwned``."""
    def fill(t):
        t.symlink("up", "../..")
        t.file("up/pwned", "written through a relative symlink\n")
    return _raw_layer(fill)


def hostile_symlink_chain() -> bytes:
    """``a -> b``, ``b -> ../../..`` then ``a/pwned-chain``."""
    def fill(t):
        t.symlink("a", "b")
        t.symlink("b", "../../..")
        t.file("a/pwned-chain", "written through a symlink chain\n")
    return _raw_layer(fill)


def hostile_symlink_dir_replace() -> bytes:
    """A dir ``d``, then ``d`` replaced by a symlink to ``/``, then ``d/pwned-replace``."""
    def fill(t):
        t.dir("d")
        t.symlink("d", "/")
        t.file("d/pwned-replace", "written after replacing a dir by a symlink\n")
    return _raw_layer(fill)


def hostile_hardlink_abs() -> bytes:
    """A hardlink ``shadow`` to ``/etc/shadow``."""
    return _raw_layer(lambda t: t.hardlink("shadow", "/etc/shadow"))


def hostile_hardlink_up() -> bytes:
    """A hardlink ``outside`` to ``../../outside``."""
    return _raw_layer(lambda t: t.hardlink("outside", "../../outside"))


def hostile_hardlink_via_symlink() -> bytes:
    """Symlink ``s -> /etc`` then hardlink ``h`` to ``s/shadow``."""
    def fill(t):
        t.symlink("s", "/etc")
        t.hardlink("h", "s/shadow")
    return _raw_layer(fill)


def hostile_device() -> bytes:
    """A char device ``null`` with /dev/null's numbers (1, 3)."""
    return _raw_layer(lambda t: t.chardev("null", 1, 3))


def hostile_fifo() -> bytes:
    """A fifo ``fifo``."""
    return _raw_layer(lambda t: t.fifo("fifo"))


def hostile_whiteout_dotdot() -> bytes:
    """A whiteout ``../.wh.x`` (deletes a file outside the rootfs)."""
    return _raw_layer(lambda t: t.file("../.wh.x", ""))


def hostile_whiteout_nested() -> bytes:
    """A whiteout ``a/../../.wh.etc``."""
    def fill(t):
        t.dir("a")
        t.file("a/../../.wh.etc", "")
    return _raw_layer(fill)


def hostile_whiteout_dots() -> bytes:
    """A whiteout ``.wh...``: a whiteout of ``..``."""
    return _raw_layer(lambda t: t.file(".wh...", ""))


def hostile_whiteout_via_symlink() -> bytes:
    """Symlink ``evil -> /`` then a whiteout ``evil/.wh.etc``."""
    def fill(t):
        t.symlink("evil", "/")
        t.file("evil/.wh.etc", "")
    return _raw_layer(fill)


def hostile_setuid() -> bytes:
    """A setuid-root executable ``usr/local/bin/suid`` (mode 04755) and a setgid one."""
    def fill(t):
        t.dir("usr")
        t.dir("usr/local")
        t.dir("usr/local/bin")
        t.file("usr/local/bin/suid", "#!/bin/sh\nid\n", 0o4755)
        t.file("usr/local/bin/sgid", "#!/bin/sh\nid\n", 0o2755)
    return _raw_layer(fill)


HOSTILE_LAYERS: dict[str, Callable[[], bytes]] = {
    "dotdot": hostile_dotdot,
    "dotdot_nested": hostile_dotdot_nested,
    "absolute": hostile_absolute,
    "symlink_root": hostile_symlink_root,
    "symlink_up": hostile_symlink_up,
    "symlink_chain": hostile_symlink_chain,
    "symlink_dir_replace": hostile_symlink_dir_replace,
    "hardlink_abs": hostile_hardlink_abs,
    "hardlink_up": hostile_hardlink_up,
    "hardlink_via_symlink": hostile_hardlink_via_symlink,
    "device": hostile_device,
    "fifo": hostile_fifo,
    "whiteout_dotdot": hostile_whiteout_dotdot,
    "whiteout_nested": hostile_whiteout_nested,
    "whiteout_dots": hostile_whiteout_dots,
    "whiteout_via_symlink": hostile_whiteout_via_symlink,
    "setuid": hostile_setuid,
}


def build_hostile_image(dest: Path, kind: str, ref: str | None = None, *,
                        with_base: bool = False, compression: str = "gzip") -> Image:
    """An image whose (top) layer is ``HOSTILE_LAYERS[kind]``; ref defaults to ``kind``.

    With ``with_base`` the busybox layer comes first.
    """
    layout = Layout(dest)
    layers = [_add_layer(layout, _busybox_tar(), "gzip")] if with_base else []
    layers.append(_add_layer(layout, HOSTILE_LAYERS[kind](), compression))
    cfg = _config(layers, dict(BUSYBOX_CONTAINER_CONFIG))
    return _write_manifest(layout, f"hostile-{kind}", ref or kind, layers, cfg)


def _small_layer_tar() -> bytes:
    t = LayerTar()
    t.file("etc/small", "small\n")
    return t.bytes()


def build_truncated_gzip_image(dest: Path, ref: str = "truncated-gzip") -> Image:
    """A layer whose gzip stream is cut in half. The blob's digest matches the
    truncated bytes, so only decompression (or the diff_id check) fails."""
    layout = Layout(dest)
    tar_bytes = LayerTar()
    tar_bytes.file("data/blob.bin", random.Random(7).randbytes(64 << 10))
    tar_bytes = tar_bytes.bytes()
    blob = gzip_bytes(tar_bytes)[: len(gzip_bytes(tar_bytes)) // 2]
    digest, size = layout.put(blob)
    layer = Layer(MT_OCI_LAYER_GZIP, digest, size, sha256_digest(tar_bytes), "gzip")
    return _write_manifest(layout, "truncated-gzip", ref, [layer],
                           _config([layer], dict(BUSYBOX_CONTAINER_CONFIG)))


def build_digest_mismatch_image(dest: Path, ref: str = "digest-mismatch") -> Image:
    """The manifest names the digest of a good layer, but the blob stored
    under that digest has one byte changed (same size)."""
    layout = Layout(dest)
    tar_bytes = _small_layer_tar()
    good = gzip_bytes(tar_bytes)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    digest, size = layout.put(bytes(bad), digest=sha256_digest(good))
    layer = Layer(MT_OCI_LAYER_GZIP, digest, size, sha256_digest(tar_bytes), "gzip")
    return _write_manifest(layout, "digest-mismatch", ref, [layer],
                           _config([layer], dict(BUSYBOX_CONTAINER_CONFIG)))


def build_diff_id_mismatch_image(dest: Path, ref: str = "diff-id-mismatch") -> Image:
    """A valid blob whose config ``rootfs.diff_ids`` entry is wrong."""
    layout = Layout(dest)
    layer = _add_layer(layout, _small_layer_tar(), "gzip")
    wrong = Layer(layer.media_type, layer.digest, layer.size, "sha256:" + "0" * 64, "gzip")
    return _write_manifest(layout, "diff-id-mismatch", ref, [wrong],
                           _config([wrong], dict(BUSYBOX_CONTAINER_CONFIG)))


def build_unknown_media_type_image(dest: Path, ref: str = "unknown-media-type") -> Image:
    """A manifest whose mediaType (in the index and in the manifest) is unknown."""
    layout = Layout(dest)
    layer = _add_layer(layout, _small_layer_tar(), "gzip")
    return _write_manifest(layout, "unknown-media-type", ref, [layer],
                           _config([layer], dict(BUSYBOX_CONTAINER_CONFIG)),
                           manifest_media_type=MT_UNKNOWN_MANIFEST)


def build_unknown_layer_media_type_image(dest: Path, ref: str = "unknown-layer-type") -> Image:
    """A valid manifest with a layer of an unknown media type."""
    layout = Layout(dest)
    tar_bytes = _small_layer_tar()
    digest, size = layout.put(tar_bytes)
    layer = Layer("application/vnd.example.layer.v1.tar+lz4", digest, size,
                  sha256_digest(tar_bytes), "none")
    return _write_manifest(layout, "unknown-layer-type", ref, [layer],
                           _config([layer], dict(BUSYBOX_CONTAINER_CONFIG)))


MALFORMED_MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {'


def build_malformed_manifest_image(dest: Path, ref: str = "malformed-manifest") -> Image:
    """index.json points (with the right digest) at a manifest that is not valid JSON."""
    layout = Layout(dest)
    digest, size = layout.put(MALFORMED_MANIFEST)
    layout.tag(descriptor(MT_OCI_MANIFEST, digest, size), ref)
    return Image(name="malformed-manifest", layout=layout.path, ref=ref,
                 media_type=MT_OCI_MANIFEST, manifest_digest=digest,
                 manifest_media_type=MT_OCI_MANIFEST, config_digest="",
                 config_media_type="", layers=())


def build_bad_config_image(dest: Path, ref: str = "bad-config") -> Image:
    """A valid manifest whose config blob is not JSON."""
    layout = Layout(dest)
    layer = _add_layer(layout, _small_layer_tar(), "gzip")
    return _write_manifest(layout, "bad-config", ref, [layer], b"this is not json\n")


def _gzip_member_header() -> bytes:
    # magic, CM=deflate, FLG=0, MTIME=0, XFL=0, OS=255 (unknown)
    return b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff"


def write_bomb_layer(dest_file: Path, size: int = 1 << 30,
                     name: str = "bomb/zeros") -> Layer:
    """A gzip layer holding one file of ``size`` zero bytes.

    Built without compressing ``size`` bytes: a block of 1 MiB of zeros is
    compressed once, ending on a full flush, and that piece is repeated (a
    full flush resets the deflate history, so the pieces are independent).
    1 GiB compresses to about 1 MiB. Returns the layer (digest of the file,
    diff_id of the uncompressed tar).
    """
    chunk_size = 1 << 20
    header = tarfile.TarInfo(name)
    header.size, header.mode, header.mtime = size, 0o644, EPOCH
    header.uname = header.gname = ""
    head = header.tobuf(tarfile.PAX_FORMAT)
    # Tar stream: header, size zeros, padding to 512 and two 512-byte end blocks;
    # everything after the header is zeros.
    tail_zeros = size + (-size % 512) + 1024
    full, rest = divmod(tail_zeros, chunk_size)

    def deflate_piece(data: bytes, final: bool) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

    zero_piece = deflate_piece(bytes(chunk_size), False)
    sha_raw = hashlib.sha256(head)
    crc = zlib.crc32(head)
    zero_chunk = bytes(chunk_size)
    out = _HashingWriter(Path(dest_file).open("wb"))
    try:
        out.write(_gzip_member_header())
        out.write(deflate_piece(head, False))
        for _ in range(full):
            out.write(zero_piece)
            sha_raw.update(zero_chunk)
            crc = zlib.crc32(zero_chunk, crc)
        out.write(deflate_piece(bytes(rest), True))
        sha_raw.update(bytes(rest))
        crc = zlib.crc32(bytes(rest), crc)
        total = len(head) + tail_zeros
        out.write(struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF))
    finally:
        out.sink.close()
    return Layer(MT_OCI_LAYER_GZIP, out.digest, out.size,
                 "sha256:" + sha_raw.hexdigest(), "gzip")


def build_bomb_image(dest: Path, ref: str = "bomb", *, size: int = 1 << 30) -> Image:
    """A single-layer image whose ~1 MiB gzip layer expands to ``size`` bytes
    of zeros in one file. Streamed: never holds the expansion in memory."""
    layout = Layout(dest)
    tmp = layout.path / "blobs" / "sha256" / f".bomb-{os.getpid()}"
    layer = write_bomb_layer(tmp, size)
    layout.put_file(tmp, layer.digest)
    return _write_manifest(layout, "bomb", ref, [layer],
                           _config([layer], dict(BUSYBOX_CONTAINER_CONFIG)))


HOSTILE_IMAGES: dict[str, Callable[[Path], Image]] = {
    "truncated_gzip": build_truncated_gzip_image,
    "digest_mismatch": build_digest_mismatch_image,
    "diff_id_mismatch": build_diff_id_mismatch_image,
    "unknown_media_type": build_unknown_media_type_image,
    "unknown_layer_media_type": build_unknown_layer_media_type_image,
    "malformed_manifest": build_malformed_manifest_image,
    "bad_config": build_bad_config_image,
}
"""Image-level hostile builders (``bomb`` is separate: build it on demand)."""
