"""CRI messages to pod manifests and back: every translation the services make, and nothing else.

What the CRI knows and pypod's manifest does not (sandbox and container metadata, the log
directory, namespace options as asked, the image as the kubelet named it, mounts as asked) is kept
as JSON in one annotation, :data:`META`, of the pod and of each app. The CRI's own labels and
annotations are stored as they are, so they round-trip exactly; :data:`META` is never shown.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from pypod.errors import PypodError, UsageError
from pypod.pods.manifest import DNS, App, Mount, Network, PodManifest, Port, Resources, Volume

from . import ids
from .proto import cri_pb2 as pb

META = "io.pypod.cri"
PROPAGATION = {pb.PROPAGATION_PRIVATE: "rprivate", pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
               pb.PROPAGATION_BIDIRECTIONAL: "rshared"}
PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}
PID_MODES = {pb.POD: "pod", pb.CONTAINER: "app", pb.NODE: "host"}
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144


class Invalid(UsageError):
    """A request the CRI calls malformed (gRPC INVALID_ARGUMENT)."""


class Unsupported(PypodError):
    """A feature this runtime does not have (gRPC UNIMPLEMENTED, which clients treat as such)."""


# -- metadata ---------------------------------------------------------------------------------


def meta_of(annotations: Mapping[str, str]) -> dict[str, Any] | None:
    raw = annotations.get(META)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def visible(annotations: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in annotations.items() if k != META}


def sandbox_metadata(meta: Mapping[str, Any]) -> pb.PodSandboxMetadata:
    m = meta.get("metadata") or {}
    return pb.PodSandboxMetadata(name=m.get("name", ""), uid=m.get("uid", ""),
                                 namespace=m.get("namespace", ""), attempt=int(m.get("attempt", 0)))


def container_metadata(meta: Mapping[str, Any]) -> pb.ContainerMetadata:
    m = meta.get("metadata") or {}
    return pb.ContainerMetadata(name=m.get("name", ""), attempt=int(m.get("attempt", 0)))


def namespace_option(meta: Mapping[str, Any]) -> pb.NamespaceOption:
    ns = meta.get("namespaces") or {}
    opt = pb.NamespaceOption(network=ns.get("network", 0), pid=ns.get("pid", 0), ipc=ns.get("ipc", 0),
                             target_id=ns.get("targetId", ""))
    us = ns.get("userns")
    if us:
        opt.userns_options.mode = us["mode"]
        opt.userns_options.uids.append(pb.IDMapping(host_id=us["uid"], container_id=0, length=us["size"]))
        opt.userns_options.gids.append(pb.IDMapping(host_id=us["gid"], container_id=0, length=us["size"]))
    return opt


# -- sandboxes ----------------------------------------------------------------------------------


def sandbox_manifest(config: pb.PodSandboxConfig, *, network: str, runtime_handler: str = "") -> PodManifest:
    """The mutable pod for ``RunPodSandbox``."""
    if not config.HasField("metadata") or not config.metadata.name:
        raise Invalid("PodSandboxConfig.metadata.name is required")
    linux = config.linux
    sc = linux.security_context
    nso = sc.namespace_options
    if nso.pid == pb.TARGET:
        raise Invalid("a sandbox cannot have a TARGET pid namespace (only containers can)")
    host_net = nso.network == pb.NODE
    m = PodManifest(mutable=True)
    m.networks = [Network("host" if host_net else network)]
    if config.hostname and not host_net:
        m.hostname = config.hostname
    if config.HasField("dns_config"):
        d = config.dns_config
        m.dns = DNS(servers=list(d.servers), search=list(d.searches), options=list(d.options))
    if not host_net:  # with the host's network a port is the host's already
        for p in config.port_mappings:
            if not 0 < p.container_port < 65536 or not 0 <= p.host_port < 65536:
                raise Invalid(f"port mapping {p.container_port}:{p.host_port}: port out of range")
            m.ports.append(Port(container_port=p.container_port, protocol=PROTOCOLS.get(p.protocol, "tcp"),
                                host_port=p.host_port, host_ip=p.host_ip or None))
    if linux.cgroup_parent:  # the kubelet's (cgroupfs names: RuntimeConfig says cgroupfs)
        parent = linux.cgroup_parent if linux.cgroup_parent.startswith("/") else "/" + linux.cgroup_parent
        if parent.endswith(".slice"):
            raise Invalid(f"cgroup_parent {linux.cgroup_parent!r} is a systemd slice: use the cgroupfs driver")
        m.cgroup_parent = parent
    m.pid_mode = PID_MODES[nso.pid]
    m.ipc_mode = "host" if nso.ipc == pb.NODE else "pod"
    m.labels = dict(config.labels)
    meta = {
        "metadata": {"name": config.metadata.name, "uid": config.metadata.uid,
                     "namespace": config.metadata.namespace, "attempt": config.metadata.attempt},
        "logDirectory": config.log_directory,
        "runtimeHandler": runtime_handler,
        "namespaces": {"network": nso.network, "pid": nso.pid, "ipc": nso.ipc},
    }
    isolators: dict[str, Any] = {}
    users = user_namespace(nso)
    if users is not None:
        isolators["privateUsers"] = users
        meta["namespaces"]["userns"] = {"mode": nso.userns_options.mode, **users}
    m.annotations = dict(config.annotations)
    m.annotations[META] = json.dumps(meta, separators=(",", ":"))
    if linux.sysctls:
        isolators["sysctl"] = dict(linux.sysctls)
    if sc.privileged:
        isolators["privileged"] = True
    m.isolators = isolators
    return m


def user_namespace(nso: pb.NamespaceOption) -> dict[str, int] | None:
    """The pod's user namespace from the CRI's options: None for the host's (NODE, or none
    asked), else the one range pypod maps (container ids from 0)."""
    if not nso.HasField("userns_options"):
        return None
    us = nso.userns_options
    if us.mode == pb.NODE:
        return None
    if us.mode != pb.POD:
        raise Invalid(f"user namespace mode {pb.NamespaceMode.Name(us.mode)} is not supported (POD or NODE)")
    if len(us.uids) != 1 or len(us.gids) != 1:
        raise Invalid("a POD user namespace needs exactly one uid and one gid mapping")
    u, g = us.uids[0], us.gids[0]
    if u.container_id != 0 or g.container_id != 0:
        raise Invalid("a POD user namespace must map container id 0")
    if u.length != g.length or not u.length:
        raise Invalid("the uid and gid mappings must have the same, non-zero length")
    return {"uid": u.host_id, "gid": g.host_id, "size": u.length}


# -- containers ---------------------------------------------------------------------------------


def volume_name(host_path: str, propagation: str) -> str:
    """Mounts of one host path with one propagation share a pod volume (kubelet's restarts of a
    container ask for the same mounts again)."""
    return "cri-" + hashlib.sha256(f"{propagation}:{host_path}".encode()).hexdigest()[:20]


def _mounts(config: pb.ContainerConfig) -> tuple[list[Mount], list[Volume], list[dict[str, Any]]]:
    mounts: list[Mount] = []
    volumes: dict[str, Volume] = {}
    asked: list[dict[str, Any]] = []
    for i, mt in enumerate(config.mounts):
        where = f"mounts[{i}]"
        if mt.HasField("image"):
            raise Unsupported(f"{where}: image volumes are not supported by this runtime")
        if not mt.container_path.startswith("/"):
            raise Invalid(f"{where}: container_path {mt.container_path!r} must be absolute")
        if not mt.host_path.startswith("/"):
            raise Invalid(f"{where}: host_path {mt.host_path!r} must be absolute")
        if mt.recursive_read_only:
            if not mt.readonly:
                raise Invalid(f"{where}: a recursive read-only mount must be read-only")
            if mt.propagation != pb.PROPAGATION_PRIVATE:
                raise Invalid(f"{where}: a recursive read-only mount needs private propagation")
        if mt.uidMappings or mt.gidMappings:
            raise Invalid(f"{where}: id-mapped mounts are not supported")
        source = mt.host_path
        if not os.path.exists(source):  # as containerd: a missing host directory is made
            os.makedirs(source, exist_ok=True)
        source = os.path.realpath(source)  # a symlink is the host's: resolve it on the host
        prop = PROPAGATION.get(mt.propagation)
        if prop is None:
            raise Invalid(f"{where}: unknown propagation {mt.propagation}")
        name = volume_name(source, prop)
        volumes[name] = Volume(name=name, kind="host", source=source, propagation=prop)
        mounts.append(Mount(volume=name, target=mt.container_path, read_only=mt.readonly,
                            recursive_read_only=mt.recursive_read_only))
        asked.append({"containerPath": mt.container_path, "hostPath": mt.host_path, "readonly": mt.readonly,
                      "selinuxRelabel": mt.selinux_relabel, "propagation": mt.propagation,
                      "recursiveReadOnly": mt.recursive_read_only})
    return mounts, list(volumes.values()), asked


def resources(lr: pb.LinuxContainerResources) -> Resources:
    r = Resources()
    if lr.memory_limit_in_bytes > 0:
        r.memory = lr.memory_limit_in_bytes
    if lr.cpu_quota > 0:
        period = lr.cpu_period if lr.cpu_period > 0 else 100000
        r.cpu = max(1, -(-lr.cpu_quota * 1000 // period))
    if lr.cpu_shares > 0:
        r.cpu_shares = min(max(lr.cpu_shares, MIN_CPU_SHARES), MAX_CPU_SHARES)
    return r


def resources_dict(lr: pb.LinuxContainerResources) -> dict[str, Any]:
    return {"cpuPeriod": lr.cpu_period, "cpuQuota": lr.cpu_quota, "cpuShares": lr.cpu_shares,
            "memoryLimitInBytes": lr.memory_limit_in_bytes, "oomScoreAdj": lr.oom_score_adj,
            "cpusetCpus": lr.cpuset_cpus, "cpusetMems": lr.cpuset_mems}


def container_app(config: pb.ContainerConfig, sandbox_meta: Mapping[str, Any]) -> tuple[App, list[Volume]]:
    """The app (and the pod volumes its mounts need) for ``CreateContainer``."""
    if not config.HasField("metadata") or not config.metadata.name:
        raise Invalid("ContainerConfig.metadata.name is required")
    if not config.image.image:
        raise Invalid("ContainerConfig.image.image is required")
    linux = config.linux
    sc = linux.security_context
    name = ids.app_name(config.metadata.name, config.metadata.attempt)
    app = App(name=name, image=config.image.image)
    if config.command:
        app.exec = list(config.command)
        app.args = list(config.args)
    elif config.args:
        app.args = list(config.args)
    env: dict[str, str] = {}
    for kv in config.envs:
        if not kv.key:
            raise Invalid("an environment variable has an empty name")
        try:
            env[kv.key] = kv.value.decode()
        except UnicodeDecodeError:
            raise Invalid(f"environment variable {kv.key!r}: the value is not UTF-8") from None
    app.env = env
    if config.working_dir:
        app.working_dir = config.working_dir
    if sc.run_as_username:
        app.user = sc.run_as_username
    elif sc.HasField("run_as_user"):
        app.user = str(sc.run_as_user.value)
    if sc.HasField("run_as_group"):
        if app.user is None:
            raise Invalid("run_as_group needs run_as_user or run_as_username")
        app.group = str(sc.run_as_group.value)
    app.supplementary_gids = [int(g) for g in sc.supplemental_groups]
    app.readonly_rootfs = sc.readonly_rootfs
    app.stdin, app.stdin_once, app.tty = config.stdin, config.stdin_once and config.stdin, config.tty
    app.resources = resources(linux.resources)
    if linux.resources.oom_score_adj:
        app.oom_score_adj = max(-1000, min(1000, linux.resources.oom_score_adj))
    log_dir = sandbox_meta.get("logDirectory") or ""
    if config.log_path:
        path = config.log_path if os.path.isabs(config.log_path) else os.path.join(log_dir, config.log_path)
        if not os.path.isabs(path):
            raise Invalid(f"log_path {config.log_path!r} needs the sandbox's log_directory")
        app.log_path = os.path.normpath(path)
    mounts, volumes, asked = _mounts(config)
    app.mounts = mounts
    app.labels = dict(config.labels)
    meta = {
        "metadata": {"name": config.metadata.name, "attempt": config.metadata.attempt},
        "image": config.image.image,
        "userImage": config.image.user_specified_image,
        "logPath": app.log_path or "",
        "mounts": asked,
        "stopSignal": config.stop_signal,
        "resources": resources_dict(linux.resources),
    }
    app.annotations = dict(config.annotations)
    app.annotations[META] = json.dumps(meta, separators=(",", ":"))
    app.isolators = security_isolators(sc, sandbox_meta)
    if config.CDI_devices:
        raise Unsupported("CDI devices are not supported by this runtime")
    if config.devices:
        app.isolators["devices"] = [{"hostPath": d.host_path, "containerPath": d.container_path or d.host_path,
                                     "permissions": d.permissions or "rwm"} for d in config.devices]
    return app, volumes


def security_isolators(sc: pb.LinuxContainerSecurityContext, sandbox_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The app isolators (:mod:`pypod.pods.isolation`'s names) for a container's Linux security
    context."""
    iso: dict[str, Any] = {}
    if sc.privileged:
        iso["privileged"] = True
    caps = capabilities(sc.capabilities)
    if caps is not None:
        iso["capabilities"] = caps
    if sc.no_new_privs:
        iso["noNewPrivileges"] = True
    if sc.masked_paths:  # the kubelet sends the whole list (or none: the runtime's defaults)
        iso["maskedPaths"] = list(sc.masked_paths)
    if sc.readonly_paths:
        iso["readonlyPaths"] = list(sc.readonly_paths)
    seccomp = _seccomp(sc)
    if seccomp is not None:
        iso["seccomp"] = seccomp
    return iso


def capabilities(caps: pb.Capability) -> dict[str, list[str]] | None:
    """The CRI's add/drop (``ALL`` in either) on the runtime's default set, as the isolation's
    retain or remove set; None for the default set."""
    from pypod.pods.isolation import ALL_CAPABILITIES, caller_capabilities, cap_name
    from pypod.stage1.spec import DEFAULT_CAPABILITIES

    if not caps.add_capabilities and not caps.drop_capabilities:
        return None
    add = [c.upper() for c in caps.add_capabilities]
    drop = [c.upper() for c in caps.drop_capabilities]
    try:
        if "ALL" in add:  # every one this process may hand out (as containerd: its bounding set)
            held = caller_capabilities()
            final = [c for c in ALL_CAPABILITIES if c in held]
        else:
            final = list(DEFAULT_CAPABILITIES)
        final += [cap_name(c) for c in add if c != "ALL" and cap_name(c) not in final]
        if "ALL" in drop:
            final = [cap_name(c) for c in add if c != "ALL"] if "ALL" not in add else []
        else:
            dropped = {cap_name(c) for c in drop}
            final = [c for c in final if c not in dropped]
    except UsageError as e:
        raise Invalid(f"capabilities: {e}") from None
    if not final:  # nothing at all: remove every default one
        return {"remove": list(DEFAULT_CAPABILITIES)}
    if set(final) <= set(DEFAULT_CAPABILITIES):
        removed = [c for c in DEFAULT_CAPABILITIES if c not in final]
        return {"remove": removed} if removed else None
    return {"retain": final}


def _seccomp(sc: pb.LinuxContainerSecurityContext) -> Any:
    """The seccomp isolator for the CRI's profile: None (pypod's default profile) for
    RuntimeDefault, ``"unconfined"`` for Unconfined or no profile at all (the CRI's default),
    ``{"profile": ...}`` with the JSON of a Localhost profile file."""
    if sc.HasField("seccomp"):
        kind = sc.seccomp.profile_type
        if kind == pb.SecurityProfile.Unconfined:
            return "unconfined"
        if kind == pb.SecurityProfile.Localhost:
            return _localhost_profile(sc.seccomp.localhost_ref)
        return None
    old = sc.seccomp_profile_path
    if not old or old == "unconfined":
        return "unconfined"
    if old in ("runtime/default", "docker/default"):
        return None
    if old.startswith("localhost/"):
        return _localhost_profile(old.removeprefix("localhost/"))
    raise Invalid(f"unknown seccomp profile {old!r}")


def _localhost_profile(path: str) -> dict[str, Any]:
    from pypod.pods.isolation import read_profile

    if not path or not os.path.isabs(path):
        raise Invalid(f"a Localhost seccomp profile needs an absolute path, not {path!r}")
    try:
        return {"profile": read_profile(path)}
    except UsageError as e:
        raise Invalid(f"seccomp profile: {e}") from None


# -- results ------------------------------------------------------------------------------------


def signal_name(value: int) -> str | None:
    """A CRI ``Signal`` as pypod's stop takes it (``QUIT``, or a number for the real-time ones);
    None for the runtime's default (the image's StopSignal, else TERM)."""
    import signal

    if not value:
        return None
    name = pb.Signal.Name(value).removeprefix("SIGNAL_SIG")
    if name.startswith("RTMINPLUS"):
        return str(signal.SIGRTMIN + int(name.removeprefix("RTMINPLUS")))
    if name.startswith("RTMAXMINUS"):
        return str(signal.SIGRTMAX - int(name.removeprefix("RTMAXMINUS")))
    if name in ("RTMIN", "RTMAX"):
        return str(int(getattr(signal, "SIG" + name)))
    return name


def ns(seconds: float | None) -> int:
    return int(round(seconds * 1e9)) if seconds else 0


CONTAINER_STATES = {"created": pb.CONTAINER_CREATED, "running": pb.CONTAINER_RUNNING,
                    "exited": pb.CONTAINER_EXITED}


def container_state(state: str) -> int:
    return CONTAINER_STATES.get(state, pb.CONTAINER_UNKNOWN)


def exit_reason(exit_code: int | None, oom_killed: bool) -> str:
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"
