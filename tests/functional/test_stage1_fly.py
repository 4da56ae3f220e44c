"""The ``fly`` stage1 flavor against real processes (root): the app chrooted into a busybox rootfs
in a private mount namespace, host namespaces otherwise, conmon as its only resident monitor.

Every test gets a :class:`FlyEnv` (own pod dir, cgroup parent, pod id) whose teardown runs the
flavor's ``gc`` and then fails the test on anything left behind: processes (in the test's cgroups,
carrying the test's environment marker, or naming its paths), mounts under the test's directory or
with a fly leak's signature anywhere (copies of the host's /dev, /proc, /sys, a tmpfs ``/tmp``),
cgroup directories, files outside the pod dir. The host's mount table is shared with other
engineers' tests running in parallel, so the mount check looks at what fly could have made, not
at every line.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field

import pytest

from pypod.errors import Conflict, NotFound
from pypod.stage1 import AppConfig, PodConfig, Stage1Error, cgroups, conmon, get_flavor
from pypod.stage1.spec import AppSpec, Mount

pytestmark = pytest.mark.root

BUSYBOX = "/bin/busybox"
MARK = "PYPOD_FLY_TEST"
CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d) (stdout|stderr) [FP] .*$")
# zombies re-parented to pytest (the subreaper) that these tests may leave: reaped by name only,
# so no status a subprocess.Popen elsewhere waits for is ever stolen
_OUR_ZOMBIES = ("conmon", "sh", "sleep", "busybox", "cat")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces, chroot, cgroups)"
    if shutil.which("conmon") is None and not os.access("/usr/bin/conmon", os.X_OK):
        return "conmon is not installed (make system-deps)"
    if not os.access(BUSYBOX, os.X_OK):
        return "busybox-static is needed for the test rootfs"
    if shutil.which("chroot") is None:
        return "chroot(8) is needed to install busybox's applets"
    return None


def _reap() -> None:
    for pid in conmon._children(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        if stat.rsplit(")", 1)[1].split()[0] == "Z" and comm in _OUR_ZOMBIES:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


@pytest.fixture(scope="session")
def _reaper():
    """Orphaned conmons (and what they leave) come to this process: this host's PID 1 never reaps."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    conmon.become_subreaper()
    yield
    _reap()


@pytest.fixture(scope="session")
def fly_rootfs(tmp_path_factory, _reaper) -> str:
    """/bin/busybox plus ``busybox --install -s`` run inside the rootfs (absolute applet links)."""
    root = tmp_path_factory.mktemp("fly-rootfs") / "rootfs"
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root", "srv"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s"], check=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    os.chmod(root / "srv", 0o777)
    return str(root)


# -- the per-test world -------------------------------------------------------------------------

def _mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f]


def _mp(fields: list[str]) -> str:
    return fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def _fstype(fields: list[str]) -> str:
    return fields[fields.index("-") + 1]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _read(path: str, mode: str = "rb") -> bytes:
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return b""


def _state(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return stat.rsplit(")", 1)[1].split()[0] if ")" in stat else "?"


def _alive(pid: int) -> bool:
    return _state(pid) not in ("?", "Z", "X")


def _lock_held(path: str) -> bool:
    """Is the pod directory's flock held by someone? (a shared, non-blocking probe, as
    pypod.pods.state.is_locked does)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def stdout_lines(log_path: str) -> list[str]:
    return conmon.log_streams(log_path)[0].decode().splitlines()


def _pss_kb(pid: int) -> int:
    for line in _read(f"/proc/{pid}/smaps_rollup").decode().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return -1


@dataclass
class FlyEnv:
    rootfs: str
    base: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    pod_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        self.fl = get_flavor("fly")
        self.parent = f"/pypod-flytest-{self.tag}"
        self.pod_dir = os.path.join(self.base, "pod")
        os.makedirs(self.pod_dir)
        self.run_root = f"/run/pypod-flytest-{self.tag}"  # fly must never create it
        self.pod = PodConfig(id=self.pod_id, dir=self.pod_dir, run_root=self.run_root,
                             cgroup_parent=self.parent)
        self._host_devs = {os.stat(p).st_dev for p in ("/dev", "/proc", "/sys")}
        self._pytest_root = os.path.dirname(os.path.dirname(self.base)) + "/"  # /tmp/pytest-of-<user>/
        self.mounts_before = self.own_mounts()

    # -- driving the flavor --------------------------------------------------------------------
    def app(self, name: str, args: list[str], *, stdin: bool = False, env: dict | None = None,
            **spec_kw) -> AppConfig:
        env = {MARK: self.tag, **(env or {})}
        return AppConfig(name, AppSpec(args=args, rootfs=self.rootfs, env=env, **spec_kw), stdin=stdin)

    def run(self, args: list[str], name: str = "app", *, pod: PodConfig | None = None, **kw):
        pod = pod or self.pod
        self.fl.prepare(pod)
        self.fl.start(pod)
        self.fl.add_app(pod, self.app(name, args, **kw))
        return self.fl.start_app(pod, name)

    def wait_state(self, name: str, state: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.fl.status(self.pod).apps[name]
            if st.state == state:
                return st
            time.sleep(0.02)
        raise AssertionError(f"{name} never became {state}: {self.fl.status(self.pod).apps[name]}")

    def wait_log(self, name: str, text: str, timeout: float = 10.0) -> list[str]:
        """The app's stdout lines (partial records joined) once ``text`` is in its log."""
        path = self.fl.status(self.pod).apps[name].log_path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path) and text in _read(path).decode(errors="replace"):
                return stdout_lines(path)
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared in {name}'s log: {_read(path)!r}")

    def wait_exec(self, name: str = "app", timeout: float = 10.0) -> int:
        """The app's pid once it runs its own program (no longer the launcher)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.fl.status(self.pod).apps[name].pid
            if pid and f"{MARK}={self.tag}".encode() in _read(f"/proc/{pid}/environ").split(b"\0"):
                return pid
            time.sleep(0.01)
        raise AssertionError(f"{name} never exec'd its command")

    def app_cgroup(self, name: str = "app") -> str:
        return cgroups.app_path(self.pod_id, name, self.parent)

    # -- leak detection ------------------------------------------------------------------------
    def own_mounts(self) -> set[tuple[str, str]]:
        """(mount id, mount point) of every mount at or below this test's directory."""
        prefix = self.base.rstrip("/") + "/"
        return {(f[0], _mp(f)) for f in _mountinfo() if (_mp(f) + "/").startswith(prefix)}

    def fly_signature_mounts(self) -> list[str]:
        """Mounts anywhere that look like fly's own: a copy of the host's /dev, /proc or /sys
        somewhere else, or a tmpfs on some .../tmp below pytest's temporary directories."""
        out = []
        for f in _mountinfo():
            mp = _mp(f)
            if mp in ("/dev", "/proc", "/sys") or mp.startswith(("/dev/", "/proc/", "/sys/")):
                continue
            try:
                dev = os.stat(mp).st_dev
            except OSError:
                continue
            if dev in self._host_devs and _fstype(f) in ("proc", "sysfs", "devtmpfs"):
                out.append(" ".join(f))
            elif _fstype(f) == "tmpfs" and mp.endswith("/tmp") and mp.startswith(self._pytest_root):
                out.append(" ".join(f))
        return out

    def marked_processes(self) -> list[int]:
        """Live processes carrying this test's environment marker (however far they strayed)."""
        needle = f"{MARK}={self.tag}".encode()
        return [p for p in _pids()
                if _alive(p) and needle in _read(f"/proc/{p}/environ").split(b"\0")]

    def leaks(self) -> list[str]:
        found = []
        _reap()
        for pid in cgroups.procs(self.parent):
            found.append(f"process {pid} in cgroup {self.parent}: {_read(f'/proc/{pid}/cmdline')!r}")
        for pid in self.marked_processes():
            found.append(f"process {pid} with the test's marker: {_read(f'/proc/{pid}/cmdline')!r}")
        for pid in _pids():
            cmd = _read(f"/proc/{pid}/cmdline")
            if pid != os.getpid() and _alive(pid) and self.pod_dir.encode() in cmd:
                found.append(f"process {pid} naming the pod dir: {cmd!r}")
        for d in cgroups.exists(self.parent):
            found.extend(f"cgroup {os.path.join(d, s)}" for s in os.listdir(d)
                         if os.path.isdir(os.path.join(d, s)))
        now = self.own_mounts()
        found.extend(f"new mount {mp} (id {mid})" for mid, mp in sorted(now - self.mounts_before))
        found.extend(f"fly-like mount {line}" for line in self.fly_signature_mounts())
        if os.path.exists(self.run_root):
            found.append(f"{self.run_root} was created")
        return sorted(set(found))

    def force_cleanup(self) -> None:
        for pid in self.marked_processes():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for mid, mp in sorted(self.own_mounts() - self.mounts_before, key=lambda m: -len(m[1])):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        try:
            cgroups.remove(self.parent, kill=True)
        except Exception:
            pass
        shutil.rmtree(self.run_root, ignore_errors=True)
        time.sleep(0.1)
        _reap()


@pytest.fixture
def fly(fly_rootfs, tmp_path):
    """A per-test fly world; gc at the end, then fail the test on any leftover."""
    env = FlyEnv(rootfs=fly_rootfs, base=str(tmp_path))
    try:
        yield env
    finally:
        errors = []
        try:
            env.fl.gc(env.pod)
        except Exception as e:
            errors.append(f"gc failed: {e!r}")
        leaked = env.leaks()
        if leaked:
            env.force_cleanup()
        try:
            cgroups.remove(env.parent)
        except Exception as e:
            errors.append(f"cgroup parent: {e}")
        if errors or leaked:
            pytest.fail("fly leak check: " + "; ".join(errors + leaked), pytrace=False)


# -- tests -----------------------------------------------------------------------------------------

def test_logs_exit_code_and_status(fly):
    fl, pod = fly.fl, fly.pod
    fl.prepare(pod)
    assert fl.status(pod).state == "prepared"
    st = fl.start(pod)
    assert (st.state, st.namespaces, st.apps) == ("running", {}, {})
    created = fl.add_app(pod, fly.app("app", ["sh", "-c", "echo hello; echo oops >&2; printf tail; exit 3"]))
    assert created.state == "created" and created.pid and _alive(created.pid)
    assert fl.status(pod).state == "running"
    fl.start_app(pod, "app")
    done = fly.wait_state("app", "exited")
    assert done.exit_code == 3 and not done.oom_killed
    assert done.created_at <= done.started_at <= done.finished_at
    lines = _read(done.log_path).decode().splitlines()
    assert lines and all(CRI_LINE.match(line) for line in lines), lines
    parsed = [(ll.stream, ll.partial, ll.content) for ll in conmon.read_log(done.log_path)]
    assert ("stdout", False, "hello") in parsed
    assert ("stderr", False, "oops") in parsed
    assert ("stdout", True, "tail") in parsed  # an unterminated last line is a P line
    assert conmon.log_streams(done.log_path) == (b"hello\ntail", b"oops\n")
    assert done.log_path == os.path.join(fly.pod_dir, "stage1", "apps", "app", "ctr.log")
    st = fl.status(pod)
    assert st.state == "exited" and st.infra_pid is None
    with pytest.raises(Conflict):
        fl.start(pod)
    with pytest.raises(Conflict):
        fl.start_app(pod, "app")
    fl.gc(pod)
    fl.gc(pod)  # idempotent
    assert fl.status(pod).apps["app"].exit_code == 3  # readable until stage0 removes the dir


def test_host_namespaces_private_mount_namespace(fly):
    script = ("for ns in net pid ipc uts mnt; do readlink /proc/self/ns/$ns; done; "
              "ls /sys/class/net | tr '\\n' ' '; echo; "
              "grep ' /tmp ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1; "
              "echo $$; echo inside > /tmp/f; echo ready; exec sleep 60")
    fly.run(["sh", "-c", script])
    out = fly.wait_log("app", "ready")
    for line, ns in zip(out[:4], ("net", "pid", "ipc", "uts")):
        assert line == f"{ns}:[{os.stat(f'/proc/self/ns/{ns}').st_ino}]", (ns, out)
    assert out[4] != f"mnt:[{os.stat('/proc/self/ns/mnt').st_ino}]", "no private mount namespace"
    assert out[5].split() == sorted(os.listdir("/sys/class/net")), "not the host's interfaces"
    assert out[6] == "tmpfs", "/tmp is not a tmpfs"
    st = fly.fl.status(fly.pod)
    app = st.apps["app"]
    assert app.state == "running" and int(out[7]) == app.pid == st.infra_pid
    assert _read(f"/proc/{app.pid}/cmdline").split(b"\0")[:2] == [b"sleep", b"60"]  # exec'd directly
    # the app's /tmp is its own tmpfs, and nothing of its mounts is in the host's table
    assert not os.path.exists(os.path.join(fly.rootfs, "tmp", "f"))
    assert fly.own_mounts() == fly.mounts_before
    assert fly.fly_signature_mounts() == []
    fly.fl.stop(fly.pod, grace=0)
    fly.fl.gc(fly.pod)
    assert fly.own_mounts() == fly.mounts_before


def test_user_groups_env_and_cwd(fly):
    fly.run(["sh", "-c", "id -u; id -g; id -G; pwd; echo $GREETING; umask; touch f; ls -ln f"],
            uid=1234, gid=4321, additional_gids=[5, 6], cwd="/srv", env={"GREETING": "hi"}, umask=0o027)
    st = fly.wait_state("app", "exited")
    out = stdout_lines(st.log_path)
    assert st.exit_code == 0, out
    assert out[:6] == ["1234", "4321", "4321 5 6", "/srv", "hi", "0027"]
    assert out[6].split()[2:4] == ["1234", "4321"]
    assert os.stat(os.path.join(fly.rootfs, "srv", "f")).st_uid == 1234
    os.unlink(os.path.join(fly.rootfs, "srv", "f"))


DETACHED = textwrap.dedent("""
    import fcntl, json, os, sys
    from pypod.stage1 import AppConfig, PodConfig, get_flavor
    from pypod.stage1.spec import AppSpec
    a = json.loads(sys.argv[1])
    lock = os.open(a["dir"], os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    pod = PodConfig(id=a["id"], dir=a["dir"], cgroup_parent=a["parent"], run_root=a["run_root"],
                    lock_fd=lock)
    fl = get_flavor("fly")
    fl.prepare(pod)
    fl.start(pod)
    fl.add_app(pod, AppConfig("app", AppSpec(args=a["args"], rootfs=a["rootfs"], env=a["env"])))
    os.close(lock)  # the hand-off: the app's monitor holds the lock from now on
    st = fl.start_app(pod, "app")
    print(st.pid)
""")


def _start_detached(fly, args: list[str]) -> int:
    arg = {"id": fly.pod_id, "dir": fly.pod_dir, "parent": fly.parent, "run_root": fly.run_root,
           "args": args, "rootfs": fly.rootfs, "env": {MARK: fly.tag}}
    import json

    cp = subprocess.run([sys.executable, "-c", DETACHED, json.dumps(arg)], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return int(cp.stdout.strip())


def test_detached_app_holds_the_pod_lock_and_stops_within_grace(fly):
    # the starting process has exited when _start_detached returns
    pid = _start_detached(fly, ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"])
    fly.wait_log("app", "up")
    st = fly.fl.status(fly.pod)
    assert st.state == "running" and st.apps["app"].state == "running" and st.apps["app"].pid == pid
    assert _alive(pid)
    assert _lock_held(fly.pod_dir), "nobody holds the pod lock while the app runs"
    # the lock is conmon's, not the app's: the app has no fd on the pod dir
    for fd in os.listdir(f"/proc/{pid}/fd"):
        assert not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(fly.pod_dir), "the app got the lock fd"
    grace = 1.0
    t0 = time.monotonic()
    st = fly.fl.stop(fly.pod, grace=grace)
    took = time.monotonic() - t0
    assert grace <= took < grace + 1.0, took
    assert st.state == "exited"
    assert st.apps["app"].exit_code in (137, 128 + 9)
    assert not _alive(pid)
    assert cgroups.procs(fly.app_cgroup()) == []
    deadline = time.monotonic() + 5
    while _lock_held(fly.pod_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _lock_held(fly.pod_dir), "the pod lock outlived the app"


def test_pod_lock_released_when_the_app_exits_by_itself(fly):
    lock = os.open(fly.pod_dir, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    pod = PodConfig(id=fly.pod_id, dir=fly.pod_dir, cgroup_parent=fly.parent, run_root=fly.run_root,
                    lock_fd=lock)
    fly.fl.prepare(pod)
    fly.fl.start(pod)
    fly.fl.add_app(pod, fly.app("app", ["sh", "-c", "read x < /dev/null; sleep 0.5; exit 7"]))
    os.close(lock)
    assert _lock_held(fly.pod_dir), "the lock must be held from add_app on (app created)"
    fly.fl.start_app(pod, "app")
    assert _lock_held(fly.pod_dir)
    deadline = time.monotonic() + 10
    while _lock_held(fly.pod_dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _lock_held(fly.pod_dir)
    assert fly.wait_state("app", "exited", timeout=5).exit_code == 7
    assert fly.fl.status(pod).state == "exited"


def test_exec(fly):
    fly.run(["sh", "-c", "echo app-data > /tmp/marker; echo ready; exec sleep 60"],
            uid=1234, gid=4321, additional_gids=[7], env={"FROM_APP": "yes"})
    fly.wait_log("app", "ready")
    app = fly.fl.status(fly.pod).apps["app"]
    res = fly.fl.exec(fly.pod, "app", ["sh", "-c", "id -u; id -G; cat /tmp/marker; echo $FROM_APP $EXTRA; "
                                       "pwd; readlink /proc/self/ns/mnt; echo err >&2; exit 5"],
                      env={"EXTRA": "x"}, cwd="/tmp")
    assert res.exit_code == 5 and not res.timed_out
    assert res.stdout.decode().splitlines() == [
        "1234", "4321 7", "app-data", "yes x", "/tmp", os.readlink(f"/proc/{app.pid}/ns/mnt")]
    assert res.stderr == b"err\n"
    # the exec'd process belongs to the app (its cgroup), so stop and gc reach it
    res = fly.fl.exec(fly.pod, "app", ["sh", "-c", "cat /proc/self/cgroup"])
    assert fly.app_cgroup() in res.stdout.decode()
    # a background child keeping the pipes open does not hold exec
    t0 = time.monotonic()
    res = fly.fl.exec(fly.pod, "app", ["sh", "-c", "sleep 30 & echo bg"])
    assert res.exit_code == 0 and res.stdout == b"bg\n" and time.monotonic() - t0 < 5
    # timeout: killed, reported
    t0 = time.monotonic()
    res = fly.fl.exec(fly.pod, "app", ["sleep", "30"], timeout=0.5)
    assert res.timed_out and res.exit_code == 137 and time.monotonic() - t0 < 5
    res = fly.fl.exec(fly.pod, "app", ["no-such-command"])
    assert res.exit_code == 127 and b"not found" in res.stderr
    with pytest.raises(Stage1Error, match="working directory"):
        fly.fl.exec(fly.pod, "app", ["true"], cwd="/no/such/dir")
    with pytest.raises(NotFound):
        fly.fl.exec(fly.pod, "nope", ["true"])
    fly.fl.stop(fly.pod, grace=0)
    assert cgroups.procs(fly.app_cgroup()) == [], "stop left exec'd processes behind"
    with pytest.raises(Conflict):
        fly.fl.exec(fly.pod, "app", ["true"])


def test_one_app_only_and_create_errors(fly):
    fl, pod = fly.fl, fly.pod
    fl.prepare(pod)
    with pytest.raises(Conflict):  # not started yet
        fl.add_app(pod, fly.app("app", ["true"]))
    fl.start(pod)
    with pytest.raises(Stage1Error, match="not found"):
        fl.add_app(pod, fly.app("app", ["no-such-binary"]))
    assert fl.status(pod).apps == {}
    assert not os.path.exists(os.path.join(fly.pod_dir, "stage1", "apps", "app"))
    with pytest.raises(Stage1Error, match="working directory"):
        fl.add_app(pod, fly.app("app", ["true"], cwd="/does/not/exist"))
    with pytest.raises(Stage1Error, match="terminal"):
        fl.add_app(pod, fly.app("app", ["true"], terminal=True))
    assert cgroups.procs(fly.parent) == []
    fl.add_app(pod, fly.app("app", ["sleep", "60"]))
    with pytest.raises(Conflict, match="exactly one app"):
        fl.add_app(pod, fly.app("second", ["true"]))
    with pytest.raises(Conflict):
        fl.add_app(pod, fly.app("app", ["true"]))
    with pytest.raises(NotFound):
        fl.start_app(pod, "second")
    # a created app can be stopped (it never ran) and removed
    st = fl.stop_app(pod, "app", grace=5)
    assert st.state == "exited" and st.exit_code == 137
    fl.remove_app(pod, "app")
    assert fl.status(pod).apps == {}
    assert cgroups.exists(fly.app_cgroup()) == []


def test_attach_streams_and_stdin(fly):
    fly.run(["sh", "-c", "echo ready; read line; echo got:$line; sleep 60"], stdin=True)
    fly.wait_log("app", "ready")
    path = fly.fl.attach(fly.pod, "app")
    with conmon.Attach(path) as at:
        at.send(b"hello\n")
        got = b""
        deadline = time.monotonic() + 10
        while b"got:hello" not in got and time.monotonic() < deadline:
            msg = at.recv()
            if msg is None:
                break
            got += msg[1]
    assert b"got:hello" in got
    fly.wait_log("app", "got:hello")


def test_children_left_by_the_app_die_with_it(fly):
    fly.run(["sh", "-c", "sleep 60 & sleep 60 & echo $!; exit 0"])
    st = fly.wait_state("app", "exited")
    assert st.exit_code == 0
    child = int(stdout_lines(st.log_path)[0])
    deadline = time.monotonic() + 5
    while (_alive(child) or cgroups.procs(fly.app_cgroup())) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child) and cgroups.procs(fly.app_cgroup()) == []


def test_volumes_rshared_readonly_and_etc_files(fly):
    vol = os.path.join(fly.base, "vol")
    ro = os.path.join(fly.base, "ro")
    os.makedirs(vol)
    os.makedirs(ro)
    hosts = os.path.join(fly.base, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 flyhost\n")
    subprocess.run(["mount", "-t", "tmpfs", "flytest", vol], check=True)
    try:
        fly.mounts_before = fly.own_mounts()
        script = ("mkdir -p /data/sub && mount -t tmpfs inner /data/sub && echo x > /data/sub/f; "
                  "echo written > /data/file; echo no > /ro/f 2>/dev/null || echo ro-refused; "
                  "cat /etc/hosts; echo ready; exec sleep 60")
        fly.run(["sh", "-c", script], mounts=[
            Mount.bind(vol, "/data", propagation="rshared"),
            Mount.bind(ro, "/ro", readonly=True, propagation="rslave")], etc_hosts=hosts)
        out = fly.wait_log("app", "ready")
        assert out[:2] == ["ro-refused", "127.0.0.1 flyhost"], out
        # rkt's rshared volume: the app's writes and its own mounts below it reach the host
        assert open(os.path.join(vol, "file")).read() == "written\n"
        sub = os.path.join(vol, "sub")
        assert any(mp == sub for _, mp in fly.own_mounts()), "the app's mount did not propagate"
        assert open(os.path.join(sub, "f")).read() == "x\n"
        assert os.listdir(ro) == []
        fly.fl.stop(fly.pod, grace=0)
        fly.fl.gc(fly.pod)
        subprocess.run(["umount", sub], check=True)
    finally:
        subprocess.run(["umount", "-R", vol], capture_output=True)
    fly.mounts_before = fly.own_mounts()


def test_readonly_rootfs(fly):
    fly.run(["sh", "-c", "touch /srv/x 2>/dev/null || echo rootfs-ro; touch /tmp/x && echo tmp-rw"],
            readonly_rootfs=True)
    st = fly.wait_state("app", "exited")
    assert stdout_lines(st.log_path) == ["rootfs-ro", "tmp-rw"]
    assert st.exit_code == 0
    assert not os.path.exists(os.path.join(fly.rootfs, "srv", "x"))


def test_a_killed_monitor_is_unknown_and_gc_still_cleans(fly):
    lock = os.open(fly.pod_dir, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    pod = PodConfig(id=fly.pod_id, dir=fly.pod_dir, cgroup_parent=fly.parent, run_root=fly.run_root,
                    lock_fd=lock)
    fly.fl.prepare(pod)
    fly.fl.start(pod)
    fly.fl.add_app(pod, fly.app("app", ["sleep", "60"]))
    os.close(lock)
    fly.fl.start_app(pod, "app")
    pid = fly.wait_exec()
    mon = conmon.conmon_pid(fly.fl._files(pod, "app"))
    os.kill(mon, 9)
    deadline = time.monotonic() + 5
    while fly.fl.status(pod).apps["app"].state != "unknown" and time.monotonic() < deadline:
        time.sleep(0.02)
    st = fly.fl.status(pod)
    assert st.apps["app"].state == "unknown" and st.state == "exited"
    assert _alive(pid), "the app itself keeps running without its monitor"
    # the kernel closes a dying process' files a moment after its memory (which "unknown" sees)
    deadline = time.monotonic() + 5
    while _lock_held(fly.pod_dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _lock_held(fly.pod_dir), "the lock went with the monitor"
    fly.fl.gc(pod)
    assert not _alive(pid)


def test_gc_kills_a_running_pod_and_is_idempotent(fly):
    fly.run(["sh", "-c", "sleep 60 & exec sleep 60"])
    pid = fly.wait_exec()
    deadline = time.monotonic() + 5
    while len(cgroups.procs(fly.app_cgroup())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(cgroups.procs(fly.app_cgroup())) == 2
    fly.fl.gc(fly.pod)
    assert not _alive(pid)
    assert cgroups.exists(cgroups.pod_path(fly.pod_id, fly.parent)) == []
    assert not os.path.exists(os.path.join(fly.pod_dir, "stage1", "attach"))
    fly.fl.gc(fly.pod)
    assert fly.fl.status(fly.pod).apps["app"].state == "exited"
    # gc of a pod that was never prepared is a no-op
    other = PodConfig(id=str(uuid.uuid4()), dir=os.path.join(fly.base, "never"), cgroup_parent=fly.parent)
    fly.fl.gc(other)


def test_only_the_app_and_conmon_stay_resident(fly, record_property):
    fly.run(["sleep", "60"])
    app = fly.wait_state("app", "running")
    fly.wait_exec()
    time.sleep(0.2)
    pod_procs = cgroups.procs(cgroups.pod_path(fly.pod_id, fly.parent))
    comms = sorted(_read(f"/proc/{p}/comm").decode().strip() for p in pod_procs)
    assert comms == ["conmon", "sleep"], comms
    mon = conmon.conmon_pid(fly.fl._files(fly.pod, "app"))
    assert mon in pod_procs and app.pid in pod_procs
    assert _read(f"/proc/{app.pid}/stat").decode().rsplit(")", 1)[1].split()[1] == str(mon)
    pss = _pss_kb(mon)
    record_property("conmon_pss_kb", pss)
    assert 0 < pss < 4096, f"the resident monitor takes {pss} kB PSS"


def test_leak_check_catches_a_leak(fly):
    fly.run(["sleep", "60"])
    fly.wait_exec()
    leaks = fly.leaks()
    assert any("in cgroup" in line for line in leaks), leaks
    assert any("marker" in line for line in leaks), leaks
    assert any("naming the pod dir" in line for line in leaks), leaks
    fly.fl.gc(fly.pod)
    assert fly.leaks() == []
    # what a fly mount leaking into the host's table would look like
    target = os.path.join(fly.base, "leaked-proc")
    os.mkdir(target)
    subprocess.run(["mount", "--bind", "/proc", target], check=True)
    try:
        leaks = fly.leaks()
        assert any(line.startswith("new mount") and target in line for line in leaks), leaks
        assert any(line.startswith("fly-like mount") and target in line for line in leaks), leaks
    finally:
        subprocess.run(["umount", target], check=True)
    assert fly.leaks() == []
