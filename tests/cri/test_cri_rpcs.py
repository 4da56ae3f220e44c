"""RPC semantics critest does not check, through pypod's own stubs: error codes, resource
updates, container events, pulls with credentials."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.root

grpc = pytest.importorskip("grpc")

from pypod.kubelet.proto import cri_pb2 as pb  # noqa: E402
from pypod.kubelet.proto import cri_pb2_grpc as pb_grpc  # noqa: E402

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"


@pytest.fixture(scope="module")
def stubs(cri):
    channel = grpc.insecure_channel(cri.endpoint)
    yield pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)
    channel.close()


@pytest.fixture
def sandbox(stubs):
    rt, im = stubs
    im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=BUSYBOX)))
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="rpcs", uid="rpcs-uid", namespace="default"))
    sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    yield sid, cfg
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))


def _container(rt, sid, cfg, name, **kw) -> str:
    cc = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=BUSYBOX),
                            command=["sleep", "3600"], **kw)
    return rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=cc, sandbox_config=cfg)).container_id


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


def test_unknown_ids_are_not_found(stubs):
    rt, im = stubs
    unknown = "0" * 64
    assert _code(lambda: rt.ContainerStatus(pb.ContainerStatusRequest(container_id=unknown))) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id="00000000-0000-4000-8000-000000000000"))) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: rt.StartContainer(pb.StartContainerRequest(container_id="nope"))) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: rt.ExecSync(pb.ExecSyncRequest(container_id=unknown, cmd=["true"]))) == \
        grpc.StatusCode.NOT_FOUND
    # idempotent: stopping and removing what is not there is fine
    rt.StopContainer(pb.StopContainerRequest(container_id=unknown))
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=unknown))
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="00000000-0000-4000-8000-000000000000"))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id="whatever"))
    # an unknown image is no error, only no image
    assert not im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="registry.k8s.io/nope:1"))).HasField("image")
    im.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="sha256:" + "1" * 64)))


def test_malformed_requests_are_invalid(stubs, sandbox):
    rt, im = stubs
    sid, cfg = sandbox
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()))) == invalid
    assert _code(lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest())) == invalid
    bad = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="x"), image=pb.ImageSpec(image=BUSYBOX))
    bad.linux.security_context.run_as_group.value = 5
    assert _code(lambda: rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=bad))) == invalid
    cid = _container(rt, sid, cfg, "valid")
    assert _code(lambda: rt.ExecSync(pb.ExecSyncRequest(container_id=cid))) == invalid
    assert _code(lambda: rt.Exec(pb.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stderr=True))) == invalid
    assert _code(lambda: im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image="Not A Ref")))) == invalid
    # a second sandbox with the same metadata (a retried RunPodSandbox) is refused
    assert _code(lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg))) == grpc.StatusCode.ALREADY_EXISTS
    # a second container with the same name and attempt is refused
    assert _code(lambda: _container(rt, sid, cfg, "valid")) == grpc.StatusCode.ALREADY_EXISTS
    # an image that was not pulled
    missing = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="m"), image=pb.ImageSpec(image="registry.k8s.io/absent:1"))
    assert _code(lambda: rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=missing))) == \
        grpc.StatusCode.NOT_FOUND


def test_update_container_resources(cri, stubs, sandbox):
    from pypod import config as config_mod
    from pypod.pods.engine import Engine

    rt, _ = stubs
    sid, cfg = sandbox
    cid = _container(rt, sid, cfg, "resources")
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    eng = Engine(config_mod.load(None, cri.config_dir))
    app = next(a.name for a in eng.status(sid).apps)
    rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20, cpu_quota=50000,
                                                           cpu_period=100000)))
    assert eng.stats(sid, app)["memory_limit"] == 96 << 20
    assert eng.pods.get(sid).manifest().app(app).resources.cpu == 500  # kept for a restart
    assert rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", "alive"])).stdout == b"alive\n"


def test_container_events(stubs, sandbox):
    rt, _ = stubs
    sid, cfg = sandbox
    seen: list[tuple[str, int]] = []
    stream = rt.GetContainerEvents(pb.GetEventsRequest())

    def collect():
        try:
            for ev in stream:
                seen.append((ev.container_id, ev.container_event_type))
                assert ev.pod_sandbox_status.id == sid
        except grpc.RpcError:
            pass

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    time.sleep(0.5)  # the stream starts with what happens from now on
    cid = _container(rt, sid, cfg, "events")
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    deadline = time.monotonic() + 10
    want = [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT,
            pb.CONTAINER_DELETED_EVENT]
    while time.monotonic() < deadline and [k for c, k in seen if c == cid][:4] != want:
        time.sleep(0.1)
    stream.cancel()
    assert [k for c, k in seen if c == cid][:4] == want


def test_exec_sync_timeout_kills(stubs, sandbox):
    rt, _ = stubs
    sid, cfg = sandbox
    cid = _container(rt, sid, cfg, "timeout")
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    t0 = time.monotonic()
    assert _code(lambda: rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "4321"], timeout=1))) == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 10
    left = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "pgrep 4321 || ps | grep -c 'sleep 4321'"]))
    assert b"sleep 4321" not in left.stdout


def test_pull_with_credentials(cri, stubs, basic_auth_registry):
    """A registry asking for basic auth: refused without credentials, pulled with them (given as
    user/password and as the base64 ``auth`` form)."""
    import base64

    _, im = stubs
    reg = basic_auth_registry
    cri.stop_server()
    toml = cri.config_dir / "pypod.toml"
    original = toml.read_text()
    toml.write_text(original + f'\n[[registry]]\nprefix = "{reg.host}"\ninsecure = true\n')
    try:
        cri.start_server()
        ref = f"{reg.host}/test/busybox:latest"
        assert _code(lambda: im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))) != grpc.StatusCode.OK
        user, password = reg.credentials.username, reg.credentials.password
        got = im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref),
                                               auth=pb.AuthConfig(username=user, password=password)))
        assert got.image_ref.startswith("sha256:")
        im.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        again = im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref), auth=pb.AuthConfig(auth=auth)))
        assert again.image_ref == got.image_ref
        im.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    finally:
        cri.stop_server()
        toml.write_text(original)
        cri.start_server()


def test_stop_signal(stubs, sandbox):
    """A container asking for SIGQUIT gets it on StopContainer (its trap decides the exit code)."""
    rt, _ = stubs
    sid, cfg = sandbox
    cc = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="quitter"), image=pb.ImageSpec(image=BUSYBOX),
                            command=["sh", "-c", "trap 'exit 7' QUIT; while true; do sleep 0.1; done"],
                            stop_signal=pb.SIGNAL_SIGQUIT)
    cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=cc, sandbox_config=cfg)).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    time.sleep(0.3)
    t0 = time.monotonic()
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=30))
    assert time.monotonic() - t0 < 10  # the trap ran: no wait for the SIGKILL
    st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert (st.state, st.exit_code, st.stop_signal) == (pb.CONTAINER_EXITED, 7, pb.SIGNAL_SIGQUIT)


def test_cgroup_parent(stubs):
    """The kubelet's cgroup parent (cgroupfs names) holds the pod's cgroups."""
    import os
    import secrets

    from pypod.stage1 import cgroups

    rt, im = stubs
    im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=BUSYBOX)))
    parent = f"/pypod-cri-test-{secrets.token_hex(4)}/podabc"
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="cg", uid="cg-uid", namespace="default"),
                              linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent))
    sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    try:
        cid = _container(rt, sid, cfg, "inside")
        rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        layout = cgroups.detect()
        mem = layout.stats_dir("memory", cgroups.pod_path(sid, parent))
        assert mem and os.path.isdir(mem) and any(os.scandir(os.path.join(mem, "apps")))
        stats = rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
        assert stats.memory.usage_bytes.value > 0
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert not cgroups.exists(cgroups.pod_path(sid, parent))
        cgroups.remove(parent.rsplit("/", 1)[0])  # the parent is the caller's (the kubelet's) to remove


def test_devices(stubs, sandbox):
    """A host device node given to a container: there under its name, usable (and nothing else)."""
    rt, _ = stubs
    sid, cfg = sandbox
    cid = _container(rt, sid, cfg, "devices",
                     devices=[pb.Device(host_path="/dev/zero", container_path="/dev/myzero", permissions="rw")])
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    out = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "head -c 3 /dev/myzero | od -An -c"]))
    assert out.exit_code == 0 and out.stdout.split() == [b"\\0", b"\\0", b"\\0"]
    bad = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="nodev"), image=pb.ImageSpec(image=BUSYBOX),
                             devices=[pb.Device(host_path="/dev/not-there", container_path="/dev/x")])
    assert _code(lambda: rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=bad))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    # the refused container left nothing: not listed, and its name is free again
    names = [c.metadata.name for c in rt.ListContainers(pb.ListContainersRequest()).containers]
    assert "nodev" not in names
    bad.ClearField("devices")
    rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=bad))
