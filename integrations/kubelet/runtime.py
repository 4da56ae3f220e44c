"""``runtime.v1.RuntimeService`` over the engine: sandboxes are mutable pods, containers apps."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import grpc

import pypod
from pypod import events
from pypod.config import Config
from pypod.errors import Conflict, NotFound, PypodError
from pypod.pods.engine import AppInfo, PodInfo
from pypod.pods.manifest import App, PodManifest
from pypod.pods.state import is_uuid

from . import ids, mapping
from .config import CriConfig
from .mapping import meta_of, visible
from .proto import cri_pb2 as pb
from .proto import cri_pb2_grpc as pb_grpc
from .service import EngineOwner, Fail, log, need, rpc

if TYPE_CHECKING:
    from .streaming import StreamingServer

RUNTIME_NAME = "pypod"
API_VERSION = "v1"
LISTED_STATES = ("running", "exited", "exited-garbage", "garbage")
RRO_RUNTIMES = ("crun",)  # runtimes with the "rro" mount option (crun >= 1.4; runc from 1.2, not Debian's 1.1)


@dataclass
class Sandbox:
    """A CRI pod sandbox as the engine sees it."""

    uuid: str
    info: PodInfo
    manifest: PodManifest
    meta: dict

    @property
    def ready(self) -> bool:
        return self.info.state == "running"

    def app(self, name: str) -> App | None:
        return self.manifest.app(name)


@dataclass
class Ctr:
    sandbox: Sandbox
    app: App
    info: AppInfo
    meta: dict

    @property
    def id(self) -> str:
        return ids.container_id(self.sandbox.uuid, self.app.name)


class RuntimeService(EngineOwner, pb_grpc.RuntimeServiceServicer):
    def __init__(self, config: Config, cri: CriConfig, streaming: "StreamingServer | None" = None):
        super().__init__(config)
        self.cri = cri
        self.streaming = streaming
        self._cpu_samples: dict[str, tuple[int, int]] = {}  # id -> (time ns, cpu ns): usage_nano_cores
        self._samples_lock = threading.Lock()
        self._starting: set[tuple] = set()  # sandboxes being created, by CRI metadata
        self._starting_lock = threading.Lock()

    # -- lookups --------------------------------------------------------------------------------
    def _sandbox_of(self, pod, *, refresh: bool = False) -> Sandbox | None:
        """``pod`` (a :class:`pypod.pods.state.Pod`) as a sandbox, None when it is not a CRI pod."""
        try:
            manifest = pod.manifest()
        except (PypodError, OSError, ValueError):
            return None
        meta = meta_of(manifest.annotations)
        if meta is None:
            return None
        eng = self.engine
        info = eng.status(pod.uuid) if refresh else eng.info(pod)  # refresh: exits no hook recorded yet
        return Sandbox(pod.uuid, info, manifest, meta)

    def sandbox(self, sid: str, *, refresh: bool = True) -> Sandbox:
        """The sandbox ``sid`` names: its id, or (as crictl's short ids) a unique prefix."""
        need(sid, "pod_sandbox_id")
        pod = self.engine.pods.find(sid) if is_uuid(sid) else None
        if pod is None and len(sid) < 36:
            found = [sb.uuid for sb in self.sandboxes() if sb.uuid.startswith(sid)]
            if len(found) > 1:
                raise Fail(grpc.StatusCode.INVALID_ARGUMENT, f"pod sandbox id prefix {sid!r} is ambiguous")
            pod = self.engine.pods.find(found[0]) if found else None
        sb = self._sandbox_of(pod, refresh=refresh) if pod is not None and pod.state in LISTED_STATES else None
        if sb is None:
            raise Fail(grpc.StatusCode.NOT_FOUND, f"pod sandbox {sid!r} not found")
        return sb

    def sandboxes(self) -> Iterator[Sandbox]:
        for pod in self.engine.pods.list():
            if pod.state not in LISTED_STATES:
                continue
            try:
                sb = self._sandbox_of(pod)
            except (PypodError, OSError):  # removed while we looked
                continue
            if sb is not None:
                yield sb

    def container(self, cid: str, *, refresh: bool = True) -> Ctr:
        need(cid, "container_id")
        split = ids.split_container_id(cid)
        if split is not None:
            uuid, h = split
            try:
                sb = self.sandbox(uuid, refresh=refresh)
            except Fail:
                sb = None
            if sb is not None:
                for app in sb.manifest.apps:
                    if ids.app_hash(uuid, app.name) == h:
                        return self._ctr(sb, app)
        elif len(cid) < 64:  # a short id
            found = [c for c in self.containers() if c.id.startswith(cid)]
            if len(found) > 1:
                raise Fail(grpc.StatusCode.INVALID_ARGUMENT, f"container id prefix {cid!r} is ambiguous")
            if found:
                return self.container(found[0].id, refresh=refresh)
        raise Fail(grpc.StatusCode.NOT_FOUND, f"container {cid!r} not found")

    @staticmethod
    def _ctr(sb: Sandbox, app: App) -> Ctr:
        info = next((a for a in sb.info.apps if a.name == app.name), None)
        if info is None:
            info = AppInfo(name=app.name, image=app.image, image_id=app.image_id, state="unknown")
        return Ctr(sb, app, info, meta_of(app.annotations) or {})

    def _matching_sandboxes(self, sid: str) -> list[Sandbox]:
        """The sandboxes a filter's id names (every one without it)."""
        if not sid:
            return list(self.sandboxes())
        try:
            return [self.sandbox(sid, refresh=False)]
        except Fail:
            return []

    def _matching_containers(self, cid: str, sid: str) -> list[Ctr]:
        """The containers a filter's container id or sandbox id names (every one without them)."""
        try:
            if cid:
                return [self.container(cid, refresh=False)]
            if sid:
                return list(self.containers([self.sandbox(sid, refresh=False)]))
        except Fail:
            return []
        return list(self.containers())

    def containers(self, sandboxes=None) -> Iterator[Ctr]:
        for sb in sandboxes if sandboxes is not None else self.sandboxes():
            for app in sb.manifest.apps:
                if meta_of(app.annotations) is not None:
                    yield self._ctr(sb, app)

    # -- runtime --------------------------------------------------------------------------------
    @rpc
    def Version(self, request, context):
        return pb.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                  runtime_version=pypod.__version__, runtime_api_version=API_VERSION)

    @rpc
    def Status(self, request, context):
        ready, why = self._runtime_ready()
        net_ok, net_why = self._network_ready()
        conds = [pb.RuntimeCondition(type="RuntimeReady", status=ready,
                                     reason="" if ready else "RuntimeNotReady", message=why),
                 pb.RuntimeCondition(type="NetworkReady", status=net_ok,
                                     reason="" if net_ok else "NetworkPluginNotReady", message=net_why)]
        handlers = [pb.RuntimeHandler(name=n, features=pb.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=self._runtime_of(n) in RRO_RUNTIMES, user_namespaces=True))
                    for n in ["", *self._runtime_names()]]
        info = {}
        if request.verbose:
            import json

            info["config"] = json.dumps({"dataDir": str(self.config.data_dir), "network": self.cri.network,
                                         "streaming": self.streaming.base_url if self.streaming else None,
                                         "podCIDR": self.cri.pod_cidr})
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conds), runtime_handlers=handlers,
                                 features=pb.RuntimeFeatures(), info=info)

    def _runtime_of(self, handler: str) -> str:
        """The OCI runtime a handler (or a pod's ``runtime``; "" the default) runs with."""
        from pypod.stage1.runtime import default_runtime

        return handler or self.config.runtime or default_runtime().name

    @staticmethod
    def _runtime_names() -> list[str]:
        from pypod.stage1.runtime import available_runtimes

        return sorted(available_runtimes())

    def _runtime_ready(self) -> tuple[bool, str]:
        from pypod.stage1.runtime import which

        missing = [t for t in ("conmon", "catatonit") if not which(t)]
        if not self._runtime_names():
            missing.append("an OCI runtime (crun or runc)")
        return (not missing, f"missing: {', '.join(missing)}" if missing else "")

    def _network_ready(self) -> tuple[bool, str]:
        """Ready when the sandboxes' network is defined (or, for pypod's default network, can be
        written) and every plugin it names is installed."""
        from pypod import network

        settings = network.NetSettings.from_config(self.config)
        try:
            nets, broken = network.list_networks(settings)
            conf = next((n for n in nets if n.name == self.cri.network), None)
            if conf is None:
                if self.cri.network != network.DEFAULT_NETWORK:
                    return False, f"no CNI network {self.cri.network!r} in {settings.net_dir}"
                conf = network.cni.parse_config(network.default_network_config(settings.default_subnet,
                                                                                settings.default_bridge))
            network.check_plugins(conf, settings.plugin_paths)
        except PypodError as e:
            return False, str(e)
        return True, ""

    @rpc
    def RuntimeConfig(self, request, context):
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    @rpc
    def UpdateRuntimeConfig(self, request, context):
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr and cidr != self.cri.pod_cidr:
            log.info("pod CIDR is now %s (pypod's network keeps its own subnet)", cidr)
            self.cri.pod_cidr = cidr
        return pb.UpdateRuntimeConfigResponse()

    # -- sandboxes ------------------------------------------------------------------------------
    @rpc
    def RunPodSandbox(self, request, context):
        handler = request.runtime_handler
        if handler and handler not in self._runtime_names():
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT,
                       f"unknown runtime handler {handler!r} (available: {', '.join(self._runtime_names())})")
        manifest = mapping.sandbox_manifest(request.config, network=self.cri.network, runtime_handler=handler)
        if handler:
            manifest.runtime = handler
        md = request.config.metadata
        key = (md.name, md.uid, md.namespace, md.attempt)
        with self._starting_lock:  # a retried request must not make a second sandbox
            if key in self._starting:
                raise Fail(grpc.StatusCode.ALREADY_EXISTS, f"pod sandbox {md.name!r} attempt {md.attempt} is being created")
            self._starting.add(key)
        try:
            for sb in self.sandboxes():
                m = sb.meta.get("metadata") or {}
                if (m.get("name"), m.get("uid"), m.get("namespace"), m.get("attempt")) == key:
                    raise Fail(grpc.StatusCode.ALREADY_EXISTS,
                               f"pod sandbox {md.name!r} ({md.namespace}/{md.uid}) attempt {md.attempt} exists: {sb.uuid}")
            uuid = self.engine.sandbox(manifest)
        finally:
            with self._starting_lock:
                self._starting.discard(key)
        return pb.RunPodSandboxResponse(pod_sandbox_id=uuid)

    @rpc
    def StopPodSandbox(self, request, context):
        try:
            sb = self.sandbox(request.pod_sandbox_id, refresh=False)
        except Fail:
            return pb.StopPodSandboxResponse()  # idempotent: gone is stopped
        if sb.ready:
            try:
                self.engine.stop(sb.uuid, grace=self.cri.stop_grace, force=self.cri.stop_grace <= 0)
            except Conflict:  # stopped meanwhile
                pass
        return pb.StopPodSandboxResponse()

    @rpc
    def RemovePodSandbox(self, request, context):
        try:
            sb = self.sandbox(request.pod_sandbox_id, refresh=False)
        except Fail:
            return pb.RemovePodSandboxResponse()
        eng = self.engine
        if sb.ready:
            try:
                eng.stop(sb.uuid, force=True)
            except Conflict:
                pass
        try:
            eng.rm(sb.uuid)
        except NotFound:
            pass
        return pb.RemovePodSandboxResponse()

    def _sandbox_status(self, sb: Sandbox) -> pb.PodSandboxStatus:
        st = pb.PodSandboxStatus(
            id=sb.uuid, metadata=mapping.sandbox_metadata(sb.meta),
            state=pb.SANDBOX_READY if sb.ready else pb.SANDBOX_NOTREADY,
            created_at=mapping.ns(sb.info.created), labels=dict(sb.manifest.labels),
            annotations=visible(sb.manifest.annotations), runtime_handler=sb.meta.get("runtimeHandler", ""))
        ips = [ip.split("/", 1)[0] for n in sb.info.networks for ip in n.get("ips", [])]
        if sb.info.ip:
            st.network.ip = sb.info.ip
            st.network.additional_ips.extend(pb.PodIP(ip=i) for i in ips if i != sb.info.ip)
        st.linux.namespaces.options.CopyFrom(mapping.namespace_option(sb.meta))
        return st

    @rpc
    def PodSandboxStatus(self, request, context):
        sb = self.sandbox(request.pod_sandbox_id)
        resp = pb.PodSandboxStatusResponse(status=self._sandbox_status(sb), timestamp=time.time_ns())
        if request.verbose:
            import json

            resp.info["info"] = json.dumps({"uuid": sb.uuid, "state": sb.info.state,
                                            "networks": sb.info.networks, "stage1": sb.info.stage1})
        return resp

    @rpc
    def ListPodSandbox(self, request, context):
        f = request.filter
        items = []
        found = self._matching_sandboxes(f.id)
        for sb in found:
            state = pb.SANDBOX_READY if sb.ready else pb.SANDBOX_NOTREADY
            if f.HasField("state") and f.state.state != state:
                continue
            if not _selected(sb.manifest.labels, f.label_selector):
                continue
            items.append(pb.PodSandbox(id=sb.uuid, metadata=mapping.sandbox_metadata(sb.meta), state=state,
                                       created_at=mapping.ns(sb.info.created), labels=dict(sb.manifest.labels),
                                       annotations=visible(sb.manifest.annotations),
                                       runtime_handler=sb.meta.get("runtimeHandler", "")))
        return pb.ListPodSandboxResponse(items=items)

    # -- containers -----------------------------------------------------------------------------
    @rpc
    def CreateContainer(self, request, context):
        sb = self.sandbox(request.pod_sandbox_id, refresh=False)
        if not sb.ready:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, f"pod sandbox {sb.uuid} is not ready")
        app, volumes = mapping.container_app(request.config, sb.meta)
        runtime = self._runtime_of(sb.manifest.runtime or "")
        if any(m.recursive_read_only for m in app.mounts) and runtime not in RRO_RUNTIMES:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT,
                       f"recursive read-only mounts need one of {', '.join(RRO_RUNTIMES)}, not {runtime}")
        try:
            self.engine.app_add(sb.uuid, app, pull="never", volumes=volumes)
        except NotFound as e:
            if "image" in str(e):
                raise Fail(grpc.StatusCode.NOT_FOUND, f"image {app.image!r} not found: pull it first") from None
            raise
        except Conflict as e:
            if "already has an app" in str(e):
                raise Fail(grpc.StatusCode.ALREADY_EXISTS,
                           f"container {request.config.metadata.name!r} attempt "
                           f"{request.config.metadata.attempt} exists in pod sandbox {sb.uuid}") from None
            raise
        return pb.CreateContainerResponse(container_id=ids.container_id(sb.uuid, app.name))

    @rpc
    def StartContainer(self, request, context):
        c = self.container(request.container_id)
        if c.info.state != "created":
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION,
                       f"container {request.container_id} is {c.info.state}, not created")
        self.engine.app_start(c.sandbox.uuid, c.app.name)
        return pb.StartContainerResponse()

    @rpc
    def StopContainer(self, request, context):
        try:
            c = self.container(request.container_id)
        except Fail:
            return pb.StopContainerResponse()  # idempotent
        if c.sandbox.ready and c.info.state in ("created", "running"):
            try:
                self.engine.app_stop(c.sandbox.uuid, c.app.name, grace=max(0, request.timeout),
                                     stop_signal=mapping.signal_name(c.meta.get("stopSignal", 0)))
            except (Conflict, NotFound):
                pass
        return pb.StopContainerResponse()

    @rpc
    def RemoveContainer(self, request, context):
        try:
            c = self.container(request.container_id, refresh=False)
        except Fail:
            return pb.RemoveContainerResponse()
        try:
            self.engine.app_rm(c.sandbox.uuid, c.app.name)
        except NotFound:
            pass
        return pb.RemoveContainerResponse()

    def _container_msg(self, c: Ctr) -> pb.Container:
        return pb.Container(
            id=c.id, pod_sandbox_id=c.sandbox.uuid, metadata=mapping.container_metadata(c.meta),
            image=pb.ImageSpec(image=c.meta.get("image", c.app.image),
                               user_specified_image=c.meta.get("userImage", "")),
            image_ref=c.app.image_id or "", image_id=c.app.image_id or "",
            state=mapping.container_state(c.info.state), created_at=mapping.ns(c.info.created),
            labels=dict(c.app.labels), annotations=visible(c.app.annotations))

    @rpc
    def ListContainers(self, request, context):
        f = request.filter
        found = self._matching_containers(f.id, f.pod_sandbox_id)
        out = []
        for c in found:
            msg = self._container_msg(c)
            if f.pod_sandbox_id and c.sandbox.uuid != f.pod_sandbox_id:
                continue
            if f.HasField("state") and f.state.state != msg.state:
                continue
            if not _selected(c.app.labels, f.label_selector):
                continue
            out.append(msg)
        return pb.ListContainersResponse(containers=out)

    def _container_status(self, c: Ctr) -> pb.ContainerStatus:
        i = c.info
        st = pb.ContainerStatus(
            id=c.id, metadata=mapping.container_metadata(c.meta), state=mapping.container_state(i.state),
            created_at=mapping.ns(i.created), started_at=mapping.ns(i.started),
            image=pb.ImageSpec(image=c.meta.get("image", c.app.image),
                               user_specified_image=c.meta.get("userImage", "")),
            image_ref=c.app.image_id or "", image_id=c.app.image_id or "",
            labels=dict(c.app.labels), annotations=visible(c.app.annotations),
            log_path=c.meta.get("logPath", ""), stop_signal=c.meta.get("stopSignal", 0))
        if i.state == "exited":
            st.finished_at = mapping.ns(i.finished)
            st.exit_code = i.exit_code if i.exit_code is not None else -1
            st.reason = mapping.exit_reason(i.exit_code, i.oom_killed)
        for m in c.meta.get("mounts", []):
            st.mounts.append(pb.Mount(container_path=m["containerPath"], host_path=m["hostPath"],
                                      readonly=m["readonly"], selinux_relabel=m["selinuxRelabel"],
                                      propagation=m["propagation"],
                                      recursive_read_only=m.get("recursiveReadOnly", False)))
        r = c.meta.get("resources")
        if r:
            st.resources.linux.CopyFrom(pb.LinuxContainerResources(
                cpu_period=r["cpuPeriod"], cpu_quota=r["cpuQuota"], cpu_shares=r["cpuShares"],
                memory_limit_in_bytes=r["memoryLimitInBytes"], oom_score_adj=r["oomScoreAdj"],
                cpuset_cpus=r["cpusetCpus"], cpuset_mems=r["cpusetMems"]))
        return st

    @rpc
    def ContainerStatus(self, request, context):
        c = self.container(request.container_id)
        resp = pb.ContainerStatusResponse(status=self._container_status(c))
        if request.verbose:
            import json

            resp.info["info"] = json.dumps({"pod": c.sandbox.uuid, "app": c.app.name, "pid": c.info.pid,
                                            "restarts": c.info.restarts})
        return resp

    @rpc
    def UpdateContainerResources(self, request, context):
        c = self.container(request.container_id)
        if c.info.state not in ("created", "running"):
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, f"container {c.id} is {c.info.state}")
        res = mapping.resources(request.linux)
        self.engine.app_update(c.sandbox.uuid, c.app.name, res)
        return pb.UpdateContainerResourcesResponse()

    @rpc
    def ReopenContainerLog(self, request, context):
        c = self.container(request.container_id)
        if c.info.state != "running":
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, f"container {c.id} is not running")
        if not c.meta.get("logPath"):
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, f"container {c.id} has no log path")
        self.engine.reopen_log(c.sandbox.uuid, c.app.name)
        return pb.ReopenContainerLogResponse()

    # -- exec, attach, port-forward -------------------------------------------------------------
    @rpc
    def ExecSync(self, request, context):
        c = self.container(request.container_id, refresh=False)
        need(list(request.cmd), "cmd")
        timeout = request.timeout if request.timeout > 0 else None
        res = self.engine.exec(c.sandbox.uuid, c.app.name, list(request.cmd), timeout=timeout)
        if res.timed_out:
            raise Fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                       f"command {list(request.cmd)!r} timed out after {request.timeout}s (killed)")
        return pb.ExecSyncResponse(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)

    def _streaming(self):
        if self.streaming is None:
            raise Fail(grpc.StatusCode.UNIMPLEMENTED, "the streaming server is off")
        return self.streaming

    @rpc
    def Exec(self, request, context):
        c = self.container(request.container_id, refresh=False)
        need(list(request.cmd), "cmd")
        if request.tty and request.stderr:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "tty and stderr cannot both be set")
        if not (request.stdin or request.stdout or request.stderr):
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "one of stdin, stdout and stderr must be set")
        if c.info.state != "running":
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, f"container {c.id} is not running")
        url = self._streaming().register("exec", pod=c.sandbox.uuid, app=c.app.name, cmd=list(request.cmd),
                                         tty=request.tty, stdin=request.stdin, stdout=request.stdout,
                                         stderr=request.stderr)
        return pb.ExecResponse(url=url)

    @rpc
    def Attach(self, request, context):
        c = self.container(request.container_id, refresh=False)
        if request.tty and request.stderr:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "tty and stderr cannot both be set")
        if not (request.stdin or request.stdout or request.stderr):
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "one of stdin, stdout and stderr must be set")
        if c.info.state != "running":
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, f"container {c.id} is not running")
        url = self._streaming().register("attach", pod=c.sandbox.uuid, app=c.app.name, tty=c.app.tty,
                                         stdin=request.stdin and c.app.stdin, stdout=request.stdout,
                                         stderr=request.stderr and not c.app.tty)
        return pb.AttachResponse(url=url)

    @rpc
    def PortForward(self, request, context):
        sb = self.sandbox(request.pod_sandbox_id, refresh=False)
        if not sb.ready:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, f"pod sandbox {sb.uuid} is not ready")
        for p in request.port:
            if not 0 < p < 65536:
                raise Fail(grpc.StatusCode.INVALID_ARGUMENT, f"port {p} out of range")
        url = self._streaming().register("portforward", pod=sb.uuid, ports=list(request.port))
        return pb.PortForwardResponse(url=url)

    # -- stats ----------------------------------------------------------------------------------
    def _container_stats(self, c: Ctr) -> pb.ContainerStats:
        out = pb.ContainerStats(attributes=pb.ContainerAttributes(
            id=c.id, metadata=mapping.container_metadata(c.meta), labels=dict(c.app.labels),
            annotations=visible(c.app.annotations)))
        if c.info.state != "running" or not c.sandbox.ready:
            return out
        try:
            s = self.engine.stats(c.sandbox.uuid, c.app.name)
        except (PypodError, OSError):
            return out
        self._fill_usage(c.id, s, out.cpu, out.memory)
        return out

    def _fill_usage(self, key: str, s: dict[str, Any], cpu: pb.CpuUsage, mem: pb.MemoryUsage) -> None:
        now = s["timestamp_ns"]
        cpu.timestamp = mem.timestamp = now
        if s.get("cpu_usage_ns") is not None:
            used = s["cpu_usage_ns"]
            cpu.usage_core_nano_seconds.value = used
            with self._samples_lock:
                prev = self._cpu_samples.get(key)
                self._cpu_samples[key] = (now, used)
            if prev is not None and now > prev[0] and used >= prev[1]:
                cpu.usage_nano_cores.value = (used - prev[1]) * 10**9 // (now - prev[0])
        if s.get("memory_usage") is not None:
            mem.usage_bytes.value = s["memory_usage"]
            mem.working_set_bytes.value = s["memory_usage"]
            if s.get("memory_limit"):
                mem.available_bytes.value = max(0, s["memory_limit"] - s["memory_usage"])

    @rpc
    def ContainerStats(self, request, context):
        return pb.ContainerStatsResponse(stats=self._container_stats(self.container(request.container_id)))

    @rpc
    def ListContainerStats(self, request, context):
        f = request.filter
        found = self._matching_containers(f.id, f.pod_sandbox_id)
        stats = [self._container_stats(c) for c in found
                 if c.info.state == "running" and _selected(c.app.labels, f.label_selector)]
        return pb.ListContainerStatsResponse(stats=stats)

    def _sandbox_stats(self, sb: Sandbox) -> pb.PodSandboxStats:
        out = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
            id=sb.uuid, metadata=mapping.sandbox_metadata(sb.meta), labels=dict(sb.manifest.labels),
            annotations=visible(sb.manifest.annotations)))
        if not sb.ready:
            return out
        try:
            s = self.engine.stats(sb.uuid)
        except (PypodError, OSError):
            return out
        linux = out.linux
        self._fill_usage(sb.uuid, s, linux.cpu, linux.memory)
        linux.process.timestamp = s["timestamp_ns"]
        if s.get("pids") is not None:
            linux.process.process_count.value = s["pids"]
        self._fill_network(sb, linux.network, s["timestamp_ns"])
        for c in self.containers([sb]):
            if c.info.state == "running":
                linux.containers.append(self._container_stats(c))
        return out

    def _fill_network(self, sb: Sandbox, net: pb.NetworkUsage, now: int) -> None:
        from pypod.network import netns

        try:
            path = self.engine.netns(sb.uuid)
            if path is None:
                return
            text = netns.run_in(path, lambda: open("/proc/thread-self/net/dev").read())
        except (PypodError, OSError):
            return
        net.timestamp = now
        for line in text.splitlines()[2:]:
            name, _, rest = line.partition(":")
            name = name.strip()
            f = rest.split()
            if name == "lo" or len(f) < 16:
                continue
            iface = pb.NetworkInterfaceUsage(name=name)
            iface.rx_bytes.value, iface.rx_errors.value = int(f[0]), int(f[2])
            iface.tx_bytes.value, iface.tx_errors.value = int(f[8]), int(f[10])
            net.interfaces.append(iface)
            if name == "eth0":
                net.default_interface.CopyFrom(iface)

    @rpc
    def PodSandboxStats(self, request, context):
        return pb.PodSandboxStatsResponse(stats=self._sandbox_stats(self.sandbox(request.pod_sandbox_id)))

    @rpc
    def ListPodSandboxStats(self, request, context):
        f = request.filter
        found = self._matching_sandboxes(f.id)
        stats = [self._sandbox_stats(sb) for sb in found if sb.ready and _selected(sb.manifest.labels,
                                                                                   f.label_selector)]
        return pb.ListPodSandboxStatsResponse(stats=stats)

    # -- events ---------------------------------------------------------------------------------
    EVENT_TYPES = {events.APP_CREATED: pb.CONTAINER_CREATED_EVENT, events.APP_STARTED: pb.CONTAINER_STARTED_EVENT,
                   events.APP_RESTARTED: pb.CONTAINER_STARTED_EVENT, events.APP_EXITED: pb.CONTAINER_STOPPED_EVENT,
                   events.APP_REMOVED: pb.CONTAINER_DELETED_EVENT}

    @rpc
    def GetContainerEvents(self, request, context):
        """The engine's event log, from now on, as CRI container events (with the sandbox's and
        its containers' status, as the evented PLEG wants them)."""
        stop = threading.Event()
        context.add_callback(stop.set)
        for ev in events.follow(self.config.data_dir, stop=stop, filters={"type": list(self.EVENT_TYPES)}):
            uuid, app = ev.get("pod"), ev.get("app")
            if not uuid or not app:
                continue
            cid = ids.container_id(uuid, app)
            resp = pb.ContainerEventResponse(container_id=cid, container_event_type=self.EVENT_TYPES[ev["type"]],
                                             created_at=events.parse_time(ev["time"]))
            try:
                sb = self.sandbox(uuid, refresh=False)
            except Fail:
                continue  # not a CRI pod, or gone already
            resp.pod_sandbox_status.CopyFrom(self._sandbox_status(sb))
            resp.containers_statuses.extend(self._container_status(c) for c in self.containers([sb]))
            yield resp


def _selected(labels: dict[str, str], selector) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
