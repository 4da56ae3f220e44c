"""A Mesos master façade over the test agent, for frameworks built on pymesos' scheduler driver.

It serves what ``pymesos.MesosSchedulerDriver`` uses of the v1 scheduler API (``GET /version``,
``POST /api/v1/scheduler``): SUBSCRIBE (a chunked RecordIO stream with ``Mesos-Stream-Id``,
SUBSCRIBED with ``heartbeat_interval_seconds``, then one offer of the agent's resources), ACCEPT
with LAUNCH or LAUNCH_GROUP operations (the executor is started through :class:`TestAgent` with the
ExecutorInfo's command, as an agent would: ``sh -c`` in the sandbox with the agent's
environment), DECLINE, KILL, ACKNOWLEDGE, RECONCILE, REVIVE, SUPPRESS and TEARDOWN. Calls other than
SUBSCRIBE must carry the stream id (400 otherwise, as the master). Status updates go to the
framework as UPDATE events one at a time per task, the next only after the framework
acknowledged the previous (the agent's status update manager); the agent acknowledges the
executor itself, independently of the framework, as a real agent does.
"""

from __future__ import annotations

import json
import threading
import time
import uuid as uuid_mod
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable

from mesos_agent import EXECUTOR_BIN, HTTPError, Stream, TestAgent, _Server


class TestMaster:
    __test__ = False

    def __init__(self, make_agent: Callable[..., TestAgent], *, cpus: float = 4, mem: float = 4096,
                 disk: float = 10000):
        self.make_agent = make_agent
        self.resources = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}},
                          {"name": "disk", "type": "SCALAR", "scalar": {"value": disk}}]
        self.cond = threading.Condition()
        self.server: _Server | None = None
        self.stream: Stream | None = None
        self.stream_id: str | None = None
        self.framework: dict | None = None
        self.framework_id = "fw-" + uuid_mod.uuid4().hex[:8]
        self.agent_id = "agent-" + uuid_mod.uuid4().hex[:8] + "-S0"
        self.agents: dict[str, TestAgent] = {}  # executor_id -> agent running it
        self.calls: list[dict] = []
        self.torn_down = False
        self._waiting: dict[str, str] = {}  # task_id -> uuid the framework has to acknowledge
        self._offered = False
        self._stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "TestMaster":
        master = self

        class Handler(_MasterHandler):
            pass

        Handler.master = master
        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        threading.Thread(target=self._forward_loop, daemon=True).start()
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self._stop.set()
        if self.stream is not None:
            self.stream.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- the scheduler API -------------------------------------------------------------------------
    def handle(self, handler: "_MasterHandler", body: bytes) -> tuple[int, dict, bytes] | None:
        if handler.headers.get("Content-Type") != "application/json":
            raise HTTPError(415, "Expecting 'Content-Type' of application/json")
        try:
            call = json.loads(body)
        except ValueError as e:
            raise HTTPError(400, f"Failed to parse body into JSON: {e}")
        t = call.get("type")
        with self.cond:
            self.calls.append({"type": t, "at": time.monotonic()})
        if t == "SUBSCRIBE":
            self._subscribe(handler, call["subscribe"]["framework_info"])
            return None
        if handler.headers.get("Mesos-Stream-Id") != self.stream_id or self.stream_id is None:
            raise HTTPError(400, "The stream ID included in this request didn't match the stream ID currently "
                                 "associated with framework ID")
        if (call.get("framework_id") or {}).get("value") != self.framework_id:
            raise HTTPError(400, "Framework cannot be found")
        if t == "ACCEPT":
            for op in call["accept"].get("operations") or []:
                self._operation(op)
        elif t == "ACKNOWLEDGE":
            ack = call["acknowledge"]
            with self.cond:
                if self._waiting.get(ack["task_id"]["value"]) == ack["uuid"]:
                    del self._waiting[ack["task_id"]["value"]]
                self.cond.notify_all()
        elif t == "KILL":
            tid = call["kill"]["task_id"]["value"]
            for agent in list(self.agents.values()):
                if tid in agent.tasks:
                    agent.kill(tid, None)
        elif t == "TEARDOWN":
            self.torn_down = True
            for agent in list(self.agents.values()):
                if agent.proc is not None and agent.proc.poll() is None:
                    agent.shutdown()
        elif t not in ("DECLINE", "RECONCILE", "REVIVE", "SUPPRESS", "MESSAGE"):
            raise HTTPError(400, f"Unsupported call {t}")
        return 202, {}, b""

    def _subscribe(self, handler: "_MasterHandler", framework: dict) -> None:
        stream = Stream(handler, "plain")
        self.stream_id = str(uuid_mod.uuid4())
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Mesos-Stream-Id", self.stream_id)
        handler.end_headers()
        handler.wfile.flush()
        with self.cond:
            self.framework = framework
            self.stream = stream
            stream.send({"type": "SUBSCRIBED", "subscribed": {
                "framework_id": {"value": self.framework_id}, "heartbeat_interval_seconds": 15,
                "master_info": {"id": "master-1", "ip": 16777343, "port": 5050, "hostname": "localhost",
                                "version": "1.11.0"}}})
            if not self._offered:
                self._offered = True
                stream.send({"type": "OFFERS", "offers": {"offers": [{
                    "id": {"value": "offer-1"}, "framework_id": {"value": self.framework_id},
                    "agent_id": {"value": self.agent_id}, "hostname": "localhost",
                    "resources": self.resources}]}})
        stream.closed.wait()

    def _operation(self, op: dict) -> None:
        if op.get("type") == "LAUNCH_GROUP":
            lg = op["launch_group"]
            executor = lg["executor"]
            tasks = lg["task_group"]["tasks"]
            for t in tasks:
                if (t.get("container") or {}).get("type") == "DOCKER":
                    raise HTTPError(400, "Docker ContainerInfo is not supported on the task")
                t["executor"] = executor
            self._agent_for(executor).launch_group(tasks)
        elif op.get("type") == "LAUNCH":
            for t in op["launch"]["task_infos"]:
                if "executor" not in t:
                    raise HTTPError(400, "this façade runs custom executors only (TaskInfo.executor)")
                self._agent_for(t["executor"]).launch(t)
        else:
            raise HTTPError(400, f"unsupported operation {op.get('type')}")

    def _agent_for(self, executor: dict) -> TestAgent:
        eid = executor["executor_id"]["value"]
        with self.cond:
            agent = self.agents.get(eid)
        if agent is not None:
            return agent
        executor = dict(executor, framework_id={"value": self.framework_id})
        fw = self.framework or {}
        caps = tuple(c["type"] for c in fw.get("capabilities") or [])
        agent = self.make_agent(framework_id=self.framework_id, executor_id=eid, executor_info=executor,
                                checkpoint=bool(fw.get("checkpoint")), capabilities=caps)
        cmd = executor.get("command") or {}
        if cmd.get("shell", True):
            argv = ["/bin/sh", "-c", cmd["value"]]
        else:
            argv = [cmd["value"], *(cmd.get("arguments") or [])[1:]]
        path = str(Path(EXECUTOR_BIN).parent)
        agent.extra_env["PATH"] = path + ":" + agent.env().get("PATH", "/usr/bin:/bin")
        with self.cond:
            self.agents[eid] = agent
        agent.launch_executor(argv)
        return agent

    # -- updates to the framework -------------------------------------------------------------------
    def _forward_loop(self) -> None:
        forwarded: set[str] = set()
        agent_made_sent: dict[str, int] = {}
        while not self._stop.is_set():
            sent = False
            for eid, agent in list(self.agents.items()):
                with agent.cond:
                    updates = [u["status"] for u in agent.updates if not u["duplicate"]]
                    agent_made = list(agent.agent_updates)
                blocked: set[str] = set()
                for st in updates:
                    tid = st["task_id"]["value"]
                    if st["uuid"] in forwarded:
                        continue
                    with self.cond:
                        if tid in blocked or tid in self._waiting or self.stream is None:
                            blocked.add(tid)  # one update in flight per task, in order
                            continue
                        self._waiting[tid] = st["uuid"]
                        forwarded.add(st["uuid"])
                        self.stream.send({"type": "UPDATE", "update": {"status": dict(
                            st, agent_id={"value": self.agent_id})}})
                        sent = True
                for st in agent_made[agent_made_sent.get(eid, 0):]:  # no uuid: nothing to acknowledge
                    agent_made_sent[eid] = agent_made_sent.get(eid, 0) + 1
                    with self.cond:
                        if self.stream is not None:
                            self.stream.send({"type": "UPDATE", "update": {"status": dict(
                                st, agent_id={"value": self.agent_id})}})
            if not sent:
                with self.cond:
                    self.cond.wait(0.05)


class _MasterHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    master: TestMaster

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def _reply(self, code: int, headers: dict, body: bytes) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/version":
            self._reply(200, {"Content-Type": "application/json"},
                        json.dumps({"version": "1.11.0", "git_sha": "test-facade"}).encode())
        else:
            self._reply(404, {}, b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if self.path not in ("/api/v1/scheduler", "/master/api/v1/scheduler"):
            self._reply(404, {}, b"")
            return
        try:
            result = self.master.handle(self, body)
        except HTTPError as e:
            self._reply(e.code, e.headers, e.message.encode())
            return
        if result is None:
            self.close_connection = True
            return
        self._reply(*result)
