"""Running containers under conmon (2.1.x), the way podman and CRI-O do, with no resident Python.

Create (:func:`create`): pypod spawns ``conmon --api-version 1 ... -r <runtime>`` *without*
``--sync``, so conmon double-forks, calls ``setsid`` and becomes a subreaper: the monitor that
outlives the pypod command. The protocol on the two pipes conmon takes from the environment:

- ``_OCI_STARTPIPE=<fd>``: conmon blocks reading it before it forks, so pypod can first move it
  into the pod's ``conmon`` cgroup (the monitor must not stay in the caller's cgroup, which a
  service manager may kill or limit). Used when a cgroup is given.
- ``_OCI_SYNCPIPE=<fd>``: once ``runtime create`` has succeeded conmon writes one JSON line
  ``{"data": <container pid>}``; on failure ``{"data": -1, "message": "<runtime stderr>"}`` and it
  exits. For ``--exec`` a second line carries the exit code: ``{"data": <code>}``
  (``"message": "command timed out"`` after ``-T``).

pypod then calls ``runtime start``. conmon relays the container's stdout/stderr into the log,
reaps it, writes the exit code and runs the exit command.

Files conmon writes for a container (our choice of locations in brackets):

================================  ==================================================================
``<bundle>/ctl``                  FIFO: ``"<type> <h> <w>\\n"``; type 1 resizes the tty, 2 reopens
                                  the log (after rotation). Stays after exit.
``<bundle>/winsz``                FIFO used internally for resizes. Stays after exit.
``<bundle>/attach``               SOCK_SEQPACKET attach socket; removed when conmon exits. Each
                                  message from conmon is one byte (2 stdout, 3 stderr) + data;
                                  what a client sends is written to the app's stdin (``-i``).
``<socket-dir>/<cuuid>``          symlink to the bundle, so the socket path fits in sun_path.
                                  **Left behind** when conmon exits: :func:`cleanup` removes it.
``-p <state>/pidfile``            written by the runtime: the container's init pid.
``-P <state>/conmon.pid``         the daemonised conmon's pid.
``<exit-dir>/<cid>``              the exit code as text, once the container exited: the code, or
                                  128+signal when killed (OOM kill → 137); -1 after a ``-T`` timeout.
``-0 <state>/exit``               the same code, in the persist dir.
``<state>/oom`` and ``<cwd>/oom`` an empty file when the OOM killer hit the container's memory
                                  cgroup (v1: eventfd on memory.oom_control; v2: inotify on
                                  memory.events ``oom_kill``). pypod sets cwd = persist dir, so one
                                  file. Written before the exit file.
``-l k8s-file:<log>``             the CRI log: ``<RFC3339Nano> <stdout|stderr> <F|P> <text>``; F ends
                                  a line, P is a partial line (conmon 2.1.6 writes the local offset,
                                  ``+00:00``, rather than ``Z``). ``--log-size-max`` truncates it.
================================  ==================================================================

Exit command (``--exit-command PATH --exit-command-arg A ...``): after writing the exit files (and
an optional ``--exit-delay`` seconds), conmon closes its fds >= 3, forks and execs
``PATH A...`` with conmon's environment (the one pypod launched it with) and stdio on /dev/null,
waits for it, then exits. It also runs when ``runtime create`` fails. This is pypod's hook to react
to an app's exit with no Python process resident per pod.

conmon needs CAP_SYS_RESOURCE to set its own oom_score_adj to -1000; without it (as on the
project's hosts) it warns and carries on.

Orphans: the daemonised conmon is re-parented to the nearest subreaper or PID 1. A PID 1 that does
not reap (such as the project's VM init) leaves exited conmons as zombies; long-lived callers can
make themselves a subreaper and reap them (:func:`reap_adopted`).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal as signal_mod
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from . import ExecResult, Stage1Error
from .files import read_int as _read_int
from .runtime import Runtime, RuntimeFailure, which

_DEFAULT_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDOUT, STDERR = 2, 3  # attach-socket stream markers
WIN_RESIZE, REOPEN_LOGS = 1, 2  # ctl FIFO message types


def conmon_binary() -> str:
    path = which("conmon")
    if not path:
        raise Stage1Error("conmon is not installed")
    return path


@dataclass(frozen=True)
class Files:
    """Where conmon keeps one container's files (see the module docstring)."""

    cid: str
    bundle: str       # config.json; conmon adds ctl, winsz, attach
    state_dir: str    # conmon's cwd and persist dir: pidfile, conmon.pid, exit, oom
    log_path: str
    exit_dir: str
    socket_dir: str
    cuuid: str = ""   # conmon's -u (names the attach symlink); defaults to cid

    @property
    def uuid(self) -> str:
        return self.cuuid or self.cid

    @property
    def pidfile(self) -> str:
        return os.path.join(self.state_dir, "pidfile")

    @property
    def conmon_pidfile(self) -> str:
        return os.path.join(self.state_dir, "conmon.pid")

    @property
    def exit_file(self) -> str:
        return os.path.join(self.exit_dir, self.cid)

    @property
    def oom_file(self) -> str:
        return os.path.join(self.state_dir, "oom")

    @property
    def attach_socket(self) -> str:
        return os.path.join(self.socket_dir, self.uuid, "attach")

    @property
    def ctl(self) -> str:
        return os.path.join(self.bundle, "ctl")

    def makedirs(self) -> None:
        for d in (self.bundle, self.state_dir, self.exit_dir, self.socket_dir,
                  os.path.dirname(self.log_path)):
            os.makedirs(d, exist_ok=True)


@dataclass
class Created:
    """A container created under conmon, not started yet."""

    cid: str
    pid: int                 # the container's init pid (host pid namespace)
    conmon_pid: int | None
    files: Files


def create_argv(runtime: Runtime, files: Files, *, terminal: bool = False, stdin: bool = False,
                leave_stdin_open: bool = False, log_size_max: int | None = None,
                exit_command: Sequence[str] = (), exit_delay: int | None = None,
                log_level: str = "error", timeout: int | None = None,
                conmon: str | None = None) -> list[str]:
    """conmon's argv to create ``files.cid`` (pure; see :func:`create`)."""
    argv = [conmon or conmon_binary(), "--api-version", "1",
            "-c", files.cid, "-u", files.uuid, "-n", files.cid,
            *runtime.conmon_args(),
            "-b", files.bundle, "-p", files.pidfile, "-P", files.conmon_pidfile,
            "-0", files.state_dir,
            "-l", f"k8s-file:{files.log_path}",
            "--exit-dir", files.exit_dir, "--socket-dir-path", files.socket_dir,
            "--log-level", log_level]
    if log_size_max:
        argv += ["--log-size-max", str(log_size_max)]
    if terminal:
        argv.append("-t")
    if stdin:
        argv.append("-i")
        if leave_stdin_open:
            argv.append("--leave-stdin-open")
    if timeout:
        argv += ["-T", str(timeout)]
    if exit_command:
        argv += ["--exit-command", exit_command[0]]
        argv += [f"--exit-command-arg={a}" for a in exit_command[1:]]
        if exit_delay:
            argv += ["--exit-delay", str(exit_delay)]
    return argv


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH") or _DEFAULT_ENV_PATH}
    if extra:
        env.update(extra)
    return env


def _read_sync(fd: int, deadline: float | None) -> dict | None:
    """One JSON line from conmon's sync pipe; None on EOF (conmon died without a word)."""
    buf = b""
    while b"\n" not in buf:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise Stage1Error("timed out waiting for conmon")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            if not buf.strip():
                return None
            break
        buf += chunk
    line, _, _rest = buf.partition(b"\n")
    try:
        return json.loads(line)
    except ValueError:
        raise Stage1Error(f"conmon sent garbage on the sync pipe: {line[:200]!r}") from None


def create(runtime: Runtime, files: Files, *, cgroup: str | None = None,
           env: Mapping[str, str] | None = None, timeout: float = 60.0,
           pass_fds: Sequence[int] = (), **argv_opts) -> Created:
    """Create ``files.cid`` from ``files.bundle`` under a daemonised conmon; returns its pids.

    ``cgroup`` (a cgroup path, created if needed) receives conmon before it forks. ``env`` is
    conmon's environment (the exit command inherits it) on top of a minimal PATH. ``pass_fds``
    are inherited by conmon (e.g. a pod lock). Other keywords go to :func:`create_argv`.
    On failure the runtime's error message is raised as :class:`RuntimeFailure` and any half-made
    container is deleted.
    """
    files.makedirs()
    argv = create_argv(runtime, files, **argv_opts)
    os.makedirs(runtime.root, mode=0o700, exist_ok=True)
    sync_r, sync_w = os.pipe()
    start_r = start_w = -1
    fds = [sync_w, *pass_fds]
    child_env = _env(env)
    child_env["_OCI_SYNCPIPE"] = str(sync_w)
    if cgroup:
        start_r, start_w = os.pipe()
        fds.append(start_r)
        child_env["_OCI_STARTPIPE"] = str(start_r)
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(argv, cwd=files.state_dir, env=child_env, pass_fds=fds,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        for fd in (sync_r, sync_w, start_r, start_w):
            if fd >= 0:
                os.close(fd)
        raise Stage1Error(f"cannot run conmon: {e}") from None
    os.close(sync_w)
    try:
        if cgroup:
            os.close(start_r)
            from . import cgroups

            try:
                cgroups.ensure(cgroup)
                cgroups.enter(cgroup, proc.pid)
            except BaseException:
                proc.kill()
                raise
            finally:
                try:
                    os.write(start_w, b"0")
                except OSError:  # conmon was killed above
                    pass
                os.close(start_w)
        try:
            _out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise Stage1Error("conmon did not daemonise in time") from None
        if proc.returncode != 0:
            raise Stage1Error(f"conmon failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
        msg = _read_sync(sync_r, deadline)
    except BaseException:
        _kill_conmon(files)
        raise
    finally:
        os.close(sync_r)
    if msg is None or int(msg.get("data", -1)) <= 0:
        text = (msg or {}).get("message") or "conmon exited before reporting the container pid"
        try:
            runtime.delete(files.cid, force=True)
        except Stage1Error:
            pass
        raise RuntimeFailure(f"{runtime.name} create {files.cid}: {text.strip()}", 1, text)
    return Created(files.cid, int(msg["data"]), _read_int(files.conmon_pidfile), files)


def _kill_conmon(files: Files) -> None:
    pid = _read_int(files.conmon_pidfile)
    if pid:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def conmon_pid(files: Files) -> int | None:
    """The pid of the conmon watching ``files.cid`` if it still runs."""
    pid = _read_int(files.conmon_pidfile)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except OSError:
        return None
    # the pid may have been reused: check it is conmon for this container
    if not cmd or not cmd[0].endswith(b"conmon") or files.cid.encode() not in cmd:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
    except OSError:
        return None
    return pid


# --- exit, OOM, waiting ----------------------------------------------------------------------------

def read_exit(files: Files) -> int | None:
    """The container's exit code once conmon recorded it, else None."""
    for path in (files.exit_file, os.path.join(files.state_dir, "exit")):
        try:
            with open(path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            continue
        if text:
            return int(text)
    return None


def app_status(name: str, files: Files) -> "AppStatus":
    """An app's state from the files alone: ``created``/``started`` markers (their mtimes are the
    times), conmon's exit file and OOM marker, its pid files."""
    from . import AppStatus
    from .files import mtime

    created = mtime(os.path.join(files.bundle, "created"))
    started = mtime(os.path.join(files.bundle, "started"))
    code = read_exit(files)
    st = AppStatus(name=name, state="unknown", created_at=created, started_at=started, log_path=files.log_path)
    if code is not None:
        st.state, st.exit_code = "exited", code
        st.finished_at = mtime(files.exit_file) or mtime(os.path.join(files.state_dir, "exit"))
        st.oom_killed = oom_killed(files)
    elif conmon_pid(files) is not None:
        st.state = "running" if started else "created"
        st.pid = _read_int(files.pidfile)
    return st


def oom_killed(files: Files) -> bool:
    """Whether conmon saw the OOM killer act in the container's memory cgroup."""
    return os.path.exists(files.oom_file)


def wait_exit(files: Files, timeout: float | None, pid: int | None = None) -> int | None:
    """Wait until conmon records the exit code (None on timeout).

    With the container's ``pid``, a pidfd wakes the wait when the process ends; the exit file is
    polled as well (a reused pid cannot make the wait miss the exit, only make it coarser).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd = -1
    if pid:
        try:
            pidfd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            pidfd = -1
    delay = 0.002
    try:
        while True:
            code = read_exit(files)
            if code is not None:
                return code
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if pidfd >= 0:
                r, _, _ = select.select([pidfd], [], [], min(0.05, left) if left is not None else 0.05)
                if r:  # the process ended: conmon writes the file right after draining its output
                    os.close(pidfd)
                    pidfd = -1
                continue
            time.sleep(min(delay, left) if left is not None else delay)
            delay = min(delay * 2, 0.05)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def stop(runtime: Runtime, files: Files, *, grace: float = 10.0, pid: int | None = None,
         signal: str = "TERM", kill_all: bool = True, cgroup: str | None = None) -> int | None:
    """Stop a container: ``signal`` to its init, SIGKILL to all its processes after ``grace``.

    Returns the recorded exit code (None if conmon is gone without recording one). ``kill_all``
    also SIGKILLs leftovers once init has exited (needed when the pid namespace is the pod's).
    With ``cgroup`` (the container's own cgroup path) the signals go to the processes directly:
    init by its pid (through a pidfd, once it is seen in the cgroup, so a reused pid is never
    signalled), every process through the cgroup, instead of through the runtime's ``kill``
    (a process to spawn per signal).
    """
    code = read_exit(files)
    if code is None:
        if grace > 0 and _signal(runtime, files, signal, pid, cgroup):
            code = wait_exit(files, grace, pid)
        if code is None:
            _signal(runtime, files, "KILL", pid, cgroup, all=True)
            code = wait_exit(files, 10.0 if conmon_pid(files) else 1.0, pid)
    if kill_all:
        if cgroup is not None:
            from . import cgroups

            cgroups.kill_all(cgroup)
        elif runtime.exists(files.cid):
            try:
                runtime.kill(files.cid, "KILL", all=True)
            except RuntimeFailure:
                pass
    return code


def _signal(runtime: Runtime, files: Files, sig: str, pid: int | None, cgroup: str | None,
            all: bool = False) -> bool:
    """Signal the container's init (or every process with ``all``); False if none was running."""
    if cgroup is None:
        return runtime.kill(files.cid, sig, all=all)
    from . import cgroups

    from . import signal_number

    num = signal_number(sig)
    if all:
        return cgroups.kill_all(cgroup, num) > 0
    if not pid:
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if pid not in cgroups.procs(cgroup):  # exited: the pid may be someone else's by now
            return False
        signal_mod.pidfd_send_signal(fd, num)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def cleanup(files: Files) -> None:
    """Remove what conmon leaves behind after exit (attach symlink, FIFOs, pid files)."""
    for path in (os.path.join(files.socket_dir, files.uuid), files.ctl,
                 os.path.join(files.bundle, "winsz"), os.path.join(files.bundle, "attach"),
                 files.pidfile, files.conmon_pidfile):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def reopen_log(files: Files) -> None:
    """Ask conmon to reopen the log file (after the caller rotated it)."""
    _ctl(files, f"{REOPEN_LOGS} 0 0\n")


def resize(files: Files, height: int, width: int) -> None:
    """Resize the app's terminal."""
    _ctl(files, f"{WIN_RESIZE} {height} {width}\n")


def _ctl(files: Files, msg: str) -> None:
    try:
        fd = os.open(files.ctl, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        raise Stage1Error(f"conmon of {files.cid} is not listening: {e.strerror}") from None
    try:
        os.write(fd, msg.encode())
    finally:
        os.close(fd)


# --- logs ----------------------------------------------------------------------------------------

_LOG_RE = re.compile(r"^(\S+) (stdout|stderr) ([PF]) (.*)$", re.S)


@dataclass
class LogLine:
    time: str
    stream: str
    partial: bool
    content: str


def parse_log_line(line: str) -> LogLine:
    """Parse one CRI (k8s-file) log line."""
    m = _LOG_RE.match(line.rstrip("\n"))
    if not m:
        raise Stage1Error(f"not a CRI log line: {line[:120]!r}")
    return LogLine(m.group(1), m.group(2), m.group(3) == "P", m.group(4))


def read_log(path: str) -> list[LogLine]:
    with open(path, errors="replace") as f:
        return [parse_log_line(line) for line in f if line.strip()]


def log_streams(path: str) -> tuple[bytes, bytes]:
    """Reassemble stdout and stderr from a CRI log (a final unterminated line keeps no newline)."""
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    for ll in read_log(path):
        out[ll.stream].append(ll.content if ll.partial else ll.content + "\n")
    return "".join(out["stdout"]).encode(), "".join(out["stderr"]).encode()


# --- exec ----------------------------------------------------------------------------------------

def exec_sync(runtime: Runtime, cid: str, process: Mapping, *, work_parent: str,
              timeout: float | None = None, env: Mapping[str, str] | None = None) -> ExecResult:
    """Run ``process`` in container ``cid`` through ``conmon --exec`` and wait for it.

    conmon (``--sync``: it stays our child) runs ``runtime exec --detach``, logs the output to a
    k8s-file log and reports the pid, then the exit code, on the sync pipe. After ``timeout``
    seconds pypod SIGKILLs the exec'd process (conmon reaps it and reports 137) and sets
    ``timed_out``. conmon's own ``-T`` is not used: it kills the process group and exits without
    reaping, and the orphaned zombie, which lives in the container's pid namespace, then keeps
    the container's init from ever finishing its exit where PID 1 does not reap.
    """
    import shutil
    import tempfile

    os.makedirs(work_parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="exec-", dir=work_parent)
    try:
        spec_path = os.path.join(work, "process.json")
        with open(spec_path, "w") as f:
            json.dump(process, f)
        log = os.path.join(work, "log")
        argv = [conmon_binary(), "--api-version", "1", "--sync", "-c", cid,
                "-u", os.path.basename(work), "-n", cid, *runtime.conmon_args(),
                "-p", os.path.join(work, "pid"), "-l", f"k8s-file:{log}",
                "--exec", "--exec-process-spec", spec_path, "--log-level", "error"]
        sync_r, sync_w = os.pipe()
        child_env = _env(env)
        child_env["_OCI_SYNCPIPE"] = str(sync_w)
        proc = subprocess.Popen(argv, cwd=work, env=child_env, pass_fds=(sync_w,),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        os.close(sync_w)
        timed_out = False
        pidfd = -1
        try:
            first = _read_sync(sync_r, time.monotonic() + 60)
            if first is None or int(first.get("data", -1)) <= 0:
                proc.wait()
                text = (first or {}).get("message") or proc.stderr.read().decode(errors="replace")
                raise RuntimeFailure(f"exec in {cid}: {text.strip() or 'conmon failed'}", 1, text)
            try:
                pidfd = os.pidfd_open(int(first["data"]))
            except OSError:
                pidfd = -1  # already gone
            try:
                second = _read_sync(sync_r, None if timeout is None else time.monotonic() + timeout)
            except Stage1Error:
                timed_out = True
                if pidfd >= 0:
                    try:
                        signal_mod.pidfd_send_signal(pidfd, signal_mod.SIGKILL)
                    except ProcessLookupError:
                        pass
                second = _read_sync(sync_r, time.monotonic() + 30)
        finally:
            os.close(sync_r)
            if pidfd >= 0:
                os.close(pidfd)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        if second is None:
            raise Stage1Error(f"conmon exited without the exit code of the exec in {cid}")
        out, err = log_streams(log) if os.path.exists(log) else (b"", b"")
        return ExecResult(int(second.get("data", -1)), out, err, timed_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- attach --------------------------------------------------------------------------------------

class Attach:
    """A client of conmon's attach socket: receive the app's output, send to its stdin."""

    def __init__(self, path: str, timeout: float | None = 10.0):
        import socket

        # Connect through /proc/self/fd so a path longer than sun_path still works.
        dfd = os.open(os.path.dirname(path), os.O_PATH)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
        except OSError as e:
            self.sock.close()
            raise Stage1Error(f"cannot attach to {path}: {e.strerror or e}") from None
        finally:
            os.close(dfd)

    def recv(self) -> tuple[str, bytes] | None:
        """Next chunk as (``"stdout"``|``"stderr"``, data); None when conmon closed the socket."""
        while True:
            msg = self.sock.recv(65536)
            if not msg:
                return None
            if msg[0] in (STDOUT, STDERR):
                return ("stdout" if msg[0] == STDOUT else "stderr", msg[1:])

    def stream(self) -> Iterator[tuple[str, bytes]]:
        while (item := self.recv()) is not None:
            yield item

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Attach":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- orphans -------------------------------------------------------------------------------------

def become_subreaper() -> None:
    """Make this process the reaper of orphaned descendants (PR_SET_CHILD_SUBREAPER)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise Stage1Error(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def reap_adopted(names: Sequence[str] = ("conmon",)) -> list[int]:
    """Reap exited children of this process whose command is in ``names`` (adopted orphans).

    Only zombies with those names are reaped, so statuses of processes a caller waits for with
    :mod:`subprocess` are never stolen.
    """
    reaped = []
    me = os.getpid()
    for pid in _children(me):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        state = stat.rsplit(")", 1)[1].split()[0]
        if state == "Z" and comm in names:
            try:
                os.waitpid(pid, os.WNOHANG)
                reaped.append(pid)
            except ChildProcessError:
                pass
    return reaped


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        return out
    except OSError:  # no CONFIG_PROC_CHILDREN: scan every process' parent
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


__all__ = ["Files", "Created", "ExecResult", "Attach", "LogLine", "create", "create_argv", "stop",
           "wait_exit", "read_exit", "oom_killed", "exec_sync", "cleanup", "conmon_pid",
           "read_log", "parse_log_line", "log_streams", "reopen_log", "resize",
           "become_subreaper", "reap_adopted"]
