"""Pulls through the real CLI from real local registries (Debian's docker-registry)."""

from __future__ import annotations

import base64
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
from support.registry import Registry

pytestmark = pytest.mark.root


def configure(p: Pypod, *entries: str, auth: dict | None = None) -> None:
    text = "\n".join(entries)
    if auth is not None:
        auth_file = p.config_dir / "auth.json"
        auth_file.write_text(json.dumps({"auths": {
            host: {"auth": base64.b64encode(f"{u}:{pw}".encode()).decode()} for host, (u, pw) in auth.items()}}))
        text = f'auth_file = "{auth_file}"\n' + text
    p.configure(text)


def insecure(host: str) -> str:
    return f'[[registry]]\nprefix = "{host}"\ninsecure = true\n'


@pytest.fixture
def pypod(tmp_path: Path, registry: Registry) -> Pypod:
    p = Pypod(tmp_path / "data")
    configure(p, insecure(registry.host))
    return p


def snapshot_ids(p: Pypod) -> set[str]:
    return {"sha256:" + e for e in os.listdir(p.data_dir / "snapshots") if not e.startswith(".")}


@pytest.mark.parametrize("repo,key", [("test/busybox", "busybox"), ("test/layered", "layered"),
                                      ("test/layered-zstd", "layered_zstd"), ("test/layered-none", "layered_none"),
                                      ("test/busybox-docker", "busybox_docker")])
def test_pull_by_tag(pypod: Pypod, registry: Registry, test_images, repo: str, key: str) -> None:
    img = test_images[key]
    ref = f"{registry.host}/{repo}:latest"
    assert pypod("fetch", f"docker://{ref}").out.strip() == img.config_digest
    rec = pypod("image", "inspect", ref).json()
    assert rec["names"] == [ref]
    assert rec["repo_digests"] == [f"{registry.host}/{repo}@{img.manifest_digest}"]
    assert [la["diff_id"] for la in rec["layers"]] == img.diff_ids
    assert snapshot_ids(pypod) == set(img.diff_ids)


def test_pull_by_digest_and_platform(pypod: Pypod, registry: Registry, test_images, tmp_path: Path) -> None:
    bb = test_images.busybox
    assert pypod("image", "pull", f"{registry.host}/test/busybox@{bb.manifest_digest}").out.strip() == \
        bb.config_digest
    assert pypod("image", "inspect", bb.config_digest).json()["names"] == []
    for repo in ("test/multiarch", "test/multiarch-docker"):
        arm = test_images[repo.split("/")[1].replace("-", "_")].platforms["linux/arm64"]
        got = pypod("fetch", "--platform", "linux/arm64", f"{registry.host}/{repo}").out.strip()
        assert got == arm.config_digest
        pypod("image", "render", got, str(tmp_path / repo.replace("/", "-")))
        assert (tmp_path / repo.replace("/", "-") / "etc/arch").read_text().strip() == "arm64"
    r = pypod("fetch", "--platform", "linux/mips64", f"{registry.host}/test/multiarch", check=False)
    assert r.rc == 254 and "linux/mips64" in r.err


def test_missing_tag_and_repo_are_one_line_errors(pypod: Pypod, registry: Registry) -> None:
    r = pypod("fetch", f"{registry.host}/test/busybox:nope", check=False)
    assert r.rc == 254 and "not found" in r.err.lower() and "nope" in r.err and r.err.count("\n") == 1
    r = pypod("fetch", f"{registry.host}/no/such", check=False)
    assert r.rc == 254 and r.err.count("\n") == 1
    assert pypod("image", "list", "--format", "json").json() == []


def test_plain_http_only_for_hosts_configured_insecure(tmp_path: Path, registry: Registry) -> None:
    p = Pypod(tmp_path / "data")
    r = p("fetch", f"{registry.host}/test/busybox", check=False)
    assert r.rc == 254 and registry.host in r.err and "insecure" in r.err.lower()
    assert p("image", "list", "--format", "json").json() == []


def test_tls_verified_with_the_configured_ca(tmp_path: Path, tls_registry: Registry, test_images) -> None:
    p = Pypod(tmp_path / "data")
    r = p("fetch", f"{tls_registry.host}/test/busybox", check=False)
    assert r.rc == 254 and "TLS" in r.err
    configure(p, f'[[registry]]\nprefix = "{tls_registry.host}"\nca_file = "{tls_registry.ca_file}"\n')
    assert p("fetch", f"{tls_registry.host}/test/busybox").out.strip() == test_images.busybox.config_digest


def test_basic_auth_from_the_auth_file(tmp_path: Path, basic_auth_registry: Registry, test_images) -> None:
    reg = basic_auth_registry
    p = Pypod(tmp_path / "data")
    configure(p, insecure(reg.host))
    r = p("fetch", f"{reg.host}/test/busybox", check=False)
    assert r.rc == 254 and "unauthorized" in r.err.lower()
    c = reg.credentials
    configure(p, insecure(reg.host), auth={reg.host: (c.username, "wrong")})
    assert p("fetch", f"{reg.host}/test/busybox", check=False).rc == 254
    configure(p, insecure(reg.host), auth={reg.host: (c.username, c.password)})
    assert p("fetch", f"{reg.host}/test/busybox").out.strip() == test_images.busybox.config_digest


def test_bearer_token_auth(tmp_path: Path, token_registry: Registry, token_counts, test_images) -> None:
    reg = token_registry
    p = Pypod(tmp_path / "data")
    c = reg.credentials
    configure(p, insecure(reg.host), auth={reg.host: (c.username, c.password)})
    assert p("fetch", f"{reg.host}/test/busybox").out.strip() == test_images.busybox.config_digest
    granted = [t for t in reg.token_server.requests if t.granted]
    assert granted and all(t.account == c.username for t in granted)
    assert any("repository:test/busybox:pull" in " ".join(t.scopes) for t in granted)
    anon = Pypod(tmp_path / "anon")
    configure(anon, insecure(reg.host))
    r = anon("fetch", f"{reg.host}/test/busybox", check=False)
    assert r.rc == 254 and "unauthorized" in r.err.lower()


def test_rewrite_and_mirrors_serve_names_offline(tmp_path: Path, registry: Registry, test_images) -> None:
    p = Pypod(tmp_path / "data")
    configure(p, f'''
[[registry]]
prefix = "registry.k8s.io"
location = "{registry.host}/test"
insecure = true

[[registry]]
prefix = "mirrored.example"
location = "{registry.host}/test"
insecure = true
  [[registry.mirror]]
  location = "{registry.host}/nothing-here"
  insecure = true
  [[registry.mirror]]
  location = "{registry.host}/test"
  insecure = true
''')
    assert p("fetch", "registry.k8s.io/busybox:latest").out.strip() == test_images.busybox.config_digest
    assert p("image", "inspect", "registry.k8s.io/busybox").json()["names"] == ["registry.k8s.io/busybox:latest"]
    assert p("fetch", "mirrored.example/layered").out.strip() == test_images.layered.config_digest


def test_transient_failures_are_retried_and_4xx_are_not(pypod: Pypod, registry: Registry, faulty_registry,
                                                        test_images) -> None:
    proxy = faulty_registry
    configure(pypod, insecure(proxy.host))
    proxy.fail_next(2, 503)
    proxy.fail_next(1, 429, retry_after=0)
    proxy.reset_next(1, path_contains="/blobs/")
    assert pypod("fetch", f"{proxy.host}/test/busybox").out.strip() == test_images.busybox.config_digest
    proxy.clear()
    proxy.fail_next(None, 404, path_contains="/manifests/")
    r = pypod("fetch", f"{proxy.host}/test/layered", check=False)
    assert r.rc == 254
    assert proxy.count("GET", "/manifests/") == 1


def test_wrong_bytes_from_a_registry_are_rejected_and_not_kept(pypod: Pypod, faulty_registry, test_images) -> None:
    proxy = faulty_registry
    configure(pypod, insecure(proxy.host))
    bad = test_images.layered.layer_digests[-1]
    proxy.corrupt_blob(bad)
    r = pypod("fetch", f"{proxy.host}/test/layered", check=False)
    assert r.rc == 254 and bad in r.err and r.err.count("\n") == 1
    blobs = {"sha256:" + b for b in os.listdir(pypod.data_dir / "images/blobs/sha256")}
    assert bad not in blobs
    assert pypod("image", "list", "--format", "json").json() == []
    assert os.listdir(pypod.data_dir / "images/ingest") == []
    proxy.clear()
    assert pypod("fetch", f"{proxy.host}/test/layered").out.strip() == test_images.layered.config_digest


def test_concurrent_pulls_of_images_sharing_layers(pypod: Pypod, registry: Registry, test_images) -> None:
    refs = [f"{registry.host}/test/{r}" for r in ("layered", "busybox", "layered", "configured", "layered-zstd")]
    cmds = [[sys.executable, "-m", "pypod.cli", "--dir", str(pypod.data_dir), "--config-dir", str(pypod.config_dir),
             "fetch", ref] for ref in refs]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [pr.communicate(timeout=120) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), outs
    want = set(test_images.layered.diff_ids) | set(test_images.configured.diff_ids) | \
        set(test_images.layered_zstd.diff_ids)
    assert snapshot_ids(pypod) == want
    # layered and layered-zstd share their config (same diff_ids), hence one image ID, two names
    listed = pypod("image", "list", "--format", "json").json()
    assert len(listed) == 3
    assert {n for i in listed for n in i["names"]} == {f"{r}:latest" for r in refs}


def test_killed_pull_is_completed_by_the_next(tmp_path: Path, registry: Registry) -> None:
    big = ti.build_bench_image(tmp_path / "big", total_size=40 << 20, layers=3)
    registry.push(big, "test/big", "latest")
    p = Pypod(tmp_path / "data")
    configure(p, insecure(registry.host))
    cmd = [sys.executable, "-m", "pypod.cli", "--dir", str(p.data_dir), "--config-dir", str(p.config_dir),
           "fetch", f"{registry.host}/test/big"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ingest, staging = p.data_dir / "images/ingest", p.data_dir / "snapshots/.staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            d.exists() and os.listdir(d) for d in (ingest, staging)):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert p("image", "list", "--format", "json").json() == []
    assert p("fetch", f"{registry.host}/test/big").out.strip() == big.config_digest
    assert snapshot_ids(p) == set(big.diff_ids)
    p("image", "gc")
    assert os.listdir(ingest) == [] and os.listdir(staging) == []


def test_progress_on_a_terminal_and_quiet_otherwise(pypod: Pypod, registry: Registry, test_images) -> None:
    import pty

    ref = f"{registry.host}/test/layered"
    quiet = pypod("fetch", ref)
    assert quiet.err == ""
    pypod("image", "rm", ref)
    pypod("image", "gc", "--grace-period", "0s")
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "pypod.cli", "--dir", str(pypod.data_dir), "--config-dir", str(pypod.config_dir),
           "fetch", ref]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    for digest in test_images.layered.layer_digests:
        assert digest[7:19].encode() in shown
    assert b"done" in shown and b"/s" in shown


def test_size_limits_come_from_the_config(tmp_path: Path, registry: Registry, bomb_image) -> None:
    registry.push(bomb_image, "test/bomb", "latest")
    p = Pypod(tmp_path / "data")
    configure(p, insecure(registry.host) + '\n[limits]\nmax_layer_unpacked = "64MiB"\n')
    r = p("fetch", f"{registry.host}/test/bomb", check=False)
    assert r.rc == 254 and "max_layer_unpacked" in r.err
    assert p("image", "list", "--format", "json").json() == []
    assert os.listdir(p.data_dir / "snapshots/.staging") == []


def test_gc_keeps_images_used_within_the_grace_period(pypod: Pypod, registry: Registry) -> None:
    pypod("fetch", f"{registry.host}/test/busybox")
    pypod("image", "gc", "--grace-period", "1h")
    assert len(pypod("image", "list", "--format", "json").json()) == 1
    pypod("image", "gc", "--grace-period", "0s")
    assert pypod("image", "list", "--format", "json").json() == []
