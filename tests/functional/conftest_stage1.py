"""Fixtures for stage1 functional tests (real crun/runc, conmon, catatonit; as root).

Import the fixtures into a test module::

    from conftest_stage1 import busybox_rootfs, runtime_name, s1  # noqa: F401

``s1`` is a per-test :class:`Stage1Env` with its own run root, cgroup parent and pod id, built on
the runtime named by ``runtime_name`` (parametrized over every runtime usable on the host). After
the test it tears everything down with the library's own teardown functions, then checks that
nothing is left (processes, cgroup directories on every hierarchy, runtime state, mounts, attach
symlinks) and fails the test if something leaked.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field

import pytest

from pypod.stage1 import cgroups, conmon, infra, mounts, spec
from pypod.stage1.runtime import Runtime, get_runtime, runtime_names, which

BUSYBOX = "/bin/busybox"
TOOLS = ("conmon", "catatonit")
_NAMES = ("conmon", "crun", "runc", "catatonit", "unshare")


def _missing_tools() -> list[str]:
    return [t for t in TOOLS if which(t) is None]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (runs real containers)"
    missing = _missing_tools()
    if missing:
        return f"missing {', '.join(missing)} (make system-deps)"
    if not os.access(BUSYBOX, os.X_OK):
        return "busybox-static is needed for the test rootfs"
    return None


def _runtime_params() -> list:
    try:
        names = list(runtime_names())
    except Exception as e:  # no cgroups at all, etc.
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"runtime probe failed: {e}"))]
    if not names:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no OCI runtime (crun or runc) installed"))]
    return names


@pytest.fixture(scope="session", autouse=False)
def _subreaper():
    """Orphaned conmons are re-parented to this process (this host's PID 1 never reaps them)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    conmon.become_subreaper()
    yield
    conmon.reap_adopted()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory, _subreaper) -> str:
    """A read-only-usable busybox rootfs: /bin/busybox plus relative applet symlinks."""
    root = tmp_path_factory.mktemp("stage1-rootfs") / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    import subprocess

    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox" and not (root / "bin" / a).exists():
            os.symlink("busybox", root / "bin" / a)
    for d in ("proc", "dev", "sys", "etc", "tmp", "root"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (root / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    return str(root)


@pytest.fixture(params=_runtime_params())
def runtime_name(request) -> str:
    return request.param


@dataclass
class App:
    name: str
    files: conmon.Files
    created: conmon.Created | None = None

    @property
    def cid(self) -> str:
        return self.files.cid


@dataclass
class Stage1Env:
    """One test's world: run root, base dir, cgroup parent, pod id, runtime."""

    runtime: Runtime
    run_root: str
    base: str
    parent: str
    pod_id: str
    rootfs: str
    apps: dict[str, App] = field(default_factory=dict)
    infra: infra.Infra | None = None
    _before: set[int] = field(default_factory=set)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def exit_dir(self) -> str:
        return os.path.join(self.base, "exits")

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.run_root, "attach")

    def files(self, name: str) -> conmon.Files:
        bundle = os.path.join(self.base, "apps", name)
        return conmon.Files(cid=f"{self.pod_id}.{name}", bundle=bundle, state_dir=bundle,
                            log_path=os.path.join(bundle, "ctr.log"), exit_dir=self.exit_dir,
                            socket_dir=self.socket_dir)

    def cgroup(self, name: str) -> str:
        return cgroups.app_path(self.pod_id, name, self.parent)

    # -- actions -------------------------------------------------------------------------------
    def start_infra(self, **kw) -> infra.Infra:
        cfg = infra.InfraConfig(pod_id=self.pod_id, cgroup_parent=self.parent, **kw)
        self.infra = infra.start(self.runtime, cfg, dir=os.path.join(self.base, "infra"),
                                 ns_dir=os.path.join(self.run_root, "pods", self.pod_id, "ns"),
                                 exit_dir=self.exit_dir, socket_dir=self.socket_dir,
                                 run_root=self.run_root)
        return self.infra

    def app_spec(self, name: str, args: list[str], **kw) -> spec.AppSpec:
        kw.setdefault("readonly_rootfs", True)
        if self.infra is not None:
            kw.setdefault("namespaces", self.infra.app_namespaces())
        return spec.AppSpec(args=args, rootfs=self.rootfs, cgroups_path=self.cgroup(name), **kw)

    def create(self, name: str, args: list[str], *, conmon_opts: dict | None = None,
               **spec_kw) -> App:
        app = App(name, self.files(name))
        os.makedirs(app.files.bundle, exist_ok=True)
        config = spec.generate(self.app_spec(name, args, **spec_kw),
                               cgroup_v2=cgroups.detect().mode == "v2")
        spec.write_json(os.path.join(app.files.bundle, "config.json"), config)
        self.apps[name] = app
        app.created = conmon.create(self.runtime, app.files,
                                    cgroup=cgroups.conmon_path(self.pod_id, self.parent),
                                    **(conmon_opts or {}))
        return app

    def run(self, name: str, args: list[str], **kw) -> App:
        app = self.create(name, args, **kw)
        self.runtime.start(app.cid)
        return app

    def wait(self, app: App, timeout: float = 30.0) -> int | None:
        return conmon.wait_exit(app.files, timeout, app.created.pid if app.created else None)

    def wait_log(self, app: App, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(app.files.log_path) and text in open(app.files.log_path).read():
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared in {app.name}'s log")

    def teardown(self) -> None:
        """What a pod GC does, with the library's functions."""
        for app in self.apps.values():
            if self.runtime.exists(app.cid):
                conmon.stop(self.runtime, app.files, grace=0)
                self.runtime.delete(app.cid, force=True)
            conmon.cleanup(app.files)
        if self.infra is not None:
            self.infra.destroy(self.runtime)
        cgroups.remove(cgroups.pod_path(self.pod_id, self.parent))
        cgroups.remove(self.parent)

    # -- leak detection ------------------------------------------------------------------------
    def leaks(self, *, parent_may_exist: bool = False) -> list[str]:
        """Everything this test left behind. ``parent_may_exist``: the (shared, empty) cgroup
        parent is not a leak yet (a pod's gc removes only the pod's own cgroups)."""
        found: list[str] = []
        conmon.reap_adopted()
        for pid in cgroups.procs(self.parent):
            found.append(f"process {pid} ({_cmd(pid)}) in cgroup {self.parent}")
        for pid in _pids_named(_NAMES) - self._before:
            cmd = _cmd(pid)
            if _state(pid) == "Z" or not cmd:
                continue
            # catatonit's command line names nothing: it is this test's if it sits in its cgroups
            ours = "catatonit" in cmd and self.parent in _cgroup_of(pid)
            if self.run_root in cmd or self.base in cmd or self.pod_id in cmd or ours:
                found.append(f"process {pid}: {cmd}")
        for d in cgroups.exists(self.parent):
            if parent_may_exist:
                found.extend(f"cgroup {d}/{sub}" for sub in os.listdir(d)
                             if os.path.isdir(os.path.join(d, sub)))
            else:
                found.append(f"cgroup {d}")
        state = self.runtime.root
        if os.path.isdir(state) and os.listdir(state):
            found.append(f"runtime state in {state}: {sorted(os.listdir(state))}")
        for prefix in (self.run_root, self.base):
            for mp in mounts.mountpoints(prefix):
                found.append(f"mount {mp}")
        if os.path.isdir(self.socket_dir) and os.listdir(self.socket_dir):
            found.append(f"attach symlinks: {os.listdir(self.socket_dir)}")
        return found

    def force_cleanup(self) -> None:
        for prefix in (self.run_root, self.base):
            for mp in sorted(mounts.mountpoints(prefix), reverse=True):
                mounts.umount(mp)
        for cid in os.listdir(self.runtime.root) if os.path.isdir(self.runtime.root) else ():
            if not cid.startswith("."):
                self.runtime.delete(cid, force=True)
        try:
            cgroups.remove(self.parent, kill=True)
        except Exception:
            pass
        for pid in _pids_named(_NAMES) - self._before:
            if self.run_root in _cmd(pid) or self.base in _cmd(pid):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)
        conmon.reap_adopted()


def _pids_named(names: tuple[str, ...]) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() in names:
                    out.add(int(entry))
        except OSError:
            pass
    return out


def _cgroup_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read()
    except OSError:
        return ""


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def make_env(runtime_name: str, rootfs: str, base: str) -> Stage1Env:
    tag = uuid.uuid4().hex[:8]
    run_root = f"/run/pypod-test-{tag}"
    rt = get_runtime(runtime_name, run_root)
    return Stage1Env(runtime=rt, run_root=run_root, base=base, parent=f"/pypod-test-{tag}",
                     pod_id=str(uuid.uuid4()), rootfs=rootfs, _before=_pids_named(_NAMES))


@pytest.fixture
def s1(runtime_name, busybox_rootfs, tmp_path):
    """A per-test stage1 environment; fails the test if anything leaks."""
    env = make_env(runtime_name, busybox_rootfs, str(tmp_path / "pod"))
    os.makedirs(env.base)
    try:
        yield env
    finally:
        errors = []
        try:
            env.teardown()
        except Exception as e:  # teardown failing is itself a finding
            errors.append(f"teardown failed: {e}")
        leaked = env.leaks()
        if leaked:
            env.force_cleanup()
        shutil.rmtree(env.run_root, ignore_errors=True)
        if errors or leaked:
            pytest.fail("stage1 leak check: " + "; ".join(errors + leaked), pytrace=False)
