"""examples/mesos/framework.py (pymesos' scheduler driver) against the test master façade: a task
group launched end to end through pypod-mesos-executor, as real pods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesos_master import TestMaster

pytestmark = pytest.mark.root

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mesos" / "framework.py"


def test_example_framework_runs_a_task_group(make_agent) -> None:
    master = TestMaster(make_agent).start()
    try:
        r = subprocess.run([sys.executable, str(EXAMPLE), master.address, "--timeout", "90"],
                           capture_output=True, text=True, timeout=120)
        agent = master.agents["pypod-demo"]
        assert agent.wait_exit(30) == 0
    finally:
        master.close()
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    for t in ("writer", "reader", "counter"):
        assert f"demo.{t}: TASK_RUNNING" in r.stdout and f"demo.{t}: TASK_FINISHED" in r.stdout
    assert (agent.sandbox / "tasks" / "demo.reader" / "stdout").read_text() == "written-by-writer\n"
    assert (agent.sandbox / "tasks" / "demo.counter" / "stdout").read_text() == "1\n2\n3\n"
    assert (agent.sandbox / "shared" / "note").exists()
    assert not agent.violations
    calls = [c["type"] for c in master.calls]
    assert calls[0] == "SUBSCRIBE" and "ACCEPT" in calls and calls.count("ACKNOWLEDGE") >= 9
