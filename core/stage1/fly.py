"""The ``fly`` stage1 flavor: rkt's chroot flavor for privileged host tools.

One app per pod, in the host's network, PID, IPC, UTS, user and cgroup namespaces, chrooted into
its rootfs, with no capability bounding, no seccomp and no cgroup limits. Like rkt's fly, the app
gets bind mounts of the host's ``/dev``, ``/proc`` and ``/sys`` and a tmpfs on ``/tmp``; unlike
the rkt version that made those mounts in the host's mount table, they live in a private mount
namespace of the app's own, so nothing leaks into the host's. Volumes keep rkt's semantics: a
``shared``/``rshared`` volume's source is made (r)shared on the host when it is a host mount point,
and the app's copy joins its peer group, so mounts the tool makes below the volume show up on the
host (kubelet-style).

What stays resident (measured, see docs/stage1.md "fly"): **the app and one conmon**, nothing
else. conmon is the log writer and exit recorder: it holds the app's stdout/stderr pipes and
writes the CRI log, reaps the app and writes its exit code (128+N after a signal), runs the exit
hook, holds the pod lock exactly as long as the app lives, and serves attach. The app is not
started by an OCI runtime: the "runtime" conmon runs is this very file, as a short-lived script
(``python -I -S fly.py create ...``) that forks the app, sets up its mount namespace and chroot,
drops privileges, reports the pid, and exits; the app then waits on a FIFO until ``start_app``
and execs the command directly. ``exec`` runs the same script in ``enter`` mode: it joins the
app's cgroup and mount namespace (setns), chroots into ``/proc/<app>/root``, takes the app's
user, and execs the command.

The module has two halves. The top half is the launcher/enter helper: standard library only, so
that it runs as a script with ``-I -S`` (no site-packages, no pypod import, ~10 ms). Everything
below the ``__main__`` guard is the library side (:class:`FlyStage1`), which the helper never
reaches.

Files under ``<pod dir>/stage1/``::

    stage1.json                 flavor, cgroup parent (fixed at prepare)
    started, stopped, used      pod markers (start, stop, an app was added)
    apps/<app>/fly.json         the launcher's instructions (rootfs, args, env, user, mounts...)
    apps/<app>/app.json         stdin, log path; markers created, started (mtimes = timestamps)
    apps/<app>/start            FIFO the app waits on until start_app (removed once started)
    apps/<app>/...              conmon's pidfile, conmon.pid, exit, oom, ctl, winsz, attach
    apps/<app>/ctr.log          the CRI log (unless the app names another path)
    exits/<pod>.<app>           conmon's --exit-dir
    attach/<pod>.<app>          conmon's attach symlink (removed at exit and by gc)

Outside it only cgroups: ``<parent>/<pod>/conmon`` (the monitor) and ``<parent>/<pod>/apps/<app>``
(the app and everything it forks or execs, for accounting and for killing the whole tree);
:meth:`FlyStage1.gc` removes them.
"""

from __future__ import annotations

import os
import resource  # the helper needs these before it chroots: nothing can be imported after
import signal
import sys

# =================================================================================================
# Helper half: stdlib only. Run as `python -I -S fly.py create ...` by conmon (as its "runtime")
# and as `python -I -S fly.py enter <config fd> <error fd>` by FlyStage1.exec.
# =================================================================================================

_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC = 0x20, 0x1000, 0x4000
_MS_UNBINDABLE, _MS_PRIVATE, _MS_SLAVE, _MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
_PROPAGATION = {"shared": _MS_SHARED, "slave": _MS_SLAVE, "private": _MS_PRIVATE,
                "unbindable": _MS_UNBINDABLE}
_MOUNT_FLAGS = {"ro": _MS_RDONLY, "nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC}
_MOUNT_NOOPS = ("rw", "suid", "dev", "exec", "bind", "rbind")
# The new mount API (Linux >= 5.2; mount_setattr >= 5.12). Same numbers on every architecture
# that uses the generic syscall table (x86_64, aarch64, ...).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_PR_SET_NO_NEW_PRIVS = 38
_RLIM_INFINITY_OCI = 0xFFFFFFFFFFFFFFFF


class _Syscalls:
    """The few libc calls Python 3.11's os module lacks (loaded only in the launched child)."""

    def __init__(self) -> None:
        import ctypes

        self.ct = ctypes
        self.libc = libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                               ctypes.c_char_p)
        libc.syscall.restype = ctypes.c_long

        class MountAttr(ctypes.Structure):
            _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                        ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

        self.MountAttr = MountAttr

    def _fail(self, what: str) -> None:
        e = self.ct.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int,
              data: str | None = None) -> None:
        enc = (lambda s: s.encode() if s is not None else None)
        if self.libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)) != 0:
            self._fail(f"mount {source or fstype or ''} on {target}")

    def unshare(self, flags: int) -> None:
        if self.libc.unshare(flags) != 0:
            self._fail("unshare")

    def setns(self, fd: int, nstype: int) -> None:
        if self.libc.setns(fd, nstype) != 0:
            self._fail("setns")

    def prctl(self, option: int, arg: int) -> None:
        if self.libc.prctl(option, self.ct.c_ulong(arg), 0, 0, 0) != 0:
            self._fail(f"prctl({option})")

    def open_tree(self, path: str, recursive: bool) -> int:
        c = self.ct
        flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
        fd = self.libc.syscall(c.c_long(_SYS_OPEN_TREE), c.c_int(_AT_FDCWD), c.c_char_p(path.encode()),
                               c.c_uint(flags))
        if fd < 0:
            self._fail(f"open_tree {path}")
        return fd

    def move_mount(self, fd: int, target: str) -> None:
        c = self.ct
        if self.libc.syscall(c.c_long(_SYS_MOVE_MOUNT), c.c_int(fd), c.c_char_p(b""),
                             c.c_int(_AT_FDCWD), c.c_char_p(target.encode()),
                             c.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)) != 0:
            self._fail(f"move_mount on {target}")

    def mount_setattr(self, target: str, recursive: bool, *, attr_set: int = 0,
                      propagation: int = 0) -> None:
        c = self.ct
        attr = self.MountAttr(attr_set, 0, propagation, 0)
        if self.libc.syscall(c.c_long(_SYS_MOUNT_SETATTR), c.c_int(_AT_FDCWD),
                             c.c_char_p(target.encode()), c.c_uint(_AT_RECURSIVE if recursive else 0),
                             c.byref(attr), c.c_size_t(c.sizeof(attr))) != 0:
            self._fail(f"mount_setattr {target}")


def _mountpoints() -> set[str]:
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.add(mp.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
                    .replace("\\134", "\\"))
    return out


def _mount_options(options: list[str]) -> tuple[int, bool, str | None, str]:
    """(MS_ flags, recursive, propagation name or None, fs data) from OCI mount options."""
    flags, recursive, prop, data = 0, False, None, []
    for o in options:
        if o == "rbind":
            recursive = True
        elif o.lstrip("r") in _PROPAGATION:
            prop = o
        elif o in _MOUNT_FLAGS:
            flags |= _MOUNT_FLAGS[o]
        elif o not in _MOUNT_NOOPS:
            data.append(o)
    return flags, recursive, prop, ",".join(data)


def _ensure_target(path: str, is_dir: bool) -> None:
    """Create a mount point (inside the chroot) as rkt's fly does: parents, then dir or file."""
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
    if is_dir:
        os.mkdir(path, 0o755)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _join_cgroups(cgroups: list) -> None:
    for d, required in cgroups:
        try:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            if required:
                raise OSError(e.errno, f"cannot join cgroup {d}: {e.strerror}") from None


def _apply_process(cfg: dict, sc: _Syscalls) -> None:
    """rlimits, oom score, umask, then the user (gid, groups, uid), then no_new_privs and cwd."""
    for name, soft, hard in cfg.get("rlimits", ()):
        inf = resource.RLIM_INFINITY
        resource.setrlimit(getattr(resource, name), (inf if soft == _RLIM_INFINITY_OCI else soft,
                                                     inf if hard == _RLIM_INFINITY_OCI else hard))
    if cfg.get("oom_score_adj") is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(cfg["oom_score_adj"]))
    os.umask(cfg["umask"] if cfg.get("umask") is not None else 0o022)
    uid, gid = int(cfg["uid"]), int(cfg["gid"])
    os.setgroups([int(g) for g in cfg.get("additional_gids", ())])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if cfg.get("no_new_privileges"):
        sc.prctl(_PR_SET_NO_NEW_PRIVS, 1)
    cwd = cfg.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as e:
        raise OSError(e.errno, f"cannot change to working directory {cwd!r}: {e.strerror}") from None


def _resolve(arg0: str, env: list[str]) -> str:
    """The executable for ``arg0`` (as execvp would find it, with the app's PATH), or raise."""
    if "/" in arg0:
        if not os.path.exists(arg0):
            raise FileNotFoundError(2, f"executable file {arg0!r} not found")
        if os.path.isdir(arg0) or not os.access(arg0, os.X_OK):
            raise PermissionError(13, f"{arg0!r} is not executable")
        return arg0
    path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/bin:/bin")
    for d in path.split(":"):
        cand = os.path.join(d or ".", arg0)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(2, f"executable file {arg0!r} not found in $PATH")


def _exec(path: str, args: list[str], env: list[str]) -> None:
    """Reset what Python changed (ignored SIGPIPE/SIGXFSZ, the signal mask), close fds, exec."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    os.closerange(3, 1 << 20)
    envd = {}
    for e in env:
        k, _, v = e.partition("=")
        envd[k] = v
    os.execve(path, args, envd)


def _launch(cfg: dict, ready_w: int) -> None:
    """The app child: mount namespace, chroot, user; report ready; wait for start; exec."""
    os.setsid()
    _join_cgroups(cfg["cgroups"])
    sc = _Syscalls()
    root = cfg["rootfs"]
    if not os.path.isdir(root):
        raise FileNotFoundError(2, f"rootfs {root} is not a directory")
    # 1. In the host namespace: volumes. A shared volume's source is made rshared when it is a
    #    host mount point (rkt), and each volume is cloned now, so the clone stays a peer of the
    #    host's mount however our own namespace is set up below.
    host_mps = _mountpoints()
    volumes = []
    for m in cfg["mounts"]:
        flags, recursive, prop, data = _mount_options(m.get("options", []))
        if m.get("type", "bind") == "bind":
            src = m["source"]
            if prop in ("shared", "rshared") and src in host_mps:
                sc.mount(None, src, None, _MS_SHARED | (_MS_REC if prop == "rshared" else 0))
            volumes.append((m, sc.open_tree(src, recursive), os.path.isdir(src)))
        else:
            volumes.append((m, -1, True))
    # 2. Our own mount namespace; nothing of ours propagates back except shared volumes.
    sc.unshare(_CLONE_NEWNS)
    sc.mount(None, "/", None, _MS_REC | _MS_SLAVE)
    if cfg.get("readonly_rootfs"):
        sc.mount(root, root, None, _MS_BIND | _MS_REC)
    kernel = {p: sc.open_tree(p, True) for p in ("/dev", "/proc", "/sys")}
    etc = [(dst, sc.open_tree(src, False), ro) for src, dst, ro in cfg.get("etc", ())]
    fifo = os.open(cfg["start_fifo"], os.O_RDWR | os.O_CLOEXEC)
    # 3. chroot first, then mount: every target path resolves inside the rootfs (an image's
    #    symlinks cannot send a mount elsewhere).
    os.chroot(root)
    os.chdir("/")
    for p, fd in kernel.items():
        _ensure_target(p, True)
        sc.move_mount(fd, p)
        os.close(fd)
    _ensure_target("/tmp", True)
    sc.mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")
    for dst, fd, ro in etc:
        _ensure_target(dst, False)
        sc.move_mount(fd, dst)
        os.close(fd)
        if ro:
            sc.mount_setattr(dst, False, attr_set=_MOUNT_ATTR_RDONLY)
    for m, fd, is_dir in volumes:
        dst = m["destination"]
        flags, recursive, prop, data = _mount_options(m.get("options", []))
        _ensure_target(dst, is_dir)
        if fd >= 0:
            sc.move_mount(fd, dst)
            os.close(fd)
            propagation = 0
            if prop is not None and prop.lstrip("r") != "shared":
                propagation = _PROPAGATION[prop.lstrip("r")]
            attr = _MOUNT_ATTR_RDONLY if flags & _MS_RDONLY else 0
            if attr or propagation:
                sc.mount_setattr(dst, recursive, attr_set=attr, propagation=propagation)
        else:
            sc.mount(m.get("source") or m["type"], dst, m["type"], flags, data or None)
            if prop is not None:
                sc.mount(None, dst, None, _PROPAGATION[prop.lstrip("r")]
                         | (_MS_REC if prop.startswith("r") else 0))
    if cfg.get("readonly_rootfs"):
        sc.mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
    # 4. The process: limits, user, cwd; find the executable now so a typo fails add_app.
    _apply_process(cfg, sc)
    path = _resolve(cfg["args"][0], cfg["env"])
    os.write(ready_w, b"K")
    os.close(ready_w)
    # 5. Wait for start_app (a byte on the FIFO), then become the app.
    while not os.read(fifo, 1):
        pass
    try:
        _exec(path, cfg["args"], cfg["env"])
    except OSError as e:
        os.write(2, f"pypod-fly: cannot exec {path}: {e.strerror}\n".encode())
        os._exit(126 if e.errno in (13, 8) else 127)


def _create(argv: list[str]) -> int:
    """conmon's ``<runtime> create --bundle B --pid-file P ... <cid>``: fork the app and report it."""
    import json

    bundle = argv[argv.index("--bundle") + 1]
    pid_file = argv[argv.index("--pid-file") + 1]
    with open(os.path.join(bundle, "fly.json")) as f:
        cfg = json.load(f)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        try:
            _launch(cfg, ready_w)
        except BaseException as e:  # noqa: BLE001 - everything goes to the parent
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            try:
                os.write(ready_w, b"E" + msg.encode(errors="replace"))
            finally:
                os._exit(1)
        os._exit(1)
    os.close(ready_w)
    data = b""
    while True:
        chunk = os.read(ready_r, 65536)
        if not chunk:
            break
        data += chunk
    if data == b"K":
        tmp = f"{pid_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, pid_file)
        return 0
    os.waitpid(pid, 0)
    msg = data[1:].decode(errors="replace") if data.startswith(b"E") else "the app's launcher died"
    # conmon reads this from the container's stderr pipe and sends it up the sync pipe.
    os.write(2, f"pypod-fly: {msg}".encode())
    return 1


def _enter(cfg_fd: int, err: int) -> int:
    """Run a command in a running app's cgroup, mount namespace and chroot, as its user.

    The instructions come as JSON on ``cfg_fd`` (not argv: they hold the app's environment);
    a setup failure is reported on ``err``, which exec closes on success."""
    import json

    for fd in (cfg_fd, err):
        os.set_inheritable(fd, False)
    data = b""
    while chunk := os.read(cfg_fd, 65536):
        data += chunk
    os.close(cfg_fd)
    cfg = json.loads(data)
    try:
        _join_cgroups(cfg["cgroups"])
        pid = cfg["pid"]
        # Pin the process, check it is the app (in its cgroup), open its root and namespace,
        # then check through the pidfd that it is still alive: the fds are then the app's,
        # whatever happened to the pid number meanwhile.
        pidfd = os.pidfd_open(pid)
        with open(f"/proc/{pid}/cgroup") as f:
            if not any(line.rstrip("\n").endswith(":" + cfg["cgroup"]) for line in f):
                raise ProcessLookupError(3, f"process {pid} is not the app any more")
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        signal.pidfd_send_signal(pidfd, 0)
        os.close(pidfd)
        sc = _Syscalls()
        sc.setns(ns, _CLONE_NEWNS)
        os.fchdir(root)
        os.chroot(".")
        os.close(ns)
        os.close(root)
        _apply_process(cfg, sc)
    except BaseException as e:  # noqa: BLE001
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        os.write(err, msg.encode(errors="replace"))
        return 1
    try:
        path = _resolve(cfg["args"][0], cfg["env"])
        _exec(path, cfg["args"], cfg["env"])
    except OSError as e:
        os.write(2, f"pypod-fly: {e.strerror}\n".encode())
        return 126 if e.errno in (13, 8) else 127
    return 127


def _helper_main(argv: list[str]) -> int:
    if argv and argv[0] == "create":
        return _create(argv[1:])
    if argv and argv[0] == "enter" and len(argv) == 3:
        return _enter(int(argv[1]), int(argv[2]))
    if argv and argv[0] in ("start", "kill", "delete", "state"):
        os.write(2, f"pypod-fly: {argv[0]} is done by pypod itself\n".encode())
        return 1
    os.write(2, b"usage: fly.py create --bundle DIR --pid-file FILE ID | enter CONFIG_FD ERROR_FD\n")
    return 2


if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv[1:]))

# =================================================================================================
# Library half (never reached when run as a script).
# =================================================================================================

import fcntl  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import select  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Mapping, Sequence  # noqa: E402

from ..errors import Conflict, NotFound  # noqa: E402
from . import AppConfig, AppStatus, ExecResult, PodConfig, PodStatus, Stage1Error  # noqa: E402
from . import cgroups, conmon  # noqa: E402
from .files import read_int as _read_int, rmtree as _rmtree, touch as _touch, unlink as _unlink  # noqa: E402
from . import spec as spec_mod  # noqa: E402

_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HELPER = os.path.abspath(__file__)
_KILL_ROUNDS = 50

# conmon's exit command for every fly app: SIGKILL what the app left in its cgroup (the app is
# its whole process tree, as in a container whose init exited), then run stage0's hook if any.
_EXIT_SCRIPT = ('procs=$1; shift; n=0; while [ $n -lt %d ]; do p=$(cat "$procs" 2>/dev/null); '
                '[ -n "$p" ] || break; kill -9 $p 2>/dev/null; n=$((n+1)); done; '
                '[ $# -eq 0 ] || exec "$@"' % _KILL_ROUNDS)


@dataclass(frozen=True)
class _Launcher:
    """What :func:`conmon.create` needs of a runtime: conmon runs this file as the runtime."""

    root: str  # conmon.create makes sure it exists: the app's directory
    name: str = "fly"

    def conmon_args(self) -> list[str]:
        return ["-r", _python(), "--runtime-arg=-I", "--runtime-arg=-S",
                f"--runtime-arg={_helper_path()}"]

    def delete(self, cid: str, force: bool = False) -> None:
        """Nothing to delete: a failed create leaves no app (add_app cleans the cgroup)."""


def _helper_path() -> str:
    """This file's cached bytecode when it is current, else the source: a script is compiled on
    every run (~6 ms for this file), a .pyc given as the script is not. Current = the header's
    source mtime and size match, as the import system checks (the pyc exists once pypod has
    imported this module, or from packaging)."""
    try:
        import importlib.util

        pyc = importlib.util.cache_from_source(_HELPER)
        st = os.stat(_HELPER)
        with open(pyc, "rb") as f:
            head = f.read(16)
    except (OSError, NotImplementedError, ValueError):
        return _HELPER
    if (len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(head[4:8], "little") == 0
            and int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF):
        return pyc
    return _HELPER


def _python() -> str:
    exe = sys.executable
    if exe and os.access(exe, os.X_OK):
        return exe
    from .runtime import which

    found = which("python3")
    if not found:
        raise Stage1Error("the fly flavor needs a python3 executable for its launcher")
    return found


class FlyStage1:
    """The fly flavor (stateless: everything is read from the pod's directory)."""

    name = "fly"

    # -- paths and records ----------------------------------------------------------------------
    @staticmethod
    def _root(pod: PodConfig) -> str:
        return os.path.join(pod.dir, "stage1")

    def _record(self, pod: PodConfig) -> dict:
        try:
            with open(os.path.join(self._root(pod), "stage1.json")) as f:
                rec = json.load(f)
        except FileNotFoundError:
            raise Conflict(f"pod {pod.id} was not prepared by stage1") from None
        if rec.get("flavor") != self.name:
            raise Conflict(f"pod {pod.id} was prepared by stage1 flavor {rec.get('flavor')!r}")
        return rec

    def _marker(self, pod: PodConfig, name: str) -> str:
        return os.path.join(self._root(pod), name)

    def _files(self, pod: PodConfig, name: str) -> conmon.Files:
        root = self._root(pod)
        app_dir = os.path.join(root, "apps", name)
        log = os.path.join(app_dir, "ctr.log")
        try:
            with open(os.path.join(app_dir, "app.json")) as f:
                log = json.load(f).get("log_path") or log
        except FileNotFoundError:
            pass
        return conmon.Files(cid=f"{pod.id}.{name}", bundle=app_dir, state_dir=app_dir,
                            log_path=log, exit_dir=os.path.join(root, "exits"),
                            socket_dir=os.path.join(root, "attach"))

    def _app_cgroup(self, pod: PodConfig, name: str, rec: dict | None = None) -> str:
        rec = rec or self._record(pod)
        return cgroups.app_path(pod.id, name, rec["cgroup_parent"])

    def _app_names(self, pod: PodConfig) -> list[str]:
        d = os.path.join(self._root(pod), "apps")
        if not os.path.isdir(d):
            return []
        return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n, "app.json")))

    def _need_app(self, pod: PodConfig, name: str) -> conmon.Files:
        if not _APP_NAME.match(name):
            raise Stage1Error(f"invalid app name {name!r}")
        self._record(pod)
        files = self._files(pod, name)
        if not os.path.isfile(os.path.join(files.bundle, "app.json")):
            raise NotFound(f"pod {pod.id} has no app {name!r}")
        return files

    # -- lifecycle ------------------------------------------------------------------------------
    def prepare(self, pod: PodConfig) -> None:
        from .infra import check_pod_id

        check_pod_id(pod.id)
        root = self._root(pod)
        os.makedirs(os.path.join(root, "apps"), exist_ok=True)
        os.makedirs(os.path.join(root, "exits"), exist_ok=True)
        cgroups.pod_path(pod.id, pod.cgroup_parent)  # validates the parent
        spec_mod.write_json(os.path.join(root, "stage1.json"), {
            "flavor": self.name, "cgroup_parent": pod.cgroup_parent})

    def start(self, pod: PodConfig) -> PodStatus:
        """Mark the pod started. fly creates no namespaces and no process here: the pod's
        lifetime process is the app's conmon, created by :meth:`add_app`, which is also where
        ``pod.lock_fd`` is handed over."""
        self._record(pod)
        started = self._marker(pod, "started")
        if os.path.exists(started):
            if self.status(pod).state == "running":
                raise Conflict(f"pod {pod.id} is already running")
            raise Conflict(f"pod {pod.id} has run already; gc it first")
        _touch(started)
        return self.status(pod)

    def add_app(self, pod: PodConfig, app: AppConfig) -> AppStatus:
        if not _APP_NAME.match(app.name):
            raise Stage1Error(f"invalid app name {app.name!r}")
        rec = self._record(pod)
        if self.status(pod).state != "running":
            raise Conflict(f"pod {pod.id} is not running")
        existing = self._app_names(pod)
        if existing:
            raise Conflict(f"fly pod {pod.id} already has an app ({existing[0]!r}): "
                           "the fly flavor runs exactly one app per pod")
        s = app.spec
        if not s.args:
            raise Stage1Error("an app needs a command (args is empty)")
        if s.terminal:
            raise Stage1Error("fly apps cannot have a terminal")
        if not os.path.isdir(s.rootfs):
            raise Stage1Error(f"rootfs {s.rootfs} is not a directory")
        files = self._files(pod, app.name)
        app_dir = files.bundle
        cg = self._app_cgroup(pod, app.name, rec)
        os.makedirs(app_dir, exist_ok=True)
        try:
            cgroups.ensure(cg)
            fifo = os.path.join(app_dir, "start")
            if not os.path.exists(fifo):
                os.mkfifo(fifo, 0o600)
            spec_mod.write_json(os.path.join(app_dir, "fly.json"),
                                self._launch_config(pod, s, cg, fifo))
            log_path = app.log_path or os.path.join(app_dir, "ctr.log")
            spec_mod.write_json(os.path.join(app_dir, "app.json"), {
                "name": app.name, "stdin": app.stdin, "log_path": log_path,
                "log_size_max": app.log_size_max})
            files = self._files(pod, app.name)
            exit_cmd = ["/bin/sh", "-c", _EXIT_SCRIPT, "pypod-fly-exit", _procs_file(cg)]
            if pod.exit_command:
                exit_cmd += [*pod.exit_command, pod.id, app.name]
            conmon.create(_Launcher(app_dir), files,
                          cgroup=cgroups.conmon_path(pod.id, rec["cgroup_parent"]),
                          env=pod.exit_env, stdin=app.stdin, leave_stdin_open=app.stdin,
                          log_size_max=app.log_size_max, exit_command=exit_cmd,
                          pass_fds=(pod.lock_fd,) if pod.lock_fd is not None else ())
        except BaseException:
            self._discard_app(pod, app.name, rec)
            raise
        _touch(os.path.join(app_dir, "created"))
        _touch(self._marker(pod, "used"))
        return self._app_status(pod, app.name, files)

    def _launch_config(self, pod: PodConfig, s: "spec_mod.AppSpec", cg: str, fifo: str) -> dict:
        mounts = []
        for m in s.mounts:
            d = m.to_oci()
            if d["type"] == "bind" and not os.path.isabs(d["source"]):
                raise Stage1Error(f"volume source must be absolute: {d['source']!r}")
            if d["type"] == "bind" and not os.path.exists(d["source"]):
                raise Stage1Error(f"volume source {d['source']} does not exist")
            mounts.append(d)
        etc = []
        for dst, attr in (("/etc/hosts", "etc_hosts"), ("/etc/resolv.conf", "etc_resolv_conf"),
                          ("/etc/hostname", "etc_hostname")):
            src = getattr(s, attr) or getattr(pod, attr)
            if src:
                etc.append([src, dst, bool(s.etc_readonly)])
        layout = cgroups.detect()
        cg_dirs = []
        for d in cgroups.exists(cg, layout):
            optional = bool(layout.mode == "hybrid" and layout.unified
                            and d.startswith(layout.unified.rstrip("/") + "/"))
            cg_dirs.append([d, not optional])
        rlimits = [[r["type"], r["soft"], r["hard"]] for r in spec_mod.clamp_rlimits(s.rlimits)]
        return {
            "rootfs": os.path.abspath(s.rootfs), "args": list(s.args),
            "env": spec_mod.env_list(s.env), "cwd": s.cwd or "/",
            "uid": int(s.uid), "gid": int(s.gid),
            "additional_gids": [int(g) for g in s.additional_gids], "umask": s.umask,
            "rlimits": rlimits, "oom_score_adj": s.oom_score_adj,
            "no_new_privileges": bool(s.no_new_privileges), "readonly_rootfs": bool(s.readonly_rootfs),
            "mounts": mounts, "etc": etc, "cgroups": cg_dirs, "start_fifo": fifo,
        }

    def start_app(self, pod: PodConfig, name: str) -> AppStatus:
        files = self._need_app(pod, name)
        started = os.path.join(files.bundle, "started")
        if os.path.exists(started):
            raise Conflict(f"app {name!r} was started already")
        st = self._app_status(pod, name, files)
        if st.state != "created":
            raise Conflict(f"app {name!r} is {st.state}, not created")
        fifo = os.path.join(files.bundle, "start")
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:  # ENXIO: nobody waits on it any more
            raise Conflict(f"app {name!r} is not waiting to be started: {e.strerror}") from None
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
        _touch(started)
        _unlink(fifo)
        return self._app_status(pod, name, files)

    def stop_app(self, pod: PodConfig, name: str, grace: float = 10.0, stop_signal: str = "TERM") -> AppStatus:
        files = self._need_app(pod, name)
        self._stop_app(pod, name, files, grace, stop_signal)
        return self._app_status(pod, name, files)

    def remove_app(self, pod: PodConfig, name: str) -> None:
        self._need_app(pod, name)
        self._discard_app(pod, name, self._record(pod))

    def _discard_app(self, pod: PodConfig, name: str, rec: dict) -> None:
        files = self._files(pod, name)
        self._stop_app(pod, name, files, 0)
        conmon.cleanup(files)
        cgroups.remove(self._app_cgroup(pod, name, rec), kill=True)
        _unlink(files.exit_file)
        _rmtree(files.bundle)

    def _stop_app(self, pod: PodConfig, name: str, files: conmon.Files, grace: float,
                  stop_signal: str = "TERM") -> int | None:
        """``stop_signal`` to the app's main process, SIGKILL its whole tree (its cgroup) after ``grace``."""
        cg = self._app_cgroup(pod, name)
        code = conmon.read_exit(files)
        if code is None:
            pid = self._main_pid(files, cg)
            started = os.path.exists(os.path.join(files.bundle, "started"))
            if pid and grace > 0 and started:
                from . import signal_number

                _signal(pid, signal_number(stop_signal))
                code = self._wait_exit(files, grace, pid)
            if code is None:
                _kill_tree(cg)
                code = self._wait_exit(files, 10.0, pid)
        _kill_tree(cg)
        return code

    def _main_pid(self, files: conmon.Files, cg: str) -> int | None:
        """The app's main pid, only while it is the app (still in the app's cgroup)."""
        pid = _read_int(files.pidfile)
        if pid and pid in cgroups.procs(cg):
            return pid
        return None

    def _wait_exit(self, files: conmon.Files, timeout: float, pid: int | None) -> int | None:
        """The exit code once conmon recorded it; None on timeout or when conmon is gone."""
        deadline = time.monotonic() + timeout
        while True:
            code = conmon.read_exit(files)
            if code is not None:
                return code
            if conmon.conmon_pid(files) is None:  # gone: it wrote the code first, if ever
                return conmon.read_exit(files)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            code = conmon.wait_exit(files, min(left, 0.1), pid)
            if code is not None:
                return code

    def enter_argv(self, pod: PodConfig, name: str, args: Sequence[str], *, tty: bool = False) -> list[str]:
        """``nsenter`` into the app's mount namespace and chroot as its user, with its environment
        (``env -i`` inside the rootfs), for ``pypod enter`` to exec into with the caller's stdio."""
        files = self._need_app(pod, name)
        st = self._app_status(pod, name, files)
        if st.state != "running" or not st.pid:
            raise Conflict(f"app {name!r} is not running")
        with open(os.path.join(files.bundle, "fly.json")) as f:
            cfg = json.load(f)
        return ["nsenter", f"--target={st.pid}", "--mount", "--root", f"--wd={cfg['cwd']}",
                f"--setuid={cfg['uid']}", f"--setgid={cfg['gid']}", "--", "env", "-i", *cfg["env"], *args]

    def exec(self, pod: PodConfig, name: str, args: Sequence[str], *,
             env: Mapping[str, str] | None = None, cwd: str | None = None,
             timeout: float | None = None) -> ExecResult:
        files = self._need_app(pod, name)
        if not args:
            raise Stage1Error("exec needs a command")
        st = self._app_status(pod, name, files)
        if st.state != "running" or not st.pid:
            raise Conflict(f"app {name!r} is not running")
        with open(os.path.join(files.bundle, "fly.json")) as f:
            cfg = json.load(f)
        merged = {e.split("=", 1)[0]: e for e in cfg["env"]}
        merged.update({k: f"{k}={v}" for k, v in (env or {}).items()})
        enter = {"pid": st.pid, "cgroup": self._app_cgroup(pod, name), "cgroups": cfg["cgroups"],
                 "args": list(args),
                 "env": list(merged.values()), "cwd": cwd or cfg["cwd"], "uid": cfg["uid"],
                 "gid": cfg["gid"], "additional_gids": cfg["additional_gids"],
                 "umask": cfg["umask"], "rlimits": cfg["rlimits"],
                 "no_new_privileges": cfg["no_new_privileges"]}
        cfg_r, cfg_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen([_python(), "-I", "-S", _helper_path(), "enter", str(cfg_r),
                                     str(err_w)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(cfg_r, err_w),
                                    start_new_session=True, env={}, cwd="/")
        except OSError as e:
            for fd in (cfg_w, err_r):
                os.close(fd)
            raise Stage1Error(f"cannot run the fly exec helper: {e}") from None
        finally:
            os.close(cfg_r)
            os.close(err_w)
        try:
            try:
                with open(cfg_w, "wb", closefd=True) as f:
                    f.write(json.dumps(enter).encode())
            except BrokenPipeError:  # the helper died first; its exit status tells
                pass
            out, errout, timed_out = _collect(proc, timeout)
            setup_error = _read_all(err_r)
        finally:
            os.close(err_r)
        if setup_error:
            raise Stage1Error(f"exec in app {name!r}: {setup_error.decode(errors='replace')}")
        rc = proc.returncode
        code = 128 - rc if rc < 0 else rc
        return ExecResult(exit_code=code, stdout=out, stderr=errout, timed_out=timed_out)

    def attach(self, pod: PodConfig, name: str) -> str:
        """conmon's attach socket (stdout/stderr stream, stdin with ``AppConfig.stdin``)."""
        files = self._need_app(pod, name)
        if conmon.conmon_pid(files) is None or not os.path.exists(files.attach_socket):
            raise Conflict(f"app {name!r} has no running monitor to attach to")
        return files.attach_socket

    def stop(self, pod: PodConfig, grace: float = 10.0) -> PodStatus:
        self._record(pod)
        for name in self._app_names(pod):
            self._stop_app(pod, name, self._files(pod, name), grace)
        if os.path.exists(self._marker(pod, "started")):
            _touch(self._marker(pod, "stopped"))
        return self.status(pod)

    def gc(self, pod: PodConfig) -> None:
        try:
            rec = self._record(pod)
        except Conflict:
            return  # never prepared by fly: nothing of ours exists
        for name in self._app_names(pod):
            files = self._files(pod, name)
            cg = self._app_cgroup(pod, name, rec)
            if conmon.read_exit(files) is None:
                _kill_tree(cg)
                self._wait_exit(files, 5.0, None)
            conmon.cleanup(files)
            _unlink(os.path.join(files.bundle, "start"))
        cgroups.remove(cgroups.pod_path(pod.id, rec["cgroup_parent"]), kill=True)
        try:
            os.rmdir(os.path.join(self._root(pod), "attach"))
        except OSError:
            pass

    # -- status ---------------------------------------------------------------------------------
    def status(self, pod: PodConfig) -> PodStatus:
        self._record(pod)
        apps = {name: self._app_status(pod, name, self._files(pod, name))
                for name in self._app_names(pod)}
        if not os.path.exists(self._marker(pod, "started")):
            state = "prepared"
        elif os.path.exists(self._marker(pod, "stopped")):
            state = "exited"
        elif apps:
            state = "running" if any(a.state in ("created", "running") for a in apps.values()) else "exited"
        else:
            state = "exited" if os.path.exists(self._marker(pod, "used")) else "running"
        pid = next((a.pid for a in apps.values() if a.state == "running"), None)
        return PodStatus(pod.id, state, infra_pid=pid, namespaces={}, apps=apps)

    def _app_status(self, pod: PodConfig, name: str, files: conmon.Files) -> AppStatus:
        return conmon.app_status(name, files)


# -- helpers (library side) -----------------------------------------------------------------------

def _procs_file(cg: str) -> str:
    """One hierarchy's ``cgroup.procs`` for cgroup ``cg`` (the one :func:`cgroups.procs` reads)."""
    layout = cgroups.detect()
    if layout.mode == "v2":
        mnt = layout.unified or "/sys/fs/cgroup"
    else:
        mnt = layout.v1.get("pids") or layout.v1.get("memory") or next(iter(layout.v1.values()))
    return os.path.join(mnt, cg.lstrip("/"), "cgroup.procs")


def _kill_tree(cg: str) -> None:
    """SIGKILL every process in the app's cgroup until it is empty (forks race the first rounds)."""
    for _ in range(_KILL_ROUNDS):
        if not cgroups.kill_all(cg, signal.SIGKILL):
            return
        time.sleep(0.002)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _collect(proc: subprocess.Popen, timeout: float | None) -> tuple[bytes, bytes, bool]:
    """stdout, stderr and whether the timeout hit. Returns once the process has exited, draining
    what is already buffered: children that keep the pipes open do not hold the caller."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    open_fds = set(bufs)
    pidfd = os.pidfd_open(proc.pid)
    timed_out = False
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            r, _, _ = select.select([*open_fds, pidfd], [], [], left)
            for fd in r:
                if fd == pidfd:
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    bufs[fd] += chunk
                else:
                    open_fds.discard(fd)
            if pidfd in r:
                break
        proc.wait()
        for fd in list(open_fds):  # drain, never block on a pipe a child still holds
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            try:
                while chunk := os.read(fd, 65536):
                    bufs[fd] += chunk
            except BlockingIOError:
                pass
    finally:
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), timed_out


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out




__all__ = ["FlyStage1"]
