"""The per-pod status area: ``<pod>/status/<app>.json`` and ``<pod>/status/pod.json``.

The stage1 fills it (conmon's exit hook, the infra, ``app start``...); ``status``, ``app
status``, the CRI shim and the Nomad driver read it. Each file is replaced atomically
(tmp + fsync + rename), so readers never lock and never see a torn file. Writers serialize their
read-modify-write on ``status/lock`` (held for microseconds, never across a call out, so it
cannot deadlock with ``pod.lck``). One file per app: two apps exiting together touch different
files.

Times are integers of nanoseconds since the epoch (``time.time_ns()``).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, fields
from typing import Any

from ..errors import UsageError
from .fsutil import read_file, write_atomic

STATUS_DIR = "status"
POD_FILE = "pod.json"
LOCK_FILE = "lock"

# App states, as rkt's ``app status`` and CRI's ContainerState.
APP_CREATED, APP_RUNNING, APP_EXITED, APP_UNKNOWN = "created", "running", "exited", "unknown"


@dataclass
class AppStatus:
    name: str
    state: str = APP_CREATED
    created_at: int | None = None
    started_at: int | None = None
    exited_at: int | None = None
    exit_code: int | None = None
    signal: int | None = None  # the signal that killed it, if one did
    oom_killed: bool = False
    restarts: int = 0
    pid: int | None = None  # of the app's init process, while it runs

    def to_dict(self) -> dict[str, Any]:
        return {_CAMEL[f]: getattr(self, f) for f in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AppStatus":
        return cls(**{f: d[_CAMEL[f]] for f in _FIELDS if _CAMEL[f] in d})

    def effective_state(self, pod_running: bool) -> str:
        """The state to report: an app recorded as running in a pod that no longer runs died
        without anyone recording it (the stage1 was killed): unknown, as rkt says."""
        if not pod_running and self.state in (APP_RUNNING, APP_CREATED) and self.started_at is not None:
            return APP_UNKNOWN
        return self.state


_FIELDS = [f.name for f in fields(AppStatus)]
_CAMEL = {f: f.split("_")[0] + "".join(p.title() for p in f.split("_")[1:]) for f in _FIELDS}


def _check_app_name(name: str) -> None:
    from .manifest import _NAME_RE

    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"invalid app name {name!r}")


class StatusArea:
    """The status files of the pod whose directory is ``pod_dir``.

    ``relocate`` (given by :class:`pypod.pods.state.Pod`) returns the pod's current directory
    after it moved (``run/`` to ``exited-garbage/``...), so a writer racing a state change retries
    at the new place instead of failing.
    """

    def __init__(self, pod_dir: str | os.PathLike, relocate=None):
        self.pod_dir = os.fspath(pod_dir)
        self._relocate = relocate

    @property
    def dir(self) -> str:
        return os.path.join(self.pod_dir, STATUS_DIR)

    def _retrying(self, op):
        for attempt in range(3):
            try:
                return op(self.dir)
            except FileNotFoundError:
                new = self._relocate() if self._relocate else None
                if attempt == 2 or new is None or os.fspath(new) == self.pod_dir:
                    raise
                self.pod_dir = os.fspath(new)
        raise AssertionError("unreachable")

    # -- reads ----------------------------------------------------------------------------
    def app(self, name: str) -> AppStatus | None:
        _check_app_name(name)
        try:
            return self._retrying(lambda d: AppStatus.from_dict(json.loads(read_file(os.path.join(d, name + ".json")))))
        except FileNotFoundError:
            return None

    def apps(self) -> dict[str, AppStatus]:
        """Every app's status, by name."""
        try:
            names = sorted(self._retrying(os.listdir))
        except FileNotFoundError:
            return {}
        out: dict[str, AppStatus] = {}
        for n in names:
            if n.endswith(".json") and not n.startswith(".") and n != POD_FILE:
                try:
                    out[n[:-5]] = AppStatus.from_dict(json.loads(read_file(os.path.join(self.dir, n))))
                except FileNotFoundError:
                    continue  # removed meanwhile (app rm)
        return out

    def pod(self) -> dict[str, Any]:
        """The pod-level record (the stage1's: infra pid, exit code...), {} if none."""
        try:
            return self._retrying(lambda d: json.loads(read_file(os.path.join(d, POD_FILE))))
        except FileNotFoundError:
            return {}

    # -- writes ---------------------------------------------------------------------------
    def _locked_update(self, fname: str, update) -> Any:
        def op(d: str) -> Any:
            try:  # never makedirs: a pod that moved must not be recreated at its old place
                os.mkdir(d, 0o755)
            except FileExistsError:
                pass
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                lfd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=dfd)
                try:
                    fcntl.flock(lfd, fcntl.LOCK_EX)
                    try:
                        old = json.loads(read_file(fname, dir_fd=dfd))
                    except FileNotFoundError:
                        old = None
                    new, result = update(old)
                    write_atomic(fname, (json.dumps(new, separators=(",", ":")) + "\n").encode(), dir_fd=dfd)
                    return result
                finally:
                    os.close(lfd)
            finally:
                os.close(dfd)

        return self._retrying(op)

    def update_app(self, name: str, **changes: Any) -> AppStatus:
        """Set fields of app ``name``'s status (created if absent); returns the new status.
        ``restarts=+1`` style increments are done by the caller reading then writing under
        :meth:`modify_app`."""
        return self.modify_app(name, lambda st: _apply(st, changes))

    def modify_app(self, name: str, fn) -> AppStatus:
        """Read-modify-write app ``name``'s status under the status lock: ``fn(AppStatus)``
        changes it in place."""
        _check_app_name(name)

        def update(old: dict | None):
            st = AppStatus.from_dict(old) if old else AppStatus(name=name)
            fn(st)
            st.name = name
            return st.to_dict(), st

        return self._locked_update(name + ".json", update)

    def remove_app(self, name: str) -> None:
        _check_app_name(name)
        try:
            self._retrying(lambda d: os.unlink(os.path.join(d, name + ".json")))
        except FileNotFoundError:
            pass

    def update_pod(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the pod-level record."""
        def update(old: dict | None):
            new = dict(old or {})
            new.update(changes)
            return new, new

        return self._locked_update(POD_FILE, update)


def _apply(st: AppStatus, changes: dict[str, Any]) -> None:
    for k, v in changes.items():
        if k not in _CAMEL or k == "name":
            raise TypeError(f"AppStatus has no field {k!r}")
        setattr(st, k, v)
