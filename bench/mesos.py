"""The Mesos executor's latencies: LAUNCH_GROUP of three apps -> all RUNNING, and KILL -> KILLED.

    .venv/bin/python bench/mesos.py [--rounds 10]

Each round starts a fresh ``pypod-mesos-executor`` under the test agent (tests/mesos/mesos_agent.py,
real HTTP, the agent's environment), then times, from the agent's side of the wire:

subscribe     executor process started -> its SUBSCRIBE call reaches the agent
group         LAUNCH_GROUP (3 busybox apps, one pod, host network) sent -> the third TASK_RUNNING
              received (the executor: images resolved, pod created and started through the engine)
kill          KILL of one task (grace 3 s; the apps stop on SIGTERM) sent -> TASK_KILLED of that task
              received (the group's other two are killed with it, by the group policy)
all-killed    the same KILL -> the last of the three TASK_KILLED

Beside it, the engine alone, in this process: ``Engine.run`` of the same three-app manifest
(``run``), and ``Engine.stop`` of it with a 3 s grace (``stop``): what the executor adds is the
difference. Medians over the rounds, with min and max. Needs root; leaves nothing behind (every
pod is removed and the data dir deleted).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "mesos"))

POLITE = 'trap "exit 0" TERM; while true; do sleep 0.1; done'


def stats(xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return f"median {statistics.median(ms):7.1f} ms   (min {min(ms):7.1f}, max {max(ms):7.1f}, n={len(ms)})"


def executor_round(work: Path, env: dict[str, str], i: int) -> dict[str, float]:
    from mesos_agent import TestAgent, busybox

    agent = TestAgent(work / f"sandbox-{i}", executor_id=f"bench-{i}", env=env).start()
    try:
        t0 = time.monotonic()
        agent.launch_executor()
        agent.wait_for(lambda: agent.subscribed, 30, "SUBSCRIBE")
        subscribed = next(c["at"] for c in agent.calls if c["type"] == "SUBSCRIBE") - t0
        tasks = [busybox(f"app{k}", POLITE, grace=3.0) for k in range(3)]
        t1 = time.monotonic()
        agent.launch_group(tasks)
        for k in range(3):
            agent.wait_state(f"app{k}", "TASK_RUNNING", 60)
        group = max(_arrival(agent, f"app{k}", "TASK_RUNNING") for k in range(3)) - t1
        t2 = time.monotonic()
        agent.kill("app0")
        for k in range(3):
            agent.wait_state(f"app{k}", "TASK_KILLED", 30)
        kill = _arrival(agent, "app0", "TASK_KILLED") - t2
        all_killed = max(_arrival(agent, f"app{k}", "TASK_KILLED") for k in range(3)) - t2
        if agent.wait_exit(30) != 0:
            raise SystemExit(f"executor exited {agent.exit_code}: see {agent.sandbox / 'stderr'}")
        if agent.violations:
            raise SystemExit(f"protocol violations: {agent.violations}")
        return {"subscribe": subscribed, "group": group, "kill": kill, "all-killed": all_killed}
    finally:
        agent.close()


def _arrival(agent, task_id: str, state: str) -> float:
    with agent.cond:
        return next(u["at"] for u in agent.updates if u["status"]["task_id"]["value"] == task_id
                    and u["status"]["state"] == state and not u["duplicate"])


def engine_round(data: Path, config_dir: Path) -> dict[str, float]:
    from pypod.config import load
    from pypod.pods.engine import Engine
    from pypod.pods.manifest import App, Network, PodManifest

    eng = Engine(load(data, config_dir))
    m = PodManifest(apps=[App(name=f"app{k}", image="busybox", exec=["/bin/sh", "-c", POLITE]) for k in range(3)],
                    networks=[Network("host")])
    t0 = time.monotonic()
    uuid = eng.run(m, pull="never")
    run = time.monotonic() - t0
    t1 = time.monotonic()
    eng.stop(uuid, grace=3.0)
    stop = time.monotonic() - t1
    eng.rm(uuid)
    return {"run": run, "stop": stop}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/mesos.py needs root (it runs pods)", file=sys.stderr)
        return 2
    from pypod.stage1 import conmon
    from support import images as ti

    conmon.become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="pypod-bench-mesos-"))
    data, cfg = work / "data", work / "etc"
    cfg.mkdir()
    env = {"PYPOD_DIR": str(data), "PYPOD_CONFIG_DIR": str(cfg)}
    try:
        img = ti.build_busybox(work / "oci")
        subprocess.run([sys.executable, "-m", "pypod.cli", "--dir", str(data), "--config-dir", str(cfg), "fetch",
                        f"oci:{img.layout}:latest", "--name", "busybox"], check=True, stdout=subprocess.DEVNULL)
        executor_round(work, env, 0)  # warm-up (page cache, bytecode)
        engine_round(data, cfg)
        ex: dict[str, list[float]] = {}
        en: dict[str, list[float]] = {}
        for i in range(1, args.rounds + 1):  # alternate, so a load spike hits both
            for k, v in executor_round(work, env, i).items():
                ex.setdefault(k, []).append(v)
            for k, v in engine_round(data, cfg).items():
                en.setdefault(k, []).append(v)
            conmon.reap_adopted()
        print(f"pypod-mesos-executor, {args.rounds} rounds (3-app task group, host network, busybox)")
        for k in ("subscribe", "group", "kill", "all-killed"):
            print(f"  {k:<11} {stats(ex[k])}")
        print("the engine alone (same pod, in-process)")
        for k in ("run", "stop"):
            print(f"  {k:<11} {stats(en[k])}")
        print(f"  executor overhead: group/run {statistics.median(ex['group']) / statistics.median(en['run']):.2f}x, "
              f"all-killed/stop {statistics.median(ex['all-killed']) / statistics.median(en['stop']):.2f}x")
    finally:
        subprocess.run([sys.executable, "-m", "pypod.cli", "--dir", str(data), "--config-dir", str(cfg), "gc",
                        "--grace-period", "0s", "--expire-prepared", "0s"], stdout=subprocess.DEVNULL, check=False)
        conmon.reap_adopted()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
