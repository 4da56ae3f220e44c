"""pypod-cri's pieces that need no root: ids, CRI -> manifest translation, SPDY and WebSocket
framing, the generated stubs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="the cri extra (grpcio, protobuf) is not installed")

from pypod.errors import UsageError  # noqa: E402
from pypod.kubelet import ids, mapping, spdy, streaming, websocket  # noqa: E402
from pypod.kubelet.proto import cri_pb2 as pb  # noqa: E402
from pypod.pods.manifest import PodManifest  # noqa: E402


# -- ids --------------------------------------------------------------------------------------------

def test_container_ids_round_trip():
    uuid = "0f7dc727-7e54-445e-bfa4-5d10a17c246e"
    cid = ids.container_id(uuid, "web-0")
    assert len(cid) == 64 and cid.endswith(uuid.replace("-", ""))
    assert ids.split_container_id(cid) == (uuid, ids.app_hash(uuid, "web-0"))
    assert ids.container_id(uuid, "web-1")[:13] != cid[:13]  # crictl's short ids differ
    assert ids.split_container_id("abc") is None
    assert ids.split_container_id("Z" * 64) is None


@pytest.mark.parametrize("name,attempt", [("web", 0), ("Web_Server", 3), ("x" * 80, 1),
                                          ("container-for-create-test-" + "0123abcd-" * 4, 0), ("---", 2)])
def test_app_names_are_valid_and_distinct(name, attempt):
    from pypod.pods.manifest import _NAME_RE

    app = ids.app_name(name, attempt)
    assert _NAME_RE.fullmatch(app), app
    assert app.endswith(f"-{attempt}")
    assert ids.app_name(name, attempt + 1) != app


def test_truncated_names_stay_distinct():
    a, b = "n" * 70 + "a", "n" * 70 + "b"
    assert ids.app_name(a, 0) != ids.app_name(b, 0)


# -- mapping ----------------------------------------------------------------------------------------

def _sandbox_config(**kw) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="ns", attempt=2),
                              hostname="h1", log_directory="/var/log/pods/x", labels={"a": "b"},
                              annotations={"k": "v"}, **kw)
    return cfg


def test_sandbox_manifest():
    cfg = _sandbox_config(dns_config=pb.DNSConfig(servers=["10.10.10.10"], searches=["google.com"],
                                                  options=["ndots:8"]),
                          port_mappings=[pb.PortMapping(container_port=80, host_port=12000),
                                         pb.PortMapping(container_port=53, protocol=pb.UDP)])
    cfg.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    m = mapping.sandbox_manifest(cfg, network="default")
    m.validate()
    assert m.mutable and m.hostname == "h1" and m.networks[0].name == "default"
    assert m.dns.servers == ["10.10.10.10"] and m.dns.search == ["google.com"] and m.dns.options == ["ndots:8"]
    assert [(p.container_port, p.protocol, p.host_port) for p in m.ports] == [(80, "tcp", 12000), (53, "udp", 0)]
    assert m.pid_mode == "app" and m.ipc_mode == "pod"
    assert m.isolators == {"sysctl": {"kernel.shm_rmid_forced": "1"}}
    assert mapping.visible(m.annotations) == {"k": "v"} and m.labels == {"a": "b"}
    meta = mapping.meta_of(m.annotations)
    assert mapping.sandbox_metadata(meta) == cfg.metadata
    assert meta["logDirectory"] == "/var/log/pods/x"
    # through JSON, as it is stored
    again = PodManifest.from_json(m.to_json())
    assert mapping.meta_of(again.annotations) == meta


def test_host_network_sandbox_drops_port_mappings():
    cfg = _sandbox_config(port_mappings=[pb.PortMapping(container_port=80, host_port=80)])
    cfg.linux.security_context.namespace_options.network = pb.NODE
    cfg.linux.security_context.namespace_options.ipc = pb.NODE
    cfg.linux.security_context.namespace_options.pid = pb.NODE
    m = mapping.sandbox_manifest(cfg, network="default")
    m.validate()
    assert [n.name for n in m.networks] == ["host"] and not m.ports and m.hostname is None
    assert (m.pid_mode, m.ipc_mode) == ("host", "host")


def test_sandbox_needs_a_name():
    with pytest.raises(mapping.Invalid):
        mapping.sandbox_manifest(pb.PodSandboxConfig(), network="default")


def _container(**kw) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c", attempt=1),
                              image=pb.ImageSpec(image="busybox"), **kw)


def test_container_app(tmp_path):
    host = tmp_path / "data"
    host.mkdir()
    link = tmp_path / "link"
    link.symlink_to(host)
    cfg = _container(command=["sh", "-c"], args=["echo hi"], working_dir="/w",
                     envs=[pb.KeyValue(key="A", value=b"1")], log_path="c/1.log", stdin=True, stdin_once=True,
                     mounts=[pb.Mount(container_path="/data", host_path=str(link), readonly=True,
                                      propagation=pb.PROPAGATION_HOST_TO_CONTAINER)],
                     labels={"l": "1"}, annotations={"x": "y"})
    cfg.linux.resources.memory_limit_in_bytes = 64 << 20
    cfg.linux.resources.cpu_quota = 50000
    cfg.linux.resources.cpu_period = 100000
    cfg.linux.resources.cpu_shares = 512
    cfg.linux.security_context.run_as_user.value = 1000
    cfg.linux.security_context.run_as_group.value = 3000
    cfg.linux.security_context.supplemental_groups.extend([4000])
    app, volumes = mapping.container_app(cfg, {"logDirectory": "/var/log/pods/x"})
    assert app.name == "c-1" and app.exec == ["sh", "-c"] and app.args == ["echo hi"]
    assert app.env == {"A": "1"} and app.working_dir == "/w"
    assert (app.user, app.group, app.supplementary_gids) == ("1000", "3000", [4000])
    assert app.log_path == "/var/log/pods/x/c/1.log" and app.stdin and app.stdin_once
    assert (app.resources.memory, app.resources.cpu, app.resources.cpu_shares) == (64 << 20, 500, 512)
    assert [(v.source, v.propagation) for v in volumes] == [(str(host), "rslave")]  # the symlink resolved
    assert app.mounts[0].target == "/data" and app.mounts[0].read_only is True
    assert app.isolators == {"seccomp": "unconfined"}  # no profile asked: the CRI's default
    meta = mapping.meta_of(app.annotations)
    assert mapping.container_metadata(meta) == cfg.metadata and meta["mounts"][0]["hostPath"] == str(link)
    m = PodManifest(mutable=True, volumes=volumes, apps=[app])
    m.validate()


def test_container_validation():
    with pytest.raises(mapping.Invalid):
        mapping.container_app(pb.ContainerConfig(image=pb.ImageSpec(image="x")), {})
    cfg = _container()
    cfg.linux.security_context.run_as_group.value = 5
    with pytest.raises(mapping.Invalid, match="run_as_group"):
        mapping.container_app(cfg, {})
    with pytest.raises(mapping.Invalid, match="log_directory"):
        mapping.container_app(_container(log_path="x.log"), {})
    app, _ = mapping.container_app(_container(devices=[pb.Device(host_path="/dev/null", container_path="/dev/x")]), {})
    assert app.isolators["devices"] == [{"hostPath": "/dev/null", "containerPath": "/dev/x", "permissions": "rwm"}]


def test_capabilities():
    from pypod.stage1.spec import DEFAULT_CAPABILITIES

    cap = mapping.capabilities
    assert cap(pb.Capability()) is None
    assert cap(pb.Capability(add_capabilities=["NET_ADMIN"]))["retain"] == [*DEFAULT_CAPABILITIES, "CAP_NET_ADMIN"]
    assert cap(pb.Capability(drop_capabilities=["CHOWN"])) == {"remove": ["CAP_CHOWN"]}
    assert cap(pb.Capability(drop_capabilities=["ALL"])) == {"remove": list(DEFAULT_CAPABILITIES)}
    assert cap(pb.Capability(drop_capabilities=["ALL"], add_capabilities=["SYS_ADMIN"])) == \
        {"retain": ["CAP_SYS_ADMIN"]}
    assert len(cap(pb.Capability(add_capabilities=["ALL"]))["retain"]) > len(DEFAULT_CAPABILITIES)
    with pytest.raises(mapping.Invalid):
        cap(pb.Capability(add_capabilities=["NOT_A_CAP"]))


def test_seccomp(tmp_path):
    def iso(**kw):
        sc = pb.LinuxContainerSecurityContext(**kw)
        return mapping.security_isolators(sc, {}).get("seccomp", "default")

    assert iso() == "unconfined"
    assert iso(seccomp=pb.SecurityProfile()) == "default"  # RuntimeDefault: pypod's profile
    assert iso(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)) == "unconfined"
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                   "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]}))
    got = iso(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(profile)))
    assert got["profile"]["defaultAction"] == "SCMP_ACT_ALLOW"
    assert iso(seccomp_profile_path="runtime/default") == "default"
    with pytest.raises(mapping.Invalid):
        iso(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="rel.json"))


# -- SPDY -------------------------------------------------------------------------------------------

def test_spdy_dictionary_is_the_spdy3_one():
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest().startswith("51d27341373f923f")


def test_header_blocks_round_trip():
    h = {"streamtype": "error", "port": "80", "requestid": "0"}
    assert spdy.decode_headers(spdy.encode_headers(h)) == h
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_headers(b"\x00\x00\x00\x05")


class _Pipe:
    """Both ends of a byte stream in memory: the server's Channel and the test's client."""

    def __init__(self):
        self.to_server = asyncio.StreamReader()
        self.to_client = asyncio.StreamReader()

    async def readexactly(self, n):
        return await self.to_server.readexactly(n)

    async def write(self, data):
        self.to_client.feed_data(data)

    async def write_eof(self):
        self.to_client.feed_eof()

    async def drain_input(self, timeout):
        pass

    async def close(self):
        pass


class _Client:
    """A minimal SPDY/3 client side, written for the test."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)

    def control(self, ftype, flags, payload):
        self.pipe.to_server.feed_data(struct.pack(">HHI", 0x8003, ftype, (flags << 24) | len(payload)) + payload)

    def syn(self, sid, headers, fin=False):
        block = self.deflate.compress(spdy.encode_headers(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.control(spdy.SYN_STREAM, spdy.FLAG_FIN if fin else 0, struct.pack(">IIBB", sid, 0, 0, 0) + block)

    def data(self, sid, data, fin=False):
        self.pipe.to_server.feed_data(struct.pack(">II", sid, ((1 if fin else 0) << 24) | len(data)) + data)

    async def frame(self):
        a, b = struct.unpack(">II", await self.pipe.to_client.readexactly(8))
        payload = await self.pipe.to_client.readexactly(b & 0xFFFFFF)
        if a & 0x80000000:
            ftype = a & 0xFFFF
            if ftype == spdy.SYN_REPLY:
                return "reply", struct.unpack(">I", payload[:4])[0], spdy.decode_headers(self.inflate.decompress(payload[4:]))
            return ftype, b >> 24, payload
        return "data", a, (b >> 24, payload)


def test_spdy_session_streams_ping_and_data():
    async def run():
        pipe = _Pipe()
        seen = []

        async def on_stream(s):
            seen.append(s)

        session = spdy.Session(pipe, on_stream)
        task = asyncio.ensure_future(session.serve())
        c = _Client(pipe)
        c.syn(1, {"streamtype": "stdin"})
        c.syn(3, {"streamtype": "stdout"})
        assert await c.frame() == ("reply", 1, {})
        assert await c.frame() == ("reply", 3, {})
        c.control(spdy.PING, 0, struct.pack(">I", 7))
        assert await c.frame() == (spdy.PING, 0, struct.pack(">I", 7))
        c.data(1, b"hello ")
        c.data(1, b"world", fin=True)
        stdin, stdout = seen
        assert stdin.headers == {"streamtype": "stdin"}
        assert await stdin.read() == b"hello " and await stdin.read() == b"world" and await stdin.read() == b""
        await stdout.write(b"x" * 70000)  # split into DATA frames
        await stdout.close()
        got = b""
        while True:
            kind, sid, (flags, payload) = await c.frame()
            assert (kind, sid) == ("data", 3)
            got += payload
            if flags & 1:
                break
        assert got == b"x" * 70000
        c.data(99, b"?")  # an unknown stream is reset, the session goes on
        kind, _, payload = await c.frame()
        assert kind == spdy.RST_STREAM and struct.unpack(">II", payload) == (99, spdy.RST_INVALID_STREAM)
        await session.close(linger=0.1)
        kind, _, payload = await c.frame()
        assert kind == spdy.GOAWAY
        task.cancel()

    asyncio.run(run())


def test_status_json():
    assert json.loads(streaming.status_json(0, None, ["true"])) == {"metadata": {}, "status": "Success"}
    st = json.loads(streaming.status_json(3, None, ["false"]))
    assert st["reason"] == "NonZeroExitCode" and st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert json.loads(streaming.status_json(None, "boom", None))["message"] == "boom"


def test_resize_lines():
    buf = bytearray()
    assert list(streaming._resize_lines(buf, b'{"Width":80,"Height":24}\n{"Wid')) == [(80, 24)]
    assert list(streaming._resize_lines(buf, b'th":100,"Height":30}\n')) == [(100, 30)]


# -- WebSocket --------------------------------------------------------------------------------------

def test_websocket_accept_key():
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3


def test_websocket_frames():
    async def run():
        reader = asyncio.StreamReader()

        class W:
            def __init__(self):
                self.out = b""

            def write(self, d):
                self.out += d

            async def drain(self):
                pass

        w = W()
        conn = websocket.Connection(reader, w)
        mask = b"\x01\x02\x03\x04"
        payload = b"\x00hello"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        reader.feed_data(bytes([0x82, 0x80 | len(payload)]) + mask + masked)
        assert await conn.recv() == (websocket.BINARY, payload)
        reader.feed_data(bytes([0x89, 0x80]) + mask)  # ping: answered with pong, then EOF
        reader.feed_eof()
        assert await conn.recv() is None
        assert w.out == bytes([0x8A, 0])
        await conn.send_binary(b"\x01" * 300)
        assert w.out[2:6] == bytes([0x82, 126]) + struct.pack(">H", 300)

    asyncio.run(run())


# -- the stubs --------------------------------------------------------------------------------------

def test_committed_stubs_are_generated_from_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    from pypod.kubelet.proto import generate

    for path in generate.generate(tmp_path):
        committed = Path(generate.HERE) / path.name
        assert path.read_bytes() == committed.read_bytes(), f"{path.name} is stale: run python -m pypod.kubelet.proto.generate"


def test_method_paths_are_the_cri_ones():
    from pypod.kubelet.proto import cri_pb2_grpc

    svc = pb.DESCRIPTOR.services_by_name
    assert set(svc) == {"RuntimeService", "ImageService"}
    assert pb.DESCRIPTOR.package == "runtime.v1"
    assert "RunPodSandbox" in svc["RuntimeService"].methods_by_name
    assert hasattr(cri_pb2_grpc, "add_ImageServiceServicer_to_server")
    # field numbers on the wire (a few that a typo would break)
    assert pb.ContainerConfig.DESCRIPTOR.fields_by_name["stop_signal"].number == 18
    assert pb.LinuxContainerSecurityContext.DESCRIPTOR.fields_by_name["run_as_group"].number == 12
    assert pb.ContainerStatus.DESCRIPTOR.fields_by_name["image_id"].number == 17


def test_recursive_read_only_mounts(tmp_path):
    rro = pb.Mount(container_path="/m", host_path=str(tmp_path), readonly=True, recursive_read_only=True)
    app, volumes = mapping.container_app(_container(mounts=[rro]), {})
    assert app.mounts[0].recursive_read_only
    m = PodManifest(mutable=True, volumes=volumes, apps=[app])
    again = PodManifest.from_json(m.to_json())  # validated, and kept through JSON
    assert again.apps[0].mounts[0].recursive_read_only
    for bad in (pb.Mount(container_path="/m", host_path=str(tmp_path), readonly=False, recursive_read_only=True),
                pb.Mount(container_path="/m", host_path=str(tmp_path), readonly=True, recursive_read_only=True,
                         propagation=pb.PROPAGATION_HOST_TO_CONTAINER)):
        with pytest.raises(mapping.Invalid):
            mapping.container_app(_container(mounts=[bad]), {})
    app.mounts[0].read_only = False  # the manifest refuses it as well
    with pytest.raises(UsageError, match="recursiveReadOnly"):
        PodManifest(mutable=True, volumes=volumes, apps=[app]).validate()


def test_stop_signal_names():
    import signal

    assert mapping.signal_name(pb.SIGNAL_RUNTIME_DEFAULT) is None
    assert mapping.signal_name(pb.SIGNAL_SIGQUIT) == "QUIT"
    assert mapping.signal_name(pb.SIGNAL_SIGRTMINPLUS3) == str(signal.SIGRTMIN + 3)
    assert mapping.signal_name(pb.SIGNAL_SIGRTMAX) == str(signal.SIGRTMAX)
    from pypod.stage1 import signal_number

    assert signal_number("QUIT") == signal_number("SIGQUIT") == signal.SIGQUIT == signal_number("3")


def test_user_namespaces():
    def sandbox(**userns):
        cfg = _sandbox_config()
        cfg.linux.security_context.namespace_options.userns_options.CopyFrom(pb.UserNamespace(**userns))
        return mapping.sandbox_manifest(cfg, network="default")

    one = [pb.IDMapping(container_id=0, host_id=1000, length=100000)]
    m = sandbox(mode=pb.POD, uids=one, gids=one)
    m.validate()
    assert m.isolators["privateUsers"] == {"uid": 1000, "gid": 1000, "size": 100000}
    opt = mapping.namespace_option(mapping.meta_of(m.annotations))
    assert opt.userns_options.uids[0].host_id == 1000 and opt.userns_options.mode == pb.POD
    assert "privateUsers" not in sandbox(mode=pb.NODE).isolators
    assert "privateUsers" not in mapping.sandbox_manifest(_sandbox_config(), network="default").isolators
    for bad in (dict(mode=pb.CONTAINER), dict(mode=pb.TARGET), dict(mode=pb.POD),
                dict(mode=pb.POD, uids=one * 2, gids=one * 2),
                dict(mode=pb.POD, uids=[pb.IDMapping(container_id=1, host_id=1000, length=10)],
                     gids=[pb.IDMapping(container_id=1, host_id=1000, length=10)])):
        with pytest.raises(mapping.Invalid):
            sandbox(**bad)
