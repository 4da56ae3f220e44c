"""One Nomad task = one pypod pod: the manifest built from Nomad's TaskConfig, the driver_state
handed to Nomad, and the per-task monitor that copies the pod's CRI log into Nomad's FIFOs and
notices the exit.

Everything here is synchronous and runs in threads; :mod:`.driver` bridges to asyncio.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("pypod.nomad.tasks")

STATE_VERSION = 1
HANDLE_VERSION = 1
_APP_NAME_BAD = re.compile(r"[^a-z0-9._-]+")


class TaskError(Exception):
    """A task config the driver refuses (InvalidArgument) or cannot run."""

    def __init__(self, message: str, *, invalid: bool = True):
        super().__init__(message)
        self.invalid = invalid


def app_name(task_name: str) -> str:
    """A pod app name from a Nomad task name (lower-case letters, digits, '.', '_', '-')."""
    n = _APP_NAME_BAD.sub("-", task_name.lower()).strip("._-")[:63].strip("._-")
    return n or "task"


def _cap(name: str) -> str:
    return name.strip().lower().removeprefix("cap_")


@dataclass
class Exit:
    exit_code: int = 0
    signal: int = 0
    oom_killed: bool = False
    err: str = ""


@dataclass
class DriverState:
    """What Nomad keeps for us (``TaskHandle.driver_state``) to find the task again after the
    plugin restarts: the pod, its app, when it started and its network as Nomad saw it."""

    uuid: str
    app: str
    started_at: float
    image: str = ""
    port_map: dict[str, int] = field(default_factory=dict)
    addr: str = ""

    def encode(self) -> bytes:
        d = {"v": STATE_VERSION, "uuid": self.uuid, "app": self.app, "started_at": self.started_at,
             "image": self.image, "port_map": self.port_map, "addr": self.addr}
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> "DriverState":
        try:
            d = json.loads(data)
            if d.get("v") != STATE_VERSION:
                raise ValueError(f"driver_state version {d.get('v')!r}")
            return cls(uuid=d["uuid"], app=d["app"], started_at=float(d["started_at"]),
                       image=d.get("image", ""), port_map=dict(d.get("port_map") or {}),
                       addr=d.get("addr", ""))
        except (ValueError, KeyError, TypeError) as e:
            raise TaskError(f"driver_state is not pypod's: {e}") from None


# -- TaskConfig → PodManifest ----------------------------------------------------------------------


def build_manifest(task, tc: dict[str, Any], agent: dict[str, Any]):
    """The pod for a Nomad task. ``task``: the TaskConfig proto; ``tc``: its decoded ``config {}``;
    ``agent``: the decoded agent config. Returns (manifest, app name, port_map)."""
    from pypod.pods.manifest import (DNS, App, Mount, Network, PodManifest, Port, Resources,
                                     RestartPolicy, Volume)
    from .proto import driver_pb2 as D

    name = app_name(task.name)
    env = dict(task.env)
    # -- the process: Docker's rules for entrypoint / command / args
    entrypoint, command, args = tc.get("entrypoint"), tc.get("command"), tc.get("args")
    app = App(name=name, image=tc["image"], env=env, restart=RestartPolicy("never"))
    if entrypoint:
        app.exec = list(entrypoint) + ([command] if command else []) + list(args or [])
    elif command:
        app.args = [command] + list(args or [])
    elif args:
        app.args = list(args)
    app.working_dir = tc.get("working_dir") or None
    app.user = task.user or None
    app.readonly_rootfs = bool(tc.get("readonly_rootfs"))
    # -- security: checked against what the agent allows, enforced by the engine's isolators
    allowed = {_cap(c) for c in agent.get("allowed_caps") or []}
    cap_add = [_cap(c) for c in tc.get("cap_add") or []]
    bad = [c for c in cap_add if c not in allowed and "all" not in allowed]
    if bad:
        raise TaskError(f"cap_add: capabilities not allowed by the agent's allowed_caps: {', '.join(bad)}")
    if tc.get("privileged") and not agent.get("allow_privileged"):
        raise TaskError("privileged: privileged tasks are not allowed on this client (allow_privileged = false)")
    iso: dict[str, Any] = {}
    if cap_add or tc.get("cap_drop"):  # Docker's rule: the default set, plus cap_add, minus cap_drop
        from pypod.stage1.spec import DEFAULT_CAPABILITIES

        drop = {_cap(c) for c in tc.get("cap_drop") or []}
        keep = [_cap(c) for c in DEFAULT_CAPABILITIES] + cap_add
        retain = sorted({c for c in keep if c not in drop and "all" not in drop} - {"all"})
        if "all" in cap_add:
            from pypod.pods.isolation import ALL_CAPABILITIES

            retain = sorted({_cap(c) for c in ALL_CAPABILITIES} - drop)
        iso["capabilities"] = {"retain": [c.upper() for c in retain]}
    if tc.get("privileged"):
        iso["privileged"] = True
    app.isolators = iso
    # -- resources → cgroup limits
    res = task.resources
    r = Resources()
    if res.HasField("linux_resources"):
        lr = res.linux_resources
        if lr.cpu_shares:
            r.cpu_shares = max(2, min(262144, int(lr.cpu_shares)))
        if lr.memory_limit_bytes:
            r.memory = int(lr.memory_limit_bytes)
        if lr.cpuset_cpus:  # resources { cores = N }: the cores Nomad reserved for the task
            r.cpuset_cpus = lr.cpuset_cpus
    if res.HasField("allocated_resources"):
        ar = res.allocated_resources
        if not r.cpu_shares and ar.cpu.cpu_shares:
            r.cpu_shares = max(2, min(262144, int(ar.cpu.cpu_shares)))
        mem_mb = max(ar.memory.memory_mb, ar.memory.memory_max_mb)
        if not r.memory and mem_mb:
            r.memory = int(mem_mb) << 20
        # memory_max (oversubscription): memory_max is the hard limit, memory the soft one the
        # kernel reclaims down to under pressure (Docker's driver: Memory + MemoryReservation)
        if ar.memory.memory_max_mb > ar.memory.memory_mb > 0:
            r.memory_reservation = int(ar.memory.memory_mb) << 20
            if r.memory is not None:
                r.memory_reservation = min(r.memory_reservation, r.memory)
    app.resources = r
    # -- volumes: Nomad's alloc dir (IMAGE isolation: the driver mounts alloc, local, secrets)
    volumes: list[Volume] = []

    def bind(vname: str, source: str, target: str, ro: bool = False, prop: str | None = None) -> None:
        volumes.append(Volume(name=vname, kind="host", source=source, read_only=ro, propagation=prop))
        app.mounts.append(Mount(volume=vname, target=target))

    if task.alloc_dir:
        ad = Path(task.alloc_dir)
        for vname, src, key, default in (("alloc", ad / "alloc", "NOMAD_ALLOC_DIR", "/alloc"),
                                         ("local", ad / task.name / "local", "NOMAD_TASK_DIR", "/local"),
                                         ("secrets", ad / task.name / "secrets", "NOMAD_SECRETS_DIR", "/secrets")):
            if src.is_dir():
                bind(vname, str(src), env.get(key) or default)
    props = {"private": "rprivate", "host-to-task": "rslave", "bidirectional": "rshared", "": None}
    for i, m in enumerate(task.mounts):  # volume_mount: host and CSI volumes
        bind(f"nomad-{i}", m.host_path, m.task_path, m.readonly, props.get(m.propagation_mode, None))
    for i, spec in enumerate(tc.get("volumes") or []):
        if not agent.get("allow_host_volumes"):
            raise TaskError(f"volumes[{i}]: host volumes are not allowed on this client (allow_host_volumes = false)")
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/") or \
                (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise TaskError(f"volumes[{i}]: expected HOST:TASK[:ro|rw], got {spec!r}")
        src = parts[0] if parts[0].startswith("/") else os.path.join(task.alloc_dir, task.name, parts[0])
        bind(f"vol-{i}", src, parts[1], len(parts) == 3 and parts[2] == "ro")
    mnt = tc.get("mount") or {}
    if mnt.get("target"):
        mtype = mnt.get("type") or "bind"
        if mtype == "tmpfs":
            volumes.append(Volume(name="mount-0", kind="tmpfs", read_only=bool(mnt.get("readonly"))))
            app.mounts.append(Mount(volume="mount-0", target=mnt["target"]))
        elif mtype == "bind":
            if not agent.get("allow_host_volumes"):
                raise TaskError("mount: bind mounts are not allowed on this client (allow_host_volumes = false)")
            if not mnt.get("source"):
                raise TaskError("mount.source: a bind mount needs a source")
            bind("mount-0", mnt["source"], mnt["target"], bool(mnt.get("readonly")))
        else:
            raise TaskError(f"mount.type: expected bind or tmpfs, got {mtype!r}")
    # -- network
    pod = PodManifest(apps=[app], volumes=volumes, exit_policy="all-exited")
    pod.runtime = agent.get("runtime") or None
    if tc.get("hostname"):
        pod.hostname = tc["hostname"]
    spec = task.network_isolation_spec if task.HasField("network_isolation_spec") else None
    mode = tc.get("network_mode") or ""
    port_map: dict[str, int] = {}
    if spec is not None and spec.mode == D.NetworkIsolationSpec.GROUP and spec.path:
        if mode and mode not in ("group", "bridge"):
            raise TaskError(f"network_mode: {mode!r} cannot be used in a group with its own network "
                            "(the task joins the group's network namespace)")
        pod.netns = spec.path
    else:
        net = mode or agent.get("default_network") or "default"
        if net == "bridge":
            net = "default"
        pod.networks = [Network(net)]
        if net not in ("host", "none"):
            by_label = {p.label: p for p in res.ports}
            for label in tc.get("ports") or []:
                pm = by_label.get(label)
                if pm is None:
                    raise TaskError(f"ports: no port labelled {label!r} in the group's network block")
                to = pm.to or pm.value
                pod.ports.append(Port(container_port=to, protocol="tcp", host_port=pm.value,
                                      host_ip=pm.host_ip or None))
                pod.ports.append(Port(container_port=to, protocol="udp", host_port=pm.value,
                                      host_ip=pm.host_ip or None))
                port_map[label] = to
        elif tc.get("ports"):
            raise TaskError(f"ports: network_mode {net!r} publishes no ports")
    if task.HasField("dns") and (task.dns.servers or task.dns.searches or task.dns.options):
        pod.dns = DNS(servers=list(task.dns.servers), search=list(task.dns.searches),
                      options=list(task.dns.options))
    if tc.get("sysctls"):
        pod.isolators = {"sysctl": dict(tc["sysctls"])}
    labels = {f"com.hashicorp.nomad.{k}": v for k, v in (
        ("alloc_id", task.alloc_id), ("job_name", task.job_name), ("job_id", task.job_id),
        ("task_group_name", task.task_group_name), ("task_name", task.name), ("namespace", task.namespace),
        ("node_name", task.node_name), ("node_id", task.node_id)) if v}
    labels.update(tc.get("labels") or {})
    pod.labels = labels
    pod.annotations = {"nomad.task_id": task.id}
    try:
        pod.validate()
    except Exception as e:
        raise TaskError(str(e)) from None
    return pod, name, port_map


# -- logs: the pod's CRI log → Nomad's FIFOs -----------------------------------------------------


class LogCopier:
    """Copies one app's CRI log into the two files Nomad gives (FIFOs read by logmon, or
    /dev/null). The position is saved after each delivered batch, so a restarted plugin resumes
    where the last one stopped (nothing repeated, nothing lost, unless it died mid-write)."""

    def __init__(self, log_path: Path, stdout_path: str, stderr_path: str, pos_file: Path):
        from pypod.pods.logs import Copier

        self.pos_file = pos_file
        pos: tuple[int | None, int] = (None, 0)
        try:
            d = json.loads(pos_file.read_text())
            pos = (d.get("ino"), int(d.get("pos", 0)))
        except (OSError, ValueError):
            pass
        self.copier = Copier(log_path, pos)
        self.paths = {"stdout": stdout_path, "stderr": stderr_path}
        self.fds: dict[str, int] = {}

    def _fd(self, stream: str) -> int | None:
        fd = self.fds.get(stream)
        if fd is not None:
            return fd
        path = self.paths[stream]
        try:
            if os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode):
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # ENXIO: no reader yet
                os.set_blocking(fd, True)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                log.warning(f"opening {path}: {e}")
            return None
        self.fds[stream] = fd
        return fd

    def pump(self, stop: threading.Event | None = None) -> bool:
        """Deliver what the log has now; False when a reader was missing (retry later). Stops
        between two batches once ``stop`` is set (the position is saved after every batch)."""
        ok = True
        while stop is None or not stop.is_set():
            records = self.copier.read(256 << 10)
            if not records:
                break
            delivered = None
            for stream, data, resume in records:
                if self.paths.get(stream):
                    fd = self._fd(stream)
                    if fd is None:
                        ok = False
                        break
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view):]
                    except OSError:  # the reader went away (logmon restarting): reopen later
                        self._close(stream)
                        ok = False
                        break
                delivered = resume
            if delivered is not None:
                self._save(delivered)
            if not ok:
                break
        return ok

    def _save(self, pos: int) -> None:
        self.copier.pos = pos
        tmp = self.pos_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ino": self.copier.ino, "pos": pos}))
        os.replace(tmp, self.pos_file)

    def _close(self, stream: str) -> None:
        fd = self.fds.pop(stream, None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        for s in list(self.fds):
            self._close(s)


# -- the task ------------------------------------------------------------------------------------


class Task:
    """A running (or exited, not yet destroyed) task: its pod and the thread that watches it."""

    def __init__(self, engine, config, state: DriverState, pos_dir: Path, on_exit: Callable[["Task"], None]):
        self.engine = engine
        self.config = config  # the TaskConfig proto, echoed in the handle
        self.state = state
        self.id = config.id
        self.exit: Exit | None = None
        self.completed_at: float | None = None
        self.done = threading.Event()
        self.stop_copy = threading.Event()
        self.copy_lock = threading.Lock()  # held while a batch is being delivered
        self._on_exit = on_exit
        self.pos_file = pos_dir / f"{state.uuid}.json"
        self.thread = threading.Thread(target=self._watch, name=f"task-{state.uuid[:8]}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _watch(self) -> None:
        from pypod.errors import NotFound

        copier = None
        try:
            log_path = self.engine.log_paths(self.state.uuid)[self.state.app]
            copier = LogCopier(log_path, self.config.stdout_path, self.config.stderr_path, self.pos_file)
        except Exception as e:
            log.warning(f"task {self.id}: no log copy: {e}")
        result: Exit
        while True:
            if copier is not None and not self.stop_copy.is_set():
                with self.copy_lock:
                    copier.pump(self.stop_copy)
            try:
                info = self.engine.wait(self.state.uuid, timeout=0.1)
            except TimeoutError:
                continue
            except NotFound as e:
                result = Exit(exit_code=-1, err=f"pod {self.state.uuid} is gone: {e}")
                break
            except Exception as e:  # keep watching: a transient error must not lose the task
                log.warning(f"task {self.id}: waiting for pod {self.state.uuid}: {e}")
                time.sleep(0.5)
                continue
            app = next((a for a in info.apps if a.name == self.state.app), None)
            if app is None or app.exit_code is None:
                result = Exit(exit_code=-1, err="the task's exit code was not recorded")
            else:
                result = Exit(exit_code=int(app.exit_code), signal=int(app.signal or 0),
                              oom_killed=bool(app.oom_killed))
            self.completed_at = app.finished if app is not None and app.finished else time.time()
            break
        if copier is not None:  # the log is complete once the pod has exited: deliver the rest
            deadline = time.monotonic() + 10
            while not self.stop_copy.is_set() and time.monotonic() < deadline:
                with self.copy_lock:
                    if copier.pump(self.stop_copy):
                        break
                time.sleep(0.1)
            copier.close()
        self.exit = result
        if self.completed_at is None:
            self.completed_at = time.time()
        self.done.set()
        try:
            self._on_exit(self)
        except Exception:
            pass
