"""pymesos' ``MesosExecutorDriver`` with its protocol bugs corrected.

pymesos 0.3.15 speaks the v1 executor HTTP API and dispatches events to an ``Executor``; pypod
keeps that (the IO thread, the SUBSCRIBE stream parser, the event dispatch) and overrides, in
this subclass, what pymesos gets wrong against a real agent (``src/executor/executor.cpp`` and
the agent's ``Http::executor`` are the reference):

1. ``MESOS_CHECKPOINT``: pymesos computes ``bool(env["MESOS_CHECKPOINT"])``, so the agent's
   ``"0"`` counts as checkpointing and a non-checkpointed executor keeps reconnecting to a dead
   agent (for a day). Here it is ``== "1"``, as the C++ library does.
2. Unacknowledged updates: pymesos never records the updates it sends, so a re-SUBSCRIBE carries
   ``unacknowledged_updates: []``, and an update sent while the stream is down raises and is
   lost. Here every update is recorded before it is sent and kept until ACKNOWLEDGED; one that
   could not be POSTed is delivered by the next SUBSCRIBE (the agent replays them), or POSTed
   once SUBSCRIBED arrives if that SUBSCRIBE was already on its way, or POSTed again shortly if
   the agent answered with an error (it deduplicates by uuid). Updates are sent one at a time,
   in order. :meth:`wait_acknowledged` lets the executor wait for them before exiting.
3. SHUTDOWN: pymesos calls ``shutdown()`` then aborts the driver at once, so pods that need any
   grace time never get their TASK_KILLED delivered (and it arms ``killpg(0, SIGKILL)``). Here
   SHUTDOWN only tells the executor, which stops its pods within the grace period, sends the
   terminal updates, waits for their acknowledgements and then stops the driver itself.
4. KILL: pymesos drops ``kill.kill_policy`` (the override of the task's grace period). Here
   ``killTask(driver, task_id, kill_policy)`` receives it.
5. Recovery: ``MESOS_RECOVERY_TIMEOUT`` and ``MESOS_SUBSCRIPTION_BACKOFF_MAX`` are ignored by
   pymesos (it backs off 2 s to 15 s and gives up after a day). Here a single recovery timer
   starts at the first disconnection (the executor shuts down when it fires) and every
   reconnection attempt waits a random time in ``[0, MESOS_SUBSCRIPTION_BACKOFF_MAX]``, so the
   executor retries within that bound as the agent requires -- also after a 503 ("agent has not
   finished recovery"), where pymesos reconnects in a tight loop. A SUBSCRIBE that fails before
   the first SUBSCRIBED is retried (the agent's registration timeout bounds it), never taken as
   a disconnection (which, without checkpointing, shuts the executor down).
6. Threads: pymesos' ``on_close`` (IO thread) closes the call connection without the lock while
   another thread may be inside ``_send`` (``AttributeError: 'NoneType' object has no attribute
   'close'``), and ``_send`` shares a mutable default ``headers={}``. Here both happen under the
   driver's lock, with fresh headers per call.
7. Non-checkpointed disconnection and SHUTDOWN never ``killpg(0, SIGKILL)`` the executor's
   process group (fatal for whatever started the executor without a new session); the executor
   exits by itself once its pods are stopped.
8. pymesos ``assert``s on a duplicate task id in LAUNCH/LAUNCH_GROUP, which kills its IO thread;
   here the duplicate is logged and dropped.

Also: ``MESOS_EXECUTOR_AUTHENTICATION_TOKEN`` is sent as ``Authorization: Bearer`` (pymesos has
no executor authentication), and status timestamps keep sub-second precision.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Mapping

from . import http_parser as _http_parser

_http_parser.install()

from pymesos import MesosExecutorDriver  # noqa: E402
from pymesos.utils import DAY, decode_data, encode_data, parse_duration  # noqa: E402

log = logging.getLogger("pypod.mesos")

DEFAULT_RECOVERY_TIMEOUT = 15 * 60.0  # the agent's --recovery_timeout default
DEFAULT_BACKOFF_MAX = 2.0  # the agent's --executor_reregistration_timeout default
DEFAULT_SHUTDOWN_GRACE = 5.0  # the agent's --executor_shutdown_grace_period default


def duration(env: Mapping[str, str], name: str, default: float) -> float:
    """A stout duration (``5secs``, ``15mins``, ``500ms``) from the environment."""
    value = env.get(name)
    if not value:
        return default
    try:
        return parse_duration(value)
    except (AssertionError, ValueError):
        log.warning("%s=%r is not a duration; using %ss", name, value, default)
        return default


class PodExecutorDriver(MesosExecutorDriver):
    """The executor driver (see the module docstring for what differs from pymesos)."""

    def __init__(self, executor: Any, env: Mapping[str, str] | None = None, http_timeout: float = 10):
        env = os.environ if env is None else env
        super().__init__(executor, use_addict=False, timeout=DAY, http_timeout=http_timeout)
        self.checkpoint = env.get("MESOS_CHECKPOINT") == "1"  # fix 1
        self.grace_shutdown_period = duration(env, "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", DEFAULT_SHUTDOWN_GRACE)
        self.recovery_timeout = duration(env, "MESOS_RECOVERY_TIMEOUT", DEFAULT_RECOVERY_TIMEOUT)
        self.backoff_max = duration(env, "MESOS_SUBSCRIPTION_BACKOFF_MAX", DEFAULT_BACKOFF_MAX)
        self.token = env.get("MESOS_EXECUTOR_AUTHENTICATION_TOKEN")
        self.updates: "OrderedDict[uuid.UUID, dict]" = OrderedDict()  # unacknowledged, in send order
        self._unsent: set[uuid.UUID] = set()  # recorded, but the agent has not taken them yet
        self._in_subscribe: set[uuid.UUID] = set()  # carried by the SUBSCRIBE in flight
        self._ulock = threading.Condition()  # guards updates, _unsent, _in_subscribe, tasks
        self._send_lock = threading.Lock()  # one update on the wire at a time, in order
        self._recovery_timer: threading.Timer | None = None
        self._retry_timer: threading.Timer | None = None
        self._stopping = False
        self.subscribed = threading.Event()
        self.subscriptions = 0

    # -- SUBSCRIBE ------------------------------------------------------------------------------
    def gen_request(self) -> bytes:
        """The SUBSCRIBE request, with what is still unacknowledged (fix 2)."""
        with self._ulock:
            updates = list(self.updates.values())
            self._in_subscribe = set(self.updates)
            tasks = list(self.tasks.values())
        body = json.dumps({
            "type": "SUBSCRIBE", "framework_id": self.framework_id, "executor_id": self.executor_id,
            "subscribe": {"unacknowledged_tasks": tasks, "unacknowledged_updates": updates}})
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        head = (f"POST /api/v1/executor HTTP/1.1\r\nHost: {self.master}\r\n"
                f"Content-Type: application/json\r\nAccept: application/json\r\n{auth}"
                f"Connection: close\r\nContent-Length: {len(body.encode())}\r\n\r\n")
        return head.encode() + body.encode()

    def on_subscribed(self, info: dict) -> None:
        self._cancel_recovery_timer()
        with self._ulock:
            self._unsent -= self._in_subscribe  # the agent replays what the SUBSCRIBE carried
            self._in_subscribe = set()
            left = bool(self._unsent)
        self.subscriptions += 1
        self.subscribed.set()
        super().on_subscribed(info)
        if left:  # recorded after that SUBSCRIBE was written: POST them now (in order)
            threading.Thread(target=self._flush, name="mesos-flush", daemon=True).start()

    def _backoff(self, num_conn_retry: int) -> float:  # fix 5
        return random.uniform(0, self.backoff_max)

    # -- disconnection and recovery ---------------------------------------------------------------
    def on_close(self) -> None:  # fixes 1, 5, 6, 7
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self.subscribed.clear()
        if self._stopping or self.aborted:
            return
        if self.subscriptions == 0:  # not subscribed yet (refused, or the agent answered 503): retry
            log.warning("could not subscribe to the agent at %s yet: retrying", self.master)
            time.sleep(random.uniform(0, self.backoff_max))
            return
        log.warning("disconnected from the agent at %s", self.master)
        self.executor.disconnected(self)
        if not self.checkpoint:
            log.warning("framework not checkpointing: shutting down")
            self.executor.shutdown(self, reason="disconnected")
            return
        with self._lock:
            if self._recovery_timer is None:
                self._recovery_timer = threading.Timer(self.recovery_timeout, self._recovery_expired)
                self._recovery_timer.daemon = True
                self._recovery_timer.start()
        time.sleep(random.uniform(0, self.backoff_max))  # before the next attempt (the IO loop)

    def _recovery_expired(self) -> None:
        log.error("the agent did not come back within MESOS_RECOVERY_TIMEOUT (%ss): shutting down",
                  self.recovery_timeout)
        self.executor.shutdown(self, reason="recovery timeout")

    def _cancel_recovery_timer(self) -> None:
        with self._lock:
            t, self._recovery_timer = self._recovery_timer, None
        if t is not None:
            t.cancel()

    # -- events -------------------------------------------------------------------------------
    def on_launch(self, event: dict) -> None:  # fix 8
        task = event["task"]
        with self._ulock:
            if task["task_id"]["value"] in self.tasks:
                log.error("LAUNCH of task %s that this executor already has: ignored", task["task_id"]["value"])
                return
            self.tasks[task["task_id"]["value"]] = task
        self.executor.launchTask(self, task)

    def on_launch_group(self, event: dict) -> None:  # fix 8
        tasks = event["task_group"]["tasks"]
        with self._ulock:
            dup = [t["task_id"]["value"] for t in tasks if t["task_id"]["value"] in self.tasks]
            if dup:
                log.error("LAUNCH_GROUP with tasks this executor already has (%s): ignored", ", ".join(dup))
                return
            for t in tasks:
                self.tasks[t["task_id"]["value"]] = t
        self.executor.launchTaskGroup(self, tasks)

    def on_kill(self, event: dict) -> None:  # fix 4
        self.executor.killTask(self, event["task_id"], event.get("kill_policy"))

    def on_acknowledged(self, event: dict) -> None:
        u = uuid.UUID(bytes=decode_data(event["uuid"]))
        with self._ulock:
            self.updates.pop(u, None)
            self._unsent.discard(u)
            self.tasks.pop(event["task_id"]["value"], None)
            self._ulock.notify_all()
        ack = getattr(self.executor, "acknowledged", None)
        if ack is not None:
            ack(self, event["task_id"]["value"], u)

    def on_shutdown(self) -> None:  # fixes 3, 7
        self.executor.shutdown(self, reason="SHUTDOWN")

    # -- calls --------------------------------------------------------------------------------
    def _send(self, body: Any, path: str = "/api/v1/executor", method: str = "POST",
              headers: dict | None = None) -> dict:  # fix 6
        headers = dict(headers or {})
        with self._lock:
            conn = self._get_conn()
            if conn is None:
                raise ConnectionError("not subscribed to the agent")
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except Exception:
                if self._conn is conn:
                    self._conn = None
                conn.close()
                raise
        if not 200 <= resp.status < 300:
            raise ConnectionError(f"agent answered {resp.status}: {payload[:200]!r}")
        try:
            return json.loads(payload) if payload else {}
        except ValueError:
            return {}

    def sendStatusUpdate(self, status: dict) -> None:  # fix 2
        status = dict(status)
        status.setdefault("uuid", encode_data(uuid.uuid4().bytes))
        status.setdefault("timestamp", time.time())
        status.setdefault("source", "SOURCE_EXECUTOR")
        status.setdefault("executor_id", self.executor_id)
        u = uuid.UUID(bytes=decode_data(status["uuid"]))
        with self._send_lock:
            with self._ulock:
                self.updates[u] = {"status": status}
                self._unsent.add(u)
            self._flush_locked()

    def _flush(self) -> None:
        with self._send_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """POST every recorded update the agent has not taken yet, oldest first; stop at the first
        failure (the rest wait for the next SUBSCRIBE, which carries them all)."""
        while True:
            with self._ulock:
                pending = [(u, self.updates[u]) for u in self.updates if u in self._unsent
                           and u not in self._in_subscribe]
            if not pending:
                return
            u, update = pending[0]
            body = {"type": "UPDATE", "framework_id": self.framework_id, "executor_id": self.executor_id,
                    "update": update}
            try:
                self._send(body)
            except Exception as e:
                st = update["status"]
                log.warning("update %s %s kept for the next SUBSCRIBE: %s", st["task_id"]["value"], st["state"], e)
                if self.subscribed.is_set():  # the agent is there but did not take it: try again
                    self._retry_later()
                return
            with self._ulock:
                self._unsent.discard(u)

    def _retry_later(self) -> None:
        with self._ulock:
            if self._retry_timer is not None and self._retry_timer.is_alive():
                return
            self._retry_timer = threading.Timer(random.uniform(0.5, 1.0) * max(self.backoff_max, 1.0), self._flush)
            self._retry_timer.daemon = True
            self._retry_timer.start()

    def sendFrameworkMessage(self, data: str) -> None:
        self._send({"type": "MESSAGE", "framework_id": self.framework_id, "executor_id": self.executor_id,
                    "message": {"data": data}})

    # -- for the executor ---------------------------------------------------------------------
    def unacknowledged(self) -> list[dict]:
        with self._ulock:
            return [u["status"] for u in self.updates.values()]

    def wait_acknowledged(self, timeout: float) -> bool:
        """Wait until every update sent was acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._ulock:
            while self.updates:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ulock.wait(min(left, 0.5))
            return True

    def stop(self) -> None:
        self._stopping = True
        self._cancel_recovery_timer()
        super().stop()
