"""The ``oci`` stage1 flavor: an infra container owning the pod's namespaces, each app an OCI
container run by crun or runc under conmon. See docs/stage1.md for the on-disk picture.

Files under ``<pod dir>/stage1/``::

    stage1.json                 flavor, runtime, run root, cgroup parent (fixed at prepare)
    infra/                      infra bundle + conmon files + infra.json (namespace paths)
    apps/<app>/config.json      the app's bundle; conmon adds ctl, winsz, attach (while running),
                                pidfile, conmon.pid, exit, oom; pypod adds app.json and the
                                created/started markers (their mtimes are the timestamps)
    apps/<app>/ctr.log          the CRI log (unless the app names another path)
    exits/<container id>        conmon's --exit-dir
    exec/                       transient exec sessions

Outside it: ``<run_root>/pods/<pod>/ns/*`` (pinned namespaces), ``<run_root>/attach/<cid>``
(conmon's attach links), ``<run_root>/runtime/<name>/<cid>`` (runtime state), and the cgroups
``<parent>/<pod>/{infra,conmon,apps/<app>}``; :meth:`OciStage1.gc` removes all of them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import replace
from typing import Mapping, Sequence

from ..errors import Conflict, NotFound
from .files import read_int as _read_int, rmtree as _rmtree, touch as _touch, unlink as _unlink
from . import AppConfig, AppStatus, ExecResult, PodConfig, PodStatus, Stage1Error, cgroups, conmon
from . import infra as infra_mod
from . import spec as spec_mod
from .runtime import Runtime, get_runtime

_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEFAULT_NS = spec_mod.AppSpec.__dataclass_fields__["namespaces"].default_factory()  # type: ignore[misc]


def app_cid(pod_id: str, app: str) -> str:
    """An app's container id: ``<pod>.<app>`` (the infra's is the pod id alone)."""
    return f"{pod_id}.{app}"


class OciStage1:
    """The oci flavor (stateless: everything is read from the pod's directory)."""

    name = "oci"

    # -- paths and records ----------------------------------------------------------------------
    @staticmethod
    def _root(pod: PodConfig) -> str:
        return os.path.join(pod.dir, "stage1")

    def _record(self, pod: PodConfig) -> dict:
        try:
            with open(os.path.join(self._root(pod), "stage1.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            raise Conflict(f"pod {pod.id} was not prepared by stage1") from None

    def _runtime(self, pod: PodConfig) -> Runtime:
        rec = self._record(pod)
        return get_runtime(rec["runtime"], rec["run_root"])

    def _parent(self, pod: PodConfig) -> str:
        return self._record(pod)["cgroup_parent"]

    def _files(self, pod: PodConfig, name: str) -> conmon.Files:
        root = self._root(pod)
        app_dir = os.path.join(root, "apps", name)
        log = os.path.join(app_dir, "ctr.log")
        try:
            with open(os.path.join(app_dir, "app.json")) as f:
                log = json.load(f).get("log_path") or log
        except FileNotFoundError:
            pass
        rec = self._record(pod)
        return conmon.Files(cid=app_cid(pod.id, name), bundle=app_dir, state_dir=app_dir,
                            log_path=log, exit_dir=os.path.join(root, "exits"),
                            socket_dir=os.path.join(rec["run_root"], "attach"))

    def _cgroup(self, pod: PodConfig, name: str) -> str:
        """An app's cgroup: signalling its processes there needs no runtime process."""
        return cgroups.app_path(pod.id, name, self._parent(pod))

    def _infra(self, pod: PodConfig) -> infra_mod.Infra | None:
        try:
            return infra_mod.Infra.load(os.path.join(self._root(pod), "infra"))
        except Stage1Error:
            return None

    def _app_names(self, pod: PodConfig) -> list[str]:
        d = os.path.join(self._root(pod), "apps")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def _need_app(self, pod: PodConfig, name: str) -> conmon.Files:
        if not _APP_NAME.match(name):
            raise Stage1Error(f"invalid app name {name!r}")
        files = self._files(pod, name)
        if not os.path.isfile(os.path.join(files.bundle, "app.json")):
            raise NotFound(f"pod {pod.id} has no app {name!r}")
        return files

    # -- lifecycle ------------------------------------------------------------------------------
    def prepare(self, pod: PodConfig) -> None:
        infra_mod.check_pod_id(pod.id)
        root = self._root(pod)
        os.makedirs(os.path.join(root, "apps"), exist_ok=True)
        os.makedirs(os.path.join(root, "exits"), exist_ok=True)
        rt = get_runtime(pod.runtime, pod.run_root)
        spec_mod.write_json(os.path.join(root, "stage1.json"), {
            "flavor": self.name, "runtime": rt.name, "run_root": pod.run_root,
            "cgroup_parent": pod.cgroup_parent})
        infra_mod.rootfs(pod.run_root)

    def start(self, pod: PodConfig) -> PodStatus:
        rt = self._runtime(pod)
        existing = self._infra(pod)
        if existing is not None:
            if existing.alive():
                raise Conflict(f"pod {pod.id} is already running")
            raise Conflict(f"pod {pod.id} has run already; gc it first")
        rec = self._record(pod)
        root = self._root(pod)
        cfg = infra_mod.InfraConfig(pod_id=pod.id, hostname=pod.hostname, share_pid=pod.share_pid,
                                    network=pod.network, ipc=pod.ipc, uts=pod.uts,
                                    sysctl=dict(pod.sysctl), cgroup_parent=rec["cgroup_parent"],
                                    uid_mappings=list(pod.uid_mappings), gid_mappings=list(pod.gid_mappings))
        infra_mod.start(rt, cfg, dir=os.path.join(root, "infra"),
                        ns_dir=os.path.join(rec["run_root"], "pods", pod.id, "ns"),
                        exit_dir=os.path.join(root, "exits"),
                        socket_dir=os.path.join(rec["run_root"], "attach"), run_root=rec["run_root"],
                        pass_fds=(pod.lock_fd,) if pod.lock_fd is not None else ())
        return self.status(pod)

    def add_app(self, pod: PodConfig, app: AppConfig) -> AppStatus:
        if not _APP_NAME.match(app.name):
            raise Stage1Error(f"invalid app name {app.name!r}")
        inf = self._infra(pod)
        if inf is None or not inf.alive():
            raise Conflict(f"pod {pod.id} is not running")
        files = self._files(pod, app.name)
        if os.path.exists(os.path.join(files.bundle, "app.json")):
            raise Conflict(f"pod {pod.id} already has an app {app.name!r}")
        rt = self._runtime(pod)
        parent = self._parent(pod)
        s = app.spec
        changes: dict = {"cgroups_path": cgroups.app_path(pod.id, app.name, parent)}
        if dict(s.namespaces) == _DEFAULT_NS:
            changes["namespaces"] = inf.app_namespaces()
            if pod.host_pid:
                changes["namespaces"].pop("pid", None)
        if s.hostname is None and pod.hostname and pod.uts == "private":
            changes["hostname"] = pod.hostname
        for attr in ("etc_hosts", "etc_resolv_conf", "etc_hostname"):
            if getattr(s, attr) is None and getattr(pod, attr):
                changes[attr] = getattr(pod, attr)
        if "user" in inf.namespaces:  # the pod's user namespace: joined, with its mappings (runc wants them)
            changes["uid_mappings"], changes["gid_mappings"] = list(pod.uid_mappings), list(pod.gid_mappings)
            changes["rootfs"] = _reachable_rootfs(self._record(pod)["run_root"], pod.id, app.name, s.rootfs,
                                                  owner=(pod.uid_mappings[0]["hostID"], pod.gid_mappings[0]["hostID"]))
        s = replace(s, **changes)
        config = spec_mod.generate(s, cgroup_v2=cgroups.detect().mode == "v2")
        os.makedirs(files.bundle, exist_ok=True)
        spec_mod.write_json(os.path.join(files.bundle, "config.json"), config)
        log_path = app.log_path or os.path.join(files.bundle, "ctr.log")
        spec_mod.write_json(os.path.join(files.bundle, "app.json"), {
            "name": app.name, "stdin": app.stdin, "stdin_once": app.stdin_once, "log_path": log_path,
            "log_size_max": app.log_size_max})
        files = self._files(pod, app.name)
        exit_cmd = [*pod.exit_command, pod.id, app.name] if pod.exit_command else []
        try:
            conmon.create(rt, files, cgroup=cgroups.conmon_path(pod.id, parent), env=pod.exit_env,
                          stdin=app.stdin, leave_stdin_open=app.stdin and not app.stdin_once,
                          terminal=s.terminal,
                          log_size_max=app.log_size_max, exit_command=exit_cmd)
        except BaseException:
            self._discard_app(pod, app.name, rt)
            raise
        _touch(os.path.join(files.bundle, "created"))
        return self._app_status(pod, app.name, files)

    def start_app(self, pod: PodConfig, name: str) -> AppStatus:
        files = self._need_app(pod, name)
        if os.path.exists(os.path.join(files.bundle, "started")):
            raise Conflict(f"app {name!r} was started already")
        marker = os.path.join(files.bundle, "started")
        _touch(marker)  # before the start: an app that exits at once must not look started later
        try:
            self._runtime(pod).start(files.cid)
        except BaseException:
            _unlink(marker)
            raise
        return self._app_status(pod, name, files)

    def stop_app(self, pod: PodConfig, name: str, grace: float = 10.0, stop_signal: str = "TERM") -> AppStatus:
        files = self._need_app(pod, name)
        rt = self._runtime(pod)
        if rt.exists(files.cid):
            conmon.stop(rt, files, grace=grace, pid=_read_int(files.pidfile), cgroup=self._cgroup(pod, name),
                        signal=stop_signal)
        return self._app_status(pod, name, files)

    def kill(self, pod: PodConfig, name: str, signal: int | str) -> None:
        """Send ``signal`` to a running app (the runtime's ``kill``)."""
        files = self._need_app(pod, name)
        if self._app_status(pod, name, files).state != "running":
            raise Conflict(f"app {name!r} is not running")
        sig = signal if isinstance(signal, int) else str(signal).upper().removeprefix("SIG")
        if not self._runtime(pod).kill(files.cid, sig):
            raise Conflict(f"app {name!r} is not running")

    def update_app(self, pod: PodConfig, name: str, resources: dict) -> None:
        """Change a created or running app's cgroup limits (OCI ``linux.resources``, the
        runtime's ``update``); its config.json is rewritten so a restart keeps them."""
        files = self._need_app(pod, name)
        if self._app_status(pod, name, files).state not in ("created", "running"):
            raise Conflict(f"app {name!r} is not running")
        self._runtime(pod).update(files.cid, resources)
        path = os.path.join(files.bundle, "config.json")
        with open(path) as f:
            config = json.load(f)
        config.setdefault("linux", {})["resources"] = dict(config["linux"].get("resources") or {}, **resources)
        spec_mod.write_json(path, config)

    def reopen_log(self, pod: PodConfig, name: str, timeout: float = 10.0) -> None:
        """Have the app's conmon reopen its log file (after the caller renamed it away), and
        return once the new file is in place. conmon replaces the file at the log path with a
        new, empty one (whatever is there is dropped), asynchronously: wait for the new inode."""
        files = self._need_app(pod, name)
        if conmon.conmon_pid(files) is None:
            raise Conflict(f"app {name!r} has no running monitor")
        before = _ino(files.log_path)
        conmon.reopen_log(files)
        deadline = time.monotonic() + timeout
        while _ino(files.log_path) in (None, before):
            if time.monotonic() > deadline or conmon.conmon_pid(files) is None:
                raise Stage1Error(f"conmon of app {name!r} did not reopen its log {files.log_path}")
            time.sleep(0.005)

    def resize(self, pod: PodConfig, name: str, height: int, width: int) -> None:
        """Resize a terminal app's tty."""
        files = self._need_app(pod, name)
        if conmon.conmon_pid(files) is None:
            raise Conflict(f"app {name!r} has no running monitor")
        conmon.resize(files, height, width)

    def remove_app(self, pod: PodConfig, name: str) -> None:
        self._need_app(pod, name)
        self._discard_app(pod, name, self._runtime(pod))

    def _discard_app(self, pod: PodConfig, name: str, rt: Runtime) -> None:
        files = self._files(pod, name)
        if rt.exists(files.cid):
            conmon.stop(rt, files, grace=0, pid=_read_int(files.pidfile), cgroup=self._cgroup(pod, name))
            rt.delete(files.cid, force=True)
        conmon.cleanup(files)
        cgroups.remove(cgroups.app_path(pod.id, name, self._parent(pod)), kill=True)
        _unreach_rootfs(self._record(pod)["run_root"], pod.id, name)
        _unlink(files.exit_file)
        _rmtree(files.bundle)

    def exec(self, pod: PodConfig, name: str, args: Sequence[str], *,
             env: Mapping[str, str] | None = None, cwd: str | None = None,
             timeout: float | None = None) -> ExecResult:
        files = self._need_app(pod, name)
        if self._app_status(pod, name, files).state != "running":
            raise Conflict(f"app {name!r} is not running")
        with open(os.path.join(files.bundle, "config.json")) as f:
            config = json.load(f)
        process = spec_mod.exec_process(config, args, env=env, cwd=cwd)
        return conmon.exec_sync(self._runtime(pod), files.cid, process,
                                work_parent=os.path.join(self._root(pod), "exec"), timeout=timeout)

    def enter_argv(self, pod: PodConfig, name: str, args: Sequence[str], *, tty: bool = False) -> list[str]:
        """The runtime command that runs ``args`` in a running app with the caller's stdio (and,
        with ``tty``, a terminal the runtime proxies): for ``pypod enter`` to exec into."""
        files = self._need_app(pod, name)
        if self._app_status(pod, name, files).state != "running":
            raise Conflict(f"app {name!r} is not running")
        with open(os.path.join(files.bundle, "config.json")) as f:
            config = json.load(f)
        process = spec_mod.exec_process(config, args, terminal=tty)
        work = os.path.join(self._root(pod), "exec")
        os.makedirs(work, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="enter-", suffix=".json", dir=work)  # one per caller
        os.close(fd)
        spec_mod.write_json(path, process)
        return self._runtime(pod).argv("exec", "--process", path, files.cid)

    def attach(self, pod: PodConfig, name: str) -> str:
        files = self._need_app(pod, name)
        if conmon.conmon_pid(files) is None or not os.path.exists(files.attach_socket):
            raise Conflict(f"app {name!r} has no running monitor to attach to")
        return files.attach_socket

    def stop(self, pod: PodConfig, grace: float = 10.0) -> PodStatus:
        rt = self._runtime(pod)
        running = []
        for name in self._app_names(pod) if grace > 0 else ():  # grace 0: SIGKILL at once
            files = self._files(pod, name)
            if rt.exists(files.cid) and conmon.read_exit(files) is None:
                if conmon._signal(rt, files, "TERM", _read_int(files.pidfile), self._cgroup(pod, name)):
                    running.append(files)
        deadline = time.monotonic() + grace
        for files in running:
            conmon.wait_exit(files, max(0.0, deadline - time.monotonic()), _read_int(files.pidfile))
        for name in self._app_names(pod):
            files = self._files(pod, name)
            if rt.exists(files.cid):
                conmon.stop(rt, files, grace=0, pid=_read_int(files.pidfile), cgroup=self._cgroup(pod, name))
        inf = self._infra(pod)
        if inf is not None and rt.exists(inf.cid) and conmon.read_exit(inf.files) is None:
            rt.kill(inf.cid, "KILL", all=True)
            conmon.wait_exit(inf.files, 10.0, inf.pid)
        return self.status(pod)

    def gc(self, pod: PodConfig) -> None:
        try:
            rec = self._record(pod)
        except Conflict:
            return  # never prepared: nothing of stage1 exists
        rt = get_runtime(rec["runtime"], rec["run_root"])
        for name in self._app_names(pod):
            files = self._files(pod, name)
            if rt.exists(files.cid):
                conmon.stop(rt, files, grace=0, pid=_read_int(files.pidfile),
                            cgroup=cgroups.app_path(pod.id, name, rec["cgroup_parent"]))
                rt.delete(files.cid, force=True)
            conmon.cleanup(files)
        inf = self._infra(pod)
        if inf is not None:
            inf.destroy(rt)
        else:  # crashed between pinning and recording: unpin whatever is there
            ns_dir = os.path.join(rec["run_root"], "pods", pod.id, "ns")
            if os.path.isdir(ns_dir):
                infra_mod.unpin(ns_dir, os.listdir(ns_dir))
        cgroups.remove(cgroups.pod_path(pod.id, rec["cgroup_parent"]), kill=True)
        _unreach_rootfs(rec["run_root"], pod.id, None)
        for d in (os.path.join(rec["run_root"], "pods", pod.id, "ns"),
                  os.path.join(rec["run_root"], "pods", pod.id)):
            try:
                os.rmdir(d)
            except OSError:
                pass
        _rmtree(os.path.join(self._root(pod), "exec"))

    # -- status ---------------------------------------------------------------------------------
    def status(self, pod: PodConfig) -> PodStatus:
        self._record(pod)
        inf = self._infra(pod)
        if inf is None:
            st = PodStatus(pod.id, "prepared")
        else:
            alive = inf.alive()
            st = PodStatus(pod.id, "running" if alive else "exited",
                           infra_pid=inf.pid if alive else None, namespaces=dict(inf.namespaces))
        for name in self._app_names(pod):
            files = self._files(pod, name)
            if os.path.exists(os.path.join(files.bundle, "app.json")):
                st.apps[name] = self._app_status(pod, name, files)
        return st

    def _app_status(self, pod: PodConfig, name: str, files: conmon.Files) -> AppStatus:
        return conmon.app_status(name, files)


def _reachable_rootfs(run_root: str, pod_id: str, app: str, rootfs: str, owner: tuple[int, int]) -> str:
    """Where an app in a user namespace finds its rootfs: the runtime sets the rootfs up from
    inside the namespace, as the pod's (unprivileged) root, which cannot traverse a 0700 data
    dir; bind mount sources are opened from the host side and need nothing. So the rootfs is
    bound at ``<run_root>/pods/<pod>/rootfs/<app>``: the directories above ``rootfs`` are made
    traversable (0711), ``rootfs`` itself is the pod root's own and 0700, so no other host user
    can reach the apps' files through it."""
    from . import mounts

    top = os.path.join(run_root, "pods", pod_id, "rootfs")
    target = os.path.join(top, app)
    for d in (run_root, os.path.join(run_root, "pods"), os.path.dirname(top)):
        os.makedirs(d, exist_ok=True)
        if os.stat(d).st_mode & 0o711 != 0o711:
            os.chmod(d, os.stat(d).st_mode & 0o7777 | 0o711)
    os.makedirs(top, mode=0o700, exist_ok=True)
    os.chown(top, *owner)
    os.chmod(top, 0o700)
    os.makedirs(target, mode=0o755, exist_ok=True)
    if not mounts.is_mountpoint(target):
        mounts.bind(rootfs, target)
    return target


def _unreach_rootfs(run_root: str, pod_id: str, app: str | None) -> None:
    """Undo :func:`_reachable_rootfs` for one app, or for every app of the pod."""
    from . import mounts

    top = os.path.join(run_root, "pods", pod_id, "rootfs")
    names = [app] if app is not None else (os.listdir(top) if os.path.isdir(top) else [])
    for name in names:
        target = os.path.join(top, name)
        while mounts.umount(target):
            pass
        try:
            os.rmdir(target)
        except OSError:
            pass
    try:
        os.rmdir(top)
    except OSError:
        pass


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None
