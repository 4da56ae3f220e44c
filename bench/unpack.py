"""Unpack a ~200 MB multi-layer gzip image: pypod vs GNU tar vs umoci, side by side.

    .venv/bin/python bench/unpack.py [--size-mb 200] [--runs 3]

Each contender is a whole process started fresh (Python start-up counts against pypod), unpacks
every layer of the same OCI layout into an empty directory on the same filesystem, with a warm
page cache. Prints median wall times and ratios to GNU tar. Needs root (whiteouts, ownership).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

PYPOD_UNPACK = """
import sys
from pypod.config import Limits
from pypod.images.unpack import apply_layer
target = sys.argv[1]
for blob in sys.argv[2:]:
    with open(blob, 'rb') as f:
        apply_layer(f, target, Limits())
"""


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median_of(runs: int, work: Path, make_cmds) -> float:
    times = []
    for _ in range(runs):
        target = work / "target"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        subprocess.run(["sync"])
        t = 0.0
        for cmd in make_cmds(target):
            t += timed(cmd)
        times.append(t)
    shutil.rmtree(work / "target", ignore_errors=True)
    return statistics.median(times)


def small_files_image(dest: Path, files: int, seed: int = 1):
    """One gzip layer of ``files`` small files (~3 KB on average, text-like): the metadata-bound case
    that the host's anchor figure (54k entries) measures."""
    import random

    from support import images as ti

    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    t = ti.LayerTar()
    for i in range(files):
        body = b" ".join(rng.choice(words) for _ in range(rng.randint(50, 900)))
        t.file(f"usr/share/doc/pkg{i % 400:03d}/file{i:05d}.txt", body)
    layout = ti.Layout(dest)
    layer = ti._add_layer(layout, t.bytes(), "gzip")
    cfg = ti._config([layer], {"Cmd": ["sh"]})
    return ti._write_manifest(layout, "small-files", "latest", [layer], cfg)


def compare(title: str, img, runs: int, work: Path) -> None:
    blobs = [str(img.blob_path(d)) for d in img.layer_digests]
    compressed = sum(os.path.getsize(b) for b in blobs)
    py = sys.executable
    results = {
        "GNU tar -xzf": median_of(runs, work, lambda t: [
            ["tar", "-xzf", b, "-C", str(t), "--numeric-owner", "--same-permissions"] for b in blobs]),
        "pypod unpack": median_of(runs, work, lambda t: [[py, "-c", PYPOD_UNPACK, str(t), *blobs]]),
    }
    if shutil.which("umoci"):
        results["umoci raw unpack"] = median_of(runs, work, lambda t: [
            ["umoci", "--log", "error", "raw", "unpack", "--image", f"{img.layout}:{img.ref}", str(t / "rootfs")]])
    tar = results["GNU tar -xzf"]
    print(f"\n{title}: {len(blobs)} gzip layers, {compressed / 1e6:.1f} MB compressed; median of {runs} runs")
    print(f"{'contender':<20} {'seconds':>8} {'MB/s':>8} {'vs tar':>7}")
    for name, secs in results.items():
        print(f"{name:<20} {secs:8.2f} {compressed / 1e6 / secs:8.1f} {secs / tar:6.2f}x")
    print(json.dumps({"case": title, **{k: round(v, 3) for k, v in results.items()}}))


def main() -> None:
    from support import images as ti

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--small-files", type=int, default=50000)
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir under /var/tmp)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="pypod-bench-", dir="/var/tmp"))
    try:
        big = ti.build_bench_image(work / "layout", total_size=args.size_mb << 20)
        compare(f"{args.size_mb} MiB of mixed-size files", big, args.runs, work)
        small = small_files_image(work / "small", args.small_files)
        compare(f"{args.small_files} small files", small, args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
