"""Pull throughput from a local registry: pypod vs skopeo, MB/s of compressed layers.

    .venv/bin/python bench/pull.py [--size-mb 200] [--runs 3]

Starts Debian's docker-registry on 127.0.0.1 (the test fixture), pushes a ~200 MB multi-layer gzip
image, then times whole processes pulling it into an empty store: ``pypod fetch`` (download,
verify and unpack every layer) and ``skopeo copy docker://... oci:DIR`` (download and verify
only, no unpack). Prints medians and MB/s.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> None:
    from support import images as ti
    from support.registry import Registry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pypod-bench-pull-", dir="/var/tmp"))
    try:
        img = ti.build_bench_image(work / "layout", total_size=args.size_mb << 20)
        compressed = sum(la.size for la in img.layers)
        with Registry() as reg:
            reg.push(img, "bench/big", "latest")
            ref = f"{reg.host}/bench/big:latest"
            etc = work / "etc"
            etc.mkdir()
            (etc / "pypod.toml").write_text(f'[[registry]]\nprefix = "{reg.host}"\ninsecure = true\n')
            pypod = [sys.executable, "-m", "pypod.cli", "--config-dir", str(etc)]
            contenders = {
                "pypod fetch (pull+unpack)": lambda d: pypod + ["--dir", str(d), "fetch", ref],
                "skopeo copy (pull only)": lambda d: ["skopeo", "copy", "-q", "--src-tls-verify=false",
                                                      f"docker://{ref}", f"oci:{d}:latest"],
            }
            print(f"image: {len(img.layers)} gzip layers, {compressed / 1e6:.1f} MB compressed; "
                  f"median of {args.runs} runs")
            for name, make in contenders.items():
                if name.startswith("skopeo") and not shutil.which("skopeo"):
                    continue
                times = []
                for _ in range(args.runs):
                    d = work / "store"
                    shutil.rmtree(d, ignore_errors=True)
                    subprocess.run(["sync"])
                    t0 = time.perf_counter()
                    subprocess.run(make(d), check=True, stdout=subprocess.DEVNULL)
                    times.append(time.perf_counter() - t0)
                secs = statistics.median(times)
                print(f"{name:<28} {secs:6.2f} s  {compressed / 1e6 / secs:7.1f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
