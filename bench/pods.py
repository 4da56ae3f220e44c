"""Pods side by side: pypod vs podman vs the bare OCI runtime, same busybox image, same machine.

    .venv/bin/python bench/pods.py [--runs 15] [--runtime crun --runtime runc] [--rev HEAD]
                                   [--only run,pod2,memory,list] [--mem-pods 5] [--pods 500]

Every contender is a whole process (or a sequence of them) started fresh and timed from the
outside, wall clock; contenders alternate round by round (after one warm-up each), so a load spike
hits them all; medians over the rounds, with min and max. Cases (issue 3, section 11):

run     a one-app pod running ``true``, no network, per runtime (crun, runc):
          bare runtime  ``<runtime> run`` of a prepared bundle (the image's rootfs, ``runc spec``
                        edited: args, cgroupsPath); crun through the same private mount namespace
                        trick pypod uses on hybrid cgroup hosts; no conmon, no image store.
          podman        ``podman run --rm --network none`` (create, start, exit, remove); and
                        ``podman run`` with no ``--rm`` then ``podman rm``, timed apart.
          pypod         ``pypod run --net=none --runtime=RT busybox --exec /bin/true`` in the
                        foreground (prepare, start, exit; the pod is left exited, as rkt leaves it)
                        then ``pypod rm``, timed apart; their sum is what ``podman run --rm`` does.
                        Also ``pypod run -d`` + ``pypod status UUID --wait``.
pod2    a two-app pod from start to exit: ``pypod run ... --- ...`` + ``pypod rm`` vs ``podman pod
        create --network none`` + 2 x ``podman run --pod P -d busybox true`` + ``podman wait
        --interval 10ms`` (its default polls every 250 ms) + ``podman pod rm -f``.
memory  idle memory of detached pods running ``sleep``: the sum of PSS (/proc/PID/smaps_rollup) of
        every process each leaves running, found as this process's descendants (it is the
        subreaper of the daemonised conmons), for N pods at once, divided by N. pypod: conmon x 2,
        catatonit, the app. podman in a pod: conmon x 2, catatonit (infra), the app; podman with
        no pod: conmon, the app.
list    ``pypod --dir D list`` and ``pypod status UUID`` with 500 pods on disk, made by the library
        (bench/pods_list.py's populate(): prepared, exited, running-held-by-this-process, garbage).

pypod runs as this checkout's ``.venv/bin/pypod`` with bytecode caches (PYTHONPYCACHEPREFIX in the
scratch dir, as an installed pypod would have them); ``pypod run`` is also timed with
PYTHONDONTWRITEBYTECODE=1. ``--rev REV`` runs pypod's ``core/`` as of a commit (git archive, put first
on PYTHONPATH) so that the numbers belong to one commit while others edit the checkout. podman runs
with its own --root/--runroot/--tmpdir and a CONTAINERS_CONF as the host notes say (default_ulimits,
cgroupfs, file events); its crun is the same private-mount-namespace wrapper, as an executable named
``crun``. Needs root. Leaves nothing behind: every pod, container, mount, cgroup and conmon it made
is removed and checked for at the end, and so is the host-wide state podman creates on first use
(/etc/containers/networks, /run/containers, /run/crun|runc, libpod_parent cgroups,
/dev/shm/libpod_lock) when it did not exist before and no other podman is running.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuid_mod
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

PYPOD = str(ROOT / ".venv" / "bin" / "pypod")
UNIFIED = "/sys/fs/cgroup/unified"
# The private mount namespace trick (host notes): crun 1.8 refuses hybrid cgroup hosts unless the
# cgroup2 mount is out of its sight. Same argv as pypod's stage1 uses.
CRUN_TRICK = ["unshare", "-m", "/bin/sh", "-c", f'umount {UNIFIED} || exit 125; exec "$0" "$@"']
IMAGE = "localhost/busybox:latest"
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""


def hybrid_cgroups() -> bool:
    try:
        with open(f"{UNIFIED}/cgroup.controllers") as f:
            return bool(f.read().strip())
    except OSError:
        return False


# -- processes ------------------------------------------------------------------------------------
def become_subreaper() -> None:
    """conmon double-forks; as a subreaper this process adopts (and reaps) every conmon that pypod
    and podman leave, which is also how the memory case finds them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s.rsplit(")", 1)[1].split()
    return s[s.index("(") + 1: s.rindex(")")], rest[0], int(rest[1])


def descendants(root: int | None = None) -> dict[int, str]:
    """Live (not zombie) descendants of ``root`` (default: this process): pid -> comm."""
    root = root or os.getpid()
    kids: dict[int, list[int]] = {}
    info = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            st = _stat(int(e))
            if st:
                info[int(e)] = st
                kids.setdefault(st[2], []).append(int(e))
    out, todo = {}, list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        if info[pid][1] != "Z":
            out[pid] = info[pid][0]
        todo.extend(kids.get(pid, []))
    return out


def reap() -> None:
    """Reap zombie children: adopted orphans (no subprocess of ours is outstanding when called)."""
    for pid in list(descendants_zombies()):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def descendants_zombies() -> list[int]:
    me, out = os.getpid(), []
    for tid in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return [p for p in out if (_stat(p) or ("", "", 0))[1] == "Z"]


def settle(keep: set[int] = frozenset(), timeout: float = 15.0) -> None:
    """Wait until nothing we started is still running (podman's and pypod's exit commands run
    after the timed process returns), so that it does not eat into the next measurement."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        live = {p: c for p, c in descendants().items() if p not in keep}
        if not live:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"still running after {timeout}s: {live}")
        time.sleep(0.01)


def timed(cmd: list[str], env: dict[str, str], scratch: Path) -> tuple[float, str]:
    """Run ``cmd``; (wall seconds, stdout). Output goes to files, not pipes: a daemonised conmon
    that kept a pipe open would hold the caller until the pod ends."""
    out, err = scratch / "out", scratch / "err"
    with open(out, "w+") as fo, open(err, "w+") as fe:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, env=env).returncode
        dt = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        text, errs = fo.read(), fe.read()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}: {errs.strip()[-2000:]}")
    return dt, text


def pss_kb(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon and Pss_File of a process, in kB."""
    out = {"Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


# -- the contenders -------------------------------------------------------------------------------
def snapshot(rev: str, dest: Path) -> Path:
    """``core/`` of commit ``rev`` as an importable ``pypod`` package under ``dest`` (for PYTHONPATH),
    so that the numbers belong to one commit while others edit the checkout."""
    (dest / "pypod").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "core"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(dest / "pypod")], input=archive, check=True)
    return dest


class Bench:
    def __init__(self, work: Path, runtimes: list[str], src: Path | None = None):
        self.work = work
        self.scratch = work / "scratch"
        self.scratch.mkdir(parents=True)
        self.tag = uuid_mod.uuid4().hex[:8]
        self.hybrid = hybrid_cgroups()
        self.runtimes = runtimes
        self.n = 0
        self.pypod_uuids: set[str] = set()  # pods not removed yet
        self.every_uuid: set[str] = set()
        self.bare_cgroup = f"pypod-bench-{self.tag}"
        # pypod: its own data and config dirs; bytecode caches outside the checkout.
        self.data, self.etc = work / "pypod", work / "pypod-etc"
        self.etc.mkdir()
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        if src is not None:  # pypod from a snapshot: PYTHONPATH is searched before the editable install
            base["PYTHONPATH"] = str(src)
        self.env = dict(base, PYTHONPYCACHEPREFIX=str(work / "pycache"))
        self.env_nopyc = dict(base, PYTHONDONTWRITEBYTECODE="1")
        # podman: its own storage, run root and tmp dir; the containers.conf of the host notes.
        pm = work / "podman"
        (pm / "bin").mkdir(parents=True)
        (pm / "containers.conf").write_text(CONTAINERS_CONF)
        self.pm = pm
        self.pm_env = dict(os.environ, CONTAINERS_CONF=str(pm / "containers.conf"))
        crun = shutil.which("crun") or "/usr/bin/crun"
        wrapper = pm / "bin" / "crun"  # podman names the runtime after the file: keep "crun"
        if self.hybrid:
            trick = " ".join(f"'{a}'" for a in CRUN_TRICK)
            wrapper.write_text(f"#!/bin/sh\nexec {trick} {crun} \"$@\"\n")
        else:
            wrapper.write_text(f"#!/bin/sh\nexec {crun} \"$@\"\n")
        wrapper.chmod(0o755)
        self.podman_runtime = {"crun": str(wrapper), "runc": shutil.which("runc") or "runc"}

    # -- command lines
    def pypod(self, *args: str, data: Path | None = None) -> list[str]:
        return [PYPOD, "--dir", str(data or self.data), "--config-dir", str(self.etc), *args]

    def podman(self, rt: str | None, *args: str) -> list[str]:
        rt_args = ["--runtime", self.podman_runtime[rt]] if rt else []
        return ["podman", "--root", str(self.pm / "root"), "--runroot", str(self.pm / "runroot"),
                "--tmpdir", str(self.pm / "tmp"), *rt_args, *args]

    def bare_argv(self, rt: str) -> list[str]:
        binary = shutil.which(rt) or f"/usr/bin/{rt}"
        prefix = [*CRUN_TRICK, binary] if rt == "crun" and self.hybrid else [binary]
        return [*prefix, f"--root={self.work / 'bare-state' / rt}"]

    def t(self, cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
        return timed(cmd, env or self.env, self.scratch)

    def next_id(self) -> str:
        self.n += 1
        return f"pb-{self.tag}-{self.n}"

    # -- setup
    def setup(self) -> None:
        from support import images as ti

        img = ti.build_busybox(self.work / "oci")
        archive = ti.write_docker_archive(img, self.work / "busybox-docker.tar", repo_tags=[IMAGE])
        subprocess.run(self.pypod("fetch", f"oci:{img.layout}:latest", "--name", "busybox"), check=True,
                       env=self.env, stdout=subprocess.DEVNULL)
        subprocess.run(self.podman(None, "load", "-q", "-i", str(archive)), check=True, env=self.pm_env,
                       stdout=subprocess.DEVNULL)
        # The bare runtime's bundle: the same layer, unpacked; `runc spec` with our process.
        bundle = self.work / "bundle"
        (bundle / "rootfs").mkdir(parents=True)
        for layer in img.layer_digests:
            subprocess.run(["tar", "-xzf", str(img.blob_path(layer)), "-C", str(bundle / "rootfs")], check=True)
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"].update(terminal=False, args=["/bin/true"])
        spec["root"]["readonly"] = False
        spec["hostname"] = "bench"
        spec["linux"]["cgroupsPath"] = f"/{self.bare_cgroup}/bare"
        (bundle / "config.json").write_text(json.dumps(spec))
        self.bundle = bundle

    # -- case 1: one app running true
    def bare_run(self, rt: str) -> dict[str, float]:
        dt, _ = self.t([*self.bare_argv(rt), "run", "--bundle", str(self.bundle), self.next_id()])
        return {"run": dt}

    def podman_run_rm(self, rt: str) -> dict[str, float]:
        dt, _ = self.t(self.podman(rt, "run", "--rm", "--network", "none", IMAGE, "true"), self.pm_env)
        return {"run --rm": dt}

    def podman_run_then_rm(self, rt: str) -> dict[str, float]:
        name = self.next_id()
        run, _ = self.t(self.podman(rt, "run", "--name", name, "--network", "none", IMAGE, "true"), self.pm_env)
        settle()  # the exit command (podman container cleanup) runs after `podman run` returns
        rm, _ = self.t(self.podman(rt, "rm", name), self.pm_env)
        return {"run": run, "rm": rm, "run+rm": run + rm}

    def _pypod_fg(self, rt: str, apps: list[list[str]], env: dict[str, str]) -> dict[str, float]:
        ufile = self.scratch / "uuid"
        ufile.unlink(missing_ok=True)
        argv = ["run", "--net=none", f"--runtime={rt}", "--uuid-file-save", str(ufile)]
        for i, app in enumerate(apps):
            argv += (["---"] if i else []) + app
        try:
            run, _ = self.t(self.pypod(*argv), env)
        finally:
            if ufile.exists():
                self.track(ufile.read_text().strip())
        uuid = ufile.read_text().strip()
        settle()
        rm, _ = self.t(self.pypod("rm", uuid), env)
        self.pypod_uuids.discard(uuid)
        return {"run": run, "rm": rm, "run+rm": run + rm}

    def pypod_fg(self, rt: str, env: dict[str, str] | None = None) -> dict[str, float]:
        return self._pypod_fg(rt, [["busybox", "--exec", "/bin/true"]], env or self.env)

    def pypod_detached(self, rt: str) -> dict[str, float]:
        run, out = self.t(self.pypod("run", "-d", "--net=none", f"--runtime={rt}", "busybox", "--exec", "/bin/true"))
        uuid = self.track(out.split()[-1])
        wait, _ = self.t(self.pypod("status", uuid, "--wait"))
        settle()
        rm, _ = self.t(self.pypod("rm", uuid))
        self.pypod_uuids.discard(uuid)
        return {"run -d": run, "status --wait": wait, "run -d+wait": run + wait, "rm": rm}

    # -- case 2: two apps running true
    def pypod_pod2(self, rt: str) -> dict[str, float]:
        app = ["busybox", "--exec", "/bin/true"]
        return self._pypod_fg(rt, [app, app], self.env)

    def podman_pod2(self, rt: str) -> dict[str, float]:
        name = self.next_id()
        r: dict[str, float] = {}
        r["pod create"], _ = self.t(self.podman(rt, "pod", "create", "--network", "none", "--name", name), self.pm_env)
        ids = []
        for k in ("run 1", "run 2"):
            r[k], out = self.t(self.podman(rt, "run", "--pod", name, "-d", IMAGE, "true"), self.pm_env)
            ids.append(out.split()[-1])
        # podman wait polls (every 250 ms by default): poll every 10 ms, its best case
        r["wait"], _ = self.t(self.podman(rt, "wait", "--interval", "10ms", *ids), self.pm_env)
        r["pod rm -f"], _ = self.t(self.podman(rt, "pod", "rm", "-f", name), self.pm_env)
        r["total"] = sum(r.values())
        return r

    # -- case 3: idle memory
    def memory(self, rt: str, n: int) -> list[tuple[str, dict]]:
        settle()
        results = []

        def measure(label: str, start: Callable[[int], None], stop: Callable[[], None]) -> None:
            try:
                for i in range(n):
                    start(i)
                time.sleep(1.0)  # let conmon and the apps reach their idle state
                procs = descendants()
                per_comm: dict[str, list[dict[str, int]]] = {}
                for pid, comm in procs.items():
                    per_comm.setdefault(comm, []).append(pss_kb(pid))
                procs_kb = {c: {"count": len(v), **{k: sum(d[k] for d in v) for k in v[0]}}
                            for c, v in sorted(per_comm.items())}
                total = sum(d["Pss"] for d in procs_kb.values())
                app = procs_kb.get("sleep", {}).get("Pss", 0)
                results.append((label, {"per_pod_kb": total / n, "overhead_per_pod_kb": (total - app) / n,
                                        "n": n, "procs": procs_kb}))
            finally:
                stop()
                settle()

        uuids: list[str] = []

        def pypod_start(i: int) -> None:
            _, out = self.t(self.pypod("run", "-d", "--net=none", f"--runtime={rt}", "busybox",
                                       "--exec", "/bin/sleep", "--", "3600"))
            uuids.append(self.track(out.split()[-1]))

        def pypod_stop() -> None:
            for u in uuids:
                subprocess.run(self.pypod("stop", "--force", u), env=self.env, stdout=subprocess.DEVNULL)
            settle()  # the pods' exit hooks
            for u in uuids:
                subprocess.run(self.pypod("rm", u), env=self.env, stdout=subprocess.DEVNULL, check=True)
                self.pypod_uuids.discard(u)

        measure("pypod run -d (conmon x2, catatonit, app)", pypod_start, pypod_stop)

        names: list[str] = []

        def pod_start(i: int) -> None:
            names.append(self.next_id())
            self.t(self.podman(rt, "pod", "create", "--network", "none", "--name", names[-1]), self.pm_env)
            self.t(self.podman(rt, "run", "--pod", names[-1], "-d", IMAGE, "sleep", "3600"), self.pm_env)

        def pod_stop() -> None:
            for nm in names:
                subprocess.run(self.podman(rt, "pod", "rm", "-f", "-t", "0", nm), env=self.pm_env,
                               stdout=subprocess.DEVNULL, check=True)
            names.clear()

        measure("podman pod + run -d --pod (conmon x2, infra, app)", pod_start, pod_stop)

        def ctr_start(i: int) -> None:
            names.append(self.next_id())
            self.t(self.podman(rt, "run", "-d", "--network", "none", "--name", names[-1], IMAGE, "sleep", "3600"),
                   self.pm_env)

        def ctr_stop() -> None:
            for nm in names:
                subprocess.run(self.podman(rt, "rm", "-f", "-t", "0", nm), env=self.pm_env,
                               stdout=subprocess.DEVNULL, check=True)
            names.clear()

        measure("podman run -d, no pod (conmon, app)", ctr_start, ctr_stop)
        return results

    # -- cleanup
    def cleanup(self) -> list[str]:
        """Remove everything; return what had to be removed by force (leaks) or still remains."""
        problems: list[str] = []
        reap()
        if self.data.exists():
            for u in sorted(self.pypod_uuids):
                subprocess.run(self.pypod("stop", "--force", u), env=self.env, capture_output=True)
            cp = subprocess.run(self.pypod("gc", "--grace-period", "0s", "--expire-prepared", "0s"),
                                env=self.env, capture_output=True, text=True)
            if cp.returncode:
                problems.append(f"pypod gc: {cp.stderr.strip()}")
        if (self.pm / "root").exists():
            for what in (("pod", "ps"), ("ps",)):
                cp = subprocess.run(self.podman(None, *what, "-a", "--format", "{{.Name}}" if what[0] == "pod"
                                                else "{{.Names}}"), env=self.pm_env, capture_output=True, text=True)
                problems += [f"podman {what[0]} {n} left" for n in cp.stdout.split()]
            for args in (("pod", "rm", "-a", "-f", "-t", "0"), ("rm", "-a", "-f", "-t", "0"), ("rmi", "-a", "-f")):
                subprocess.run(self.podman(None, *args), env=self.pm_env, capture_output=True)
        try:
            settle(timeout=20)
        except RuntimeError as e:
            problems.append(str(e))
            for pid in descendants():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
            reap()
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(self.work))]
        for m in sorted(mounts, reverse=True):
            problems.append(f"mount left: {m}")
            subprocess.run(["umount", "-l", m], capture_output=True)
        for d in sorted(glob.glob(f"/sys/fs/cgroup/*/{self.bare_cgroup}/**/", recursive=True), key=len, reverse=True):
            try:
                os.rmdir(d)
            except OSError as e:
                problems.append(f"cgroup {d}: {e}")
        if self.data.exists():
            left = subprocess.run(self.pypod("list", "--format", "json"), env=self.env, capture_output=True, text=True)
            for p in json.loads(left.stdout or "[]"):
                problems.append(f"pypod pod {p['uuid']} ({p['state']}) left")
        for u in {p.split("/")[-1] for p in glob.glob("/sys/fs/cgroup/*/pypod/*")} & self.every_uuid:
            problems.append(f"pypod cgroup left: {u}")
        return problems

    def track(self, uuid: str) -> str:
        self.pypod_uuids.add(uuid)
        self.every_uuid.add(uuid)
        return uuid


# -- host-wide podman state ---------------------------------------------------------------------
def podman_host_paths() -> list[str]:
    return ["/etc/containers/networks", "/run/containers", "/run/crun", "/run/runc", "/dev/shm/libpod_lock",
            *glob.glob("/sys/fs/cgroup/*/libpod_parent")]


def _podmanish(pid: int) -> bool:
    """A podman process, or a conmon that podman started (its exit command is podman)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    name = os.path.basename(argv[0])
    return name == b"podman" or (name == b"conmon" and any(a.endswith(b"/podman") for a in argv))


def undo_podman_host_state(before: set[str]) -> list[str]:
    """Remove what podman created on the host during this run (it did not exist before), when
    nothing else uses it: empty directories, podman's cgroup parent, and its shared-memory lock file
    when no other podman or conmon process runs."""
    removed = []
    others = [p for p in os.listdir("/proc") if p.isdigit() and _podmanish(int(p))]
    for path in podman_host_paths():
        if path in before or not os.path.lexists(path):
            continue
        try:
            if path.startswith("/sys/fs/cgroup/"):
                for d in sorted(glob.glob(f"{path}/**/", recursive=True), key=len, reverse=True):
                    os.rmdir(d)
            elif path == "/dev/shm/libpod_lock":
                if others:
                    continue
                os.unlink(path)
            else:  # only what podman puts there when idle: an empty lock file, an empty dir
                if others:
                    continue
                if os.listdir(path) == ["netavark.lock"] and os.path.getsize(f"{path}/netavark.lock") == 0:
                    os.unlink(f"{path}/netavark.lock")
                elif os.listdir(path) == ["networks"]:
                    os.rmdir(f"{path}/networks")
                os.rmdir(path)
            removed.append(path)
        except OSError:
            pass
    return removed


# -- printing -------------------------------------------------------------------------------------
def run_rounds(contenders: dict[str, Callable[[], dict[str, float]]], runs: int) -> dict[str, dict[str, list[float]]]:
    """Warm up each contender once, then ``runs`` rounds of all of them in turn."""
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in contenders}
    for name, fn in contenders.items():
        fn()
        settle()
    for _ in range(runs):
        for name, fn in contenders.items():
            for part, secs in fn().items():
                samples[name].setdefault(part, []).append(secs)
            settle()
    return samples


def row(label: str, ts: list[float], ref: float | None = None, width: int = 58) -> str:
    med = statistics.median(ts)
    ratio = f"{med / ref:6.2f}x" if ref else ""
    return f"  {label:{width}} {med * 1000:7.1f} {min(ts) * 1000:7.1f} {max(ts) * 1000:7.1f}  {ratio}"


def header(what: str, runs: int, width: int = 58) -> None:
    print(f"\n{what}; {runs} rounds, contenders alternating")
    print(f"  {'contender (what the time includes)':{width}} {'median':>7} {'min':>7} {'max':>7}  ratio (ms)")


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def case_run(b: Bench, rt: str, runs: int) -> dict:
    s = run_rounds({
        "bare": lambda: b.bare_run(rt),
        "podman --rm": lambda: b.podman_run_rm(rt),
        "podman": lambda: b.podman_run_then_rm(rt),
        "pypod": lambda: b.pypod_fg(rt),
        "pypod nopyc": lambda: b.pypod_fg(rt, b.env_nopyc),
        "pypod -d": lambda: b.pypod_detached(rt),
    }, runs)
    ref = statistics.median(s["podman --rm"]["run --rm"])
    ref_keep = statistics.median(s["podman"]["run"])
    header(f"one-app pod running /bin/true, no network, runtime {rt} (load {load()})", runs)
    print(row(f"bare {rt} run (bundle ready; no conmon, no image, no pod)", s["bare"]["run"], ref))
    print(row("podman run --rm (create, start, exit, remove)", s["podman --rm"]["run --rm"], ref))
    print(row("podman run (create, start, exit; container kept)", s["podman"]["run"], ref))
    print(row("podman rm", s["podman"]["rm"], ref))
    print(row("podman run + podman rm (sum)", s["podman"]["run+rm"], ref))
    print(row("pypod run, foreground (prepare, start, exit; pod kept)", s["pypod"]["run"], ref))
    print(row("pypod rm", s["pypod"]["rm"], ref))
    print(row("pypod run + pypod rm (sum; = podman run --rm)", s["pypod"]["run+rm"], ref))
    print(row("pypod run, no .pyc (PYTHONDONTWRITEBYTECODE=1)", s["pypod nopyc"]["run"], ref))
    print(row("pypod run + rm, no .pyc", s["pypod nopyc"]["run+rm"], ref))
    print(row("pypod run -d (returns once running)", s["pypod -d"]["run -d"], ref))
    print(row("pypod run -d + pypod status --wait", s["pypod -d"]["run -d+wait"], ref))
    med = {k: {p: round(statistics.median(v) * 1000, 1) for p, v in parts.items()} for k, parts in s.items()}
    print(f"  pypod run+rm / podman run --rm = {statistics.median(s['pypod']['run+rm']) / ref:.2f}x; "
          f"pypod run / podman run (both keep it) = {statistics.median(s['pypod']['run']) / ref_keep:.2f}x "
          f"(target <= 0.5x)")
    print(json.dumps({"case": f"run/{rt}", "median_ms": med}))
    return med


def case_pod2(b: Bench, rt: str, runs: int) -> dict:
    s = run_rounds({"podman": lambda: b.podman_pod2(rt), "pypod": lambda: b.pypod_pod2(rt)}, runs)
    ref = statistics.median(s["podman"]["total"])
    header(f"two-app pod (true, true), no network, start to exit, runtime {rt} (load {load()})", runs)
    print(row("podman pod create + 2 x run -d --pod + wait + pod rm -f", s["podman"]["total"], ref))
    for part in ("pod create", "run 1", "run 2", "wait", "pod rm -f"):
        print(row(f"  podman {part}", s["podman"][part], ref))
    print(row("pypod run IMG --- IMG (foreground) + pypod rm", s["pypod"]["run+rm"], ref))
    print(row("  pypod run", s["pypod"]["run"], ref))
    print(row("  pypod rm", s["pypod"]["rm"], ref))
    med = {k: {p: round(statistics.median(v) * 1000, 1) for p, v in parts.items()} for k, parts in s.items()}
    print(f"  pypod / podman = {statistics.median(s['pypod']['run+rm']) / ref:.2f}x (target <= 0.5x)")
    print(json.dumps({"case": f"pod2/{rt}", "median_ms": med}))
    return med


def case_memory(b: Bench, rt: str, n: int) -> None:
    res = b.memory(rt, n)
    print(f"\nidle memory of detached pods running sleep, runtime {rt}: {n} at once, PSS (MB) of everything "
          f"each leaves running, divided by {n} (load {load()})")
    print(f"  {'contender':50} {'per pod':>7} {'w/o app':>7}  processes per pod: count, PSS")
    for label, r in res:
        procs = ", ".join(f"{c} x{d['count'] / n:g} {d['Pss'] / n / 1024:.2f}" for c, d in r["procs"].items())
        print(f"  {label:50} {r['per_pod_kb'] / 1024:7.2f} {r['overhead_per_pod_kb'] / 1024:7.2f}  {procs}")
    pypod, pod, nopod = (r for _, r in res)
    for what, key in (("everything", "per_pod_kb"), ("without the app", "overhead_per_pod_kb")):
        print(f"  {what}: pypod / podman pod = {pypod[key] / pod[key]:.2f}x, pypod / podman no pod = "
              f"{pypod[key] / nopod[key]:.2f}x (target <= 1x)")
    print(json.dumps({"case": f"memory/{rt}", "n": n, "kb": {label: r["procs"] for label, r in res}}))


def case_list(b: Bench, pods: int, runs: int) -> None:
    import pods_list

    data = b.work / "list"
    t0 = time.perf_counter()
    _store, held, counts = pods_list.populate(str(data), pods)
    try:
        print(f"\n{pods} pods on disk, made by the library in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" (load {load()})")
        listed = json.loads(subprocess.run(b.pypod("list", "--format", "json", data=data), env=b.env, check=True,
                                           capture_output=True, text=True).stdout)
        assert len(listed) == pods, len(listed)
        running = next(p["uuid"] for p in listed if p["state"] == "running")
        exited = next(p["uuid"] for p in listed if p["state"] == "exited")
        cases = [
            ("python -c pass (floor)", [sys.executable, "-c", "pass"]),
            ("pypod --version (CLI start-up)", [PYPOD, "--version"]),
            ("pypod list", b.pypod("list", data=data)),
            ("pypod list --format json", b.pypod("list", "--format", "json", data=data)),
            (f"pypod status {running[:8]} (running, full UUID)", b.pypod("status", running, data=data)),
            (f"pypod status {exited[:8]} (exited, full UUID)", b.pypod("status", exited, data=data)),
            (f"pypod status {exited[:8]} (8-char prefix)", b.pypod("status", exited[:8], data=data)),
        ]
        for title, env in (("with bytecode caches", b.env), ("without bytecode caches", b.env_nopyc)):
            samples = run_rounds({label: (lambda c=cmd, e=env: {"t": timed(c, e, b.scratch)[0]})
                                  for label, cmd in cases}, runs)
            header(f"pypod list/status with {pods} pods, {title}", runs, 50)
            for label, _ in cases:
                print(row(label, samples[label]["t"], None, 50))
            print(json.dumps({"case": f"list/{'pyc' if env is b.env else 'nopyc'}", "median_ms": {
                label: round(statistics.median(samples[label]["t"]) * 1000, 1) for label, _ in cases}}))
    finally:
        for p in held:
            p.release()
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--runtime", action="append", choices=["crun", "runc"], help="default: crun and runc")
    ap.add_argument("--only", default="run,pod2,memory,list", help="comma-separated: run,pod2,memory,list")
    ap.add_argument("--mem-pods", type=int, default=5)
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--rev", help="benchmark pypod as of this commit (git archive of core/) instead of "
                    "the working tree")
    ap.add_argument("--work", default=None, help="where to make the scratch dir (default /var/tmp)")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/pods.py needs root", file=sys.stderr)
        return 2
    only = set(opts.only.split(","))
    runtimes = opts.runtime or ["crun", "runc"]

    become_subreaper()
    host_before = {p for p in podman_host_paths() if os.path.lexists(p)}
    work = Path(tempfile.mkdtemp(prefix="pypod-bench-pods-", dir=opts.work or "/var/tmp"))
    src = None
    if opts.rev:
        src = snapshot(opts.rev, work / "src")
        sys.path.insert(0, str(src))
    b = Bench(work, runtimes, src)
    problems: list[str] = []
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", opts.rev or "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = "" if opts.rev else " + uncommitted changes" * bool(subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "core"], capture_output=True, text=True).stdout.strip())
        print(f"pypod {head}{dirty}; {os.cpu_count()} CPUs, load {load()}; "
              f"{subprocess.run(['podman', '--version'], capture_output=True, text=True).stdout.strip()}; "
              f"cgroups {'hybrid (crun via a private mount namespace)' if b.hybrid else 'as is'}")
        b.setup()
        for rt in runtimes:
            if "run" in only:
                case_run(b, rt, opts.runs)
            if "pod2" in only:
                case_pod2(b, rt, opts.runs)
        if "memory" in only:
            case_memory(b, runtimes[0], opts.mem_pods)
        if "list" in only:
            case_list(b, opts.pods, max(opts.runs, 11))
    finally:
        problems = b.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        undone = undo_podman_host_state(host_before)
        left = [line for line in subprocess.run(["pgrep", "-a", "conmon"], capture_output=True, text=True).stdout.splitlines()
                if str(work) in line]
        problems += [f"conmon left: {line}" for line in left]
        print(f"\ncleanup: {'nothing left behind' if not problems else '; '.join(problems)}"
              + (f"; removed podman's host state created by this run: {', '.join(undone)}" if undone else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
