"""Isolation policy: rkt's isolators and flags → the stage1's AppSpec and PodConfig fields.

The manifest carries the policy in its open ``isolators`` objects (app and pod level); this
module validates them, turns flags into them, and applies them when stage0 builds an app's
:class:`~pypod.stage1.spec.AppSpec` or the pod's :class:`~pypod.stage1.PodConfig`. Unknown
isolator names are refused (a typo must not silently drop a protection).

App isolators (JSON keys; rkt's appc names are accepted as aliases)::

    "capabilities": {"retain": ["NET_ADMIN", ...]} | {"remove": ["NET_RAW", ...]}
        aliases "os/linux/capabilities-retain-set" / "...-remove-set": {"set": [...]}
    "seccomp": "unconfined"
             | {"mode": "retain"|"remove", "errno": "ENOSYS", "set": ["@rkt/default-whitelist", "socket"]}
             | {"profile": {Docker or OCI profile}}
        aliases "os/linux/seccomp-retain-set" / "...-remove-set": {"set": [...], "errno": ...}
    "noNewPrivileges": true          alias "os/linux/no-new-privileges"
    "privileged": true
    "maskedPaths": ["/proc/kcore", ...], "readonlyPaths": ["/proc/sys", ...]
        replace the default kernel path lists (what the kubelet sends through the CRI)
    "devices": [{"hostPath": "/dev/fuse", "containerPath": "/dev/fuse", "permissions": "rwm"}]
        host device nodes given to the app (created in its /dev, allowed by its device cgroup)

Pod isolators::

    "privileged": true               every app privileged
    "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", ...}   (alias "sysctls")
    "privateUsers": true             a user namespace with a range of 65536 host ids (userns.py)
    "privateUsers": {"uid": 1000, "gid": 1000, "size": 100000}
                                     with the range its caller chose (an orchestrator that
                                     allocates ranges itself, as the kubelet does)

Flags (rkt's where rkt had one): app ``--caps-retain=CAP,...``, ``--caps-remove=CAP,...``,
``--seccomp=mode=...|unconfined``, ``--seccomp-profile=FILE``, ``--no-new-privs``,
``--privileged``; pod ``--sysctl=NAME=VALUE`` (repeatable), ``--private-users``, ``--privileged``.

Defaults (no isolator): rkt's/Docker's 14 capabilities as bounding, effective and permitted
sets, pypod's default seccomp profile (:mod:`pypod.stage1.seccomp`), no_new_privs off (as
Docker; ask with ``--no-new-privs``), the masked and read-only kernel paths of
:mod:`pypod.stage1.spec`, /sys read-only, the runtime's standard /dev nodes only and a
deny-all device cgroup plus the runtime's standard allow list. ``privileged`` (asked for
explicitly, per app or per pod) gives every capability, the host's device nodes with an
allow-all device cgroup, no seccomp, no masked or read-only paths and a writable /sys.

Volumes: every target is resolved inside the app's rootfs (symlinks in the image followed as in a
chroot, :func:`pypod.pods.fsutil.resolve_in_root`), so config.json never names a place outside
it; a target that is (or resolves to) /proc or /sys, or lies below them, is refused unless the
mount is read-only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import UsageError

if TYPE_CHECKING:
    from ..stage1 import PodConfig
    from ..stage1.spec import AppSpec
    from .manifest import App, PodManifest
    from .userns import Range

#: Every capability the kernel knows (6.x), in bit order.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

APP_FLAGS: dict[str, bool] = {"--caps-retain": True, "--caps-remove": True, "--seccomp": True,
                              "--seccomp-profile": True, "--no-new-privs": False, "--privileged": False}
POD_FLAGS: dict[str, bool] = {"--sysctl": True, "--private-users": False, "--privileged": False}

_APPC = {"os/linux/capabilities-retain-set": ("capabilities", "retain"),
         "os/linux/capabilities-remove-set": ("capabilities", "remove"),
         "os/linux/seccomp-retain-set": ("seccomp", "retain"),
         "os/linux/seccomp-remove-set": ("seccomp", "remove"),
         "os/linux/no-new-privileges": ("noNewPrivileges", None)}
APP_ISOLATORS = ("capabilities", "seccomp", "noNewPrivileges", "privileged", "maskedPaths", "readonlyPaths",
                 "devices", *_APPC)
POD_ISOLATORS = ("privileged", "sysctl", "sysctls", "privateUsers")

#: Sysctls that live in a namespace the pod owns (and which one), as podman and the kubelet
#: allow them; everything else would change the host.
_IPC_SYSCTLS = ("kernel.shmmax", "kernel.shmall", "kernel.shmmni", "kernel.shm_rmid_forced",
                "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem")
_SYSCTL_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)+", re.I)
_ALLOWED_TEXT = "net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, kernel.domainname"


# -- capabilities -----------------------------------------------------------------------------
def cap_name(name: str) -> str:
    """``net_admin``, ``NET_ADMIN`` or ``CAP_NET_ADMIN`` → ``CAP_NET_ADMIN``; unknown refused."""
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"invalid capability {name!r}")
    n = name.strip().upper()
    n = n if n.startswith("CAP_") else "CAP_" + n
    if n not in ALL_CAPABILITIES:
        raise UsageError(f"unknown capability {name.strip()!r}")
    return n


def caller_capabilities() -> set[str]:
    """The capabilities pypod itself may hand out: its bounding set. An app cannot get more
    (e.g. where root runs without CAP_SYS_RESOURCE the runtime's capset would fail)."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    except (OSError, StopIteration, ValueError):
        return set(ALL_CAPABILITIES)
    return {c for i, c in enumerate(ALL_CAPABILITIES) if mask >> i & 1}


def parse_caps(value: str | list) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise UsageError("expected a list of capabilities")
    out = [cap_name(i) for i in items if not (isinstance(i, str) and not i.strip())]
    if not out:
        raise UsageError("expected at least one capability")
    return list(dict.fromkeys(out))


# -- flags ------------------------------------------------------------------------------------
def apply_app_flag(app: "App", name: str, value: str) -> None:
    """One isolation app flag onto ``app.isolators`` (errors name nothing: the caller adds the
    flag and the app)."""
    from .manifest import parse_bool

    iso = app.isolators
    if name in ("--caps-retain", "--caps-remove"):
        mode = name.removeprefix("--caps-")
        other = "remove" if mode == "retain" else "retain"
        current = _caps_isolator(iso)
        if current is not None and other in current:
            raise UsageError("--caps-retain and --caps-remove are mutually exclusive")
        iso.pop(f"os/linux/capabilities-{mode}-set", None)
        iso["capabilities"] = {mode: parse_caps(value)}
    elif name == "--seccomp":
        for alias in ("os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set"):
            iso.pop(alias, None)
        iso["seccomp"] = parse_seccomp_flag(value)
    elif name == "--seccomp-profile":
        iso["seccomp"] = {"profile": read_profile(value)}
    elif name == "--no-new-privs":
        iso["noNewPrivileges"] = parse_bool(value)
    elif name == "--privileged":
        iso["privileged"] = parse_bool(value)
    else:  # pragma: no cover - APP_FLAGS and this function are kept in step
        raise UsageError(f"unknown flag {name}")


def apply_pod_flag(pod: "PodManifest", name: str, value: str) -> None:
    from .manifest import parse_bool, parse_kv

    iso = pod.isolators
    if name == "--sysctl":
        k, v = parse_kv(value)
        key = "sysctls" if "sysctls" in iso else "sysctl"  # Kubernetes' spelling is kept
        sysctl = dict(iso.get(key) or {})
        sysctl[k] = v
        iso[key] = sysctl
    elif name == "--private-users":
        iso["privateUsers"] = parse_bool(value)
    elif name == "--privileged":
        iso["privileged"] = parse_bool(value)
    else:  # pragma: no cover
        raise UsageError(f"unknown flag {name}")


def parse_seccomp_flag(value: str) -> Any:
    """rkt's ``mode=retain|remove[,errno=E],SYSCALL|@GROUP,...``, or ``unconfined``."""
    if value.strip().lower() == "unconfined":
        return "unconfined"
    from ..stage1 import Stage1Error, seccomp

    try:
        return seccomp.parse_rkt(value)
    except Stage1Error as e:
        raise UsageError(str(e)) from None


def read_profile(path: str) -> dict:
    """A seccomp profile file (Docker's or OCI's JSON), validated for the default capabilities."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(4 << 20))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    _check_profile(doc, path)
    return doc


def _check_profile(doc: Any, where: str) -> None:
    from ..stage1 import Stage1Error, seccomp
    from ..stage1.spec import DEFAULT_CAPABILITIES

    try:
        seccomp.convert(doc, DEFAULT_CAPABILITIES)
    except Stage1Error as e:
        raise UsageError(f"{where}: {e}") from None


# -- reading and validating the isolators -----------------------------------------------------
def _caps_isolator(iso: Mapping[str, Any]) -> dict | None:
    found = {}
    if "capabilities" in iso:
        found.update(iso["capabilities"] if isinstance(iso["capabilities"], Mapping) else {"?": None})
    for alias, (key, mode) in _APPC.items():
        if key == "capabilities" and alias in iso:
            v = iso[alias]
            found[mode] = v.get("set") if isinstance(v, Mapping) else v
    return found or None


def _seccomp_isolator(iso: Mapping[str, Any]) -> Any:
    found = []
    if "seccomp" in iso:
        found.append(iso["seccomp"])
    for alias, (key, mode) in _APPC.items():
        if key == "seccomp" and alias in iso:
            v = iso[alias]
            found.append(dict(v, mode=mode) if isinstance(v, Mapping) else v)
    if len(found) > 1:
        raise UsageError("only one seccomp isolator may be given (retain-set, remove-set, profile or unconfined)")
    return found[0] if found else None


@dataclass
class AppPolicy:
    """What an app gets, resolved from its and its pod's isolators."""

    capabilities: list[str]
    seccomp: Any            # None: the default profile; "unconfined"; a retain/remove dict; {"profile": ...}
    no_new_privileges: bool
    privileged: bool
    masked_paths: list[str] | None = None    # None: the defaults of pypod.stage1.spec
    readonly_paths: list[str] | None = None
    devices: list[dict] | None = None         # {"hostPath", "containerPath", "permissions"}


def _paths(iso: Mapping[str, Any], key: str) -> list[str] | None:
    v = iso.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(p, str) and p.startswith("/") and "\0" not in p
                                          and ".." not in p.split("/") for p in v):
        raise UsageError(f"{key}: expected a list of absolute paths")
    return list(v)


def app_policy(pod: "PodManifest", app: "App") -> AppPolicy:
    """Validate an app's isolators (UsageError without a location; :func:`validate` adds it)."""
    from ..stage1.spec import DEFAULT_CAPABILITIES

    iso = app.isolators
    if not isinstance(iso, Mapping):
        raise UsageError("isolators must be an object")
    for key in iso:
        if key not in APP_ISOLATORS:
            raise UsageError(f"unknown isolator {key!r} (known: {', '.join(APP_ISOLATORS)})")
    privileged = _flag(iso, "privileged") or _flag(pod.isolators, "privileged")
    caps_iso = _caps_isolator(iso)
    caps = list(DEFAULT_CAPABILITIES)
    if caps_iso is not None:
        if set(caps_iso) - {"retain", "remove"}:
            raise UsageError("capabilities: expected {\"retain\": [...]} or {\"remove\": [...]}")
        if "retain" in caps_iso and "remove" in caps_iso:
            raise UsageError("capabilities: retain (--caps-retain) and remove (--caps-remove) are "
                             "mutually exclusive")
        if "retain" in caps_iso:
            caps = parse_caps(caps_iso["retain"])
        else:
            removed = set(parse_caps(caps_iso["remove"]))
            caps = [c for c in caps if c not in removed]
    if privileged:
        caps = list(ALL_CAPABILITIES)
    sc = _seccomp_isolator(iso)
    if sc is not None and sc != "unconfined":
        if not isinstance(sc, Mapping):
            raise UsageError("seccomp: expected \"unconfined\", a retain/remove set or {\"profile\": ...}")
        if "profile" in sc:
            if set(sc) != {"profile"}:
                raise UsageError("seccomp: a profile cannot be combined with a retain/remove set")
            _check_profile(sc["profile"], "seccomp.profile")
        else:
            from ..stage1 import Stage1Error, seccomp

            try:
                seccomp.check_set(sc)
            except Stage1Error as e:
                raise UsageError(f"seccomp: {e}") from None
    nnp = _flag(iso, "noNewPrivileges") or _flag(iso, "os/linux/no-new-privileges")
    return AppPolicy(capabilities=caps, seccomp=sc, no_new_privileges=nnp, privileged=privileged,
                     masked_paths=_paths(iso, "maskedPaths"), readonly_paths=_paths(iso, "readonlyPaths"),
                     devices=_devices(iso))


def _devices(iso: Mapping[str, Any]) -> list[dict] | None:
    v = iso.get("devices")
    if v is None:
        return None
    if not isinstance(v, list):
        raise UsageError("devices: expected a list of {hostPath, containerPath, permissions}")
    out = []
    for i, d in enumerate(v):
        if not isinstance(d, Mapping) or set(d) - {"hostPath", "containerPath", "permissions"}:
            raise UsageError(f"devices[{i}]: expected {{hostPath, containerPath, permissions}}")
        host, target, perms = d.get("hostPath"), d.get("containerPath") or d.get("hostPath"), d.get("permissions", "rwm")
        for what, path in (("hostPath", host), ("containerPath", target)):
            if not isinstance(path, str) or not path.startswith("/dev/") or ".." in path.split("/"):
                raise UsageError(f"devices[{i}].{what}: expected a path below /dev, not {path!r}")
        if not isinstance(perms, str) or not perms or set(perms) - set("rwm"):
            raise UsageError(f"devices[{i}].permissions: expected letters of rwm, not {perms!r}")
        out.append({"hostPath": host, "containerPath": target, "permissions": perms})
    return out


def device_nodes(devices: list[dict]) -> tuple[list[dict], list[dict]]:
    """OCI ``linux.devices`` and device cgroup rules for host device nodes (each must exist and be
    a character or block device)."""
    import stat

    nodes, rules = [], []
    for d in devices:
        try:
            st = os.stat(d["hostPath"])
        except OSError as e:
            raise UsageError(f"device {d['hostPath']}: {e.strerror}") from None
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise UsageError(f"device {d['hostPath']}: not a character or block device")
        kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append({"path": d["containerPath"], "type": kind, "major": major, "minor": minor,
                      "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor, "access": d["permissions"]})
    return nodes, rules


def _flag(iso: Mapping[str, Any], key: str) -> bool:
    v = iso.get(key, False)
    if not isinstance(v, bool):
        raise UsageError(f"{key}: expected true or false, not {v!r}")
    return v


def private_users(pod: "PodManifest") -> bool:
    v = pod.isolators.get("privateUsers", False)
    if isinstance(v, Mapping):
        _users_range(v)
        return True
    return _flag(pod.isolators, "privateUsers")


def _users_range(v: Mapping[str, Any]) -> "Range":
    """A caller-chosen range: host uid, host gid and size, the container's ids starting at 0."""
    from .userns import Range

    if set(v) - {"uid", "gid", "size"} or not {"uid", "gid", "size"} <= set(v):
        raise UsageError("privateUsers: expected true or {\"uid\": HOSTID, \"gid\": HOSTID, \"size\": N}")
    for key in ("uid", "gid", "size"):
        if not isinstance(v[key], int) or isinstance(v[key], bool) or v[key] < (1 if key == "size" else 0):
            raise UsageError(f"privateUsers.{key}: expected a {'positive' if key == 'size' else 'non-negative'} "
                             f"integer, not {v[key]!r}")
    if max(v["uid"], v["gid"]) + v["size"] > 1 << 32:
        raise UsageError("privateUsers: the range passes the last id (2^32-1)")
    return Range(v["uid"], v["gid"], v["size"])


def _host_network(pod: "PodManifest") -> bool:
    return [n.name for n in pod.networks] == ["host"]


def sysctls(pod: "PodManifest") -> dict[str, str]:
    """The pod's sysctls, checked: only namespaced ones, and only in namespaces the pod owns."""
    if "sysctl" in pod.isolators and "sysctls" in pod.isolators:
        raise UsageError("sysctl and sysctls are the same isolator: give one")
    raw = pod.isolators.get("sysctl", pod.isolators.get("sysctls")) or {}
    if not isinstance(raw, Mapping):
        raise UsageError("sysctl: expected an object of NAME: VALUE")
    out = {}
    for name, value in raw.items():
        key = name.replace("/", ".") if isinstance(name, str) else name
        if not isinstance(key, str) or not _SYSCTL_NAME.fullmatch(key):
            raise UsageError(f"sysctl {name!r}: invalid name")
        if not isinstance(value, str) or "\n" in value or "\0" in value:
            raise UsageError(f"sysctl {key}: the value must be a single-line string")
        ns = sysctl_namespace(key)
        if ns is None:
            raise UsageError(f"sysctl {key}: not namespaced, it would change the whole host "
                             f"(allowed: {_ALLOWED_TEXT})")
        if ns == "net" and (_host_network(pod) or getattr(pod, "netns", None) is not None):
            why = "the host's network namespace (--net=host)" if _host_network(pod) else \
                "a network namespace it did not create (netns)"
            raise UsageError(f"sysctl {key}: the pod uses {why}: it would change the host")
        if ns == "ipc" and pod.ipc_mode == "host":
            raise UsageError(f"sysctl {key}: the pod uses the host's IPC namespace (--ipc=host): "
                             "it would change the host")
        out[key] = value
    return out


def sysctl_namespace(name: str) -> str | None:
    """The namespace a sysctl belongs to (net, ipc, uts), None for host-wide ones."""
    if name.startswith("net."):
        return "net"
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
        return "ipc"
    if name == "kernel.domainname":
        return "uts"
    return None


def validate(pod: "PodManifest") -> None:
    """Check every isolator of the pod and its apps (called by ``PodManifest.validate``)."""
    iso = pod.isolators
    if not isinstance(iso, Mapping):
        raise UsageError("isolators: must be an object")
    for key in iso:
        if key not in POD_ISOLATORS:
            raise UsageError(f"isolators: unknown isolator {key!r} (known: {', '.join(POD_ISOLATORS)})")
    try:
        _flag(iso, "privileged")
        if pod.stage1 == "fly" and (iso.get("sysctl") or iso.get("sysctls") or iso.get("privateUsers") or any(
                k != "privileged" for a in pod.apps for k in a.isolators)):
            raise UsageError("stage1 fly has no isolation: only privileged applies")
        sysctls(pod)
        if private_users(pod):
            if pod.stage1 == "fly":
                raise UsageError("privateUsers: stage1 fly runs apps as host root (no user namespace)")
            if _host_network(pod) or getattr(pod, "netns", None) is not None:
                raise UsageError("privateUsers: cannot be combined with the host's or a joined network "
                                 "namespace (it would not belong to the pod's user namespace)")
            if pod.ipc_mode == "host" or pod.pid_mode == "host":
                raise UsageError("privateUsers: cannot be combined with the host's IPC or PID namespace")
    except UsageError as e:
        raise UsageError(f"isolators: {e}") from None
    for i, app in enumerate(pod.apps):
        try:
            app_policy(pod, app)
        except UsageError as e:
            raise UsageError(f"apps[{i}].isolators: {e}") from None


# -- applying them ----------------------------------------------------------------------------
def pod_users(pod_dir: str | os.PathLike) -> "Range | None":
    """The pod's user namespace range, when it has private users (recorded at start)."""
    from . import userns

    return userns.load(pod_dir)


def claim_users(pod_dir: str | os.PathLike, uuid: str, manifest: "PodManifest",
                data_dir: str | os.PathLike) -> "Range | None":
    """Claim the pod's host id range (``privateUsers``), None for a pod without."""
    if not private_users(manifest):
        return None
    from . import userns

    chosen = manifest.isolators.get("privateUsers")
    if isinstance(chosen, Mapping):  # the caller's range: recorded, not claimed in pypod's pool
        return userns.record(pod_dir, _users_range(chosen))
    return userns.allocate(pod_dir, uuid, data_dir)


def release_users(pod_dir: str | os.PathLike, uuid: str) -> None:
    from . import userns

    userns.free(pod_dir, uuid)


def pod_config(cfg: "PodConfig", manifest: "PodManifest", pod_dir: str | os.PathLike) -> "PodConfig":
    """The pod-level isolation in the stage1's PodConfig: sysctls (the infra applies them in the
    pod's namespaces) and the user namespace mappings."""
    sysctl = sysctls(manifest)
    if sysctl:
        cfg.sysctl = {**cfg.sysctl, **sysctl}
    r = pod_users(pod_dir)
    if r is not None:
        cfg.uid_mappings, cfg.gid_mappings = r.uid_mappings(), r.gid_mappings()
    return cfg


def app_spec(spec: "AppSpec", manifest: "PodManifest", app: "App", pod_dir: str | os.PathLike) -> "AppSpec":
    """Apply the app's isolation to ``spec`` (built by stage0 with the rootfs mounted)."""
    from ..stage1 import Stage1Error, seccomp

    policy = app_policy(manifest, app)
    held = caller_capabilities()
    if policy.privileged:  # every capability pypod holds (as Docker's --privileged)
        policy.capabilities = [c for c in policy.capabilities if c in held]
    missing = [c for c in policy.capabilities if c not in held]
    if missing:
        raise UsageError(f"app {app.name!r}: pypod itself does not hold {', '.join(missing)} "
                         "(its bounding set lacks it), so it cannot grant it")
    spec.capabilities = tuple(policy.capabilities)
    spec.no_new_privileges = policy.no_new_privileges
    try:
        if policy.privileged or policy.seccomp == "unconfined":
            spec.seccomp = None
        elif policy.seccomp is None:
            spec.seccomp = seccomp.default_profile(policy.capabilities)
        elif "profile" in policy.seccomp:
            spec.seccomp = seccomp.convert(policy.seccomp["profile"], policy.capabilities)
        else:
            spec.seccomp = seccomp.from_rkt(policy.seccomp, policy.capabilities)
    except Stage1Error as e:
        raise UsageError(f"app {app.name!r}: seccomp: {e}") from None
    if policy.masked_paths is not None:
        spec.masked_paths = tuple(policy.masked_paths)
    if policy.readonly_paths is not None:
        spec.readonly_paths = tuple(policy.readonly_paths)
    if policy.devices:
        nodes, rules = device_nodes(policy.devices)
        spec.devices = [*spec.devices, *nodes]
        res = dict(spec.resources or {})
        res["devices"] = [*(res.get("devices") or [{"allow": False, "access": "rwm"}]), *rules]
        spec.resources = res
    if policy.privileged:
        spec.masked_paths, spec.readonly_paths = (), ()
        spec.readonly_sys = False
        spec.devices = host_devices()
        spec.resources = dict(spec.resources or {}, devices=[{"allow": True, "access": "rwm"}])
    r = pod_users(pod_dir)
    spec.mounts = [_secure_mount(spec.rootfs, m, app.name) for m in spec.mounts]
    props = {o.lstrip("r") for m in spec.mounts for o in m.options if o.lstrip("r") in ("shared", "slave")}
    if props and spec.rootfs_propagation is None:  # else crun makes / rprivate and cuts the volume off
        spec.rootfs_propagation = "rshared" if "shared" in props else "rslave"
    if r is not None:
        _own_volumes(manifest, Path(pod_dir), r)
    return spec


def _secure_mount(rootfs: str, m: Any, app: str):
    """The mount with its target resolved inside the rootfs; rw mounts on /proc and /sys refused."""
    from dataclasses import replace

    from .fsutil import resolve_in_root

    try:
        target = resolve_in_root(rootfs, m.destination)
    except OSError as e:
        raise UsageError(f"app {app!r}: mount target {m.destination}: {e.strerror or e}") from None
    writable = "ro" not in m.options
    for kernel in ("/proc", "/sys"):
        if writable and (target == kernel or target.startswith(kernel + "/")):
            via = "" if target == m.destination else f" (through the image's symlinks: {target})"
            raise UsageError(f"app {app!r}: a read-write volume cannot be mounted on {m.destination}"
                             f"{via}: {kernel} is the kernel's, mount it read-only")
    return replace(m, destination=target)


def _own_volumes(manifest: "PodManifest", pod_dir: Path, r: "Range") -> None:
    """``empty`` volumes pypod made belong to the pod's ids (host volumes are the host's)."""
    from . import userns

    for vol in manifest.volumes:
        if vol.kind == "empty":
            path = pod_dir / "volumes" / vol.name
            if path.is_dir():
                userns.own(path, r)


_RUNTIME_DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                    "/dev/ptmx", "/dev/console"}
_SKIP_DIRS = {"/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/hugepages"}


def host_devices(root: str = "/dev") -> list[dict]:
    """The host's device nodes as OCI ``linux.devices`` (privileged apps), except the ones every
    runtime creates anyway and the pseudo-filesystems (pts, shm, mqueue)."""
    import stat

    out = []
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.join(top, d) not in _SKIP_DIRS)
        for name in sorted(files):
            path = os.path.join(top, name)
            if path in _RUNTIME_DEVICES:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append({"path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                            "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
    return out
