"""nomad-driver-pypod: how fast Nomad gets it going (issue 7 §4). Not a test: prints medians.

1. **start → handshake line**: the plugin launched as go-plugin launches it (cookie and protocol env),
   until its first stdout line (Nomad launches it three times at agent start, each ended by
   GRPCController.Shutdown), plus the Shutdown → exit time.
2. **StartTask → WaitTask**: a task running ``true`` (busybox) through the long-lived plugin: the
   StartTask RPC until WaitTask returns (pod start, app exit, the exit recorded), then DestroyTask;
   beside it the engine's own ``pypod run --net=none busybox --exec /bin/true`` for scale.

Run as root from the repository::

    .venv/bin/python bench/nomad.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "nomad"))


def median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--net", default="none", help="network_mode of the task (default none: no CNI in the number)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (pods need it)", file=sys.stderr)
        return 1
    from nomad_harness import AllocDir, Plugin, task_config
    from support import images
    from support.cli import Pypod

    from pypod.nomad.proto import driver_pb2 as D
    from pypod.stage1 import conmon

    conmon.become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="bench-nomad-"))
    # -- 1. handshake
    hs, down = [], []
    for _ in range(a.runs):
        pl = Plugin()
        hs.append(pl.handshake_time)
        down.append(pl.shutdown())
    print(f"plugin start -> handshake line: median {median_ms(hs)} ms (min {min(hs) * 1000:.1f}, n={a.runs})")
    print(f"GRPCController.Shutdown -> exit: median {median_ms(down)} ms")
    # -- 2. StartTask -> WaitTask
    img = images.build_busybox(work / "oci" / "busybox")
    p = Pypod(work / "data")
    p("fetch", f"oci:{img.oci_ref}", "--name", "busybox")
    pl = Plugin()
    pl.set_config({"data_dir": str(p.data_dir), "config_dir": str(p.config_dir)})
    alloc = AllocDir(work / "alloc")
    spec = pl.driver.TaskConfigSchema(D.TaskConfigSchemaRequest()).spec
    start_rpc, total, destroy = [], [], []
    try:
        for i in range(a.runs + 1):
            cfg = task_config(alloc, f"t{i}", spec, {"image": "busybox", "command": "/bin/true",
                                                     "network_mode": a.net})
            t0 = time.monotonic()
            pl.driver.StartTask(D.StartTaskRequest(task=cfg), timeout=120)
            t1 = time.monotonic()
            r = pl.driver.WaitTask(D.WaitTaskRequest(task_id=cfg.id), timeout=120)
            t2 = time.monotonic()
            assert r.result.exit_code == 0, r
            pl.driver.DestroyTask(D.DestroyTaskRequest(task_id=cfg.id, force=True), timeout=120)
            t3 = time.monotonic()
            if i:  # the first run warms caches
                start_rpc.append(t1 - t0)
                total.append(t2 - t0)
                destroy.append(t3 - t2)
    finally:
        pl.shutdown()
        alloc.close()
    runs = []
    for _ in range(a.runs):
        t0 = time.monotonic()
        out = p("run", "--net=none", "busybox", "--exec", "/bin/true").out
        runs.append(time.monotonic() - t0)
    p("gc", "--grace-period", "0s", check=False)
    print(f"StartTask -> WaitTask returned, task `true` (network_mode={a.net}): median {median_ms(total)} ms "
          f"(StartTask RPC alone {median_ms(start_rpc)} ms); DestroyTask {median_ms(destroy)} ms")
    print(f"for scale: `pypod run --net=none busybox --exec /bin/true` (foreground CLI): median {median_ms(runs)} ms")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
