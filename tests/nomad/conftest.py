"""Fixtures for the Nomad driver tests: a pypod data dir with busybox imported (once per session),
the plugin launched as Nomad launches it, alloc dirs with logmon-style FIFO readers, and a leak
check after every test that runs pods."""

from __future__ import annotations

import os

import pytest

from support.cli import Pypod
from support.leaks import Snapshot, leaked, pod_ids

try:
    import grpc  # noqa: F401
    import msgpack  # noqa: F401
    HAVE_DEPS = True
except ImportError:  # pragma: no cover - make test installs .[test,nomad]
    HAVE_DEPS = False

collect_ignore_glob = [] if HAVE_DEPS else ["test_*.py"]


@pytest.fixture(scope="session")
def nomad_pypod(tmp_path_factory) -> Pypod:
    """A data dir holding the image ``busybox`` (the test busybox image, imported)."""
    if os.geteuid() != 0:
        pytest.skip("pods need root")
    from support import images

    if not os.access(str(images.BUSYBOX), os.X_OK):
        pytest.skip(f"{images.BUSYBOX} not found: busybox-static is needed (make system-deps)")
    root = tmp_path_factory.mktemp("nomad")
    img = images.build_busybox(root / "oci" / "busybox")
    p = Pypod(root / "data")
    p("fetch", f"oci:{img.oci_ref}", "--name", "busybox")
    from pypod.stage1 import conmon

    conmon.become_subreaper()  # conmon daemonizes; pytest reaps what the plugin's pods leave
    yield p
    for pod in p("list", "--format", "json", check=False).json() if p.data_dir.exists() else []:
        if pod["state"] == "running":
            p("stop", "--force", pod["uuid"], check=False)
    p("gc", "--grace-period", "0s", "--expire-prepared", "0s", check=False)


@pytest.fixture
def agent_config(nomad_pypod, tmp_path) -> dict:
    return {"data_dir": str(nomad_pypod.data_dir), "config_dir": str(nomad_pypod.config_dir)}


@pytest.fixture
def leak_check(nomad_pypod, tmp_path):
    """Fails the test on anything its pods left (processes, mounts, netns, cgroups, rules)."""
    before = Snapshot.take(str(tmp_path))
    known = pod_ids(nomad_pypod.data_dir)
    yield
    ids = pod_ids(nomad_pypod.data_dir) - known
    p = nomad_pypod
    running = [x["uuid"] for x in p("list", "--format", "json", check=False).json() if x["uuid"] in ids
               and x["state"] == "running"]
    for uuid in running:
        p("stop", "--force", uuid, check=False)
    left = leaked(before, str(tmp_path), ids=ids | {str(tmp_path)})
    assert not running, f"pods still running after the test: {running}"
    assert not left, f"leaked: {left}"
