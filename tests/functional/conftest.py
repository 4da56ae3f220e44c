"""Fixtures for pods run through the real CLI with the real runtimes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.cli import Pypod
from support.leaks import Snapshot, leaked, pod_ids


def _runtimes() -> list[str]:
    if os.geteuid() != 0:
        return ["runc"]
    from pypod.stage1.runtime import available_runtimes

    return list(available_runtimes()) or ["runc"]


@pytest.fixture(params=_runtimes())
def runtime(request) -> str:
    return request.param


@pytest.fixture
def pods(tmp_path: Path, subreaper, test_images) -> Pypod:
    """A pypod CLI with its own data dir and busybox/configured images in its store. On teardown
    every pod is stopped and collected, and the test fails on anything left on the machine."""
    if os.geteuid() != 0:
        pytest.skip("pods need root")
    before = Snapshot.take(str(tmp_path))
    p = Pypod(tmp_path / "data")
    p("fetch", f"oci:{test_images.busybox.oci_ref}", "--name", "busybox")
    p("fetch", f"oci:{test_images.configured.oci_ref}", "--name", "configured")
    yield p
    for pod in p("list", "--format", "json", check=False).json() if p.data_dir.exists() else []:
        if pod["state"] == "running":
            p("stop", "--force", pod["uuid"], check=False)
    gc = p("gc", "--grace-period", "0s", "--expire-prepared", "0s", check=False)
    left = leaked(before, str(tmp_path), ids=pod_ids(p.data_dir) | {str(tmp_path)})
    if left:
        subprocess.run(["sh", "-c", f"grep {tmp_path} /proc/self/mountinfo | cut -d' ' -f5 | sort -r | "
                        "xargs -r -n1 umount -l"], check=False)
    assert gc.rc == 0, gc.err
    assert not left, f"leaked: {left}"
