"""The reference plugins' per-host iptables scaffolding, and removing it when nothing uses it.

``portmap`` creates ``CNI-HOSTPORT-DNAT`` (jumped to from PREROUTING and OUTPUT),
``CNI-HOSTPORT-MASQ`` (from POSTROUTING) and ``CNI-HOSTPORT-SETMARK``; ``firewall`` creates
``CNI-FORWARD`` (from FORWARD) and ``CNI-ADMIN``. They are shared by every CNI user on the host
(podman, containerd...) and never removed by the plugins. :func:`remove_unused` removes them only
when they hold no per-container rule (and ``CNI-ADMIN`` no administrator rule); the plugins
recreate them idempotently on their next ADD. Meant for an idle host (``pypod gc``-style
housekeeping, the end of a test session or benchmark): a concurrent ADD by another runtime between
the check and the removal would lose its jump until its next ADD.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")
FIREWALL_CHAINS = ("CNI-FORWARD", "CNI-ADMIN")


def _tables(save: str) -> dict[str, tuple[set[str], list[list[str]]]]:
    """``{table: (chains, rules as argv after -A)}`` from ``iptables-save``."""
    p = subprocess.run([save], capture_output=True, text=True)
    out: dict[str, tuple[set[str], list[list[str]]]] = {}
    table = ""
    for line in p.stdout.splitlines() if p.returncode == 0 else []:
        if line.startswith("*"):
            table = line[1:]
            out[table] = (set(), [])
        elif line.startswith(":") and table:
            out[table][0].add(line[1:].split()[0])
        elif line.startswith("-A ") and table:
            try:
                out[table][1].append(shlex.split(line)[1:])
            except ValueError:
                continue
    return out


def _target(rule: list[str]) -> str:
    return rule[rule.index("-j") + 1] if "-j" in rule and rule.index("-j") + 1 < len(rule) else ""


def remove_unused() -> list[str]:
    """Remove the portmap and firewall scaffolding (IPv4 and IPv6) where it is unused; returns what went."""
    removed: list[str] = []
    for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if not shutil.which(save):
            continue
        tables = _tables(save)

        def run(table: str, *args: str) -> None:
            subprocess.run([tool, "-w", "-t", table, *args], capture_output=True)

        def drop(table: str, chains: tuple[str, ...], referenced_from: tuple[str, ...]) -> None:
            _, rules = tables[table]
            for r in rules:
                if r[0] in referenced_from and _target(r) in chains:
                    run(table, "-D", *r)
            for c in chains:
                if c in tables[table][0]:
                    run(table, "-F", c)
            for c in chains:
                if c in tables[table][0]:
                    run(table, "-X", c)
                    removed.append(f"{tool} {table} {c}")

        if "nat" in tables:
            chains, rules = tables["nat"]
            if "CNI-HOSTPORT-DNAT" in chains and not any(r[0] == "CNI-HOSTPORT-DNAT" for r in rules) \
                    and not any(r[0].startswith("CNI-DN-") for r in rules):
                drop("nat", PORTMAP_CHAINS, ("PREROUTING", "OUTPUT", "POSTROUTING"))
        if "filter" in tables:
            chains, rules = tables["filter"]
            fw = [r for r in rules if r[0] == "CNI-FORWARD"]
            if "CNI-FORWARD" in chains and all(_target(r) == "CNI-ADMIN" for r in fw) \
                    and not any(r[0] == "CNI-ADMIN" for r in rules):
                drop("filter", FIREWALL_CHAINS, ("FORWARD",))
    return removed
