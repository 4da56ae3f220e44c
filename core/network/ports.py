"""Port forwarding requests: ``--port`` parsing and validation, and the CNI ``portMappings`` form.

Syntax (rkt's order: the pod side first)::

    CONTAINERPORT:[HOSTIP:]HOSTPORT[/tcp|udp|sctp]    80:8080  53:127.0.0.1:5353/udp  80:[::1]:8080
    NAME:[HOSTIP:]HOSTPORT                            80-tcp:8080  (a port the image declares)

A NAME is resolved from the image's declared ports: an OCI/Docker ``ExposedPorts`` key ``80/tcp`` is
named ``80-tcp`` (rkt's convention), and explicit ``{name: (port, protocol)}`` entries are accepted
too. A host IP of ``0.0.0.0`` or ``::`` means all addresses (the default).

The pod engine learns the declared ports only once the images are resolved: the flags are parsed
with ``parse_port(spec, resolve=False)``, which keeps a NAME unresolved (``container_port`` 0,
``name`` set), and :func:`resolve_port` completes it against the images' ``ExposedPorts`` at prepare
time. Both go through the same lookup, so the syntax and the messages are the same either way.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import UsageError

PROTOCOLS = ("tcp", "udp", "sctp")
_PORT_KEY_RE = re.compile(r"(\d+)(?:/([A-Za-z]+))?\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


@dataclass(frozen=True)
class PortMapping:
    """Field-compatible with the pod manifest's ``Port``."""

    container_port: int             # 0 while a named port is unresolved
    protocol: str = "tcp"           # "" for a named port whose protocol was not given
    host_port: int = 0
    host_ip: str | None = None
    name: str | None = field(default=None, compare=False)  # the image-declared port it names

    @property
    def resolved(self) -> bool:
        return self.container_port > 0

    def to_cni(self) -> dict[str, Any]:
        d: dict[str, Any] = {"hostPort": self.host_port, "containerPort": self.container_port,
                             "protocol": self.protocol}
        if self.host_ip:
            d["hostIP"] = self.host_ip
        return d

    def __str__(self) -> str:
        host = f"[{self.host_ip}]" if self.host_ip and ":" in self.host_ip else self.host_ip
        pod_side = self.container_port if self.resolved or not self.name else self.name
        proto = f"/{self.protocol}" if self.protocol else ""
        return f"{pod_side}:{host + ':' if host else ''}{self.host_port}{proto}"

    @classmethod
    def from_any(cls, p: Any) -> "PortMapping":
        """From a PortMapping, a manifest ``Port`` or a CNI ``portMappings`` dict (validated)."""
        try:
            m = cls._convert(p)
        except (TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"invalid port mapping {p!r}: {e}") from None
        return _validated(m, str(m))

    @classmethod
    def _convert(cls, p: Any) -> "PortMapping":
        if isinstance(p, Mapping):
            name = p.get("name") or None
            cport = int(p.get("containerPort", 0) or 0)
            return cls(cport, str(p.get("protocol") or ("" if name and not cport else "tcp")).lower(),
                       int(p.get("hostPort", 0)), p.get("hostIP") or None, name)
        name = getattr(p, "name", None) or None
        cport = int(p.container_port or 0)
        return cls(cport, str(p.protocol or ("" if name and not cport else "tcp")).lower(), int(p.host_port),
                   getattr(p, "host_ip", None) or None, name)


def exposed_port_names(exposed: Mapping[str, Any] | Iterable[str] | None) -> dict[str, tuple[int, str]]:
    """``{"80-tcp": (80, "tcp"), ...}`` from an image's ``ExposedPorts`` (``{"80/tcp": {}}``) or a
    list of such keys; entries already of the form ``{name: (port, proto)}`` are kept as they are."""
    names: dict[str, tuple[int, str]] = {}
    if not exposed:
        return names
    items = exposed.items() if isinstance(exposed, Mapping) else ((k, None) for k in exposed)
    for key, value in items:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            names[str(key)] = (int(value[0]), str(value[1]).lower())
            continue
        m = _PORT_KEY_RE.match(str(key).strip())
        if m:
            proto = (m.group(2) or "tcp").lower()
            names[f"{int(m.group(1))}-{proto}"] = (int(m.group(1)), proto)
    return names


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"--port {spec}: invalid {what} {text!r} (1-65535)")
    return int(text)


def _host_ip(text: str, spec: str) -> str | None:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"--port {spec}: invalid host IP {text!r}") from None
    return None if ip.is_unspecified else str(ip)


def parse_port(spec: str, exposed: Mapping[str, Any] | Iterable[str] | None = None, *,
               resolve: bool = True) -> PortMapping:
    """Parse one ``--port`` value (see the module doc); UsageError naming the problem. A NAME is
    looked up in ``exposed``; with ``resolve=False`` it is kept for :func:`resolve_port`."""
    text = spec.strip()
    proto: str | None = None
    if "/" in text:
        text, _, proto = text.rpartition("/")
        proto = proto.lower()
        if proto not in PROTOCOLS:
            raise UsageError(f"--port {spec}: unknown protocol {proto!r} (tcp, udp or sctp)")
    head, sep, tail = text.partition(":")
    if not sep or not head or not tail:
        raise UsageError(f"--port {spec}: expected CONTAINERPORT:[HOSTIP:]HOSTPORT[/PROTO] or NAME:[HOSTIP:]HOSTPORT")
    if tail.startswith("["):  # [v6]:port
        close = tail.find("]")
        if close < 0 or tail[close + 1:close + 2] != ":":
            raise UsageError(f"--port {spec}: expected [IPv6]:HOSTPORT")
        host_ip: str | None = _host_ip(tail[:close + 1], spec)
        host_text = tail[close + 2:]
    elif ":" in tail:
        ip_text, _, host_text = tail.rpartition(":")
        host_ip = _host_ip(ip_text, spec)
    else:
        host_ip, host_text = None, tail
    host_port = _port(host_text, "host port", spec)
    if head.isdigit():
        cport = _port(head, "container port", spec)
        return _validated(PortMapping(cport, proto or "tcp", host_port, host_ip), spec)
    if not _NAME_RE.match(head):
        raise UsageError(f"--port {spec}: invalid container port or port name {head!r}")
    named = PortMapping(0, proto or "", host_port, host_ip, head)
    return resolve_port(named, exposed, spec) if resolve else named


def resolve_port(m: Any, exposed: Mapping[str, Any] | Iterable[str] | None, spec: str | None = None
                 ) -> PortMapping:
    """A named mapping (``PortMapping``/manifest ``Port``/CNI dict with ``name`` and no container
    port) completed from the declared ports ``exposed`` (see :func:`exposed_port_names`); anything
    else is returned validated. UsageError naming the declared ports when NAME is not one of them."""
    m = m if isinstance(m, PortMapping) else PortMapping._convert(m)
    spec = spec or str(m)
    if m.resolved or not m.name:
        return _validated(m, spec)
    names = exposed_port_names(exposed)
    if m.name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UsageError(f"--port {spec}: the image declares no port named {m.name!r} (declared: {known})")
    cport, nproto = names[m.name]
    if m.protocol and m.protocol != nproto:
        raise UsageError(f"--port {spec}: port {m.name!r} is {nproto}, not {m.protocol}")
    return _validated(PortMapping(cport, nproto, m.host_port, m.host_ip, m.name), spec)


def _validated(m: PortMapping, spec: str) -> PortMapping:
    if m.name and not m.resolved:
        raise UsageError(f"port {spec}: the named port {m.name!r} was not resolved against the image's "
                         "declared ports")
    if m.protocol not in PROTOCOLS:
        raise UsageError(f"port {spec}: unknown protocol {m.protocol!r}")
    if not 1 <= m.container_port <= 65535:
        raise UsageError(f"port {spec}: invalid container port {m.container_port}")
    if not 1 <= m.host_port <= 65535:
        raise UsageError(f"port {spec}: invalid host port {m.host_port}")
    if m.host_ip is not None:
        try:
            ip = ipaddress.ip_address(m.host_ip)
        except ValueError:
            raise UsageError(f"port {spec}: invalid host IP {m.host_ip!r}") from None
        return PortMapping(m.container_port, m.protocol, m.host_port, None if ip.is_unspecified else str(ip),
                           m.name)
    return m


def check_ports(ports: Iterable[Any]) -> list[PortMapping]:
    """Normalise and refuse two mappings of the same host port and protocol on overlapping
    addresses (a wildcard overlaps every address). Entries with host port 0 (a manifest's
    declared-but-unpublished ports) are dropped."""
    out: list[PortMapping] = []
    for p in ports:
        if not isinstance(p, (str, bytes)) and _host_port_of(p) == 0:
            continue
        m = PortMapping.from_any(p)
        for o in out:
            if (o.host_port, o.protocol) == (m.host_port, m.protocol) and \
                    (o.host_ip is None or m.host_ip is None or o.host_ip == m.host_ip):
                raise UsageError(f"--port {m}: host port {m.host_port}/{m.protocol} is already mapped ({o})")
        out.append(m)
    return out


def _host_port_of(p: Any) -> Any:
    return p.get("hostPort", 0) if isinstance(p, Mapping) else getattr(p, "host_port", None)


def parse_ports(specs: Iterable[str], exposed: Mapping[str, Any] | Iterable[str] | None = None) -> list[PortMapping]:
    return check_ports(parse_port(s, exposed) for s in specs)
