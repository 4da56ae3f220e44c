"""The plugin executable as go-plugin launches it: cookie, handshake, services, shutdown, and
the three launches Nomad makes at agent start (shared/reference/nomad.md §1, §4.3)."""

from __future__ import annotations

import os
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nomad_harness import PLUGIN, Plugin, encode, plugin_env
from pypod.nomad.proto import base_pb2, driver_pb2


def test_without_cookie_it_explains_and_exits_1():
    env = {k: v for k, v in plugin_env().items() if k != "NOMAD_PLUGIN_MAGIC_COOKIE"}
    p = subprocess.run([PLUGIN], env=env, capture_output=True, timeout=30)
    assert p.returncode == 1
    assert p.stdout == b""
    assert b"This binary is a plugin. These are not meant to be executed directly." in p.stderr


def test_wrong_protocol_version_is_refused():
    p = subprocess.run([PLUGIN], env=plugin_env(PLUGIN_PROTOCOL_VERSIONS="1"), capture_output=True, timeout=30)
    assert p.returncode == 1 and p.stdout == b""


def test_fingerprint_launch_and_shutdown():
    """Launch 1: handshake → PluginInfo → ConfigSchema → GRPCController.Shutdown."""
    pl = Plugin()
    try:
        assert pl.line.startswith("1|2|unix|/") and pl.line.rstrip("\n").endswith("|grpc")
        info = pl.base.PluginInfo(base_pb2.PluginInfoRequest(), timeout=10)
        assert (info.type, list(info.plugin_api_versions), info.plugin_version, info.name) == \
            (base_pb2.DRIVER, ["v0.1.0"], "0.1.0", "pypod")
        spec = pl.base.ConfigSchema(base_pb2.ConfigSchemaRequest(), timeout=10).spec
        attrs = spec.object.attributes
        assert {"data_dir", "runtime", "default_network", "allowed_caps", "allow_privileged",
                "allow_host_volumes", "image_pull_timeout", "gc"} <= set(attrs)
        for name, s in attrs.items():  # hcldec rejects attrs without a name and empty types
            inner = s.default.primary if s.HasField("default") else s
            if inner.HasField("Attr"):
                assert inner.Attr.name == name and inner.Attr.type
        health = health_pb2_grpc.HealthStub(pl.channel).Check(health_pb2.HealthCheckRequest(service="plugin"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert pl.shutdown() < 2.0
        assert not os.path.exists(pl.address)
    finally:
        pl.kill()
    logs = pl.logs()
    assert logs and all({"@level", "@message", "@timestamp"} <= set(x) for x in logs)
    ts = logs[0]["@timestamp"]  # hclog's layout: six fraction digits
    assert len(ts.split(".")[1]) == len("000000Z"), ts


def test_validation_launch_set_config_twice(agent_config):
    """Launch 2: SetConfig twice without nomad_config, then Shutdown."""
    pl = Plugin()
    try:
        pl.set_config(agent_config, nomad=False)
        pl.set_config(agent_config, nomad=False)
        assert pl.shutdown() < 2.0
    finally:
        pl.kill()


def test_set_config_errors_name_the_field():
    pl = Plugin()
    try:
        spec = pl.base.ConfigSchema(base_pb2.ConfigSchemaRequest()).spec
        for values, field in (({"runtime": "kata"}, "runtime"), ({"allow_privileged": "yes"}, "allow_privileged"),
                              ({"no_such_option": True}, "no_such_option")):
            with pytest.raises(grpc.RpcError) as e:
                pl.base.SetConfig(base_pb2.SetConfigRequest(msgpack_config=encode(spec, values)))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in e.value.details()
    finally:
        pl.shutdown()


def test_long_lived_launch(agent_config):
    """Launch 3: SetConfig with nomad_config, Init, then Fingerprint (first message at once,
    HEALTHY), TaskEvents, StreamStdio and StartStream held open; Shutdown still exits at once."""
    pl = Plugin()
    try:
        pl.set_config(agent_config)
        pl.driver.Init(driver_pb2.InitRequest(), timeout=10)
        t = time.monotonic()
        fps = pl.driver.Fingerprint(driver_pb2.FingerprintRequest())
        fp = next(fps)
        assert time.monotonic() - t < 10
        assert fp.health == driver_pb2.FingerprintResponse.HEALTHY, fp.health_description
        assert fp.health_description == "Healthy"
        assert fp.attributes["driver.pypod"].bool_val is True
        assert fp.attributes["driver.pypod.version"].string_val == "0.1.0"
        assert fp.attributes["driver.pypod.runtime"].string_val in ("crun", "runc")
        events = pl.driver.TaskEvents(driver_pb2.TaskEventsRequest())
        stdio = pl.stdio.StreamStdio(__import__("google.protobuf.empty_pb2", fromlist=["Empty"]).Empty())
        broker = pl.broker.StartStream(iter(()))
        caps = pl.driver.Capabilities(driver_pb2.CapabilitiesRequest()).capabilities
        assert caps.send_signals and caps.exec and caps.fs_isolation == driver_pb2.DriverCapabilities.IMAGE
        M = driver_pb2.NetworkIsolationSpec
        assert set(caps.network_isolation_modes) == {M.HOST, M.GROUP, M.TASK} and caps.must_create_network
        # streams are open: none has ended
        for s in (fps, events, stdio):
            assert s.running() or not s.done()
        assert pl.shutdown() < 2.0
        for s in (fps, events, stdio, broker):
            s.cancel()
    finally:
        pl.kill()


def test_survives_broken_pipes_and_sigint(agent_config):
    """The agent died: stdout and stderr are broken pipes, a Ctrl-C reached the process group."""
    pl = Plugin(drain=False)
    try:
        pl.proc.stdout.close()
        pl.proc.stderr.close()
        os.kill(pl.pid, 2)  # SIGINT
        time.sleep(0.2)
        for _ in range(3):  # each call logs to the broken stderr
            pl.set_config(agent_config)
            assert pl.base.PluginInfo(base_pb2.PluginInfoRequest(), timeout=10).name == "pypod"
        assert pl.proc.poll() is None
        assert pl.shutdown() < 2.0
    finally:
        pl.kill()
