"""cgroups for stage1: layout detection, pypod's cgroup paths, OCI resources, stats and removal.

pypod places everything a pod runs under one parent (``/pypod`` by default), on every hierarchy::

    <parent>/<pod>/infra          the infra container (catatonit -P)
    <parent>/<pod>/conmon         every conmon of the pod (moved there before it forks)
    <parent>/<pod>/apps/<app>     one app container

The same relative paths are used on cgroup v1 (one directory per mounted hierarchy), on cgroup v2
(one directory in the unified tree) and on hybrid hosts (v1 hierarchies plus a cgroup2 mount at
``/sys/fs/cgroup/unified``: runc mirrors containers there, so pypod removes them there too).
The runtimes get these as an explicit ``linux.cgroupsPath`` (cgroupfs driver): with an empty
cgroupsPath crun escapes to the root while runc nests under the caller, so it is never left empty.

Nothing here spawns a process; detection reads ``/proc/self/mountinfo`` once per process.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field
from functools import lru_cache

from . import Stage1Error

DEFAULT_PARENT = "/pypod"
CPU_PERIOD = 100_000  # µs, the kernel's default CFS period
_V1_KNOWN = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
             "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc")


@dataclass(frozen=True)
class Layout:
    """The host's cgroup mounts.

    ``v1`` maps each v1 controller (and named hierarchies as ``name=<x>``) to its mount point;
    co-mounted controllers (``cpu,cpuacct``) map to the same directory.
    """

    mode: str  # "v1" | "v2" | "hybrid"
    v1: dict[str, str] = field(default_factory=dict)
    unified: str | None = None
    unified_controllers: tuple[str, ...] = ()

    @property
    def hierarchies(self) -> list[str]:
        """Every mount point pypod creates or removes directories in (v1 ones, then cgroup2)."""
        seen: list[str] = []
        for mnt in self.v1.values():
            if mnt not in seen:
                seen.append(mnt)
        if self.unified and self.unified not in seen:
            seen.append(self.unified)
        return seen

    @property
    def crun_needs_private_mount(self) -> bool:
        """crun 1.8 refuses hybrid hosts whose cgroup2 mount has controllers enabled."""
        return self.mode == "hybrid" and self.unified == "/sys/fs/cgroup/unified" \
            and bool(self.unified_controllers)

    @property
    def swap_accounting(self) -> bool:
        """Whether a memory+swap limit can be set (v1 memsw files, or v2 memory.swap.max)."""
        if self.mode == "v2":
            return _any_child_has(self.unified, "memory.swap.max")
        mem = self.v1.get("memory")
        return bool(mem) and os.path.exists(os.path.join(mem, "memory.memsw.limit_in_bytes"))

    def stats_dir(self, controller: str, path: str) -> str | None:
        """Directory holding ``controller``'s files for the cgroup ``path``."""
        if self.mode == "v2":
            return _join(self.unified, path) if self.unified else None
        mnt = self.v1.get(controller)
        return _join(mnt, path) if mnt else None


def _any_child_has(root: str | None, name: str) -> bool:
    # memory.swap.max exists only in non-root cgroups on v2; look one level down.
    if not root:
        return False
    try:
        for entry in os.scandir(root):
            if entry.is_dir() and os.path.exists(os.path.join(entry.path, name)):
                return True
    except OSError:
        pass
    return False


def _join(mnt: str, path: str) -> str:
    return os.path.join(mnt, path.lstrip("/"))


def parse_mountinfo(text: str) -> Layout:
    """Build a :class:`Layout` from the text of a mountinfo file (pure; unit-tested)."""
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, mountpoint = rfields[0], _unescape(fields[4])
        if fstype == "cgroup2":
            if unified is None:
                unified = mountpoint
        elif fstype == "cgroup":
            for opt in rfields[2].split(","):
                if opt in _V1_KNOWN or opt.startswith("name="):
                    v1.setdefault(opt, mountpoint)
    if v1:
        mode = "hybrid" if unified else "v1"
    elif unified:
        mode = "v2"
    else:
        raise Stage1Error("no cgroup filesystem is mounted")
    return Layout(mode=mode, v1=v1, unified=unified)


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


@lru_cache(maxsize=1)
def detect() -> Layout:
    """The host's cgroup layout (cached per process)."""
    with open("/proc/self/mountinfo") as f:
        layout = parse_mountinfo(f.read())
    if layout.unified:
        try:
            with open(os.path.join(layout.unified, "cgroup.controllers")) as f:
                ctrls = tuple(f.read().split())
        except OSError:
            ctrls = ()
        layout = Layout(layout.mode, layout.v1, layout.unified, ctrls)
    return layout


# --- paths ---------------------------------------------------------------------------------------

def _check_component(name: str, what: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise Stage1Error(f"invalid {what} for a cgroup path: {name!r}")
    return name


def pod_path(pod: str, parent: str = DEFAULT_PARENT) -> str:
    """``<parent>/<pod>``: every cgroup of the pod lives below it."""
    if not parent.startswith("/"):
        raise Stage1Error(f"cgroup parent must be absolute: {parent!r}")
    return f"{parent.rstrip('/')}/{_check_component(pod, 'pod id')}"


def app_path(pod: str, app: str, parent: str = DEFAULT_PARENT) -> str:
    """``<parent>/<pod>/apps/<app>``: an app container's ``linux.cgroupsPath``."""
    return f"{pod_path(pod, parent)}/apps/{_check_component(app, 'app name')}"


def infra_path(pod: str, parent: str = DEFAULT_PARENT) -> str:
    return f"{pod_path(pod, parent)}/infra"


def conmon_path(pod: str, parent: str = DEFAULT_PARENT) -> str:
    return f"{pod_path(pod, parent)}/conmon"


# --- resources -----------------------------------------------------------------------------------

def millicores_to_quota(millis: int, period: int = CPU_PERIOD) -> tuple[int, int]:
    """CPU limit in millicores → (cfs quota µs, period µs); 1000m is one full CPU."""
    if millis <= 0:
        raise Stage1Error(f"cpu limit must be positive, got {millis}m")
    return max(1000, millis * period // 1000), period


def millicores_to_shares(millis: int) -> int:
    """CPU request in millicores → cpu.shares (Kubernetes' formula: 1024 per CPU, 2..262144)."""
    if millis <= 0:
        return 2
    return min(262144, max(2, millis * 1024 // 1000))


def resources(*, memory: int | None = None, memory_reservation: int | None = None,
              memory_swap: int | None = None, swap_accounting: bool = True,
              cpu_limit_millis: int | None = None, cpu_request_millis: int | None = None,
              cpu_shares: int | None = None, cpu_period: int = CPU_PERIOD,
              cpuset_cpus: str | None = None, cpuset_mems: str | None = None,
              pids: int | None = None, unified: dict[str, str] | None = None,
              devices: list[dict] | None = None) -> dict:
    """OCI ``linux.resources`` from pypod's limits (pure).

    - ``memory``: hard limit in bytes. Unless ``memory_swap`` is given (memory+swap, OCI's
      meaning), swap is disabled for the app by setting memory+swap to the same value — only
      when the host accounts swap (``swap_accounting``), else runtimes fail to write memsw.
    - ``cpu_limit_millis`` → CFS quota/period; ``cpu_request_millis`` → cpu.shares (explicit
      ``cpu_shares`` wins). Runtimes translate shares/quota to cpu.weight/cpu.max on v2.
    - ``pids`` → pids.limit. ``unified`` is passed as ``linux.resources.unified`` (v2 only).
    - ``devices`` defaults to deny-all; the runtimes add their default allow list
      (null, zero, full, random, urandom, tty, ptmx, pts) on top.
    """
    res: dict = {"devices": devices if devices is not None else [{"allow": False, "access": "rwm"}]}
    mem: dict = {}
    if memory is not None:
        if memory <= 0:
            raise Stage1Error(f"memory limit must be positive, got {memory}")
        mem["limit"] = int(memory)
        if memory_swap is not None:
            if memory_swap != -1 and memory_swap < memory:
                raise Stage1Error("memory+swap limit is lower than the memory limit")
            mem["swap"] = int(memory_swap)
        elif swap_accounting:
            mem["swap"] = int(memory)
    elif memory_swap is not None:
        raise Stage1Error("a memory+swap limit needs a memory limit")
    if memory_reservation is not None:
        mem["reservation"] = int(memory_reservation)
    if mem:
        res["memory"] = mem
    cpu: dict = {}
    if cpu_limit_millis is not None:
        cpu["quota"], cpu["period"] = millicores_to_quota(cpu_limit_millis, cpu_period)
    if cpu_shares is not None:
        cpu["shares"] = int(cpu_shares)
    elif cpu_request_millis is not None:
        cpu["shares"] = millicores_to_shares(cpu_request_millis)
    if cpuset_cpus:
        cpu["cpus"] = cpuset_cpus
    if cpuset_mems:
        cpu["mems"] = cpuset_mems
    if cpu:
        res["cpu"] = cpu
    if pids is not None:
        if pids <= 0 and pids != -1:
            raise Stage1Error(f"pids limit must be positive (or -1), got {pids}")
        res["pids"] = {"limit": int(pids)}
    if unified:
        res["unified"] = dict(unified)
    return res


# --- stats ---------------------------------------------------------------------------------------

@dataclass
class Stats:
    memory_usage: int | None = None       # bytes now
    memory_max_usage: int | None = None   # high-water mark (v1, v2 memory.peak when present)
    memory_limit: int | None = None       # effective limit, None when unlimited
    cpu_usage_ns: int | None = None       # total CPU time
    pids: int | None = None               # tasks now
    oom_kills: int = 0                    # processes killed by the OOM killer in this cgroup


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str | None) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def oom_kills(path: str, layout: Layout | None = None) -> int:
    """How many processes the OOM killer killed in cgroup ``path`` (0 when unknown)."""
    layout = layout or detect()
    d = layout.stats_dir("memory", path)
    if d is None:
        return 0
    if layout.mode == "v2":
        return _keyed(_read(os.path.join(d, "memory.events"))).get("oom_kill", 0)
    return _keyed(_read(os.path.join(d, "memory.oom_control"))).get("oom_kill", 0)


def stats(path: str, layout: Layout | None = None) -> Stats:
    """Current usage of cgroup ``path`` (missing files give None)."""
    layout = layout or detect()
    st = Stats()
    if layout.mode == "v2":
        d = layout.stats_dir("memory", path)
        assert d is not None
        st.memory_usage = _read_int(os.path.join(d, "memory.current"))
        st.memory_max_usage = _read_int(os.path.join(d, "memory.peak"))
        st.memory_limit = _read_int(os.path.join(d, "memory.max"))
        usage = _keyed(_read(os.path.join(d, "cpu.stat"))).get("usage_usec")
        st.cpu_usage_ns = usage * 1000 if usage is not None else None
        st.pids = _read_int(os.path.join(d, "pids.current"))
    else:
        md = layout.stats_dir("memory", path)
        if md:
            st.memory_usage = _read_int(os.path.join(md, "memory.usage_in_bytes"))
            st.memory_max_usage = _read_int(os.path.join(md, "memory.max_usage_in_bytes"))
            lim = _read_int(os.path.join(md, "memory.limit_in_bytes"))
            st.memory_limit = lim if lim is not None and lim < (1 << 62) else None
        cd = layout.stats_dir("cpuacct", path)
        if cd:
            st.cpu_usage_ns = _read_int(os.path.join(cd, "cpuacct.usage"))
        pd = layout.stats_dir("pids", path)
        if pd:
            st.pids = _read_int(os.path.join(pd, "pids.current"))
    st.oom_kills = oom_kills(path, layout)
    return st


# --- create, enter, list, remove -----------------------------------------------------------------

def _dirs(path: str, layout: Layout) -> list[str]:
    return [_join(mnt, path) for mnt in layout.hierarchies]


def exists(path: str, layout: Layout | None = None) -> list[str]:
    """The directories of cgroup ``path`` that exist, over every hierarchy."""
    layout = layout or detect()
    return [d for d in _dirs(path, layout) if os.path.isdir(d)]


def ensure(path: str, layout: Layout | None = None) -> None:
    """Create cgroup ``path`` in every hierarchy (cpuset levels get their parent's cpus/mems)."""
    layout = layout or detect()
    cpuset = layout.v1.get("cpuset")
    for mnt in layout.hierarchies:
        cur = mnt
        for part in path.strip("/").split("/"):
            parent, cur = cur, os.path.join(cur, part)
            try:
                os.mkdir(cur)
            except FileExistsError:
                continue
            if mnt == cpuset:
                for f in ("cpuset.cpus", "cpuset.mems"):
                    val = _read(os.path.join(parent, f))
                    if val is not None and val.strip():
                        with open(os.path.join(cur, f), "w") as fh:
                            fh.write(val.strip())


def enter(path: str, pid: int, layout: Layout | None = None) -> None:
    """Move ``pid`` into cgroup ``path`` on every hierarchy (the cgroup must exist)."""
    layout = layout or detect()
    for d in _dirs(path, layout):
        try:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError as e:
            # On a hybrid host the cgroup2 tree is informational; only the v1 moves must succeed.
            if layout.mode == "hybrid" and layout.unified and d.startswith(layout.unified + "/"):
                continue
            raise Stage1Error(f"cannot move pid {pid} into {d}: {e.strerror}") from None


def procs(path: str, layout: Layout | None = None) -> list[int]:
    """Every pid in cgroup ``path`` and below it (read from one hierarchy)."""
    layout = layout or detect()
    if layout.mode == "v2":
        root = _join(layout.unified, path) if layout.unified else None
    else:
        mnt = layout.v1.get("pids") or layout.v1.get("memory") or next(iter(layout.v1.values()))
        root = _join(mnt, path)
    pids: list[int] = []
    if not root or not os.path.isdir(root):
        return pids
    for dirpath, _dirs_, _files in os.walk(root):
        for line in (_read(os.path.join(dirpath, "cgroup.procs")) or "").split():
            pids.append(int(line))
    return pids


def kill_all(path: str, sig: int = signal.SIGKILL, layout: Layout | None = None) -> int:
    """Send ``sig`` to every process in cgroup ``path`` and below; returns how many were signalled."""
    n = 0
    for pid in procs(path, layout):
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


def remove(path: str, layout: Layout | None = None, *, kill: bool = False,
           timeout: float = 5.0) -> None:
    """Remove cgroup ``path`` and everything below it, on every hierarchy (idempotent).

    An rmdir can fail with EBUSY while the kernel finishes tearing down exited tasks; it is retried
    with backoff until ``timeout``. With ``kill`` the remaining processes are SIGKILLed first (GC of
    a pod whose processes outlived their monitors). Raises :class:`Stage1Error` naming what stayed.
    """
    layout = layout or detect()
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if kill:
            kill_all(path, layout=layout)
        busy: list[str] = []
        for d in _dirs(path, layout):
            busy.extend(_rmtree_cgroup(d))
        if not busy:
            return
        if time.monotonic() >= deadline:
            raise Stage1Error(f"cgroup(s) still busy after {timeout:.0f}s: {', '.join(busy)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def remove_if_empty(path: str = DEFAULT_PARENT, layout: Layout | None = None) -> bool:
    """rmdir ``path`` on every hierarchy where it has no children left (gc's last step: pypod's
    parent cgroup goes with its last pod). Never recursive; True when it is gone everywhere."""
    gone = True
    for d in _dirs(path, layout or detect()):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            gone = False
    return gone


def _rmtree_cgroup(top: str) -> list[str]:
    """rmdir ``top`` depth-first; returns the directories that could not be removed."""
    if not os.path.isdir(top):
        return []
    busy: list[str] = []
    for dirpath, _dirnames, _files in os.walk(top, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise Stage1Error(f"cannot remove cgroup {dirpath}: {e.strerror}") from None
            busy.append(dirpath)
    return busy
