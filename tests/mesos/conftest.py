"""Fixtures for the Mesos executor tests: the test agent (agent.py) driving the real
``pypod-mesos-executor`` process, which runs real pods (crun/runc, conmon, catatonit) from busybox
imported into a throwaway data dir, as tests/functional does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support.cli import Pypod
from support.leaks import Snapshot, collect_and_check

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mesos_agent import EXECUTOR_BIN, TestAgent  # noqa: E402


@pytest.fixture
def pypod_store(tmp_path: Path, subreaper, test_images) -> Pypod:
    """A data dir with busybox in its store; on teardown every pod is stopped and collected and
    the test fails on anything left on the machine."""
    if os.geteuid() != 0:
        pytest.skip("pods need root")
    if not os.access(EXECUTOR_BIN, os.X_OK):
        pytest.skip(f"{EXECUTOR_BIN} not installed (make python-deps)")
    before = Snapshot.take(str(tmp_path))
    p = Pypod(tmp_path / "data")
    p("fetch", f"oci:{test_images.busybox.oci_ref}", "--name", "busybox")
    yield p
    collect_and_check(p, tmp_path, before)


@pytest.fixture
def make_agent(pypod_store: Pypod, tmp_path: Path):
    """``make_agent(**TestAgent options)``: a started agent whose executor uses the test's data dir.
    Agents are closed (executor process group killed if still alive) before the leak check."""
    agents: list[TestAgent] = []

    def make(**kw) -> TestAgent:
        env = {"PYPOD_DIR": str(pypod_store.data_dir), "PYPOD_CONFIG_DIR": str(pypod_store.config_dir)}
        env.update(kw.pop("env", {}))
        agent = TestAgent(tmp_path / f"sandbox-{len(agents)}", env=env, **kw).start()
        agents.append(agent)
        return agent

    yield make
    for a in agents:
        a.close()
    for a in agents:
        log = a.sandbox / "stderr"
        if log.exists():
            sys.stderr.write(f"--- executor stderr ({a.executor_id}) ---\n{log.read_text()[-6000:]}\n")
