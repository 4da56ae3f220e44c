"""What pods leave on the machine: processes, mounts, network namespaces, veths, iptables rules,
cgroups. Tests snapshot before and compare after; anything new is a leak.

With ``ids`` (the pods' UUIDs) only what names one of them counts, so that other test runs on the
same machine (developers run several at once) are not mistaken for this test's leaks."""

from __future__ import annotations

import glob
import os
import subprocess
import time
from dataclasses import dataclass

RUNTIME_PROCS = ("conmon", "crun", "runc", "catatonit")


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def runtime_processes() -> set[str]:
    """Live (not zombie) conmon, runtime and catatonit processes, as 'pid comm'."""
    return {f"{p} {_comm(p)}" for p in os.listdir("/proc") if p.isdigit()
            and _comm(p) in RUNTIME_PROCS and _state(p) != "Z"}


def mounts(*prefixes: str) -> set[str]:
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if any(point.startswith(p) for p in prefixes):
                found.add(point)
    return found


def netns() -> set[str]:
    return set(glob.glob("/run/pypod/netns/*"))


def veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def iptables() -> set[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if line.startswith("-A") and ("CNI" in line or "pypod" in line)}


def cgroups() -> set[str]:
    return {d for d in glob.glob("/sys/fs/cgroup/*/pypod/*") + glob.glob("/sys/fs/cgroup/unified/pypod/*")
            if os.path.isdir(d)}


@dataclass
class Snapshot:
    procs: set[str]
    mounts: set[str]
    netns: set[str]
    veths: set[str]
    iptables: set[str]
    cgroups: set[str]

    @classmethod
    def take(cls, *mount_prefixes: str) -> "Snapshot":
        return cls(runtime_processes(), mounts("/run/pypod", *mount_prefixes), netns(), veths(), iptables(),
                   cgroups())

    def new_since(self, before: "Snapshot", ids: set[str] | None = None) -> dict[str, set[str]]:
        out = {}
        for k, v in self.__dict__.items():
            new = v - getattr(before, k)
            if ids is not None:
                new = {item for item in new if k != "veths" and any(i in _describe(k, item) for i in ids)}
            if new:
                out[k] = new
        return out


def _describe(kind: str, item: str) -> str:
    if kind == "procs":
        pid = item.split()[0]
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return item + " " + f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return item
    return item


def pod_ids(data_dir) -> set[str]:
    """Every pod a data dir has seen, from its event log (the ids a test's leaks are named by)."""
    import json
    from pathlib import Path

    ids = set()
    for log in Path(data_dir).glob("events.log*"):
        for line in log.read_text().splitlines():
            try:
                pod = json.loads(line).get("pod")
            except ValueError:
                continue
            if pod:
                ids.add(pod)
    return ids


def leaked(before: Snapshot, *mount_prefixes: str, ids: set[str] | None = None,
           settle: float = 5.0) -> dict[str, set[str]]:
    """What is new since ``before``; processes get ``settle`` seconds to finish exiting."""
    from pypod.stage1 import conmon

    deadline = time.monotonic() + settle
    while True:
        conmon.reap_adopted()
        found = Snapshot.take(*mount_prefixes).new_since(before, ids)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def collect_and_check(p, tmp_path, before: Snapshot) -> None:
    """A pods fixture's teardown: stop every pod of the Pypod ``p``, gc them all, then fail the
    test on anything of theirs left on the machine (lazy-unmounting leftovers so the next test
    starts clean)."""
    import subprocess

    for pod in p("list", "--format", "json", check=False).json() if p.data_dir.exists() else []:
        if pod["state"] == "running":
            p("stop", "--force", pod["uuid"], check=False)
    gc = p("gc", "--grace-period", "0s", "--expire-prepared", "0s", check=False)
    left = leaked(before, str(tmp_path), ids=pod_ids(p.data_dir) | {str(tmp_path)})
    if left:
        subprocess.run(["sh", "-c", f"grep {tmp_path} /proc/self/mountinfo | cut -d' ' -f5 | sort -r | "
                        "xargs -r -n1 umount -l"], check=False)
    assert gc.rc == 0, gc.err
    assert not left, f"leaked: {left}"
