"""A protocol-faithful Mesos agent for the executor side: the v1 executor HTTP API over real HTTP.

No Mesos agent can be installed on this platform (../shared/reference/mesos.md, section 0), so the
tests run the executor against this one. It follows the real agent (``src/slave/http.cpp``
``Http::executor``, ``src/common/validation.cpp`` ``validateExecutorCall``, ``Slave::subscribe``,
``task_status_update_manager.cpp``):

- ``POST /api/v1/executor`` and ``POST /slave(1)/api/v1/executor``; other methods 405 with
  ``Allow: POST``; Content-Type required (400) and exactly ``application/json`` (415); bad JSON
  400; structural validation 400 (type, ids, subscribe/update/message, UPDATE's task_id, state,
  a 16-byte RFC 4122 uuid, source SOURCE_EXECUTOR, no TASK_STAGING, a matching executor_id);
  HEARTBEAT 202 before anything else; 503 for other calls while recovering; unknown framework
  or executor 400; calls before the first SUBSCRIBE 403; Accept checked (406).
- SUBSCRIBE: the previous stream is closed, ``unacknowledged_updates`` are replayed through
  update handling (deduplicated by uuid, re-acknowledged), STAGING tasks missing from
  ``unacknowledged_tasks`` become TASK_LOST with REASON_AGENT_RESTARTED, then SUBSCRIBED (full
  shape) and the queued LAUNCH / LAUNCH_GROUP events, as RecordIO records in a chunked 200 stream
  that never ends on its own.
- UPDATE 202; the agent acknowledges according to :attr:`ack_policy`: ``immediate`` (the real
  agent), ``("delayed", seconds)``, ``manual`` (:meth:`ack`) or ``drop``. Protocol violations
  (an update after a terminal one, a state going backwards) are collected in :attr:`violations`.
- Faults: :meth:`restart` (the agent goes away -- the stream reset or closed -- and comes back on
  the same port after ``down_for``; ``mode="cleanup"`` answers the next SUBSCRIBE with
  SHUTDOWN), :attr:`chunking` (``"fragment"`` cuts the stream at random places, records split
  across chunks and packed together), :meth:`kill_executor`, and timers as the agent's:
  registration, reregistration (the executor killed, its tasks TASK_LOST with
  REASON_EXECUTOR_REREGISTRATION_TIMEOUT) and the shutdown grace period (the executor's process
  group killed).
- The executor is started as the agent does: a new session, cwd and stdout/stderr in the
  sandbox, and the agent's environment (``MESOS_FRAMEWORK_ID``, ``MESOS_EXECUTOR_ID``,
  ``MESOS_AGENT_ENDPOINT``, ``MESOS_SLAVE_PID``, ``MESOS_DIRECTORY``, ``MESOS_SANDBOX``,
  ``MESOS_CHECKPOINT``, ``MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD``, and with checkpointing
  ``MESOS_RECOVERY_TIMEOUT`` and ``MESOS_SUBSCRIPTION_BACKOFF_MAX``). When it exits with live
  tasks they become TASK_FAILED with REASON_EXECUTOR_TERMINATED, from the agent.

Only the standard library; nothing of pypod is imported.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid as uuid_mod
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
            "TASK_GONE", "TASK_GONE_BY_OPERATOR"}
STATES = {"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_FINISHED", "TASK_FAILED",
          "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED", "TASK_UNREACHABLE", "TASK_GONE",
          "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"}
ORDER = {"TASK_STAGING": 0, "TASK_STARTING": 1, "TASK_RUNNING": 2, "TASK_KILLING": 3}
EXECUTOR_BIN = str(Path(sys.executable).parent / "pypod-mesos-executor")


def duration(seconds: float) -> str:
    """A stout duration string, as the agent writes them into the environment."""
    return f"{int(seconds * 1000)}ms"


def kill_policy(grace: float) -> dict:
    return {"grace_period": {"nanoseconds": int(grace * 1e9)}}


class HTTPError(Exception):
    def __init__(self, code: int, message: str = "", headers: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}


class Stream:
    """One SUBSCRIBE response: a chunked stream of RecordIO records."""

    def __init__(self, handler: BaseHTTPRequestHandler, chunking: str):
        self.handler = handler
        self.sock: socket.socket = handler.connection
        self.chunking = chunking
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.buffer = b""

    def send(self, event: dict) -> None:
        data = json.dumps(event).encode()
        record = str(len(data)).encode() + b"\n" + data
        with self.lock:
            if self.closed.is_set():
                return
            try:
                if self.chunking == "fragment":
                    self.buffer += record
                    # cut what is pending anywhere, keeping a random tail for the next record
                    keep = random.randint(0, min(len(self.buffer) - 1, 7)) if random.random() < 0.6 else 0
                    out, self.buffer = self.buffer[:len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
                    while out:
                        n = random.randint(1, max(1, len(out)))
                        self._chunk(out[:n])
                        out = out[n:]
                    if self.buffer:  # the tail goes out with the next record, or shortly
                        t = threading.Timer(0.02, self.flush_pending)
                        t.daemon = True
                        t.start()
                else:
                    self._chunk(record)
            except OSError:
                self.closed.set()

    def flush_pending(self) -> None:
        with self.lock:
            if self.buffer and not self.closed.is_set():
                try:
                    self._chunk(self.buffer)
                except OSError:
                    self.closed.set()
                self.buffer = b""

    def _chunk(self, data: bytes) -> None:
        self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def close(self, abrupt: bool = False) -> None:
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
            try:
                if abrupt:  # RST, as a crashing agent's kernel would
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    self.sock.sendall(b"0\r\n\r\n")
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class TestAgent:
    __test__ = False  # not a test class (pytest collects Test*)

    """One agent, one framework, one executor (the tests' unit)."""

    def __init__(self, sandbox: Path, *, framework_id: str = "fw-1", executor_id: str = "pypod-exec-1",
                 checkpoint: bool = True, capabilities: tuple[str, ...] = ("TASK_KILLING_STATE",),
                 ack_policy: Any = "immediate", chunking: str = "plain", shutdown_grace: float = 5.0,
                 recovery_timeout: float = 60.0, backoff_max: float = 0.5,
                 registration_timeout: float = 60.0, reregistration_timeout: float = 5.0,
                 executor_info: dict | None = None, env: dict[str, str] | None = None,
                 heartbeat_interval: float | None = None, token: str | None = None):
        self.sandbox = Path(sandbox)
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.framework_id, self.executor_id = framework_id, executor_id
        self.agent_id = "agent-" + uuid_mod.uuid4().hex[:8] + "-S0"
        self.container_id = str(uuid_mod.uuid4())
        self.checkpoint = checkpoint
        self.capabilities = capabilities
        self.ack_policy = ack_policy
        self.chunking = chunking
        self.shutdown_grace = shutdown_grace
        self.recovery_timeout = recovery_timeout
        self.backoff_max = backoff_max
        self.registration_timeout = registration_timeout
        self.reregistration_timeout = reregistration_timeout
        self.heartbeat_interval = heartbeat_interval
        self.extra_env = env or {}
        self.token = token  # executor authentication: MESOS_EXECUTOR_AUTHENTICATION_TOKEN, required
        self.faults: dict[str, list[int]] = {}  # call type -> status codes to answer its next calls with
        self.executor_info = executor_info or {
            "executor_id": {"value": executor_id}, "framework_id": {"value": framework_id}, "type": "CUSTOM",
            "command": {"value": "pypod-mesos-executor", "shell": True},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}]}
        self.executor_info.setdefault("executor_id", {"value": executor_id})
        self.executor_info.setdefault("framework_id", {"value": framework_id})

        self.cond = threading.Condition()
        self.port = 0
        self.server: _Server | None = None
        self.stream: Stream | None = None
        self.handlers: set[BaseHTTPRequestHandler] = set()
        self.mode = "idle"  # idle | running | down | recovering | cleanup
        self.subscribed = False  # the executor: REGISTERING until the first SUBSCRIBE
        self.tasks: dict[str, dict] = {}  # task_id -> {"state", "info", "acked_any"}
        self.pending: list[dict] = []  # events queued until SUBSCRIBED
        self.updates: list[dict] = []  # every update taken: {"status", "via", "at", "duplicate"}
        self.seen: set[str] = set()  # uuids taken
        self.acked: set[str] = set()  # uuids acknowledged
        self.unacked: dict[str, dict] = {}  # uuid -> status, waiting for the ack policy
        self.calls: list[dict] = []  # (every request: {"path", "code", "type"})
        self.subscriptions: list[dict] = []  # the SUBSCRIBE bodies
        self.messages: list[bytes] = []
        self.violations: list[str] = []
        self.agent_updates: list[dict] = []  # what the agent itself generated
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.exited_at: float | None = None
        self._timers: list[threading.Timer] = []
        self._deferred: list[dict] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "TestAgent":
        self._listen()
        self.mode = "running"
        if self.heartbeat_interval:
            threading.Thread(target=self._heartbeats, daemon=True).start()
        return self

    def _listen(self) -> None:
        agent = self

        class Handler(_Handler):
            pass

        Handler.agent = agent
        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESOS_", "PYTEST_"))}
        env.update({
            "MESOS_FRAMEWORK_ID": self.framework_id, "MESOS_EXECUTOR_ID": self.executor_id,
            "MESOS_AGENT_ENDPOINT": self.endpoint, "MESOS_SLAVE_PID": f"slave(1)@{self.endpoint}",
            "MESOS_SLAVE_ID": self.agent_id, "MESOS_DIRECTORY": str(self.sandbox),
            "MESOS_SANDBOX": str(self.sandbox), "MESOS_CHECKPOINT": "1" if self.checkpoint else "0",
            "MESOS_HTTP_COMMAND_EXECUTOR": "0",
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": duration(self.shutdown_grace),
            "LIBPROCESS_PORT": "0", "PYTHONUNBUFFERED": "1"})
        if self.token:
            env["MESOS_EXECUTOR_AUTHENTICATION_TOKEN"] = self.token
        if self.checkpoint:
            env["MESOS_RECOVERY_TIMEOUT"] = duration(self.recovery_timeout)
            env["MESOS_SUBSCRIPTION_BACKOFF_MAX"] = duration(self.backoff_max)
        env.update(self.extra_env)
        return env

    def launch_executor(self, argv: list[str] | None = None) -> subprocess.Popen:
        """Start the executor as the agent does; registration timeout armed."""
        out = open(self.sandbox / "stdout", "ab")
        err = open(self.sandbox / "stderr", "ab")
        self.proc = subprocess.Popen(argv or [EXECUTOR_BIN], env=self.env(), cwd=self.sandbox, stdout=out,
                                     stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        err.close()
        threading.Thread(target=self._reap, args=(self.proc,), daemon=True).start()
        self._timer(self.registration_timeout, self._registration_expired)
        return self.proc

    def _reap(self, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self.cond:
            self.exit_code = code
            self.exited_at = time.monotonic()
            if self.stream is not None:
                self.stream.close()
            for tid, t in self.tasks.items():
                if t["state"] not in TERMINAL:
                    self._agent_update(tid, "TASK_FAILED", "REASON_EXECUTOR_TERMINATED",
                                       f"Executor terminated (exit {code}) with the task live")
            self.cond.notify_all()

    def close(self) -> None:
        """Stop everything: the executor's process group (if still there), timers, the server."""
        self._closed = True
        for t in self._timers:
            t.cancel()
        if self.proc is not None and self.proc.poll() is None:
            self.kill_executor(signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._go_down(abrupt=False)

    # -- timers -------------------------------------------------------------------------------------
    def _timer(self, secs: float, fn: Callable) -> None:
        t = threading.Timer(secs, fn)
        t.daemon = True
        self._timers.append(t)
        t.start()

    def _registration_expired(self) -> None:
        with self.cond:
            if self.subscribed or self.proc is None or self.proc.poll() is not None:
                return
            self.violations.append("executor did not subscribe within the registration timeout")
        self.kill_executor(signal.SIGKILL)

    def _heartbeats(self) -> None:
        while not self._closed:
            time.sleep(self.heartbeat_interval or 1)
            self.heartbeat()

    # -- what the test does ---------------------------------------------------------------------------
    def _event(self, event: dict) -> None:
        with self.cond:
            if self.stream is not None and self.subscribed and self.mode == "running":
                self.stream.send(event)
            else:
                self.pending.append(event)

    def launch(self, task: dict) -> None:
        task = self._with_defaults(task)
        with self.cond:
            self.tasks[task["task_id"]["value"]] = {"state": "TASK_STAGING", "info": task, "acked_any": False}
        self._event({"type": "LAUNCH", "launch": {"task": task, "framework_info": self.framework_info()}})

    def launch_group(self, tasks: list[dict]) -> None:
        tasks = [self._with_defaults(t) for t in tasks]
        with self.cond:
            for t in tasks:
                self.tasks[t["task_id"]["value"]] = {"state": "TASK_STAGING", "info": t, "acked_any": False}
        self._event({"type": "LAUNCH_GROUP", "launch_group": {"task_group": {"tasks": tasks}}})

    def _with_defaults(self, task: dict) -> dict:
        task = json.loads(json.dumps(task))
        task.setdefault("agent_id", {"value": self.agent_id})
        task.setdefault("name", task["task_id"]["value"])
        task.setdefault("executor", self.executor_info)
        return task

    def kill(self, task_id: str, grace: float | None = None) -> None:
        ev: dict = {"type": "KILL", "kill": {"task_id": {"value": task_id}}}
        if grace is not None:
            ev["kill"]["kill_policy"] = kill_policy(grace)
        self._event(ev)

    def shutdown(self) -> None:
        """SHUTDOWN, then the agent's shutdown grace period: the process group is killed after it."""
        self._event({"type": "SHUTDOWN"})
        self._timer(self.shutdown_grace, self._shutdown_expired)

    def _shutdown_expired(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with self.cond:
                self.violations.append("executor still running after the shutdown grace period")
            self.kill_executor(signal.SIGKILL)

    def message(self, data: bytes) -> None:
        self._event({"type": "MESSAGE", "message": {"data": base64.b64encode(data).decode()}})

    def error(self, text: str) -> None:
        self._event({"type": "ERROR", "error": {"message": text}})

    def heartbeat(self) -> None:
        with self.cond:
            if self.stream is not None and self.subscribed:
                self.stream.send({"type": "HEARTBEAT"})

    def ack(self, update_uuid: str) -> None:
        """Acknowledge one update (ack_policy "manual")."""
        with self.cond:
            st = self.unacked.pop(update_uuid, None)
            if st is not None:
                self._send_ack(st)

    def ack_all(self) -> None:
        with self.cond:
            for u in list(self.unacked):
                self._send_ack(self.unacked.pop(u))

    def kill_executor(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the executor's container: its whole session
            except ProcessLookupError:
                pass

    def restart(self, down_for: float, *, mode: str = "reconnect", abrupt: bool = True,
                during: Callable[[], None] | None = None) -> None:
        """The agent process dies (the stream and every connection reset or closed) and comes back
        on the same port after ``down_for`` s, recovering: checkpointed state kept, the executor
        must re-subscribe within the reregistration timeout. ``during`` runs while it is down."""
        self._go_down(abrupt=abrupt)
        if during is not None:
            during()
        time.sleep(down_for)
        with self.cond:
            self.mode = "cleanup" if mode == "cleanup" else "recovering"
            self.subscribed = False
        self._listen()
        self._timer(self.reregistration_timeout, self._reregistration_expired)

    def _go_down(self, abrupt: bool) -> None:
        with self.cond:
            self.mode = "down"
            stream, self.stream = self.stream, None
            server, self.server = self.server, None
            handlers = list(self.handlers)
        if stream is not None:
            stream.close(abrupt=abrupt)
        if server is not None:
            server.shutdown()
            server.server_close()
        for h in handlers:  # keep-alive call connections die with the agent too
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _reregistration_expired(self) -> None:
        with self.cond:
            if self.mode not in ("recovering", "cleanup") or self.subscribed:
                return
            self.mode = "running"
            self.violations.append("executor did not re-subscribe within the reregistration timeout")
            for tid, t in self.tasks.items():
                if t["state"] not in TERMINAL:
                    self._agent_update(tid, "TASK_LOST", "REASON_EXECUTOR_REREGISTRATION_TIMEOUT",
                                       "Executor did not reregister within the timeout")
        self.kill_executor(signal.SIGKILL)

    # -- inspection ---------------------------------------------------------------------------------
    def wait_for(self, pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = pred()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; updates: "
                                         f"{[(u['status']['task_id']['value'], u['status']['state']) for u in self.updates]}")
                self.cond.wait(min(left, 0.1))

    def states(self, task_id: str) -> list[str]:
        """The states the executor reported for a task, in order (duplicates left out)."""
        with self.cond:
            return [u["status"]["state"] for u in self.updates
                    if u["status"]["task_id"]["value"] == task_id and not u["duplicate"]]

    def last(self, task_id: str) -> dict:
        with self.cond:
            return [u["status"] for u in self.updates if u["status"]["task_id"]["value"] == task_id
                    and not u["duplicate"]][-1]

    def state(self, task_id: str) -> str:
        with self.cond:
            return self.tasks[task_id]["state"]

    def wait_state(self, task_id: str, state: str, timeout: float = 30.0) -> dict:
        self.wait_for(lambda: state in self.states(task_id), timeout, f"{task_id} {state}")
        with self.cond:
            return next(u["status"] for u in self.updates if u["status"]["task_id"]["value"] == task_id
                        and u["status"]["state"] == state)

    def wait_exit(self, timeout: float = 30.0) -> int:
        self.wait_for(lambda: self.exit_code is not None, timeout, "the executor to exit")
        return self.exit_code  # type: ignore[return-value]

    # -- the API --------------------------------------------------------------------------------------
    def framework_info(self) -> dict:
        return {"id": {"value": self.framework_id}, "user": "root", "name": "pypod-test-framework",
                "checkpoint": self.checkpoint, "capabilities": [{"type": c} for c in self.capabilities]}

    def handle(self, handler: "_Handler", body: bytes) -> tuple[int, dict, bytes] | None:
        """One call; returns (code, headers, body), or None when it became the event stream."""
        ctype = handler.headers.get("Content-Type")
        if ctype is None:
            raise HTTPError(400, "Expecting 'Content-Type' to be present")
        if ctype != "application/json":
            raise HTTPError(415, f"Expecting 'Content-Type' of application/json or application/x-protobuf")
        try:
            call = json.loads(body)
        except ValueError as e:
            raise HTTPError(400, f"Failed to parse body into JSON: {e}")
        if not isinstance(call, dict):
            raise HTTPError(400, "Failed to convert JSON into Call protobuf: not an object")
        ctype_call = call.get("type")
        if ctype_call not in ("SUBSCRIBE", "UPDATE", "MESSAGE", "HEARTBEAT", "UNKNOWN"):
            raise HTTPError(400, f"Failed to convert JSON into Call protobuf: bad type {ctype_call!r}")
        self._validate(call)
        with self.cond:
            self.calls.append({"path": handler.path, "type": ctype_call, "at": time.monotonic()})
        if ctype_call == "HEARTBEAT":
            return 202, {}, b""
        if ctype_call == "UNKNOWN":
            raise HTTPError(501, "Unknown call")
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            raise HTTPError(401, "Unauthorized", {"WWW-Authenticate": 'Bearer realm="mesos-agent-executor"'})
        with self.cond:
            injected = self.faults.get(ctype_call)
            if injected:
                raise HTTPError(injected.pop(0), "injected fault")
        with self.cond:
            if self.mode in ("recovering",) and ctype_call != "SUBSCRIBE":
                raise HTTPError(503, "Agent has not finished recovery")
            if call["framework_id"].get("value") != self.framework_id:
                raise HTTPError(400, "Framework cannot be found")
            if call["executor_id"].get("value") != self.executor_id:
                raise HTTPError(400, "Executor cannot be found")
            if ctype_call != "SUBSCRIBE" and not self.subscribed:
                raise HTTPError(403, "Executor is not subscribed")
        if ctype_call == "SUBSCRIBE":
            accept = handler.headers.get("Accept", "")
            if accept and not any(a.strip().split(";")[0] in ("application/json", "*/*", "application/*")
                                  for a in accept.split(",")):
                raise HTTPError(406, "Expecting 'Accept' to allow application/json")
            self._subscribe(handler, call["subscribe"])
            return None
        if ctype_call == "UPDATE":
            with self.cond:
                self._take_update(call["update"]["status"], via="POST")
            return 202, {}, b""
        with self.cond:  # MESSAGE
            self.messages.append(base64.b64decode(call["message"].get("data", "")))
            self.cond.notify_all()
        return 202, {}, b""

    def _validate(self, call: dict) -> None:
        def bad(msg: str) -> HTTPError:
            return HTTPError(400, f"Received invalid Call: {msg}")

        if call.get("type") == "HEARTBEAT":
            return
        for key in ("framework_id", "executor_id"):
            if not isinstance(call.get(key), dict) or "value" not in call[key]:
                raise bad(f"Expecting '{key}' to be present")
        t = call["type"]
        if t == "SUBSCRIBE" and not isinstance(call.get("subscribe"), dict):
            raise bad("Expecting 'subscribe' to be present")
        if t == "MESSAGE" and not isinstance(call.get("message"), dict):
            raise bad("Expecting 'message' to be present")
        if t == "UPDATE":
            st = (call.get("update") or {}).get("status")
            if not isinstance(st, dict):
                raise bad("Expecting 'update' to be present")
            self._validate_status(st, call, bad)
        if t == "SUBSCRIBE":
            for i, u in enumerate(call["subscribe"].get("unacknowledged_updates") or []):
                st = u.get("status") if isinstance(u, dict) else None
                if not isinstance(st, dict):
                    raise bad(f"unacknowledged_updates[{i}] has no status")
                self._validate_status(st, call, bad)

    @staticmethod
    def _validate_status(st: dict, call: dict, bad: Callable[[str], HTTPError]) -> None:
        if not isinstance(st.get("task_id"), dict) or not st["task_id"].get("value"):
            raise bad("Expecting 'task_id' to be present")
        if st.get("state") not in STATES:
            raise bad(f"invalid state {st.get('state')!r}")
        try:
            raw = base64.b64decode(st.get("uuid", ""), validate=True)
            u = uuid_mod.UUID(bytes=raw)
        except (ValueError, TypeError):
            raise bad("Expecting 'uuid' to be a valid 16-byte UUID")
        if u.variant != uuid_mod.RFC_4122 or u.version is None or not 1 <= u.version <= 5:
            raise bad("Expecting 'uuid' to be an RFC 4122 UUID")
        if st.get("source") != "SOURCE_EXECUTOR":
            raise bad("Received Call from executor with invalid source")
        if st["state"] == "TASK_STAGING":
            raise bad("Received TASK_STAGING from executor")
        if "executor_id" in st and st["executor_id"] != call["executor_id"]:
            raise bad("ExecutorID in Call and in TaskStatus do not match")

    def _subscribe(self, handler: "_Handler", sub: dict) -> None:
        stream = Stream(handler, self.chunking)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()
        with self.cond:
            old, self.stream = self.stream, stream
            if old is not None:
                old.close()
            self.subscriptions.append(json.loads(json.dumps(sub)))
            self._cancel_timers_of(self._registration_expired)
            cleanup = self.mode == "cleanup"
            self.mode = "running"
            self.subscribed = True
            self._deferred = []  # acks for the replayed updates go after SUBSCRIBED
            for u in sub.get("unacknowledged_updates") or []:
                self._take_update(u["status"], via="SUBSCRIBE")
            deferred, self._deferred = self._deferred, None
            unacked_tasks = {t["task_id"]["value"] for t in sub.get("unacknowledged_tasks") or []}
            for tid, t in self.tasks.items():
                if t["state"] == "TASK_STAGING" and tid not in unacked_tasks and len(self.subscriptions) > 1:
                    self._agent_update(tid, "TASK_LOST", "REASON_AGENT_RESTARTED", "Task launched during agent restart")
            stream.send({"type": "SUBSCRIBED", "subscribed": {
                "executor_info": self.executor_info, "framework_info": self.framework_info(),
                "agent_info": {"hostname": "localhost", "port": self.port, "id": {"value": self.agent_id},
                               "resources": [], "attributes": []},
                "container_id": {"value": self.container_id}}})
            for st in deferred:
                self._send_ack(st)
            if cleanup:
                stream.send({"type": "SHUTDOWN"})
            pending, self.pending = self.pending, []
            for ev in pending:
                stream.send(ev)
            # acks owed for replayed updates go on the new stream
            for st in list(self.unacked.values()):
                if self.ack_policy == "immediate":
                    self._send_ack(st)
                    self.unacked.pop(st["uuid"], None)
            self.cond.notify_all()
        stream.flush_pending()
        stream.closed.wait()

    def _cancel_timers_of(self, fn: Callable) -> None:
        for t in self._timers:
            if getattr(t, "function", None) == fn:
                t.cancel()

    def _take_update(self, st: dict, via: str) -> None:
        """Status update handling (self.cond held): dedupe by uuid, record, ack per policy."""
        u = st["uuid"]
        tid = st["task_id"]["value"]
        dup = u in self.seen
        self.updates.append({"status": st, "via": via, "at": time.monotonic(), "duplicate": dup})
        if not dup:
            self.seen.add(u)
            t = self.tasks.get(tid)
            if t is None:
                self.violations.append(f"update for unknown task {tid}")
            else:
                prev = t["state"]
                if prev in TERMINAL:
                    self.violations.append(f"{tid}: {st['state']} after terminal {prev}")
                elif st["state"] in ORDER and ORDER[st["state"]] < ORDER.get(prev, 0):
                    self.violations.append(f"{tid}: {st['state']} after {prev}")
                else:
                    t["state"] = st["state"]
        if u in self.acked:
            if dup:
                self._send_ack(st)  # duplicates are re-acknowledged
        else:
            self._ack_per_policy(st)
        self.cond.notify_all()

    def _ack_per_policy(self, st: dict) -> None:
        policy = self.ack_policy
        if policy == "immediate":
            self._send_ack(st)
        elif policy == "drop":
            pass
        elif policy == "manual":
            self.unacked[st["uuid"]] = st
        elif isinstance(policy, tuple) and policy[0] == "delayed":
            self.unacked[st["uuid"]] = st

            def later(u=st["uuid"]):
                self.ack(u)

            self._timer(policy[1], later)

    def _send_ack(self, st: dict) -> None:
        if self._deferred is not None:
            self._deferred.append(st)
            return
        if self.stream is None or self.stream.closed.is_set() or not self.subscribed:
            self.unacked[st["uuid"]] = st  # acked on the next subscription, as a checkpointed agent
            return
        self.acked.add(st["uuid"])
        t = self.tasks.get(st["task_id"]["value"])
        if t is not None:
            t["acked_any"] = True
        self.stream.send({"type": "ACKNOWLEDGED", "acknowledged": {"task_id": st["task_id"], "uuid": st["uuid"]}})

    def _agent_update(self, tid: str, state: str, reason: str, message: str) -> None:
        st = {"task_id": {"value": tid}, "state": state, "reason": reason, "message": message,
              "source": "SOURCE_AGENT"}
        self.agent_updates.append(st)
        self.tasks[tid]["state"] = state
        self.cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    agent: TestAgent

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.agent.cond:
            self.agent.handlers.add(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.agent.cond:
                self.agent.handlers.discard(self)

    def _reply(self, code: int, headers: dict, body: bytes) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_post(self) -> None:
        self._reply(405, {"Allow": "POST"}, b"Expecting 'POST'")

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_post

    def do_POST(self) -> None:
        if self.path not in ("/api/v1/executor", "/slave(1)/api/v1/executor"):
            self._reply(404, {}, b"")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        try:
            result = self.agent.handle(self, body)
        except HTTPError as e:
            with self.agent.cond:
                self.agent.calls.append({"path": self.path, "type": None, "code": e.code, "error": e.message})
            self._reply(e.code, e.headers, e.message.encode())
            return
        if result is None:  # the stream ended
            self.close_connection = True
            return
        self._reply(*result)


# -- task builders for the tests and the benchmark --------------------------------------------------


def busybox(task_id: str, script: str | None = None, *, name: str | None = None, cpus: float = 0.1,
            mem: float = 32, grace: float | None = None, image: str = "busybox", **extra) -> dict:
    """A TaskInfo for a busybox app running ``sh -c script`` (or the image's default command)."""
    task: dict = {"task_id": {"value": task_id}, "name": name or task_id,
                  "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                                {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}],
                  "container": {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": image}}}}}
    if script is not None:
        task["command"] = {"shell": True, "value": script}
    if grace is not None:
        task["kill_policy"] = {"grace_period": {"nanoseconds": int(grace * 1e9)}}
    task.update(extra)
    return task
