"""The Nomad client's per-task sequences (shared/reference/nomad.md §4.3, §5.6) replayed against the
real plugin with real pods, real alloc dirs and FIFOs read as logmon reads them."""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from nomad_harness import AllocDir, Plugin, task_config
from pypod.nomad.proto import driver_pb2 as D
from pypod.nomad.proto import structs_pb2

pytestmark = pytest.mark.usefixtures("leak_check")


@pytest.fixture
def alloc(tmp_path):
    a = AllocDir(tmp_path / "alloc")
    yield a
    a.close()


@pytest.fixture
def plugin(agent_config):
    """The long-lived instance (launch 3): SetConfig with nomad_config, Init, TaskEvents open."""
    pl = Plugin()
    pl.set_config(agent_config)
    pl.driver.Init(D.InitRequest(), timeout=10)
    yield pl
    pl.kill()


def _spec(pl):
    return pl.driver.TaskConfigSchema(D.TaskConfigSchemaRequest(), timeout=10).spec


def start(pl, alloc, name, config, **kw):
    spec = _spec(pl)
    pl.driver.Capabilities(D.CapabilitiesRequest(), timeout=10)
    cfg = task_config(alloc, name, spec, dict({"image": "busybox"}, **config), **kw)
    resp = pl.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=120)
    return cfg, resp


def wait(pl, task_id, timeout=60):
    return pl.driver.WaitTask(D.WaitTaskRequest(task_id=task_id), timeout=timeout).result


def destroy(pl, task_id):
    pl.driver.DestroyTask(D.DestroyTaskRequest(task_id=task_id, force=True), timeout=60)


def until(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    return fn()


def test_batch_task_lifecycle(plugin, alloc):
    events = plugin.driver.TaskEvents(D.TaskEventsRequest())
    cfg, resp = start(plugin, alloc, "hello", {
        "command": "/bin/sh", "args": ["-c", "echo hello from $NOMAD_TASK_NAME; echo oops >&2; "
                                       "echo shared > $NOMAD_ALLOC_DIR/data/out; ls /local /secrets >/dev/null; exit 3"]})
    h = resp.handle
    assert h.version >= 1 and h.state == D.RUNNING and h.driver_state
    assert h.config == cfg  # echoed whole: Nomad restores from it
    r = wait(plugin, cfg.id)
    assert (r.exit_code, r.signal, r.oom_killed) == (3, 0, False)
    r2 = wait(plugin, cfg.id, timeout=5)  # again after the exit: at once
    assert r2.exit_code == 3
    assert until(lambda: "hello from hello\n" in alloc.read_log("hello"))
    assert until(lambda: alloc.read_log("hello", "stderr") == "oops\n")
    assert (alloc.root / "alloc" / "data" / "out").read_text() == "shared\n"
    ins = plugin.driver.InspectTask(D.InspectTaskRequest(task_id=cfg.id), timeout=10)
    assert ins.task.state == D.EXITED and ins.task.result.exit_code == 3
    assert ins.task.started_at.seconds > 0 and ins.task.completed_at.seconds >= ins.task.started_at.seconds
    uuid = ins.driver.attributes["pod"]
    destroy(plugin, cfg.id)
    with pytest.raises(grpc.RpcError) as e:  # the second DestroyTask: an error Nomad ignores
        destroy(plugin, cfg.id)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        wait(plugin, cfg.id, timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not any(uuid in p for p in os.listdir(os.path.join(plugin_data(plugin), "pods", "run")))
    events.cancel()


def plugin_data(pl) -> str:
    return pl._data_dir


@pytest.fixture(autouse=True)
def _data_dir(request, agent_config):
    Plugin._data_dir = agent_config["data_dir"]


def test_service_task_stats_signal_exec_stop(plugin, alloc):
    script = ("trap 'echo got-usr1' USR1; trap 'echo bye; exit 0' TERM; echo up; "
              "while true; do sleep 0.1; done")
    cfg, resp = start(plugin, alloc, "web", {"command": "/bin/sh", "args": ["-c", script]})
    assert until(lambda: "up\n" in alloc.read_log("web"))
    # TaskStats: every message has a timestamp and aggregated usage
    stats = plugin.driver.TaskStats(D.TaskStatsRequest(task_id=cfg.id,
                                                       collection_interval=duration_pb2.Duration(nanos=200_000_000)))
    got = [next(stats) for _ in range(3)]
    stats.cancel()
    for m in got:
        assert m.stats.timestamp.seconds > 0 and m.stats.HasField("agg_resource_usage")
        assert m.stats.agg_resource_usage.memory.usage > 0
    assert any(D.CPUUsage.PERCENT in m.stats.agg_resource_usage.cpu.measured_fields for m in got)
    # SignalTask
    plugin.driver.SignalTask(D.SignalTaskRequest(task_id=cfg.id, signal="SIGUSR1"), timeout=30)
    assert until(lambda: "got-usr1" in alloc.read_log("web"))
    # ExecTask (script checks): result always set
    ex = plugin.driver.ExecTask(D.ExecTaskRequest(task_id=cfg.id, command=["/bin/sh", "-c", "echo in; echo err >&2; exit 4"],
                                                  timeout=duration_pb2.Duration(seconds=30)), timeout=60)
    assert (ex.stdout, ex.stderr, ex.result.exit_code) == (b"in\n", b"err\n", 4)
    # ExecTaskStreaming (nomad alloc exec): setup, stdin, close → output, closes, exited
    reqs = [D.ExecTaskStreamingRequest(setup=D.ExecTaskStreamingRequest.Setup(task_id=cfg.id, command=["/bin/cat"])),
            D.ExecTaskStreamingRequest(),  # heartbeat
            D.ExecTaskStreamingRequest(stdin=D.ExecTaskStreamingIOOperation(data=b"ping\n")),
            D.ExecTaskStreamingRequest(stdin=D.ExecTaskStreamingIOOperation(close=True))]
    out, closed, result = b"", set(), None
    for m in plugin.driver.ExecTaskStreaming(iter(reqs), timeout=60):
        if m.HasField("stdout"):
            out += m.stdout.data
            if m.stdout.close:
                closed.add("stdout")
        if m.HasField("stderr") and m.stderr.close:
            closed.add("stderr")
        if m.exited:
            result = m.result
    assert out == b"ping\n" and closed == {"stdout", "stderr"} and result.exit_code == 0
    # StopTask with the job's kill_signal: the task's trap runs, WaitTask returns its exit
    waiter = plugin.driver.WaitTask.future(D.WaitTaskRequest(task_id=cfg.id))
    plugin.driver.StopTask(D.StopTaskRequest(task_id=cfg.id, timeout=duration_pb2.Duration(seconds=5),
                                             signal="SIGTERM"), timeout=60)
    assert waiter.result(30).result.exit_code == 0
    assert until(lambda: "bye\n" in alloc.read_log("web"))
    destroy(plugin, cfg.id)


def test_stop_escalates_to_kill(plugin, alloc):
    cfg, _ = start(plugin, alloc, "stubborn", {"command": "/bin/sh", "args": ["-c", "trap '' TERM INT; echo up; "
                                                                            "while true; do sleep 0.1; done"]})
    assert until(lambda: "up\n" in alloc.read_log("stubborn"))
    t = time.monotonic()
    plugin.driver.StopTask(D.StopTaskRequest(task_id=cfg.id, timeout=duration_pb2.Duration(seconds=1), signal=""),
                           timeout=60)
    assert time.monotonic() - t >= 1.0
    r = wait(plugin, cfg.id, timeout=30)
    assert r.exit_code != 0
    destroy(plugin, cfg.id)


def test_config_errors_name_the_field(plugin, alloc):
    spec = _spec(plugin)
    for config, field in (({"args": "not-a-list"}, "args"), ({"imagee": "x"}, "imagee"),
                          ({"privileged": True}, "privileged"), ({"cap_add": ["sys_admin"]}, "cap_add"),
                          ({"volumes": ["/etc:/host-etc"]}, "volumes")):
        cfg = task_config(alloc, "bad", spec, dict({"image": "busybox"}, **config))
        with pytest.raises(grpc.RpcError) as e:
            plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert field in e.value.details()


def test_bad_image_fails_start_with_its_name(plugin, alloc):
    spec = _spec(plugin)
    cfg = task_config(alloc, "noimg", spec, {"image": "oci:/nonexistent/layout"})
    with pytest.raises(grpc.RpcError) as e:
        plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=60)
    assert "/nonexistent/layout" in e.value.details()
    assert e.value.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def test_many_pending_waits_do_not_starve_the_server(plugin, alloc):
    cfg, _ = start(plugin, alloc, "waited", {"command": "/bin/sh", "args": ["-c", "sleep 3"]})
    futures = [plugin.driver.WaitTask.future(D.WaitTaskRequest(task_id=cfg.id)) for _ in range(200)]
    t = time.monotonic()
    for _ in range(5):
        plugin.driver.InspectTask(D.InspectTaskRequest(task_id=cfg.id), timeout=5)
    assert time.monotonic() - t < 5
    assert {f.result(60).result.exit_code for f in futures} == {0}
    destroy(plugin, cfg.id)


def test_recover_after_plugin_crash(agent_config, alloc):
    """The plugin is SIGKILLed mid-task: the pending WaitTask gets UNAVAILABLE, a new plugin gets
    RecoverTask with the stored handle and an empty task_id, and WaitTask gives the real exit
    code. Output written before, during and after the crash is delivered once."""
    pl = Plugin()
    pl.set_config(agent_config)
    cfg, resp = start(pl, alloc, "crashy", {"command": "/bin/sh", "args": ["-c", "echo one; sleep 2; echo two; sleep 1; exit 7"]})
    handle = resp.handle
    assert until(lambda: "one\n" in alloc.read_log("crashy"))
    waiter = pl.driver.WaitTask.future(D.WaitTaskRequest(task_id=cfg.id))
    pl.kill()
    with pytest.raises(grpc.RpcError) as e:
        waiter.result(10)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    pl2 = Plugin()
    try:
        pl2.set_config(agent_config)
        pl2.driver.RecoverTask(D.RecoverTaskRequest(task_id="", handle=handle), timeout=30)
        pl2.driver.RecoverTask(D.RecoverTaskRequest(task_id="", handle=handle), timeout=30)  # known: OK
        assert wait(pl2, cfg.id).exit_code == 7
        assert until(lambda: alloc.read_log("crashy") == "one\ntwo\n"), alloc.read_log("crashy")
        destroy(pl2, cfg.id)
    finally:
        pl2.kill()


def test_recover_task_that_exited_while_plugin_was_down(agent_config, alloc):
    """Client restart: Shutdown (tasks keep running), the task ends meanwhile, a new plugin
    recovers it from the handle and reports the exit code from the engine's state."""
    pl = Plugin()
    pl.set_config(agent_config)
    cfg, resp = start(pl, alloc, "lonely", {"command": "/bin/sh", "args": ["-c", "echo before; sleep 1; echo after; exit 5"]})
    assert until(lambda: "before\n" in alloc.read_log("lonely"))
    assert pl.shutdown() < 2.0
    time.sleep(3)  # the task exits while no plugin runs
    pl2 = Plugin()
    try:
        pl2.set_config(agent_config)
        pl2.driver.RecoverTask(D.RecoverTaskRequest(handle=resp.handle), timeout=30)
        r = wait(pl2, cfg.id)
        assert r.exit_code == 5
        assert until(lambda: alloc.read_log("lonely") == "before\nafter\n"), alloc.read_log("lonely")
        destroy(pl2, cfg.id)
        with pytest.raises(grpc.RpcError) as e:  # gone now: RecoverTask is an error
            pl2.driver.RecoverTask(D.RecoverTaskRequest(handle=resp.handle), timeout=30)
        assert e.value.code() not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    finally:
        pl2.kill()


def test_group_network_two_tasks(plugin, alloc):
    """must_create_network: CreateNetwork makes the group's namespace, both tasks join it (they
    reach each other on localhost), DestroyNetwork removes it."""
    net = plugin.driver.CreateNetwork(D.CreateNetworkRequest(alloc_id=alloc.alloc_id, hostname="grp"), timeout=60)
    spec = net.isolation_spec
    assert net.created and spec.mode == D.NetworkIsolationSpec.GROUP and os.path.exists(spec.path)
    again = plugin.driver.CreateNetwork(D.CreateNetworkRequest(alloc_id=alloc.alloc_id), timeout=60)
    assert not again.created and again.isolation_spec.path == spec.path
    try:
        server, _ = start(plugin, alloc, "server", {"command": "/bin/sh", "args": [
            "-c", "echo hi-from-server > /tmp/index.html; exec httpd -f -p 127.0.0.1:8080 -h /tmp"]},
            network_isolation_spec=spec)
        client, _ = start(plugin, alloc, "client", {"command": "/bin/sh", "args": [
            "-c", "for i in $(seq 50); do wget -q -O - http://127.0.0.1:8080/index.html && exit 0; sleep 0.1; done; exit 1"]},
            network_isolation_spec=spec)
        assert wait(plugin, client.id).exit_code == 0
        assert "hi-from-server" in alloc.read_log("client")
        ino = os.stat(spec.path).st_ino
        ex = plugin.driver.ExecTask(D.ExecTaskRequest(task_id=server.id, command=["readlink", "/proc/self/ns/net"]),
                                    timeout=60)
        assert ex.stdout.decode().strip() == f"net:[{ino}]"
        plugin.driver.StopTask(D.StopTaskRequest(task_id=server.id, timeout=duration_pb2.Duration(seconds=2)),
                               timeout=60)
        for t in (server, client):
            destroy(plugin, t.id)
    finally:
        plugin.driver.DestroyNetwork(D.DestroyNetworkRequest(alloc_id=alloc.alloc_id, isolation_spec=spec), timeout=60)
    assert not os.path.exists(spec.path)


def test_start_error_recoverable_detail_type(plugin, alloc):
    """A StartTask error Nomad may retry carries RecoverableError with its exact type URL: an image
    pull that times out (image_pull_timeout) is one."""
    from grpc_status import rpc_status

    import socket
    srv = socket.socket()  # a registry that accepts and never answers
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        plugin.set_config(dict(_agent(plugin), image_pull_timeout="1s"))
        cfg = task_config(alloc, "slow", _spec(plugin), {"image": f"127.0.0.1:{port}/x/y:1"})
        with pytest.raises(grpc.RpcError) as e:
            plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=60)
        st = rpc_status.from_call(e.value)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert st is not None and len(st.details) == 1
        assert st.details[0].type_url == "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError"
        err = structs_pb2.RecoverableError()
        st.details[0].Unpack(err)
        assert err.recoverable
    finally:
        srv.close()


def _agent(pl) -> dict:
    return {"data_dir": Plugin._data_dir, "config_dir": Plugin._data_dir + "-etc"}


def test_pull_events_limits_and_tty_exec(plugin, alloc, tmp_path):
    """An image the store lacks is fetched with TaskEvents on the plugin's one events stream;
    resources become cgroup limits; `nomad alloc exec -t` gets a terminal that follows resizes."""
    from support import images

    from pypod.stage1 import cgroups

    events = plugin.driver.TaskEvents(D.TaskEventsRequest())
    got: list = []
    def read_events():
        try:
            for e in events:
                got.append(e)
        except grpc.RpcError:  # cancelled at the end of the test
            pass

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    time.sleep(0.2)
    img = images.build_busybox(tmp_path / "oci" / "bb2")
    cfg, resp = start(plugin, alloc, "pulled", {"image": f"oci:{img.oci_ref}", "command": "/bin/sh",
                                                "args": ["-c", "echo up; while true; do sleep 0.1; done"]})
    try:
        assert until(lambda: any("Downloading image" in e.message for e in got))
        ev = next(e for e in got if "Downloading image" in e.message)
        assert (ev.task_id, ev.alloc_id, ev.task_name) == (cfg.id, cfg.alloc_id, "pulled")
        assert ev.timestamp.seconds > 0
        uuid = plugin.driver.InspectTask(D.InspectTaskRequest(task_id=cfg.id)).driver.attributes["pod"]
        st = cgroups.stats(cgroups.app_path(uuid, "pulled"))
        assert st.memory_limit == 64 << 20
        hard, soft = _memory_limits(uuid, "pulled")  # no memory_max: no soft limit
        assert hard == 64 << 20
        assert soft == 0 if cgroups.detect().mode == "v2" else soft >= 1 << 62, soft
        reqs_done = threading.Event()

        def reqs():
            yield D.ExecTaskStreamingRequest(setup=D.ExecTaskStreamingRequest.Setup(
                task_id=cfg.id, command=["/bin/sh"], tty=True))
            yield D.ExecTaskStreamingRequest(tty_size=D.ExecTaskStreamingRequest.TerminalSize(height=33, width=101))
            time.sleep(0.5)
            yield D.ExecTaskStreamingRequest(stdin=D.ExecTaskStreamingIOOperation(data=b"stty size; tty; exit 9\n"))
            reqs_done.wait(30)

        out, result = b"", None
        for m in plugin.driver.ExecTaskStreaming(reqs(), timeout=60):
            if m.HasField("stdout"):
                out += m.stdout.data
            if m.exited:
                result = m.result
                reqs_done.set()
        assert b"33 101" in out, out
        assert b"/dev/pts/" in out, out
        assert result.exit_code == 9
    finally:
        events.cancel()
        plugin.driver.StopTask(D.StopTaskRequest(task_id=cfg.id, timeout=duration_pb2.Duration(seconds=1)), timeout=60)
        destroy(plugin, cfg.id)


def test_host_mode_group_ports_published_by_the_driver(plugin, alloc):
    """A group in host mode: the task gets the agent's default CNI network and the driver
    publishes its labelled ports (host_ip:value -> to); the network override tells Nomad."""
    import socket
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    hp = s.getsockname()[1]
    s.close()
    spec = _spec(plugin)
    cfg = task_config(alloc, "web", spec, {"image": "busybox", "command": "/bin/sh", "ports": ["http"],
                                           "args": ["-c", "echo hi-from-port > /tmp/i.html; exec httpd -f -p 80 -h /tmp"]})
    cfg.resources.ports.add(label="http", value=hp, to=80, host_ip="127.0.0.1")
    resp = plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=120)
    try:
        ov = resp.network_override
        assert dict(ov.port_map) == {"http": 80} and ov.addr and ov.auto_advertise

        def get():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{hp}/i.html", timeout=2).read()
            except OSError:
                return None

        assert until(get, 15) == b"hi-from-port\n"
    finally:
        plugin.driver.StopTask(D.StopTaskRequest(task_id=cfg.id, timeout=duration_pb2.Duration(seconds=1)), timeout=60)
        destroy(plugin, cfg.id)


def test_registry_auth_from_the_task(plugin, alloc, basic_auth_registry, tmp_path, agent_config):
    """`auth {}` in the task: the image is pulled with those credentials (and refused without)."""
    reg = basic_auth_registry
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "pypod.toml").write_text(f'[[registry]]\nprefix = "{reg.host}"\ninsecure = true\n')
    plugin.set_config(dict(agent_config, config_dir=str(etc)))
    spec = _spec(plugin)
    image = f"{reg.host}/test/busybox:latest"
    bad = task_config(alloc, "noauth", spec, {"image": image, "force_pull": True, "command": "/bin/true"})
    with pytest.raises(grpc.RpcError) as e:
        plugin.driver.StartTask(D.StartTaskRequest(task=bad), timeout=120)
    assert "unauthorized" in e.value.details().lower() or "401" in e.value.details(), e.value.details()
    c = reg.credentials
    cfg = task_config(alloc, "authed", spec, {"image": image, "force_pull": True, "command": "/bin/true",
                                              "auth": {"username": c.username, "password": c.password}})
    plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=120)
    assert wait(plugin, cfg.id).exit_code == 0
    destroy(plugin, cfg.id)


def _memory_limits(uuid: str, app: str) -> tuple[int, int]:
    """(hard limit, soft limit) of an app's memory cgroup, read from the files the kernel
    enforces: v1 memory.limit_in_bytes / memory.soft_limit_in_bytes, v2 memory.max / memory.low
    ("unlimited" and "max" read as 2**63 - 1)."""
    from pypod.stage1 import cgroups

    layout = cgroups.detect()
    d = layout.stats_dir("memory", cgroups.app_path(uuid, app))
    assert d is not None and os.path.isdir(d), d
    names = ("memory.max", "memory.low") if layout.mode == "v2" else \
        ("memory.limit_in_bytes", "memory.soft_limit_in_bytes")
    vals = []
    for n in names:
        v = open(os.path.join(d, n)).read().strip()
        vals.append((1 << 63) - 1 if v == "max" else int(v))
    return vals[0], vals[1]


def test_reserved_cores_and_memory_max(plugin, alloc):
    """resources { cores = 1, memory = 32, memory_max = 96 }: cpuset, the hard memory limit
    (memory_max) and the soft one (memory: the kernel reclaims the task down to it under
    pressure), as Docker's driver does with Memory and MemoryReservation."""
    from pypod.stage1 import cgroups

    spec = _spec(plugin)
    cfg = task_config(alloc, "cores", spec, {"image": "busybox", "command": "/bin/sh",
                                             "args": ["-c", "cat /sys/fs/cgroup/cpuset.cpus.effective 2>/dev/null; "
                                                            "while true; do sleep 0.1; done"]})
    cfg.resources.allocated_resources.memory.memory_mb = 32
    cfg.resources.allocated_resources.memory.memory_max_mb = 96
    cfg.resources.linux_resources.memory_limit_bytes = 96 << 20
    cfg.resources.linux_resources.cpuset_cpus = "0"
    plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=120)
    try:
        uuid = plugin.driver.InspectTask(D.InspectTaskRequest(task_id=cfg.id)).driver.attributes["pod"]
        path = cgroups.app_path(uuid, "cores")
        assert cgroups.stats(path).memory_limit == 96 << 20
        assert _memory_limits(uuid, "cores") == (96 << 20, 32 << 20)
        layout = cgroups.detect()
        d = layout.stats_dir("cpuset", path)
        assert d is not None
        assert open(os.path.join(d, "cpuset.cpus")).read().strip() == "0"
    finally:
        plugin.driver.StopTask(D.StopTaskRequest(task_id=cfg.id, timeout=duration_pb2.Duration(seconds=1)), timeout=60)
        destroy(plugin, cfg.id)


def test_capabilities_sysctls_readonly_rootfs(plugin, alloc, agent_config):
    """cap_add (allowed by the agent) and cap_drop on Docker's default set, sysctls, a read-only
    rootfs, labels on the pod."""
    plugin.set_config(dict(agent_config, allowed_caps=["chown", "kill", "net_admin", "setuid", "setgid"]))
    spec = _spec(plugin)
    cfg = task_config(alloc, "caps", spec, {
        "image": "busybox", "command": "/bin/sh", "cap_add": ["NET_ADMIN"], "cap_drop": ["chown"],
        "readonly_rootfs": True, "sysctls": {"net.ipv4.ip_unprivileged_port_start": "123"},
        "labels": {"team": "infra"}, "network_mode": "none",
        "args": ["-c", "grep CapEff /proc/self/status; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; "
                       "touch /rootfs-file 2>/dev/null && echo writable || echo read-only"]})
    plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=120)
    assert wait(plugin, cfg.id).exit_code == 0
    out = alloc.read_log("caps")
    cap_eff = int(out.split("CapEff:")[1].split()[0], 16)
    assert cap_eff & (1 << 12), out  # CAP_NET_ADMIN added
    assert not cap_eff & (1 << 0), out  # CAP_CHOWN dropped
    assert cap_eff & (1 << 5), out  # CAP_KILL kept (Docker's default set)
    assert "123\n" in out and "read-only\n" in out, out
    ins = plugin.driver.InspectTask(D.InspectTaskRequest(task_id=cfg.id))
    uuid = ins.driver.attributes["pod"]
    import json
    import subprocess
    import sys
    st = json.loads(subprocess.run([sys.executable, "-m", "pypod.cli", "--dir", agent_config["data_dir"],
                                    "--config-dir", agent_config["config_dir"], "status", "--format", "json", uuid],
                                   capture_output=True, text=True, check=True).stdout)
    assert st["labels"]["team"] == "infra" and st["labels"]["com.hashicorp.nomad.task_name"] == "caps"
    destroy(plugin, cfg.id)


def test_chatty_task_output_is_exact_across_a_plugin_restart(agent_config, alloc):
    """A task writing numbered lines while the plugin is shut down and a new one recovers it:
    Nomad's log gets every line once, in order."""
    pl = Plugin()
    pl.set_config(agent_config)
    cfg, resp = start(pl, alloc, "chatty", {"command": "/bin/sh", "args": [
        "-c", "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo line-$i; [ $((i % 300)) -eq 0 ] && sleep 0.2; done"]})
    assert until(lambda: "line-600\n" in alloc.read_log("chatty"), 20)
    assert pl.shutdown() < 2.0
    time.sleep(0.5)
    pl2 = Plugin()
    try:
        pl2.set_config(agent_config)
        pl2.driver.RecoverTask(D.RecoverTaskRequest(handle=resp.handle), timeout=30)
        assert wait(pl2, cfg.id).exit_code == 0
        want = "".join(f"line-{i}\n" for i in range(1, 3001))
        assert until(lambda: alloc.read_log("chatty") == want, 20), alloc.read_log("chatty")[-200:]
        destroy(pl2, cfg.id)
    finally:
        pl2.kill()


def test_host_volumes_allowed_and_refused(plugin, alloc, agent_config, tmp_path):
    """`volumes = ["/host:/task", "/host2:/task2:ro"]` with allow_host_volumes = true: a file
    written through the volume is on the host, the :ro one refuses writes. With the agent's
    default (false) StartTask is refused with InvalidArgument naming the field and the setting."""
    rw, ro = tmp_path / "hostvol", tmp_path / "hostro"
    rw.mkdir()
    ro.mkdir()
    (ro / "seed").write_text("seeded-on-host\n")
    config = {"image": "busybox", "command": "/bin/sh", "network_mode": "none",
              "volumes": [f"{rw}:/data", f"{ro}:/ro:ro"],
              "args": ["-c", "echo written-in-task > /data/out; cat /ro/seed; "
                             "if echo x > /ro/nope; then echo ro-writable; else echo ro-refused; fi"]}
    spec = _spec(plugin)
    refused = task_config(alloc, "vols", spec, config)
    with pytest.raises(grpc.RpcError) as e:  # the agent's default: allow_host_volumes = false
        plugin.driver.StartTask(D.StartTaskRequest(task=refused), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "volumes[0]" in e.value.details() and "allow_host_volumes" in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # nothing was started
        plugin.driver.InspectTask(D.InspectTaskRequest(task_id=refused.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (rw / "out").exists()

    plugin.set_config(dict(agent_config, allow_host_volumes=True))
    cfg = task_config(alloc, "vols", _spec(plugin), config)
    plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=120)
    assert wait(plugin, cfg.id).exit_code == 0
    assert (rw / "out").read_text() == "written-in-task\n"
    assert until(lambda: "ro-refused\n" in alloc.read_log("vols")), alloc.read_log("vols")
    assert "seeded-on-host\n" in alloc.read_log("vols")
    assert "Read-only file system" in alloc.read_log("vols", "stderr"), alloc.read_log("vols", "stderr")
    assert sorted(os.listdir(ro)) == ["seed"]
    destroy(plugin, cfg.id)


def test_destroy_running_task_needs_force(plugin, alloc):
    """DestroyTask(force=false) on a running task fails with Nomad's "cannot destroy running task"
    and leaves it running; force=true kills and removes it. On an exited task force=false is
    enough."""
    cfg, _ = start(plugin, alloc, "keep", {"command": "/bin/sh", "args": ["-c", "echo up; while true; do sleep 0.1; done"]})
    assert until(lambda: "up\n" in alloc.read_log("keep"))
    waiter = plugin.driver.WaitTask.future(D.WaitTaskRequest(task_id=cfg.id))
    with pytest.raises(grpc.RpcError) as e:
        plugin.driver.DestroyTask(D.DestroyTaskRequest(task_id=cfg.id, force=False), timeout=60)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "cannot destroy running task"
    ins = plugin.driver.InspectTask(D.InspectTaskRequest(task_id=cfg.id), timeout=10)
    assert ins.task.state == D.RUNNING
    uuid = ins.driver.attributes["pod"]
    ex = plugin.driver.ExecTask(D.ExecTaskRequest(task_id=cfg.id, command=["echo", "still-here"]), timeout=60)
    assert ex.stdout == b"still-here\n"
    time.sleep(0.3)
    assert not waiter.done()
    plugin.driver.DestroyTask(D.DestroyTaskRequest(task_id=cfg.id, force=True), timeout=60)
    assert waiter.result(30).result.exit_code != 0  # killed
    with pytest.raises(grpc.RpcError) as e:
        plugin.driver.InspectTask(D.InspectTaskRequest(task_id=cfg.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not any(uuid in p for p in os.listdir(os.path.join(plugin_data(plugin), "pods", "run")))
    done, _ = start(plugin, alloc, "brief", {"command": "/bin/true"})
    assert wait(plugin, done.id).exit_code == 0
    plugin.driver.DestroyTask(D.DestroyTaskRequest(task_id=done.id, force=False), timeout=60)
    with pytest.raises(grpc.RpcError) as e:
        plugin.driver.InspectTask(D.InspectTaskRequest(task_id=done.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


class _TrickleRegistry:
    """A registry serving one image from an OCI layout, its layer 8 KiB every 50 ms: a pull
    that is busy writing a blob into the store when image_pull_timeout passes. Records how much
    of the layer it sent and when the puller hung up."""

    def __init__(self, img):
        import json as json_mod
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        blobs = img.layout / "blobs" / "sha256"
        self.layer = img.layers[0].digest
        self.layer_size = (blobs / self.layer.split(":")[1]).stat().st_size
        self.sent = 0
        self.gone_at: float | None = None
        manifest = (blobs / img.manifest_digest.split(":")[1]).read_bytes()
        assert json_mod.loads(manifest)["layers"][0]["digest"] == self.layer
        reg = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, body: bytes, ctype: str = "application/octet-stream", slow: bool = False):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not slow:
                    self.wfile.write(body)
                    return
                try:
                    for i in range(0, len(body), 8192):
                        self.wfile.write(body[i:i + 8192])
                        self.wfile.flush()
                        reg.sent = i + len(body[i:i + 8192])
                        time.sleep(0.05)
                except OSError:
                    reg.gone_at = time.monotonic()

            def do_GET(self):
                if self.path == "/v2/":
                    return self._send(b"{}", "application/json")
                if self.path == "/v2/x/slow/manifests/1":
                    return self._send(manifest, img.manifest_media_type)
                if self.path.startswith("/v2/x/slow/blobs/sha256:"):
                    digest = self.path.rsplit("/", 1)[1]
                    f = blobs / digest.split(":")[1]
                    if f.exists():
                        return self._send(f.read_bytes(), slow=digest == reg.layer)
                self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_pull_timeout_kills_the_pull(plugin, alloc, agent_config, nomad_pypod, tmp_path):
    """image_pull_timeout passes while a layer is being written into the store: StartTask fails
    (recoverable) and the pull is killed, not left running: the registry sees the download
    dropped, the partial file stops growing, no pull process is left, the image is not
    recorded, and `pypod image gc` (which a running pull would keep waiting) removes the
    partial download."""
    from support import images as ti

    layout = ti.Layout(tmp_path / "oci" / "slow")
    tar = ti.LayerTar()
    tar.file("data.bin", os.urandom(512 << 10))  # a layer no store has: it must be downloaded
    layer = ti._add_layer(layout, tar.bytes(), "gzip")
    img = ti._write_manifest(layout, "slow", "1", [layer], ti._config([layer], {"Cmd": ["/bin/true"]}))
    reg = _TrickleRegistry(img)
    try:
        assert reg.layer_size > 500 << 10  # ≥ 3 s to serve: still running at the timeout
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "pypod.toml").write_text(f'[[registry]]\nprefix = "{reg.host}"\ninsecure = true\n')
        plugin.set_config(dict(agent_config, config_dir=str(etc), image_pull_timeout="1s"))
        image = f"{reg.host}/x/slow:1"
        cfg = task_config(alloc, "slowpull", _spec(plugin), {"image": image, "command": "/bin/true"})
        t = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            plugin.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=60)
        failed_at = time.monotonic()
        assert failed_at - t < 5
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "image_pull_timeout" in e.value.details()
        assert 0 < reg.sent < reg.layer_size  # it was mid-layer
        assert until(lambda: reg.gone_at is not None, 5), "the pull still reads the layer"
        assert reg.gone_at - failed_at < 1.0
        assert not [c for c in _children(plugin.pid)
                    if "pypod.nomad.pull" in open(f"/proc/{c}/cmdline").read()]
        ingest = nomad_pypod.data_dir / "images" / "ingest"
        parts = {p: p.stat().st_size for p in ingest.glob("*.part")}
        assert parts, "the partial layer download"
        time.sleep(0.5)
        assert {p: p.stat().st_size for p in ingest.glob("*.part")} == parts  # nothing writes any more
        images_list = nomad_pypod("image", "list", "--format", "json").json()
        assert not any(image in (i.get("names") or []) for i in images_list), images_list
        t = time.monotonic()
        nomad_pypod("image", "gc")
        assert time.monotonic() - t < 10
        assert not list(ingest.glob("*.part"))
    finally:
        reg.close()
