"""``pypod-mesos-executor`` against the protocol-faithful test agent, with real pods (the
scenarios of ../shared/reference/mesos.md section 5.5). Every test ends with the executor gone,
its pods removed and nothing leaked (the ``pypod_store`` fixture checks)."""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest

from mesos_agent import TestAgent, busybox

pytestmark = pytest.mark.root

# an app that stops on SIGTERM within 0.1 s (sh as PID 1 has no default action for TERM)
POLITE = 'trap "exit 0" TERM; while true; do sleep 0.1; done'
# an app that ignores SIGTERM: only SIGKILL after the grace period ends it
STUBBORN = "trap '' TERM; while true; do sleep 0.1; done"


def clean(agent: TestAgent) -> None:
    """No protocol violation by the executor, and the agent refused none of its calls."""
    assert not agent.violations, agent.violations
    refused = [c for c in agent.calls if c.get("code")]
    assert not refused, refused


def engine_of(agent: TestAgent):
    from pypod.config import load
    from pypod.pods.engine import Engine

    return Engine(load(agent.extra_env["PYPOD_DIR"], agent.extra_env["PYPOD_CONFIG_DIR"]))


def pod_of(status: dict) -> str:
    return status["container_status"]["container_id"]["value"]


def running_pods(agent: TestAgent) -> list[str]:
    return [p.uuid for p in engine_of(agent).list() if p.state == "running"]


# -- task groups --------------------------------------------------------------------------------------


def test_group_happy_path_network_sandbox_resources_and_shutdown(make_agent) -> None:
    """LAUNCH_GROUP of three apps in one pod on a CNI network: STARTING -> RUNNING (pod IP in
    container_status) for each; one finishes (its output in its sandbox); SHUTDOWN kills the
    others within the grace period, every update is acknowledged and the executor exits 0. The
    stream is cut at random places and heartbeats come in between."""
    agent = make_agent(chunking="fragment", heartbeat_interval=0.3, shutdown_grace=8.0,
                       executor_info={"type": "CUSTOM", "command": {"value": "pypod-mesos-executor"},
                                      "container": {"type": "MESOS", "network_infos": [{"name": "default"}]}})
    agent.launch_executor()
    agent.launch_group([
        busybox("web", 'echo "sandbox=$MESOS_SANDBOX"; echo made > $MESOS_SANDBOX/made-by-web; '
                       'echo to-stderr >&2; sleep 0.5; exit 0', cpus=0.5, mem=64),
        busybox("db", POLITE),
        busybox("cache", POLITE, grace=1.0),
    ])
    running = {t: agent.wait_state(t, "TASK_RUNNING", 60) for t in ("web", "db", "cache")}
    pods = {pod_of(s) for s in running.values()}
    assert len(pods) == 1, "a group is one pod"
    (uuid,) = pods
    nets = running["db"]["container_status"]["network_infos"]
    assert nets[0]["name"] == "default" and nets[0]["ip_addresses"][0]["ip_address"].count(".") == 3
    st = engine_of(agent).status(uuid)
    assert sorted(a.name for a in st.apps) == ["cache", "db", "web"]
    agent.wait_state("web", "TASK_FINISHED", 30)
    web_sandbox = agent.sandbox / "tasks" / "web"
    assert (web_sandbox / "stdout").read_text() == "sandbox=/mnt/mesos/sandbox\n"
    assert (web_sandbox / "stderr").read_text() == "to-stderr\n"
    assert (web_sandbox / "made-by-web").read_text() == "made\n"
    assert agent.state("db") == "TASK_RUNNING", "a task that finished does not kill its siblings"
    limits = engine_of(agent).stats(uuid, "db")
    assert limits["memory_limit"] == 32 << 20

    start = time.monotonic()
    agent.shutdown()
    assert agent.wait_exit(20) == 0
    took = time.monotonic() - start
    assert took < agent.shutdown_grace, f"exited {took:.1f}s after SHUTDOWN"
    for t in ("db", "cache"):
        assert agent.states(t) == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]
    assert agent.states("web") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert not agent.unacked and len(agent.acked) == len(agent.seen) == 11
    assert running_pods(agent) == [] and engine_of(agent).list() == []
    clean(agent)


def test_failed_app_kills_its_siblings_with_their_grace(make_agent) -> None:
    agent = make_agent()
    agent.launch_executor()
    agent.launch_group([
        busybox("bad", 'while [ ! -e $MESOS_SANDBOX/go ]; do sleep 0.05; done; exit 3'),
        busybox("stubborn", STUBBORN, grace=1.5),
        busybox("polite", POLITE),
    ])
    for t in ("bad", "stubborn", "polite"):
        agent.wait_state(t, "TASK_RUNNING", 60)
    (agent.sandbox / "tasks" / "bad" / "go").touch()
    failed = agent.wait_state("bad", "TASK_FAILED", 30)
    assert failed["message"] == "Command exited with status 3" and "reason" not in failed
    t0 = time.monotonic()
    agent.wait_state("polite", "TASK_KILLED", 10)
    killed = agent.wait_state("stubborn", "TASK_KILLED", 10)
    waited = time.monotonic() - t0
    assert 1.0 < waited < 6, f"the stubborn sibling was killed {waited:.1f}s after the failure (grace 1.5s)"
    assert "bad" in killed["message"]
    assert agent.wait_exit(20) == 0, "every task terminal and acknowledged: the executor exits"
    clean(agent)


# -- single tasks and kills ------------------------------------------------------------------------


def test_kill_honours_the_policy_and_a_second_kill_cuts_the_grace(make_agent) -> None:
    agent = make_agent()
    agent.launch_executor()
    agent.launch(busybox("a", STUBBORN, grace=30))
    agent.launch(busybox("b", STUBBORN, grace=30))
    ra, rb = agent.wait_state("a", "TASK_RUNNING", 60), agent.wait_state("b", "TASK_RUNNING", 60)
    assert pod_of(ra) != pod_of(rb), "each LAUNCH is a pod of its own"

    t0 = time.monotonic()
    agent.kill("a", grace=1.0)  # KILL's kill_policy overrides the task's 30 s
    agent.wait_state("a", "TASK_KILLED", 15)
    took = time.monotonic() - t0
    assert 0.9 < took < 6, f"KILLED after {took:.1f}s with a 1s grace"
    assert agent.states("a") == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]

    agent.kill("b")  # the task's own 30 s policy...
    agent.wait_state("b", "TASK_KILLING", 10)
    time.sleep(0.5)
    assert agent.state("b") == "TASK_KILLING"
    t0 = time.monotonic()
    agent.kill("b", grace=0)  # ...cut short: at once
    agent.wait_state("b", "TASK_KILLED", 10)
    assert time.monotonic() - t0 < 5
    assert agent.wait_exit(20) == 0
    clean(agent)


def test_no_task_killing_without_the_capability(make_agent) -> None:
    agent = make_agent(capabilities=())
    agent.launch_executor()
    agent.launch(busybox("a", POLITE))
    agent.wait_state("a", "TASK_RUNNING", 60)
    agent.kill("a")
    agent.wait_state("a", "TASK_KILLED", 15)
    assert agent.states("a") == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"]
    assert agent.wait_exit(20) == 0
    clean(agent)


def test_kill_right_behind_the_launch(make_agent) -> None:
    """LAUNCH and KILL queued before the executor subscribed arrive back to back: the task is
    killed during its launch, never reported RUNNING, and no pod is left."""
    agent = make_agent()
    agent.launch(busybox("t", POLITE))
    agent.kill("t")
    agent.launch_executor()
    st = agent.wait_state("t", "TASK_KILLED", 60)
    assert "TASK_RUNNING" not in agent.states("t")
    assert st["reason"] == "REASON_TASK_KILLED_DURING_LAUNCH"
    assert agent.wait_exit(20) == 0
    assert engine_of(agent).list() == []
    clean(agent)


def test_a_pod_manifest_in_a_label_is_the_whole_pod(make_agent) -> None:
    """A plain LAUNCH carrying a pypod manifest (label ``pypod.manifest``): the task is the whole
    two-app pod; its output goes to the executor's sandbox, as the command executor's does."""
    manifest = {"pypodVersion": 1, "kind": "PodManifest", "networks": [{"name": "host"}], "apps": [
        {"name": "first", "image": "busybox", "exec": ["/bin/sh", "-c", "echo first-out"]},
        {"name": "second", "image": "busybox", "exec": ["/bin/sh", "-c", "sleep 0.3; echo second-out; exit 4"]}]}
    agent = make_agent()
    agent.launch_executor()
    agent.launch({"task_id": {"value": "whole"}, "labels": {"labels": [
        {"key": "pypod.manifest", "value": json.dumps(manifest)}]}})
    st = agent.wait_state("whole", "TASK_FAILED", 60)
    assert st["message"] == "Command exited with status 4"
    assert agent.states("whole") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FAILED"]
    out = (agent.sandbox / "stdout").read_text()
    assert "first-out\n" in out and "second-out\n" in out
    assert agent.wait_exit(20) == 0
    clean(agent)


# -- acknowledgements -------------------------------------------------------------------------------


def test_executor_waits_for_acknowledgements(make_agent) -> None:
    agent = make_agent(ack_policy="manual")
    agent.launch_executor()
    agent.launch(busybox("done", "exit 0"))
    agent.launch(busybox("long", POLITE))
    agent.wait_state("done", "TASK_FINISHED", 60)
    agent.wait_state("long", "TASK_RUNNING", 60)
    agent.shutdown()
    agent.wait_state("long", "TASK_KILLED", 15)
    time.sleep(1.5)
    assert agent.proc.poll() is None, "exited with unacknowledged updates"
    assert {s["uuid"] for s in agent.unacked.values()} == agent.seen
    agent.ack_all()
    assert agent.wait_exit(15) == 0
    uuids = [base64.b64decode(u["status"]["uuid"]) for u in agent.updates]
    assert len(set(uuids)) == len(uuids) == 7 and all(len(u) == 16 for u in uuids)
    clean(agent)


def test_agent_errors_are_retried_and_calls_authenticated(make_agent) -> None:
    """The agent answers 503 to the first SUBSCRIBEs (still recovering) and 500 to an UPDATE; the
    executor retries within the backoff bound, delivers every update once and in order, and
    authenticates every call (MESOS_EXECUTOR_AUTHENTICATION_TOKEN)."""
    agent = make_agent(token="s3cret", backoff_max=0.3)
    agent.faults = {"SUBSCRIBE": [503, 503], "UPDATE": [500]}
    agent.launch(busybox("t", "sleep 0.3; exit 0"))
    agent.launch_executor()
    agent.wait_state("t", "TASK_FINISHED", 60)
    assert agent.states("t") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert agent.wait_exit(20) == 0
    refused = [c["code"] for c in agent.calls if c.get("code")]
    assert refused == [503, 503, 500], refused
    assert not agent.violations


# -- invalid tasks and failures ---------------------------------------------------------------------


def test_invalid_tasks_are_task_error(make_agent) -> None:
    agent = make_agent()
    agent.launch_executor()
    no_image = busybox("no-image", "true")
    del no_image["container"]
    agent.launch(no_image)
    secret = busybox("secret", "true")
    secret["command"]["environment"] = {"variables": [{"name": "S", "type": "SECRET", "secret": {}}]}
    agent.launch_group([busybox("fine", POLITE), secret])
    for t in ("no-image", "fine", "secret"):
        st = agent.wait_state(t, "TASK_ERROR", 30)
        assert st["reason"] == "REASON_TASK_INVALID"
    assert "no image" in agent.last("no-image")["message"]
    assert agent.states("fine") == ["TASK_ERROR"], "a group is all or nothing"
    assert agent.wait_exit(20) == 0
    assert engine_of(agent).list() == [], "nothing was created"
    clean(agent)


def test_oom_kill_is_a_memory_limitation(make_agent) -> None:
    agent = make_agent()
    agent.launch_executor()
    agent.launch(busybox("hog", "dd if=/dev/zero bs=1M count=200 2>/dev/null | tail > /dev/null", mem=32))
    st = agent.wait_state("hog", "TASK_FAILED", 60)
    assert st["reason"] == "REASON_CONTAINER_LIMITATION_MEMORY", st
    assert st["limitation"]["resources"][0]["name"] == "mem"
    assert agent.wait_exit(20) == 0
    clean(agent)


def test_launch_failures(make_agent, registry, pypod_store) -> None:
    """An image the registry does not have, and a pod whose creation fails (an unknown network):
    TASK_FAILED with REASON_CONTAINER_LAUNCH_FAILED, nothing left behind."""
    pypod_store.configure(f'[[registry]]\nprefix = "{registry.host}"\ninsecure = true\n')
    agent = make_agent()
    agent.launch_executor()
    agent.launch(busybox("missing", "true", image=f"{registry.host}/test/no-such-image:latest"))
    agent.launch(busybox("nonet", "true", container={
        "type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": "busybox"}}},
        "network_infos": [{"name": "no-such-network"}]}))
    for t in ("missing", "nonet"):
        st = agent.wait_state(t, "TASK_FAILED", 60)
        assert st["reason"] == "REASON_CONTAINER_LAUNCH_FAILED", st
        assert agent.states(t) == ["TASK_STARTING", "TASK_FAILED"]
    assert "image" in agent.last("missing")["message"]
    assert "no-such-network" in agent.last("nonet")["message"]
    assert agent.wait_exit(20) == 0
    assert engine_of(agent).list() == []
    clean(agent)


# -- agent restarts -------------------------------------------------------------------------------------


def test_agent_restart_with_checkpointing(make_agent) -> None:
    """The agent dies (stream reset) with updates unacknowledged; a task finishes while it is away;
    it comes back on the same port: the executor re-subscribes within the backoff bound with
    exactly what is unacknowledged, and its pods kept running."""
    agent = make_agent(ack_policy="manual", backoff_max=0.5)
    agent.launch_executor()
    agent.launch(busybox("keeps", POLITE))
    agent.launch(busybox("ends", 'while [ ! -e $MESOS_SANDBOX/go ]; do sleep 0.05; done; echo bye'))
    keeps = agent.wait_state("keeps", "TASK_RUNNING", 60)
    agent.wait_state("ends", "TASK_RUNNING", 60)
    for st in list(agent.unacked.values()):
        if st["task_id"]["value"] == "keeps":
            agent.ack(st["uuid"])
    time.sleep(0.3)  # the acks reach the executor

    agent.restart(2.0, during=lambda: (agent.sandbox / "go").touch())
    back = time.monotonic()
    agent.wait_for(lambda: len(agent.subscriptions) == 2, 10, "a re-SUBSCRIBE")
    resub = next(c["at"] for c in agent.calls if c["type"] == "SUBSCRIBE" and c["at"] > back)
    assert resub - back < agent.backoff_max + 1.0, f"re-subscribed {resub - back:.2f}s after the agent came back"
    sub = agent.subscriptions[1]
    assert [t["task_id"]["value"] for t in sub["unacknowledged_tasks"]] == ["ends"]
    assert [(u["status"]["task_id"]["value"], u["status"]["state"]) for u in sub["unacknowledged_updates"]] == \
        [("ends", "TASK_STARTING"), ("ends", "TASK_RUNNING"), ("ends", "TASK_FINISHED")]
    assert agent.state("ends") == "TASK_FINISHED"
    assert engine_of(agent).status(pod_of(keeps)).state == "running", "the pod survived the agent's restart"
    assert engine_of(agent).status(pod_of(keeps)).apps[0].restarts == 0
    agent.ack_all()
    agent.ack_policy = "immediate"
    agent.kill("keeps")
    agent.wait_state("keeps", "TASK_KILLED", 15)
    assert agent.wait_exit(20) == 0
    clean(agent)


def test_agent_gone_without_checkpointing_stops_the_pods(make_agent) -> None:
    agent = make_agent(checkpoint=False)
    agent.launch_executor()
    agent.launch(busybox("t", POLITE))
    agent.wait_state("t", "TASK_RUNNING", 60)
    assert running_pods(agent)
    t0 = time.monotonic()
    agent._go_down(abrupt=True)
    assert agent.wait_exit(20) == 0
    assert time.monotonic() - t0 < 10
    assert running_pods(agent) == [] and engine_of(agent).list() == []
    clean(agent)


def test_agent_not_back_within_the_recovery_timeout(make_agent) -> None:
    agent = make_agent(recovery_timeout=2.0)
    agent.launch_executor()
    agent.launch(busybox("t", POLITE))
    agent.wait_state("t", "TASK_RUNNING", 60)
    t0 = time.monotonic()
    agent._go_down(abrupt=True)  # and never comes back
    time.sleep(1.0)
    assert agent.proc.poll() is None, "gave up before MESOS_RECOVERY_TIMEOUT"
    assert running_pods(agent), "pods keep running while the agent recovers"
    assert agent.wait_exit(20) == 0
    assert 2.0 <= time.monotonic() - t0 < 15
    assert running_pods(agent) == [] and engine_of(agent).list() == []
    clean(agent)


def test_agent_recovering_with_cleanup_shuts_the_executor_down(make_agent) -> None:
    agent = make_agent()
    agent.launch_executor()
    agent.launch(busybox("t", POLITE))
    agent.wait_state("t", "TASK_RUNNING", 60)
    agent.restart(0.5, mode="cleanup")
    agent.wait_state("t", "TASK_KILLED", 20)
    assert agent.wait_exit(20) == 0
    assert engine_of(agent).list() == []
    clean(agent)


def test_hung_executor_after_agent_restart_is_lost_and_its_pods_collected(make_agent) -> None:
    """The executor cannot re-subscribe (stopped) within the reregistration timeout: the agent
    kills it and reports TASK_LOST (REASON_EXECUTOR_REREGISTRATION_TIMEOUT); its pods, labelled
    with the framework and executor ids, are removed by the next executor of that id."""
    agent = make_agent(reregistration_timeout=1.5)
    agent.launch_executor()
    agent.launch(busybox("t", POLITE))
    uuid = pod_of(agent.wait_state("t", "TASK_RUNNING", 60))
    agent.restart(0.5, during=lambda: agent.kill_executor(signal.SIGSTOP))
    agent.wait_exit(20)
    assert [(u["state"], u["reason"]) for u in agent.agent_updates] == \
        [("TASK_LOST", "REASON_EXECUTOR_REREGISTRATION_TIMEOUT")]
    labels = {p.uuid: p.labels for p in engine_of(agent).list()}
    assert labels[uuid] == {"mesos.framework": agent.framework_id, "mesos.executor": agent.executor_id}
    second = make_agent(executor_id=agent.executor_id)
    second.launch_executor()
    second.wait_for(lambda: second.subscribed, 30, "the new executor")
    assert engine_of(second).list() == []
    second.shutdown()
    assert second.wait_exit(20) == 0


def test_orphans_of_a_crashed_executor_are_removed_by_the_next(make_agent) -> None:
    agent = make_agent()
    agent.launch_executor()
    agent.launch(busybox("t", POLITE))
    uuid = pod_of(agent.wait_state("t", "TASK_RUNNING", 60))
    agent.kill_executor()
    agent.wait_exit(10)
    assert agent.agent_updates[-1]["reason"] == "REASON_EXECUTOR_TERMINATED"
    assert uuid in running_pods(agent), "pods outlive their executor (daemonless)"
    second = make_agent(executor_id=agent.executor_id)
    second.launch_executor()
    second.wait_for(lambda: second.subscribed, 30, "the new executor")
    assert uuid not in [p.uuid for p in engine_of(second).list()]
    second.shutdown()
    assert second.wait_exit(20) == 0
