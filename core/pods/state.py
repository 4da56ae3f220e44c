"""rkt's on-disk pod state machine, under ``<data_dir>/pods/``.

A pod is the directory ``<state dir>/<uuid>``; its state is the directory it sits in plus
whether an flock(2) on the pod directory is held:

    ==================  =======================  =========================
    directory           lock held                lock free
    ==================  =======================  =========================
    embryo/             embryo (being created)   embryo (crashed: gc)
    prepare/            preparing                prepare-failed
    prepared/           prepared                 prepared
    run/                running                  exited
    exited-garbage/     deleting (gc sweeping)   exited-garbage
    garbage/            deleting (gc sweeping)   garbage
    deleting/           deleting                 deleting (interrupted: gc resumes)
    ==================  =======================  =========================

Moves are rename(2)s, made only by a process that holds the pod's lock (exclusively), so two
racing commands cannot both move a pod: the loser's rename fails with ENOENT. The kernel drops
the lock when its last holder dies, so "running" can never outlive the pod's holder.

**Which lock.** The lock is on the pod *directory* itself (an ``O_DIRECTORY`` fd), as rkt's:
the lock and the pod's identity are one inode, it follows the pod through every rename, and the
locked fd doubles as a ``dir_fd`` for writing into the pod wherever it has moved. A lock file
inside would work too but is one more name to create, to race on and to keep in step. The
per-pod *mutation* lock (``pod.lck``, serializing app add/rm and manifest rewrites) is a
separate file so that it never interferes with liveness.

**Passing the lock on.** ``run`` takes the lock at creation and keeps it through
``prepare/`` to ``run/``. A detached pod has no resident pypod process, so the stage1 hands the
locked fd to the process that lives as long as the pod (the infra process): spawn it with
``pass_fds=(locked.fd,)`` (or ``locked.inheritable()``), then ``locked.handoff()`` to close
pypod's copy. flock locks belong to the open file description, so every process that inherited
it holds the pod "running" until the last copy is closed; nobody may ``LOCK_UN`` it.

Timestamps are the mtimes of marker files in the pod dir: ``pod-created`` (embryo),
``pod-started`` (the move to ``run/``), ``pod-exited`` (whoever first records the exit: the
stage1's exit path, else gc's mark). gc's grace period runs from the ctime of the pod dir, which
the mark's rename sets (as in rkt).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .. import access
from ..errors import Conflict, NotFound, UsageError
from .fsutil import create_marker, marker_time, open_dir, read_file, write_atomic

if TYPE_CHECKING:
    from .manifest import PodManifest
    from .status import StatusArea

# state directories, in the only order pods move through them
EMBRYO_DIR, PREPARE_DIR, PREPARED_DIR, RUN_DIR = "embryo", "prepare", "prepared", "run"
EXITED_GARBAGE_DIR, GARBAGE_DIR, DELETING_DIR = "exited-garbage", "garbage", "deleting"
DIRS = (EMBRYO_DIR, PREPARE_DIR, PREPARED_DIR, RUN_DIR, EXITED_GARBAGE_DIR, GARBAGE_DIR, DELETING_DIR)

# states
EMBRYO, PREPARING, PREPARE_FAILED, PREPARED = "embryo", "preparing", "prepare-failed", "prepared"
RUNNING, EXITED, EXITED_GARBAGE, GARBAGE, DELETING = "running", "exited", "exited-garbage", "garbage", "deleting"

# files in a pod directory
MANIFEST = "manifest.json"
MUTATION_LOCK = "pod.lck"
CREATED_MARK, STARTED_MARK, EXITED_MARK = "pod-created", "pod-started", "pod-exited"

LOCK_FD_ENV = "PYPOD_LOCK_FD"  # rkt's RKT_LOCK_FD: tells a child which fd is the pod lock

DEFAULT_GRACE_PERIOD = 30 * 60.0
DEFAULT_EXPIRE_PREPARED = 24 * 3600.0
_STALE_EMBRYO = 600.0  # an unlocked, half-made embryo older than this is a crashed `run`

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PREFIX_RE = re.compile(r"[0-9a-f-]{1,36}")

# (dir, lock held) -> state
_STATES = {
    (EMBRYO_DIR, True): EMBRYO, (EMBRYO_DIR, False): EMBRYO,
    (PREPARE_DIR, True): PREPARING, (PREPARE_DIR, False): PREPARE_FAILED,
    (PREPARED_DIR, True): PREPARED, (PREPARED_DIR, False): PREPARED,
    (RUN_DIR, True): RUNNING, (RUN_DIR, False): EXITED,
    (EXITED_GARBAGE_DIR, True): DELETING, (EXITED_GARBAGE_DIR, False): EXITED_GARBAGE,
    (GARBAGE_DIR, True): DELETING, (GARBAGE_DIR, False): GARBAGE,
    (DELETING_DIR, True): DELETING, (DELETING_DIR, False): DELETING,
}
_PROBED = (PREPARE_DIR, RUN_DIR, EXITED_GARBAGE_DIR, GARBAGE_DIR)


def new_uuid() -> str:
    """A random (version 4) UUID, without importing :mod:`uuid`."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_uuid(text: str) -> bool:
    return bool(_UUID_RE.fullmatch(text))


def _try_lock(fd: int, *, shared: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _lock_soon(fd: int, timeout: float) -> bool:
    """An exclusive lock within ``timeout`` s (polling: a blocking flock cannot time out)."""
    deadline = time.monotonic() + timeout
    while not _try_lock(fd, shared=False):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def is_locked(path: str) -> bool | None:
    """Whether someone holds the pod lock at ``path`` exclusively (None: the dir is gone).

    Takes and drops a *shared* lock, as rkt: readers never block each other."""
    fd = open_dir(path)
    if fd is None:
        return None
    try:
        return not _try_lock(fd, shared=True)
    finally:
        os.close(fd)


def _rename(src: str, dst: str) -> bool:
    """rename(2); False if ``src`` is gone (another command moved it first)."""
    try:
        os.rename(src, dst)
        return True
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(dst)):
            raise
        return False


# -- the pod --------------------------------------------------------------------------------


class Pod:
    """A pod as last seen on disk: ``uuid``, ``dir`` (its state directory), ``state``."""

    __slots__ = ("store", "uuid", "dir", "state")

    def __init__(self, store: "PodStore", uuid: str, dirname: str, state: str):
        self.store, self.uuid, self.dir, self.state = store, uuid, dirname, state

    def __repr__(self) -> str:
        return f"<Pod {self.uuid} {self.state}>"

    # -- paths ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.store.root / self.dir / self.uuid

    @property
    def _p(self) -> str:
        return os.path.join(self.store._root, self.dir, self.uuid)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def mutation_lock_path(self) -> Path:
        return self.path / MUTATION_LOCK

    @property
    def is_running(self) -> bool:
        return self.state == RUNNING

    # -- times (seconds since the epoch, None when unknown) --------------------------------
    @property
    def created(self) -> float | None:
        return marker_time(os.path.join(self._p, CREATED_MARK))

    @property
    def started(self) -> float | None:
        return marker_time(os.path.join(self._p, STARTED_MARK))

    @property
    def exited(self) -> float | None:
        return marker_time(os.path.join(self._p, EXITED_MARK))

    def refresh(self) -> "Pod":
        """The same pod as it is now (NotFound if it was deleted)."""
        pod = self.store.find(self.uuid)
        if pod is None:
            raise NotFound(f"pod {self.uuid} not found (garbage-collected?)")
        return pod

    def _relocated(self) -> str | None:
        pod = self.store.find(self.uuid)
        if pod is None:
            return None
        self.dir, self.state = pod.dir, pod.state
        return self._p

    def _read(self, name: str) -> bytes:
        """A file of the pod, following the pod if it moves meanwhile."""
        for attempt in range(3):
            try:
                return read_file(os.path.join(self._p, name))
            except FileNotFoundError:
                if attempt == 2 or self._relocated() is None:
                    raise
        raise AssertionError("unreachable")

    # -- manifest ---------------------------------------------------------------------------
    def manifest_bytes(self) -> bytes:
        try:
            return self._read(MANIFEST)
        except FileNotFoundError:
            raise NotFound(f"pod {self.uuid} has no manifest (state {self.state})") from None

    def manifest(self, *, validate: bool = False) -> "PodManifest":
        from .manifest import PodManifest

        return PodManifest.from_json(self.manifest_bytes(), validate=validate)

    @contextmanager
    def mutation_lock(self) -> Iterator[int]:
        """Hold ``pod.lck`` exclusively: app add/rm and manifest rewrites serialize on it. Yields
        an fd on the pod directory, valid wherever the pod moves meanwhile."""
        dfd = None
        for _ in range(3):
            dfd = open_dir(self._p)
            if dfd is not None or self._relocated() is None:
                break
        if dfd is None:
            raise NotFound(f"pod {self.uuid} not found")
        try:
            lfd = os.open(MUTATION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            try:
                fcntl.flock(lfd, fcntl.LOCK_EX)
                yield dfd
            finally:
                os.close(lfd)
        finally:
            os.close(dfd)

    def update_manifest(self, fn: Callable[["PodManifest"], "PodManifest | None"]) -> "PodManifest":
        """Under the mutation lock: read the manifest, let ``fn`` change it (in place or by
        returning a new one), validate it and replace the file atomically."""
        from .manifest import PodManifest

        with self.mutation_lock() as dfd:
            m = PodManifest.from_json(read_file(MANIFEST, dir_fd=dfd), validate=False)
            m = fn(m) or m
            m.validate()
            write_atomic(MANIFEST, m.to_json().encode(), dir_fd=dfd, mode=0o640, dir_group=True)
            return m

    # -- status -----------------------------------------------------------------------------
    def status(self) -> "StatusArea":
        from .status import StatusArea

        return StatusArea(self._p, relocate=self._relocated)

    def record_exited(self, *, when_ns: int | None = None, **attrs: Any) -> bool:
        """Record that the pod exited (``pod-exited`` marker, ``pod.exited`` event) unless someone
        already did: the stage1's exit path and gc's mark both call this, one of them wins.
        True if this call recorded it."""
        p = self._relocated() or self._p
        try:
            created = create_marker(os.path.join(p, EXITED_MARK), mtime_ns=when_ns)
        except FileNotFoundError:
            return False
        if created:
            self.store._emit("pod.exited", pod=self.uuid, **attrs)
        return created

    def to_dict(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "state": self.state, "created": self.created,
                "started": self.started, "exited": self.exited, "path": str(self.path)}


class LockedPod(Pod):
    """A pod whose lock this process holds (``fd``): only its holder moves it."""

    __slots__ = ("fd",)

    def __init__(self, store: "PodStore", uuid: str, dirname: str, state: str, fd: int):
        super().__init__(store, uuid, dirname, state)
        self.fd: int = fd

    def __enter__(self) -> "LockedPod":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a dropped LockedPod must not keep the pod locked
        fd = getattr(self, "fd", -1)
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _need(self, dirname: str, what: str) -> None:
        if self.fd < 0:
            raise Conflict(f"pod {self.uuid}: lock already released")
        if self.dir != dirname:
            raise Conflict(f"pod {self.uuid} is {self.state}: cannot {what}")

    def _move(self, dirname: str, state: str) -> None:
        src = self._p
        os.rename(src, os.path.join(self.store._root, dirname, self.uuid))
        self.dir, self.state = dirname, state

    # -- transitions ------------------------------------------------------------------------
    def to_prepare(self) -> "LockedPod":
        """embryo/ -> prepare/ (keeps the lock)."""
        self._need(EMBRYO_DIR, "start preparing")
        self._move(PREPARE_DIR, PREPARING)
        return self

    def to_prepared(self) -> Pod:
        """prepare/ -> prepared/, and release the lock: ``run-prepared`` takes it from here."""
        self._need(PREPARE_DIR, "finish preparing")
        self._move(PREPARED_DIR, PREPARED)
        self.release()
        self.store._emit("pod.prepared", pod=self.uuid)
        return Pod(self.store, self.uuid, PREPARED_DIR, PREPARED)

    def to_run(self) -> "LockedPod":
        """prepare/ -> run/, keeping the lock: the pod is running while it is held."""
        self._need(PREPARE_DIR, "run")
        self._move(RUN_DIR, RUNNING)
        self._started()
        return self

    def abort(self) -> Pod:
        """A failed prepare: prepare/ (or embryo/) -> garbage/, and release the lock."""
        if self.dir not in (EMBRYO_DIR, PREPARE_DIR):
            raise Conflict(f"pod {self.uuid} is {self.state}: cannot abort")
        self._move(GARBAGE_DIR, GARBAGE)
        self.release()
        return Pod(self.store, self.uuid, GARBAGE_DIR, GARBAGE)

    def _started(self) -> None:
        create_marker(STARTED_MARK, dir_fd=self.fd)
        self.store._emit("pod.started", pod=self.uuid)

    # -- writes through the locked fd -------------------------------------------------------
    def write_manifest(self, manifest: "PodManifest | bytes") -> None:
        """Write the manifest atomically (under ``pod.lck``, so app add/rm never interleave)."""
        data = manifest if isinstance(manifest, bytes) else manifest.validate().to_json().encode()
        lfd = os.open(MUTATION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
        try:
            fcntl.flock(lfd, fcntl.LOCK_EX)
            write_atomic(MANIFEST, data, dir_fd=self.fd, mode=0o640, dir_group=True)
        finally:
            os.close(lfd)

    # -- handing the lock to the pod's lifetime process --------------------------------------
    def inheritable(self, flag: bool = True) -> int:
        """Make the lock fd survive exec (for os.fork/exec or Popen(close_fds=False)); returns it.
        ``subprocess.Popen(..., pass_fds=(pod.fd,))`` needs no call to this."""
        os.set_inheritable(self.fd, flag)
        return self.fd

    def child_env(self) -> dict[str, str]:
        """``{PYPOD_LOCK_FD: fd}`` for the child that will hold the lock."""
        return {LOCK_FD_ENV: str(self.fd)}

    def handoff(self) -> None:
        """Close this process's copy of the lock once a child holds it (the child keeps the pod
        running). The lock itself is not released while any inherited copy is open."""
        self.release()

    def release(self) -> None:
        """Close our fd. Never flock(LOCK_UN): a child may share the lock and must keep it."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


# -- the store ------------------------------------------------------------------------------


@dataclass
class GcReport:
    marked: list[str] = field(default_factory=list)  # moved to exited-garbage/ or garbage/
    removed: list[str] = field(default_factory=list)  # deleted
    kept: list[str] = field(default_factory=list)  # in their grace period
    busy: list[str] = field(default_factory=list)  # locked by someone else this time
    errors: list[tuple[str, str]] = field(default_factory=list)  # (uuid, why): retried next gc


Hook = Callable[[Pod], None]


class PodStore:
    """The pods of one data dir. Cheap to make; creates nothing until a pod is created."""

    def __init__(self, data_dir: str | os.PathLike, *, events: bool = True):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "pods"
        self._root = str(self.root)
        self._events = events
        self._ready = False

    def init(self) -> None:
        if not self._ready:
            for d in DIRS:
                os.makedirs(os.path.join(self._root, d), mode=0o750, exist_ok=True)
            gid = access.shared_gid(self.data_dir)
            if gid is not None:  # the data dir's group reads pods (pypod setup)
                for d in ("", *DIRS):
                    access.share(os.path.join(self._root, d), gid, access.DIR_MODE)
            self._ready = True

    def _emit(self, type_: str, **attrs: Any) -> None:
        if self._events:
            from .. import events

            events.emit(self.data_dir, type_, **attrs)

    def _path(self, dirname: str, uuid: str) -> str:
        return os.path.join(self._root, dirname, uuid)

    # -- creation -----------------------------------------------------------------------------
    def create_embryo(self, uuid: str | None = None) -> LockedPod:
        """A new pod in embryo/, locked by this process. The directory is made and locked under
        a hidden name first, so no one ever sees an embryo that is not locked yet."""
        self.init()
        if uuid is None:
            uuid = new_uuid()
        elif not is_uuid(uuid):
            raise UsageError(f"invalid pod UUID {uuid!r}")
        elif self.find(uuid) is not None:
            raise Conflict(f"pod {uuid} already exists")
        tmp = self._path(EMBRYO_DIR, f".new-{uuid}")
        os.mkdir(tmp, 0o750)
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            gid = access.shared_gid(self.data_dir)
            if gid is not None:
                os.fchown(fd, -1, gid)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            create_marker(CREATED_MARK, dir_fd=fd)
            os.close(os.open(MUTATION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=fd))
            os.mkdir("status", 0o755, dir_fd=fd)
            try:
                os.rename(tmp, self._path(EMBRYO_DIR, uuid))
            except OSError as e:  # ENOTEMPTY/EEXIST: the UUID was taken meanwhile
                raise Conflict(f"pod {uuid} already exists ({e.strerror})") from None
        except BaseException:
            os.close(fd)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return LockedPod(self, uuid, EMBRYO_DIR, EMBRYO, fd)

    def create(self, manifest: "PodManifest | bytes | None" = None, *, uuid: str | None = None) -> LockedPod:
        """``run``'s and ``prepare``'s first step: an embryo, its manifest, then prepare/ (state
        preparing, locked by the returned LockedPod)."""
        pod = self.create_embryo(uuid)
        try:
            if manifest is not None:
                pod.write_manifest(manifest)
            return pod.to_prepare()
        except BaseException:
            pod.abort()
            raise

    def run_prepared(self, ref: str) -> LockedPod:
        """prepared/ -> run/ for ``run-prepared``: lock, then rename. Of racing callers exactly
        one gets the pod; the others get Conflict."""
        pod = self.get(ref)
        if pod.dir != PREPARED_DIR:
            raise Conflict(f"pod {pod.uuid} is {pod.state}, not prepared")
        src = pod._p
        fd = open_dir(src)
        if fd is None:
            raise Conflict(f"pod {pod.uuid} is no longer prepared (another command took it)")
        try:
            if not _try_lock(fd, shared=False) or not _rename(src, self._path(RUN_DIR, pod.uuid)):
                raise Conflict(f"pod {pod.uuid} is no longer prepared (another command took it)")
        except BaseException:
            os.close(fd)
            raise
        locked = LockedPod(self, pod.uuid, RUN_DIR, RUNNING, fd)
        locked._started()
        return locked

    # -- lookup -------------------------------------------------------------------------------
    def state_of(self, dirname: str, uuid: str) -> str | None:
        """The state of the pod at ``dirname/uuid`` (None if it is not there)."""
        if dirname in _PROBED:
            held = is_locked(self._path(dirname, uuid))
            return None if held is None else _STATES[(dirname, held)]
        if not os.path.isdir(self._path(dirname, uuid)):
            return None
        return _STATES[(dirname, False)]

    def find(self, uuid: str) -> Pod | None:
        """The pod with this exact UUID, None if there is none. Pods only move forward through
        DIRS, and they are searched in that order, so a pod moving meanwhile is still found."""
        for d in DIRS:
            state = self.state_of(d, uuid)
            if state is not None:
                return Pod(self, uuid, d, state)
        return None

    def _names(self, dirname: str) -> list[str]:
        try:
            return [n for n in os.listdir(os.path.join(self._root, dirname)) if not n.startswith(".")]
        except FileNotFoundError:
            return []

    def get(self, ref: str) -> Pod:
        """A pod by full UUID or unique prefix. NotFound if none; UsageError naming the
        candidates if the prefix is ambiguous."""
        ref = ref.strip().lower()
        if not ref or not _PREFIX_RE.fullmatch(ref):
            raise UsageError(f"invalid pod UUID {ref!r}")
        if is_uuid(ref):
            pod = self.find(ref)
            if pod is None:
                raise NotFound(f"pod {ref} not found")
            return pod
        matches = sorted({n for d in DIRS for n in self._names(d) if n.startswith(ref)})
        if not matches:
            raise NotFound(f"no pod with UUID prefix {ref!r}")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise UsageError(f"pod UUID prefix {ref!r} is ambiguous: {len(matches)} pods match ({shown})")
        pod = self.find(matches[0])
        if pod is None:
            raise NotFound(f"pod {matches[0]} not found (removed meanwhile)")
        return pod

    def list(self) -> list[Pod]:
        """Every pod, with its state (one listdir per state dir, one lock probe per pod that
        needs one). A pod moving meanwhile is reported once, in its later state."""
        seen: dict[str, Pod] = {}
        for d in DIRS:
            for uuid in self._names(d):
                state = self.state_of(d, uuid) if d in _PROBED else _STATES[(d, False)]
                if state is not None:
                    seen[uuid] = Pod(self, uuid, d, state)
        return list(seen.values())

    def exists(self, uuid: str) -> bool:
        """For ImageStore.gc(is_holder_alive=...): a pod still holds its images until deleted."""
        return self.find(uuid) is not None

    # -- waiting ------------------------------------------------------------------------------
    def wait_exit(self, ref: str | Pod, timeout: float | None = None, *, poll: float = 0.1) -> Pod:
        """Block until the pod has exited (rkt's ``status --wait``): a blocking shared lock on
        run/<uuid> is granted when the holder's last copy is closed. A pod not yet running is
        polled until it runs. Returns the pod's new state; TimeoutError after ``timeout`` s."""
        uuid = ref.uuid if isinstance(ref, Pod) else self.get(ref).uuid
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pod = self.find(uuid)
            if pod is None:
                raise NotFound(f"pod {uuid} not found (garbage-collected)")
            if pod.dir == RUN_DIR:
                fd = open_dir(pod._p)
                if fd is not None:
                    try:
                        if deadline is None:
                            fcntl.flock(fd, fcntl.LOCK_SH)
                        else:
                            while not _try_lock(fd, shared=True):
                                left = deadline - time.monotonic()
                                if left <= 0:
                                    raise TimeoutError(f"pod {uuid} still running after {timeout}s")
                                time.sleep(min(poll, left))
                    finally:
                        os.close(fd)
                    return self.find(uuid) or pod
            elif pod.state not in (EMBRYO, PREPARING, PREPARED):
                return pod
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"pod {uuid} still {pod.state} after {timeout}s")
            time.sleep(poll)

    # -- garbage collection -------------------------------------------------------------------
    def gc_mark(self, *, expire_prepared: float = DEFAULT_EXPIRE_PREPARED, now: float | None = None,
                report: GcReport | None = None) -> GcReport:
        """Mark: exited pods (run/, unlocked) -> exited-garbage/; failed prepares and crashed
        embryos -> garbage/; prepared pods older than ``expire_prepared`` s -> garbage/."""
        self.init()
        now = time.time() if now is None else now
        report = report or GcReport()
        for uuid in self._names(RUN_DIR):
            if self._mark(RUN_DIR, uuid, EXITED_GARBAGE_DIR, report, exited=True):
                report.marked.append(uuid)
        for uuid in self._names(PREPARE_DIR):
            if self._mark(PREPARE_DIR, uuid, GARBAGE_DIR, report):
                report.marked.append(uuid)
        for name in os.listdir(os.path.join(self._root, EMBRYO_DIR)):
            if name.startswith(".new-"):  # crashed before it was named: old and unlocked
                try:
                    old = now - os.stat(self._path(EMBRYO_DIR, name)).st_ctime > _STALE_EMBRYO
                except FileNotFoundError:
                    continue
                if old and self._mark(EMBRYO_DIR, name, GARBAGE_DIR, report, dst_name=name[5:]):
                    report.marked.append(name[5:])
            elif not name.startswith(".") and self._mark(EMBRYO_DIR, name, GARBAGE_DIR, report):
                report.marked.append(name)
        for uuid in self._names(PREPARED_DIR):
            try:
                age = now - os.stat(self._path(PREPARED_DIR, uuid)).st_ctime
            except FileNotFoundError:
                continue
            if age > expire_prepared and self._mark(PREPARED_DIR, uuid, GARBAGE_DIR, report):
                report.marked.append(uuid)
        return report

    def _mark(self, src_dir: str, name: str, dst_dir: str, report: GcReport, *, exited: bool = False,
              dst_name: str | None = None) -> bool:
        src = self._path(src_dir, name)
        fd = open_dir(src)
        if fd is None:
            return False
        try:
            if not _try_lock(fd, shared=False):
                return False  # running, preparing, or another gc has it
            if exited:
                uuid = dst_name or name
                if create_marker(EXITED_MARK, dir_fd=fd):
                    self._emit("pod.exited", pod=uuid)
            return _rename(src, self._path(dst_dir, dst_name or name))
        finally:
            os.close(fd)

    def gc_sweep(self, *, grace_period: float = DEFAULT_GRACE_PERIOD, hook: Hook | None = None,
                 now: float | None = None, report: GcReport | None = None) -> GcReport:
        """Sweep: finish interrupted deletions, then delete exited-garbage/ pods marked more than
        ``grace_period`` s ago (dir ctime) and every garbage/ pod. ``hook(pod)`` (the stage1's gc:
        mounts, network, cgroups) runs first, with the pod locked; if it raises, the pod stays
        for the next gc. Idempotent; resumable after a crash at any step."""
        self.init()
        now = time.time() if now is None else now
        report = report or GcReport()
        for uuid in self._names(DELETING_DIR):
            self._remove(uuid, report)
        for uuid in self._names(EXITED_GARBAGE_DIR):
            try:
                ctime = os.stat(self._path(EXITED_GARBAGE_DIR, uuid)).st_ctime
            except FileNotFoundError:
                continue
            if now - ctime < grace_period:
                report.kept.append(uuid)
                continue
            self._destroy(EXITED_GARBAGE_DIR, uuid, hook, report)
        for uuid in self._names(GARBAGE_DIR):
            self._destroy(GARBAGE_DIR, uuid, hook, report)
        return report

    def gc(self, *, grace_period: float = DEFAULT_GRACE_PERIOD,
           expire_prepared: float = DEFAULT_EXPIRE_PREPARED, hook: Hook | None = None,
           mark_only: bool = False, now: float | None = None) -> GcReport:
        """rkt's ``gc``: mark, then (unless ``mark_only``) sweep."""
        report = self.gc_mark(expire_prepared=expire_prepared, now=now)
        if not mark_only:
            self.gc_sweep(grace_period=grace_period, hook=hook, now=now, report=report)
        return report

    def _destroy(self, dirname: str, uuid: str, hook: Hook | None, report: GcReport,
                 fd: int | None = None) -> None:
        """Lock (unless ``fd`` holds it already), run the hook, rename to deleting/, delete."""
        path = self._path(dirname, uuid)
        own = fd is None
        if own:
            fd = open_dir(path)
            if fd is None:
                return
            if not _try_lock(fd, shared=False):
                os.close(fd)
                report.busy.append(uuid)
                return
        assert fd is not None
        try:
            if hook is not None:
                try:
                    hook(Pod(self, uuid, dirname, DELETING))
                except Exception as e:  # the stage1 failed: keep the pod, retry next gc
                    report.errors.append((uuid, f"gc hook: {e}"))
                    return
            if not _rename(path, self._path(DELETING_DIR, uuid)):
                return
            self._remove(uuid, report, fd=fd)
        finally:
            if own:
                os.close(fd)

    def _remove(self, uuid: str, report: GcReport, fd: int | None = None) -> None:
        """Delete deleting/<uuid> (locked by ``fd`` if given), refusing while anything is
        mounted below it."""
        path = self._path(DELETING_DIR, uuid)
        own = fd is None
        if own:
            fd = open_dir(path)
            if fd is None:
                return
            if not _try_lock(fd, shared=False):
                os.close(fd)
                report.busy.append(uuid)
                return
        assert fd is not None
        try:
            if os.fstat(fd).st_nlink == 0:  # another sweeper finished it while we opened it
                return
            mounted = _mounts_under(path)
            if mounted:
                report.errors.append((uuid, f"still mounted: {mounted[0]} (not deleting)"))
                return
            _rmtree(path)
        finally:
            if own:
                os.close(fd)
        report.removed.append(uuid)
        self._emit("pod.garbage-collected", pod=uuid)

    def rm(self, ref: str, *, hook: Hook | None = None) -> None:
        """rkt's ``rm``: delete one pod now (exited, prepared, failed or already marked), without
        a grace period. Conflict if it is running or being prepared."""
        pod = self.get(ref)
        if pod.state in (RUNNING, EMBRYO, PREPARING):
            raise Conflict(f"pod {pod.uuid} is {pod.state}" + (" (stop it first)" if pod.state == RUNNING else ""))
        if pod.state == DELETING and pod.dir != DELETING_DIR:
            raise Conflict(f"pod {pod.uuid} is being deleted by another command")
        report = GcReport()
        if pod.dir == DELETING_DIR:
            self._remove(pod.uuid, report)
        else:
            src = pod._p
            fd = open_dir(src)
            if fd is None:
                raise Conflict(f"pod {pod.uuid} changed state meanwhile (retry)")
            if not _lock_soon(fd, timeout=1.0):  # readers' probes hold it for microseconds
                os.close(fd)
                raise Conflict(f"pod {pod.uuid} is busy (another command holds it)")
            try:
                dst_dir = pod.dir
                if pod.dir == RUN_DIR:
                    dst_dir = EXITED_GARBAGE_DIR
                    if create_marker(EXITED_MARK, dir_fd=fd):
                        self._emit("pod.exited", pod=pod.uuid)
                elif pod.dir in (PREPARE_DIR, PREPARED_DIR):
                    dst_dir = GARBAGE_DIR
                if dst_dir != pod.dir and not _rename(src, self._path(dst_dir, pod.uuid)):
                    raise Conflict(f"pod {pod.uuid} changed state meanwhile (retry)")
                self._destroy(dst_dir, pod.uuid, hook, report, fd=fd)
            finally:
                os.close(fd)
        if report.errors:
            raise Conflict(f"pod {pod.uuid}: {report.errors[0][1]}")
        if report.busy:
            raise Conflict(f"pod {pod.uuid} is being deleted by another command")


# -- helpers --------------------------------------------------------------------------------


def _mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace."""
    real = os.path.realpath(path)
    prefix = real.rstrip("/") + "/"
    out = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                mp = line.split(b" ", 5)[4].decode("utf-8", "surrogateescape")
                mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp)
                if mp == real or mp.startswith(prefix):
                    out.append(mp)
    except FileNotFoundError:  # no /proc: nothing can be checked, nothing is known mounted
        pass
    return out


def _rmtree(path: str) -> None:
    """shutil.rmtree (fd-based, never follows symlinks), tolerating a concurrent remover."""
    import shutil
    import sys

    def ignore_gone(func, p, exc):  # a concurrent sweeper removed it first
        err = exc if isinstance(exc, BaseException) else exc[1]
        if not isinstance(err, FileNotFoundError):
            raise err

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=ignore_gone)
    else:
        shutil.rmtree(path, onerror=ignore_gone)


def read_uuid_file(path: str | os.PathLike) -> str:
    """The pod UUID in a ``--uuid-file`` (as written by ``--uuid-file-save``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(128).strip()
    except OSError as e:
        raise UsageError(f"--uuid-file {os.fspath(path)}: {e.strerror}") from None
    if not is_uuid(text.lower()):
        raise UsageError(f"--uuid-file {os.fspath(path)}: no pod UUID in it")
    return text.lower()


def write_uuid_file(path: str | os.PathLike, uuid: str) -> None:
    """``--uuid-file-save``: write the UUID atomically (a reader never sees an empty file)."""
    write_atomic(os.fspath(path), (uuid + "\n").encode(), mode=0o644, durable=False)
