"""rkt-style flags to a pod manifest: ``pypod run IMAGE [app flags] [--- IMAGE [app flags]]...``.

The CLI (``run``, ``prepare``, ``app sandbox``, ``app add``) and anything else that takes
rkt's argument grammar call :func:`build_from_flags` or :func:`parse_app_flags`; both return the
model of :mod:`pypod.pods.manifest`. Errors name the flag (and the app, for app flags).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import UsageError
from .manifest import (DNS, DNS_MODES, _MAX_ID, App, HostsEntry, Mount, Network, PodManifest, Port,
                       RestartPolicy, Volume, default_app_name, parse_bool, parse_cpu, parse_kv,
                       parse_memory, parse_options, _prefix)
from . import isolation

# -- flags ----------------------------------------------------------------------------------

# name -> takes a value. Repeatable flags accumulate; the rest keep the last value.
POD_FLAGS: dict[str, bool] = {
    "--volume": True, "--hostname": True, "--exit-policy": True, "--annotation": True, "--label": True,
    "--stage1": True, "--runtime": True, "--dns": True, "--dns-search": True, "--dns-opt": True,
    "--dns-domain": True, "--hosts-entry": True, "--net": True, "--port": True, "--set-env": True,
    "--pod-manifest": True, "--pid": True, "--ipc": True, "--mutable": False,
    **isolation.POD_FLAGS,  # --sysctl, --private-users, --privileged
}
APP_FLAGS: dict[str, bool] = {
    "--name": True, "--exec": True, "--set-env": True, "--environment": True, "--user": True,
    "--group": True, "--supplementary-gids": True, "--working-dir": True, "--mount": True,
    "--memory": True, "--cpu": True, "--cpu-shares": True, "--pids-limit": True,
    "--restart-policy": True, "--readonly-rootfs": False, "--annotation": True, "--label": True,
    "--oom-score-adj": True, "--stdin": False, "--tty": False,
    **isolation.APP_FLAGS,  # --caps-retain/--caps-remove, --seccomp(-profile), --no-new-privs, --privileged
}


def _int_flag(value: str, lo: int, hi: int, what: str = "") -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise UsageError(f"{_prefix(what)}expected an integer, not {value!r}") from None
    if not lo <= n <= hi:
        raise UsageError(f"{_prefix(what)}{n} out of range [{lo}, {hi}]")
    return n


def parse_volume_flag(text: str) -> Volume:
    """``NAME,kind=host|empty|tmpfs,source=PATH,readOnly=BOOL,propagation=P,recursive=BOOL,
    mode=0755,uid=N,gid=N,size=64Mi``."""
    name, _, rest = text.partition(",")
    opts = parse_options(rest)
    vol = Volume(name=name.strip(), kind=opts.pop("kind", "host"))
    vol.source = opts.pop("source", None)
    if "readonly" in opts:
        vol.read_only = parse_bool(opts.pop("readonly"), "readOnly")
    vol.propagation = opts.pop("propagation", None)
    if "recursive" in opts:
        vol.recursive = parse_bool(opts.pop("recursive"), "recursive")
    vol.mode = opts.pop("mode", None)
    for key in ("uid", "gid"):
        if key in opts:
            setattr(vol, key, _int_flag(opts.pop(key), 0, _MAX_ID, key))
    if "size" in opts:
        vol.size = parse_memory(opts.pop("size"))
    if opts:
        raise UsageError(f"unknown option {next(iter(opts))!r}")
    return vol


def parse_mount_flag(text: str) -> Mount:
    """``volume=NAME,target=PATH[,readOnly=BOOL]``."""
    opts = parse_options(text)
    if "volume" not in opts or "target" not in opts:
        raise UsageError("expected volume=NAME,target=PATH[,readOnly=BOOL]")
    ro = parse_bool(opts.pop("readonly"), "readOnly") if "readonly" in opts else None
    m = Mount(volume=opts.pop("volume"), target=opts.pop("target"), read_only=ro)
    if opts:
        raise UsageError(f"unknown option {next(iter(opts))!r}")
    return m


def parse_port_flag(text: str) -> Port:
    """``CONTAINERPORT:[HOSTIP:]HOSTPORT[/tcp|udp|sctp]`` or rkt's ``NAME:[HOSTIP:]HOSTPORT`` for a
    port the image declares (``80-tcp``): kept by name until the engine resolves it against the
    images at prepare time (see pypod.network.ports)."""
    from ..network.ports import parse_port

    try:
        m = parse_port(text, resolve=False)
    except UsageError as e:  # the caller names the flag and its value
        raise UsageError(str(e).removeprefix(f"--port {text}: ")) from None
    return Port(container_port=m.container_port, protocol=m.protocol, host_port=m.host_port, host_ip=m.host_ip,
                name=m.name)


def parse_net_flag(text: str) -> list[Network]:
    """rkt's ``--net=NAME[:K=V;K=V],NAME2...``."""
    nets = []
    for part in text.split(","):
        if not part:
            continue
        name, _, args = part.partition(":")
        kv = dict(parse_kv(a, name) for a in args.split(";") if a)
        nets.append(Network(name=name, args=kv))
    return nets


def parse_restart_flag(text: str) -> RestartPolicy:
    """``never``, ``always`` or ``on-failure[:MAX]``, then optional ``,backoff=1s,max-backoff=5m``."""
    from ..config import parse_duration

    head, _, rest = text.partition(",")
    policy, _, limit = head.partition(":")
    rp = RestartPolicy(policy=policy.strip())
    if limit:
        if rp.policy != "on-failure":
            raise UsageError("only on-failure takes a retry limit")
        rp.max_retries = _int_flag(limit, 0, (1 << 31) - 1, "retry limit")
    opts = parse_options(rest)
    if "backoff" in opts:
        rp.backoff = parse_duration(opts.pop("backoff"))
    if "max-backoff" in opts:
        rp.max_backoff = parse_duration(opts.pop("max-backoff"))
    if opts:
        raise UsageError(f"unknown option {next(iter(opts))!r}")
    return rp


def _apply_app_flag(app: App, name: str, value: str) -> None:
    if name == "--name":
        app.name = value
    elif name == "--exec":
        app.exec = [value]
    elif name in ("--set-env", "--environment"):
        k, v = parse_kv(value)
        app.env[k] = v
    elif name == "--user":
        user, sep, group = value.partition(":")
        app.user = user
        if sep:
            app.group = group
    elif name == "--group":
        app.group = value
    elif name == "--supplementary-gids":
        app.supplementary_gids = [_int_flag(g.strip(), 0, _MAX_ID)
                                  for g in value.split(",") if g.strip()]
    elif name == "--working-dir":
        app.working_dir = value
    elif name == "--mount":
        app.mounts.append(parse_mount_flag(value))
    elif name == "--memory":
        app.resources.memory = parse_memory(value)
    elif name == "--cpu":
        app.resources.cpu = parse_cpu(value)
    elif name == "--cpu-shares":
        app.resources.cpu_shares = _int_flag(value, 2, 262144)
    elif name == "--pids-limit":
        app.resources.pids = _int_flag(value, 1, (1 << 31) - 1)
    elif name == "--restart-policy":
        app.restart = parse_restart_flag(value)
    elif name == "--readonly-rootfs":
        app.readonly_rootfs = parse_bool(value)
    elif name == "--annotation":
        k, v = parse_kv(value)
        app.annotations[k] = v
    elif name == "--label":
        k, v = parse_kv(value)
        app.labels[k] = v
    elif name == "--oom-score-adj":
        app.oom_score_adj = _int_flag(value, -1000, 1000)
    elif name == "--stdin":
        app.stdin = parse_bool(value)
    elif name == "--tty":
        app.tty = parse_bool(value)
    elif name in isolation.APP_FLAGS:
        isolation.apply_app_flag(app, name, value)
    else:  # pragma: no cover - APP_FLAGS and this function are kept in step
        raise UsageError(f"unknown flag {name}")


class _PodFlags:
    """Pod-level flag values, applied over a manifest (from flags or from --pod-manifest)."""

    def __init__(self) -> None:
        self.set: dict[str, Any] = {}
        self.volumes: list[Volume] = []
        self.annotations: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.dns_servers: list[str] = []
        self.dns_mode: str | None = None
        self.dns_search: list[str] = []
        self.dns_opts: list[str] = []
        self.hosts: list[HostsEntry] = []
        self.hosts_mode: str | None = None
        self.networks: list[Network] | None = None
        self.ports: list[Port] = []
        self.manifest_file: str | None = None
        self.isolation: list[tuple[str, str]] = []

    def add(self, name: str, value: str) -> None:
        if name == "--volume":
            self.volumes.append(parse_volume_flag(value))
        elif name in ("--hostname", "--exit-policy", "--stage1", "--runtime", "--dns-domain"):
            self.set[name] = value
        elif name == "--pid":
            self.set[name] = value
        elif name == "--ipc":
            self.set[name] = value
        elif name == "--mutable":
            self.set[name] = parse_bool(value)
        elif name == "--annotation":
            k, v = parse_kv(value)
            self.annotations[k] = v
        elif name == "--label":
            k, v = parse_kv(value)
            self.labels[k] = v
        elif name == "--set-env":
            k, v = parse_kv(value)
            self.env[k] = v
        elif name == "--dns":
            for s in value.split(","):
                if s in DNS_MODES:
                    self.dns_mode = s
                elif s:
                    self.dns_servers.append(s)
        elif name == "--dns-search":
            self.dns_search.extend(s for s in value.split(",") if s)
        elif name == "--dns-opt":
            self.dns_opts.extend(s for s in value.split(",") if s)
        elif name == "--hosts-entry":
            if value == "host":
                self.hosts_mode = "host"
            else:
                ip, names = parse_kv(value)
                hostnames = [n for n in names.split(",") if n]
                for h in self.hosts:
                    if h.ip == ip:
                        h.hostnames.extend(hostnames)
                        break
                else:
                    self.hosts.append(HostsEntry(ip=ip, hostnames=hostnames))
        elif name == "--net":
            self.networks = (self.networks or []) + parse_net_flag(value)
        elif name == "--port":
            self.ports.append(parse_port_flag(value))
        elif name == "--pod-manifest":
            self.manifest_file = value
        elif name in isolation.POD_FLAGS:
            isolation.apply_pod_flag(PodManifest(), name, value)  # checked now, applied over the manifest
            self.isolation.append((name, value))
        else:  # pragma: no cover - POD_FLAGS and this method are kept in step
            raise UsageError(f"unknown flag {name}")

    def apply(self, pod: PodManifest) -> None:
        s = self.set
        if "--hostname" in s:
            pod.hostname = s["--hostname"]
        if "--exit-policy" in s:
            pod.exit_policy = s["--exit-policy"]
        if "--stage1" in s:
            pod.stage1 = s["--stage1"]
        if "--runtime" in s:
            pod.runtime = s["--runtime"]
        if "--pid" in s:
            pod.pid_mode = s["--pid"]
        if "--ipc" in s:
            pod.ipc_mode = s["--ipc"]
        if "--mutable" in s:
            pod.mutable = s["--mutable"]
        pod.volumes.extend(self.volumes)
        pod.annotations.update(self.annotations)
        pod.labels.update(self.labels)
        if self.dns_mode is not None:
            pod.dns = DNS(mode=self.dns_mode)
        if self.dns_servers or self.dns_search or self.dns_opts or "--dns-domain" in s:
            if self.dns_mode is not None:
                raise UsageError(f"--dns {self.dns_mode}: cannot be combined with DNS servers, "
                                 "--dns-search, --dns-opt or --dns-domain")
            pod.dns.servers.extend(self.dns_servers)
            pod.dns.search.extend(self.dns_search)
            pod.dns.options.extend(self.dns_opts)
            pod.dns.domain = s.get("--dns-domain", pod.dns.domain)
        if self.hosts_mode is not None:
            pod.hosts_mode = self.hosts_mode
        pod.hosts.extend(self.hosts)
        if self.networks is not None:
            pod.networks = self.networks
        elif pod.stage1 == "fly" and [n.name for n in pod.networks] == ["default"]:
            pod.networks = [Network("host")]
        pod.ports.extend(self.ports)
        for app in pod.apps:  # flags win over the manifest
            app.env.update(self.env)
        for name, value in self.isolation:
            isolation.apply_pod_flag(pod, name, value)


def _split_flag(token: str) -> tuple[str, str | None]:
    name, sep, value = token.partition("=")
    return name, (value if sep else None)


def build_from_flags(argv: Sequence[str], *, extra_flags: Mapping[str, bool] | None = None,
                     allow_no_apps: bool = False, validate: bool = True) -> tuple[PodManifest, list[str]]:
    """Build a pod manifest from rkt-style ``run``/``prepare`` arguments.

    Grammar: ``[pod flags] IMAGE [app flags] [-- ARGS... ---] [IMAGE [app flags] ...]``; a bare
    ``---`` also separates apps. Pod flags (:data:`POD_FLAGS`) go before the first image, app
    flags (:data:`APP_FLAGS`) after their image. ``--set-env`` before the first image applies to
    every app, below each app's own ``--set-env``. ``--pod-manifest FILE`` reads a whole manifest
    (then no images may follow; pod flags and ``--set-env`` override it).

    ``extra_flags`` names the caller's own options (``{"--detach": False, "--uuid-file-save":
    True}``: whether each takes a value); they are accepted anywhere and returned, in order and
    as ``--name=value`` tokens, as the second item for the caller's own parser. Returns the
    validated manifest (images not yet resolved: ``image_id`` is None).
    """
    extra = dict(extra_flags or {})
    podf = _PodFlags()
    apps: list[App] = []
    explicit: list[bool] = []  # whether each app's name was given
    rest: list[str] = []
    i, n = 0, len(argv)
    app: App | None = None

    def value_of(name: str, inline: str | None, takes_value: bool) -> str:
        nonlocal i
        if not takes_value:
            return "true" if inline is None else inline
        if inline is not None:
            return inline
        if i >= n:
            raise UsageError(f"{name}: needs a value")
        i += 1
        return argv[i - 1]

    while i < n:
        tok = argv[i]
        i += 1
        if tok == "---":
            if app is None:
                raise UsageError("---: no image before it")
            app = None
            continue
        if tok == "--":
            if app is None:
                raise UsageError("--: arguments must follow an image")
            args: list[str] = []
            while i < n and argv[i] != "---":
                args.append(argv[i])
                i += 1
            app.args = args
            continue
        if tok.startswith("-") and tok != "-":
            name, inline = _split_flag(tok)
            if app is not None and name in APP_FLAGS:
                val = value_of(name, inline, APP_FLAGS[name])
                try:
                    _apply_app_flag(app, name, val)
                except UsageError as e:
                    raise UsageError(f"app {len(apps)} ({app.image}): {name} {val}: {e}") from None
                if name == "--name":
                    explicit[-1] = True
            elif app is None and name in POD_FLAGS:
                val = value_of(name, inline, POD_FLAGS[name])
                try:
                    podf.add(name, val)
                except UsageError as e:
                    raise UsageError(f"{name} {val}: {e}") from None
            elif name in extra:
                val = value_of(name, inline, extra[name])
                rest.append(f"{name}={val}" if extra[name] or inline is not None else name)
            elif app is not None and name in POD_FLAGS:
                raise UsageError(f"{name} is a pod flag: put it before the first image")
            elif app is None and name in APP_FLAGS:
                raise UsageError(f"{name} is an app flag: put it after the image it applies to")
            else:
                raise UsageError(f"unknown flag {name}")
            continue
        app = App(name="", image=tok, env=dict(podf.env))
        apps.append(app)
        explicit.append(False)

    if podf.manifest_file is not None:
        if apps:
            raise UsageError("--pod-manifest: cannot be combined with images on the command line")
        try:
            with open(podf.manifest_file, "rb") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"--pod-manifest {podf.manifest_file}: {e.strerror}") from None
        try:
            pod = PodManifest.from_json(text, validate=False)
        except UsageError as e:
            raise UsageError(f"--pod-manifest {podf.manifest_file}: {e}") from None
    else:
        pod = PodManifest(apps=apps)
        podf.env = {}  # already below each app's own --set-env
        taken = {a.name for a, e in zip(apps, explicit) if e}
        for a, e in zip(apps, explicit):
            if not e:
                base = default_app_name(a.image)
                name, k = base, 2
                while name in taken:
                    name, k = f"{base[:59]}-{k}", k + 1
                a.name = name
                taken.add(name)
    podf.apply(pod)
    if not pod.apps and not allow_no_apps and not pod.mutable:
        raise UsageError("no image given (usage: IMAGE [app flags] [--- IMAGE [app flags]]...)")
    if validate:
        if allow_no_apps and not pod.apps:
            saved, pod.mutable = pod.mutable, True
            try:
                pod.validate()
            finally:
                pod.mutable = saved
        else:
            pod.validate()
    return pod, rest


def parse_app_flags(image: str, argv: Sequence[str], *, name: str | None = None) -> App:
    """One app from its image and app flags (``pypod app add POD IMAGE [app flags] [-- ARGS]``).
    Not validated against a pod: the caller adds it to the manifest and validates that."""
    app = App(name=name or default_app_name(image), image=image)
    i, n = 0, len(argv)
    while i < n:
        tok = argv[i]
        i += 1
        if tok == "--":
            app.args = list(argv[i:])
            break
        name_, inline = _split_flag(tok)
        if name_ not in APP_FLAGS:
            raise UsageError(f"unknown app flag {name_}")
        if APP_FLAGS[name_] and inline is None:
            if i >= n:
                raise UsageError(f"{name_}: needs a value")
            inline = argv[i]
            i += 1
        val = "true" if inline is None else inline
        try:
            _apply_app_flag(app, name_, val)
        except UsageError as e:
            raise UsageError(f"{name_} {val}: {e}") from None
    return app
