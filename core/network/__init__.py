"""Pod networking, the engine's operations over CNI (spec 1.0).

Modes (``NetworkRequest.name``):

- ``host``: the caller's network namespace; no namespace, no CNI;
- ``none``: a namespace of its own with only ``lo`` (up);
- ``default``: pypod's bridge network (written to ``<config_dir>/net.d/`` on first use when no file
  defines a network called ``default``);
- any other name: the network of that name in ``<config_dir>/net.d`` (lexical order, ``.conflist``,
  ``.conf``, ``.json``); ``all``: every network defined there.

Several networks attach in order as ``eth0``, ``eth1``...; each takes per-network CNI arguments
(``NAME:IP=10.1.2.3;K=V``: passed as ``CNI_ARGS`` and, for ``IP``/``MAC``, as the ``ips``/``mac``
capabilities to plugins that declare them). Port mappings go to the first network with a plugin
declaring the ``portMappings`` capability (the default network's portmap).

State: :func:`attach` records the attachments in a JSON file the caller names (e.g.
``<pod dir>/net-info.json``) *before* running each ADD, and the CNI layer caches every attachment
under ``<data_dir>/cni/results``; :func:`detach` runs DEL from those records, so teardown works after
a failed or interrupted attach, after a crash of the engine, and after a reboot (the namespace is
gone then; DEL still releases IPAM and rules). Loopback is brought up by pypod itself rather than
by the ``loopback`` plugin, whose DEL would take ``lo`` down in a namespace shared by others.

Shared namespaces (Nomad's CreateNetwork, CRI sandboxes): :func:`create_shared` makes a named
namespace ``/run/pypod/netns/<name>`` with its CNI attachments (state under
``<data_dir>/net/shared/<name>.json``); pods and apps join it by path; :func:`destroy_shared` tears
everything down.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import Conflict, NotFound, PypodError, UsageError
from .cni import (CNI, DEFAULT_PLUGIN_PATHS, DNS, ConfigError, NetworkConfig, NetworkError,
                  PluginError, PluginNotFound, Result, RuntimeConf, check_plugins, find_network,
                  load_networks, parse_config, valid_name)
from .ports import PortMapping, check_ports, parse_port, parse_ports

__all__ = [
    "NetSettings", "NetworkRequest", "NetworkStatus", "AttachmentStatus", "PortMapping",
    "NetworkError", "ConfigError", "PluginError", "PluginNotFound",
    "attach", "detach", "check", "status", "create_shared", "destroy_shared", "shared_status",
    "list_shared", "gc", "prune", "ensure_default_network", "default_network_config",
    "list_networks", "parse_net", "parse_port", "parse_ports",
]

DEFAULT_NETWORK = "default"
DEFAULT_SUBNET = "172.30.0.0/16"
DEFAULT_BRIDGE = "pypod0"
DEFAULT_FILE = "50-default.conflist"
STATE_KIND = "pypod-net-info/1"
MODES = ("host", "none")


@dataclass
class NetSettings:
    """Where networks, plugins and state live. ``from_config`` maps pypod's Config onto it."""

    config_dir: Path = Path("/etc/pypod")
    data_dir: Path = Path("/var/lib/pypod")
    plugin_paths: tuple[str, ...] = DEFAULT_PLUGIN_PATHS
    netns_dir: Path = Path("/run/pypod/netns")
    default_subnet: str = DEFAULT_SUBNET
    default_bridge: str = DEFAULT_BRIDGE
    plugin_timeout: float = 60.0

    @property
    def net_dir(self) -> Path:
        return Path(self.config_dir) / "net.d"

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_dir) / "cni"

    @property
    def shared_dir(self) -> Path:
        return Path(self.data_dir) / "net" / "shared"

    def cni(self) -> CNI:
        return CNI(self.plugin_paths, self.cache_dir, timeout=self.plugin_timeout)

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> "NetSettings":
        """From a ``pypod.config.Config``; ``PYPOD_CNI_PATH`` (colon-separated) overrides the plugin
        directories; a ``network`` mapping on the config (future ``[network]`` table) is honoured."""
        s = cls(config_dir=Path(cfg.config_dir), data_dir=Path(cfg.data_dir))
        extra = getattr(cfg, "network", None) or {}
        if "plugin_dirs" in extra:
            s.plugin_paths = tuple(extra["plugin_dirs"])
        if "default_subnet" in extra:
            s.default_subnet = str(extra["default_subnet"])
        env = os.environ.get("PYPOD_CNI_PATH")
        if env:
            s.plugin_paths = tuple(p for p in env.split(":") if p)
        for k, v in overrides.items():
            setattr(s, k, v)
        return s


@dataclass(frozen=True)
class NetworkRequest:
    """One ``--net`` item; field-compatible with the pod manifest's ``Network``."""

    name: str
    args: Mapping[str, str] = field(default_factory=dict)
    ifname: str | None = None


def parse_net(values: str | Iterable[str]) -> list[NetworkRequest]:
    """rkt's ``--net=NAME[:K=V[;K=V]][,NAME...]`` (repeatable)."""
    out: list[NetworkRequest] = []
    for value in [values] if isinstance(values, str) else values:
        for part in value.split(","):
            if not part.strip():
                continue
            name, _, argtext = part.strip().partition(":")
            args: dict[str, str] = {}
            for kv in argtext.split(";"):
                if not kv:
                    continue
                k, sep, v = kv.partition("=")
                if not sep or not k or not v or not k.replace("_", "").isalnum():
                    raise UsageError(f"--net {part}: expected NAME:KEY=VALUE[;KEY=VALUE]")
                args[k] = v
            out.append(NetworkRequest(name, args))
    return out


@dataclass
class AttachmentStatus:
    network: str
    ifname: str
    container_id: str
    source: str = ""
    ips: list[str] = field(default_factory=list)        # CIDR, on the pod's interface
    gateway: str | None = None
    mac: str = ""
    host_interfaces: list[str] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)
    complete: bool = False

    @property
    def ip(self) -> str | None:
        return self.ips[0].split("/", 1)[0] if self.ips else None

    def fill(self, res: Result) -> None:
        mine = res.ips_of(self.ifname)
        self.ips = [i.address for i in mine]
        self.gateway = next((i.gateway for i in mine if i.gateway), None)
        self.mac = next((i.mac for i in res.interfaces if i.sandbox and i.name == self.ifname), "")
        self.host_interfaces = [i.name for i in res.interfaces if not i.sandbox]
        self.dns = res.dns
        self.complete = True

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "ifname": self.ifname, "containerId": self.container_id,
                "source": self.source, "ips": self.ips, "gateway": self.gateway, "mac": self.mac,
                "hostInterfaces": self.host_interfaces,
                "dns": {"nameservers": list(self.dns.nameservers), "domain": self.dns.domain,
                        "search": list(self.dns.search), "options": list(self.dns.options)},
                "complete": self.complete}


@dataclass
class NetworkStatus:
    """What ``status``/``list`` show; also the content of the state file (``to_dict``)."""

    pod_id: str
    mode: str                       # host | none | cni
    netns: str | None = None
    owns_netns: bool = False
    networks: list[AttachmentStatus] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    # what DEL needs, per attachment index: configuration and arguments as used at ADD
    _records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def ips(self) -> list[str]:
        return [ip for a in self.networks for ip in a.ips]

    @property
    def ip(self) -> str | None:
        """The first IPv4 address (else the first address) of the pod, without prefix."""
        addrs = [i.split("/", 1)[0] for i in self.ips]
        return next((a for a in addrs if ":" not in a), addrs[0] if addrs else None)

    @property
    def gateway(self) -> str | None:
        return next((a.gateway for a in self.networks if a.gateway), None)

    @property
    def dns(self) -> list[DNS]:
        return [a.dns for a in self.networks if a.dns]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "podId": self.pod_id, "mode": self.mode, "netns": self.netns,
                "ownsNetns": self.owns_netns, "ports": [p.to_cni() for p in self.ports],
                "networks": [dict(a.to_dict(), **r) for a, r in zip(self.networks, self._records)]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NetworkStatus":
        if d.get("kind") != STATE_KIND:
            raise NetworkError(f"not a pypod network state ({d.get('kind')!r})")
        st = cls(d["podId"], d["mode"], d.get("netns"), bool(d.get("ownsNetns")),
                 ports=[PortMapping.from_any(p) for p in d.get("ports") or []])
        for n in d.get("networks") or []:
            dd = n.get("dns") or {}
            st.networks.append(AttachmentStatus(
                n["network"], n["ifname"], n["containerId"], n.get("source", ""), list(n.get("ips") or []),
                n.get("gateway"), n.get("mac", ""), list(n.get("hostInterfaces") or []),
                DNS(tuple(dd.get("nameservers") or ()), dd.get("domain"), tuple(dd.get("search") or ()),
                    tuple(dd.get("options") or ())), bool(n.get("complete"))))
            st._records.append({k: n.get(k) for k in ("config", "args", "capabilityArgs")})
        return st


# -- state files ----------------------------------------------------------------------------------

def _write_state(path: Path, st: NetworkStatus) -> None:
    from .cni import _atomic_write

    _atomic_write(path, json.dumps(st.to_dict(), indent=1).encode())
    os.chmod(path, 0o644)


def status(state_file: str | os.PathLike) -> NetworkStatus | None:
    """The recorded network state of a pod, or None when nothing is recorded."""
    try:
        data = Path(state_file).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return NetworkStatus.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError) as e:
        raise NetworkError(f"{state_file}: unreadable network state: {e}") from None


# -- networks -------------------------------------------------------------------------------------

def default_network_config(subnet: str = DEFAULT_SUBNET, bridge: str = DEFAULT_BRIDGE) -> dict[str, Any]:
    """The default network: a bridge with host-local IPAM, masquerade, hairpin (a pod reaches itself
    through its own host ports), port mappings, and the firewall plugin (so forwarding works where
    the FORWARD chain's policy is DROP, e.g. next to Docker)."""
    net = ipaddress.ip_network(subnet, strict=True)
    return {
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
             "hairpinMode": True, "capabilities": {"ips": True},
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(net)}]],
                      "routes": [{"dst": "::/0" if net.version == 6 else "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "firewall"},
        ],
    }


def _host_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    out = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                p = line.split()
                if len(p) < 8:
                    continue
                dst = ipaddress.IPv4Address(int(p[1], 16).to_bytes(4, "little"))
                mask = ipaddress.IPv4Address(int(p[7], 16).to_bytes(4, "little"))
                out.append((ipaddress.IPv4Network(f"{dst}/{mask}", strict=False), p[0]))
    except OSError:
        pass
    return out


def ensure_default_network(settings: NetSettings | None = None) -> NetworkConfig:
    """The network called ``default``: the first file defining it, else a new ``50-default.conflist``
    (refused when its subnet overlaps a route of the host not on pypod's bridge)."""
    from ..lock import locked

    s = settings or NetSettings()
    nets, broken = load_networks(s.net_dir)
    if DEFAULT_NETWORK in nets:
        return nets[DEFAULT_NETWORK]
    s.cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(s.cache_dir / "default-network.lock"):
        nets, broken = load_networks(s.net_dir)
        if DEFAULT_NETWORK in nets:
            return nets[DEFAULT_NETWORK]
        path = s.net_dir / DEFAULT_FILE
        if str(path) in broken or path.exists():
            raise ConfigError(f"network 'default': {broken.get(str(path)) or f'{path} defines another network'}"
                              f"; fix or remove it")
        try:
            conf = default_network_config(s.default_subnet, s.default_bridge)
        except ValueError as e:
            raise UsageError(f"default network subnet {s.default_subnet!r}: {e}") from None
        subnet = ipaddress.ip_network(s.default_subnet)
        for route, dev in _host_routes():
            if dev != s.default_bridge and route.prefixlen > 0 and route.version == subnet.version \
                    and route.overlaps(subnet):
                raise ConfigError(f"default network subnet {subnet} overlaps the host's route {route} on "
                                  f"{dev}; choose another subnet (NetSettings.default_subnet) or write "
                                  f"{path} yourself")
        from .cni import _atomic_write

        _atomic_write(path, (json.dumps(conf, indent=2) + "\n").encode())
        os.chmod(path, 0o644)
        return parse_config(conf, str(path))


def list_networks(settings: NetSettings | None = None) -> tuple[list[NetworkConfig], dict[str, str]]:
    """The configured networks (the default one included once written) and unreadable files."""
    s = settings or NetSettings()
    nets, broken = load_networks(s.net_dir)
    return list(nets.values()), broken


def _resolve(reqs: Sequence[Any], s: NetSettings) -> list[tuple[NetworkRequest, NetworkConfig]]:
    out: list[tuple[NetworkRequest, NetworkConfig]] = []
    for r in reqs:
        if r.name == "all":
            nets, broken = load_networks(s.net_dir)
            if broken:
                raise ConfigError("--net=all: " + "; ".join(broken.values()))
            out += [(NetworkRequest(n.name, dict(r.args)), n) for n in nets.values()]
        elif r.name == DEFAULT_NETWORK:
            out.append((r, ensure_default_network(s)))
        else:
            out.append((r, find_network(s.net_dir, r.name)))
    seen: set[str] = set()
    for r, n in out:
        if n.name in seen:
            raise UsageError(f"network {n.name!r} requested twice")
        seen.add(n.name)
    return out


def _mode(reqs: Sequence[Any]) -> str:
    names = [r.name for r in reqs]
    for m in MODES:
        if m in names:
            if len(names) > 1:
                raise UsageError(f"--net={m} cannot be combined with other networks")
            if reqs[0].args:
                raise UsageError(f"--net={m} takes no arguments")
            return m
    for n in names:
        if not valid_name(n):
            raise UsageError(f"invalid network name {n!r}")
    return "cni"


def _capabilities(req: Any, conf: NetworkConfig, ports: list[PortMapping], dns: Any,
                  with_ports: bool) -> dict[str, Any]:
    caps: dict[str, Any] = {}
    if with_ports and ports:
        caps["portMappings"] = [p.to_cni() for p in ports]
    ip = req.args.get("IP")
    if ip:
        caps["ips"] = [x for x in ip.split(",") if x]
    if req.args.get("MAC"):
        caps["mac"] = req.args["MAC"]
    if dns is not None:
        from .dns import DNSConfig

        cap = DNSConfig.from_any(dns).capability()
        if cap:
            caps["dns"] = cap
    return {k: v for k, v in caps.items() if k in conf.capabilities}


# -- attach / detach ------------------------------------------------------------------------------

def attach(pod_id: str, netns_path: str | os.PathLike | None, networks: Sequence[Any] | None = None, *,
           state_file: str | os.PathLike, ports: Iterable[Any] = (), dns: Any = None,
           settings: NetSettings | None = None) -> NetworkStatus:
    """Attach the pod to its networks and record it in ``state_file``.

    ``pod_id``: the CNI container id (letters, digits, ``_.-``). ``netns_path``: the pod's network
    namespace; None makes one (``<netns_dir>/<pod_id>``) that :func:`detach` removes again.
    ``networks``: NetworkRequest-like objects (``name``, ``args``; default: ``[default]``).
    ``ports``: PortMapping / manifest Port / CNI dicts. ``dns``: DNSConfig-like flags, passed to
    plugins that declare the ``dns`` capability (resolv.conf itself is :mod:`pypod.network.dns`'s).

    On any failure everything done so far is torn down (DEL, namespace if made here, state file)
    before the error propagates: a failed attach leaves nothing behind."""
    s = settings or NetSettings()
    reqs = list(networks) if networks else [NetworkRequest(DEFAULT_NETWORK)]
    mode = _mode(reqs)
    if not valid_name(pod_id):
        raise UsageError(f"invalid pod id for CNI {pod_id!r}")
    port_list = check_ports(ports)
    sf = Path(state_file)
    prior = status(sf)
    if prior is not None and (prior.networks or prior.owns_netns):
        raise Conflict(f"pod {pod_id} is already attached ({sf}); detach it first")
    if mode == "host":
        st = NetworkStatus(pod_id, "host", None, False, ports=port_list)  # ports: bound directly
        _write_state(sf, st)
        return st
    if mode == "none" and port_list:
        raise UsageError("--port needs a CNI network (not --net=none)")
    resolved = _resolve(reqs, s) if mode == "cni" else []
    for _, conf in resolved:  # a missing plugin fails here, before any ADD has created something
        check_plugins(conf, s.plugin_paths)
    if resolved:
        from . import bridgemac

        bridgemac.repair(b for _, conf in resolved for b in bridgemac.bridges_of(conf.plugins))
    target = -1
    if port_list:
        target = next((i for i, (_, n) in enumerate(resolved) if "portMappings" in n.capabilities), -1)
        if target < 0:
            raise UsageError("--port: none of the networks has a plugin with the portMappings capability "
                             "(e.g. portmap)")
    from . import netns as _netns

    owns = netns_path is None
    path = str(_netns.path_of(pod_id, s.netns_dir)) if owns else os.fspath(netns_path)  # type: ignore[arg-type]
    st = NetworkStatus(pod_id, mode, path, owns, ports=port_list)
    current = -1
    try:
        _write_state(sf, st)  # first: a crash from here on leaves a record detach and gc can act on
        if owns:
            try:
                _netns.create(pod_id, s.netns_dir)
            except Conflict:
                st.owns_netns = False  # someone else's: never remove it
                raise
        else:
            _netns.set_lo_up(path)
        if mode == "none":
            return st
        cni = s.cni()
        plan = []
        for i, (req, conf) in enumerate(resolved):
            rt = RuntimeConf(pod_id, path, getattr(req, "ifname", None) or f"eth{i}", dict(req.args),
                             _capabilities(req, conf, port_list, dns, i == target))
            plan.append((conf, rt))
            st.networks.append(AttachmentStatus(conf.name, rt.ifname, pod_id, conf.source))
            st._records.append({"config": conf.to_dict(), "args": dict(rt.args),
                                "capabilityArgs": dict(rt.capability_args)})
        _write_state(sf, st)  # intent before any ADD
        for n, (a, (conf, rt)) in enumerate(zip(st.networks, plan)):
            current = n
            a.fill(cni.add(conf, rt))
            _write_state(sf, st)
        return st
    except BaseException as e:
        # completed attachments get a DEL; the one that failed was already undone by cni.add unless
        # its own cleanup failed (its cache entry then remains); later ones never started
        if st.networks:
            done = [a.complete or (i == current and cni.cached(a.network, a.container_id, a.ifname) is not None)
                    for i, a in enumerate(st.networks)]
            st.networks = [a for a, keep in zip(st.networks, done) if keep]
            st._records = [r for r, keep in zip(st._records, done) if keep]
        errors = _teardown(st, s)
        if not errors:
            try:
                os.unlink(sf)
            except FileNotFoundError:
                pass
        else:
            _write_state(sf, st)  # what is left to undo, for a later detach or gc
        if errors and isinstance(e, Exception):
            e.add_note("teardown after the failed attach also failed (state kept in "
                       f"{sf}): " + "; ".join(errors))
        raise


def _teardown(st: NetworkStatus, s: NetSettings, netns_path: str | None = None) -> list[str]:
    """DEL every recorded attachment (reverse order), then remove the namespace if pypod made it."""
    from . import netns as _netns

    errors: list[str] = []
    path = netns_path or st.netns or ""
    live = path if path and _netns.is_netns(path) else ""  # tolerate a namespace already gone
    if st.networks:
        cni = s.cni()
        for a, rec in reversed(list(zip(st.networks, st._records))):
            conf = None
            if rec.get("config"):
                try:
                    conf = parse_config(rec["config"], a.source or "<state>")
                except ConfigError as e:
                    errors.append(str(e))
            rt = RuntimeConf(a.container_id, live, a.ifname, rec.get("args") or {},
                             rec.get("capabilityArgs") or {})
            try:
                cni.delete(conf, rt)
            except NetworkError as e:
                errors.append(str(e))
    if st.owns_netns and st.netns:
        try:
            _netns.delete(st.netns)
        except (PypodError, OSError) as e:
            errors.append(str(e))
    return errors


def detach(pod_id: str, netns_path: str | os.PathLike | None = None, state_file: str | os.PathLike = "", *,
           settings: NetSettings | None = None) -> None:
    """Tear down everything ``state_file`` records for the pod: DEL for each attachment (with the
    cached configuration and result; the namespace may already be gone), then the namespace if
    :func:`attach` made it, then the state file. Idempotent. Raises NetworkError listing what failed
    (the state file then stays, so a later detach or gc retries)."""
    s = settings or NetSettings()
    if not state_file:
        raise UsageError("detach needs the state file attach wrote")
    sf = Path(state_file)
    st = status(sf)
    if st is None:
        return
    if st.pod_id != pod_id:
        raise Conflict(f"{sf} belongs to pod {st.pod_id}, not {pod_id}")
    errors = _teardown(st, s, os.fspath(netns_path) if netns_path else None)
    if errors:
        raise NetworkError(f"detaching pod {pod_id}: " + "; ".join(errors))
    try:
        os.unlink(sf)
    except FileNotFoundError:
        pass


def check(state_file: str | os.PathLike, settings: NetSettings | None = None) -> None:
    """CHECK every attachment recorded in ``state_file`` (NetworkError on the first failure)."""
    s = settings or NetSettings()
    st = status(state_file)
    if st is None:
        raise NotFound(f"no network state in {state_file}")
    cni = s.cni()
    for a, rec in zip(st.networks, st._records):
        conf = parse_config(rec["config"], a.source or "<state>")
        cni.check(conf, RuntimeConf(a.container_id, st.netns or "", a.ifname))


# -- shared namespaces ----------------------------------------------------------------------------

def _shared_file(name: str, s: NetSettings) -> Path:
    if not valid_name(name):
        raise UsageError(f"invalid shared network namespace name {name!r}")
    return s.shared_dir / f"{name}.json"


def create_shared(name: str, networks: Sequence[Any] | None = None, *, ports: Iterable[Any] = (),
                  dns: Any = None, settings: NetSettings | None = None) -> NetworkStatus:
    """Create the named namespace ``<netns_dir>/<name>`` and attach it (CNI container id ``name``);
    pods and apps join it through ``status.netns``. Conflict if it exists; nothing is left behind
    on failure."""
    s = settings or NetSettings()
    sf = _shared_file(name, s)
    reqs = list(networks) if networks else [NetworkRequest(DEFAULT_NETWORK)]
    if _mode(reqs) == "host":
        raise UsageError("a shared network namespace cannot be the host's")
    if status(sf) is not None:
        raise Conflict(f"shared network namespace {name!r} already exists")
    sf.parent.mkdir(parents=True, exist_ok=True)
    return attach(name, None, reqs, state_file=sf, ports=ports, dns=dns, settings=s)


def destroy_shared(name: str, *, settings: NetSettings | None = None) -> bool:
    """Tear down a shared namespace and its attachments; False when there was nothing. Idempotent."""
    from . import netns as _netns

    s = settings or NetSettings()
    sf = _shared_file(name, s)
    existed = sf.exists()
    detach(name, None, sf, settings=s)
    removed = _netns.delete(name, s.netns_dir) if not existed else False
    return existed or removed


def shared_status(name: str, settings: NetSettings | None = None) -> NetworkStatus | None:
    s = settings or NetSettings()
    return status(_shared_file(name, s))


def list_shared(settings: NetSettings | None = None) -> list[NetworkStatus]:
    s = settings or NetSettings()
    out = []
    try:
        names = sorted(os.listdir(s.shared_dir))
    except FileNotFoundError:
        return []
    for n in names:
        if n.endswith(".json") and not n.startswith("."):
            st = status(s.shared_dir / n)
            if st is not None:
                out.append(st)
    return out


# -- garbage collection ---------------------------------------------------------------------------

def gc(keep: Iterable[str], settings: NetSettings | None = None) -> list[str]:
    """DEL every cached attachment whose container id is neither in ``keep`` (the live pods) nor a
    shared namespace's (for pods whose state file was lost with their directory). Returns the
    container ids cleaned; failures are left cached for the next run."""
    s = settings or NetSettings()
    keep_ids = set(keep) | {st.pod_id for st in list_shared(s)}
    cni = s.cni()
    from . import netns as _netns

    cleaned = []
    for e in cni.cached_attachments():
        cid = e.rt.container_id
        if cid in keep_ids:
            continue
        netns = e.rt.netns if e.rt.netns and _netns.is_netns(e.rt.netns) else ""
        try:
            cni.delete(e.network, RuntimeConf(cid, netns, e.rt.ifname))
        except NetworkError:
            continue
        if cid not in cleaned:
            cleaned.append(cid)
    return cleaned


def prune(settings: NetSettings | None = None, *, bridge: bool = True, ipam: bool = True,
          chains: bool = False) -> list[str]:
    """Remove the default network's host leftovers when nothing uses them: the bridge (no interface
    enslaved), the host-local IPAM directory (no allocation), and with ``chains`` the plugins'
    shared iptables scaffolding (no per-container rule; see :mod:`pypod.network.scaffold`).
    For an idle host (``pypod gc``-style housekeeping, test and benchmark teardown); returns what
    was removed."""
    import shutil
    import subprocess

    s = settings or NetSettings()
    removed = []
    br = s.default_bridge
    brif = Path("/sys/class/net", br, "brif")
    if bridge and brif.is_dir() and not any(brif.iterdir()):
        p = subprocess.run(["ip", "link", "del", br], capture_output=True, text=True)
        if p.returncode == 0:
            removed.append(f"bridge {br}")
    d = Path("/var/lib/cni/networks", DEFAULT_NETWORK)
    if ipam and d.is_dir():
        from ..lock import locked

        with locked(d / "lock"):
            leftovers = [n for n in os.listdir(d) if n != "lock" and not n.startswith("last_reserved_ip")]
            if not leftovers:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
    if chains:
        from .scaffold import remove_unused

        removed += remove_unused()
    return removed
