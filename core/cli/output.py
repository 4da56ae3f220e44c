"""Output helpers: tables, JSON, sizes, times, and pull progress on a terminal."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Sequence


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, legend: bool = True) -> None:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ([headers] if legend else []) + cells
    for r in lines:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def human_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


class PullProgress:
    """Per-layer progress (bytes, rate) redrawn in place on a terminal; silent otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self.layers: dict[str, list] = {}  # digest -> [done, total, status, start]
        self.lock = threading.Lock()
        self.drawn = 0
        self.last = 0.0

    def __call__(self, digest: str, done: int, total: int, status: str) -> None:
        if not self.enabled:
            return
        with self.lock:
            row = self.layers.setdefault(digest, [0, total, status, time.monotonic()])
            row[0], row[1], row[2] = done, total, status
            now = time.monotonic()
            if status in ("pulling",) and now - self.last < 0.1:
                return
            self.last = now
            self._draw()

    def _draw(self) -> None:
        out = []
        for digest, (done, total, status, start) in self.layers.items():
            rate = done / max(time.monotonic() - start, 1e-3)
            pct = f"{100 * done // total:3d}%" if total else "   "
            out.append(f"{digest[7:19]}  {status:<9} {pct} {human_size(done):>9} / {human_size(total):<9}"
                       f" {human_size(rate)}/s")
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F")
        self.stream.write("".join(f"\x1b[2K{line}\n" for line in out))
        self.stream.flush()
        self.drawn = len(out)
