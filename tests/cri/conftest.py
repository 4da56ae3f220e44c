"""Fixtures for the CRI tests: one pypod-cri per session (with its registry and images), and a
leak check that nothing of its pods stays on the machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from cri_env import CriEnv, tools_available  # noqa: E402

from support.leaks import Snapshot, leaked, pod_ids  # noqa: E402


@pytest.fixture(scope="session")
def cri(tmp_path_factory, subreaper):
    """pypod-cri serving on a socket of its own, images pushed to a local registry."""
    if os.geteuid() != 0:
        pytest.skip("pypod-cri runs pods: it needs root")
    why = tools_available()
    if why:
        pytest.skip(why)
    pytest.importorskip("grpc", reason="the cri extra is not installed")
    work = tmp_path_factory.mktemp("cri")
    cache = Path(os.environ.get("PYPOD_CRI_IMAGE_CACHE", tmp_path_factory.getbasetemp() / "cri-images"))
    before = Snapshot.take(str(work))
    env = CriEnv(work, cache=cache)
    try:
        env.start()
        yield env
    finally:
        env.stop()
    left = leaked(before, str(work), ids=pod_ids(env.data_dir) | {str(work)})
    assert not left, f"leaked: {left}"


