"""Apps' logs in the Kubernetes CRI format (``<RFC3339Nano> stdout|stderr P|F <text>``), as
conmon writes them: reading with ``--since``/``--tail``, and following several apps at once,
surviving the truncation conmon does when a log reaches its size limit."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Mapping

_LINE = re.compile(r"^(\S+) (stdout|stderr) ([PF]) ?(.*)$", re.S)


@dataclass
class Entry:
    app: str
    time: str
    stream: str
    text: str  # complete: partial ('P') records are joined, the newline kept when 'F' ends it

    @property
    def timestamp(self) -> float:
        return parse_time(self.time)


def parse_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with up to nanoseconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        raise ValueError(f"bad time {text!r}")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = datetime.fromisoformat(m.group(1) + tz).timestamp()
    return base + (float("0." + m.group(2)) if m.group(2) else 0.0)


class _Reader:
    """Incremental reader of one log file: yields complete entries, keeps partial ones."""

    def __init__(self, app: str, path: Path):
        self.app, self.path = app, path
        self.pos = 0
        self.buf = b""
        self.pending: dict[str, tuple[str, list[str]]] = {}
        self.ino: int | None = None

    def read(self) -> Iterator[Entry]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if self.ino != st.st_ino or st.st_size < self.pos:  # rotated or truncated
            self.ino, self.pos, self.buf = st.st_ino, 0, b""
        if st.st_size == self.pos:
            return
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            m = _LINE.match(raw.decode("utf-8", "replace"))
            if not m:
                continue
            ts, stream, tag, text = m.groups()
            first, parts = self.pending.pop(stream, (ts, []))
            parts.append(text)
            if tag == "P":
                self.pending[stream] = (first, parts)
                continue
            yield Entry(self.app, first, stream, "".join(parts) + "\n")

    def flush(self) -> Iterator[Entry]:
        """What is left partial (an app that died mid-line)."""
        for stream, (ts, parts) in self.pending.items():
            yield Entry(self.app, ts, stream, "".join(parts))
        self.pending.clear()


def read(paths: Mapping[str, Path], *, since: float | None = None, tail: int | None = None) -> list[Entry]:
    """Every app's entries, merged in time order; ``since`` in epoch seconds; ``tail`` per app."""
    out: list[Entry] = []
    for app, path in paths.items():
        r = _Reader(app, path)
        entries = [e for e in [*r.read(), *r.flush()] if since is None or e.timestamp >= since]
        out.extend(entries[-tail:] if tail is not None and tail >= 0 else entries)
    out.sort(key=lambda e: e.time)
    return out


def follow(paths: Mapping[str, Path], *, done: Callable[[], bool], since: float | None = None,
           tail: int | None = None, interval: float = 0.05) -> Iterator[Entry]:
    """Yield entries as apps write them until ``done()`` is true, then what remains."""
    readers = {app: _Reader(app, path) for app, path in paths.items()}
    first = True
    while True:
        finished = done()
        batch: list[Entry] = []
        for r in readers.values():
            got = [e for e in r.read() if since is None or e.timestamp >= since]
            if first and tail is not None and tail >= 0:
                got = got[-tail:] if tail else []
            batch.extend(got)
        first = False
        batch.sort(key=lambda e: e.time)
        yield from batch
        if finished:
            for r in readers.values():
                yield from r.flush()
            return
        if not batch:
            time.sleep(interval)
