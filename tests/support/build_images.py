#!/usr/bin/env python3
"""Builds pypod's test images into OUTDIR and prints what it built.

    python tests/support/build_images.py OUTDIR [--hostile] [--bench] [--bomb]

Standard images and archives always; ``--hostile`` adds the hostile layouts
(OUTDIR/hostile/<kind>), ``--bench`` the ~200 MB benchmark image
(OUTDIR/oci/bench), ``--bomb`` the gzip bomb (OUTDIR/hostile/bomb).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import images as im  # noqa: E402


def describe(img: im.Image) -> str:
    lines = [f"{img.name:18} {img.layout}:{img.ref}",
             f"    {img.media_type}  {img.digest}"]
    if img.platforms:
        for plat, sub in img.platforms.items():
            lines.append(f"    {plat:14} manifest {sub.manifest_digest}")
    else:
        lines.append(f"    config {img.config_digest}")
        for layer in img.layers:
            lines.append(f"    layer  {layer.digest} {layer.size:>10} B {layer.compression}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--hostile", action="store_true", help="also build hostile images")
    parser.add_argument("--bench", action="store_true", help="also build the benchmark image")
    parser.add_argument("--bomb", action="store_true", help="also build the 1 GiB gzip bomb")
    args = parser.parse_args(argv)

    start = time.monotonic()
    built = im.build_all(args.outdir)
    for img in built.images.values():
        print(describe(img))
    for name, path in built.archives.items():
        print(f"{name:18} {path} ({path.stat().st_size} B)")
    if args.hostile:
        hostile = args.outdir / "hostile"
        for kind in im.HOSTILE_LAYERS:
            print(describe(im.build_hostile_image(hostile / kind, kind)))
        for kind, build in im.HOSTILE_IMAGES.items():
            print(describe(build(hostile / kind)))
    if args.bomb:
        print(describe(im.build_bomb_image(args.outdir / "hostile" / "bomb")))
    if args.bench:
        print(describe(im.build_bench_image(args.outdir / "oci" / "bench")))
    print(f"built in {time.monotonic() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
