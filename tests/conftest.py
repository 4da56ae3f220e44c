"""Shared fixtures: test images built from busybox and real local registries.

The helpers live in tests/support (importable as ``support``: this file puts
tests/ on sys.path). They never import pypod.

Session fixtures:
    test_images          support.images.TestImages, built once per session
    hostile_images       {kind: Image} for every hostile layer and hostile image
    bomb_image           Image with a ~1 MiB gzip layer expanding to 1 GiB
    registry             plain HTTP, anonymous, standard images pushed (REGISTRY_REPOS)
    tls_registry         HTTPS (throwaway CA: .ca_file), anonymous, test/busybox pushed
    basic_auth_registry  htpasswd basic auth over HTTP, test/busybox pushed
    token_registry       bearer token auth (.token_server counts requests), test/busybox pushed
Function fixtures:
    faulty_registry      support.registry.FaultProxy in front of ``registry``

Tests marked ``root`` are skipped when not running as root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support import images as _images  # noqa: E402
from support.registry import REGISTRY_BIN, REGISTRY_REPOS, FaultProxy, Registry, process_gone  # noqa: E402



def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: run the functional tests as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def _require(path: str, what: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} not found: {what} is needed (make system-deps)")


@pytest.fixture(scope="session")
def test_images(tmp_path_factory) -> _images.TestImages:
    _require(str(_images.BUSYBOX), "busybox-static")
    return _images.build_all(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def hostile_images(tmp_path_factory) -> dict[str, _images.Image]:
    _require(str(_images.BUSYBOX), "busybox-static")
    root = tmp_path_factory.mktemp("hostile")
    built = {kind: _images.build_hostile_image(root / kind, kind)
             for kind in _images.HOSTILE_LAYERS}
    built.update({kind: build(root / kind) for kind, build in _images.HOSTILE_IMAGES.items()})
    return built


@pytest.fixture(scope="session")
def bomb_image(tmp_path_factory) -> _images.Image:
    return _images.build_bomb_image(tmp_path_factory.mktemp("bomb") / "layout")


def _run_registry(registry: Registry):
    """Starts ``registry``, yields it, stops it and checks that the process is gone."""
    _require(REGISTRY_BIN, "docker-registry")
    registry.start()
    try:
        yield registry
    finally:
        pid = registry.pid
        registry.stop()
        assert pid is None or process_gone(pid), f"docker-registry pid {pid} survived stop()"


@pytest.fixture(scope="session")
def registry(test_images):
    """Plain HTTP, anonymous; every image of REGISTRY_REPOS pushed as :latest."""
    for reg in _run_registry(Registry()):
        for repo, key in REGISTRY_REPOS.items():
            reg.push(test_images[key], repo, "latest")
        yield reg


@pytest.fixture(scope="session")
def tls_registry(test_images):
    for reg in _run_registry(Registry(tls=True)):
        reg.push(test_images.busybox, "test/busybox", "latest")
        yield reg


@pytest.fixture(scope="session")
def basic_auth_registry(test_images):
    for reg in _run_registry(Registry(auth="htpasswd")):
        reg.push(test_images.busybox, "test/busybox", "latest")
        yield reg


@pytest.fixture(scope="session")
def token_registry(test_images):
    for reg in _run_registry(Registry(auth="token")):
        reg.push(test_images.busybox, "test/busybox", "latest")
        reg.token_server.reset_counts()
        yield reg


@pytest.fixture
def faulty_registry(registry):
    """A fresh FaultProxy in front of ``registry`` (same repos; ``.host``, ``.url``)."""
    with FaultProxy.for_registry(registry) as proxy:
        yield proxy


@pytest.fixture
def token_counts(token_registry):
    """Resets the token server's request log before the test; returns the server."""
    token_registry.token_server.reset_counts()
    return token_registry.token_server


@pytest.fixture(scope="session")
def subreaper():
    """conmon daemonizes, and this machine's PID 1 does not reap: pytest adopts the orphaned
    monitors of the pods that tests start (the CLI's, a driver's) and reaps them."""
    if os.geteuid() == 0:
        from pypod.stage1 import conmon

        conmon.become_subreaper()
