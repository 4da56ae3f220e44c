"""Image references, configuration parsing and manifest validation (pure, no root)."""

from __future__ import annotations

import json

import pytest

from pypod import config
from pypod.errors import ImageError, UsageError
from pypod.images import manifest as mf
from pypod.images.reference import parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text,expected", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("docker://busybox:1.36", "docker.io/library/busybox:1.36"),
    ("index.docker.io/library/alpine", "docker.io/library/alpine:latest"),
    ("user/app:v1", "docker.io/user/app:v1"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/test/busybox:latest", "127.0.0.1:5000/test/busybox:latest"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    (f"quay.io/a/b@{D}", f"quay.io/a/b@{D}"),
    (f"quay.io/a/b:t@{D}", f"quay.io/a/b:t@{D}"),
])
def test_references_normalize_as_docker_does(text: str, expected: str) -> None:
    assert str(parse(text)) == expected


@pytest.mark.parametrize("text", ["UPPER/case", "a//b", "app:", "app@sha256:short", "a/b:bad tag", ""])
def test_invalid_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid image reference"):
        parse(text)


def test_reference_object_prefers_the_digest() -> None:
    assert parse(f"x.io/a:t@{D}").object == D
    assert parse("x.io/a:t").object == "t"


def test_config_file_limits_registries_and_errors(tmp_path) -> None:
    (tmp_path / "pypod.toml").write_text('''
data_dir = "/srv/pypod"
[limits]
max_layer_unpacked = "1GiB"
max_layer_entries = 10
[[registry]]
prefix = "registry.k8s.io"
location = "127.0.0.1:5000/k8s"
insecure = true
[[registry]]
prefix = "registry.k8s.io/special"
  [[registry.mirror]]
  location = "m.example"
''')
    cfg = config.load(config_dir=tmp_path)
    assert str(cfg.data_dir) == "/srv/pypod"
    assert cfg.limits.max_layer_unpacked == 1 << 30 and cfg.limits.max_layer_entries == 10
    assert cfg.registry_for("registry.k8s.io/pause").location == "127.0.0.1:5000/k8s"
    assert cfg.registry_for("registry.k8s.io/special/x").mirrors[0].location == "m.example"
    assert cfg.registry_for("registry.k8s.iox/pause") is None
    (tmp_path / "pypod.toml").write_text("bogus = 1\n")
    with pytest.raises(UsageError, match="unknown setting"):
        config.load(config_dir=tmp_path)
    (tmp_path / "pypod.toml").write_text("[limits]\nmax_layer_unpacked = \"12Q\"\n")
    with pytest.raises(UsageError, match="invalid size"):
        config.load(config_dir=tmp_path)


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("24h", 86400), ("1h30m", 5400), ("0", 0)])
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


def _manifest(**over) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
           "config": {"mediaType": mf.OCI_CONFIG, "digest": D, "size": 10},
           "layers": [{"mediaType": mf.OCI_LAYER_GZIP, "digest": D, "size": 5}]}
    doc.update(over)
    return json.dumps(doc).encode()


def test_manifest_parsing_and_validation() -> None:
    m = mf.parse(_manifest())
    assert isinstance(m, mf.Manifest) and m.layers[0].size == 5
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', "schema 1"),
        (_manifest(schemaVersion=3), "schemaVersion 3"),
        (_manifest(mediaType="application/x-unknown"), "unsupported manifest media type"),
        (_manifest(layers=[{"mediaType": "application/x-tar", "digest": D, "size": 1}]), "unsupported layer"),
        (_manifest(layers=[{"mediaType": mf.OCI_LAYER, "digest": "md5:00", "size": 1}]), "digest"),
        (_manifest(layers=[{"mediaType": mf.OCI_LAYER, "digest": D, "size": -1}]), "invalid size"),
        (_manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D, "size": 1}),
         "not a container image"),
    ]
    for data, message in cases:
        with pytest.raises(ImageError, match=message):
            mf.parse(data)


def test_config_validation_and_platform_selection() -> None:
    with pytest.raises(ImageError, match="diff_ids"):
        mf.parse_config(b'{"architecture": "amd64"}')
    with pytest.raises(ImageError, match="config.Env"):
        mf.parse_config(json.dumps({"rootfs": {"diff_ids": []}, "config": {"Env": "PATH=/bin"}}).encode())
    index = mf.parse(json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 1,
         "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + "2" * 64, "size": 1,
         "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + "3" * 64, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode())
    assert mf.select(index, mf.parse_platform("linux/arm/v7")).digest.endswith("2" * 64)
    assert mf.select(index, mf.parse_platform("linux/amd64")).digest.endswith("3" * 64)
    with pytest.raises(ImageError, match="linux/riscv64.*linux/amd64"):
        mf.select(index, mf.parse_platform("linux/riscv64"))
    with pytest.raises(UsageError):
        mf.parse_platform("linux")
