"""OCI runtime config (``config.json``) generation for one app, and exec process specs.

An :class:`AppSpec` goes in, a plain dict comes out (runtime-spec 1.0.2), so later issues can add
seccomp, user namespaces and capability retain/remove lists by adding fields, and callers can
post-process the dict. Nothing here touches the system except :func:`caller_hard_limits`, which
reads this process' rlimits (the runtimes cannot raise a hard limit above the caller's: on the
project's hosts root lacks CAP_SYS_RESOURCE and RLIMIT_NOFILE's hard limit is 20000).
"""

from __future__ import annotations

import json
import os
import resource
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import Stage1Error

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: rkt's (appc's) default capability set; Docker's default set is the same 14 capabilities.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
    "CAP_SETUID", "CAP_SYS_CHROOT",
)

#: Kernel paths hidden from apps (Docker's list plus rkt's /proc/kallsyms).
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/kallsyms", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)

#: Kernel paths made read-only (Docker's list; rkt's equivalents are covered by /proc/sys and ro /sys).
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

#: Namespace types of the OCI spec, by the names of their /proc/<pid>/ns/ files.
NS_FILE = {"network": "net", "ipc": "ipc", "uts": "uts", "pid": "pid", "mount": "mnt",
           "cgroup": "cgroup", "user": "user"}

#: Linux rlimit numbers (not all are exported by the resource module).
_RLIMITS = {"RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3,
            "RLIMIT_CORE": 4, "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7,
            "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11,
            "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15}
_INF = resource.RLIM_INFINITY

#: What apps get unless they ask otherwise (then clamped to the caller's hard limits).
DEFAULT_RLIMITS: dict[str, tuple[int, int]] = {"RLIMIT_NOFILE": (1048576, 1048576)}


@dataclass
class Mount:
    """One OCI mount. :meth:`bind` builds volume and /etc file bind mounts."""

    destination: str
    source: str
    type: str = "bind"
    options: list[str] = field(default_factory=list)

    @classmethod
    def bind(cls, source: str, destination: str, *, readonly: bool = False,
             propagation: str = "rprivate", recursive: bool = True) -> "Mount":
        """A bind mount; ``propagation`` is one of (r)private, (r)shared, (r)slave, (r)unbindable."""
        if propagation.lstrip("r") not in ("private", "shared", "slave", "unbindable"):
            raise Stage1Error(f"invalid mount propagation {propagation!r}")
        opts = ["rbind" if recursive else "bind", propagation, "ro" if readonly else "rw"]
        return cls(destination=destination, source=source, type="bind", options=opts)

    def to_oci(self) -> dict:
        if not self.destination.startswith("/"):
            raise Stage1Error(f"mount destination must be absolute: {self.destination!r}")
        return {"destination": self.destination, "type": self.type, "source": self.source,
                "options": list(self.options)}


@dataclass
class AppSpec:
    """Everything stage1 needs to write one app's config.json.

    ``namespaces`` maps OCI namespace types to a path to join, or None to create one: e.g.
    ``{"network": "/run/pypod/pods/P/ns/net", "ipc": ..., "uts": ..., "pid": None, "mount": None}``.
    ``mount`` is always private to the app; a missing type is shared with the host.
    """

    args: Sequence[str]
    rootfs: str
    cgroups_path: str = ""              # required by generate(); the oci flavor fills it in
    env: Mapping[str, str] | Sequence[str] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: Sequence[int] = ()
    umask: int | None = None
    terminal: bool = False
    readonly_rootfs: bool = False
    hostname: str | None = None
    namespaces: Mapping[str, str | None] = field(
        default_factory=lambda: {"mount": None, "pid": None, "network": None, "ipc": None, "uts": None})
    mounts: Sequence[Mount] = ()
    etc_hosts: str | None = None        # files the pod provides, bind-mounted over /etc/...
    etc_resolv_conf: str | None = None
    etc_hostname: str | None = None
    etc_readonly: bool = False
    shm_path: str | None = None         # a pod-shared /dev/shm (bind); None: a private tmpfs
    shm_size: int = 64 << 20
    resources: dict | None = None       # from cgroups.resources()
    rlimits: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_RLIMITS))
    capabilities: Sequence[str] = DEFAULT_CAPABILITIES
    no_new_privileges: bool = False
    masked_paths: Sequence[str] = DEFAULT_MASKED_PATHS
    readonly_paths: Sequence[str] = DEFAULT_READONLY_PATHS
    oom_score_adj: int | None = None
    sysctl: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    seccomp: dict | None = None         # an OCI linux.seccomp object, passed through
    devices: Sequence[dict] = ()        # OCI linux.devices (device nodes created in /dev)
    readonly_sys: bool = True           # /sys and /sys/fs/cgroup read-only
    rootfs_propagation: str | None = None  # linux.rootfsPropagation (runtime default when None)
    uid_mappings: Sequence[dict] = ()   # user namespace maps ({containerID, hostID, size})
    gid_mappings: Sequence[dict] = ()
    cgroupns: bool | None = None        # None: private cgroup ns on cgroup v2 only


def caller_hard_limits() -> dict[str, int]:
    """This process' hard rlimits (what a child runtime can grant at most)."""
    return {name: resource.getrlimit(num)[1] for name, num in _RLIMITS.items()}


def clamp_rlimits(wanted: Mapping[str, tuple[int, int]],
                  hard: Mapping[str, int] | None = None) -> list[dict]:
    """OCI rlimits from (soft, hard) pairs, each kept within the caller's hard limit."""
    hard = caller_hard_limits() if hard is None else hard
    out = []
    for name, (soft, hi) in wanted.items():
        if name not in _RLIMITS:
            raise Stage1Error(f"unknown rlimit {name!r}")
        cap = hard.get(name, _INF)
        if cap != _INF:
            hi = cap if hi == _INF or hi < 0 else min(hi, cap)
            soft = hi if soft == _INF or soft < 0 else min(soft, hi)
        out.append({"type": name, "hard": _oci_rlim(hi), "soft": _oci_rlim(soft)})
    return out


def _oci_rlim(v: int) -> int:
    return 0xFFFFFFFFFFFFFFFF if v == _INF or v < 0 else int(v)


def env_list(env: Mapping[str, str] | Sequence[str], terminal: bool = False) -> list[str]:
    """``KEY=value`` strings, with PATH (and TERM for terminals) added when missing."""
    items = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise Stage1Error(f"invalid environment entry {item!r}")
    keys = {i.split("=", 1)[0] for i in items}
    if "PATH" not in keys:
        items.insert(0, f"PATH={DEFAULT_PATH}")
    if terminal and "TERM" not in keys:
        items.append("TERM=xterm")
    return items


def default_mounts(*, shm_path: str | None = None, shm_size: int = 64 << 20,
                   cgroup: bool = True, readonly_sys: bool = True) -> list[dict]:
    shm = (Mount.bind(shm_path, "/dev/shm", propagation="rprivate").to_oci() if shm_path else
           {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"]})
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        shm,
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro" if readonly_sys else "rw"]},
    ]
    if cgroup:
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", "ro" if readonly_sys else "rw"]})
    return mounts


def _namespaces(spec: AppSpec, cgroup_v2: bool) -> list[dict]:
    ns: dict[str, str | None] = dict(spec.namespaces)
    ns.setdefault("mount", None)
    cgroupns = spec.cgroupns if spec.cgroupns is not None else cgroup_v2
    if cgroupns:
        ns.setdefault("cgroup", None)
    if spec.uid_mappings or spec.gid_mappings:
        ns.setdefault("user", None)
    if spec.hostname is not None and "uts" not in ns:
        raise Stage1Error("a hostname needs a UTS namespace (private or the pod's)")
    out = []
    for typ in ("pid", "network", "ipc", "uts", "mount", "cgroup", "user"):
        if typ in ns:
            path = ns[typ]
            out.append({"type": typ, "path": path} if path else {"type": typ})
    unknown = set(ns) - set(NS_FILE)
    if unknown:
        raise Stage1Error(f"unknown namespace type(s): {', '.join(sorted(unknown))}")
    return out


def generate(spec: AppSpec, *, cgroup_v2: bool = False,
             hard_limits: Mapping[str, int] | None = None) -> dict:
    """The config.json dict for ``spec``. ``cgroup_v2`` selects a private cgroup namespace."""
    if not spec.args:
        raise Stage1Error("an app needs a command (args is empty)")
    if not spec.cgroups_path.startswith("/"):
        raise Stage1Error("cgroups_path must be absolute (pypod always sets it explicitly)")
    caps = list(dict.fromkeys(spec.capabilities))
    process: dict = {
        "terminal": spec.terminal,
        "user": {"uid": spec.uid, "gid": spec.gid},
        "args": list(spec.args),
        "env": env_list(spec.env, spec.terminal),
        "cwd": spec.cwd or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": clamp_rlimits(spec.rlimits, hard_limits),
        "noNewPrivileges": spec.no_new_privileges,
    }
    if spec.additional_gids:
        process["user"]["additionalGids"] = [int(g) for g in spec.additional_gids]
    if spec.umask is not None:
        process["user"]["umask"] = spec.umask
    if spec.oom_score_adj is not None:
        if not -1000 <= spec.oom_score_adj <= 1000:
            raise Stage1Error(f"oom_score_adj out of range: {spec.oom_score_adj}")
        process["oomScoreAdj"] = spec.oom_score_adj
    namespaces = _namespaces(spec, cgroup_v2)
    joined_host_cgroup = cgroup_v2 and not any(n["type"] == "cgroup" for n in namespaces)
    mounts = default_mounts(shm_path=spec.shm_path, shm_size=spec.shm_size,
                            cgroup=not joined_host_cgroup, readonly_sys=spec.readonly_sys)
    if not any(n["type"] == "ipc" for n in namespaces):  # host IPC: its mqueue is not ours to mount
        mounts = [m for m in mounts if m["destination"] != "/dev/mqueue"]
    for dest, src in (("/etc/hosts", spec.etc_hosts), ("/etc/resolv.conf", spec.etc_resolv_conf),
                      ("/etc/hostname", spec.etc_hostname)):
        if src:
            mounts.append(Mount.bind(src, dest, readonly=spec.etc_readonly, recursive=False).to_oci())
    user_mounts = [m.to_oci() for m in spec.mounts]
    # A user mount on a default destination replaces it (e.g. a volume on /dev/shm).
    user_dests = {m["destination"].rstrip("/") or "/" for m in user_mounts}
    mounts = [m for m in mounts if m["destination"] not in user_dests] + user_mounts
    linux: dict = {
        "cgroupsPath": spec.cgroups_path,
        "namespaces": namespaces,
        "resources": spec.resources if spec.resources is not None else {"devices": [{"allow": False, "access": "rwm"}]},
        "maskedPaths": list(spec.masked_paths),
        "readonlyPaths": list(spec.readonly_paths),
    }
    if spec.sysctl:
        linux["sysctl"] = dict(spec.sysctl)
    if spec.seccomp is not None:
        linux["seccomp"] = spec.seccomp
    if spec.devices:
        linux["devices"] = [dict(d) for d in spec.devices]
    if spec.rootfs_propagation is not None:
        linux["rootfsPropagation"] = spec.rootfs_propagation
    if spec.uid_mappings or spec.gid_mappings:
        linux["uidMappings"] = [dict(m) for m in spec.uid_mappings]
        linux["gidMappings"] = [dict(m) for m in spec.gid_mappings]
    config: dict = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": spec.rootfs, "readonly": spec.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
    }
    if spec.hostname is not None:
        config["hostname"] = spec.hostname
    if spec.annotations:
        config["annotations"] = dict(spec.annotations)
    return config


def exec_process(config: Mapping, args: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, terminal: bool = False,
                 uid: int | None = None, gid: int | None = None) -> dict:
    """A process spec for ``runtime exec --process``, derived from the app's config.json.

    It keeps the app's user, capabilities, rlimits, no_new_privileges and environment (``env``
    entries override), so an exec'd command runs with exactly the app's privileges.
    """
    if not args:
        raise Stage1Error("exec needs a command")
    base = config["process"]
    proc = json.loads(json.dumps(base))  # deep copy
    proc["args"] = list(args)
    proc["terminal"] = terminal
    if cwd is not None:
        proc["cwd"] = cwd
    if uid is not None:
        proc["user"]["uid"] = uid
    if gid is not None:
        proc["user"]["gid"] = gid
    if env:
        merged = {e.split("=", 1)[0]: e for e in base.get("env", [])}
        merged.update({k: f"{k}={v}" for k, v in env.items()})
        proc["env"] = list(merged.values())
    proc.pop("consoleSize", None)
    return proc


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    """Write JSON atomically (temp file + rename in the same directory)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
