#!/usr/bin/env python3
"""A small Mesos framework (pymesos' scheduler driver) that runs a task group as one pypod pod.

    python examples/mesos/framework.py MASTER_HOST:PORT [--image busybox] [--executor-command CMD]

It takes the first offer, launches a group of three tasks to the custom executor
``pypod-mesos-executor`` (LAUNCH_GROUP: one pod, three apps sharing a volume), prints every
status update, and stops when all tasks are terminal: exit 0 if they all FINISHED, 1 otherwise.
See README.md beside this file for the ExecutorInfo a real framework sends.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import pypod.mesos  # noqa: F401  (before pymesos: provides the HTTP parser pymesos imports)
from pymesos import MesosSchedulerDriver, Scheduler

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
            "TASK_GONE", "TASK_GONE_BY_OPERATOR"}


def scalar(name: str, value: float) -> dict:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


def executor_info(command: str) -> dict:
    """What points Mesos at pypod: a CUSTOM executor whose command is pypod-mesos-executor."""
    return {
        "type": "CUSTOM",
        "executor_id": {"value": "pypod-demo"},
        "name": "pypod pod executor",
        "command": {"value": command, "shell": True},
        "resources": [scalar("cpus", 0.1), scalar("mem", 32), scalar("disk", 10)],  # disk: required for groups
        "shutdown_grace_period": {"nanoseconds": 10_000_000_000},
        # "container": {"type": "MESOS", "network_infos": [{"name": "default"}]},  # a CNI network for the pod
    }


def task(name: str, image: str, script: str, agent_id: dict) -> dict:
    return {
        "name": name,
        "task_id": {"value": f"demo.{name}"},
        "agent_id": agent_id,
        "resources": [scalar("cpus", 0.1), scalar("mem", 32)],
        "command": {"shell": True, "value": script},
        "container": {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": image}}},
                      "volumes": [{"container_path": "shared", "mode": "RW", "source": {
                          "type": "SANDBOX_PATH", "sandbox_path": {"type": "PARENT", "path": "shared"}}}]},
        "kill_policy": {"grace_period": {"nanoseconds": 3_000_000_000}},
    }


class PodDemo(Scheduler):
    def __init__(self, image: str, executor_command: str):
        self.image = image
        self.executor_command = executor_command
        self.launched = False
        self.states: dict[str, str] = {}
        self.done = threading.Event()

    def registered(self, driver, framework_id, master_info):
        print(f"registered as framework {framework_id['value']}", flush=True)

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched:
                driver.declineOffer(offer["id"])
                continue
            self.launched = True
            agent = offer["agent_id"]
            tasks = [
                task("writer", self.image, "echo written-by-writer > $MESOS_SANDBOX/shared/note; echo wrote", agent),
                task("reader", self.image, "while [ ! -e $MESOS_SANDBOX/shared/note ]; do sleep 0.1; done; "
                                           "cat $MESOS_SANDBOX/shared/note", agent),
                task("counter", self.image, "for i in 1 2 3; do echo $i; sleep 0.1; done", agent),
            ]
            driver.acceptOffers([offer["id"]], [{"type": "LAUNCH_GROUP", "launch_group": {
                "executor": executor_info(self.executor_command), "task_group": {"tasks": tasks}}}])
            print(f"launched a group of {len(tasks)} tasks on agent {agent['value']}", flush=True)

    def statusUpdate(self, driver, update):
        tid, state = update["task_id"]["value"], update["state"]
        self.states[tid] = state
        extra = f" ({update['message']})" if update.get("message") else ""
        print(f"{tid}: {state}{extra}", flush=True)
        if len(self.states) == 3 and all(s in TERMINAL for s in self.states.values()):
            self.done.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("master", help="the Mesos master, host:port")
    ap.add_argument("--image", default="busybox")
    ap.add_argument("--executor-command", default="pypod-mesos-executor")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sched = PodDemo(args.image, args.executor_command)
    framework = {"user": "root", "name": "pypod-demo", "checkpoint": True, "failover_timeout": 0,
                 "capabilities": [{"type": "TASK_KILLING_STATE"}, {"type": "PARTITION_AWARE"}]}
    driver = MesosSchedulerDriver(sched, framework, args.master, implicit_acknowledgements=True)
    driver.start()
    finished = sched.done.wait(args.timeout)
    driver.stop()  # TEARDOWN: the master shuts the executor down
    driver.join()
    if not finished:
        print("timed out", file=sys.stderr)
        return 1
    return 0 if all(s == "TASK_FINISHED" for s in sched.states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
