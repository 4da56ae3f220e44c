"""`pypod list` and `pypod status` with 500 pods on disk, each timed as a fresh Python process.

Creates 500 pods in a temporary data dir in a realistic mix of states (running pods are held by
this process's locks, as the infra processes would hold them), then times, as separate
``python -c`` processes importing only what the CLI would import:

- ``python`` start-up alone, and with ``import pypod.cli`` (the floor);
- list, states only: every pod's state (one listdir per state dir, one lock probe per pod);
- list: states, app names, image names, created/started times (every manifest read);
- status: one pod by UUID prefix, with its manifest and per-app status.

Prints the median (and min/max) of N runs. Usage: ``python bench/pods_list.py [--pods 500] [--runs 21]``.
Target (issue 3): list and status under 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PRELUDE = r"""
import sys
from pypod.cli import build_parser
build_parser()
from pypod import config
from pypod.pods.state import PodStore
store = PodStore(config.load(sys.argv[1], "/nonexistent-pypod-config").data_dir)
"""

STATES_ONLY = PRELUDE + r"""
out = [f"{p.uuid}\t{p.state}" for p in store.list()]
sys.stdout.write("\n".join(out) + "\n")
"""

LIST = PRELUDE + r"""
import time
def ts(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"
out = []
for p in store.list():
    try:
        m = p.manifest()
        apps, images = ",".join(a.name for a in m.apps), ",".join(a.image for a in m.apps)
    except Exception:
        apps = images = "-"
    out.append(f"{p.uuid[:8]}\t{apps}\t{images}\t{p.state}\t{ts(p.created)}\t{ts(p.started)}")
sys.stdout.write("\n".join(out) + "\n")
"""

STATUS = PRELUDE + r"""
pod = store.get(sys.argv[2])
m = pod.manifest()
lines = [f"state={pod.state}", f"created={pod.created}", f"started={pod.started}", f"exited={pod.exited}"]
apps = pod.status().apps()
for a in m.apps:
    s = apps.get(a.name)
    lines.append(f"app-{a.name}={s.exit_code if s and s.exit_code is not None else '-'}"
                 f" ({s.effective_state(pod.is_running) if s else 'created'})")
sys.stdout.write("\n".join(lines) + "\n")
"""


def populate(data_dir: str, n: int):
    """n pods: 40% running, 24% exited, 20% prepared, 10% exited-garbage, 4% prepare-failed, 2% garbage."""
    from pypod.pods.manifest import App, Mount, PodManifest, Resources, Volume
    from pypod.pods.state import PodStore

    rng = random.Random(42)
    store = PodStore(data_dir, events=False)
    images = ["docker.io/library/nginx:1.25", "docker.io/library/redis:7", "localhost/busybox:latest",
              "registry.k8s.io/pause:3.9", "quay.io/prometheus/node-exporter:v1.7.0"]

    def manifest(i: int) -> PodManifest:
        apps = []
        for k in range(rng.choice((1, 1, 2, 3))):
            apps.append(App(name=f"app{k}", image=rng.choice(images), env={"POD": str(i), "K": "v" * 20},
                            args=["--port", str(8000 + k)], resources=Resources(memory=64 << 20, cpu=250),
                            mounts=[Mount("data", f"/data{k}")], annotations={"team": "infra"}))
        return PodManifest(apps=apps, volumes=[Volume(name="data", kind="empty")], hostname=f"pod-{i}",
                           annotations={"io.kubernetes.pod.name": f"pod-{i}", "io.kubernetes.pod.namespace": "default"})

    def with_status(locked, exited: bool) -> None:
        area = locked.status()
        now = time.time_ns()
        for a in locked.manifest().apps:
            if exited:
                area.update_app(a.name, state="exited", created_at=now, started_at=now, exited_at=now, exit_code=0)
            else:
                area.update_app(a.name, state="running", created_at=now, started_at=now, pid=12345)

    counts = {"exited-garbage": n * 10 // 100, "prepare-failed": n * 4 // 100, "garbage": n * 2 // 100,
              "prepared": n * 20 // 100, "exited": n * 24 // 100}
    counts["running"] = n - sum(counts.values())
    held = []
    for i in range(counts["exited-garbage"]):  # made first, then marked by gc
        p = store.create(manifest(i)).to_run()
        with_status(p, True)
        p.release()
    store.gc_mark()
    i = counts["exited-garbage"]
    for kind in ("prepare-failed", "garbage", "prepared", "exited", "running"):
        for _ in range(counts[kind]):
            p = store.create(manifest(i))
            i += 1
            if kind == "prepare-failed":
                p.release()
            elif kind == "garbage":
                p.abort()
            elif kind == "prepared":
                p.to_prepared()
            else:
                p.to_run()
                with_status(p, kind == "exited")
                if kind == "exited":
                    p.release()
                else:
                    held.append(p)  # this process plays the pods' infra processes
    return store, held, counts


def timed(code: str, args: list[str], runs: int, env: dict[str, str]) -> list[float]:
    subprocess.run([sys.executable, "-c", code, *args], check=True, stdout=subprocess.DEVNULL, env=env)  # warm
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *args], check=True, stdout=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--runs", type=int, default=21)
    opts = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="pypod-bench-")
    held = []
    try:
        t0 = time.perf_counter()
        store, held, counts = populate(tmp, opts.pods)
        print(f"{opts.pods} pods created in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{v} {k}" for k, v in counts.items()))
        listed = subprocess.run([sys.executable, "-c", STATES_ONLY, tmp], check=True, capture_output=True,
                                text=True).stdout.splitlines()
        assert len(listed) == opts.pods, len(listed)
        running = [line.split("\t")[0] for line in listed if line.endswith("\trunning")]
        assert len(running) == counts["running"], (len(running), counts["running"])
        prefix = running[0][:8]
        status = subprocess.run([sys.executable, "-c", STATUS, tmp, prefix], check=True, capture_output=True,
                                text=True).stdout
        assert "state=running" in status, status

        cases = [
            ("python -c pass", "pass", []),
            ("python -c 'import pypod.cli'", "import pypod.cli; pypod.cli.build_parser()", []),
            ("list (states only)", STATES_ONLY, [tmp]),
            ("list (states, apps, images, times)", LIST, [tmp]),
            (f"status {prefix} (manifest + app status)", STATUS, [tmp, prefix]),
        ]
        # An installed pypod has .pyc files; a source checkout run with PYTHONDONTWRITEBYTECODE=1 (as
        # this project's machines are) compiles every module at every start. Time both.
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")  # keeps the checkout clean
        uncached = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        for title, env in (("with bytecode caches (an installed pypod)", cached),
                           ("without bytecode caches (PYTHONDONTWRITEBYTECODE=1)", uncached)):
            print(f"\n{title}")
            print(f"  {'command':45} {'median':>9} {'min':>9} {'max':>9}   ({opts.runs} runs, fresh process each)")
            for label, code, args in cases:
                ts = timed(code, args, opts.runs, env)
                print(f"  {label:45} {statistics.median(ts) * 1000:7.1f}ms {min(ts) * 1000:7.1f}ms "
                      f"{max(ts) * 1000:7.1f}ms")
    finally:
        for p in held:
            p.release()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
