"""Unwedging a bridge that a failed ADD left with no MAC address (containernetworking/plugins#620).

The reference ``bridge`` plugin (1.1.1, and upstream still) pins the bridge's MAC address when it
gives the bridge its gateway address, by setting the address it read before attaching the
container's veth (``LinkSetHardwareAddr(br, br.Attrs().HardwareAddr)``). If the ADD that created
the bridge fails before that step (e.g. host-local refuses a requested static IP), the bridge keeps
an address that follows its ports, and when its last port goes Linux gives it the all-zero address.
Every later ADD then reads zeros, the kernel refuses them, and the network is wedged with
``could not set bridge's mac: invalid argument`` until the bridge is deleted.

Before an ADD, pypod gives such a bridge (all-zero address, which also means no port is attached) a
random locally administered address, as the kernel does for a new bridge; the plugin then pins it.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Iterable

ZERO_MAC = "00:00:00:00:00:00"
DEFAULT_BRIDGE = "cni0"  # the bridge plugin's default name


def bridges_of(plugins: Iterable[dict[str, Any]]) -> list[str]:
    """The bridges the ``bridge`` plugins of a network attach to."""
    out = []
    for p in plugins:
        if p.get("type") == "bridge":
            name = p.get("bridge") or DEFAULT_BRIDGE
            if isinstance(name, str) and name not in (".", "..") and "/" not in name and "\0" not in name:
                out.append(name)
    return out


def _random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def repair(bridges: Iterable[str]) -> list[str]:
    """Give each existing bridge among ``bridges`` whose address is all zeros a random one; returns
    the bridges changed. Costs one small file read per bridge when there is nothing to do."""
    fixed = []
    for name in bridges:
        try:
            with open(f"/sys/class/net/{name}/address") as f:
                addr = f.read().strip()
        except OSError:
            continue  # no such interface yet: the plugin creates it with a fresh address
        if addr != ZERO_MAC or not os.path.isdir(f"/sys/class/net/{name}/bridge"):
            continue
        p = subprocess.run(["ip", "link", "set", "dev", name, "address", _random_mac()],
                           capture_output=True, text=True)
        if p.returncode == 0:
            fixed.append(name)
    return fixed
