"""The pod manifest: a versioned JSON document that says everything about a pod.

``pypod run`` builds one from rkt-style flags (:func:`pypod.pods.flags.build_from_flags`), ``--pod-manifest FILE``
takes one whole (:meth:`PodManifest.from_json`), drivers build one from their own protocol. The
stage1 reads only this document (and the image configs it names) to set the pod up.

JSON keys are camelCase (appc's style); Python attributes are snake_case. A document::

    {"pypodVersion": 1, "kind": "PodManifest",
     "apps": [{"name": "web", "image": "nginx", "imageID": "sha256:...",
               "exec": ["/bin/sh", "-c"], "args": ["nginx -g 'daemon off;'"],
               "env": {"A": "1"}, "user": "www-data", "group": "101",
               "supplementaryGids": [27], "workingDir": "/srv",
               "mounts": [{"volume": "data", "target": "/data", "readOnly": true}],
               "resources": {"memory": 134217728, "memoryReservation": 67108864, "cpu": "500m",
                             "cpuShares": 512, "pids": 100},
               "restartPolicy": {"policy": "on-failure", "maxRetries": 3, "backoff": 1.0,
                                 "maxBackoff": 300.0},
               "readOnlyRootfs": false, "stdin": false, "stdinOnce": false, "tty": false, "oomScoreAdj": 0,
               "logPath": "/var/log/pods/ns_web_1/web/0.log",
               "annotations": {}, "labels": {}, "isolators": {}}],
     "volumes": [{"name": "data", "kind": "host", "source": "/srv/data", "readOnly": false,
                  "propagation": "rslave"}],
     "hostname": "web-1", "dns": {"servers": ["10.0.0.2"], "search": ["example.org"]},
     "hosts": [{"ip": "10.0.0.5", "hostnames": ["db"]}],
     "ports": [{"containerPort": 80, "protocol": "tcp", "hostPort": 8080},
               {"name": "53-udp", "hostPort": 5353}],
     "networks": [{"name": "default"}], "netns": null, "exitPolicy": "all-exited",
     "stage1": "oci", "runtime": null, "mutable": false,
     "annotations": {}, "labels": {}, "isolators": {}}

``isolators`` (pod and app) is the open slot for capabilities, seccomp, sysctls, privileged and
user namespaces: a JSON object kept as is, whose entries a later issue validates.

A port given by ``name`` (rkt's ``--port NAME:HOSTPORT``, e.g. ``80-tcp`` for an image's
``ExposedPorts`` key ``80/tcp``) may omit ``containerPort`` and ``protocol``: the engine fills them
in from the apps' image configs when it prepares the pod, and keeps the name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UsageError

SCHEMA_VERSION = 1
KIND = "PodManifest"

VOLUME_KINDS = ("host", "empty", "tmpfs")
PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared")
EXIT_POLICIES = ("all-exited", "any-exited", "any-failed")
RESTART_POLICIES = ("never", "on-failure", "always")
STAGE1_FLAVORS = ("oci", "fly")
RUNTIMES = ("crun", "runc")
DNS_MODES = ("host", "none")  # None: pypod writes resolv.conf from the settings (or the host's)
HOSTS_MODES = ("host",)  # None: pypod generates /etc/hosts
PID_MODES = ("app", "pod", "host")  # app: one pid namespace per app (CRI's CONTAINER)
IPC_MODES = ("pod", "host")
PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
_NET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PORT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_KEY_RE = re.compile(r"[^=\x00]+")
_MAX_ID = (1 << 32) - 2


# -- quantities -----------------------------------------------------------------------------

_QTY_RE = re.compile(r"([0-9]+)(?:\.([0-9]*))?(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE]|[eE][+-]?[0-9]{1,2})?")
_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def _quantity(text: str) -> tuple[int, int, str]:
    """A Kubernetes quantity as an exact fraction (numerator, denominator) and its suffix."""
    m = _QTY_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(text)
    whole, frac, suffix = m.group(1), m.group(2) or "", m.group(3) or ""
    num, den = int(whole + frac), 10 ** len(frac)
    if suffix in _BINARY:
        num *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        num *= _DECIMAL[suffix]
    elif suffix == "m":
        den *= 1000
    elif suffix:
        exp = int(suffix[1:])
        if exp >= 0:
            num *= 10**exp
        else:
            den *= 10**-exp
    return num, den, suffix


def parse_memory(value: str | int) -> int:
    """Bytes from a Kubernetes memory quantity: ``128Mi``, ``1G``, ``1.5Gi``, ``129e6``, ``1000``.

    Fractions of a byte round up, as Kubernetes does. ``m`` (milli) is refused: ``100m`` is a
    tenth of a byte, almost certainly a typo for ``100Mi``.
    """
    if isinstance(value, bool):
        raise UsageError(f"invalid quantity {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"invalid quantity {value!r}: negative")
        return value
    try:
        num, den, suffix = _quantity(value)
    except (ValueError, TypeError):
        raise UsageError(f"invalid quantity {value!r} (expected e.g. 128Mi, 1G, 512000000)") from None
    if suffix == "m":
        raise UsageError(f"invalid quantity {value!r}: memory in thousandths of a byte (did you mean "
                         f"{value[:-1]}Mi?)")
    out = -(-num // den)
    if out >= 1 << 63:
        raise UsageError(f"invalid quantity {value!r}: too large")
    return out


def parse_cpu(value: str) -> int:
    """Millicores from a Kubernetes CPU quantity: ``500m`` is 500, ``2`` is 2000, ``0.25`` is 250."""
    if not isinstance(value, str):
        raise UsageError(f"invalid CPU quantity {value!r} (expected a string such as '500m' or '2')")
    try:
        num, den, _ = _quantity(value)
    except ValueError:
        raise UsageError(f"invalid CPU quantity {value!r} (expected e.g. 500m, 2, 0.5)") from None
    milli, rest = divmod(num * 1000, den)
    if rest:
        raise UsageError(f"invalid CPU quantity {value!r}: finer than 1m (a thousandth of a CPU)")
    if milli >= 1 << 31:
        raise UsageError(f"invalid CPU quantity {value!r}: too large")
    return milli


def format_cpu(millicores: int) -> str:
    """The canonical quantity for ``millicores``: ``2`` for 2000, ``500m`` for 500."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


def parse_bool(value: str | bool, what: str = "") -> bool:
    if isinstance(value, bool):
        return value
    low = value.strip().lower()
    if low in ("true", "1", "yes", "on", ""):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{_prefix(what)}expected true or false, not {value!r}")


def parse_kv(text: str, what: str = "") -> tuple[str, str]:
    """``K=V`` (V may be empty, and may contain '=')."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"{_prefix(what)}expected KEY=VALUE, not {text!r}")
    return key, value


def parse_options(text: str, what: str = "") -> dict[str, str]:
    """rkt's ``k=v,k2=v2`` option lists (keys lower-cased, so ``readOnly`` and ``readonly`` agree)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"{_prefix(what)}expected key=value, not {part!r}")
        out[key.strip().lower()] = value.strip()
    return out


# -- the model ------------------------------------------------------------------------------


@dataclass
class Mount:
    """An app's use of a pod volume: ``volume`` mounted at ``target`` inside the app."""

    volume: str
    target: str
    read_only: bool | None = None  # None: as the volume says
    recursive_read_only: bool = False  # read-only down to every submount (the runtime's "rro": crun)


@dataclass
class Resources:
    memory: int | None = None  # bytes: the hard limit
    memory_reservation: int | None = None  # bytes: the soft limit (v1 memory.soft_limit_in_bytes, v2 memory.low)
    cpu: int | None = None  # millicores (a limit: CFS quota)
    cpu_shares: int | None = None  # relative weight (cgroup v1 shares; converted to weight on v2)
    pids: int | None = None  # max number of tasks
    cpuset_cpus: str | None = None  # the CPUs the app may run on ("0-3,6"): reserved cores

    def is_empty(self) -> bool:
        return self.memory is None and self.memory_reservation is None and self.cpu is None \
            and self.cpu_shares is None and self.pids is None and self.cpuset_cpus is None


@dataclass
class RestartPolicy:
    policy: str = "never"
    max_retries: int | None = None  # on-failure: None is unlimited
    backoff: float = 1.0  # seconds before the first restart, doubled each time...
    max_backoff: float = 300.0  # ...up to this


@dataclass
class App:
    name: str
    image: str  # as the user gave it
    image_id: str | None = None  # resolved: sha256:<config digest>
    exec: list[str] | None = None  # replaces the image's Entrypoint *and* Cmd (Docker's rule)
    args: list[str] | None = None  # replaces the image's Cmd
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # name or number, resolved through the image's /etc/passwd
    group: str | None = None  # name or number, resolved through the image's /etc/group
    supplementary_gids: list[int] = field(default_factory=list)
    working_dir: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    readonly_rootfs: bool = False
    stdin: bool = False
    stdin_once: bool = False  # stdin closes when the first attached client closes its stdin
    tty: bool = False
    oom_score_adj: int | None = None
    log_path: str | None = None  # the app's CRI log file (absolute); None: in the pod's stage1 dir
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    isolators: dict[str, Any] = field(default_factory=dict)


@dataclass
class Volume:
    name: str
    kind: str  # host | empty | tmpfs
    source: str | None = None  # host: the host path
    read_only: bool = False
    propagation: str | None = None  # None: rprivate (fly: rshared, as rkt)
    recursive: bool = True  # host: rbind
    mode: str | None = None  # empty, tmpfs: octal permissions of the new directory
    uid: int | None = None
    gid: int | None = None
    size: int | None = None  # tmpfs: bytes


@dataclass
class DNS:
    mode: str | None = None  # None: generated; "host": the host's resolv.conf; "none": the image's
    servers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    domain: str | None = None

    def is_empty(self) -> bool:
        return not (self.mode or self.servers or self.search or self.options or self.domain)


@dataclass
class HostsEntry:
    ip: str
    hostnames: list[str]


@dataclass
class Port:
    container_port: int  # 0: a named port not resolved yet
    protocol: str = "tcp"  # "": a named port's, from the image
    host_port: int = 0  # 0: not published
    host_ip: str | None = None
    name: str | None = None  # an image-declared port (80-tcp), resolved at prepare time


@dataclass
class Network:
    name: str  # default | host | none | a named CNI network
    args: dict[str, str] = field(default_factory=dict)  # CNI_ARGS


@dataclass
class PodManifest:
    apps: list[App] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    hostname: str | None = None  # None: the stage1 uses pypod-<uuid>
    dns: DNS = field(default_factory=DNS)
    hosts: list[HostsEntry] = field(default_factory=list)
    hosts_mode: str | None = None
    ports: list[Port] = field(default_factory=list)
    networks: list[Network] = field(default_factory=lambda: [Network("default")])
    netns: str | None = None  # join this existing network namespace (a path) instead of attaching networks
    cgroup_parent: str | None = None  # the pod's cgroups go below this (absolute); None: /pypod
    exit_policy: str = "all-exited"
    stage1: str = "oci"
    runtime: str | None = None  # None: the configured or probed default
    mutable: bool = False
    pid_mode: str = "app"
    ipc_mode: str = "pod"
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    isolators: dict[str, Any] = field(default_factory=dict)

    # -- lookups --------------------------------------------------------------------------
    def app(self, name: str) -> App | None:
        for a in self.apps:
            if a.name == name:
                return a
        return None

    def volume(self, name: str) -> Volume | None:
        for v in self.volumes:
            if v.name == name:
                return v
        return None

    # -- serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _pod_to_dict(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, doc: Any, *, validate: bool = True) -> "PodManifest":
        pod = _pod_from_dict(doc)
        if validate:
            pod.validate()
        return pod

    @classmethod
    def from_json(cls, text: str | bytes, *, validate: bool = True) -> "PodManifest":
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"pod manifest: not valid JSON ({e})") from None
        return cls.from_dict(doc, validate=validate)

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> "PodManifest":
        """Check every field; raise UsageError naming the first bad one (``apps[1].name: ...``)."""
        _validate_pod(self)
        return self


# -- validation -----------------------------------------------------------------------------


def _fail(path: str, msg: str) -> UsageError:
    return UsageError(f"{path}: {msg}")


def _check_name(value: str, path: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _fail(path, f"invalid {what} {value!r} (lower-case letters, digits, '.', '_' and '-', "
                          "starting and ending with a letter or digit, at most 63 characters)")


def _check_abs_path(value: str, path: str) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _fail(path, f"must be an absolute path, not {value!r}")
    if "\x00" in value:
        raise _fail(path, "contains a NUL byte")
    if ".." in value.split("/"):
        raise _fail(path, f"must not contain '..': {value!r}")


def _check_ip(value: str, path: str) -> None:
    import ipaddress  # only validation needs it

    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _fail(path, f"invalid IP address {value!r}") from None


def _check_hostname(value: str, path: str) -> None:
    if not value or len(value) > 253 or not all(_HOST_LABEL_RE.fullmatch(p) for p in value.split(".")):
        raise _fail(path, f"invalid hostname {value!r}")


def _check_id(value: str, path: str, what: str) -> None:
    """A user or group: a number or a name."""
    if not isinstance(value, str) or not value:
        raise _fail(path, f"empty {what}")
    if value.isdigit():
        if int(value) > _MAX_ID:
            raise _fail(path, f"{what} {value} out of range")
    elif not _USER_RE.fullmatch(value):
        raise _fail(path, f"invalid {what} {value!r} (a number or a name)")


def _check_map(d: Mapping[str, str], path: str) -> None:
    for k in d:
        if not k:
            raise _fail(path, "empty key")


def _check_int(value: int | None, path: str, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise _fail(path, f"{value} out of range [{lo}, {hi}]")


def _check_choice(value: str | None, path: str, choices: Sequence[str], *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise _fail(path, f"invalid value {value!r} (one of: {', '.join(choices)})")


def _validate_app(app: App, p: str, volumes: Mapping[str, Volume]) -> None:
    _check_name(app.name, p + ".name", "app name")
    if not isinstance(app.image, str) or not app.image.strip():
        raise _fail(p + ".image", "empty image name")
    if app.image_id is not None and not _IMAGE_ID_RE.fullmatch(app.image_id):
        raise _fail(p + ".imageID", f"invalid image ID {app.image_id!r} (expected sha256:<64 hex digits>)")
    if app.exec is not None and app.exec and not app.exec[0]:
        raise _fail(p + ".exec[0]", "empty executable")
    for k, v in app.env.items():
        if not _ENV_KEY_RE.fullmatch(k):
            raise _fail(f"{p}.env", f"invalid variable name {k!r}")
        if "\x00" in v:
            raise _fail(f"{p}.env.{k}", "contains a NUL byte")
    if app.user is not None:
        _check_id(app.user, p + ".user", "user")
    if app.group is not None:
        _check_id(app.group, p + ".group", "group")
    for j, gid in enumerate(app.supplementary_gids):
        _check_int(gid, f"{p}.supplementaryGids[{j}]", 0, _MAX_ID)
    if app.working_dir is not None:
        _check_abs_path(app.working_dir, p + ".workingDir")
    targets: set[str] = set()
    for j, m in enumerate(app.mounts):
        mp = f"{p}.mounts[{j}]"
        if m.volume not in volumes:
            raise _fail(mp + ".volume", f"no pod volume named {m.volume!r}")
        _check_abs_path(m.target, mp + ".target")
        norm = "/" + "/".join(s for s in m.target.split("/") if s and s != ".")
        if norm in targets:
            raise _fail(mp + ".target", f"duplicate mount target {m.target!r}")
        targets.add(norm)
        if m.recursive_read_only:
            vol = volumes[m.volume]
            if not (vol.read_only if m.read_only is None else m.read_only):
                raise _fail(mp + ".recursiveReadOnly", "needs a read-only mount")
            if vol.propagation not in (None, "private", "rprivate"):
                raise _fail(mp + ".recursiveReadOnly", f"needs private propagation, not {vol.propagation!r}")
    r, rp = app.resources, p + ".resources"
    _check_int(r.memory, rp + ".memory", 1, (1 << 63) - 1)
    _check_int(r.memory_reservation, rp + ".memoryReservation", 1, (1 << 63) - 1)
    if r.memory is not None and r.memory_reservation is not None and r.memory_reservation > r.memory:
        raise _fail(rp + ".memoryReservation", f"{r.memory_reservation} is above the memory limit {r.memory}")
    _check_int(r.cpu, rp + ".cpu", 1, (1 << 31) - 1)
    _check_int(r.cpu_shares, rp + ".cpuShares", 2, 262144)
    _check_int(r.pids, rp + ".pids", 1, (1 << 31) - 1)
    if r.cpuset_cpus is not None and not re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", r.cpuset_cpus):
        raise _fail(rp + ".cpusetCpus", f"expected a CPU list such as 0-3,6, not {r.cpuset_cpus!r}")
    rs, rsp = app.restart, p + ".restartPolicy"
    _check_choice(rs.policy, rsp + ".policy", RESTART_POLICIES)
    if rs.max_retries is not None:
        _check_int(rs.max_retries, rsp + ".maxRetries", 0, (1 << 31) - 1)
    if not rs.backoff > 0:
        raise _fail(rsp + ".backoff", f"must be positive, not {rs.backoff}")
    if not rs.max_backoff >= rs.backoff:
        raise _fail(rsp + ".maxBackoff", f"must be at least backoff ({rs.backoff}), not {rs.max_backoff}")
    _check_int(app.oom_score_adj, p + ".oomScoreAdj", -1000, 1000)
    if app.stdin_once and not app.stdin:
        raise _fail(p + ".stdinOnce", "needs stdin")
    if app.log_path is not None:
        _check_abs_path(app.log_path, p + ".logPath")
    _check_map(app.annotations, p + ".annotations")
    _check_map(app.labels, p + ".labels")


def _validate_volume(v: Volume, p: str) -> None:
    _check_name(v.name, p + ".name", "volume name")
    _check_choice(v.kind, p + ".kind", VOLUME_KINDS)
    if v.kind == "host":
        if v.source is None:
            raise _fail(p + ".source", "a host volume needs a source")
        _check_abs_path(v.source, p + ".source")
    elif v.source is not None:
        raise _fail(p + ".source", f"only host volumes have a source (this one is {v.kind})")
    _check_choice(v.propagation, p + ".propagation", PROPAGATIONS, optional=True)
    if v.mode is not None:
        if v.kind == "host":
            raise _fail(p + ".mode", "host volumes keep the source's permissions")
        if not re.fullmatch(r"0?[0-7]{3,4}", v.mode):
            raise _fail(p + ".mode", f"invalid mode {v.mode!r} (octal, e.g. 0755)")
    for key, val in (("uid", v.uid), ("gid", v.gid)):
        if val is not None:
            if v.kind == "host":
                raise _fail(f"{p}.{key}", "host volumes keep the source's owner")
            _check_int(val, f"{p}.{key}", 0, _MAX_ID)
    if v.size is not None:
        if v.kind != "tmpfs":
            raise _fail(p + ".size", "only tmpfs volumes have a size")
        _check_int(v.size, p + ".size", 1, (1 << 63) - 1)


def _validate_pod(pod: PodManifest) -> None:
    vols: dict[str, Volume] = {}
    for i, v in enumerate(pod.volumes):
        _validate_volume(v, f"volumes[{i}]")
        if v.name in vols:
            raise _fail(f"volumes[{i}].name", f"duplicate volume name {v.name!r}")
        vols[v.name] = v
    if not pod.apps and not pod.mutable:
        raise _fail("apps", "a pod needs at least one app (only mutable pods start empty)")
    names: set[str] = set()
    for i, app in enumerate(pod.apps):
        _validate_app(app, f"apps[{i}]", vols)
        if app.name in names:
            raise _fail(f"apps[{i}].name", f"duplicate app name {app.name!r}")
        names.add(app.name)
    if pod.hostname is not None:
        _check_hostname(pod.hostname, "hostname")
    d = pod.dns
    _check_choice(d.mode, "dns.mode", DNS_MODES, optional=True)
    if d.mode and (d.servers or d.search or d.options or d.domain):
        raise _fail("dns", f"mode {d.mode!r} takes no servers, search, options or domain")
    for i, s in enumerate(d.servers):
        _check_ip(s, f"dns.servers[{i}]")
    for i, s in enumerate(d.search):
        _check_hostname(s, f"dns.search[{i}]")
    for i, o in enumerate(d.options):
        if not o or any(c.isspace() for c in o):
            raise _fail(f"dns.options[{i}]", f"invalid option {o!r}")
    if d.domain is not None:
        _check_hostname(d.domain, "dns.domain")
    _check_choice(pod.hosts_mode, "hostsMode", HOSTS_MODES, optional=True)
    if pod.hosts_mode and pod.hosts:
        raise _fail("hosts", "hostsMode 'host' takes no entries")
    for i, h in enumerate(pod.hosts):
        _check_ip(h.ip, f"hosts[{i}].ip")
        if not h.hostnames:
            raise _fail(f"hosts[{i}].hostnames", "no hostnames")
        for j, n in enumerate(h.hostnames):
            _check_hostname(n, f"hosts[{i}].hostnames[{j}]")
    published: set[tuple[str | None, int, str]] = set()
    for i, pt in enumerate(pod.ports):
        pp = f"ports[{i}]"
        if pt.name is not None and not _PORT_NAME_RE.fullmatch(pt.name):
            raise _fail(pp + ".name", f"invalid port name {pt.name!r}")
        if pt.name is not None and not pt.container_port:  # resolved from the images at prepare time
            _check_choice(pt.protocol or None, pp + ".protocol", PROTOCOLS, optional=True)
        else:
            _check_int(pt.container_port, pp + ".containerPort", 1, 65535)
            _check_choice(pt.protocol, pp + ".protocol", PROTOCOLS)
        _check_int(pt.host_port, pp + ".hostPort", 0, 65535)
        if pt.host_ip is not None:
            _check_ip(pt.host_ip, pp + ".hostIP")
        if pt.host_port:
            key = (pt.host_ip, pt.host_port, pt.protocol)
            if key in published:
                raise _fail(pp + ".hostPort", f"{pt.host_port}/{pt.protocol} is published twice")
            published.add(key)
    if not pod.networks:
        raise _fail("networks", "no networks (use 'none' for loopback only)")
    seen_nets: set[str] = set()
    for i, n in enumerate(pod.networks):
        if not isinstance(n.name, str) or not _NET_NAME_RE.fullmatch(n.name):
            raise _fail(f"networks[{i}].name", f"invalid network name {n.name!r}")
        if n.name in seen_nets:
            raise _fail(f"networks[{i}].name", f"duplicate network {n.name!r}")
        seen_nets.add(n.name)
        if n.name in ("host", "none") and len(pod.networks) > 1:
            raise _fail(f"networks[{i}]", f"network {n.name!r} cannot be combined with others")
        _check_map(n.args, f"networks[{i}].args")
    if pod.cgroup_parent is not None:
        _check_abs_path(pod.cgroup_parent, "cgroupParent")
    if pod.netns is not None:
        _check_abs_path(pod.netns, "netns")
        if pod.ports:
            raise _fail("ports", "ports cannot be published into a joined network namespace (netns)")
    if pod.ports and any(n.name in ("host", "none") for n in pod.networks):
        raise _fail("ports", f"ports cannot be published with network {pod.networks[0].name!r}")
    _check_choice(pod.exit_policy, "exitPolicy", EXIT_POLICIES)
    _check_choice(pod.stage1, "stage1", STAGE1_FLAVORS)
    _check_choice(pod.runtime, "runtime", RUNTIMES, optional=True)
    _check_choice(pod.pid_mode, "pidMode", PID_MODES)
    _check_choice(pod.ipc_mode, "ipcMode", IPC_MODES)
    _check_map(pod.annotations, "annotations")
    _check_map(pod.labels, "labels")
    if pod.stage1 == "fly":
        if pod.mutable:
            raise _fail("mutable", "stage1 fly cannot run mutable pods")
        if len(pod.apps) != 1:
            raise _fail("apps", f"stage1 fly runs exactly one app, not {len(pod.apps)}")
        if [n.name for n in pod.networks] != ["host"]:
            raise _fail("networks", "stage1 fly runs in the host's network namespace (use --net=host)")
        for i, app in enumerate(pod.apps):
            if not app.resources.is_empty():
                raise _fail(f"apps[{i}].resources", "stage1 fly has no resource isolation")
    from .isolation import validate as validate_isolation  # capabilities, seccomp, sysctls, userns

    validate_isolation(pod)


# -- JSON -----------------------------------------------------------------------------------


class _Obj:
    """Typed reads from one JSON object, naming ``path.key`` in errors; unknown keys are errors."""

    def __init__(self, value: Any, path: str):
        if not isinstance(value, dict):
            raise _fail(path or "manifest", "expected a JSON object")
        self.d, self.path, self.seen = value, path, set()

    def p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.d.get(key)

    def s(self, key: str, default: str | None = None) -> str | None:
        v = self.raw(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise _fail(self.p(key), f"expected a string, not {type(v).__name__}")
        return v

    def req(self, key: str) -> str:
        v = self.s(key)
        if v is None:
            raise _fail(self.p(key), "missing")
        return v

    def b(self, key: str, default: bool = False) -> bool:
        v = self.raw(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise _fail(self.p(key), f"expected true or false, not {v!r}")
        return v

    def i(self, key: str) -> int | None:
        v = self.raw(key)
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            raise _fail(self.p(key), f"expected an integer, not {v!r}")
        return v

    def f(self, key: str, default: float) -> float:
        v = self.raw(key)
        if v is None:
            return default
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise _fail(self.p(key), f"expected a number of seconds, not {v!r}")
        return float(v)

    def strs(self, key: str) -> list[str] | None:
        v = self.raw(key)
        if v is None:
            return None
        if not isinstance(v, list):
            raise _fail(self.p(key), "expected a list of strings")
        for j, x in enumerate(v):
            if not isinstance(x, str):
                raise _fail(f"{self.p(key)}[{j}]", f"expected a string, not {type(x).__name__}")
        return list(v)

    def ints(self, key: str) -> list[int]:
        v = self.raw(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise _fail(self.p(key), "expected a list of integers")
        for j, x in enumerate(v):
            if not isinstance(x, int) or isinstance(x, bool):
                raise _fail(f"{self.p(key)}[{j}]", f"expected an integer, not {x!r}")
        return list(v)

    def smap(self, key: str) -> dict[str, str]:
        v = self.raw(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise _fail(self.p(key), "expected an object of strings")
        for k, x in v.items():
            if not isinstance(x, str):
                raise _fail(f"{self.p(key)}.{k}", f"expected a string, not {type(x).__name__}")
        return dict(v)

    def anymap(self, key: str) -> dict[str, Any]:
        v = self.raw(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise _fail(self.p(key), "expected an object")
        return dict(v)

    def objs(self, key: str) -> list["_Obj"]:
        v = self.raw(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise _fail(self.p(key), "expected a list of objects")
        return [_Obj(x, f"{self.p(key)}[{j}]") for j, x in enumerate(v)]

    def obj(self, key: str) -> "_Obj | None":
        v = self.raw(key)
        return None if v is None else _Obj(v, self.p(key))

    def done(self) -> None:
        extra = [k for k in self.d if k not in self.seen]
        if extra:
            raise _fail(self.p(extra[0]), "unknown field")


def _app_from(o: _Obj) -> App:
    app = App(name=o.req("name"), image=o.req("image"), image_id=o.s("imageID"))
    app.exec = o.strs("exec")
    app.args = o.strs("args")
    app.env = o.smap("env")
    app.user, app.group = o.s("user"), o.s("group")
    app.supplementary_gids = o.ints("supplementaryGids")
    app.working_dir = o.s("workingDir")
    for mo in o.objs("mounts"):
        ro = mo.raw("readOnly")
        if ro is not None and not isinstance(ro, bool):
            raise _fail(mo.p("readOnly"), f"expected true or false, not {ro!r}")
        app.mounts.append(Mount(volume=mo.req("volume"), target=mo.req("target"), read_only=ro,
                                recursive_read_only=mo.b("recursiveReadOnly")))
        mo.done()
    ro_ = o.obj("resources")
    if ro_ is not None:
        for key, attr in (("memory", "memory"), ("memoryReservation", "memory_reservation")):
            mem = ro_.raw(key)
            if mem is not None:
                try:
                    setattr(app.resources, attr, parse_memory(mem))
                except UsageError as e:
                    raise _fail(ro_.p(key), str(e)) from None
        cpu = ro_.raw("cpu")
        if cpu is not None:
            try:
                app.resources.cpu = parse_cpu(cpu)
            except UsageError as e:
                raise _fail(ro_.p("cpu"), str(e)) from None
        app.resources.cpu_shares = ro_.i("cpuShares")
        app.resources.pids = ro_.i("pids")
        app.resources.cpuset_cpus = ro_.s("cpusetCpus")
        ro_.done()
    rp = o.obj("restartPolicy")
    if rp is not None:
        app.restart = RestartPolicy(policy=rp.s("policy", "never") or "never", max_retries=rp.i("maxRetries"),
                                    backoff=rp.f("backoff", 1.0), max_backoff=rp.f("maxBackoff", 300.0))
        rp.done()
    app.readonly_rootfs = o.b("readOnlyRootfs")
    app.stdin, app.stdin_once, app.tty = o.b("stdin"), o.b("stdinOnce"), o.b("tty")
    app.oom_score_adj = o.i("oomScoreAdj")
    app.log_path = o.s("logPath")
    app.annotations, app.labels = o.smap("annotations"), o.smap("labels")
    app.isolators = o.anymap("isolators")
    o.done()
    return app


def _pod_from_dict(doc: Any) -> PodManifest:
    o = _Obj(doc, "")
    version = o.raw("pypodVersion")
    if version != SCHEMA_VERSION:
        raise _fail("pypodVersion", f"unsupported version {version!r} (this pypod reads {SCHEMA_VERSION})")
    if o.raw("kind") != KIND:
        raise _fail("kind", f"expected {KIND!r}, not {o.d.get('kind')!r}")
    pod = PodManifest()
    pod.apps = [_app_from(a) for a in o.objs("apps")]
    for vo in o.objs("volumes"):
        pod.volumes.append(Volume(
            name=vo.req("name"), kind=vo.req("kind"), source=vo.s("source"), read_only=vo.b("readOnly"),
            propagation=vo.s("propagation"), recursive=vo.b("recursive", True), mode=vo.s("mode"),
            uid=vo.i("uid"), gid=vo.i("gid"), size=None))
        size = vo.raw("size")
        if size is not None:
            try:
                pod.volumes[-1].size = parse_memory(size)
            except UsageError as e:
                raise _fail(vo.p("size"), str(e)) from None
        vo.done()
    pod.hostname = o.s("hostname")
    do = o.obj("dns")
    if do is not None:
        pod.dns = DNS(mode=do.s("mode"), servers=do.strs("servers") or [], search=do.strs("search") or [],
                      options=do.strs("options") or [], domain=do.s("domain"))
        do.done()
    for ho in o.objs("hosts"):
        pod.hosts.append(HostsEntry(ip=ho.req("ip"), hostnames=ho.strs("hostnames") or []))
        ho.done()
    pod.hosts_mode = o.s("hostsMode")
    for po in o.objs("ports"):
        cp = po.i("containerPort")
        name = po.s("name")
        if cp is None and name is None:
            raise _fail(po.p("containerPort"), "missing")
        proto = po.s("protocol") or ("" if name is not None and not cp else "tcp")
        pod.ports.append(Port(container_port=cp or 0, protocol=proto, host_port=po.i("hostPort") or 0,
                              host_ip=po.s("hostIP"), name=name))
        po.done()
    stage1 = o.s("stage1", "oci") or "oci"
    if o.raw("networks") is None:
        pod.networks = [Network("host" if stage1 == "fly" else "default")]
    else:
        pod.networks = []
        for no in o.objs("networks"):
            pod.networks.append(Network(name=no.req("name"), args=no.smap("args")))
            no.done()
    pod.netns = o.s("netns")
    pod.cgroup_parent = o.s("cgroupParent")
    pod.exit_policy = o.s("exitPolicy", "all-exited") or "all-exited"
    pod.stage1 = stage1
    pod.runtime = o.s("runtime")
    pod.mutable = o.b("mutable")
    pod.pid_mode = o.s("pidMode", "app") or "app"
    pod.ipc_mode = o.s("ipcMode", "pod") or "pod"
    pod.annotations, pod.labels = o.smap("annotations"), o.smap("labels")
    pod.isolators = o.anymap("isolators")
    o.done()
    return pod


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is None or an empty collection: documents stay short."""
    if value is None or (isinstance(value, (list, dict)) and not value):
        return
    d[key] = value


def _app_to_dict(a: App) -> dict[str, Any]:
    d: dict[str, Any] = {"name": a.name, "image": a.image}
    _put(d, "imageID", a.image_id)
    if a.exec is not None:
        d["exec"] = list(a.exec)  # [] is meaningful: it clears the image's entrypoint
    if a.args is not None:
        d["args"] = list(a.args)
    _put(d, "env", dict(a.env))
    _put(d, "user", a.user)
    _put(d, "group", a.group)
    _put(d, "supplementaryGids", list(a.supplementary_gids))
    _put(d, "workingDir", a.working_dir)
    mounts = []
    for m in a.mounts:
        md: dict[str, Any] = {"volume": m.volume, "target": m.target}
        _put(md, "readOnly", m.read_only)
        if m.recursive_read_only:
            md["recursiveReadOnly"] = True
        mounts.append(md)
    _put(d, "mounts", mounts)
    r: dict[str, Any] = {}
    _put(r, "memory", a.resources.memory)
    _put(r, "memoryReservation", a.resources.memory_reservation)
    _put(r, "cpu", None if a.resources.cpu is None else format_cpu(a.resources.cpu))
    _put(r, "cpuShares", a.resources.cpu_shares)
    _put(r, "pids", a.resources.pids)
    _put(r, "cpusetCpus", a.resources.cpuset_cpus)
    _put(d, "resources", r)
    if a.restart != RestartPolicy():
        rp: dict[str, Any] = {"policy": a.restart.policy}
        _put(rp, "maxRetries", a.restart.max_retries)
        rp["backoff"], rp["maxBackoff"] = a.restart.backoff, a.restart.max_backoff
        d["restartPolicy"] = rp
    for key, flag in (("readOnlyRootfs", a.readonly_rootfs), ("stdin", a.stdin), ("stdinOnce", a.stdin_once),
                      ("tty", a.tty)):
        if flag:
            d[key] = True
    _put(d, "oomScoreAdj", a.oom_score_adj)
    _put(d, "logPath", a.log_path)
    _put(d, "annotations", dict(a.annotations))
    _put(d, "labels", dict(a.labels))
    _put(d, "isolators", dict(a.isolators))
    return d


def _pod_to_dict(p: PodManifest) -> dict[str, Any]:
    d: dict[str, Any] = {"pypodVersion": SCHEMA_VERSION, "kind": KIND,
                         "apps": [_app_to_dict(a) for a in p.apps]}
    vols = []
    for v in p.volumes:
        vd: dict[str, Any] = {"name": v.name, "kind": v.kind}
        _put(vd, "source", v.source)
        if v.read_only:
            vd["readOnly"] = True
        _put(vd, "propagation", v.propagation)
        if not v.recursive:
            vd["recursive"] = False
        for key in ("mode", "uid", "gid", "size"):
            _put(vd, key, getattr(v, key))
        vols.append(vd)
    _put(d, "volumes", vols)
    _put(d, "hostname", p.hostname)
    if not p.dns.is_empty():
        dd: dict[str, Any] = {}
        _put(dd, "mode", p.dns.mode)
        _put(dd, "servers", list(p.dns.servers))
        _put(dd, "search", list(p.dns.search))
        _put(dd, "options", list(p.dns.options))
        _put(dd, "domain", p.dns.domain)
        d["dns"] = dd
    _put(d, "hosts", [{"ip": h.ip, "hostnames": list(h.hostnames)} for h in p.hosts])
    _put(d, "hostsMode", p.hosts_mode)
    ports = []
    for pt in p.ports:
        pd = {"name": pt.name} if pt.name is not None else {}
        if pt.container_port or pt.name is None:
            pd["containerPort"] = pt.container_port
        if pt.protocol:
            pd["protocol"] = pt.protocol
        if pt.host_port:
            pd["hostPort"] = pt.host_port
        _put(pd, "hostIP", pt.host_ip)
        ports.append(pd)
    _put(d, "ports", ports)
    nets = []
    for n in p.networks:
        nd: dict[str, Any] = {"name": n.name}
        _put(nd, "args", dict(n.args))
        nets.append(nd)
    d["networks"] = nets
    _put(d, "netns", p.netns)
    _put(d, "cgroupParent", p.cgroup_parent)
    d["exitPolicy"] = p.exit_policy
    d["stage1"] = p.stage1
    d["runtime"] = p.runtime
    d["mutable"] = p.mutable
    if p.pid_mode != "app":
        d["pidMode"] = p.pid_mode
    if p.ipc_mode != "pod":
        d["ipcMode"] = p.ipc_mode
    _put(d, "annotations", dict(p.annotations))
    _put(d, "labels", dict(p.labels))
    _put(d, "isolators", dict(p.isolators))
    return d


# -- environment and process ----------------------------------------------------------------


def merge_env(*layers: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    """Merge environment layers, later ones winning: ``merge_env(image_env, manifest_env,
    flag_env)`` gives image < manifest < flags. A layer is a mapping or an image-config style
    list of ``K=V`` strings (a bare ``K`` there means an empty value)."""
    out: dict[str, str] = {}
    for layer in layers:
        if not layer:
            continue
        if isinstance(layer, Mapping):
            out.update(layer)
        else:
            for item in layer:
                k, _, v = item.partition("=")
                if k:
                    out[k] = v
    return out


@dataclass
class Process:
    """What an app runs: the stage1 turns this into the OCI config's ``process``."""

    args: list[str]
    env: dict[str, str]
    cwd: str
    user: str  # a name or a number, still to be resolved through the image's /etc/passwd
    group: str | None  # None: the user's primary group
    supplementary_gids: list[int]
    tty: bool
    stdin: bool


def resolve_process(app: App, image_config: Mapping[str, Any] | None, *,
                    flag_env: Mapping[str, str] | None = None, app_path: str = "app") -> Process:
    """The effective process of ``app`` run from an image whose config is ``image_config`` (the
    OCI config's ``config`` object: Env, Entrypoint, Cmd, User, WorkingDir...).

    Docker's rules: ``exec`` replaces the image's Entrypoint *and* Cmd (then ``args`` follow it);
    ``args`` alone replace Cmd and keep Entrypoint; neither runs Entrypoint + Cmd. Env is
    image < manifest < ``flag_env``; PATH gets Docker's default when nobody sets it; a TTY app
    gets TERM=xterm unless set. ``user``/``group`` override the image's ``User`` (``name[:group]``).
    """
    cfg = image_config or {}
    entrypoint = list(cfg.get("Entrypoint") or [])
    cmd = list(cfg.get("Cmd") or [])
    if app.exec is not None:
        args = list(app.exec) + list(app.args or [])
    elif app.args is not None:
        args = entrypoint + list(app.args)
    else:
        args = entrypoint + cmd
    if not args:
        raise UsageError(f"{app_path}.exec: app {app.name!r} has no command: image {app.image!r} sets no "
                         "Entrypoint or Cmd (use --exec)")
    env = merge_env(cfg.get("Env"), app.env, flag_env)
    env.setdefault("PATH", DEFAULT_PATH)
    if app.tty:
        env.setdefault("TERM", "xterm")
    image_user, _, image_group = (cfg.get("User") or "").partition(":")
    if app.user is not None:
        user, group = app.user, app.group
    else:
        user, group = image_user or "0", app.group if app.group is not None else (image_group or None)
    return Process(args=args, env=env, cwd=app.working_dir or cfg.get("WorkingDir") or "/",
                   user=user, group=group, supplementary_gids=list(app.supplementary_gids),
                   tty=app.tty, stdin=app.stdin)


def default_app_name(image: str) -> str:
    """rkt's default app name: the image's last path component, without tag or digest."""
    base = image.split("@", 1)[0].rstrip("/")
    if base.startswith("sha256:"):
        return "app"
    base = base.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", base).strip("._-")[:63].strip("._-")
    return base or "app"
