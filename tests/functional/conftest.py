"""Fixtures for pods run through the real CLI with the real runtimes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.cli import Pypod
from support.leaks import Snapshot, collect_and_check


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
    collect_and_check(p, tmp_path, before)
