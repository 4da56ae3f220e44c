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


class Copier:
    """Raw bytes of one app's CRI log, record by record, from a position that can be saved and
    resumed: for drivers that copy an app's output into their orchestrator's own files (Nomad's
    log FIFOs, Mesos' sandbox stdout/stderr) and must neither lose nor repeat output after they
    restart. ``position`` is ``(inode, offset)``: the offset is just past the last record returned
    (partial records are held back until their ``F`` record, so a resume never splits a line).
    """

    def __init__(self, path: str | os.PathLike, position: tuple[int | None, int] = (None, 0)):
        self.path = Path(path)
        self.ino, self.pos = position

    @property
    def position(self) -> tuple[int | None, int]:
        return self.ino, self.pos

    def read(self, limit: int = 1 << 20) -> list[tuple[str, bytes, int]]:
        """New complete records as ``(stream, data, offset)``: ``offset`` is where to resume once
        this record is delivered (when the other stream has a record open it stays before that
        record's start). ``data`` ends with a newline when the app wrote one. At most about
        ``limit`` bytes of log are read."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with f:
            st = os.fstat(f.fileno())
            if self.ino is not None and (st.st_ino != self.ino or st.st_size < self.pos):
                self.pos = 0  # conmon replaced or truncated the log at its size limit
            self.ino = st.st_ino
            if st.st_size <= self.pos:
                return []
            f.seek(self.pos)
            data = f.read(limit)
        out: list[tuple[str, bytes, int]] = []
        pending: dict[bytes, list[bytes]] = {}
        off = start = 0
        while True:
            nl = data.find(b"\n", off)
            if nl < 0:
                break
            line, off = data[off:nl], nl + 1
            parts = line.split(b" ", 3)
            if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"P", b"F"):
                if not pending:
                    start = off
                continue
            text = parts[3] if len(parts) > 3 else b""
            if parts[2] == b"P":
                pending.setdefault(parts[1], []).append(text)
                continue
            chunks = pending.pop(parts[1], [])
            if not pending:  # resuming here repeats nothing and loses nothing
                start = off
            out.append((parts[1].decode(), b"".join(chunks) + text + b"\n", self.pos + start))
        if pending and not out and len(data) >= limit:  # one record longer than the limit: emit it
            for stream, chunks in pending.items():
                out.append((stream.decode(), b"".join(chunks), self.pos + off))
            start = off
        self.pos += start
        return out
