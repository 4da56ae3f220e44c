"""BasePlugin and Driver: Nomad's RPCs translated into engine calls (the driver holds no pod
logic). Blocking engine calls run in a bounded thread pool; waits and streams are asyncio.

Errors follow Nomad's conventions (shared/reference/nomad.md §2.5): NOT_FOUND for unknown task
ids, INVALID_ARGUMENT naming the field for bad configs, FAILED_PRECONDITION with a
``RecoverableError`` detail where Nomad reads recoverability (StartTask, TaskStats), never
UNAVAILABLE or CANCELLED (Nomad reads those as "the plugin died").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal as signal_mod
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from . import API_VERSION, PLUGIN_NAME, PLUGIN_VERSION, schema
from .proto import base_pb2 as B
from .proto import base_pb2_grpc
from .proto import driver_pb2 as D
from .proto import driver_pb2_grpc
from .proto import structs_pb2 as S
from .tasks import HANDLE_VERSION, DriverState, Exit, Task, TaskError, build_manifest

GO_ZERO_TIME = -62135596800  # time.Time{} as a Timestamp: "not completed"
FINGERPRINT_PERIOD = 30.0
NOT_FOUND = "task not found for given id"


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, recoverable: bool | None = None):
        super().__init__(message)
        self.code, self.message, self.recoverable = code, message, recoverable


def _status_details(code: grpc.StatusCode, message: str, recoverable: bool):
    from google.protobuf import any_pb2
    from google.rpc import status_pb2
    from grpc_status import rpc_status

    detail = any_pb2.Any()
    detail.Pack(S.RecoverableError(recoverable=recoverable))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


def _rpc(fn):
    """Map exceptions of a unary handler to gRPC statuses."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except Abort as e:
            await self._abort(context, e)
        except TaskError as e:
            await self._abort(context, Abort(grpc.StatusCode.INVALID_ARGUMENT if e.invalid else
                                             grpc.StatusCode.UNKNOWN, str(e)))
        except schema.ConfigError as e:
            await self._abort(context, Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            self.plugin.log.error(f"{fn.__name__}: {e}", exc_info=not _is_pypod_error(e))
            await self._abort(context, Abort(_code_for(e), str(e) or type(e).__name__))

    return wrapper


def _is_pypod_error(e: Exception) -> bool:
    from pypod.errors import PypodError

    return isinstance(e, PypodError)


def _code_for(e: Exception) -> grpc.StatusCode:
    from pypod.errors import Conflict, NotFound, UsageError

    if isinstance(e, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, UsageError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(e, Conflict):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.UNKNOWN


def _ts(t: float | None):
    from google.protobuf import timestamp_pb2

    if not t:
        return timestamp_pb2.Timestamp(seconds=GO_ZERO_TIME)
    return timestamp_pb2.Timestamp(seconds=int(t), nanos=int((t % 1) * 1e9))


def _signal(name: str) -> int:
    n = name.strip().upper()
    if n.isdigit():
        return int(n)
    try:
        return int(signal_mod.Signals[n if n.startswith("SIG") else "SIG" + n])
    except KeyError:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"signal: unknown signal {name!r}") from None


class Plugin:
    """The plugin's state, shared by both services: agent config, engine, tasks, event subscribers."""

    def __init__(self, log: logging.Logger, state_dir: str | None = None):
        self.log = log
        self.agent: dict[str, Any] = schema.decode(schema.AGENT, None)
        self.nomad_config = None
        self.state_dir_arg = state_dir
        self._engine = None
        self.tasks: dict[str, Task] = {}
        self.subscribers: set[asyncio.Queue] = set()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="engine")
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.stopping: asyncio.Event | None = None
        self.configured = asyncio.Event()
        self.pull_timeout = 300.0
        self._starting: set[str] = set()

    # -- engine ---------------------------------------------------------------------------------
    @property
    def engine(self):
        if self._engine is None:
            from pypod import config as config_mod
            from pypod.pods.engine import Engine

            cfg = config_mod.load(self.agent.get("data_dir") or None, self.agent.get("config_dir") or None)
            if self.agent.get("runtime"):
                cfg.runtime = self.agent["runtime"]
            self._engine = Engine(cfg)
        return self._engine

    @property
    def state_dir(self) -> Path:
        d = Path(self.state_dir_arg) if self.state_dir_arg else Path(self.engine.config.data_dir) / "nomad"
        (d / "logs").mkdir(parents=True, exist_ok=True)
        return d

    async def run(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        self.loop = loop
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def set_config(self, agent: dict[str, Any]) -> None:
        if agent["runtime"] not in ("", "crun", "runc"):
            raise schema.ConfigError(f"runtime: expected crun or runc, got {agent['runtime']!r}")
        from pypod.config import parse_duration

        try:
            self.pull_timeout = parse_duration(agent["image_pull_timeout"])
        except Exception:
            raise schema.ConfigError(f"image_pull_timeout: invalid duration {agent['image_pull_timeout']!r}") from None
        if agent != self.agent:
            self.agent = agent
            self._engine = None

    # -- events ---------------------------------------------------------------------------------
    def event(self, cfg, message: str, **annotations: str) -> None:
        ev = D.DriverTaskEvent(task_id=cfg.id, alloc_id=cfg.alloc_id, task_name=cfg.name,
                               timestamp=_ts(time.time()), message=message,
                               annotations={k: str(v) for k, v in annotations.items()})
        loop = self.loop
        if loop is None:
            return
        for q in list(self.subscribers):
            loop.call_soon_threadsafe(q.put_nowait, ev)

    # -- tasks ----------------------------------------------------------------------------------
    def task(self, task_id: str) -> Task:
        t = self.tasks.get(task_id)
        if t is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND)
        return t

    def _exited(self, task: Task) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(lambda: None)  # wake waiters polling the loop
        self.log.info("task exited", extra={"task_id": task.id, "pod": task.state.uuid,
                                            "exit_code": task.exit.exit_code if task.exit else None})

    def adopt(self, cfg, state: DriverState) -> Task:
        t = Task(self.engine, cfg, state, self.state_dir / "logs", self._exited)
        self.tasks[cfg.id] = t
        t.start()
        return t

    def shutdown(self) -> None:
        """Stop copying logs at a batch boundary (the next plugin resumes from the saved position)."""
        for t in self.tasks.values():
            t.stop_copy.set()
        deadline = time.monotonic() + 0.5
        for t in self.tasks.values():
            if t.copy_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                t.copy_lock.release()


async def _wait_done(task: Task, timeout: float | None = None) -> bool:
    """Wait for a task's exit without holding a thread (polls its threading.Event)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while not task.done.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


class _Base:
    def __init__(self, plugin: Plugin):
        self.plugin = plugin

    async def _abort(self, context, e: Abort):
        if e.recoverable is not None:
            st = _status_details(e.code, e.message, e.recoverable)
            await context.abort_with_status(st)
        await context.abort(e.code, e.message)


class BasePluginService(_Base, base_pb2_grpc.BasePluginServicer):
    @_rpc
    async def PluginInfo(self, request, context):
        return B.PluginInfoResponse(type=B.DRIVER, plugin_api_versions=[API_VERSION],
                                    plugin_version=PLUGIN_VERSION, name=PLUGIN_NAME)

    @_rpc
    async def ConfigSchema(self, request, context):
        return B.ConfigSchemaResponse(spec=schema.spec(schema.AGENT))

    @_rpc
    async def SetConfig(self, request, context):
        agent = schema.decode(schema.AGENT, request.msgpack_config)
        self.plugin.set_config(agent)
        if request.HasField("nomad_config"):
            self.plugin.nomad_config = request.nomad_config
        self.plugin.configured.set()
        self.plugin.log.debug("configured", extra={"config": str(agent)})
        return B.SetConfigResponse()


class DriverService(_Base, driver_pb2_grpc.DriverServicer):
    @_rpc
    async def Init(self, request, context):
        return D.InitResponse()

    @_rpc
    async def TaskConfigSchema(self, request, context):
        return D.TaskConfigSchemaResponse(spec=schema.spec(schema.TASK))

    @_rpc
    async def Capabilities(self, request, context):
        M = D.NetworkIsolationSpec
        return D.CapabilitiesResponse(capabilities=D.DriverCapabilities(
            send_signals=True, exec=True, fs_isolation=D.DriverCapabilities.IMAGE,
            network_isolation_modes=[M.HOST, M.GROUP, M.TASK], must_create_network=True,
            mount_configs=D.DriverCapabilities.ANY_MOUNTS))

    # -- fingerprint ----------------------------------------------------------------------------
    def _fingerprint(self) -> D.FingerprintResponse:
        from pypod.stage1 import conmon
        from pypod.stage1.runtime import get_runtime

        attrs = {"driver.pypod": S.Attribute(bool_val=True),
                 "driver.pypod.version": S.Attribute(string_val=PLUGIN_VERSION)}
        problems = []
        try:
            rt = get_runtime(self.plugin.engine.config.runtime or None)
            attrs["driver.pypod.runtime"] = S.Attribute(string_val=rt.name)
            try:
                attrs["driver.pypod.runtime.version"] = S.Attribute(string_val=rt.version())
            except Exception:
                pass
        except Exception as e:
            problems.append(f"no OCI runtime: {e}")
        try:
            conmon.conmon_binary()
        except Exception as e:
            problems.append(str(e))
        try:
            s = self.plugin.engine._net_settings()
            if not any(os.access(os.path.join(d, "bridge"), os.X_OK) for d in s.plugin_paths):
                problems.append(f"CNI plugins not found in {', '.join(map(str, s.plugin_paths))}")
        except Exception as e:
            problems.append(f"CNI: {e}")
        if os.geteuid() != 0:
            problems.append("the plugin must run as root")
        if problems:
            return D.FingerprintResponse(attributes=attrs, health=D.FingerprintResponse.UNHEALTHY,
                                         health_description="; ".join(problems))
        return D.FingerprintResponse(attributes=attrs, health=D.FingerprintResponse.HEALTHY,
                                     health_description="Healthy")

    async def Fingerprint(self, request, context):
        last = None
        while True:
            try:
                fp = await self.plugin.run(self._fingerprint)
            except Exception as e:
                fp = D.FingerprintResponse(health=D.FingerprintResponse.UNHEALTHY,
                                           health_description=f"fingerprint failed: {e}")
            if fp != last:
                yield fp
                last = fp
            await asyncio.sleep(FINGERPRINT_PERIOD)

    # -- lifecycle ------------------------------------------------------------------------------
    @_rpc
    async def StartTask(self, request, context):
        p = self.plugin
        cfg = request.task
        if not cfg.id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "task.id: missing")
        if cfg.id in p.tasks or cfg.id in p._starting:
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"task with ID {cfg.id!r} already started")
        p._starting.add(cfg.id)
        try:
            return await self._start(cfg)
        finally:
            p._starting.discard(cfg.id)

    async def _start(self, cfg):
        from pypod.errors import NotFound

        p = self.plugin
        tc = schema.decode(schema.TASK, cfg.msgpack_driver_config)
        creds = None
        if tc["auth"].get("username") or tc["auth"].get("password"):
            creds = (tc["auth"].get("username") or "", tc["auth"].get("password") or "")
        manifest, app, port_map = build_manifest(cfg, tc, p.agent)
        engine = p.engine
        image = tc["image"]
        pull = "update" if tc.get("force_pull") else "new"

        def progress(digest, done, total, status):
            if status == "done":
                p.event(cfg, f"Pulled layer {digest[:19]}", image=image)

        def resolve():
            try:
                return engine.resolve_image(image, pull="never"), False
            except NotFound:
                if pull == "never":
                    raise
            return None, True

        found, need_pull = (await p.run(resolve)) if pull == "new" else (None, True)
        image_id = found.id if found is not None else None
        if need_pull:
            p.event(cfg, f"Downloading image {image}", image=image)
            image_id = await self._pull(cfg, image, pull, creds, progress)
            p.event(cfg, f"Image {image} pulled", image=image)
        if image_id is not None and image.startswith(("oci:", "oci-archive:", "docker-archive:")):
            manifest.apps[0].image = image_id  # an imported source is not a name the store knows
        started = time.time()
        uuid = await p.run(engine.run, manifest, pull="never")
        info = await p.run(engine.status, uuid)
        addr = (info.ip or "") if manifest.netns is None else ""  # a group network's address is Nomad's
        state = DriverState(uuid=uuid, app=app, started_at=started, image=image, port_map=port_map,
                            addr=addr.split("/")[0])
        p.adopt(cfg, state)
        p.log.info("task started", extra={"task_id": cfg.id, "pod": uuid})
        handle = D.TaskHandle(version=HANDLE_VERSION, config=cfg, state=D.RUNNING, driver_state=state.encode())
        resp = D.StartTaskResponse(result=D.StartTaskResponse.SUCCESS, handle=handle)
        if state.addr or port_map:
            resp.network_override.CopyFrom(D.NetworkOverride(port_map=port_map, addr=state.addr,
                                                             auto_advertise=bool(state.addr)))
        return resp

    async def _pull(self, cfg, image: str, policy: str, creds, progress) -> str:
        """The pull in a child process (:mod:`.pull`), killed at ``image_pull_timeout`` or when
        the StartTask call is cancelled: nothing goes on writing into the store afterwards."""
        from . import pull as pull_mod

        p = self.plugin
        cancel = threading.Event()
        fut = p.run(pull_mod.pull, image, data_dir=p.agent.get("data_dir") or None,
                    config_dir=p.agent.get("config_dir") or None, policy=policy, credentials=creds,
                    timeout=p.pull_timeout, progress=progress, cancel=cancel)
        try:
            return await fut
        except asyncio.CancelledError:
            cancel.set()  # the thread kills the child within 0.1 s
            raise
        except pull_mod.PullTimeout:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"image {image}: pull did not finish within image_pull_timeout "
                        f"({p.agent['image_pull_timeout']})", recoverable=True) from None
        except pull_mod.PullError as e:
            if e.kind == "recoverable":
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"image {image}: {e}", recoverable=True) from None
            code = grpc.StatusCode.INVALID_ARGUMENT if e.kind in ("not_found", "invalid") else \
                grpc.StatusCode.UNKNOWN
            raise Abort(code, f"image {image}: {e}") from None

    @_rpc
    async def RecoverTask(self, request, context):
        from pypod.errors import NotFound

        p = self.plugin
        h = request.handle
        task_id = request.task_id or h.config.id  # the Go client leaves task_id empty
        if not task_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "handle.config.id: missing")
        if task_id in p.tasks:
            return D.RecoverTaskResponse()
        state = DriverState.decode(h.driver_state)
        try:
            await p.run(p.engine.pods.get, state.uuid)
        except NotFound:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"task {task_id}: pod {state.uuid} no longer exists") from None
        p.adopt(h.config, state)
        p.log.info("task recovered", extra={"task_id": task_id, "pod": state.uuid})
        return D.RecoverTaskResponse()

    @_rpc
    async def WaitTask(self, request, context):
        t = self.plugin.task(request.task_id)
        await _wait_done(t)
        e = t.exit or Exit(exit_code=-1, err="unknown exit")
        return D.WaitTaskResponse(result=D.ExitResult(exit_code=e.exit_code, signal=e.signal,
                                                      oom_killed=e.oom_killed), err=e.err)

    def _stop(self, t: Task, timeout: float, sig: str) -> None:
        from pypod.errors import Conflict, NotFound

        engine = self.plugin.engine
        if not t.done.is_set():
            try:
                engine.kill(t.state.uuid, t.state.app, sig)
            except (Conflict, NotFound):
                pass  # exited meanwhile
            if not t.done.wait(timeout):
                try:
                    engine.stop(t.state.uuid, grace=0, force=True)
                except (Conflict, NotFound):
                    pass
        t.done.wait(30)

    @_rpc
    async def StopTask(self, request, context):
        t = self.plugin.task(request.task_id)
        sig = request.signal or "SIGTERM"
        _signal(sig)
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 5.0
        await self.plugin.run(self._stop, t, timeout, sig)
        return D.StopTaskResponse()

    def _destroy(self, t: Task) -> None:
        from pypod.errors import Conflict, NotFound

        engine = self.plugin.engine
        if not t.done.is_set():
            try:
                engine.stop(t.state.uuid, grace=0, force=True)
            except (Conflict, NotFound):
                pass
        if not t.done.wait(15):
            t.stop_copy.set()
        t.thread.join(5)
        if self.plugin.agent["gc"].get("container", True):
            for attempt in range(50):
                try:
                    engine.rm(t.state.uuid)
                    break
                except NotFound:
                    break
                except Conflict:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
        try:
            t.pos_file.unlink()
        except OSError:
            pass

    @_rpc
    async def DestroyTask(self, request, context):
        p = self.plugin
        t = p.task(request.task_id)
        if not t.done.is_set() and not request.force:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "cannot destroy running task")
        await p.run(self._destroy, t)
        p.tasks.pop(request.task_id, None)
        p.log.info("task destroyed", extra={"task_id": request.task_id, "pod": t.state.uuid})
        return D.DestroyTaskResponse()

    @_rpc
    async def InspectTask(self, request, context):
        t = self.plugin.task(request.task_id)
        done = t.done.is_set()
        e = t.exit if done and t.exit else Exit()
        st = D.TaskStatus(id=t.id, name=t.config.name, state=D.EXITED if done else D.RUNNING,
                          started_at=_ts(t.state.started_at), completed_at=_ts(t.completed_at if done else None),
                          result=D.ExitResult(exit_code=e.exit_code, signal=e.signal, oom_killed=e.oom_killed))
        attrs = {"pod": t.state.uuid, "app": t.state.app, "image": t.state.image}
        if t.state.addr:
            attrs["ip"] = t.state.addr
        return D.InspectTaskResponse(task=st, driver=D.TaskDriverStatus(attributes=attrs),
                                     network_override=D.NetworkOverride(port_map=t.state.port_map,
                                                                        addr=t.state.addr,
                                                                        auto_advertise=bool(t.state.addr)))

    # -- stats and events -----------------------------------------------------------------------
    async def TaskStats(self, request, context):
        p = self.plugin
        t = p.tasks.get(request.task_id)
        if t is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND)
        interval = request.collection_interval.ToTimedelta().total_seconds() \
            if request.HasField("collection_interval") else 1.0
        interval = max(interval, 0.1)
        prev: tuple[int, int] | None = None
        C, M = D.CPUUsage, D.MemoryUsage
        while not t.done.is_set():
            try:
                st = await p.run(p.engine.stats, t.state.uuid, t.state.app)
            except Exception as e:
                if t.done.is_set():
                    return
                await self._abort(context, Abort(grpc.StatusCode.FAILED_PRECONDITION, f"stats: {e}",
                                                 recoverable=False))
            now = st["timestamp_ns"]
            cpu = C()
            if st.get("cpu_usage_ns") is not None:
                if prev is not None and now > prev[1]:
                    cpu.percent = max(0.0, (st["cpu_usage_ns"] - prev[0]) / (now - prev[1]) * 100.0)
                    cpu.measured_fields.append(C.PERCENT)
                prev = (st["cpu_usage_ns"], now)
            mem = M()
            if st.get("memory_usage") is not None:
                mem.usage = mem.rss = int(st["memory_usage"])
                mem.measured_fields.extend([M.RSS, M.USAGE])
            if st.get("memory_max_usage") is not None:
                mem.max_usage = int(st["memory_max_usage"])
                mem.measured_fields.append(M.MAX_USAGE)
            ts = _ts(now / 1e9)
            yield D.TaskStatsResponse(stats=D.TaskStats(
                id=t.id, timestamp=ts, agg_resource_usage=D.TaskResourceUsage(cpu=cpu, memory=mem)))
            await _wait_done(t, interval)

    async def TaskEvents(self, request, context):
        p = self.plugin
        p.loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        p.subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            p.subscribers.discard(q)

    @_rpc
    async def Shutdown(self, request, context):
        return D.ShutdownResponse()  # tasks keep running; GRPCController.Shutdown ends the process

    # -- signals and exec -----------------------------------------------------------------------
    @_rpc
    async def SignalTask(self, request, context):
        t = self.plugin.task(request.task_id)
        sig = _signal(request.signal or "SIGTERM")
        if t.done.is_set():
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "task is not running")
        await self.plugin.run(self.plugin.engine.kill, t.state.uuid, t.state.app, sig)
        return D.SignalTaskResponse()

    @_rpc
    async def ExecTask(self, request, context):
        t = self.plugin.task(request.task_id)
        if not request.command:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "command: empty")
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
        r = await self.plugin.run(self.plugin.engine.exec, t.state.uuid, t.state.app, list(request.command),
                                  timeout=timeout or None)
        if r.timed_out:
            raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"exec timed out after {timeout}s")
        return D.ExecTaskResponse(stdout=r.stdout, stderr=r.stderr, result=D.ExitResult(exit_code=r.exit_code))

    async def ExecTaskStreaming(self, request_iterator, context):
        from .execstream import stream_exec

        async for out in stream_exec(self, request_iterator, context):
            yield out

    # -- networks -------------------------------------------------------------------------------
    @staticmethod
    def _netns_name(alloc_id: str) -> str:
        return "nomad-" + "".join(c for c in alloc_id if c.isalnum() or c == "-")[:60]

    @_rpc
    async def CreateNetwork(self, request, context):
        from pypod import network as network_mod
        from pypod.pods.manifest import Network

        p = self.plugin
        if not request.alloc_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "alloc_id: missing")
        name = self._netns_name(request.alloc_id)

        def create():
            st = network_mod.shared_status(name, p.engine._net_settings())
            if st is not None:
                return st, False
            # loopback only: Nomad's network hook runs the group's CNI (bridge, ports) in it
            return p.engine.create_network(name, [Network("none")]), True

        st, created = await p.run(create)
        spec = D.NetworkIsolationSpec(mode=D.NetworkIsolationSpec.GROUP, path=str(st.netns),
                                      labels={"pypod.netns": name})
        if request.hostname:
            spec.hostsConfig.CopyFrom(D.HostsConfig(hostname=request.hostname))
        return D.CreateNetworkResponse(isolation_spec=spec, created=created)

    @_rpc
    async def DestroyNetwork(self, request, context):
        p = self.plugin
        name = request.isolation_spec.labels.get("pypod.netns") if request.HasField("isolation_spec") else None
        name = name or self._netns_name(request.alloc_id)
        await p.run(p.engine.destroy_network, name)
        return D.DestroyNetworkResponse()
