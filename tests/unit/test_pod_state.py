"""rkt's on-disk pod state machine: transitions, races between processes, liveness from a lock
the kernel drops when its holder dies, gc mark and sweep (grace, hooks, crash resumption),
lookup, the mutation lock and the status area."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pypod import events
from pypod.errors import Conflict, NotFound, UsageError
from pypod.pods import state as st
from pypod.pods.manifest import App, PodManifest
from pypod.pods.state import (DELETING, EMBRYO, EXITED, EXITED_GARBAGE, GARBAGE, LOCK_FD_ENV, PREPARE_FAILED,
                              PREPARED, PREPARING, RUNNING, LockedPod, PodStore, read_uuid_file, write_uuid_file)
from pypod.pods.status import APP_EXITED, APP_RUNNING, APP_UNKNOWN

FORK = multiprocessing.get_context("fork")

# A lock holder: checks it got the pod directory's fd, says so, then lives until killed.
HOLDER = r"""
import os, stat, sys, time
fd = int(os.environ["PYPOD_LOCK_FD"])
st = os.fstat(fd)
assert stat.S_ISDIR(st.st_mode)
sys.stdout.write(f"ready {st.st_ino}\n"); sys.stdout.flush()
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 60)
"""


@pytest.fixture
def store(tmp_path):
    return PodStore(tmp_path / "data")


@pytest.fixture
def children():
    """Processes a test starts; killed and reaped whatever the test's outcome."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()


def manifest(*names: str) -> PodManifest:
    return PodManifest(apps=[App(name=n, image="busybox") for n in (names or ("app",))])


def hold_in_child(locked: LockedPod, children: list, *, lifetime: float = 60) -> subprocess.Popen:
    """Hand the pod's lock to a child as the stage1 hands it to the infra process."""
    env = dict(os.environ, **locked.child_env())
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lifetime)], pass_fds=(locked.fd,), env=env,
                            stdout=subprocess.PIPE)
    children.append(proc)
    line = proc.stdout.readline().split()
    assert line[0] == b"ready" and int(line[1]) == os.stat(locked.path).st_ino
    locked.handoff()
    return proc


# -- transitions ------------------------------------------------------------------------------


def test_run_lifecycle_keeps_the_lock_from_embryo_to_run(store):
    locked = store.create(manifest("web"))
    assert locked.state == PREPARING and locked.path.parent.name == "prepare"
    assert store.get(locked.uuid).state == PREPARING  # someone else's view: locked in prepare/
    assert json.loads(locked.manifest_path.read_text())["apps"][0]["name"] == "web"
    locked.to_run()
    pod = store.get(locked.uuid)
    assert (pod.dir, pod.state) == ("run", RUNNING)
    assert pod.created is not None and pod.started is not None and pod.created <= pod.started
    assert pod.exited is None
    locked.release()
    assert store.get(locked.uuid).state == EXITED


def test_prepare_then_run_prepared(store):
    locked = store.create(manifest())
    prepared = locked.to_prepared()
    assert locked.fd == -1  # released
    assert prepared.state == PREPARED and store.get(prepared.uuid).state == PREPARED
    with store.run_prepared(prepared.uuid[:8]) as running:
        assert running.state == RUNNING and store.get(prepared.uuid).state == RUNNING
        with pytest.raises(Conflict, match="is running, not prepared"):
            store.run_prepared(prepared.uuid)
    assert store.get(prepared.uuid).state == EXITED


def test_failed_prepare_and_abort(store):
    crashed = store.create(manifest())
    crashed.release()  # the preparing process died: prepare/ without a lock
    assert store.get(crashed.uuid).state == PREPARE_FAILED
    aborted = store.create(manifest()).abort()
    assert store.get(aborted.uuid).state == GARBAGE


def test_invalid_manifest_leaves_no_embryo(store):
    bad = PodManifest(apps=[App(name="a", image="x"), App(name="a", image="y")])
    with pytest.raises(UsageError, match=r"apps\[1\]\.name: duplicate app name 'a'"):
        store.create(bad)
    assert [p.state for p in store.list()] == [GARBAGE]


def test_wrong_transitions_are_refused(store):
    locked = store.create_embryo()
    assert store.get(locked.uuid).state == EMBRYO
    with pytest.raises(Conflict, match="cannot run"):
        locked.to_run()
    locked.to_prepare().to_run()
    with pytest.raises(Conflict, match="cannot abort"):
        locked.abort()
    locked.release()
    with pytest.raises(Conflict, match="lock already released"):
        locked.to_prepared()


def _race_run_prepared(data_dir, uuid, barrier, results):
    store = PodStore(data_dir, events=False)
    barrier.wait()
    try:
        locked = store.run_prepared(uuid)
        results.put(("won", locked.dir))
    except Conflict as e:
        results.put(("lost", str(e)))


def test_racing_run_prepared_exactly_one_wins(store):
    racers, rounds = 4, 8
    for _ in range(rounds):
        uuid = store.create(manifest()).to_prepared().uuid
        barrier, results = FORK.Barrier(racers), FORK.Queue()
        procs = [FORK.Process(target=_race_run_prepared, args=(store.data_dir, uuid, barrier, results))
                 for _ in range(racers)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=30) for _ in range(racers)]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        assert sorted(o[0] for o in outcomes) == ["lost"] * (racers - 1) + ["won"]
        assert [o[1] for o in outcomes if o[0] == "won"] == ["run"]
        assert all("not prepared" in o[1] or "no longer prepared" in o[1] for o in outcomes if o[0] == "lost")
        assert store.get(uuid).state == EXITED  # the winner exited: its lock went with it


# -- liveness -----------------------------------------------------------------------------------


def test_killed_lock_holder_makes_the_pod_exited(store, children):
    locked = store.create(manifest()).to_run()
    uuid = locked.uuid
    holder = hold_in_child(locked, children)
    assert locked.fd == -1  # pypod's copy is closed: only the child keeps the pod running
    assert store.get(uuid).state == RUNNING
    assert store.gc(grace_period=0).marked == []  # gc leaves a running pod alone
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert store.get(uuid).state == EXITED


def test_inheritable_lock_survives_exec(store, children):
    locked = store.create(manifest()).to_run()
    locked.inheritable()
    env = dict(os.environ, **{LOCK_FD_ENV: str(locked.fd)})
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], close_fds=False, env=env, stdout=subprocess.PIPE)
    children.append(proc)
    assert proc.stdout.readline().split()[0] == b"ready"
    locked.handoff()
    assert store.get(locked.uuid).state == RUNNING
    proc.kill()
    proc.wait(timeout=10)
    assert store.get(locked.uuid).state == EXITED


def test_wait_exit_blocks_until_the_holder_is_gone(store, children):
    locked = store.create(manifest()).to_run()
    holder = hold_in_child(locked, children, lifetime=0.5)
    t0 = time.monotonic()
    pod = store.wait_exit(locked.uuid)
    assert pod.state == EXITED
    assert holder.poll() is not None or holder.wait(timeout=5) == 0  # it returned because the holder ended
    assert time.monotonic() - t0 > 0.2


def test_wait_exit_times_out(store, children):
    locked = store.create(manifest()).to_run()
    hold_in_child(locked, children)
    with pytest.raises(TimeoutError, match="still running"):
        store.wait_exit(locked.uuid, timeout=0.3)
    prepared = store.create(manifest()).to_prepared()
    with pytest.raises(TimeoutError, match="still prepared"):
        store.wait_exit(prepared.uuid, timeout=0.2)


# -- lookup -------------------------------------------------------------------------------------

U1 = "aaaaaaaa-0000-4000-8000-000000000001"
U2 = "aaaaaaaa-0000-4000-8000-000000000002"
U3 = "bbbbbbbb-0000-4000-8000-000000000003"


def test_lookup_by_uuid_and_prefix(store):
    for u in (U1, U2):
        store.create(manifest(), uuid=u).to_prepared()
    store.create(manifest(), uuid=U3).abort()
    assert store.get(U1).uuid == U1
    assert store.get(U1.upper()).uuid == U1
    assert store.get("b").uuid == U3 and store.get("b").state == GARBAGE
    assert store.get("aaaaaaaa-0000-4000-8000-000000000002").uuid == U2
    with pytest.raises(UsageError, match=r"pod UUID prefix 'aaaa' is ambiguous: 2 pods match \(" + U1):
        store.get("aaaa")
    with pytest.raises(NotFound, match="no pod with UUID prefix 'c'"):
        store.get("c")
    with pytest.raises(NotFound, match=f"pod {U1[:-1]}9 not found"):
        store.get(U1[:-1] + "9")
    with pytest.raises(UsageError, match="invalid pod UUID"):
        store.get("zz/..")
    with pytest.raises(Conflict, match="already exists"):
        store.create(manifest(), uuid=U1)


def test_prefix_that_is_ambiguous_names_every_candidate(store):
    for u in (U1, U2):
        store.create(manifest(), uuid=u).to_prepared()
    with pytest.raises(UsageError) as exc:
        store.get("aaaaaaaa-0000-4000-8000-00000000000")
    assert U1 in str(exc.value) and U2 in str(exc.value)


def test_uuid_file(tmp_path, store):
    pod = store.create(manifest()).to_prepared()
    path = tmp_path / "uuid"
    write_uuid_file(path, pod.uuid)
    assert read_uuid_file(path) == pod.uuid
    assert store.get(read_uuid_file(path)).state == PREPARED
    path.write_text("garbage\n")
    with pytest.raises(UsageError, match="no pod UUID in it"):
        read_uuid_file(path)
    with pytest.raises(UsageError, match="No such file"):
        read_uuid_file(tmp_path / "missing")


def test_list_reports_every_state(store):
    held = []
    embryo = store.create_embryo()
    held.append(embryo)
    preparing = store.create(manifest())
    held.append(preparing)
    failed = store.create(manifest())
    failed.release()
    prepared = store.create(manifest()).to_prepared()
    running = store.create(manifest()).to_run()
    held.append(running)
    exited = store.create(manifest()).to_run()
    exited.release()
    marked = store.create(manifest()).to_run()
    marked.release()
    garbage = store.create(manifest()).abort()
    store.gc_mark()  # moves `marked`, `exited` and `failed` on; prepared is young
    states = {p.uuid: p.state for p in store.list()}
    assert states == {
        embryo.uuid: EMBRYO, preparing.uuid: PREPARING, failed.uuid: GARBAGE, prepared.uuid: PREPARED,
        running.uuid: RUNNING, exited.uuid: EXITED_GARBAGE, marked.uuid: EXITED_GARBAGE, garbage.uuid: GARBAGE,
    }
    for h in held:
        h.release()


# -- gc -----------------------------------------------------------------------------------------


def test_gc_marks_then_sweeps_after_the_grace_period(store):
    pod = store.create(manifest()).to_run()
    pod.release()
    report = store.gc(grace_period=3600)
    assert report.marked == [pod.uuid] and report.kept == [pod.uuid] and report.removed == []
    marked = store.get(pod.uuid)
    assert marked.state == EXITED_GARBAGE and marked.exited is not None
    assert marked.manifest().apps[0].name == "app"  # status stays readable in the grace period
    assert store.gc(grace_period=3600).removed == []
    report = store.gc(grace_period=3600, now=time.time() + 3601)
    assert report.removed == [pod.uuid]
    with pytest.raises(NotFound):
        store.get(pod.uuid)
    assert os.listdir(store.root / "deleting") == []


def test_gc_mark_only_and_expired_prepared(store):
    prepared = store.create(manifest()).to_prepared()
    report = store.gc(mark_only=True, grace_period=0)
    assert report.marked == [] and report.removed == []
    report = store.gc(mark_only=True, expire_prepared=60, now=time.time() + 61)
    assert report.marked == [prepared.uuid] and report.removed == []
    assert store.get(prepared.uuid).state == GARBAGE
    assert store.gc().removed == [prepared.uuid]  # garbage (never ran) needs no grace


def test_gc_collects_a_crashed_embryo(store):
    store.init()
    uuid = st.new_uuid()
    os.mkdir(store.root / "embryo" / f".new-{uuid}")  # `run` died between mkdir and lock
    assert store.gc().marked == []  # too young: it may be a `run` in progress
    report = store.gc(now=time.time() + 3600)
    assert report.marked == [uuid] and report.removed == [uuid]
    assert os.listdir(store.root / "embryo") == []


def test_sweep_calls_the_hook_first_and_retries_when_it_fails(store):
    pod = store.create(manifest()).to_run()
    pod.release()
    seen = []

    def failing(p):
        seen.append((p.uuid, p.state, p.manifest().apps[0].name, (p.path / "pod-created").exists()))
        raise RuntimeError("cannot tear down the network")

    report = store.gc(grace_period=0, hook=failing)
    assert seen == [(pod.uuid, DELETING, "app", True)]
    assert report.errors == [(pod.uuid, "gc hook: cannot tear down the network")]
    assert store.get(pod.uuid).state == EXITED_GARBAGE  # kept for the next gc
    report = store.gc(grace_period=0, hook=lambda p: seen.append(p.uuid))
    assert report.removed == [pod.uuid] and seen[-1] == pod.uuid


def _sweep_and_die(data_dir):
    def hook(pod):
        os._exit(9)  # pypod killed in the middle of the stage1's gc

    PodStore(data_dir, events=False).gc_sweep(grace_period=0, hook=hook)


def test_sweep_resumes_after_a_crash_in_the_hook(store):
    pod = store.create(manifest()).to_run()
    pod.release()
    store.gc_mark()
    proc = FORK.Process(target=_sweep_and_die, args=(store.data_dir,))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 9
    assert store.get(pod.uuid).state == EXITED_GARBAGE  # the dead sweeper's lock is gone
    hooked = []
    assert store.gc(grace_period=0, hook=lambda p: hooked.append(p.uuid)).removed == [pod.uuid]
    assert hooked == [pod.uuid]


def test_sweep_resumes_an_interrupted_deletion(store):
    pod = store.create(manifest()).to_run()
    pod.status().update_app("app", state=APP_EXITED, exit_code=0)
    (pod.path / "rootfs" / "usr" / "bin").mkdir(parents=True)
    (pod.path / "rootfs" / "usr" / "bin" / "tool").write_text("x")
    pod.release()
    store.gc_mark()
    # a crash after the hook and the rename, in the middle of the recursive delete:
    os.rename(store.root / "exited-garbage" / pod.uuid, store.root / "deleting" / pod.uuid)
    os.unlink(store.root / "deleting" / pod.uuid / "manifest.json")
    assert store.get(pod.uuid).state == DELETING
    hooked = []
    report = store.gc_sweep(grace_period=3600, hook=lambda p: hooked.append(p))
    assert report.removed == [pod.uuid] and hooked == []  # the hook already ran before the rename
    assert os.listdir(store.root / "deleting") == []
    types = [e["type"] for e in events.read(store.data_dir, filters={"pod": pod.uuid})]
    assert types == ["pod.started", "pod.exited", "pod.garbage-collected"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_sweep_never_deletes_through_a_mount(store):
    pod = store.create(manifest()).to_run()
    rootfs = pod.path / "rootfs"
    rootfs.mkdir()
    pod.release()
    store.gc_mark()
    target = store.root / "exited-garbage" / pod.uuid / "rootfs"
    if subprocess.run(["mount", "-t", "tmpfs", "pypod-test", str(target)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    mounted = store.root / "deleting" / pod.uuid / "rootfs"
    try:
        (target / "precious").write_text("host data")
        report = store.gc(grace_period=0)  # a hook that "forgot" to unmount
        assert report.removed == []
        assert report.errors and "still mounted" in report.errors[0][1]
        assert (mounted / "precious").read_text() == "host data"
    finally:
        subprocess.run(["umount", str(mounted)], check=False)
        subprocess.run(["umount", str(target)], check=False, capture_output=True)
    assert store.gc(grace_period=0).removed == [pod.uuid]


def test_rm_removes_one_pod_now(store, children):
    exited = store.create(manifest()).to_run()
    exited.release()
    prepared = store.create(manifest()).to_prepared()
    running = store.create(manifest()).to_run()
    hold_in_child(running, children)
    hooked = []
    store.rm(exited.uuid, hook=lambda p: hooked.append(p.uuid))
    store.rm(prepared.uuid[:13])
    assert hooked == [exited.uuid]
    with pytest.raises(Conflict, match="is running \\(stop it first\\)"):
        store.rm(running.uuid)
    assert [p.uuid for p in store.list()] == [running.uuid]
    with pytest.raises(NotFound):
        store.rm(exited.uuid)
    failing = store.create(manifest()).to_run()
    failing.release()

    def boom(p):
        raise OSError("umount: busy")

    with pytest.raises(Conflict, match="gc hook: umount: busy"):
        store.rm(failing.uuid, hook=boom)
    assert store.get(failing.uuid).state == EXITED_GARBAGE


def test_rm_waits_out_a_reader_probe(store):
    pod = store.create(manifest()).to_run()
    pod.release()
    reader = os.open(pod.path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(reader, fcntl.LOCK_SH)  # a `list` looking at the pod right then
    timer = threading.Timer(0.2, os.close, args=(reader,))
    timer.start()
    try:
        store.rm(pod.uuid)
    finally:
        timer.join()
    assert store.list() == []


def test_exit_is_recorded_once(store):
    pod = store.create(manifest()).to_run()
    view = store.get(pod.uuid)
    assert view.record_exited(exitCode=3) is True
    assert view.record_exited() is False
    pod.release()
    store.gc_mark()
    exits = list(events.read(store.data_dir, filters={"type": "pod.exited"}))
    assert [(e["pod"], e.get("exitCode")) for e in exits] == [(pod.uuid, 3)]


# -- mutation lock and status area -----------------------------------------------------------------


def _add_apps(data_dir, uuid, tag, n):
    pod = PodStore(data_dir, events=False).get(uuid)
    for i in range(n):
        pod.update_manifest(lambda m: m.apps.append(App(name=f"{tag}-{i}", image="busybox")))


def test_concurrent_manifest_updates_lose_nothing(store):
    locked = store.create(PodManifest(apps=[], mutable=True)).to_run()
    writers, each = 6, 8
    procs = [FORK.Process(target=_add_apps, args=(store.data_dir, locked.uuid, f"w{k}", each)) for k in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    names = {a.name for a in store.get(locked.uuid).manifest(validate=True).apps}
    assert names == {f"w{k}-{i}" for k in range(writers) for i in range(each)}
    leftovers = [n for n in os.listdir(locked.path) if n.endswith(".tmp")]
    assert leftovers == []
    locked.release()


def _bump_restarts(pod_dir, n):
    from pypod.pods.status import StatusArea

    area = StatusArea(pod_dir)
    for _ in range(n):
        area.modify_app("web", lambda s: setattr(s, "restarts", s.restarts + 1))


def test_status_area(store):
    pod = store.create(manifest("web", "db")).to_run()
    area = pod.status()
    assert area.apps() == {} and area.app("web") is None and area.pod() == {}
    t = time.time_ns()
    area.update_app("web", state=APP_RUNNING, created_at=t, started_at=t, pid=1234)
    area.update_app("db", state=APP_EXITED, started_at=t, exited_at=t + 1, exit_code=137, signal=9, oom_killed=True)
    area.update_pod(infraPid=42)
    assert area.app("db").exit_code == 137 and area.app("db").oom_killed
    assert set(area.apps()) == {"web", "db"} and area.pod() == {"infraPid": 42}
    raw = json.loads((pod.path / "status" / "db.json").read_text())
    assert raw["exitCode"] == 137 and raw["oomKilled"] is True and raw["exitedAt"] == t + 1
    procs = [FORK.Process(target=_bump_restarts, args=(str(pod.path), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert area.app("web").restarts == 100
    with pytest.raises(TypeError, match="no field 'bogus'"):
        area.update_app("web", bogus=1)
    with pytest.raises(UsageError, match="invalid app name"):
        area.app("../etc")
    pod.release()
    # the pod died under a running app: its state is unknown (rkt's word), the record stays
    assert area.app("web").effective_state(store.get(pod.uuid).is_running) == APP_UNKNOWN
    old_path = pod.path
    store.gc_mark()  # the pod moves; a writer holding the old path follows it
    area.update_app("web", state=APP_EXITED, exit_code=1)
    assert not old_path.exists()  # and does not recreate the pod at its old place
    moved = store.get(pod.uuid)
    assert moved.state == EXITED_GARBAGE and moved.status().app("web").exit_code == 1
    assert area.pod_dir == str(moved.path)
    area.remove_app("db")
    assert set(area.apps()) == {"web"}
