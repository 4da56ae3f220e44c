"""stage1 oci building blocks against the real runtimes, conmon and catatonit (root).

Every test runs once per OCI runtime usable on the host (crun through its private mount namespace
on hybrid cgroup hosts, runc as is) and is checked for leaks by the ``s1`` fixture.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from conftest_stage1 import _subreaper, busybox_rootfs, make_env, runtime_name, s1  # noqa: F401
from pypod.stage1 import cgroups, conmon, spec
from pypod.stage1.runtime import RuntimeFailure

pytestmark = pytest.mark.root

CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d) (stdout|stderr) [FP] .*$")


def test_log_lines_and_exit_code(s1):
    app = s1.run("hello", ["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    assert s1.wait(app) == 3
    lines = open(app.files.log_path).read().splitlines()
    assert lines, "conmon wrote no log"
    for line in lines:
        assert CRI_LINE.match(line), line
    parsed = [(ll.stream, ll.partial, ll.content) for ll in conmon.read_log(app.files.log_path)]
    assert ("stdout", False, "hello") in parsed
    assert ("stderr", False, "oops") in parsed
    assert not conmon.oom_killed(app.files)
    # the persist dir has the same code
    assert open(os.path.join(app.files.state_dir, "exit")).read().strip() == "3"
    assert s1.runtime.state(app.cid)["status"] == "stopped"


def test_states_created_running_stopped(s1):
    app = s1.create("states", ["sh", "-c", "read x"], conmon_opts={"stdin": True})
    assert s1.runtime.state(app.cid)["status"] == "created"
    assert app.created.pid > 0 and os.path.exists(f"/proc/{app.created.pid}")
    assert conmon.conmon_pid(app.files) == app.created.conmon_pid
    s1.runtime.start(app.cid)
    assert s1.runtime.state(app.cid)["status"] == "running"
    assert conmon.read_exit(app.files) is None
    # grace 0: straight to SIGKILL (an init without a TERM handler would ignore TERM anyway)
    assert conmon.stop(s1.runtime, app.files, grace=0, pid=app.created.pid) == 137
    assert s1.runtime.state(app.cid)["status"] == "stopped"


def test_oom_kill_is_reported(s1):
    limit = 20 << 20
    res = cgroups.resources(memory=limit, swap_accounting=cgroups.detect().swap_accounting)
    app = s1.run("hog", ["sh", "-c", 'a=$(head -c 67108864 /dev/zero | tr "\\0" x); echo ${#a}'],
                 resources=res)
    assert s1.wait(app) == 137
    assert conmon.oom_killed(app.files), "conmon wrote no oom file"
    assert cgroups.oom_kills(s1.cgroup("hog")) >= 1
    limit_file = cgroups.detect().stats_dir("memory", s1.cgroup("hog"))
    if cgroups.detect().mode != "v2":
        assert int(open(os.path.join(limit_file, "memory.limit_in_bytes")).read()) == limit


def test_apps_share_the_infra_namespaces(s1):
    inf = s1.start_infra(hostname="podhost", share_pid=True)
    probe = ["sh", "-c", "hostname; readlink /proc/self/ns/net; readlink /proc/self/ns/ipc; "
                         "readlink /proc/self/ns/uts; readlink /proc/self/ns/pid; cat /proc/1/cmdline"]
    a = s1.run("a", probe)
    b = s1.run("b", probe)
    assert s1.wait(a) == 0 and s1.wait(b) == 0
    out_a = [ll.content for ll in conmon.read_log(a.files.log_path)]
    out_b = [ll.content for ll in conmon.read_log(b.files.log_path)]
    assert out_a[:5] == out_b[:5]
    assert out_a[0] == "podhost"
    for line, typ in zip(out_a[1:5], ("net", "ipc", "uts", "pid")):
        pinned_ino = os.stat(os.path.join(inf.ns_dir, typ)).st_ino
        assert line == f"{typ}:[{pinned_ino}]"
        assert os.readlink(f"/proc/self/ns/{typ}") != line, f"{typ} namespace is the host's"
    assert out_a[5].startswith("/catatonit"), "pid 1 of the shared pid namespace is not the infra"
    assert inf.alive()


def test_private_pid_namespace_by_default(s1):
    s1.start_infra(hostname="p2")
    app = s1.run("solo", ["sh", "-c", "echo $$; hostname"])
    assert s1.wait(app) == 0
    out = [ll.content for ll in conmon.read_log(app.files.log_path)]
    assert out == ["1", "p2"]


def test_exec_through_conmon_and_runtime(s1):
    app = s1.run("svc", ["sleep", "1000"])
    config = json.load(open(os.path.join(app.files.bundle, "config.json")))
    proc = spec.exec_process(config, ["sh", "-c", "echo out $FOO; echo err >&2; exit 5"],
                             env={"FOO": "bar"})
    res = conmon.exec_sync(s1.runtime, app.cid, proc, work_parent=os.path.join(s1.base, "exec"))
    assert (res.exit_code, res.stdout, res.stderr) == (5, b"out bar\n", b"err\n")
    cp = s1.runtime.exec(app.cid, proc)
    assert (cp.returncode, cp.stdout, cp.stderr) == (5, b"out bar\n", b"err\n")
    slow = spec.exec_process(config, ["sleep", "30"])
    t0 = time.monotonic()
    res = conmon.exec_sync(s1.runtime, app.cid, slow, work_parent=os.path.join(s1.base, "exec"), timeout=1)
    assert res.timed_out and res.exit_code == 137
    assert time.monotonic() - t0 < 15
    missing = spec.exec_process(config, ["/no/such/binary"])
    with pytest.raises(RuntimeFailure):
        conmon.exec_sync(s1.runtime, app.cid, missing, work_parent=os.path.join(s1.base, "exec"))
    assert os.listdir(os.path.join(s1.base, "exec")) == []


def test_stop_escalates_when_sigterm_is_ignored(s1):
    app = s1.run("stubborn", ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"])
    s1.wait_log(app, "ready")
    t0 = time.monotonic()
    code = conmon.stop(s1.runtime, app.files, grace=1.0, pid=app.created.pid)
    took = time.monotonic() - t0
    assert code == 137
    assert took >= 1.0, "SIGKILL came before the grace period ended"
    assert s1.runtime.state(app.cid)["status"] == "stopped"


def test_stop_honours_sigterm(s1):
    app = s1.run("polite", ["sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done"])
    s1.wait_log(app, "ready")
    t0 = time.monotonic()
    assert conmon.stop(s1.runtime, app.files, grace=20, pid=app.created.pid) == 42
    assert time.monotonic() - t0 < 10


def test_exit_command_runs_after_exit(s1):
    marker = os.path.join(s1.base, "exited")
    # sh -c SCRIPT $0 $1 $2 $3: the hook sees its arguments and the exit file already written
    hook = ["/bin/sh", "-c", 'echo "$0 $1 $(cat "$2")" > "$3"', "app-exited", "hook",
            s1.files("hooked").exit_file, marker]
    app = s1.run("hooked", ["sh", "-c", "exit 7"], conmon_opts={"exit_command": hook})
    assert s1.wait(app) == 7
    deadline = time.monotonic() + 10
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open(marker).read().strip() == "app-exited hook 7"


def test_create_failure_reports_the_runtime_error(s1):
    with pytest.raises(RuntimeFailure) as ei:
        s1.create("broken", ["/no/such/binary"])
    msg = str(ei.value).lower()
    assert "no such file" in msg or "not found" in msg or "executable" in msg, msg
    assert not s1.runtime.exists(f"{s1.pod_id}.broken")


def test_attach_streams_output_and_stdin(s1):
    app = s1.run("echoer", ["sh", "-c", "echo ready; while read l; do echo got:$l; done"],
                 conmon_opts={"stdin": True, "leave_stdin_open": True})
    s1.wait_log(app, "ready")
    with conmon.Attach(app.files.attach_socket, timeout=10) as att:
        att.send(b"ping\n")
        stream, data = att.recv()
    assert (stream, data) == ("stdout", b"got:ping\n")
    s1.wait_log(app, "got:ping")


def test_limits_stats_and_update(s1):
    layout = cgroups.detect()
    res = cgroups.resources(memory=64 << 20, cpu_limit_millis=500, cpu_request_millis=250, pids=64,
                            swap_accounting=layout.swap_accounting)
    app = s1.run("limited", ["sh", "-c", "ulimit -Hn; ulimit -Sn; sleep 1000"], resources=res)
    path = s1.cgroup("limited")
    deadline = time.monotonic() + 10
    while len(conmon.read_log(app.files.log_path) if os.path.exists(app.files.log_path) else []) < 2:
        assert time.monotonic() < deadline, "app printed nothing"
        time.sleep(0.02)
    hard_n, soft_n = [int(ll.content) for ll in conmon.read_log(app.files.log_path)[:2]]
    caller_hard = spec.caller_hard_limits()["RLIMIT_NOFILE"]
    assert hard_n == min(1048576, caller_hard) and soft_n == hard_n
    st = cgroups.stats(path)
    assert st.memory_limit == 64 << 20
    assert st.pids == 1  # sh execs sleep
    assert st.memory_usage and st.memory_usage > 0
    assert st.cpu_usage_ns is not None
    if layout.mode != "v2":
        assert open(os.path.join(layout.stats_dir("cpu", path), "cpu.cfs_quota_us")).read().strip() == "50000"
        assert open(os.path.join(layout.stats_dir("cpu", path), "cpu.shares")).read().strip() == "256"
        assert open(os.path.join(layout.stats_dir("pids", path), "pids.max")).read().strip() == "64"
    s1.runtime.update(app.cid, {"pids": {"limit": 32}})
    assert open(os.path.join(layout.stats_dir("pids", path), "pids.max")).read().strip() == "32"


def test_conmon_runs_in_the_pod_cgroup(s1):
    app = s1.run("placed", ["sleep", "1000"])
    mon = cgroups.procs(cgroups.conmon_path(s1.pod_id, s1.parent))
    assert app.created.conmon_pid in mon
    assert app.created.pid in cgroups.procs(s1.cgroup("placed"))


def test_leak_check_finds_leftovers(runtime_name, busybox_rootfs, tmp_path):
    """The leak check itself: a container that is never removed must be reported."""
    env = make_env(runtime_name, busybox_rootfs, str(tmp_path / "pod"))
    os.makedirs(env.base)
    try:
        app = env.run("leaky", ["sleep", "1000"])
        env.start_infra()
        found = "\n".join(env.leaks())
        assert f"process {app.created.pid}" in found
        assert "cgroup /sys/fs/cgroup/" in found
        assert f"runtime state in {env.runtime.root}" in found
        assert "mount " in found and "/ns/net" in found
    finally:
        env.teardown()
        leftover = env.leaks()
        if leftover:
            env.force_cleanup()
        import shutil

        shutil.rmtree(env.run_root, ignore_errors=True)
    assert leftover == []


def test_runtime_direct_create_state_delete(s1):
    """Runtime.create without conmon: the container holds /dev/null, not a pipe of ours."""
    bundle = os.path.join(s1.base, "direct")
    os.makedirs(bundle)
    config = spec.generate(s1.app_spec("direct", ["sleep", "1000"]))
    spec.write_json(os.path.join(bundle, "config.json"), config)
    cid = f"{s1.pod_id}.direct"
    t0 = time.monotonic()
    s1.runtime.create(cid, bundle, pid_file=os.path.join(bundle, "pid"))
    assert time.monotonic() - t0 < 20
    state = s1.runtime.state(cid)
    assert state["status"] == "created" and state["pid"] == int(open(os.path.join(bundle, "pid")).read())
    assert [c["id"] for c in s1.runtime.list()] == [cid]
    s1.runtime.delete(cid, force=True)
    assert s1.runtime.state(cid) is None and not s1.runtime.exists(cid)
    time.sleep(0.05)
    conmon.reap_adopted(("crun", "runc", "runc:[2:INIT]", "sleep"))  # the init was orphaned to us
    broken = dict(config, root={"path": os.path.join(s1.base, "no-such-rootfs"), "readonly": True})
    spec.write_json(os.path.join(bundle, "config.json"), broken)
    with pytest.raises(RuntimeFailure) as ei:
        s1.runtime.create(cid, bundle)
    assert "failed: exit" not in str(ei.value), f"no runtime message captured: {ei.value}"
    s1.runtime.delete(cid, force=True)  # runc keeps no state after a failed create, crun may
