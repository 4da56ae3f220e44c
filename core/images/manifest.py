"""OCI and Docker schema2 manifests, indexes and image configs: parsing, validation, platforms.

Everything here is untrusted input; a malformed document gives an ImageError naming what is wrong.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from ..errors import ImageError, UsageError
from .content import check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_TYPES = (
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
ACCEPT = INDEX_TYPES + MANIFEST_TYPES


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def host_platform() -> Platform:
    machine = _platform.machine()
    arch = _ARCH.get(machine, machine)
    return Platform("linux", arch, "v7" if machine == "armv7l" else None)


def parse_platform(text: str | None) -> Platform:
    if not text:
        return host_platform()
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"invalid platform {text!r} (expected OS/ARCH[/VARIANT], e.g. linux/arm64)")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                d["platform"]["variant"] = self.platform.variant
        if self.annotations:
            d["annotations"] = self.annotations
        return d


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]


@dataclass
class Index:
    media_type: str
    manifests: list[Descriptor]


@dataclass
class ImageConfig:
    """The parts of an image config pypod uses; ``raw`` keeps the whole document."""

    raw: dict[str, Any]
    diff_ids: list[str]
    os: str
    architecture: str

    @property
    def config(self) -> dict[str, Any]:
        return self.raw.get("config") or {}


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"malformed {what}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ImageError(f"malformed {what}: expected a JSON object")
    return doc


def _descriptor(d: Any, what: str) -> Descriptor:
    if not isinstance(d, dict):
        raise ImageError(f"malformed {what}: descriptor is not an object")
    mt, digest, size = d.get("mediaType"), d.get("digest"), d.get("size")
    if not isinstance(mt, str) or not mt:
        raise ImageError(f"malformed {what}: descriptor has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"malformed {what}: descriptor {digest!r} has an invalid size")
    try:
        check_digest(digest)
    except ImageError as e:
        raise ImageError(f"malformed {what}: {e}") from None
    plat = None
    if isinstance(d.get("platform"), dict):
        p = d["platform"]
        plat = Platform(str(p.get("os", "")), str(p.get("architecture", "")), p.get("variant") or None)
    ann = d.get("annotations") if isinstance(d.get("annotations"), dict) else {}
    return Descriptor(mt, digest, size, plat, ann)


def sniff_media_type(doc: dict[str, Any]) -> str | None:
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return None


def parse(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or index; ``media_type`` is what the registry or layout said it is."""
    doc = _load(data, "manifest")
    mt = doc.get("mediaType") or media_type or sniff_media_type(doc)
    if media_type and doc.get("mediaType") and media_type != doc["mediaType"] and \
            media_type not in ("application/json", "application/octet-stream", "text/plain"):
        raise ImageError(f"malformed manifest: served as {media_type} but declares {doc['mediaType']}")
    if mt in DOCKER_SCHEMA1:
        raise ImageError("unsupported manifest: Docker schema 1 is deprecated; push the image as schema 2 or OCI")
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"malformed manifest: schemaVersion {doc.get('schemaVersion')!r}, expected 2")
    if mt in INDEX_TYPES:
        ms = doc.get("manifests")
        if not isinstance(ms, list):
            raise ImageError("malformed index: 'manifests' is not a list")
        return Index(mt, [_descriptor(m, "index") for m in ms])
    if mt in MANIFEST_TYPES:
        config = _descriptor(doc.get("config"), "manifest config")
        if config.media_type not in CONFIG_TYPES:
            raise ImageError(f"unsupported config media type {config.media_type!r} (not a container image)")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ImageError("malformed manifest: 'layers' is not a list")
        descs = [_descriptor(layer, "manifest layer") for layer in layers]
        for layer in descs:
            if layer.media_type not in LAYER_TYPES:
                raise ImageError(f"unsupported layer media type {layer.media_type!r}")
        return Manifest(mt, config, descs)
    raise ImageError(f"unsupported manifest media type {mt!r}")


def parse_config(data: bytes) -> ImageConfig:
    doc = _load(data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise ImageError("malformed image config: no rootfs.diff_ids")
    diff_ids = rootfs["diff_ids"]
    for d in diff_ids:
        try:
            check_digest(d)
        except ImageError as e:
            raise ImageError(f"malformed image config: {e}") from None
    cfg = doc.get("config")
    if cfg is not None and not isinstance(cfg, dict):
        raise ImageError("malformed image config: 'config' is not an object")
    for key, kind in (("Env", list), ("Entrypoint", list), ("Cmd", list), ("Labels", dict),
                      ("ExposedPorts", dict), ("Volumes", dict)):
        value = (cfg or {}).get(key)
        if value is not None and not isinstance(value, kind):
            raise ImageError(f"malformed image config: config.{key} is not a {kind.__name__}")
    return ImageConfig(doc, diff_ids, str(doc.get("os", "")), str(doc.get("architecture", "")))


def check_layers(manifest: Manifest, config: ImageConfig) -> None:
    if len(manifest.layers) != len(config.diff_ids):
        raise ImageError(f"malformed image: manifest has {len(manifest.layers)} layers, "
                         f"config has {len(config.diff_ids)} diff_ids")


def select(index: Index, want: Platform) -> Descriptor:
    """The index entry for ``want``; a missing variant matches any (the first listed wins)."""
    candidates = [m for m in index.manifests if m.media_type in MANIFEST_TYPES and m.platform
                  and m.platform.os == want.os and m.platform.architecture == want.architecture]
    if want.variant:
        exact = [m for m in candidates if m.platform and m.platform.variant == want.variant]
        candidates = exact or [m for m in candidates if m.platform and not m.platform.variant]
    if not candidates:
        have = ", ".join(sorted({str(m.platform) for m in index.manifests if m.platform})) or "none"
        raise ImageError(f"no image for platform {want} (the index has: {have})")
    return candidates[0]
