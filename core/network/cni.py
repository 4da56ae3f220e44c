"""Executing CNI plugins per the CNI 1.0 specification (a runtime's side of the protocol).

A *network* is a configuration list (``.conflist``: ``{"cniVersion", "name", "plugins": [...]}``)
or a single plugin configuration (``.conf``/``.json``: ``{"cniVersion", "name", "type", ...}``),
found in a directory in lexical order (the first file defining a name wins).

An *attachment* is one network applied to one container: ``(container id, interface name)`` plus
the netns path, the generic arguments (``CNI_ARGS``) and the capability arguments (inserted as
``runtimeConfig`` into the plugins that declare the capability). Plugins are executed with the
spec's environment and the derived configuration on stdin:

- ADD runs the plugins in order, each getting the previous plugin's result as ``prevResult``;
- CHECK runs them in order with the cached final ADD result (skipped with ``disableCheck``);
- DEL runs them in *reverse* order with the cached final ADD result.

Every attachment is cached on disk before its ADD starts and after every plugin
(``<cache_dir>/results/<network>-<container id>-<ifname>``, the configuration, the arguments and
the latest result), so DEL works after a failed ADD, after a crash of the engine and after a
reboot, even when the network's file changed or vanished meanwhile. DEL is best effort: every
plugin runs even when an earlier one failed; the cache entry goes only when all succeeded.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import NotFound, PypodError

DEFAULT_PLUGIN_PATHS: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
CONFIG_EXTENSIONS = (".conflist", ".conf", ".json")
CACHE_KIND = "pypod-cni-cache/1"
DEFAULT_TIMEOUT = 60.0

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)\Z")
# A minimal PATH for the plugins' own helpers (iptables, ip6tables, ...) when the caller has none.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NetworkError(PypodError):
    """A network could not be set up, checked or torn down."""


class ConfigError(NetworkError):
    """A network configuration file is unreadable or invalid."""


class PluginNotFound(NetworkError):
    """A plugin named by a network configuration is in none of the plugin directories."""


class PluginError(NetworkError):
    """A plugin failed; ``code``/``msg``/``details`` come from its CNI error object when it sent one."""

    def __init__(self, message: str, *, plugin: str, network: str, source: str, command: str,
                 code: int | None = None, msg: str = "", details: str = "") -> None:
        super().__init__(message)
        self.plugin, self.network, self.source, self.command = plugin, network, source, command
        self.code, self.msg, self.details = code, msg, details


def version_tuple(v: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v or "")
    if not m:
        raise ValueError(f"invalid cniVersion {v!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def valid_name(name: str) -> bool:
    """The spec's rule for network names and container ids."""
    return bool(_NAME_RE.match(name or ""))


# -- configuration --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkConfig:
    """One network: a configuration list, normalised (a single-plugin file becomes a one-item list)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    source: str = "<memory>"   # the file it came from, for messages

    @property
    def capabilities(self) -> frozenset[str]:
        """Capabilities any plugin declares (``{"portMappings": true}`` ...)."""
        caps: set[str] = set()
        for p in self.plugins:
            caps.update(k for k, on in (p.get("capabilities") or {}).items() if on)
        return frozenset(caps)

    @property
    def plugin_types(self) -> list[str]:
        return [p["type"] for p in self.plugins]

    def label(self) -> str:
        """``network 'x' (/etc/pypod/net.d/10-x.conflist)``: how errors name it."""
        return f"network {self.name!r} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"cniVersion": self.cni_version, "name": self.name,
                             "plugins": [dict(p) for p in self.plugins]}
        if self.disable_check:
            d["disableCheck"] = True
        return d


def parse_config(data: bytes | str | Mapping[str, Any], source: str = "<memory>") -> NetworkConfig:
    """Validate a configuration list or single-plugin configuration; raise ConfigError naming ``source``."""
    if isinstance(data, (bytes, str)):
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise ConfigError(f"{source}: invalid JSON: {e}") from None
    else:
        obj = dict(data)
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: expected a JSON object")

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source}: {why}")

    name = obj.get("name")
    if not isinstance(name, str) or not valid_name(name):
        raise bad(f"invalid or missing network name {name!r} (letters, digits, '_', '.', '-')")
    version = obj.get("cniVersion", "")
    try:
        version_tuple(version)
    except ValueError:
        raise bad(f"invalid or missing cniVersion {version!r}") from None
    if "plugins" in obj:
        plugins = obj["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise bad("'plugins' must be a non-empty list")
        dc = obj.get("disableCheck", False)
        if not isinstance(dc, bool):
            if dc in ("true", "false"):  # libcni accepts the strings too
                dc = dc == "true"
            else:
                raise bad(f"disableCheck must be a boolean, not {dc!r}")
    elif "type" in obj:
        plugins = [{k: v for k, v in obj.items() if k not in ("name", "cniVersion")}]
        dc = False
    else:
        raise bad("neither a configuration list ('plugins') nor a plugin configuration ('type')")
    out = []
    for i, p in enumerate(plugins):
        if not isinstance(p, dict):
            raise bad(f"plugins[{i}] is not an object")
        t = p.get("type")
        if not isinstance(t, str) or not t or "/" in t or t in (".", ".."):
            raise bad(f"plugins[{i}]: invalid or missing plugin type {t!r}")
        caps = p.get("capabilities", {})
        if not isinstance(caps, dict):
            raise bad(f"plugins[{i}] ({t}): capabilities must be an object")
        out.append(p)
    return NetworkConfig(name=name, cni_version=version, plugins=tuple(out), disable_check=dc,
                         source=source)


def load_file(path: str | os.PathLike) -> NetworkConfig:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return parse_config(data, str(path))


def config_files(directory: str | os.PathLike) -> list[Path]:
    """Network files in ``directory`` in lexical order (hidden and other files ignored)."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [Path(directory, n) for n in names
            if not n.startswith(".") and n.endswith(CONFIG_EXTENSIONS) and os.path.isfile(Path(directory, n))]


def load_networks(directory: str | os.PathLike) -> tuple[dict[str, NetworkConfig], dict[str, str]]:
    """All networks in ``directory``: ``({name: config}, {bad file: error})``; first file wins per name."""
    nets: dict[str, NetworkConfig] = {}
    broken: dict[str, str] = {}
    for f in config_files(directory):
        try:
            conf = load_file(f)
        except ConfigError as e:
            broken[str(f)] = str(e)
            continue
        nets.setdefault(conf.name, conf)
    return nets, broken


def _stem_name(path: str) -> str:
    """``/x/10-mynet.conflist`` -> ``mynet``: the network a broken file most likely meant."""
    stem = Path(path).name.rsplit(".", 1)[0]
    return re.sub(r"^\d+[-_]", "", stem)


def find_network(directory: str | os.PathLike, name: str) -> NetworkConfig:
    """The network called ``name``. A broken file that looks like it was meant to define it (its name
    without the numeric prefix is ``name``) is reported with its own error; a missing network is
    NotFound, listing the broken files that might have defined it."""
    nets, broken = load_networks(directory)
    if name in nets:
        return nets[name]
    for f, err in broken.items():
        if _stem_name(f) == name:
            raise ConfigError(f"network {name!r}: {err}")
    known = ", ".join(sorted(nets)) or "none"
    msg = f"network {name!r} not found in {directory} (defined there: {known})"
    if broken:
        msg += "; unreadable files: " + "; ".join(broken.values())
        raise ConfigError(msg)
    raise NotFound(msg)


def find_plugin(plugin: str, paths: Sequence[str | os.PathLike]) -> Path:
    for d in paths:
        p = Path(d, plugin)
        if os.access(p, os.X_OK) and p.is_file():
            return p
    raise PluginNotFound(f"CNI plugin {plugin!r} not found in {':'.join(map(str, paths)) or '(no path)'}")


def check_plugins(net: NetworkConfig, paths: Sequence[str | os.PathLike]) -> None:
    """PluginNotFound (naming the network, its file and the plugin) unless every plugin of ``net``
    and every IPAM plugin they delegate to is in ``paths``: checked before an ADD, so a network
    naming a missing plugin fails before its first plugin creates anything (a bridge plugin's
    bridge, host-local's directory stay even after a DEL)."""
    for plugin in net.plugins:
        ipam = plugin.get("ipam")
        for ptype in (plugin["type"], ipam.get("type") if isinstance(ipam, Mapping) else None):
            if isinstance(ptype, str) and ptype:
                try:
                    find_plugin(ptype, paths)
                except PluginNotFound as e:
                    raise PluginNotFound(f"{net.label()}: {e}") from None


# -- results --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: str                  # CIDR, e.g. 10.1.0.5/16
    gateway: str | None = None
    interface: int | None = None  # index into Result.interfaces

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str | None = None
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.nameservers or self.domain or self.search or self.options)


@dataclass(frozen=True)
class Result:
    """A plugin's Success result; ``raw`` is what is handed on as ``prevResult`` and cached."""

    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> "Result":
        """Parse a 0.3.x-1.0 result (and the 0.1/0.2 ``ip4``/``ip6`` shape, read only)."""
        def strs(v: Any) -> tuple[str, ...]:
            return tuple(str(x) for x in v) if isinstance(v, list) else ()

        ifaces = tuple(Interface(str(i.get("name", "")), str(i.get("mac", "") or ""),
                                 str(i.get("sandbox", "") or ""))
                       for i in obj.get("interfaces") or [] if isinstance(i, dict))
        ips: list[IPConfig] = []
        routes: list[Route] = []
        for i in obj.get("ips") or []:
            if isinstance(i, dict) and i.get("address"):
                idx = i.get("interface")
                ips.append(IPConfig(str(i["address"]), i.get("gateway") or None,
                                    idx if isinstance(idx, int) else None))
        for r in obj.get("routes") or []:
            if isinstance(r, dict) and r.get("dst"):
                routes.append(Route(str(r["dst"]), r.get("gw") or None))
        for legacy in ("ip4", "ip6"):  # spec 0.1/0.2
            v = obj.get(legacy)
            if isinstance(v, dict) and v.get("ip"):
                ips.append(IPConfig(str(v["ip"]), v.get("gateway") or None))
                routes.extend(Route(str(r["dst"]), r.get("gw") or None)
                              for r in v.get("routes") or [] if isinstance(r, dict) and r.get("dst"))
        d = obj.get("dns") or {}
        dns = DNS(strs(d.get("nameservers")), d.get("domain") or None, strs(d.get("search")),
                  strs(d.get("options"))) if isinstance(d, dict) else DNS()
        return cls(str(obj.get("cniVersion", "")), ifaces, tuple(ips), tuple(routes), dns, dict(obj))

    def sandbox_interfaces(self) -> list[tuple[int, Interface]]:
        return [(n, i) for n, i in enumerate(self.interfaces) if i.sandbox]

    def ips_of(self, ifname: str) -> list[IPConfig]:
        """The IPs on the container interface ``ifname`` (all IPs when the result names no interface)."""
        idx = {n for n, i in enumerate(self.interfaces) if i.name == ifname and i.sandbox}
        if not idx:
            return [ip for ip in self.ips if ip.interface is None] or list(self.ips)
        return [ip for ip in self.ips if ip.interface in idx or ip.interface is None]


# -- attachments and the cache --------------------------------------------------------------------

@dataclass(frozen=True)
class RuntimeConf:
    """An attachment's parameters."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Mapping[str, str] = field(default_factory=dict)              # CNI_ARGS
    capability_args: Mapping[str, Any] = field(default_factory=dict)   # runtimeConfig

    def cni_args(self) -> str:
        if not self.args:
            return ""
        pairs = dict(self.args)
        pairs.setdefault("IgnoreUnknown", "1")  # plugins must not choke on keys meant for others
        order = ["IgnoreUnknown"] + [k for k in pairs if k != "IgnoreUnknown"]
        return ";".join(f"{k}={pairs[k]}" for k in order)


@dataclass
class CacheEntry:
    network: NetworkConfig
    rt: RuntimeConf
    result: dict[str, Any] | None
    complete: bool
    path: Path


def _derive(net: NetworkConfig, plugin: Mapping[str, Any], prev: Mapping[str, Any] | None,
            capability_args: Mapping[str, Any]) -> bytes:
    """Section 3: the execution configuration of one plugin."""
    conf = {k: v for k, v in plugin.items() if k not in ("capabilities", "runtimeConfig", "prevResult")}
    conf["cniVersion"] = net.cni_version
    conf["name"] = net.name
    caps = plugin.get("capabilities") or {}
    rc = {k: capability_args[k] for k, on in caps.items() if on and k in capability_args}
    if rc:
        conf["runtimeConfig"] = rc
    if prev is not None:
        conf["prevResult"] = prev
    return json.dumps(conf, separators=(",", ":")).encode()


class CNI:
    """Runs networks' plugins; one instance per engine call is cheap (no I/O in the constructor)."""

    def __init__(self, plugin_paths: Sequence[str | os.PathLike] = DEFAULT_PLUGIN_PATHS,
                 cache_dir: str | os.PathLike = "/var/lib/pypod/cni", *,
                 timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None) -> None:
        self.plugin_paths = [str(p) for p in plugin_paths]
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self._base_env = None if env is None else dict(env)  # None: the process environment at exec time

    def _environ(self) -> dict[str, str]:
        env = {k: v for k, v in (os.environ if self._base_env is None else self._base_env).items()
               if not k.startswith("CNI_")}
        env.setdefault("PATH", _SYSTEM_PATH)
        return env

    # -- the cache ------------------------------------------------------------------------------
    def cache_path(self, network: str, container_id: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{network}-{container_id}-{ifname}"

    def _write_cache(self, net: NetworkConfig, rt: RuntimeConf, result: Mapping[str, Any] | None,
                     complete: bool) -> None:
        path = self.cache_path(net.name, rt.container_id, rt.ifname)
        doc = {"kind": CACHE_KIND, "networkName": net.name, "containerId": rt.container_id,
               "ifName": rt.ifname, "netns": rt.netns, "source": net.source, "config": net.to_dict(),
               "cniArgs": dict(rt.args), "capabilityArgs": dict(rt.capability_args),
               "result": result, "complete": complete}
        _atomic_write(path, json.dumps(doc, separators=(",", ":")).encode())

    def _read_cache(self, path: Path) -> CacheEntry | None:
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise NetworkError(f"unreadable CNI cache entry {path}: {e}") from None
        if not isinstance(doc, dict) or doc.get("kind") != CACHE_KIND:
            raise NetworkError(f"{path}: not a pypod CNI cache entry")
        net = parse_config(doc["config"], doc.get("source") or str(path))
        rt = RuntimeConf(doc["containerId"], doc.get("netns") or "", doc["ifName"],
                         doc.get("cniArgs") or {}, doc.get("capabilityArgs") or {})
        return CacheEntry(net, rt, doc.get("result"), bool(doc.get("complete")), path)

    def cached(self, network: str, container_id: str, ifname: str) -> CacheEntry | None:
        return self._read_cache(self.cache_path(network, container_id, ifname))

    def cached_attachments(self) -> list[CacheEntry]:
        """Every cached attachment (for garbage collection); unreadable entries are skipped."""
        out = []
        d = self.cache_dir / "results"
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        for n in names:
            if n.startswith("."):
                continue
            try:
                e = self._read_cache(d / n)
            except (NetworkError, KeyError):
                continue
            if e is not None:
                out.append(e)
        return out

    def _lock(self, rt: RuntimeConf):
        import hashlib

        from ..lock import locked, stripe

        key = hashlib.sha256(rt.container_id.encode()).hexdigest()
        return locked(stripe(self.cache_dir / "locks", key))

    # -- execution ------------------------------------------------------------------------------
    def _exec(self, net: NetworkConfig, plugin: Mapping[str, Any], command: str, rt: RuntimeConf,
              prev: Mapping[str, Any] | None) -> dict[str, Any] | None:
        ptype = plugin["type"]
        try:
            exe = find_plugin(ptype, self.plugin_paths)
        except PluginNotFound as e:
            raise PluginNotFound(f"{net.label()}: {e}") from None
        env = self._environ()
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=rt.container_id, CNI_NETNS=rt.netns,
                   CNI_IFNAME=rt.ifname, CNI_PATH=":".join(self.plugin_paths))
        cargs = rt.cni_args()
        if cargs:
            env["CNI_ARGS"] = cargs
        stdin = _derive(net, plugin, prev, rt.capability_args)
        import subprocess

        try:
            p = subprocess.run([str(exe)], input=stdin, capture_output=True, env=env, cwd="/",
                               timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise PluginError(f"{net.label()}: plugin {ptype} {command} timed out after {self.timeout:g}s",
                              plugin=ptype, network=net.name, source=net.source, command=command) from None
        except OSError as e:
            raise PluginError(f"{net.label()}: plugin {ptype} could not be executed: {e.strerror}",
                              plugin=ptype, network=net.name, source=net.source, command=command) from None
        if p.returncode != 0:
            raise _plugin_error(net, ptype, command, p.returncode, p.stdout, p.stderr)
        if command != "ADD":
            return None
        out = p.stdout.strip()
        if not out:
            if prev is not None:
                return dict(prev)
            raise PluginError(f"{net.label()}: plugin {ptype} ADD returned no result",
                              plugin=ptype, network=net.name, source=net.source, command=command)
        try:
            res = json.loads(out)
        except ValueError:
            raise PluginError(f"{net.label()}: plugin {ptype} ADD returned invalid JSON: {out[:200]!r}",
                              plugin=ptype, network=net.name, source=net.source, command=command) from None
        if not isinstance(res, dict):
            raise PluginError(f"{net.label()}: plugin {ptype} ADD returned a non-object result",
                              plugin=ptype, network=net.name, source=net.source, command=command)
        return res

    def add(self, net: NetworkConfig, rt: RuntimeConf) -> Result:
        """ADD the attachment. On failure the attachment is deleted again (best effort) before the
        error is raised, so a failed ADD leaves nothing behind; if that DEL fails too, the cache
        entry stays for a later :meth:`delete`."""
        _check_attachment(rt)
        with self._lock(rt):
            self._write_cache(net, rt, None, False)  # intent first: a crash mid-ADD is still deletable
            prev: dict[str, Any] | None = None
            ran = 0
            try:
                for plugin in net.plugins:
                    prev = self._exec(net, plugin, "ADD", rt, prev)
                    ran += 1
                    self._write_cache(net, rt, prev, False)
                if prev is None:  # pragma: no cover - parse_config guarantees one plugin
                    raise NetworkError(f"{net.label()}: no plugins")
                self._write_cache(net, rt, prev, True)
                return Result.parse(prev)
            except BaseException as e:
                # plugins that never ran and cannot be found have nothing to undo
                errors = self._delete_locked(net, rt, prev, never_ran=range(ran, len(net.plugins)))
                if errors and isinstance(e, Exception):
                    e.add_note("cleanup after the failed ADD also failed: " + "; ".join(errors))
                raise

    def check(self, net: NetworkConfig, rt: RuntimeConf) -> None:
        """CHECK the attachment against the cached ADD result (a no-op with ``disableCheck``)."""
        _check_attachment(rt)
        with self._lock(rt):
            entry = self.cached(net.name, rt.container_id, rt.ifname)
            if entry is None or not entry.complete:
                raise NetworkError(f"{net.label()}: container {rt.container_id} ({rt.ifname}) is not attached")
            net = entry.network
            if net.disable_check:
                return
            if version_tuple(net.cni_version) < (0, 4, 0):
                raise NetworkError(f"{net.label()}: cniVersion {net.cni_version} does not support CHECK")
            rt = RuntimeConf(rt.container_id, rt.netns, rt.ifname, entry.rt.args, entry.rt.capability_args)
            for plugin in net.plugins:
                self._exec(net, plugin, "CHECK", rt, entry.result)

    def delete(self, net: NetworkConfig | None, rt: RuntimeConf) -> None:
        """DEL the attachment: all plugins in reverse order with the cached result, every one run even
        if an earlier one fails. The cached configuration and arguments win over ``net`` (the spec
        forbids changing them between ADD and DEL); with neither, there is nothing to delete.
        Idempotent; raises NetworkError listing every failure (the cache entry then stays)."""
        _check_attachment(rt)
        with self._lock(rt):
            errors = self._delete_locked(net, rt, None)
        if errors:
            raise NetworkError("; ".join(errors))

    def _delete_locked(self, net: NetworkConfig | None, rt: RuntimeConf,
                       prev: Mapping[str, Any] | None, never_ran: range = range(0)) -> list[str]:
        name = net.name if net is not None else None
        entry = self.cached(name, rt.container_id, rt.ifname) if name else None
        result = prev
        if entry is not None:
            net = entry.network
            rt = RuntimeConf(rt.container_id, rt.netns, rt.ifname, entry.rt.args, entry.rt.capability_args)
            if result is None:
                result = entry.result
        if net is None:
            return []
        if version_tuple(net.cni_version) < (0, 4, 0):
            result = None  # prevResult on DEL arrived with spec 0.4.0
        from . import ipmasq

        # bridge/ptp find their masquerade rules through the container's interface (plugins#810)
        sweep = ipmasq.wants_sweep(net.plugins) and not _iface_present(rt.netns, rt.ifname)
        errors: list[str] = []
        for i in reversed(range(len(net.plugins))):
            try:
                self._exec(net, net.plugins[i], "DEL", rt, result)
            except PluginNotFound as e:
                if i not in never_ran:
                    errors.append(str(e))
            except NetworkError as e:
                errors.append(str(e))
        if not errors and sweep:
            ipmasq.sweep(net.name, rt.container_id)
        if not errors:
            try:
                os.unlink(self.cache_path(net.name, rt.container_id, rt.ifname))
            except FileNotFoundError:
                pass
        return errors

    def version(self, plugin: str, cni_version: str = "1.0.0") -> list[str]:
        """The spec versions a plugin supports (the VERSION command)."""
        import subprocess

        exe = find_plugin(plugin, self.plugin_paths)
        env = dict(self._environ(), CNI_COMMAND="VERSION")
        p = subprocess.run([str(exe)], input=json.dumps({"cniVersion": cni_version}).encode(),
                           capture_output=True, env=env, timeout=self.timeout)
        try:
            return list(json.loads(p.stdout)["supportedVersions"])
        except (ValueError, KeyError, TypeError):
            raise NetworkError(f"plugin {plugin}: unexpected VERSION output {p.stdout[:200]!r}") from None


def _iface_present(netns_path: str, ifname: str) -> bool:
    if not netns_path:
        return False
    from . import netns

    if not netns.is_netns(netns_path):
        return False
    import socket

    try:
        return ifname in {n for _, n in netns.run_in(netns_path, socket.if_nameindex)}
    except (OSError, PypodError):
        return False


def _check_attachment(rt: RuntimeConf) -> None:
    if not valid_name(rt.container_id):
        raise NetworkError(f"invalid CNI container id {rt.container_id!r}")
    if not rt.ifname or len(rt.ifname) > 15 or "/" in rt.ifname or rt.ifname in (".", ".."):
        raise NetworkError(f"invalid interface name {rt.ifname!r}")


def _plugin_error(net: NetworkConfig, ptype: str, command: str, rc: int, stdout: bytes,
                  stderr: bytes) -> PluginError:
    code: int | None = None
    msg = details = ""
    try:
        obj = json.loads(stdout)
        if isinstance(obj, dict):
            code = obj.get("code") if isinstance(obj.get("code"), int) else None
            msg = str(obj.get("msg") or "")
            details = str(obj.get("details") or "")
    except ValueError:
        pass
    if msg or details:
        text = msg + (f": {details}" if details and details != msg else "")
        if code is not None:
            text += f" (CNI error code {code})"
    else:
        lines = (stderr or stdout).decode(errors="replace").strip().splitlines()
        text = " / ".join(lines[-3:]) or f"exit status {rc}"
    verb = {"ADD": "", "DEL": " (DEL)", "CHECK": " (CHECK)"}.get(command, f" ({command})")
    return PluginError(f"{net.label()}: plugin {ptype} failed{verb}: {text}", plugin=ptype,
                       network=net.name, source=net.source, command=command, code=code, msg=msg,
                       details=details)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename: readers see the old or the new content, never a torn one (no fsync: the
    cache must survive a crash of the engine, which rename guarantees, not a power loss)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def iter_plugin_types(nets: Iterable[NetworkConfig]) -> set[str]:
    return {t for n in nets for t in n.plugin_types}
