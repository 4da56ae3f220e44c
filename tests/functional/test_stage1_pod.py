"""The oci stage1 flavor's contract end to end (real runtimes; root).

Each test drives :class:`pypod.stage1.oci.OciStage1` through the Stage1 protocol over a pod
directory and ends with ``gc``; the ``s1`` fixture then fails the test on any leftover.
"""

from __future__ import annotations

import os
import time

import pytest

from conftest_stage1 import _subreaper, busybox_rootfs, runtime_name, s1  # noqa: F401
from pypod.errors import Conflict, NotFound
from pypod.stage1 import AppConfig, PodConfig, cgroups, conmon, get_flavor
from pypod.stage1.spec import AppSpec

pytestmark = pytest.mark.root


def pod_config(s1, **kw) -> PodConfig:
    return PodConfig(id=s1.pod_id, dir=s1.base, run_root=s1.run_root, cgroup_parent=s1.parent,
                     runtime=s1.runtime.name, **kw)


def app(s1, name: str, args: list[str], **kw) -> AppConfig:
    stdin = kw.pop("stdin", False)
    return AppConfig(name, AppSpec(args=args, rootfs=s1.rootfs, readonly_rootfs=True, **kw), stdin=stdin)


def wait_state(fl, pod, name, state, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = fl.status(pod).apps[name]
        if st.state == state:
            return st
        time.sleep(0.02)
    raise AssertionError(f"{name} never became {state}: {fl.status(pod).apps[name]}")


def test_mutable_pod_lifecycle(s1):
    fl = get_flavor("oci")
    hook_log = os.path.join(s1.base, "hook.log")
    pod = pod_config(s1, hostname="web-pod", share_pid=True,
                     exit_command=["/bin/sh", "-c", 'echo "$0 $1" >> "$HOOK_LOG"'],
                     exit_env={"HOOK_LOG": hook_log})
    fl.prepare(pod)
    assert fl.status(pod).state == "prepared"
    st = fl.start(pod)
    assert st.state == "running" and st.infra_pid
    assert set(st.namespaces) == {"network", "ipc", "uts", "pid"}
    with pytest.raises(Conflict):
        fl.start(pod)

    fl.add_app(pod, app(s1, "web", ["sh", "-c", "echo up; while :; do sleep 0.2; done"]))
    fl.add_app(pod, app(s1, "job", ["sh", "-c", "echo job; exit 4"]))
    assert {n: a.state for n, a in fl.status(pod).apps.items()} == {"web": "created", "job": "created"}
    with pytest.raises(Conflict):
        fl.add_app(pod, app(s1, "web", ["true"]))

    fl.start_app(pod, "web")
    fl.start_app(pod, "job")
    job = wait_state(fl, pod, "job", "exited")
    assert job.exit_code == 4 and not job.oom_killed
    assert job.created_at <= job.started_at <= job.finished_at
    assert [ll.content for ll in conmon.read_log(job.log_path)] == ["job"]
    web = fl.status(pod).apps["web"]
    assert web.state == "running" and web.pid

    res = fl.exec(pod, "web", ["sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; exit 2"])
    assert res.exit_code == 2
    assert res.stdout.decode().splitlines() == ["web-pod", "/catatonit -P "]
    assert os.path.exists(fl.attach(pod, "web"))

    deadline = time.monotonic() + 10
    while not (os.path.exists(hook_log) and open(hook_log).read()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open(hook_log).read().split() == [s1.pod_id, "job"]

    fl.remove_app(pod, "job")
    assert "job" not in fl.status(pod).apps
    assert cgroups.exists(cgroups.app_path(s1.pod_id, "job", s1.parent)) == []
    with pytest.raises(NotFound):
        fl.start_app(pod, "job")

    # a mutable pod takes new apps after others left
    fl.add_app(pod, app(s1, "late", ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]))
    fl.start_app(pod, "late")
    web = fl.stop_app(pod, "web", grace=5)
    assert web.state == "exited" and web.exit_code in (143, 137)

    st = fl.stop(pod, grace=5)
    assert st.state == "exited"
    assert {n: a.state for n, a in st.apps.items()} == {"web": "exited", "late": "exited"}
    assert st.apps["late"].exit_code == 0
    with pytest.raises(Conflict):
        fl.add_app(pod, app(s1, "more", ["true"]))

    fl.gc(pod)
    assert s1.leaks(parent_may_exist=True) == []
    fl.gc(pod)  # idempotent
    assert fl.status(pod).apps["web"].exit_code == st.apps["web"].exit_code  # readable after gc


def test_gc_of_a_running_pod_leaves_nothing(s1):
    """stage0 crashed and the pod was marked garbage while everything still ran."""
    fl = get_flavor("oci")
    pod = pod_config(s1, hostname="doomed")
    fl.prepare(pod)
    fl.start(pod)
    for name in ("a", "b"):
        fl.add_app(pod, app(s1, name, ["sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"]))
        fl.start_app(pod, name)
    fl.add_app(pod, app(s1, "never-started", ["true"]))
    fl.gc(pod)
    assert s1.leaks(parent_may_exist=True) == []


def test_oom_and_limits_through_the_flavor(s1):
    fl = get_flavor("oci")
    pod = pod_config(s1)
    fl.prepare(pod)
    fl.start(pod)
    res = cgroups.resources(memory=20 << 20, swap_accounting=cgroups.detect().swap_accounting)
    fl.add_app(pod, app(s1, "hog", ["sh", "-c", 'a=$(head -c 67108864 /dev/zero | tr "\\0" x)'],
                        resources=res))
    fl.start_app(pod, "hog")
    st = wait_state(fl, pod, "hog", "exited", timeout=30)
    assert st.exit_code == 137 and st.oom_killed
    fl.stop(pod, grace=1)
    fl.gc(pod)
    assert s1.leaks(parent_may_exist=True) == []
    assert s1.leaks(parent_may_exist=True) == []


def test_host_network_pod(s1):
    fl = get_flavor("oci")
    pod = pod_config(s1, network="host", ipc="host", uts="host")
    fl.prepare(pod)
    st = fl.start(pod)
    assert "network" not in st.namespaces
    fl.add_app(pod, app(s1, "probe", ["readlink", "/proc/self/ns/net"]))
    fl.start_app(pod, "probe")
    probe = wait_state(fl, pod, "probe", "exited")
    assert probe.exit_code == 0
    assert [ll.content for ll in conmon.read_log(probe.log_path)] == [os.readlink("/proc/self/ns/net")]
    fl.stop(pod, grace=1)
    fl.gc(pod)
    assert s1.leaks(parent_may_exist=True) == []


def test_pod_joins_a_network_namespace_made_elsewhere(s1):
    """stage0 may create and pin the netns first (e.g. to run CNI before the infra exists)."""
    import subprocess

    from pypod.stage1 import mounts

    netns = os.path.join(s1.run_root, "netns-made-by-stage0")
    os.makedirs(s1.run_root, exist_ok=True)
    open(netns, "w").close()
    subprocess.run(["unshare", f"--net={netns}", "true"], check=True)
    try:
        fl = get_flavor("oci")
        pod = pod_config(s1, network=netns)
        fl.prepare(pod)
        st = fl.start(pod)
        assert st.namespaces["network"] == netns
        fl.add_app(pod, app(s1, "probe", ["readlink", "/proc/self/ns/net"]))
        fl.start_app(pod, "probe")
        probe = wait_state(fl, pod, "probe", "exited")
        assert [ll.content for ll in conmon.read_log(probe.log_path)] == [f"net:[{os.stat(netns).st_ino}]"]
        fl.stop(pod, grace=1)
        fl.gc(pod)
        assert mounts.is_mountpoint(netns), "gc unmounted a namespace it does not own"
    finally:
        mounts.umount(netns)
        os.unlink(netns)
    assert s1.leaks(parent_may_exist=True) == []


def test_failed_start_is_undone_and_can_be_retried(s1):
    fl = get_flavor("oci")
    bad = pod_config(s1, sysctl={"net.pypod_no_such.knob": "1"})
    fl.prepare(bad)
    with pytest.raises(Exception) as ei:
        fl.start(bad)
    assert "no_such" in str(ei.value) or "sysctl" in str(ei.value).lower(), str(ei.value)
    assert s1.leaks(parent_may_exist=True) == []
    assert fl.status(bad).state == "prepared"
    good = pod_config(s1, sysctl={"net.ipv4.ip_unprivileged_port_start": "80"})
    st = fl.start(good)
    assert st.state == "running"
    fl.add_app(good, app(s1, "port", ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]))
    fl.start_app(good, "port")
    probe = wait_state(fl, good, "port", "exited")
    assert [ll.content for ll in conmon.read_log(probe.log_path)] == ["80"]
    fl.stop(good, grace=0)
    fl.gc(good)


def test_pod_lock_is_held_by_the_infra_monitor(s1):
    """stage0 hands its pod lock over: it stays held while the infra lives, without us."""
    import fcntl

    lock_path = os.path.join(s1.base, "pod.lock")

    def locked() -> bool:
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    fl = get_flavor("oci")
    pod = pod_config(s1, lock_fd=fd)
    fl.prepare(pod)
    fl.start(pod)
    os.close(fd)  # the hand-off: only the infra's conmon has it now
    assert locked(), "the pod lock was dropped with pypod's copy"
    fl.add_app(pod, app(s1, "a", ["sleep", "100"]))
    fl.start_app(pod, "a")
    assert locked()
    fl.stop(pod, grace=0)
    deadline = time.monotonic() + 5
    while locked() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not locked(), "the lock outlived the pod"
    fl.gc(pod)
