"""``pypod-mesos-executor``: a Mesos executor whose tasks are pypod pods.

The agent starts it with its environment (``MESOS_FRAMEWORK_ID``, ``MESOS_EXECUTOR_ID``,
``MESOS_AGENT_ENDPOINT``, ``MESOS_DIRECTORY``, ``MESOS_CHECKPOINT``...); it subscribes through
:class:`.driver.PodExecutorDriver` and then, for each event (pymesos' IO thread only hands work
to other threads, never blocks):

``LAUNCH`` / ``LAUNCH_GROUP``
    TASK_STARTING; the images are resolved (pulled if needed) *after* subscribing; the pod is
    created and started through :class:`pypod.pods.engine.Engine` (all apps or none); then
    TASK_RUNNING with the pod's IPs in ``container_status.network_infos``. A task that cannot run
    as given gets TASK_ERROR + REASON_TASK_INVALID (the whole group); a failed pull or pod
    creation TASK_FAILED + REASON_CONTAINER_LAUNCH_FAILED (the whole group).
app exits (learnt from the engine's event log, ``app.exited``, not by polling)
    exit 0: TASK_FINISHED; otherwise TASK_FAILED with the exit status or signal in the message,
    REASON_CONTAINER_LIMITATION_MEMORY when the OOM killer ended it; TASK_KILLED when the
    executor was killing it. In a group a task that ends FAILED or KILLED kills the others (the
    default executor's policy). The apps' output is copied to the task sandbox's stdout/stderr
    before its terminal update goes out.
``KILL``
    TASK_KILLING (if the framework has TASK_KILLING_STATE), then the pod is stopped: SIGTERM,
    SIGKILL after the grace period of ``kill.kill_policy``, else the task's ``kill_policy``,
    else 3 s. A second KILL with a shorter grace cuts the wait short.
``SHUTDOWN`` (also SIGTERM, a non-checkpointed disconnection, the recovery timeout)
    every pod stopped within the shutdown grace period, terminal updates sent, their
    acknowledgements awaited, pods removed, exit 0.
disconnection with checkpointing
    the pods keep running; the driver re-subscribes with what is unacknowledged.

When every task it was given is terminal and acknowledged, the executor removes its pods and
exits (as Mesos' default executor does). Pods are labelled ``mesos.framework`` and
``mesos.executor``; a new executor with the same ids (the previous one died) removes the pods
it left before subscribing. Health checks are not implemented.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
import uuid as uuid_mod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from pymesos import Executor

from pypod import events
from pypod.config import Config
from pypod.config import load as load_config
from pypod.errors import Conflict, NotFound, PypodError
from pypod.pods import logs
from pypod.pods.engine import Engine

from . import mapping
from .driver import PodExecutorDriver

log = logging.getLogger("pypod.mesos")

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
            "TASK_GONE", "TASK_GONE_BY_OPERATOR"}
ACK_FAILSAFE = 60.0  # as Mesos' default executor: never wait longer than this for acknowledgements
RECONCILE_INTERVAL = 10.0  # a safety net under the event log (an event lost to a full disk)


@dataclass
class Task:
    id: str
    info: dict
    apps: list[str]
    kill_grace: float
    sandbox: str
    pod: "PodRun"
    state: str | None = None
    killing: bool = False
    kill_message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass
class PodRun:
    uuid: str
    group: bool
    tasks: list[Task] = field(default_factory=list)
    phase: str = "launching"  # launching -> running -> finishing -> gone
    exits: dict[str, tuple[int | None, int | None, bool]] = field(default_factory=dict)
    info: Any = None  # PodInfo once running
    kill_deadline: float | None = None  # when the current stop's grace runs out
    pump: "SandboxPump | None" = None

    def task_of(self, app: str) -> Task | None:
        return next((t for t in self.tasks if app in t.apps), None)


def _copier(path: Path) -> Any:
    """:class:`pypod.pods.logs.Copier` (raw records from a resumable position); on an engine
    without it, the log reader the CLI uses."""
    if hasattr(logs, "Copier"):
        return logs.Copier(path)
    return _EntryCopier(path)


class _EntryCopier:
    def __init__(self, path: Path):
        self._reader = logs._Reader("", Path(path))

    def read(self) -> list[tuple[str, bytes, int]]:
        return [(e.stream, e.text.encode(), 0) for e in self._reader.read()]


class SandboxPump:
    """Copies each app's output (its CRI log) to its task sandbox's ``stdout`` and ``stderr``."""

    def __init__(self, paths: Mapping[str, Path], sandboxes: Mapping[str, str]):
        self._lock = threading.Lock()
        self._copiers = {app: _copier(p) for app, p in paths.items()}
        self._files: dict[tuple[str, str], Any] = {}
        self._sandboxes = dict(sandboxes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mesos-logs", daemon=True)
        self._thread.start()

    def _out(self, app: str, stream: str):
        f = self._files.get((app, stream))
        if f is None:
            f = self._files[(app, stream)] = open(os.path.join(self._sandboxes[app], stream), "ab")
        return f

    def drain(self) -> None:
        with self._lock:
            for app, c in self._copiers.items():
                while True:
                    recs = c.read()
                    if not recs:
                        break
                    for stream, data, _ in recs:
                        self._out(app, stream).write(data)
            for f in self._files.values():
                f.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.drain()
            except OSError as e:
                log.warning("copying the apps' output to the sandbox: %s", e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self.drain()
        except OSError:
            pass
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


class PodExecutor(Executor):
    """pymesos ``Executor`` callbacks over the pypod engine (see the module docstring)."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.config = config
        self.framework_id = env["MESOS_FRAMEWORK_ID"]
        self.executor_id = env["MESOS_EXECUTOR_ID"]
        self.sandbox = env.get("MESOS_DIRECTORY") or env.get("MESOS_SANDBOX") or os.getcwd()
        self.driver: PodExecutorDriver | None = None
        self.executor_info: dict | None = None
        self.killing_capable = False
        self._lock = threading.RLock()
        self.tasks: dict[str, Task] = {}
        self.pods: dict[str, PodRun] = {}
        self._launching = 0
        self._launched_any = False
        self._shutting_down = False
        self._exiting = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- plumbing -------------------------------------------------------------------------------
    def engine(self) -> Engine:
        return Engine(self.config)  # one per thread: cheap, and nothing in it is shared

    def _spawn(self, target: Callable, *args: Any, name: str = "mesos-work") -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("%s failed", name)

        t = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    def start(self) -> None:
        """Start following the engine's event log (before any pod exists, so no exit is missed)."""
        os.makedirs(self.config.data_dir, exist_ok=True)
        since = time.time()
        self._spawn(self._watch, since, name="mesos-events")
        self._spawn(self._reconcile_loop, name="mesos-reconcile")

    def collect_orphans(self) -> None:
        """Remove the pods a previous executor with the same ids left (it died: Mesos never runs
        two executors with one id on an agent)."""
        eng = self.engine()
        for info in eng.list():
            lab = info.labels or {}
            if lab.get(mapping.LABEL_FRAMEWORK) != self.framework_id or \
                    lab.get(mapping.LABEL_EXECUTOR) != self.executor_id:
                continue
            log.warning("removing pod %s left by a previous executor %s", info.uuid, self.executor_id)
            try:
                if info.state == "running":
                    eng.stop(info.uuid, force=True)
                eng.rm(info.uuid)
            except PypodError as e:
                log.warning("pod %s: %s", info.uuid, e)

    # -- status updates ---------------------------------------------------------------------------
    def _update(self, task: Task, state: str, *, reason: str | None = None, message: str | None = None,
                extra: dict | None = None) -> None:
        """Send one update (self._lock held: updates of a task go out in order, none after its
        terminal one)."""
        if task.terminal or self.driver is None:
            return
        if state == "TASK_KILLING" and (not self.killing_capable or task.state in (None, "TASK_KILLING")):
            return
        status: dict[str, Any] = {"task_id": {"value": task.id}, "state": state}
        if reason:
            status["reason"] = reason
        if message:
            status["message"] = message
        if extra:
            status.update(extra)
        task.state = state
        log.info("task %s: %s%s%s", task.id, state, f" ({reason})" if reason else "",
                 f": {message}" if message else "")
        self.driver.sendStatusUpdate(status)

    def _container_status(self, pod: PodRun) -> dict:
        cs: dict[str, Any] = {"container_id": {"value": pod.uuid}}
        nets = []
        for n in (pod.info.networks if pod.info is not None else []):
            addrs = []
            for ip in n.get("ips") or []:
                addr = ip.split("/", 1)[0]
                try:
                    proto = "IPv6" if ipaddress.ip_address(addr).version == 6 else "IPv4"
                except ValueError:
                    continue
                addrs.append({"protocol": proto, "ip_address": addr})
            nets.append({"name": n.get("name"), "ip_addresses": addrs})
        if nets:
            cs["network_infos"] = nets
        return {"container_status": cs}

    # -- pymesos callbacks (the IO thread: never block here) ---------------------------------------
    def registered(self, driver, executor_info, framework_info, agent_info) -> None:
        self.driver = driver
        self.executor_info = executor_info
        caps = {c.get("type") for c in framework_info.get("capabilities") or []}
        self.killing_capable = "TASK_KILLING_STATE" in caps
        log.info("registered with agent %s (%s) for framework %s", (agent_info.get("id") or {}).get("value"),
                 agent_info.get("hostname"), self.framework_id)

    def reregistered(self, driver, agent_info) -> None:
        log.info("re-registered with agent %s", (agent_info.get("id") or {}).get("value"))

    def disconnected(self, driver) -> None:
        log.warning("disconnected from the agent; pods keep running")

    def launchTask(self, driver, task) -> None:
        self._accept([task], group=False)

    def launchTaskGroup(self, driver, tasks) -> None:
        self._accept(list(tasks), group=True)

    def killTask(self, driver, task_id, kill_policy=None) -> None:
        tid = task_id["value"] if isinstance(task_id, dict) else str(task_id)
        with self._lock:
            task = self.tasks.get(tid)
            if task is None or task.terminal:
                log.warning("KILL of %s task %s: ignored", "unknown" if task is None else "terminated", tid)
                return
            grace = mapping.grace_of(kill_policy)
            self._kill_pod(task.pod, task.kill_grace if grace is None else grace,
                           f"Task killed by the framework ({tid})" if len(task.pod.tasks) > 1 else None)

    def frameworkMessage(self, driver, message) -> None:
        log.info("framework message (%d bytes base64) ignored", len(message or ""))

    def error(self, driver, message) -> None:
        log.error("agent error: %s", message)

    def acknowledged(self, driver, task_id: str, update_uuid) -> None:
        self._maybe_exit()

    def shutdown(self, driver, reason: str = "SHUTDOWN") -> None:
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
        log.info("shutting down (%s)", reason)
        self._spawn(self._shutdown, reason, name="mesos-shutdown")

    # -- launching --------------------------------------------------------------------------------
    def _accept(self, infos: list[dict], group: bool) -> None:
        """Register the tasks at once (a KILL right behind the LAUNCH must find them), launch in
        a thread."""
        with self._lock:
            if self._shutting_down:
                log.warning("LAUNCH while shutting down: ignored")
                return
            pod = PodRun(uuid=str(uuid_mod.uuid4()), group=group)
            for info in infos:
                grace = mapping.grace_of(info.get("kill_policy"))
                t = Task(id=info["task_id"]["value"], info=info, apps=[], sandbox="", pod=pod,
                         kill_grace=mapping.DEFAULT_KILL_GRACE if grace is None else grace)
                pod.tasks.append(t)
                self.tasks[t.id] = t
            self._launching += 1
            self._launched_any = True
        self._spawn(self._launch, pod, infos, name="mesos-launch")

    def _launch(self, pod: PodRun, infos: list[dict]) -> None:
        try:
            self._launch_inner(pod, infos)
        finally:
            with self._lock:
                self._launching -= 1
            self._maybe_exit()

    def _launch_inner(self, pod: PodRun, infos: list[dict]) -> None:
        try:
            plan = mapping.plan_pod(infos, self.executor_info, self.sandbox, group=pod.group,
                                    framework_id=self.framework_id, executor_id=self.executor_id)
        except mapping.InvalidTask as e:
            with self._lock:
                for t in pod.tasks:
                    self._update(t, "TASK_ERROR", reason="REASON_TASK_INVALID", message=str(e))
                pod.phase = "gone"
            return
        with self._lock:
            by_id = {tp.task_id: tp for tp in plan.tasks}
            for t in pod.tasks:
                tp = by_id[t.id]
                t.apps, t.kill_grace, t.sandbox = tp.apps, tp.kill_grace, tp.sandbox
            self.pods[pod.uuid] = pod
            if self._killed_before_start(pod):
                return
            for t in pod.tasks:
                self._update(t, "TASK_STARTING")
        eng = self.engine()
        error = None
        try:
            for d in plan.dirs:
                os.makedirs(d, exist_ok=True)
            for tp in plan.tasks:
                os.makedirs(tp.sandbox, exist_ok=True)
                for stream in ("stdout", "stderr"):
                    Path(tp.sandbox, stream).touch()
            resolved: dict[tuple[str, str], Any] = {}
            for app in plan.manifest.apps:
                if self._killed_before_start(pod):
                    return
                key = (app.image, plan.pulls.get(app.name, "new"))
                if key not in resolved:
                    resolved[key] = eng.resolve_image(key[0], pull=key[1])
                app.image_id = resolved[key].id
        except (PypodError, OSError) as e:
            error = f"Failed to fetch image: {e}"
        if error is None and not self._killed_before_start(pod):
            try:
                eng.run(plan.manifest, pull="never", uuid=pod.uuid)
            except (PypodError, OSError) as e:
                error = f"Failed to launch the pod: {e}"
                self._remove(eng, pod.uuid)
        elif error is None:
            return
        if error is not None:
            with self._lock:
                for t in pod.tasks:
                    self._update(t, "TASK_FAILED", reason="REASON_CONTAINER_LAUNCH_FAILED", message=error)
                pod.phase = "gone"
                self.pods.pop(pod.uuid, None)
            return
        try:
            pod.info = eng.info(eng.pods.get(pod.uuid))  # from the files: no runtime call
            paths = eng.log_paths(pod.uuid)
        except PypodError as e:
            log.warning("pod %s: %s", pod.uuid, e)
            paths = {}
        sandboxes = {a: t.sandbox for t in pod.tasks for a in t.apps}
        pod.pump = SandboxPump({a: p for a, p in paths.items() if a in sandboxes}, sandboxes)
        with self._lock:
            pod.phase = "running"
            for t in pod.tasks:
                self._update(t, "TASK_RUNNING", extra=self._container_status(pod))
            for t in pod.tasks:
                self._evaluate(t)  # exits that came while launching
            if pod.kill_deadline is not None:  # KILL or SHUTDOWN while launching
                self._spawn(self._stop_pod, pod, max(0.0, pod.kill_deadline - time.monotonic()), name="mesos-kill")

    def _killed_before_start(self, pod: PodRun) -> bool:
        """A KILL or SHUTDOWN came before the pod started: TASK_KILLED, nothing runs."""
        with self._lock:
            if pod.kill_deadline is None:
                return False
            for t in pod.tasks:
                self._update(t, "TASK_KILLED", reason="REASON_TASK_KILLED_DURING_LAUNCH",
                             message="Killed before the pod started")
            pod.phase = "gone"
            self.pods.pop(pod.uuid, None)
            return True

    # -- exits ------------------------------------------------------------------------------------
    def _watch(self, since: float) -> None:
        for ev in events.follow(self.config.data_dir, since=since, filters={"type": events.APP_EXITED},
                                stop=self._stop):
            pod_uuid, app = ev.get("pod"), ev.get("app")
            if pod_uuid in self.pods and app:
                self._on_exit(pod_uuid, app, ev.get("exit_code"), ev.get("signal"), bool(ev.get("oom_killed")))

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(RECONCILE_INTERVAL):
            with self._lock:
                live = [p for p in self.pods.values() if p.phase == "running"]
            for pod in live:
                self._reconcile(pod)

    def _reconcile(self, pod: PodRun) -> None:
        """Exits the engine knows of and the event log did not bring (none, normally)."""
        try:
            info = self.engine().status(pod.uuid)
        except PypodError:
            return
        for a in info.apps:
            if a.state == "exited" and a.name not in pod.exits:
                self._on_exit(pod.uuid, a.name, a.exit_code, a.signal, a.oom_killed)

    def _on_exit(self, pod_uuid: str, app: str, code: int | None, sig: int | None, oom: bool) -> None:
        with self._lock:
            pod = self.pods.get(pod_uuid)
            if pod is None or app in pod.exits:
                return
            pod.exits[app] = (code, sig, oom)
        if pod.pump is not None:
            try:
                pod.pump.drain()  # the output reaches the sandbox before the terminal update
            except OSError as e:
                log.warning("copying output of %s: %s", app, e)
        with self._lock:
            task = pod.task_of(app)
            if task is not None:
                self._evaluate(task)

    def _evaluate(self, task: Task) -> None:
        """The task's terminal update once all its apps exited (self._lock held)."""
        pod = task.pod
        if task.terminal or pod.phase == "launching":
            return
        ex = [pod.exits.get(a) for a in task.apps]
        if any(e is None for e in ex):
            return
        failed = [e for e in ex if e[0] != 0 or e[1]]
        if task.killing:
            self._update(task, "TASK_KILLED", message=task.kill_message or "Task killed")
        elif any(e[2] for e in ex):
            mem = mapping.scalar(task.info.get("resources"), "mem")
            limitation = {"resources": [{"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}]} \
                if mem else {}
            self._update(task, "TASK_FAILED", reason="REASON_CONTAINER_LIMITATION_MEMORY",
                         message="Memory limit exceeded: the OOM killer ended the task "
                                 f"({mapping.exit_message(*failed[0][:2]) if failed else 'exit'})",
                         extra={"limitation": limitation} if limitation else None)
        elif failed:
            self._update(task, "TASK_FAILED", message=mapping.exit_message(*failed[0][:2]))
        else:
            self._update(task, "TASK_FINISHED", message=mapping.exit_message(0, None))
        if pod.group and task.state in ("TASK_FAILED", "TASK_KILLED") and \
                any(not t.terminal for t in pod.tasks) and pod.kill_deadline is None:
            grace = max(t.kill_grace for t in pod.tasks if not t.terminal)
            self._kill_pod(pod, grace, f"Killed: task {task.id} of the group is {task.state}")
        if all(t.terminal for t in pod.tasks) and pod.phase == "running":
            pod.phase = "finishing"
            self._spawn(self._finish_pod, pod, name="mesos-finish")

    # -- killing ----------------------------------------------------------------------------------
    def _kill_pod(self, pod: PodRun, grace: float, message: str | None) -> None:
        """Kill every live task of ``pod`` (self._lock held)."""
        deadline = time.monotonic() + grace
        for t in pod.tasks:
            if not t.terminal and not t.killing:
                t.killing = True
                t.kill_message = message
                self._update(t, "TASK_KILLING")
        if pod.kill_deadline is not None and deadline >= pod.kill_deadline:
            return  # a stop with an earlier SIGKILL is under way
        pod.kill_deadline = deadline
        if pod.phase == "running":
            self._spawn(self._stop_pod, pod, grace, name="mesos-kill")
        # launching: _launch_inner sees kill_deadline; finishing or gone: nothing left to stop

    def _stop_pod(self, pod: PodRun, grace: float) -> None:
        eng = self.engine()
        try:
            eng.stop(pod.uuid, grace=grace, force=grace <= 0)
        except (Conflict, NotFound):
            pass  # exited already (or a concurrent stop finished it)
        except PypodError as e:
            log.warning("stopping pod %s: %s", pod.uuid, e)
        self._reconcile(pod)

    def _finish_pod(self, pod: PodRun) -> None:
        """All its tasks are terminal: wait for the pod to exit, copy the rest of the output,
        remove the pod."""
        eng = self.engine()
        try:
            eng.wait(pod.uuid, timeout=30)
        except TimeoutError:
            try:
                eng.stop(pod.uuid, force=True)
            except PypodError:
                pass
        except PypodError:
            pass
        if pod.pump is not None:
            pod.pump.close()
        self._remove(eng, pod.uuid)
        with self._lock:
            pod.phase = "gone"
            self.pods.pop(pod.uuid, None)
        self._maybe_exit()

    def _remove(self, eng: Engine, pod_uuid: str) -> None:
        try:
            eng.rm(pod_uuid)
        except NotFound:
            pass
        except PypodError as e:
            log.warning("removing pod %s: %s", pod_uuid, e)

    # -- ending -----------------------------------------------------------------------------------
    def _maybe_exit(self) -> None:
        """Exit once every task given is terminal, its pod removed and its updates acknowledged."""
        with self._lock:
            if self._exiting or self._shutting_down or not self._launched_any or self._launching or self.pods:
                return
            if any(not t.terminal for t in self.tasks.values()):
                return
            if self.driver is None or self.driver.unacknowledged():
                return
            self._exiting = True
        log.info("every task is done and acknowledged: exiting")
        self._spawn(self._exit, name="mesos-exit")

    def _exit(self) -> None:
        self._stop.set()
        if self.driver is not None:
            self.driver.stop()

    def _shutdown(self, reason: str) -> None:
        drv = self.driver
        grace_total = drv.grace_shutdown_period if drv is not None else 5.0
        budget = max(0.0, grace_total - 1.0)  # leave time for the updates and their acks
        with self._lock:
            pods = list({id(t.pod): t.pod for t in self.tasks.values() if not t.terminal}.values())
            for pod in pods:  # running, and launching (they stop as soon as they can)
                grace = min(max((t.kill_grace for t in pod.tasks), default=0.0), budget)
                self._kill_pod(pod, grace, "Killed: the executor is shutting down")
        deadline = time.monotonic() + budget + 10
        while time.monotonic() < deadline:
            with self._lock:
                if self._launching == 0 and not self.pods:
                    break
            time.sleep(0.05)
        with self._lock:
            for t in self.tasks.values():
                if not t.terminal:
                    self._update(t, "TASK_KILLED", message="Killed: the executor is shutting down "
                                                           "(the pod did not stop in time)")
        if drv is not None and reason in ("SHUTDOWN", "SIGTERM"):  # else no agent to acknowledge
            if not drv.wait_acknowledged(ACK_FAILSAFE):
                log.warning("exiting with unacknowledged updates: %s",
                            [(s["task_id"]["value"], s["state"]) for s in drv.unacknowledged()])
        self._exit()

    def abandon(self) -> None:
        """The driver died (the agent refused us): stop every pod at once, nothing to report."""
        self._stop.set()
        eng = self.engine()
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            try:
                eng.stop(pod.uuid, force=True)
            except PypodError:
                pass
            if pod.pump is not None:
                pod.pump.close()
            self._remove(eng, pod.uuid)


# -- the command ----------------------------------------------------------------------------------

REQUIRED_ENV = ("MESOS_FRAMEWORK_ID", "MESOS_EXECUTOR_ID", "MESOS_AGENT_ENDPOINT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pypod-mesos-executor",
        description="A Mesos executor (v1 HTTP API) running tasks and task groups as pypod pods. "
                    "The Mesos agent starts it with MESOS_* in the environment.")
    parser.add_argument("--dir", help="pypod's data dir (default: $PYPOD_DIR or the configured one)")
    parser.add_argument("--config-dir", help="pypod's config dir (default: $PYPOD_CONFIG_DIR or /etc/pypod)")
    parser.add_argument("--log-level", default=os.environ.get("PYPOD_MESOS_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s pypod-mesos-executor %(levelname)s [%(threadName)s] %(message)s")
    missing = [v for v in REQUIRED_ENV if not os.environ.get(v)]
    if missing:
        print(f"pypod-mesos-executor: {', '.join(missing)} not set: the Mesos agent starts this executor",
              file=sys.stderr)
        return 2
    try:
        config = load_config(args.dir, args.config_dir)
    except PypodError as e:
        print(f"pypod-mesos-executor: {e}", file=sys.stderr)
        return 2
    executor = PodExecutor(config)
    try:
        executor.collect_orphans()
    except (PypodError, OSError) as e:
        log.warning("looking for pods a previous executor left: %s", e)
    driver = PodExecutorDriver(executor)
    executor.driver = driver
    executor.start()
    signal.signal(signal.SIGTERM, lambda *_: executor.shutdown(driver, reason="SIGTERM"))
    try:
        driver.run()
    except BaseException as e:  # pymesos re-raises its IO thread's error here (interrupt_main)
        log.error("the driver failed: %s: %s", type(e).__name__, e)
        executor.abandon()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
