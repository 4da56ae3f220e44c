"""pypod-cri's settings: defaults, then ``[cri]`` in pypod.toml, then flags.

::

    [cri]
    listen = "/run/pypod/cri.sock"    # the gRPC unix socket (RuntimeService + ImageService)
    streaming_address = "127.0.0.1"   # where Exec/Attach/PortForward URLs point (the kubelet
    streaming_port = 0                #   proxies to it; 0 picks a free port)
    network = "default"               # the pypod network sandboxes attach to (not host-network ones)
    stop_grace = 0                    # seconds StopPodSandbox gives containers still running
    pod_cidr = ""                     # informational (UpdateRuntimeConfig sets it at run time)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from pypod.errors import UsageError

DEFAULT_SOCKET = "/run/pypod/cri.sock"


@dataclass
class CriConfig:
    listen: str = DEFAULT_SOCKET
    streaming_address: str = "127.0.0.1"
    streaming_port: int = 0
    network: str = "default"
    stop_grace: float = 0.0
    pod_cidr: str = ""

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "CriConfig":
        cfg = cls()
        known = {f.name: f for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise UsageError(f"[cri]: unknown setting {key!r} (known: {', '.join(known)})")
            want = type(getattr(cfg, key))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool):
                raise UsageError(f"[cri] {key}: expected a {want.__name__}, not {value!r}")
            setattr(cfg, key, value)
        return cfg

    @property
    def endpoint(self) -> str:
        return "unix://" + self.listen
