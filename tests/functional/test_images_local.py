"""Image store through the real CLI: local sources, names, export, render, gc, bad input, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import images as ti
from support.cli import Pypod

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers with whiteouts unpack only as root")


@pytest.fixture
def pypod(tmp_path: Path) -> Pypod:
    return Pypod(tmp_path / "data")


def snapshot_ids(p: Pypod) -> set[str]:
    return {"sha256:" + e for e in os.listdir(p.data_dir / "snapshots") if not e.startswith(".")}


def blobs(p: Pypod) -> set[str]:
    return {"sha256:" + e for e in os.listdir(p.data_dir / "images/blobs/sha256")}


def render(p: Pypod, name: str, dest: Path) -> Path:
    p("image", "render", name, str(dest))
    return dest


def test_import_oci_layout_keeps_layers_and_applies_whiteouts(pypod: Pypod, test_images, tmp_path: Path) -> None:
    img = test_images.layered
    image_id = pypod("fetch", f"oci:{img.oci_ref}").out.strip()
    assert image_id == img.config_digest
    rec = pypod("image", "inspect", image_id).json()
    assert [la["diff_id"] for la in rec["layers"]] == img.diff_ids
    assert [la["digest"] for la in rec["layers"]] == img.layer_digests
    assert rec["names"] == ["localhost/layered:latest"]
    assert snapshot_ids(pypod) == set(img.diff_ids)
    root = render(pypod, image_id, tmp_path / "rootfs")
    for path in img.expected_present:
        assert os.path.lexists(root / path.lstrip("/")), path
    for path in img.expected_absent:
        assert not os.path.lexists(root / path.lstrip("/")), path
    assert sorted(os.listdir(root / "olddir")) == ["new"]


@pytest.mark.parametrize("name", ["layered_zstd", "layered_none", "busybox_docker"])
def test_compressions_and_docker_media_types(pypod: Pypod, test_images, name: str, tmp_path: Path) -> None:
    img = test_images[name]
    assert pypod("fetch", f"oci:{img.oci_ref}").out.strip() == img.config_digest
    root = render(pypod, img.config_digest, tmp_path / "r")
    assert (root / "bin/busybox").is_file()


def test_archives_and_rootfs_import(pypod: Pypod, test_images) -> None:
    a = test_images.archives
    assert pypod("fetch", f"oci-archive:{a['layered_oci']}").out.strip() == test_images.layered.config_digest
    assert pypod("fetch", f"docker-archive:{a['busybox_docker']}").out.strip() == test_images.busybox.config_digest
    pypod("image", "import", str(a["rootfs"]), "--name", "plainfs")
    pypod("image", "import", str(a["rootfs_gz"]), "--name", "gzfs")
    names = {n for i in pypod("image", "list", "--format", "json").json() for n in i["names"]}
    assert {"localhost/layered-oci:latest", "docker.io/test/busybox:latest", "localhost/plainfs:latest",
            "localhost/gzfs:latest"} <= names
    plain = pypod("image", "inspect", "plainfs").json()
    gz = pypod("image", "inspect", "gzfs").json()
    assert plain["layers"][0]["diff_id"] == gz["layers"][0]["diff_id"]  # same tar, compressed or not
    assert gz["layers"][0]["media_type"].endswith("+gzip")


def test_shared_layers_are_stored_and_unpacked_once(pypod: Pypod, test_images) -> None:
    pypod("fetch", f"oci:{test_images.busybox.oci_ref}")
    pypod("fetch", f"oci:{test_images.layered.oci_ref}")
    assert test_images.busybox.diff_ids[0] == test_images.layered.diff_ids[0]
    assert snapshot_ids(pypod) == set(test_images.layered.diff_ids)


def test_platform_selection(pypod: Pypod, test_images, tmp_path: Path) -> None:
    ref = f"oci:{test_images.multiarch.oci_ref}"
    arm = pypod("fetch", "--platform", "linux/arm64", ref).out.strip()
    assert (render(pypod, arm, tmp_path / "arm") / "etc/arch").read_text().strip() == "arm64"
    amd = pypod("fetch", "--platform", "linux/amd64", ref).out.strip()
    assert arm != amd
    r = pypod("fetch", "--platform", "linux/s390x", ref, check=False)
    assert r.rc != 0 and "linux/s390x" in r.err and "linux/arm64" in r.err and r.err.count("\n") == 1


def test_tag_rm_and_gc(pypod: Pypod, test_images) -> None:
    bb = test_images.busybox
    image_id = pypod("fetch", f"oci:{bb.oci_ref}").out.strip()
    pypod("image", "tag", image_id, "example.com/team/tool:v1")
    assert set(pypod("image", "inspect", "example.com/team/tool:v1").json()["names"]) == {
        "localhost/busybox:latest", "example.com/team/tool:v1"}
    assert "untagged" in pypod("image", "rm", "example.com/team/tool:v1").out
    assert pypod("image", "inspect", image_id).json()["names"] == ["localhost/busybox:latest"]
    pypod("fetch", f"oci:{test_images.layered.oci_ref}")
    pypod("image", "rm", "busybox")  # the last name: the image goes, shared layers stay
    assert bb.config_digest not in blobs(pypod)
    assert snapshot_ids(pypod) == set(test_images.layered.diff_ids)
    r = pypod("image", "rm", "busybox", check=False)
    assert r.rc == 254 and "not found" in r.err
    pypod("image", "gc", "--grace-period", "0s")
    assert pypod("image", "list", "--format", "json").json() == []
    assert blobs(pypod) == set() and snapshot_ids(pypod) == set()


def test_image_held_by_a_pod_needs_force(pypod: Pypod, test_images) -> None:
    from pypod.config import load
    from pypod.images import ImageStore

    pypod("fetch", f"oci:{test_images.busybox.oci_ref}")
    store = ImageStore(load(pypod.data_dir, pypod.config_dir))
    store.hold("pod-1234", store.resolve("busybox"))
    r = pypod("image", "rm", "busybox", check=False)
    assert r.rc != 0 and "pod-1234" in r.err
    pypod("image", "rm", "--force", "busybox")
    assert snapshot_ids(pypod) == set(test_images.busybox.diff_ids)  # the pod still needs its layers
    store.release("pod-1234")
    pypod("image", "gc")
    assert snapshot_ids(pypod) == set()


def test_export_and_reimport_round_trip(pypod: Pypod, test_images, tmp_path: Path) -> None:
    image_id = pypod("fetch", f"oci:{test_images.layered.oci_ref}").out.strip()
    oci_tar, docker_tar, layout = tmp_path / "x-oci.tar", tmp_path / "x-docker.tar", tmp_path / "layout"
    pypod("image", "export", "layered", str(oci_tar))
    pypod("image", "export", "--format", "docker-archive", "layered", str(docker_tar))
    pypod("image", "extract", "layered", str(layout))
    assert pypod("image", "export", "layered", str(oci_tar), check=False).rc != 0  # exists
    for spec in (f"oci-archive:{oci_tar}", f"docker-archive:{docker_tar}", f"oci:{layout}"):
        inspected = subprocess.run(["skopeo", "inspect", "--raw", spec], capture_output=True, text=True)
        assert inspected.returncode == 0, inspected.stderr
        other = Pypod(tmp_path / f"other-{len(spec)}")
        assert other("fetch", spec).out.strip() == image_id
    cat = json.loads(pypod("image", "cat-manifest", "layered").out)
    assert [la["digest"] for la in cat["layers"]] == test_images.layered.layer_digests


@pytest.mark.parametrize("builder,message", [
    (ti.build_truncated_gzip_image, "truncated|corrupted"),
    (ti.build_digest_mismatch_image, "does not match|digest"),
    (ti.build_diff_id_mismatch_image, "diff_id"),
    (ti.build_unknown_media_type_image, "unsupported|media type"),
    (ti.build_unknown_layer_media_type_image, "unsupported layer media type"),
    (ti.build_malformed_manifest_image, "malformed manifest"),
    (ti.build_bad_config_image, "malformed image config"),
])
def test_bad_images_get_one_line_errors_and_leave_the_store_consistent(pypod: Pypod, tmp_path: Path,
                                                                       builder, message: str) -> None:
    import re

    img = builder(tmp_path / "bad")
    r = pypod("fetch", f"oci:{img.oci_ref}", check=False)
    assert r.rc == 254
    assert re.search(message, r.err), r.err
    assert r.err.count("\n") == 1
    assert pypod("image", "list", "--format", "json").json() == []
    assert os.listdir(pypod.data_dir / "snapshots/.staging") == []
    assert os.listdir(pypod.data_dir / "images/ingest") == []
    pypod("image", "gc", "--grace-period", "0s")
    assert blobs(pypod) == set()


def test_wrong_flags_and_missing_things(pypod: Pypod, tmp_path: Path) -> None:
    r = pypod("image", "list", "--format", "yaml", check=False)
    assert r.rc == 2 and r.err.startswith("pypod:")
    r = pypod("fetch", f"oci:{tmp_path}/nothing", check=False)
    assert r.rc == 254 and "not an OCI image layout" in r.err
    r = pypod("fetch", "Bad Name!", check=False)
    assert r.rc == 2 and "invalid image reference" in r.err


def test_concurrent_imports_sharing_layers(tmp_path: Path, test_images) -> None:
    p = Pypod(tmp_path / "data")
    cmds = [[sys.executable, "-m", "pypod.cli", "--dir", str(p.data_dir), "--config-dir", str(p.config_dir),
             "fetch", f"oci:{img.oci_ref}"] for img in (test_images.layered, test_images.busybox, test_images.layered,
                                                        test_images.configured)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    results = [pr.communicate(timeout=120) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), results
    want = set(test_images.layered.diff_ids) | set(test_images.configured.diff_ids)
    assert snapshot_ids(p) == want
    assert os.listdir(p.data_dir / "snapshots/.staging") == []
    assert len(p("image", "list", "--format", "json").json()) == 3


def test_killed_import_leaves_nothing_visible_and_the_next_one_completes(tmp_path: Path) -> None:
    big = ti.build_bench_image(tmp_path / "big", total_size=60 << 20)
    p = Pypod(tmp_path / "data")
    cmd = [sys.executable, "-m", "pypod.cli", "--dir", str(p.data_dir), "--config-dir", str(p.config_dir),
           "fetch", f"oci:{big.oci_ref}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = p.data_dir / "snapshots/.staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (staging.exists() and os.listdir(staging)):
        time.sleep(0.01)
    assert staging.exists() and os.listdir(staging), "the import never reached unpacking"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert p("image", "list", "--format", "json").json() == []
    assert p("fetch", f"oci:{big.oci_ref}").out.strip() == big.config_digest
    assert snapshot_ids(p) == set(big.diff_ids)
    p("image", "gc", "--grace-period", "24h")
    assert os.listdir(staging) == []
