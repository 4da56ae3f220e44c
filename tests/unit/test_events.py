"""The event log: format, filters, concurrent appends from several processes, rotation, and a
follower that sees new events, survives rotation and stops cleanly."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import threading
import time

import pytest

from pypod import events
from pypod.events import EventLog, format_time, parse_time, since_ns

FORK = multiprocessing.get_context("fork")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def test_emit_and_read(tmp_path):
    ev = events.emit(tmp_path, "app.exited", pod="p1", app="web", exitCode=137, signal=9, oomKilled=True, note=None)
    assert TIME_RE.fullmatch(ev["time"])
    assert ev == {"time": ev["time"], "type": "app.exited", "pod": "p1", "app": "web", "exitCode": 137,
                  "signal": 9, "oomKilled": True}
    line = (tmp_path / "events.log").read_text()
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == ev  # None attributes are left out
    assert list(events.read(tmp_path)) == [ev]
    with pytest.raises(ValueError, match="reserved"):
        EventLog(tmp_path).append("pod.started", time="x")


def test_emit_is_best_effort(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert events.emit(tmp_path / "file", "image.removed", image="sha256:x") is None
    assert "warning: event image.removed not recorded" in capsys.readouterr().err


def test_emit_creates_the_data_dir(tmp_path):
    events.emit(tmp_path / "new" / "dir", "pod.prepared", pod="p")
    assert [e["pod"] for e in events.read(tmp_path / "new" / "dir")] == ["p"]


def test_times(tmp_path):
    ns = 1_700_000_000_123_456_789
    assert format_time(ns) == "2023-11-14T22:13:20.123456789Z"
    assert parse_time(format_time(ns)) == ns
    assert parse_time("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    assert since_ns(1_700_000_000) == 1_700_000_000 * 10**9
    assert since_ns("10m", now_ns=ns) == ns - 600 * 10**9
    assert since_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    with pytest.raises(ValueError, match="invalid RFC 3339"):
        parse_time("yesterday")


def test_filters_and_time_bounds(tmp_path):
    log = EventLog(tmp_path)
    evs = [log.append("pod.prepared", pod="a"), log.append("pod.started", pod="a"),
           log.append("app.started", pod="a", app="web"), log.append("app.exited", pod="b", app="web", exitCode=1),
           log.append("image.imported", image="sha256:1")]
    assert [e["type"] for e in log.read(filters={"type": "pod"})] == ["pod.prepared", "pod.started"]
    assert [e["type"] for e in log.read(filters={"type": ["app.exited", "image"]})] == ["app.exited", "image.imported"]
    assert [e["type"] for e in log.read(filters={"pod": "a", "app": "web"})] == ["app.started"]
    assert [e["type"] for e in log.read(filters={"exitCode": "1"})] == ["app.exited"]
    assert list(log.read(filters={"type": "po"})) == []  # families are whole words, not prefixes
    assert [e["time"] for e in log.read(since=evs[2]["time"], until=evs[3]["time"])] == [evs[2]["time"], evs[3]["time"]]
    times = [e["time"] for e in log.read()]
    assert times == sorted(times)


def _writer(data_dir, tag, n, max_bytes):
    log = EventLog(data_dir, max_bytes=max_bytes)
    for i in range(n):
        # every third line is longer than PIPE_BUF: atomicity must not depend on size
        log.append("app.started", writer=tag, seq=i, pad="x" * (6000 if i % 3 == 0 else 100))


def _run_writers(data_dir, writers, n, max_bytes):
    procs = [FORK.Process(target=_writer, args=(data_dir, k, n, max_bytes)) for k in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0


def _lines(path):
    return path.read_bytes().splitlines() if path.exists() else []


def test_concurrent_appends_never_tear(tmp_path):
    writers, n = 8, 150
    _run_writers(tmp_path, writers, n, max_bytes=1 << 30)
    lines = _lines(tmp_path / "events.log")
    assert len(lines) == writers * n
    parsed = [json.loads(line) for line in lines]  # raises on any torn or interleaved line
    for k in range(writers):
        assert [e["seq"] for e in parsed if e["writer"] == k] == list(range(n))  # each writer's order kept
    times = [e["time"] for e in parsed]
    assert times == sorted(times)  # stamped under the lock: file order is time order


def test_rotation_keeps_one_old_file(tmp_path):
    log = EventLog(tmp_path, max_bytes=4096)
    sent = [log.append("pod.started", pod=f"p{i}", pad="y" * 200)["pod"] for i in range(100)]
    old, cur = tmp_path / "events.log.1", tmp_path / "events.log"
    assert old.exists() and cur.stat().st_size <= 4096 + 400
    got = [e["pod"] for e in log.read()]
    assert got == sent[-len(got):]  # the newest events, in order, nothing repeated
    assert len(got) == len(_lines(old)) + len(_lines(cur)) and len(got) < len(sent)


def test_concurrent_appends_with_rotation(tmp_path):
    _run_writers(tmp_path, 6, 100, max_bytes=64 << 10)
    for name in ("events.log", "events.log.1"):
        for line in _lines(tmp_path / name):
            json.loads(line)
    assert (tmp_path / "events.log").stat().st_size <= (64 << 10) + 7000
    per_writer: dict[int, list[int]] = {}
    for e in events.read(tmp_path):
        per_writer.setdefault(e["writer"], []).append(e["seq"])
    for seqs in per_writer.values():
        assert seqs == sorted(seqs)
        assert seqs[-1] == 99  # every writer's last event is in the newest files


class Follower:
    """Runs follow() in a thread, collecting events, until stopped."""

    def __init__(self, data_dir, **kw):
        self.stop = threading.Event()
        self.got: list[dict] = []
        self.gen = events.follow(data_dir, stop=self.stop, poll_interval=0.05, **kw)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for ev in self.gen:
            self.got.append(ev)

    def wait_for(self, n, timeout=15.0):
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.got

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


def test_follow_sees_new_events_and_survives_rotation(tmp_path):
    log = EventLog(tmp_path, max_bytes=2048)
    log.append("pod.prepared", pod="before")  # not followed: no `since`
    f = Follower(tmp_path)
    try:
        time.sleep(0.2)
        sent = []
        for i in range(60):  # about 8 rotations
            sent.append(log.append("app.started", pod="p", seq=i, pad="z" * 200)["seq"])
            time.sleep(0.01)
        got = f.wait_for(len(sent))
        assert [e["seq"] for e in got] == sent
    finally:
        f.close()
    assert os.path.exists(tmp_path / "events.log.1")


def test_follow_with_since_replays_then_tails(tmp_path):
    log = EventLog(tmp_path)
    first = log.append("pod.prepared", pod="a")
    log.append("pod.started", pod="a")
    f = Follower(tmp_path, since=first["time"], filters={"type": "pod"})
    try:
        assert [e["type"] for e in f.wait_for(2)] == ["pod.prepared", "pod.started"]
        log.append("image.imported", image="i")  # filtered out
        log.append("pod.exited", pod="a")
        assert [e["type"] for e in f.wait_for(3)] == ["pod.prepared", "pod.started", "pod.exited"]
    finally:
        f.close()


def test_follow_before_the_log_exists(tmp_path):
    f = Follower(tmp_path)
    try:
        time.sleep(0.1)
        events.emit(tmp_path, "pod.started", pod="x")
        assert [e["pod"] for e in f.wait_for(1)] == ["x"]
    finally:
        f.close()


def test_follow_by_polling_when_inotify_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(events._Inotify, "open", classmethod(lambda cls, d: None))
    log = EventLog(tmp_path, max_bytes=1024)
    f = Follower(tmp_path)
    try:
        time.sleep(0.1)
        for i in range(20):  # a rotation every ~6 events, slower than the 0.05 s poll
            log.append("pod.started", seq=i, pad="q" * 100)
            time.sleep(0.02)
        assert [e["seq"] for e in f.wait_for(20)] == list(range(20))
    finally:
        f.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_follow_stops_cleanly_and_releases_its_fds(tmp_path):
    events.emit(tmp_path, "pod.started", pod="x")
    before = _open_fds()
    stop = threading.Event()
    gen = events.follow(tmp_path, stop=stop, poll_interval=0.05)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    t0 = time.monotonic()
    assert list(gen) == []  # nothing new; returns once stopped
    assert time.monotonic() - t0 < 5
    assert _open_fds() == before
    # closing a follower that is waiting (the consumer went away) also releases everything
    gen = events.follow(tmp_path, since=0, poll_interval=0.05)
    assert next(gen)["pod"] == "x"
    gen.close()
    assert _open_fds() == before
