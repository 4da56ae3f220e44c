"""Unprivileged read access, as rkt's ``rkt`` group had: after ``pypod setup``, a member of the
group runs ``list``, ``status``, ``image list`` and ``events`` as itself (a real user made
with useradd, the CLI run through runuser); every command that changes state refuses it with
"needs root", and a user outside the group reads nothing.

The test uses its own group name (``pypod setup --group``), so a real ``pypod`` group on the
machine is left alone; the users and the group it makes are removed afterwards."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pypod
from support.cli import Pypod, Result
from support.leaks import Snapshot, leaked

pytestmark = pytest.mark.root


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _user_python(user: str, pkg_dir: Path) -> tuple[list[str], dict]:
    """A python the user can run with this pypod on its path; pytest.skip saying why if none."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    if _sh("runuser", "-u", user, "--", "test", "-x", sys.executable, check=False).returncode == 0:
        return [sys.executable], {**env, "PYTHONPATH": str(pkg_dir)}
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (f"/usr/bin/python{want}", "/usr/bin/python3"):
        if not os.access(cand, os.X_OK):
            continue
        probe = _sh("runuser", "-u", user, "--", "env", f"PYTHONPATH={pkg_dir}", cand, "-c",
                    "import sys, pypod.cli; assert sys.version_info >= (3, 11)", check=False)
        if probe.returncode == 0:
            return [cand], {**env, "PYTHONPATH": str(pkg_dir)}
    parents = " ".join(f"{p} {stat.filemode(os.stat(p).st_mode)}" for p in Path(sys.executable).parents
                       if str(p) != "/" and not os.stat(p).st_mode & stat.S_IXOTH)
    pytest.skip(f"no python the unprivileged user can run: {sys.executable} is not reachable ({parents}) "
                f"and no system python >= 3.11 can import pypod")


class As:
    """The pypod CLI run as ``user`` (runuser), on the same data and config dirs as ``root``."""

    def __init__(self, root: Pypod, user: str, python: list[str], env: dict):
        self.root, self.user, self.python, self.env = root, user, python, env

    def __call__(self, *args: str, check: bool = True) -> Result:
        cmd = ["runuser", "-u", self.user, "--", *self.python, "-m", "pypod.cli", "--dir", str(self.root.data_dir),
               "--config-dir", str(self.root.config_dir), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=120, cwd="/")
        r = Result(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise AssertionError(f"pypod {' '.join(args)} as {self.user} exited {p.returncode}: {p.stderr.strip()}")
        return r


@pytest.fixture
def access(subreaper, test_images):
    """(root CLI, member CLI, outsider CLI, group name) on a data dir under a world-traversable
    temporary dir; removes the users, the group and every pod afterwards."""
    base = Path(tempfile.mkdtemp(prefix="pypod-access-", dir="/tmp"))
    base.chmod(0o755)
    tag = secrets.token_hex(3)
    group, member, outsider = f"pypodg{tag}", f"pypodm{tag}", f"pypodo{tag}"
    made_users: list[str] = []
    before = Snapshot.take(str(base))
    root = Pypod(base / "data", base / "etc")
    (base / "etc").chmod(0o755)
    pkg = base / "py"
    pkg.mkdir()
    (pkg / "pypod").symlink_to(Path(pypod.__file__).parent)
    try:
        out = root("setup", "--group", group).out
        assert f"created group {group}" in out
        for user, groups in ((member, ["--groups", group]), (outsider, [])):
            _sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", *groups, user)
            made_users.append(user)
        python, env = _user_python(member, pkg)
        yield root, As(root, member, python, env), As(root, outsider, python, env), group
    finally:
        ids = set()
        if root.data_dir.exists():
            for pod in root("list", "--format", "json", check=False).json():
                ids.add(pod["uuid"])
                if pod["state"] == "running":
                    root("stop", "--force", pod["uuid"], check=False)
            root("gc", "--grace-period", "0s", "--expire-prepared", "0s", check=False)
        for user in made_users:
            _sh("userdel", user, check=False)
        _sh("groupdel", group, check=False)
        left = leaked(before, str(base), ids=ids)  # other test runs' pods are not ours
        shutil.rmtree(base, ignore_errors=True)
        for name in (member, outsider):
            assert _sh("getent", "passwd", name, check=False).returncode == 2, f"user {name} left behind"
        assert _sh("getent", "group", group, check=False).returncode == 2, f"group {group} left behind"
        assert not left, f"leaked: {left}"


def _owner(path: Path) -> tuple[str, str, int]:
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def test_setup_gives_the_data_dir_to_the_group(access) -> None:
    root, _, _, group = access
    d = root.data_dir
    assert _owner(d) == ("root", group, 0o750)
    for sub in ["pods", "pods/run", "pods/prepared", "pods/exited-garbage"]:
        assert _owner(d / sub) == ("root", group, 0o750), sub
    for name in ("images.db", "images.db-wal", "images.db-shm", "events.log"):
        assert _owner(d / name) == ("root", group, 0o640), name
    again = root("setup", "--group", group).out
    assert "created group" not in again and group in again


def test_members_read_pods_images_and_events(access, test_images) -> None:
    root, member, _, group = access
    root("fetch", f"oci:{test_images.busybox.oci_ref}", "--name", "busybox")
    r = root("run", "--net=none", "busybox", "--name", "once", "--exec", "/bin/sh", "--", "-c", "exit 3", check=False)
    assert r.rc == 3
    running = root("run", "-d", "--net=none", "busybox", "--name", "web", "--exec", "/bin/sh", "--", "-c",
                   "trap 'exit 0' TERM; while true; do sleep 0.1; done").out.strip()
    exited = next(p["uuid"] for p in root("list", "--format", "json").json() if p["uuid"] != running)
    # what the member reads was created by root after setup: it must carry the group
    for path in root.data_dir.glob("pods/*/*/manifest.json"):
        assert _owner(path) == ("root", group, 0o640)

    pods = {p["uuid"]: p for p in member("list", "--format", "json").json()}
    assert pods[running]["state"] == "running" and [a["name"] for a in pods[running]["apps"]] == ["web"]
    assert pods[exited]["state"] == "exited" and pods[exited]["exit_code"] == 3
    table = member("list").out
    assert running[:8] in table and "web" in table and "busybox" in table
    st = member("status", "--format", "json", running).json()
    assert st["state"] == "running" and st["apps"][0]["name"] == "web"
    assert "exit-code=3" in member("status", exited).out
    assert all(Path(f"{root.data_dir}/images.db{s}").exists() for s in ("-wal", "-shm"))  # kept for readers
    images = member("image", "list", "--format", "json").json()
    assert [i["names"] for i in images] == [["localhost/busybox:latest"]]
    types = {e["type"] for e in map(json.loads, member("events", "--format", "json").out.splitlines())}
    assert {"pod.started", "pod.exited", "app.exited"} <= types
    # the other read-only commands read the same files
    assert json.loads(member("cat-manifest", running).out)["apps"][0]["name"] == "web"
    assert "web" in member("app", "list", running).out
    assert member("image", "inspect", "busybox").json()["names"] == ["localhost/busybox:latest"]
    root("stop", running)
    assert member("status", "--format", "json", running).json()["state"] == "exited"


def test_members_cannot_change_anything(access, test_images, tmp_path: Path) -> None:
    root, member, _, _ = access
    root("fetch", f"oci:{test_images.busybox.oci_ref}", "--name", "busybox")
    uuid = root("run", "-d", "--net=none", "busybox", "--exec", "/bin/sh", "--", "-c",
                "trap 'exit 0' TERM; while true; do sleep 0.1; done").out.strip()
    key = tmp_path / "k.pem"
    from support import cosign

    cosign.Key().write_public(key)
    key.chmod(0o644)
    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(b"")
    refused = [
        ("fetch", f"oci:{test_images.busybox.oci_ref}", "--name", "mine"),
        ("image", "pull", "127.0.0.1:1/x"),
        ("image", "rm", "busybox"),
        ("image", "tag", "busybox", "other"),
        ("image", "gc"),
        ("image", "import", str(tar), "--name", "x"),
        ("trust", "add", "--prefix", "quay.io", str(key)),
        ("trust", "rm", "--root"),
        ("run", "--net=none", "busybox"),
        ("prepare", "busybox"),
        ("stop", uuid),
        ("rm", uuid),
        ("gc",),
        ("setup",),
    ]
    for args in refused:
        r = member(*args, check=False)
        assert r.rc == 254 and "needs root" in r.err and r.err.count("\n") == 1, (args, r)
    assert member("image", "list", "--format", "json").json()[0]["names"] == ["localhost/busybox:latest"]
    assert member("status", "--format", "json", uuid).json()["state"] == "running"
    assert [p["uuid"] for p in root("list", "--format", "json").json()] == [uuid]
    assert not (root.config_dir / "policy.json").exists()


def test_outsiders_read_nothing(access, test_images) -> None:
    root, _, outsider, _ = access
    root("fetch", f"oci:{test_images.busybox.oci_ref}", "--name", "busybox")
    for args in (("list",), ("image", "list"), ("events",)):
        r = outsider(*args, check=False)
        assert r.rc == 254 and "Permission denied" in r.err and "pypod setup" in r.err, (args, r)
