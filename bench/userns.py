"""What ``--private-users`` costs (issue 5 §5): the rootfs with idmapped layers vs a plain overlay vs
the shifted-copy fallback, and whole pods with and without a user namespace.

    .venv/bin/python bench/userns.py --runs 15          # as root, ~2 min

Medians in ms, printed as a table. Nothing is asserted: the numbers go to docs/security.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _layers(base: Path, count: int, files_per_layer: int) -> list[Path]:
    out = []
    for i in range(count):
        d = base / f"layer{i}"
        for j in range(files_per_layer):
            sub = d / f"d{j // 100}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{j}").write_bytes(b"x" * 64)
        out.append(d)
    return out


def bench_rootfs(runs: int) -> list[tuple[str, float, float, float]]:
    from pypod.pods import rootfs, userns

    rows = []
    r = userns.Range(1 << 30, 1 << 30)
    for label, count, files in (("1 layer, 400 files", 1, 400), ("10 layers, 400 files each", 10, 400),
                                ("1 layer, 20k files", 1, 20000)):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            layers = _layers(Path(tmp) / "img", count, files)
            times: dict[str, list[float]] = {"plain": [], "idmap": [], "copy": []}
            for k in range(runs):
                for mode in times:
                    pod = Path(tmp) / f"pod-{mode}-{k}"
                    if mode == "copy":
                        os.environ[userns.NO_IDMAP_ENV] = "1"
                    t0 = time.perf_counter()
                    rootfs.mount_app(pod, "a", layers, idmap=None if mode == "plain" else r)
                    times[mode].append((time.perf_counter() - t0) * 1000)
                    os.environ.pop(userns.NO_IDMAP_ENV, None)
                    rootfs.unmount_all(pod)
                    shutil.rmtree(pod)
                if label.startswith("1 layer, 20k") and k >= 2:
                    break  # the copy is slow: three rounds are enough
            rows.append((label, *(statistics.median(times[m]) for m in ("plain", "idmap", "copy"))))
    return rows


def bench_pods(runs: int) -> list[tuple[str, float, float]]:
    from support import images
    from support.cli import Pypod

    from pypod.stage1.runtime import available_runtimes

    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        img = images.build_busybox(Path(tmp) / "bb")
        p = Pypod(Path(tmp) / "data")
        p("fetch", f"oci:{img.oci_ref}", "--name", "busybox")
        for rt in available_runtimes():
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(runs):
                for users in (False, True):
                    args = ["run", "--net=none", f"--runtime={rt}", *(["--private-users"] if users else []),
                            "busybox", "--exec", "/bin/true"]
                    t0 = time.perf_counter()
                    p(*args)
                    times[users].append((time.perf_counter() - t0) * 1000)
            rows.append((rt, statistics.median(times[False]), statistics.median(times[True])))
            p("gc", "--grace-period", "0s")
        subprocess.run([sys.executable, "-m", "pypod.cli", "--dir", str(p.data_dir), "--config-dir",
                        str(p.config_dir), "gc", "--grace-period", "0s"], capture_output=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    from pypod.stage1 import conmon

    conmon.become_subreaper()
    print("rootfs preparation (ms, median): plain overlay | idmapped layers | shifted copy")
    for label, plain, idmap, copy in bench_rootfs(args.runs):
        print(f"  {label:28s} {plain:8.2f} {idmap:8.2f} {copy:9.1f}")
    print("pod run of /bin/true, --net=none (ms, median): without | with --private-users")
    for rt, without, with_ in bench_pods(args.runs):
        print(f"  {rt:6s} {without:8.1f} {with_:8.1f}  (+{with_ - without:.1f})")
    conmon.reap_adopted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
