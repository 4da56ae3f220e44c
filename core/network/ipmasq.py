"""Removing a bridge/ptp attachment's masquerade rules that the plugin's own DEL cannot find.

The reference ``bridge`` and ``ptp`` plugins (1.1.1, and upstream still) tear their ``ipMasq`` rules
down from the addresses they read off the container's interface during DEL. When the namespace or
the interface is already gone (a namespace removed before DEL, an interface deleted inside it, DEL
with an empty ``CNI_NETNS``), DEL succeeds but the rules stay — containernetworking/plugins#810.
The rules carry a fixed comment, ``name: "<network>" id: "<container id>"``, so pypod removes exactly
those after such a DEL: the POSTROUTING jumps with that comment and the ``CNI-…`` chains they jump
to (when every rule in them carries the same comment).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

MASQ_PLUGINS = ("bridge", "ptp")


def wants_sweep(plugins: list[dict] | tuple[dict, ...]) -> bool:
    return any(p.get("type") in MASQ_PLUGINS and p.get("ipMasq") for p in plugins)


def _comment_of(tokens: list[str]) -> str | None:
    for i, t in enumerate(tokens[:-1]):
        if t == "--comment":
            return tokens[i + 1]
    return None


def sweep(network: str, container_id: str) -> list[str]:
    """Delete the masquerade rules and chains of one attachment (IPv4 and IPv6); returns what went."""
    comment = f'name: "{network}" id: "{container_id}"'
    removed: list[str] = []
    for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if not shutil.which(save):
            continue
        p = subprocess.run([save, "-t", "nat"], capture_output=True, text=True)
        if p.returncode != 0:
            continue
        jumps: list[list[str]] = []
        chains: dict[str, list[list[str]]] = {}
        for line in p.stdout.splitlines():
            if not line.startswith("-A "):
                continue
            try:
                tokens = shlex.split(line)
            except ValueError:
                continue
            chain = tokens[1]
            if chain.startswith("CNI-"):
                chains.setdefault(chain, []).append(tokens)
            elif chain == "POSTROUTING" and _comment_of(tokens) == comment:
                jumps.append(tokens)
        for tokens in jumps:
            target = tokens[tokens.index("-j") + 1] if "-j" in tokens else ""
            subprocess.run([tool, "-w", "-t", "nat", "-D", *tokens[1:]], capture_output=True)
            removed.append(f"{tool} nat {' '.join(tokens[1:])}")
            rules = chains.get(target, [])
            if target.startswith("CNI-") and all(_comment_of(r) == comment for r in rules):
                subprocess.run([tool, "-w", "-t", "nat", "-F", target], capture_output=True)
                subprocess.run([tool, "-w", "-t", "nat", "-X", target], capture_output=True)
                removed.append(f"{tool} nat chain {target}")
                chains.pop(target, None)
        for chain, rules in chains.items():  # a chain whose jump is already gone
            if rules and all(_comment_of(r) == comment for r in rules):
                subprocess.run([tool, "-w", "-t", "nat", "-F", chain], capture_output=True)
                subprocess.run([tool, "-w", "-t", "nat", "-X", chain], capture_output=True)
                removed.append(f"{tool} nat chain {chain}")
    return removed
