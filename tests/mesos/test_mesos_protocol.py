"""No pods, no root: the HTTP parser pymesos runs on, the test agent's answers (the real agent's
status codes, so that a wrong call from the executor would show in the scenario tests), and the
TaskInfo -> manifest mapping."""

from __future__ import annotations

import base64
import http.client
import json
import random
import uuid

import pytest

import pypod.mesos  # noqa: F401  (registers the http_parser stand-in)
from mesos_agent import TestAgent, busybox
from pypod.mesos import mapping
from pypod.mesos.http_parser import HttpParser


# -- the http_parser stand-in -------------------------------------------------------------------------


def _records(events: list[dict]) -> bytes:
    out = b""
    for ev in events:
        data = json.dumps(ev).encode()
        out += str(len(data)).encode() + b"\n" + data
    return out


def test_pymesos_imports_the_stand_in() -> None:
    from http_parser.http import HttpParser as Imported
    import pymesos.process

    assert Imported is HttpParser and pymesos.process.HttpParser is HttpParser


@pytest.mark.parametrize("seed", range(5))
def test_chunked_stream_split_anywhere(seed: int) -> None:
    rnd = random.Random(seed)
    events = [{"type": "SUBSCRIBED", "n": i, "pad": "x" * rnd.randint(0, 300)} for i in range(20)]
    body = _records(events)
    pieces, i = [], 0
    while i < len(body):  # chunks cut at random, unrelated to record boundaries
        n = rnd.randint(1, 97)
        pieces.append(body[i:i + n])
        i += n
    wire = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
            b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces))
    p = HttpParser()
    got = b""
    pos = 0
    while pos < len(wire):  # and fed in reads of other random sizes
        n = rnd.randint(1, 200)
        buf = wire[pos:pos + n]
        assert p.execute(buf, len(buf)) == len(buf)
        pos += n
        if p.is_partial_body():
            got += p.recv_body()
    assert p.is_headers_complete() and p.get_status_code() == 200 and p.is_chunked()
    assert not p.is_message_complete()
    assert got == body
    end = b"0\r\n\r\n"
    assert p.execute(end, len(end)) == len(end) and p.is_message_complete()


def test_errors_and_plain_responses() -> None:
    p = HttpParser()
    resp = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nMesos-Stream-Id: abc\r\n\r\nbusy!"
    assert p.execute(resp, len(resp)) == len(resp)
    assert p.get_status_code() == 503 and not p.is_chunked() and p.is_message_complete()
    assert {k.upper(): v for k, v in p.get_headers().items()}["MESOS-STREAM-ID"] == "abc"
    assert p.recv_body() == b"busy!"
    bad = HttpParser()
    junk = b"NOT HTTP AT ALL\r\n\r\n"
    assert bad.execute(junk, len(junk)) == 0 and bad.get_errno() != 0


# -- the test agent answers as the real agent ----------------------------------------------------------


@pytest.fixture
def agent(tmp_path):
    a = TestAgent(tmp_path / "sandbox").start()
    yield a
    a.close()


def _post(agent: TestAgent, body, headers=None, method="POST", path="/api/v1/executor"):
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers if headers is not None else
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    out = (r.status, r.read(), dict(r.getheaders()))
    conn.close()
    return out


def _update(agent: TestAgent, **status) -> dict:
    st = {"task_id": {"value": "t"}, "state": "TASK_RUNNING", "source": "SOURCE_EXECUTOR",
          "uuid": base64.b64encode(uuid.uuid4().bytes).decode()}
    st.update(status)
    return {"type": "UPDATE", "framework_id": {"value": agent.framework_id},
            "executor_id": {"value": agent.executor_id}, "update": {"status": st}}


def test_agent_status_codes(agent: TestAgent) -> None:
    ids = {"framework_id": {"value": agent.framework_id}, "executor_id": {"value": agent.executor_id}}
    code, _, headers = _post(agent, b"", method="GET")
    assert code == 405 and headers["Allow"] == "POST"
    assert _post(agent, {"type": "HEARTBEAT"}, headers={})[0] == 400  # no Content-Type
    assert _post(agent, {"type": "HEARTBEAT"}, headers={"Content-Type": "application/json; charset=utf-8"})[0] == 415
    assert _post(agent, b"{not json")[0] == 400
    assert _post(agent, {"type": "HEARTBEAT", "framework_id": {"value": "x"}, "executor_id": {"value": "y"}})[0] == 202
    assert _post(agent, dict(ids, type="MESSAGE", message={"data": ""}))[0] == 403  # not subscribed
    assert _post(agent, {"type": "MESSAGE", "message": {"data": ""}})[0] == 400  # no ids
    assert _post(agent, dict(ids, type="SUBSCRIBE"))[0] == 400  # no subscribe
    assert _post(agent, dict(_update(agent), framework_id={"value": "other"}))[0] == 400  # unknown framework
    # the executor-http-api doc's example uuid is a 37-byte string: a real agent rejects it
    doc_uuid = "ZDQwZjNmMDYtYjcyNy00NzFhLWI5YTgtNGE2ZjQ1MzM2Zjc1Cg=="
    assert _post(agent, _update(agent, uuid=doc_uuid))[0] == 400
    assert _post(agent, _update(agent, source="SOURCE_AGENT"))[0] == 400
    assert _post(agent, _update(agent, state="TASK_STAGING"))[0] == 400
    assert _post(agent, _update(agent, executor_id={"value": "someone-else"}))[0] == 400
    code, body, _ = _post(agent, dict(ids, type="SUBSCRIBE", subscribe={}), headers={
        "Content-Type": "application/json", "Accept": "application/x-protobuf"})
    assert code == 406


# -- mapping ------------------------------------------------------------------------------------------------


def _plan(tasks, group=True, executor_info=None):
    return mapping.plan_pod(tasks, executor_info, "/sandbox", group=group, framework_id="fw", executor_id="ex")


def test_mapping_command_resources_sandbox_and_volumes() -> None:
    t = busybox("Web.1", "echo hi", cpus=0.25, mem=64)
    t["command"]["environment"] = {"variables": [{"name": "A", "value": "1"}]}
    t["container"]["volumes"] = [{"container_path": "shared", "mode": "RO",
                                  "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "PARENT", "path": "v"}}}]
    keep = busybox("keep", None)
    keep["command"] = {"shell": False, "arguments": ["x", "y"]}
    plan = _plan([t, keep])
    web, kept = plan.manifest.apps
    assert web.name == "web.1" and web.exec == ["/bin/sh", "-c", "echo hi"] and web.env["A"] == "1"
    assert web.resources.cpu == 250 and web.resources.memory == 64 << 20
    assert web.env["MESOS_SANDBOX"] == "/mnt/mesos/sandbox"
    assert [(m.target, m.read_only) for m in web.mounts] == [("/mnt/mesos/sandbox", None),
                                                             ("/mnt/mesos/sandbox/shared", True)]
    assert plan.manifest.volume(web.mounts[0].volume).source == "/sandbox/tasks/Web.1"
    assert plan.manifest.volume(web.mounts[1].volume).source == "/sandbox/v"
    assert kept.exec is None and kept.args == ["x", "y"]
    assert [n.name for n in plan.manifest.networks] == ["host"]
    assert plan.tasks[0].kill_grace == mapping.DEFAULT_KILL_GRACE
    assert plan.manifest.labels == {"mesos.framework": "fw", "mesos.executor": "ex"}
    assert sorted(plan.dirs) == ["/sandbox/tasks/Web.1", "/sandbox/tasks/keep", "/sandbox/v"]


def test_mapping_networks_and_manifest_in_a_label() -> None:
    ex = {"container": {"type": "MESOS", "network_infos": [{"name": "netA", "port_mappings": [
        {"host_port": 8080, "container_port": 80, "protocol": "tcp"}]}]}}
    plan = _plan([busybox("a", "true")], executor_info=ex)
    assert [n.name for n in plan.manifest.networks] == ["netA"]
    assert plan.manifest.ports[0].host_port == 8080
    doc = {"pypodVersion": 1, "kind": "PodManifest", "apps": [
        {"name": "one", "image": "busybox", "exec": ["true"]}, {"name": "two", "image": "busybox", "exec": ["true"]}]}
    t = {"task_id": {"value": "whole"}, "labels": {"labels": [{"key": "pypod.manifest", "value": json.dumps(doc)}]}}
    plan = _plan([t], group=False)
    assert [a.name for a in plan.manifest.apps] == ["one", "two"] and plan.tasks[0].apps == ["one", "two"]
    t = {"task_id": {"value": "data"}, "data": base64.b64encode(json.dumps(doc).encode()).decode()}
    with pytest.raises(mapping.InvalidTask, match="exactly one app"):
        _plan([t], group=True)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("container"), "no image"),
    (lambda t: t["container"]["mesos"]["image"].update(type="APPC"), "APPC"),
    (lambda t: t.update(container={"type": "DOCKER"}), "docker.image"),
    (lambda t: t["command"].update(value=""), "command.value"),
    (lambda t: t["command"].update(uris=[{"value": "http://x"}]), "uris"),
    (lambda t: t.update(task_id={"value": "a/b"}), "invalid task id"),
    (lambda t: t["container"].update(volumes=[{"container_path": "/x", "source": {"type": "SECRET"}}]), "SECRET"),
])
def test_mapping_invalid_tasks(change, message) -> None:
    t = busybox("t", "true")
    change(t)
    with pytest.raises(mapping.InvalidTask, match=message):
        _plan([t], group=False)
