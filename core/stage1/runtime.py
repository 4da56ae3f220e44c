"""OCI runtime selection and invocation (crun, runc).

Selection: :func:`available_runtimes` finds the runtimes installed on the host, :func:`default_runtime`
prefers crun and falls back to runc; :func:`get_runtime` takes one by name. The probe only looks at
files (executables, the cgroup layout): it spawns nothing and is cached per process.

crun on hybrid cgroup hosts: crun 1.8 refuses every container ("cgroups in hybrid mode not
supported, drop all controllers from cgroupv2") when ``/sys/fs/cgroup`` is a v1 tmpfs and the cgroup2
mount at ``/sys/fs/cgroup/unified`` has controllers enabled. pypod then runs crun in a private mount
namespace in which that mount is gone, so crun sees a pure v1 host. No wrapper file is written
(``/run`` is often mounted noexec); every crun invocation is the argv::

    unshare -m --propagation unchanged /bin/sh -c 'mount --make-private /sys/fs/cgroup/unified &&
        umount /sys/fs/cgroup/unified || exit 125; exec "$0" "$@"' /usr/bin/crun ARGS...

``--propagation unchanged`` keeps the host's propagation: a shared mount stays in its peer group,
so mounts the host makes later below a shared volume source reach the containers (``rslave``) and
mounts a container makes in an ``rshared`` volume reach the host, as under runc (with ``slave``
the second stops at this namespace; with ``private`` both do). The cgroup2 mount alone is made
private in the namespace before it is unmounted, so the umount does not reach the host. It
execs rather than forks, so the pid conmon waits for is crun's. conmon gets the same argv as
``-r /usr/bin/unshare`` plus ``--runtime-arg`` for the rest (conmon puts runtime args before the
command). Measured cost on the project's host: about 3 ms per invocation (unshare 1.3 ms, sh 0.6 ms,
umount 1.2 ms) on top of crun's own 2.5 ms for a trivial command. Every command goes through it
(create, start, state, kill, delete, exec, update) with the same ``--root``, so the state crun keeps
is one and the same whichever way it was reached. Containers never see the private namespace:
each gets its own mount namespace from crun.

State: each runtime keeps its state under a pypod-owned ``--root`` (``<run_root>/runtime/<name>``),
never the runtime's default, so ``runc list`` of the host's other users and pypod's do not mix.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping, Sequence

from . import Stage1Error

DEFAULT_RUN_ROOT = "/run/pypod"
PREFERENCE = ("crun", "runc")
_SEARCH = ("/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")
_TIMEOUT = 60.0


class RuntimeFailure(Stage1Error):
    """The OCI runtime exited non-zero; ``stderr`` holds its message."""

    def __init__(self, message: str, returncode: int = 1, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def which(name: str) -> str | None:
    """Find an executable in PATH or the usual system directories."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d] + list(_SEARCH)
    for d in dirs:
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK) and os.path.isfile(cand):
            return cand
    return None


@dataclass(frozen=True)
class Runtime:
    """One usable OCI runtime.

    ``prefix`` is the argv that invokes it (the binary, or the private-mount-namespace wrapper for
    crun on hybrid hosts); ``root`` its state directory. Methods raise :class:`RuntimeFailure`.
    """

    name: str
    binary: str
    root: str
    prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    # -- argv ------------------------------------------------------------------------------------
    @property
    def wrapped(self) -> bool:
        return self.prefix[0] != self.binary

    def argv(self, *args: str) -> list[str]:
        """The full argv of ``<runtime> --root <root> ARGS``."""
        return [*self.prefix, f"--root={self.root}", *args]

    def conmon_args(self) -> list[str]:
        """conmon's ``-r`` and ``--runtime-arg`` options for this runtime."""
        out = ["-r", self.prefix[0]]
        out += [f"--runtime-arg={a}" for a in self.prefix[1:]]
        out.append(f"--runtime-arg=--root={self.root}")
        return out

    # -- invocation -------------------------------------------------------------------------------
    def run(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float | None = _TIMEOUT) -> subprocess.CompletedProcess:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            cp = subprocess.run(self.argv(*args), input=input, capture_output=True,
                                timeout=timeout, env=self._env())
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"{self.name} {args[0]}: timed out after {timeout}s") from None
        if check and cp.returncode != 0:
            err = cp.stderr.decode(errors="replace").strip()
            raise RuntimeFailure(f"{self.name} {args[0]} failed: {err or 'exit ' + str(cp.returncode)}",
                                 cp.returncode, err)
        return cp

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"}
        env.update(self.env)
        return env

    def exists(self, cid: str) -> bool:
        """Whether the runtime has state for ``cid`` (a directory lookup, no process)."""
        return os.path.isdir(os.path.join(self.root, cid))

    def create(self, cid: str, bundle: str, pid_file: str | None = None,
               console_socket: str | None = None, stdio: tuple[int, int, int] | None = None) -> None:
        """``create`` directly (conmon normally does this; see :mod:`.conmon`).

        The container inherits ``stdio`` (default /dev/null); the runtime's own error message is
        read from its ``--log`` file, since a pipe on stderr would be held open by the container.
        """
        args = ["create", "--bundle", bundle]
        if pid_file:
            args += ["--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        import tempfile

        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fd, log = tempfile.mkstemp(prefix=".create-", suffix=".log", dir=self.root)
        os.close(fd)
        argv = [*self.prefix, f"--root={self.root}", f"--log={log}", *args, cid]
        io = stdio or (subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
        try:
            rc = subprocess.run(argv, stdin=io[0], stdout=io[1], stderr=io[2], env=self._env(),
                                timeout=_TIMEOUT).returncode
            if rc != 0:
                with open(log, errors="replace") as f:
                    err = f.read().strip()
                raise RuntimeFailure(f"{self.name} create {cid} failed: {err or 'exit ' + str(rc)}", rc, err)
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"{self.name} create {cid}: timed out") from None
        finally:
            _unlink(log)

    def start(self, cid: str) -> None:
        self.run("start", cid)

    def state(self, cid: str) -> dict | None:
        """The runtime's state document (``status``: created, running, stopped...), None if unknown."""
        if not self.exists(cid):
            return None
        cp = self.run("state", cid, check=False)
        if cp.returncode != 0:
            if not self.exists(cid):
                return None
            raise RuntimeFailure(f"{self.name} state {cid}: {cp.stderr.decode(errors='replace').strip()}",
                                 cp.returncode)
        return json.loads(cp.stdout)

    def kill(self, cid: str, signal: int | str = "TERM", all: bool = False) -> bool:
        """Signal the container's init (or every process with ``all``); False if it is not running."""
        args = ["kill"] + (["--all"] if all else []) + [cid, str(signal)]
        cp = self.run(*args, check=False)
        if cp.returncode == 0:
            return True
        err = cp.stderr.decode(errors="replace")
        if not self.exists(cid) or _not_running(err):
            return False
        raise RuntimeFailure(f"{self.name} kill {cid}: {err.strip()}", cp.returncode, err)

    def delete(self, cid: str, force: bool = False) -> None:
        """Remove the container (and its cgroup); a missing container is not an error."""
        if not self.exists(cid):
            return
        cp = self.run("delete", *(["--force"] if force else []), cid, check=False)
        if cp.returncode != 0 and self.exists(cid):
            raise RuntimeFailure(f"{self.name} delete {cid}: {cp.stderr.decode(errors='replace').strip()}",
                                 cp.returncode)

    def exec(self, cid: str, process: Mapping, *, input: bytes | None = None,
             timeout: float | None = None, process_file: str | None = None) -> subprocess.CompletedProcess:
        """Run a process (an OCI process object, see :func:`.spec.exec_process`) in the container,
        in the foreground; returns its exit code and captured stdout/stderr."""
        if process_file is None:
            import tempfile

            os.makedirs(self.root, mode=0o700, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=".exec-", suffix=".json", dir=self.root)
            os.close(fd)
        else:
            path = process_file
        with open(path, "w") as f:
            json.dump(process, f)
        try:
            cp = subprocess.run(self.argv("exec", "--process", path, cid), input=input,
                                capture_output=True, timeout=timeout, env=self._env())
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"{self.name} exec in {cid}: timed out after {timeout}s") from None
        finally:
            if process_file is None:
                _unlink(path)
        return cp

    def update(self, cid: str, resources: Mapping) -> None:
        """Change a running container's ``linux.resources``."""
        self.run("update", "--resources", "-", cid, input=json.dumps(resources).encode())

    def list(self) -> list[dict]:
        cp = self.run("list", "--format", "json")
        out = cp.stdout.strip()
        return json.loads(out) if out and out != b"null" else []

    def version(self) -> str:
        cp = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10)
        return cp.stdout.splitlines()[0] if cp.stdout else ""


def _not_running(err: str) -> bool:
    err = err.lower()
    return any(s in err for s in ("not running", "does not exist", "no such process",
                                  "container not found", "is stopped", "no such file"))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def crun_private_mount_prefix(crun: str, unified: str = "/sys/fs/cgroup/unified") -> tuple[str, ...]:
    """The argv prefix that runs crun with the cgroup2 mount hidden (see the module docstring)."""
    import shlex

    unshare, sh = which("unshare"), "/bin/sh"
    if unshare is None:
        raise Stage1Error("crun needs unshare(1) on this hybrid cgroup host, and it is missing")
    # The namespace keeps the host's propagation, so that volumes propagate both ways (rshared)
    # as under runc; the cgroup2 mount alone is made private first, so unmounting it here does
    # not unmount it on the host.
    q = shlex.quote(unified)
    script = f"mount --make-private {q} && umount {q} || exit 125; exec \"$0\" \"$@\""
    return (unshare, "-m", "--propagation", "unchanged", sh, "-c", script, crun)


@lru_cache(maxsize=None)
def _probe() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    from . import cgroups

    found = []
    layout = cgroups.detect()
    for name in PREFERENCE:
        binary = which(name)
        if not binary:
            continue
        prefix: tuple[str, ...] = (binary,)
        if name == "crun" and layout.crun_needs_private_mount:
            if which("unshare") is None:
                continue
            prefix = crun_private_mount_prefix(binary, layout.unified or "/sys/fs/cgroup/unified")
        found.append((name, binary, prefix))
    return tuple(found)


def available_runtimes(run_root: str = DEFAULT_RUN_ROOT) -> dict[str, Runtime]:
    """Usable runtimes by name, in preference order (crun first)."""
    return {name: Runtime(name=name, binary=binary, root=os.path.join(run_root, "runtime", name),
                          prefix=prefix)
            for name, binary, prefix in _probe()}


def get_runtime(name: str | None = None, run_root: str = DEFAULT_RUN_ROOT) -> Runtime:
    """The runtime called ``name`` (or the default one); raises if it is not usable here."""
    rts = available_runtimes(run_root)
    if not rts:
        raise Stage1Error("no OCI runtime found (install crun or runc)")
    if name is None:
        return next(iter(rts.values()))
    if name not in rts:
        raise Stage1Error(f"OCI runtime {name!r} is not available (have: {', '.join(rts) or 'none'})")
    return rts[name]


def default_runtime(run_root: str = DEFAULT_RUN_ROOT, preferred: str | None = None) -> Runtime:
    """crun where it runs, runc otherwise; ``preferred`` (e.g. from the config) wins when usable."""
    return get_runtime(preferred, run_root)


def runtime_names() -> Sequence[str]:
    return [name for name, _b, _p in _probe()]
