"""Checks the test images in tests/support/images.py with independent tools.

skopeo and umoci (from Debian) read the layouts and archives; Python's own
tarfile/gzip check layer contents and digests. Nothing here uses pypod.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from support import images as im

SKOPEO = shutil.which("skopeo")
UMOCI = shutil.which("umoci")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed (make system-deps)")
needs_umoci = pytest.mark.skipif(UMOCI is None, reason="umoci not installed (make system-deps)")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo_json(*args: str):
    out = subprocess.run([SKOPEO, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def verify_blobs(image: im.Image) -> None:
    """Every blob an image references exists, matches its digest and size,
    and every layer decompresses to its diff_id."""
    def check_manifest(digest: str) -> None:
        data = image.read_blob(digest)
        assert sha(data) == digest
        doc = json.loads(data)
        if "manifests" in doc:
            for child in doc["manifests"]:
                assert image.blob_path(child["digest"]).stat().st_size == child["size"]
                check_manifest(child["digest"])
            return
        cfg_bytes = image.read_blob(doc["config"]["digest"])
        assert sha(cfg_bytes) == doc["config"]["digest"]
        assert len(cfg_bytes) == doc["config"]["size"]
        diff_ids = json.loads(cfg_bytes)["rootfs"]["diff_ids"]
        assert len(diff_ids) == len(doc["layers"])
        for desc, diff_id in zip(doc["layers"], diff_ids):
            blob = image.read_blob(desc["digest"])
            assert sha(blob) == desc["digest"] and len(blob) == desc["size"]
            tar_bytes = im.decompress(blob, im.compression_of(desc["mediaType"]))
            assert sha(tar_bytes) == diff_id
    check_manifest(image.digest)


def layer_members(image: im.Image, index: int = 0) -> dict[str, tarfile.TarInfo]:
    layer = image.layers[index]
    data = im.decompress(image.read_blob(layer.digest), layer.compression)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def umoci_unpack(image: im.Image, dest: Path) -> Path:
    args = [UMOCI, "raw", "unpack", "--image", image.oci_ref, str(dest)]
    if os.geteuid() != 0:
        args.insert(3, "--rootless")
    subprocess.run(args, check=True, capture_output=True)
    return dest


# ---------------------------------------------------------------------------


def test_layout_files(test_images):
    img = test_images.busybox
    assert json.loads((img.layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((img.layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    [entry] = index["manifests"]
    assert entry["digest"] == img.manifest_digest
    assert entry["annotations"][im.REF_NAME] == "latest"


@pytest.mark.parametrize("name", ["busybox", "layered", "layered_zstd", "layered_none",
                                  "configured", "multiarch", "busybox_docker",
                                  "multiarch_docker"])
def test_blobs_match_digests_and_diff_ids(test_images, name):
    verify_blobs(test_images[name])


def test_builds_are_deterministic(tmp_path):
    assert im.busybox_rootfs_tar() == im.busybox_rootfs_tar()
    assert im.layered_tars() == im.layered_tars()
    a = im.build_layered(tmp_path / "a", compression="zstd")
    b = im.build_layered(tmp_path / "b", compression="zstd")
    assert a.digest == b.digest and a.layers == b.layers


def test_busybox_layer_contents(test_images):
    members = layer_members(test_images.busybox)
    busybox = members["bin/busybox"]
    assert busybox.isreg() and busybox.mode == 0o755 and busybox.size == im.BUSYBOX.stat().st_size
    for m in members.values():
        assert m.mtime == im.EPOCH
        assert m.uname == "" and m.gname == ""
        if m.name not in ("home/app",):
            assert (m.uid, m.gid) == (0, 0), m.name
    assert members["home/app"].isdir() and (members["home/app"].uid, members["home/app"].gid) == (1000, 1000)
    assert members["tmp"].mode == 0o1777
    assert members["root"].mode == 0o700
    # Every applet busybox knows is linked, each to the binary.
    applets = subprocess.run([str(im.BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    linked = {Path(name).name: m for name, m in members.items() if m.issym()}
    for applet in applets:
        if applet in ("busybox", "linuxrc"):
            continue
        assert linked[applet].linkname == "/bin/busybox", applet
    for common in ("sh", "ls", "env", "id", "wget", "nc", "httpd", "timeout", "awk", "xargs"):
        assert common in linked
    assert members["bin/sh"].issym()


def test_busybox_etc_files(test_images):
    img = test_images.busybox
    data = im.decompress(img.read_blob(img.layers[0].digest), "gzip")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()
        group = tar.extractfile("etc/group").read().decode()
        assert tar.extractfile("etc/hostname").read() == b""
    users = {line.split(":")[0]: line.split(":") for line in passwd.splitlines()}
    assert users["root"][2:4] == ["0", "0"]
    assert users["app"][2:6] == ["1000", "1000", "app", "/home/app"]
    assert users["nobody"][2] == "65534"
    assert "daemon" in users
    groups = {line.split(":")[0]: line.split(":") for line in group.splitlines()}
    assert groups["app"][2] == "1000"
    assert groups["extra"][2] == "2000" and "app" in groups["extra"][3].split(",")


def test_busybox_config(test_images):
    cfg = test_images.busybox.config()
    assert cfg["os"] == "linux" and cfg["architecture"] == im.host_arch()
    assert cfg["config"]["Env"] == [f"PATH={im.DEFAULT_PATH}"]
    assert cfg["config"]["Cmd"] == ["sh"]
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": test_images.busybox.diff_ids}


@needs_skopeo
@pytest.mark.parametrize("name", ["busybox", "layered", "layered_zstd", "layered_none",
                                  "configured"])
def test_skopeo_reads_oci_layouts(test_images, name):
    img = test_images[name]
    raw = subprocess.run([SKOPEO, "inspect", "--raw", f"oci:{img.oci_ref}"],
                         check=True, capture_output=True).stdout
    assert raw == img.read_blob(img.manifest_digest)
    info = skopeo_json("inspect", f"oci:{img.oci_ref}")
    assert info["Layers"] == img.layer_digests
    assert info["Architecture"] == im.host_arch()


@needs_skopeo
@pytest.mark.parametrize("name", ["layered", "layered_zstd", "layered_none", "multiarch"])
def test_skopeo_copies_and_verifies_every_blob(test_images, name, tmp_path):
    """skopeo copy reads (and digest-checks) every blob, zstd included."""
    img = test_images[name]
    subprocess.run([SKOPEO, "copy", "--quiet", "--all", "--preserve-digests",
                    f"oci:{img.oci_ref}", f"oci:{tmp_path / 'copy'}:latest"],
                   check=True, capture_output=True)
    index = json.loads((tmp_path / "copy" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == img.digest


@needs_umoci
@pytest.mark.parametrize("name", ["layered", "layered_none"])
def test_umoci_applies_whiteouts(test_images, name, tmp_path):
    img = test_images[name]
    root = umoci_unpack(img, tmp_path / "rootfs")
    for path in img.expected_present:
        assert os.path.lexists(root / path.lstrip("/")), path
    for path in img.expected_absent:
        assert not os.path.lexists(root / path.lstrip("/")), path
    assert (root / "data/keep").read_text() == "keep\n"
    assert sorted(os.listdir(root / "olddir")) == ["new"]
    assert (root / "etc/layer2").exists() and (root / "etc/layer3").exists()
    assert os.readlink(root / "bin/sh") == "/bin/busybox"


def test_layered_layers(test_images):
    for name, compression, media_type in [("layered", "gzip", im.MT_OCI_LAYER_GZIP),
                                          ("layered_zstd", "zstd", im.MT_OCI_LAYER_ZSTD),
                                          ("layered_none", "none", im.MT_OCI_LAYER)]:
        img = test_images[name]
        assert len(img.layers) == 3
        assert img.layers[0].media_type == im.MT_OCI_LAYER_GZIP
        assert [l.media_type for l in img.layers[1:]] == [media_type] * 2
        assert [l.compression for l in img.layers[1:]] == [compression] * 2
        assert img.manifest()["layers"][2]["mediaType"] == media_type
    l3 = layer_members(test_images.layered, 2)
    assert "data/.wh.remove-me" in l3 and "olddir/.wh..wh..opq" in l3 and "olddir/new" in l3
    l2 = layer_members(test_images.layered, 1)
    assert {"data/keep", "data/remove-me", "olddir/a", "olddir/b", "etc/layer2"} <= set(l2)
    # zstd blobs really are zstd frames.
    assert test_images.layered_zstd.read_blob(test_images.layered_zstd.layers[1].digest)[:4] \
        == b"\x28\xb5\x2f\xfd"


def test_configured_config(test_images):
    cfg = test_images.configured.config()["config"]
    assert cfg["User"] == "app"
    assert "FOO=bar" in cfg["Env"] and f"PATH={im.DEFAULT_PATH}" in cfg["Env"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"] and cfg["Cmd"] == ["echo hello"]
    assert cfg["WorkingDir"] == "/home/app"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert cfg["Labels"] == {"org.example.role": "test"}


def test_multiarch_index(test_images):
    img = test_images.multiarch
    index = img.index()
    assert img.media_type == im.MT_OCI_INDEX and index["mediaType"] == im.MT_OCI_INDEX
    plats = {(m["platform"]["os"], m["platform"]["architecture"]): m for m in index["manifests"]}
    assert set(plats) == {("linux", "amd64"), ("linux", "arm64")}
    for arch in ("amd64", "arm64"):
        sub = img.platforms[f"linux/{arch}"]
        assert plats[("linux", arch)]["digest"] == sub.manifest_digest
        cfg = sub.config()
        assert cfg["architecture"] == arch
        assert cfg["config"]["Labels"] == {"org.example.arch": arch}
        members = layer_members(sub, 1)
        data = im.decompress(sub.read_blob(sub.layers[1].digest), "gzip")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert tar.extractfile("etc/arch").read() == f"{arch}\n".encode()
        assert "etc/arch" in members
    assert img.platforms["linux/amd64"].manifest_digest != img.platforms["linux/arm64"].manifest_digest
    top = json.loads((img.layout / "index.json").read_text())["manifests"]
    assert top[0]["digest"] == img.index_digest and top[0]["mediaType"] == im.MT_OCI_INDEX


@needs_skopeo
def test_skopeo_selects_multiarch_platform(test_images):
    img = test_images.multiarch
    raw = subprocess.run([SKOPEO, "inspect", "--raw", f"oci:{img.oci_ref}"], check=True,
                         capture_output=True).stdout
    assert sha(raw) == img.index_digest
    for arch in ("amd64", "arm64"):
        info = skopeo_json("--override-arch", arch, "inspect", f"oci:{img.oci_ref}")
        assert info["Architecture"] == arch
        assert info["Labels"] == {"org.example.arch": arch}
        assert info["Layers"] == img.platforms[f"linux/{arch}"].layer_digests


def test_docker_variants(test_images):
    img = test_images.busybox_docker
    manifest = img.manifest()
    assert manifest["mediaType"] == im.MT_DOCKER_MANIFEST == img.media_type
    assert manifest["config"]["mediaType"] == im.MT_DOCKER_CONFIG
    assert [l["mediaType"] for l in manifest["layers"]] == [im.MT_DOCKER_LAYER_GZIP]
    # Same layer bytes as the OCI busybox, different manifest.
    assert img.layer_digests == test_images.busybox.layer_digests
    assert img.manifest_digest != test_images.busybox.manifest_digest
    ml = test_images.multiarch_docker
    index = ml.index()
    assert index["mediaType"] == im.MT_DOCKER_LIST
    assert {m["mediaType"] for m in index["manifests"]} == {im.MT_DOCKER_MANIFEST}
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}


@needs_skopeo
def test_oci_archive(test_images):
    path = test_images.archives["layered_oci"]
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json"} <= names
    info = skopeo_json("inspect", f"oci-archive:{path}:latest")
    assert info["Layers"] == test_images.layered.layer_digests


@needs_skopeo
@pytest.mark.parametrize("key,image,tag", [("busybox_docker", "busybox", "test/busybox:latest"),
                                           ("layered_docker", "layered", "test/layered:latest")])
def test_docker_archive(test_images, key, image, tag):
    path = test_images.archives[key]
    img = test_images[image]
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
        [entry] = manifest
        assert entry["RepoTags"] == [tag]
        assert json.load(tar.extractfile(entry["Config"])) == img.config()
        assert len(entry["Layers"]) == len(img.layers)
        for name, diff_id in zip(entry["Layers"], img.diff_ids):
            assert sha(tar.extractfile(name).read()) == diff_id
        repo, _, t = tag.rpartition(":")
        assert repositories[repo][t] == entry["Layers"][-1].split("/")[0]
    info = skopeo_json("inspect", f"docker-archive:{path}")
    assert info["Architecture"] == im.host_arch()
    assert info["Env"] == [f"PATH={im.DEFAULT_PATH}"]
    # docker-archive layers are the uncompressed tars, named by diff_id.
    assert info["Layers"] == img.diff_ids


def test_rootfs_tarballs(test_images):
    plain = test_images.archives["rootfs"]
    with tarfile.open(plain) as tar:
        names = set(tar.getnames())
    assert {"bin/busybox", "bin/sh", "etc/passwd", "tmp"} <= names
    gz = test_images.archives["rootfs_gz"]
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()


def test_build_images_cli(tmp_path):
    script = Path(im.__file__).with_name("build_images.py")
    out = subprocess.run([sys.executable, str(script), str(tmp_path), "--hostile"],
                         check=True, capture_output=True, text=True).stdout
    for name in ("busybox", "layered", "configured", "multiarch", "busybox-docker",
                 "hostile-symlink_root", "truncated-gzip"):
        assert name in out
    assert (tmp_path / "oci" / "busybox" / "index.json").exists()
    assert (tmp_path / "archives" / "busybox-docker.tar").exists()
    assert (tmp_path / "hostile" / "dotdot" / "index.json").exists()


def test_bench_image_small(tmp_path):
    """The benchmark builder, at 3 MiB instead of 200 MB."""
    img = im.build_bench_image(tmp_path / "bench", total_size=3 << 20, layers=3)
    assert len(img.layers) == 4
    verify_blobs(img)
    sizes = []
    for i in range(1, 4):
        sizes += [m.size for m in layer_members(img, i).values() if m.isfile()]
    assert sum(sizes) == 3 << 20
    assert len(set(sizes)) > 3   # varied sizes
    again = im.build_bench_image(tmp_path / "bench2", total_size=3 << 20, layers=3)
    assert again.digest == img.digest


# --- hostile content --------------------------------------------------------

EXPECTED_HOSTILE_ENTRIES = {
    "dotdot": [("../escape", tarfile.REGTYPE, "")],
    "dotdot_nested": [("a", tarfile.DIRTYPE, ""), ("a/../../escape-nested", tarfile.REGTYPE, "")],
    "absolute": [("/abs-escape", tarfile.REGTYPE, "")],
    "symlink_root": [("evil", tarfile.SYMTYPE, "/"), ("evil/tmp/pwned", tarfile.REGTYPE, "")],
    "symlink_up": [("up", tarfile.SYMTYPE, "../.."), ("up/pwned", tarfile.REGTYPE, "")],
    "symlink_chain": [("a", tarfile.SYMTYPE, "b"), ("b", tarfile.SYMTYPE, "../../.."),
                      ("a/pwned-chain", tarfile.REGTYPE, "")],
    "symlink_dir_replace": [("d", tarfile.DIRTYPE, ""), ("d", tarfile.SYMTYPE, "/"),
                            ("d/pwned-replace", tarfile.REGTYPE, "")],
    "hardlink_abs": [("shadow", tarfile.LNKTYPE, "/etc/shadow")],
    "hardlink_up": [("outside", tarfile.LNKTYPE, "../../outside")],
    "hardlink_via_symlink": [("s", tarfile.SYMTYPE, "/etc"), ("h", tarfile.LNKTYPE, "s/shadow")],
    "device": [("null", tarfile.CHRTYPE, "")],
    "fifo": [("fifo", tarfile.FIFOTYPE, "")],
    "whiteout_dotdot": [("../.wh.x", tarfile.REGTYPE, "")],
    "whiteout_nested": [("a", tarfile.DIRTYPE, ""), ("a/../../.wh.etc", tarfile.REGTYPE, "")],
    "whiteout_dots": [(".wh...", tarfile.REGTYPE, "")],
    "whiteout_via_symlink": [("evil", tarfile.SYMTYPE, "/"), ("evil/.wh.etc", tarfile.REGTYPE, "")],
}


def raw_entries(tar_bytes: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return tar.getmembers()


@pytest.mark.parametrize("kind", sorted(EXPECTED_HOSTILE_ENTRIES))
def test_hostile_layer_entries(kind):
    got = [(m.name, m.type, m.linkname) for m in raw_entries(im.HOSTILE_LAYERS[kind]())]
    assert got == EXPECTED_HOSTILE_ENTRIES[kind]


def test_hostile_special_entries():
    [dev] = raw_entries(im.hostile_device())
    assert (dev.devmajor, dev.devminor) == (1, 3)
    modes = {m.name: m.mode for m in raw_entries(im.hostile_setuid()) if m.isfile()}
    assert modes["usr/local/bin/suid"] == 0o4755
    assert modes["usr/local/bin/sgid"] == 0o2755


def test_hostile_images_built(hostile_images):
    assert set(im.HOSTILE_LAYERS) | set(im.HOSTILE_IMAGES) == set(hostile_images)
    for kind in im.HOSTILE_LAYERS:
        img = hostile_images[kind]
        verify_blobs(img)
        layer = img.read_blob(img.layers[-1].digest)
        assert gzip.decompress(layer) == im.HOSTILE_LAYERS[kind]()
    with_base = im.build_hostile_image(Path(hostile_images["dotdot"].layout).parent / "wb",
                                       "symlink_root", with_base=True)
    assert len(with_base.layers) == 2


def test_truncated_gzip(hostile_images):
    img = hostile_images["truncated_gzip"]
    blob = img.read_blob(img.layers[0].digest)
    assert sha(blob) == img.layers[0].digest          # the digest itself is right
    with pytest.raises(EOFError):
        gzip.decompress(blob)


def test_digest_mismatch(hostile_images):
    img = hostile_images["digest_mismatch"]
    layer = img.layers[0]
    blob = img.read_blob(layer.digest)
    assert len(blob) == layer.size
    assert sha(blob) != layer.digest


def test_diff_id_mismatch(hostile_images):
    img = hostile_images["diff_id_mismatch"]
    blob = img.read_blob(img.layers[0].digest)
    assert sha(blob) == img.layers[0].digest
    assert sha(gzip.decompress(blob)) != img.config()["rootfs"]["diff_ids"][0]


def test_bad_manifests_and_configs(hostile_images):
    unknown = hostile_images["unknown_media_type"]
    assert unknown.manifest()["mediaType"] == im.MT_UNKNOWN_MANIFEST
    index = json.loads((unknown.layout / "index.json").read_text())
    assert index["manifests"][0]["mediaType"] == im.MT_UNKNOWN_MANIFEST
    malformed = hostile_images["malformed_manifest"]
    assert sha(malformed.read_blob(malformed.manifest_digest)) == malformed.manifest_digest
    with pytest.raises(json.JSONDecodeError):
        malformed.manifest()
    bad = hostile_images["bad_config"]
    assert sha(bad.read_blob(bad.config_digest)) == bad.config_digest
    with pytest.raises(json.JSONDecodeError):
        bad.config()
    layer_type = hostile_images["unknown_layer_media_type"].manifest()["layers"][0]["mediaType"]
    assert layer_type not in (im.MT_OCI_LAYER, im.MT_OCI_LAYER_GZIP, im.MT_OCI_LAYER_ZSTD)


def test_bomb_layer_is_valid_gzip(tmp_path):
    """The repeat-a-flushed-block construction, checked in full at 64 MiB."""
    size = 64 << 20
    layer = im.write_bomb_layer(tmp_path / "bomb.gz", size)
    data = (tmp_path / "bomb.gz").read_bytes()
    assert sha(data) == layer.digest and len(data) == layer.size
    d = zlib.decompressobj(31)
    h = hashlib.sha256()
    total, first = 0, None
    chunk = data
    while chunk or not d.eof:
        out = d.decompress(chunk, 1 << 20)
        chunk = d.unconsumed_tail
        if first is None:
            first = out[:512]
        h.update(out)
        total += len(out)
        if not out and not chunk:
            break
    assert d.eof   # the trailer's CRC-32 and length were checked by zlib
    assert total == 512 + size + 1024
    assert "sha256:" + h.hexdigest() == layer.diff_id
    info = tarfile.TarInfo.frombuf(first, "utf-8", "surrogateescape")
    assert info.name == "bomb/zeros" and info.size == size


def test_bomb_image(bomb_image):
    layer = bomb_image.layers[0]
    blob_path = bomb_image.blob_path(layer.digest)
    assert blob_path.stat().st_size < 2 << 20
    with blob_path.open("rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    assert isize == (512 + (1 << 30) + 1024) % (1 << 32)
    assert bomb_image.config()["rootfs"]["diff_ids"] == [layer.diff_id]
