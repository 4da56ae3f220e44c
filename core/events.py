"""The event log: one append-only file of JSON lines per data dir, ``<data_dir>/events.log``.

Every line is one event::

    {"time": "2025-01-02T03:04:05.123456789Z", "type": "app.exited", "pod": "<uuid>",
     "app": "web", "exitCode": 137, "signal": 9, "oomKilled": true}

``time`` is RFC 3339 in UTC with nanoseconds (fixed width, so times compare as strings);
``type`` is one of the constants below (``pod.*``, ``app.*``, ``image.*``); ids (``pod``,
``app``, ``image``) and other attributes sit beside them.

Writers (any pypod process, the stage1's exit hooks) append with :func:`emit`: the line is
written with one write(2) on an ``O_APPEND`` fd while holding an flock on the file, and the time
is taken under that lock, so lines never interleave, tear or go out of order, whatever their
length. When the file passes ``max_bytes`` the writer that crossed it renames it to
``events.log.1`` (replacing the previous one) still under the lock; writers that were waiting
on the old file notice that its inode is no longer ``events.log`` and reopen. Readers take no
lock: :func:`read` reads ``events.log.1`` then ``events.log``; :func:`follow` tails, across
rotations, until told to stop.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

LOG_NAME = "events.log"
OLD_SUFFIX = ".1"
MAX_BYTES = 8 << 20

POD_PREPARED = "pod.prepared"
POD_STARTED = "pod.started"
POD_EXITED = "pod.exited"
POD_STOPPED = "pod.stopped"
POD_GARBAGE_COLLECTED = "pod.garbage-collected"
APP_CREATED = "app.created"
APP_STARTED = "app.started"
APP_EXITED = "app.exited"
APP_RESTARTED = "app.restarted"
APP_REMOVED = "app.removed"
IMAGE_PULLED = "image.pulled"
IMAGE_IMPORTED = "image.imported"
IMAGE_TAGGED = "image.tagged"
IMAGE_REMOVED = "image.removed"

Event = dict[str, Any]
Filters = Mapping[str, Union[str, Iterable[str]]]
Since = Union[int, float, str, None]


# -- time -----------------------------------------------------------------------------------


def format_time(ns: int) -> str:
    """RFC 3339, UTC, nanoseconds: ``2025-01-02T03:04:05.123456789Z``."""
    s, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{frac:09d}Z"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 time (any offset, 0-9 fraction digits)."""
    import calendar
    import re

    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)",
                     text.strip())
    if not m:
        raise ValueError(f"invalid RFC 3339 time {text!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    tz = m.group(8)
    if tz not in ("Z", "z"):
        off = int(tz[1:3]) * 3600 + int(tz[4:6]) * 60
        secs -= off if tz[0] == "+" else -off
    return secs * 1_000_000_000 + int((m.group(7) or "0").ljust(9, "0"))


def since_ns(value: Since, *, now_ns: int | None = None) -> int | None:
    """A ``--since``/``--until`` value as nanoseconds: a number (Unix seconds), an RFC 3339 time,
    or a duration before now (``10m``, ``1h30m``)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 1_000_000_000)
    text = str(value).strip()
    if "T" in text or "t" in text or " " in text:
        return parse_time(text)
    from .config import parse_duration

    now = time.time_ns() if now_ns is None else now_ns
    return now - int(parse_duration(text) * 1_000_000_000)


# -- filters --------------------------------------------------------------------------------


def _norm_filters(filters: Filters | None) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for key, wanted in (filters or {}).items():
        vals = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        if vals:
            out.append((key, vals))
    return out


def _matches(ev: Event, filters: list[tuple[str, tuple[str, ...]]]) -> bool:
    """Values of one key are alternatives; different keys must all match. ``type`` matches
    exactly or by its family (``pod`` matches ``pod.started``)."""
    for key, vals in filters:
        v = ev.get(key)
        if v is None:
            return False
        v = str(v)
        if key == "type":
            if not any(v == w or v.startswith(w + ".") for w in vals):
                return False
        elif v not in vals:
            return False
    return True


def _parse_lines(data: bytes, lo: str | None, hi: str | None,
                 filters: list[tuple[str, tuple[str, ...]]]) -> Iterator[Event]:
    for line in data.splitlines():
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # only a crash mid-write on a full disk could leave one; skip it
        if not isinstance(ev, dict):
            continue
        t = ev.get("time", "")
        if (lo is not None and t < lo) or (hi is not None and t > hi):
            continue
        if _matches(ev, filters):
            yield ev


# -- the log --------------------------------------------------------------------------------


class EventLog:
    def __init__(self, data_dir: str | os.PathLike, *, max_bytes: int = MAX_BYTES):
        self.dir = os.fspath(data_dir)
        self.path = os.path.join(self.dir, LOG_NAME)
        self.old_path = self.path + OLD_SUFFIX
        self.max_bytes = max_bytes

    # -- writing --------------------------------------------------------------------------
    def append(self, type_: str, /, **attrs: Any) -> Event:
        """Append one event; returns it (with its time)."""
        if "time" in attrs or "type" in attrs:
            raise ValueError("event attributes 'time' and 'type' are reserved")
        if not type_ or not isinstance(type_, str):
            raise ValueError(f"invalid event type {type_!r}")
        attrs = {k: v for k, v in attrs.items() if v is not None}
        tail = json.dumps(attrs, separators=(",", ":"), ensure_ascii=False, default=str)[1:]
        head = json.dumps(type_)
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            except FileNotFoundError:
                os.makedirs(self.dir, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    cur = os.stat(self.path)
                except FileNotFoundError:
                    cur = None
                if cur is None or (cur.st_ino, cur.st_dev) != (st.st_ino, st.st_dev):
                    continue  # rotated while we waited for the lock: write to the new file
                if st.st_size == 0 and os.geteuid() == 0:
                    self._share(fd, st)
                stamp = format_time(time.time_ns())
                line = f'{{"time":"{stamp}","type":{head}' + ("," + tail if len(tail) > 1 else "}") + "\n"
                data = line.encode()
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                except OSError:
                    os.ftruncate(fd, st.st_size)  # never leave half a line (a full disk)
                    raise
                if st.st_size + len(data) > self.max_bytes:
                    os.rename(self.path, self.old_path)
                ev: Event = {"time": stamp, "type": type_}
                ev.update(attrs)
                return ev
            finally:
                os.close(fd)

    def _share(self, fd: int, st: os.stat_result) -> None:
        """A new log gets the data dir's group: its members read events (see pypod.access)."""
        try:
            gid = os.stat(self.dir).st_gid
        except OSError:
            return
        if gid != st.st_gid:
            os.fchown(fd, -1, gid)

    # -- reading --------------------------------------------------------------------------
    def _open_pair(self) -> tuple[int | None, int | None]:
        """fds on (events.log.1, events.log), opened current-first so a rotation in between
        cannot hide a file (it can only make both fds the same file: then the old one is None)."""
        cur = _open_ro(self.path)
        old = _open_ro(self.old_path)
        if cur is not None and old is not None and _ino(cur) == _ino(old):
            os.close(old)
            old = None
        return old, cur

    def read(self, *, since: Since = None, until: Since = None, filters: Filters | None = None) -> Iterator[Event]:
        """Recorded events, oldest first, with ``since <= time <= until`` and matching ``filters``
        (``{"type": ["pod.exited", "app"], "pod": uuid}``)."""
        lo, hi = _bound(since), _bound(until)
        filt = _norm_filters(filters)
        old, cur = self._open_pair()
        try:
            for fd in (old, cur):
                if fd is not None:
                    yield from _parse_lines(_read_all(fd), lo, hi, filt)
        finally:
            for fd in (old, cur):
                if fd is not None:
                    os.close(fd)

    def follow(self, *, since: Since = None, filters: Filters | None = None,
               stop: Any = None, poll_interval: float = 0.25) -> Iterator[Event]:
        """Yield events as they are appended, forever, until ``stop`` (a threading.Event or a
        callable returning True) is set or the generator is closed. With ``since``, recorded
        events from then on come first; without it, only new ones. Survives rotation (a file
        rotated twice between two looks is read whole from events.log.1). Waits with inotify
        on the data dir where it can, otherwise polls every ``poll_interval`` s; ``stop`` is
        checked at least that often."""
        stopped = _stopper(stop)
        filt = _norm_filters(filters)
        lo = _bound(since)
        watcher = _Inotify.open(self.dir)
        fd: int | None = None
        buf = b""
        try:
            if since is not None:
                old, fd = self._open_pair()
                if old is not None:
                    try:
                        yield from _parse_lines(_read_all(old), lo, None, filt)
                    finally:
                        os.close(old)
            else:
                fd = _open_ro(self.path)
                if fd is not None:
                    os.lseek(fd, 0, os.SEEK_END)
            while True:
                if fd is not None:
                    data = buf + _read_all(fd)
                    cut = data.rfind(b"\n") + 1
                    buf = data[cut:]
                    yield from _parse_lines(data[:cut], lo, None, filt)
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    st = None
                if st is not None and (fd is None or (st.st_ino, st.st_dev) != _ino(fd)):
                    if fd is not None:  # rotated: finish the old file, then start the new one
                        data = buf + _read_all(fd)
                        yield from _parse_lines(data, lo, None, filt)
                        old_ino = _ino(fd)
                        os.close(fd)
                        fd = None
                        try:
                            ost = os.stat(self.old_path)
                            if (ost.st_ino, ost.st_dev) != old_ino:  # rotated twice meanwhile
                                ofd = _open_ro(self.old_path)
                                if ofd is not None:
                                    try:
                                        yield from _parse_lines(_read_all(ofd), lo, None, filt)
                                    finally:
                                        os.close(ofd)
                        except FileNotFoundError:
                            pass
                    buf = b""
                    fd = _open_ro(self.path)
                    continue
                if stopped():
                    return
                if watcher is not None:
                    watcher.wait(poll_interval)
                else:
                    time.sleep(poll_interval)
                if stopped():
                    return
        finally:
            if fd is not None:
                os.close(fd)
            if watcher is not None:
                watcher.close()


def emit(data_dir: str | os.PathLike, type_: str, /, **attrs: Any) -> Event | None:
    """Record one event in ``data_dir``'s log (what the pods, images and stage1 code call).

    Best effort: an event that cannot be written (a full or read-only disk) must not fail the
    operation it reports, so the OSError becomes a warning on stderr and None is returned."""
    try:
        return EventLog(data_dir).append(type_, **attrs)
    except OSError as e:
        print(f"pypod: warning: event {type_} not recorded: {e}", file=sys.stderr)
        return None


def read(data_dir: str | os.PathLike, *, since: Since = None, until: Since = None,
         filters: Filters | None = None) -> Iterator[Event]:
    return EventLog(data_dir).read(since=since, until=until, filters=filters)


def follow(data_dir: str | os.PathLike, *, since: Since = None, filters: Filters | None = None,
           stop: Any = None, poll_interval: float = 0.25) -> Iterator[Event]:
    return EventLog(data_dir).follow(since=since, filters=filters, stop=stop, poll_interval=poll_interval)


# -- helpers --------------------------------------------------------------------------------


def _bound(value: Since) -> str | None:
    ns = since_ns(value)
    return None if ns is None else format_time(ns)


def _open_ro(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _ino(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_ino, st.st_dev


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _stopper(stop: Any) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    if hasattr(stop, "is_set"):
        return stop.is_set
    if callable(stop):
        return stop
    raise TypeError("stop must be a threading.Event or a callable")


class _Inotify:
    """Just enough inotify (through ctypes) to sleep until something in a directory changes."""

    _MASK = 0x2 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200  # MODIFY CLOSE_WRITE MOVED_FROM MOVED_TO CREATE DELETE

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def open(cls, directory: str) -> "_Inotify | None":
        """None where inotify is unavailable (or the directory does not exist yet): poll then."""
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, os.fsencode(directory), cls._MASK) < 0:
                os.close(fd)
                return None
            return cls(fd)
        except (OSError, AttributeError, ImportError):
            return None

    def wait(self, timeout: float) -> None:
        import select

        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        os.close(self.fd)
