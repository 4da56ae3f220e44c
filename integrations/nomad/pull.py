"""A task's image pull, in a child process the driver kills when ``image_pull_timeout`` passes.

A pull run in one of the plugin's threads cannot be stopped: Python has no way to interrupt a
thread blocked in a socket read or unpacking a layer, so a timed-out pull would go on writing
into the store (and hold the store's shared gc lock, keeping ``pypod gc`` waiting) for as long as
the registry lets it. So :func:`pull` runs ``python -m pypod.nomad.pull`` in its own session:
the request (image, policy, credentials) goes on its stdin, never its argv; progress, the image
ID or the error come back as JSON lines on its stdout. When the deadline passes, or the caller
sets ``cancel`` (the StartTask RPC was cancelled), the child's whole process group gets SIGKILL
and :func:`pull` returns only once it is reaped. From then on nothing writes into the store for
that pull.

What a killed pull leaves is what any crashed ``pypod fetch`` leaves (the store is built for it,
see :mod:`pypod.images.store`): its flock locks are dropped by the kernel; the SQLite
transaction recording the image, if one was open, is rolled back, so the image is either wholly
recorded or absent; blobs already verified and committed stay as unreferenced blobs that the
next pull of the image reuses; the blob being downloaded stays as a ``*.part`` file in the
content store's ingest dir and a layer being unpacked as a staging dir, both removed by the
next ``pypod gc`` (which can no longer be blocked by the killed pull).

If the plugin itself dies during a pull, the child is not killed: it finishes (or fails) the
pull on its own, bounded by the registry client's timeouts and retry policy, and exits.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

# how the driver treats a failed pull: "not_found" → InvalidArgument (no retry helps),
# "recoverable" → FailedPrecondition + RecoverableError (Nomad restarts the task per its
# policy), "invalid" → InvalidArgument, "fatal" → Unknown (unrecoverable)
KINDS = ("not_found", "recoverable", "invalid", "fatal")


class PullError(Exception):
    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class PullTimeout(PullError):
    def __init__(self, message: str):
        super().__init__(message, "recoverable")


class PullCancelled(PullError):
    def __init__(self, message: str = "pull cancelled"):
        super().__init__(message, "recoverable")


def pull(image: str, *, data_dir: str | None, config_dir: str | None, policy: str,
         credentials: tuple[str, str] | None, timeout: float,
         progress: Callable[[str, int, int, str], None] | None = None,
         cancel: threading.Event | None = None) -> str:
    """Fetch ``image`` into the store of ``data_dir`` (``policy``: ``new`` or ``update``, as
    :meth:`Engine.resolve_image`); returns the image ID. Raises :class:`PullTimeout` once
    ``timeout`` seconds have passed, :class:`PullCancelled` when ``cancel`` is set, and
    :class:`PullError` for a failed pull; in every case the child is dead on return."""
    req = {"image": image, "data_dir": data_dir or None, "config_dir": config_dir or None, "pull": policy,
           "credentials": list(credentials) if credentials else None}
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen([sys.executable, "-m", "pypod.nomad.pull"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            close_fds=True)
    try:
        try:
            proc.stdin.write(json.dumps(req).encode())
            proc.stdin.close()
        except BrokenPipeError:  # died at once: its stderr says why
            pass
        result: str | None = None
        failure: PullError | None = None
        err = bytearray()
        buf = b""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        while sel.get_map():
            if cancel is not None and cancel.is_set():
                raise PullCancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                raise PullTimeout(f"pull did not finish within {timeout:g}s")
            for key, _ in sel.select(min(left, 0.1)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                if key.data == "err":
                    err += data
                    del err[:-4096]
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if "progress" in msg and progress is not None:
                        try:
                            progress(*msg["progress"])
                        except Exception:
                            pass
                    elif "image" in msg:
                        result = msg["image"]
                    elif "error" in msg:
                        kind = msg.get("kind") if msg.get("kind") in KINDS else "fatal"
                        failure = PullError(msg["error"], kind)
        sel.close()
        try:  # both pipes closed: it is exiting
            rc = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None  # killed below
        if failure is not None:
            raise failure
        if result is None:
            tail = err.decode(errors="replace").strip().splitlines()
            raise PullError(f"the pull process exited with status {rc}" + (f": {tail[-1]}" if tail else ""),
                            "fatal")
        return result
    finally:
        if proc.returncode is None:  # not reaped yet: its pid (the group's id) cannot be reused
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass


# -- the child ---------------------------------------------------------------------------------


def _kind(e: BaseException) -> str:
    from pypod.errors import NotFound, RegistryError, Unauthorized, UsageError

    if isinstance(e, NotFound):
        return "not_found"
    if isinstance(e, Unauthorized):  # wrong or missing credentials: a retry will not help
        return "fatal"
    if isinstance(e, (RegistryError, OSError, TimeoutError)):  # unreachable, 5xx, reset, TLS, DNS...
        return "recoverable"
    if isinstance(e, UsageError):
        return "invalid"
    return "fatal"


def main() -> int:
    out = sys.stdout

    def emit(**msg) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    try:
        req = json.loads(sys.stdin.read())
        from pypod import config as config_mod
        from pypod.pods.engine import Engine

        engine = Engine(config_mod.load(req.get("data_dir"), req.get("config_dir")))
        creds = tuple(req["credentials"]) if req.get("credentials") else None
        img = engine.resolve_image(req["image"], pull=req["pull"], credentials=creds,
                                   progress=lambda d, done, total, st: emit(progress=[d, done, total, st]))
        emit(image=img.id)
        return 0
    except BrokenPipeError:  # the plugin is gone
        return 1
    except Exception as e:
        try:
            emit(error=str(e) or type(e).__name__, kind=_kind(e))
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
