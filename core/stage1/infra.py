"""The pod infra process: ``catatonit -P`` owning the pod's namespaces.

Choice: the infra is an OCI container of its own, run by the same runtime under conmon as the
apps, rather than a bare ``unshare`` process. Reasons:

- one mechanism for everything: the runtime creates the namespaces, sets the pod's hostname and
  sysctls (net.* sysctls land in the pod's network namespace), places it in a pypod cgroup and
  tears it down (``kill``/``delete``) — the same for crun and runc;
- conmon, not the pypod command, is its parent, reaps it and records its exit, so nothing of pypod
  must stay resident and teardown does not depend on who started it;
- the infra gets no capabilities, a read-only root and no_new_privileges.

Rootfs: one shared, read-only, empty directory (``<run_root>/infra-rootfs``) with mount points
only; the host's ``catatonit`` is bind-mounted read-only at ``/catatonit`` (copying it into /run
would fail where /run is mounted noexec).

Namespaces apps join: after ``runtime create`` (the process exists, not started) pypod bind-mounts
``/proc/<infra pid>/ns/{net,ipc,uts}`` (and ``pid`` for a shared pid namespace) onto files in
``ns_dir`` (``<run_root>/pods/<pod>/ns/``), then starts the infra. Apps join those files by path:
a pinned namespace cannot be confused with another process' after pid reuse, survives until pypod
unmounts it (so CNI DEL still finds the network namespace after the infra died), and vanishes at
reboot like the namespaces themselves (/run is a tmpfs). A network namespace created elsewhere
(e.g. by the network code before the infra exists) can be passed as a path and is joined instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from . import Stage1Error, cgroups, conmon, mounts
from .runtime import Runtime, RuntimeFailure, which
from .spec import NS_FILE, AppSpec, Mount, generate, write_json

PINNABLE = ("network", "ipc", "uts")


@dataclass
class InfraConfig:
    """How the pod's namespaces are set up.

    ``network``: ``"private"`` (a new netns, loopback only until CNI runs), ``"host"``, or the
    path of an existing network namespace to join. ``ipc``/``uts``: ``"private"`` or ``"host"``.
    ``share_pid``: apps join the infra's pid namespace (catatonit is their PID 1 and reaper).
    """

    pod_id: str
    hostname: str | None = None
    share_pid: bool = False
    network: str = "private"
    ipc: str = "private"
    uts: str = "private"
    sysctl: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str = cgroups.DEFAULT_PARENT
    resources: dict | None = None
    uid_mappings: Sequence[dict] = ()   # a pod user namespace: the infra creates it, apps join it
    gid_mappings: Sequence[dict] = ()

    def __post_init__(self) -> None:
        check_pod_id(self.pod_id)
        if self.network not in ("private", "host") and not os.path.isabs(self.network):
            raise Stage1Error(f"network must be private, host or a netns path, not {self.network!r}")
        for what in ("ipc", "uts"):
            if getattr(self, what) not in ("private", "host"):
                raise Stage1Error(f"{what} must be private or host")
        if self.hostname and self.uts == "host":
            raise Stage1Error("a pod hostname needs a private UTS namespace")


@dataclass
class Infra:
    """A running (or dead, not yet destroyed) infra container. Persisted as ``<dir>/infra.json``."""

    pod_id: str
    runtime: str
    dir: str                       # bundle + conmon state
    ns_dir: str
    exit_dir: str
    socket_dir: str
    pid: int = 0
    conmon_pid: int | None = None
    namespaces: dict[str, str] = field(default_factory=dict)   # OCI type → path apps join
    pinned: list[str] = field(default_factory=list)             # files pypod bind-mounted
    cgroups_path: str = ""

    @property
    def cid(self) -> str:
        return infra_cid(self.pod_id)

    @property
    def files(self) -> conmon.Files:
        return _files(self.pod_id, self.dir, self.exit_dir, self.socket_dir)

    def app_namespaces(self) -> dict[str, str | None]:
        """The ``AppSpec.namespaces`` for an app of this pod (a private mount namespace, the pod's
        network/ipc/uts, the pod's pid namespace when shared, else a private one)."""
        ns: dict[str, str | None] = {"mount": None, "pid": self.namespaces.get("pid")}
        for typ in (*PINNABLE, "user"):
            if typ in self.namespaces:
                ns[typ] = self.namespaces[typ]
        return ns

    def alive(self) -> bool:
        return conmon.read_exit(self.files) is None and conmon.conmon_pid(self.files) is not None

    def save(self) -> None:
        write_json(os.path.join(self.dir, "infra.json"), asdict(self))

    @classmethod
    def load(cls, dir: str) -> "Infra":
        try:
            with open(os.path.join(dir, "infra.json")) as f:
                rec = json.load(f)
        except FileNotFoundError:
            raise Stage1Error(f"no infra recorded in {dir}") from None
        if rec["dir"] != dir:  # the pod dir moved (run/ → exited-garbage/): its files moved with it
            old, new = os.path.dirname(rec["dir"]), os.path.dirname(dir)
            if rec["exit_dir"].startswith(old + os.sep):
                rec["exit_dir"] = new + rec["exit_dir"][len(old):]
            rec["dir"] = dir
        return cls(**rec)

    def destroy(self, runtime: Runtime) -> None:
        """Kill and delete the infra container and unpin its namespaces (idempotent)."""
        if runtime.name != self.runtime:
            raise Stage1Error(f"infra of {self.pod_id} runs under {self.runtime}, not {runtime.name}")
        if runtime.exists(self.cid):
            if conmon.read_exit(self.files) is None:
                runtime.kill(self.cid, "KILL", all=True)
                conmon.wait_exit(self.files, 10.0 if conmon.conmon_pid(self.files) else 0.5, self.pid)
            runtime.delete(self.cid, force=True)
        unpin(self.ns_dir, self.pinned)
        conmon.cleanup(self.files)


_POD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_pod_id(pod_id: str) -> str:
    """Pod ids name files, cgroups and container ids: no dots (apps are ``<pod>.<app>``), no
    slashes."""
    if not _POD_ID.match(pod_id):
        raise Stage1Error(f"invalid pod id {pod_id!r}")
    return pod_id


def infra_cid(pod_id: str) -> str:
    """The infra container's id: the pod id itself (apps are ``<pod>.<app>``)."""
    return pod_id


def _files(pod_id: str, dir: str, exit_dir: str, socket_dir: str) -> conmon.Files:
    return conmon.Files(cid=infra_cid(pod_id), bundle=dir, state_dir=dir,
                        log_path=os.path.join(dir, "infra.log"), exit_dir=exit_dir,
                        socket_dir=socket_dir)


def rootfs(run_root: str) -> str:
    """The shared, empty infra rootfs (created once, atomically)."""
    path = os.path.join(run_root, "infra-rootfs")
    if os.path.isfile(os.path.join(path, "catatonit")):
        return path
    os.makedirs(run_root, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for d in ("dev", "proc", "sys", "etc"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    open(os.path.join(tmp, "catatonit"), "w").close()
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, path)
    except OSError:  # lost a race with another pypod: theirs is as good
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path


def infra_config(cfg: InfraConfig, root: str, catatonit: str) -> dict:
    """The infra's config.json."""
    ns: dict[str, str | None] = {"mount": None, "pid": None}
    if cfg.network == "private":
        ns["network"] = None
    elif cfg.network != "host":
        ns["network"] = cfg.network
    if cfg.ipc == "private":
        ns["ipc"] = None
    if cfg.uts == "private":
        ns["uts"] = None
    spec = AppSpec(
        args=["/catatonit", "-P"], rootfs=root, readonly_rootfs=True,
        cgroups_path=cgroups.infra_path(cfg.pod_id, cfg.cgroup_parent),
        hostname=cfg.hostname if cfg.uts == "private" else None, namespaces=ns,
        mounts=[Mount(destination="/catatonit", source=catatonit, type="bind",
                      options=["bind", "ro", "nosuid", "nodev"])],
        capabilities=(), no_new_privileges=True, resources=cfg.resources, sysctl=dict(cfg.sysctl),
        rlimits={}, annotations={"io.pypod.infra": cfg.pod_id},
        uid_mappings=cfg.uid_mappings, gid_mappings=cfg.gid_mappings)
    config = generate(spec, cgroup_v2=cgroups.detect().mode == "v2")
    keep = {"/proc", "/dev", "/catatonit"}  # catatonit needs nothing else
    config["mounts"] = [m for m in config["mounts"] if m["destination"] in keep]
    return config


def start(runtime: Runtime, cfg: InfraConfig, *, dir: str, ns_dir: str, exit_dir: str,
          socket_dir: str, run_root: str, env: Mapping[str, str] | None = None,
          pass_fds: tuple[int, ...] = ()) -> Infra:
    """Create and start the infra; returns it with the namespace paths apps join.

    ``dir`` receives the bundle and conmon's files; ``ns_dir`` the pinned namespaces.
    ``pass_fds`` (e.g. the pod lock) are inherited by the infra's conmon, which holds them until
    the infra exits. On failure everything made so far is undone.
    """
    catatonit = which("catatonit")
    if not catatonit:
        raise Stage1Error("catatonit is not installed")
    os.makedirs(dir, exist_ok=True)
    write_json(os.path.join(dir, "config.json"), infra_config(cfg, rootfs(run_root), catatonit))
    infra = Infra(pod_id=cfg.pod_id, runtime=runtime.name, dir=dir, ns_dir=ns_dir,
                  exit_dir=exit_dir, socket_dir=socket_dir,
                  cgroups_path=cgroups.infra_path(cfg.pod_id, cfg.cgroup_parent))
    infra.save()  # before anything exists, so a crash leaves enough to clean up
    try:
        created = conmon.create(runtime, infra.files,
                                cgroup=cgroups.conmon_path(cfg.pod_id, cfg.cgroup_parent), env=env,
                                pass_fds=pass_fds)
        infra.pid, infra.conmon_pid = created.pid, created.conmon_pid
        wanted = [t for t in PINNABLE if getattr(cfg, t) == "private"]
        if cfg.share_pid:
            wanted.append("pid")
        if cfg.uid_mappings:
            wanted.append("user")
        os.makedirs(ns_dir, exist_ok=True)
        for typ in wanted:
            target = os.path.join(ns_dir, NS_FILE[typ])
            open(target, "a").close()
            infra.pinned.append(NS_FILE[typ])
            infra.save()
            mounts.bind(f"/proc/{created.pid}/ns/{NS_FILE[typ]}", target)
            infra.namespaces[typ] = target
        if cfg.network not in ("private", "host"):
            infra.namespaces["network"] = cfg.network
        infra.save()
        runtime.start(infra.cid)
    except BaseException:
        try:  # undo, so that the pod may start again
            infra.destroy(runtime)
            cgroups.remove(cgroups.pod_path(cfg.pod_id, cfg.cgroup_parent))  # no app exists yet
            os.unlink(os.path.join(dir, "infra.json"))
        except (Stage1Error, OSError):
            pass
        raise
    return infra


def unpin(ns_dir: str, names: list[str]) -> None:
    """Unmount and remove pinned namespace files (and ``ns_dir`` when empty)."""
    for name in names:
        path = os.path.join(ns_dir, name)
        while mounts.umount(path):  # a file can be stacked if pinned twice
            pass
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(ns_dir)
    except OSError:
        pass


__all__ = ["InfraConfig", "Infra", "start", "rootfs", "infra_config", "infra_cid", "unpin",
           "RuntimeFailure"]
