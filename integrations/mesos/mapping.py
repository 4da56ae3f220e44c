"""From Mesos' TaskInfo (v1 JSON) to a pypod pod manifest, and the task states back.

One ``LAUNCH`` (a TaskInfo) is a one-app pod; one ``LAUNCH_GROUP`` (TaskGroupInfo) is one pod
with an app per task. Everything is validated before anything runs: an invalid task (or any
invalid task of a group, which fails the group whole) becomes TASK_ERROR with
REASON_TASK_INVALID.

Per task (the app):

- image: ``container.mesos.image`` of type DOCKER (``docker.name``); ``cached: false`` pulls
  again (Marathon's forcePull). A ``container.type: DOCKER`` with ``docker.image`` is accepted
  for plain LAUNCH too. APPC images are refused.
- command (``CommandInfo``): ``shell`` (default true) with ``value`` runs ``/bin/sh -c value``;
  ``shell: false`` with ``value`` runs ``value`` with ``arguments[1:]`` (``arguments[0]`` is
  argv[0], as execlp); ``shell: false`` without ``value`` keeps the image's Entrypoint, and
  ``arguments``, if any, replace its Cmd (Marathon pods); no command: the image's own.
  ``environment.variables`` (VALUE only) and ``user`` apply.
- resources: ``cpus`` (or ``limits.cpus``) become a CPU limit in millicores, ``mem`` (or
  ``limits.mem``) a memory limit (MB); ``Infinity`` is no limit.
- sandbox (Mesos' conventions): a plain LAUNCH uses the executor's sandbox (``MESOS_DIRECTORY``)
  as the command executor does; a task of a group gets ``<sandbox>/tasks/<task_id>`` as the
  default executor does. That directory is mounted at ``/mnt/mesos/sandbox`` in the app, where
  ``MESOS_SANDBOX`` points, and the app's stdout and stderr are copied to its ``stdout`` and
  ``stderr`` files. ``container.volumes``: ``SANDBOX_PATH`` (type PARENT: the executor's sandbox,
  shared by the apps of a group; SELF: the task's), ``HOST_PATH`` and the legacy ``host_path``;
  a relative ``container_path`` is under the sandbox mount.
- ``kill_policy.grace_period``: the task's stop grace (default 3 s, as Mesos' default executor).

Per pod: networks from ``network_infos`` (the executor's ``container`` and the tasks'): each
``name`` is a pypod (CNI) network; none at all, or one without a name, is the host's network as in
Mesos. ``port_mappings`` publish ports; ``container.hostname`` names the pod.

A full pypod pod manifest may be given instead (JSON, in the label ``pypod.manifest`` or as
``data``, a PodManifest document with ``"kind": "PodManifest"``): on a plain LAUNCH it is the
whole pod (the task is all of its apps); on a task of a group it must hold one app, which is that
task's app. On ExecutorInfo it is the template of every pod of the executor (its apps ignored):
volumes, DNS, hostname, isolators and so on.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from pypod.errors import UsageError
from pypod.pods.manifest import App, Mount, Network, PodManifest, Port, Resources, Volume

SANDBOX_MOUNT = "/mnt/mesos/sandbox"  # the agent's --sandbox_directory default
MANIFEST_LABEL = "pypod.manifest"
DEFAULT_KILL_GRACE = 3.0  # Mesos' default executor
LABEL_FRAMEWORK = "mesos.framework"
LABEL_EXECUTOR = "mesos.executor"
ANNOTATION_TASK = "mesos.task"


class InvalidTask(Exception):
    """A task that can never run as given: TASK_ERROR with REASON_TASK_INVALID."""


@dataclass
class TaskPlan:
    task_id: str
    info: dict
    apps: list[str]  # the pod's apps this task is
    kill_grace: float
    sandbox: str  # host path of the task's sandbox (stdout and stderr files)


@dataclass
class PodPlan:
    manifest: PodManifest
    tasks: list[TaskPlan]
    pulls: dict[str, str] = field(default_factory=dict)  # app -> pull policy (new | update)
    group: bool = False
    dirs: list[str] = field(default_factory=list)  # sandbox directories to create before the pod


# -- small readers of the v1 JSON ----------------------------------------------------------------


def labels(obj: dict | None) -> dict[str, str]:
    out = {}
    for lab in ((obj or {}).get("labels") or {}).get("labels") or []:
        if isinstance(lab, dict) and lab.get("key"):
            out[lab["key"]] = lab.get("value", "")
    return out


def grace_of(policy: dict | None) -> float | None:
    """Seconds of a KillPolicy's grace period (None if unset)."""
    if not policy or not isinstance(policy.get("grace_period"), dict):
        return None
    ns = policy["grace_period"].get("nanoseconds")
    try:
        return max(0.0, int(ns) / 1e9)
    except (TypeError, ValueError):
        return None


def scalar(resources: Sequence[dict] | None, name: str) -> float | None:
    total = None
    for r in resources or []:
        if r.get("name") == name and r.get("type", "SCALAR") == "SCALAR" and "scalar" in r:
            total = (total or 0.0) + float(r["scalar"].get("value", 0))
    return total


def _limit(task: dict, name: str) -> float | None:
    lim = (task.get("limits") or {}).get(name)
    if lim is None:
        return None
    v = lim.get("value") if isinstance(lim, dict) else lim
    v = float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))
    return v


def manifest_from(obj: dict | None, what: str) -> PodManifest | None:
    """A pypod manifest carried by a TaskInfo or ExecutorInfo (label or data), or None."""
    if not obj:
        return None
    text = labels(obj).get(MANIFEST_LABEL)
    if text is None and obj.get("data"):
        try:
            raw = base64.b64decode(obj["data"])
            doc = json.loads(raw)
        except (ValueError, TypeError):
            return None  # data is the framework's own business
        if not isinstance(doc, dict) or doc.get("kind") != "PodManifest":
            return None
        text = raw.decode()
    if text is None:
        return None
    try:
        return PodManifest.from_json(text, validate=False)
    except UsageError as e:
        raise InvalidTask(f"{what}: invalid pod manifest: {e}") from None


def app_name(task: dict, taken: set[str]) -> str:
    base = (task.get("name") or task["task_id"]["value"]).lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", base).strip("._-")[:55].strip("._-") or "task"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


# -- the pod ------------------------------------------------------------------------------------


def plan_pod(tasks: list[dict], executor_info: dict | None, sandbox: str, *, group: bool,
             framework_id: str, executor_id: str) -> PodPlan:
    """The pod for a LAUNCH (one task) or a LAUNCH_GROUP; raises InvalidTask."""
    if not tasks:
        raise InvalidTask("empty task group")
    ids = [t.get("task_id", {}).get("value") for t in tasks]
    for tid in ids:
        if not tid or "/" in tid or tid in (".", "..") or "\x00" in tid:
            raise InvalidTask(f"invalid task id {tid!r}")
    if len(set(ids)) != len(ids):
        raise InvalidTask("duplicate task ids in the group")
    template = manifest_from(executor_info, "ExecutorInfo")
    whole = manifest_from(tasks[0], f"task {ids[0]}") if not group else None
    if whole is not None:
        return _plan_whole(tasks[0], whole, sandbox, framework_id, executor_id)
    manifest = template or PodManifest()
    manifest.apps = []
    manifest.exit_policy = "all-exited"  # a failed task kills its siblings: the executor does it
    manifest.mutable = False
    plan = PodPlan(manifest=manifest, tasks=[], group=group)
    taken: set[str] = set()
    for task in tasks:
        tid = task["task_id"]["value"]
        task_sandbox = os.path.join(sandbox, "tasks", tid) if group else sandbox
        own = manifest_from(task, f"task {tid}")
        if own is not None:
            if len(own.apps) != 1:
                raise InvalidTask(f"task {tid}: a task of a group carries a manifest of exactly one app")
            app = own.apps[0]
            app.name = app_name({"name": app.name, "task_id": task["task_id"]}, taken)
            manifest.volumes.extend(v for v in own.volumes if manifest.volume(v.name) is None)
            pull = "new"
        else:
            app, pull = _app_from_task(task, taken, manifest, sandbox, task_sandbox)
        _add_sandbox(manifest, app, task_sandbox, tid)
        app.annotations[ANNOTATION_TASK] = tid
        manifest.apps.append(app)
        plan.pulls[app.name] = pull
        grace = grace_of(task.get("kill_policy"))
        plan.tasks.append(TaskPlan(task_id=tid, info=task, apps=[app.name],
                                   kill_grace=DEFAULT_KILL_GRACE if grace is None else grace,
                                   sandbox=task_sandbox))
    if template is None or not template.networks or template.networks == [Network("default")]:
        _networks(manifest, executor_info, tasks)
    hostname = ((executor_info or {}).get("container") or {}).get("hostname")
    if hostname:
        manifest.hostname = hostname
    _finish(manifest, framework_id, executor_id)
    plan.dirs = _sandbox_dirs(manifest, sandbox)
    return plan


def _sandbox_dirs(manifest: PodManifest, sandbox: str) -> list[str]:
    root = os.path.join(sandbox, "")
    return [v.source for v in manifest.volumes if v.kind == "host" and v.source
            and (v.source + "/").startswith(root)]


def _plan_whole(task: dict, manifest: PodManifest, sandbox: str, framework_id: str, executor_id: str) -> PodPlan:
    tid = task["task_id"]["value"]
    if not manifest.apps:
        raise InvalidTask(f"task {tid}: its pod manifest has no apps")
    manifest.mutable = False
    for app in manifest.apps:
        _add_sandbox(manifest, app, sandbox, tid)
        app.annotations[ANNOTATION_TASK] = tid
    grace = grace_of(task.get("kill_policy"))
    plan = PodPlan(manifest=manifest, tasks=[TaskPlan(
        task_id=tid, info=task, apps=[a.name for a in manifest.apps],
        kill_grace=DEFAULT_KILL_GRACE if grace is None else grace, sandbox=sandbox)])
    plan.pulls = {a.name: "new" for a in manifest.apps}
    _finish(manifest, framework_id, executor_id)
    plan.dirs = _sandbox_dirs(manifest, sandbox)
    return plan


def _finish(manifest: PodManifest, framework_id: str, executor_id: str) -> None:
    manifest.labels[LABEL_FRAMEWORK] = framework_id
    manifest.labels[LABEL_EXECUTOR] = executor_id
    try:
        manifest.validate()
    except UsageError as e:
        raise InvalidTask(f"invalid pod: {e}") from None


def _image(task: dict) -> tuple[str, str]:
    tid = task["task_id"]["value"]
    c = task.get("container") or {}
    ctype = c.get("type", "MESOS")
    if ctype == "DOCKER":
        name = (c.get("docker") or {}).get("image")
        if not name:
            raise InvalidTask(f"task {tid}: container.docker.image is missing")
        return name, "update" if (c.get("docker") or {}).get("force_pull_image") else "new"
    if ctype != "MESOS":
        raise InvalidTask(f"task {tid}: container type {ctype} is not supported (use MESOS with a DOCKER image)")
    img = (c.get("mesos") or {}).get("image")
    if not img:
        raise InvalidTask(f"task {tid}: no image (TaskInfo.container.mesos.image): pypod runs every task "
                          "from an image")
    itype = img.get("type", "DOCKER")
    if itype != "DOCKER":
        raise InvalidTask(f"task {tid}: {itype} images are not supported (DOCKER only)")
    name = (img.get("docker") or {}).get("name")
    if not name:
        raise InvalidTask(f"task {tid}: container.mesos.image.docker.name is missing")
    return name, "new" if img.get("cached", True) else "update"


def _app_from_task(task: dict, taken: set[str], manifest: PodManifest, exec_sandbox: str,
                   task_sandbox: str) -> tuple[App, str]:
    tid = task["task_id"]["value"]
    image, pull = _image(task)
    app = App(name=app_name(task, taken), image=image)
    cmd = task.get("command")
    if cmd:
        shell = cmd.get("shell", True)
        value = cmd.get("value")
        args = [str(a) for a in cmd.get("arguments") or []]
        if shell:
            if not value:
                raise InvalidTask(f"task {tid}: command.shell is true but command.value is empty")
            app.exec = ["/bin/sh", "-c", value]
        elif value:
            app.exec = [value] + args[1:]
        elif args:
            app.args = args
        for var in (cmd.get("environment") or {}).get("variables") or []:
            if var.get("type", "VALUE") != "VALUE":
                raise InvalidTask(f"task {tid}: environment variable {var.get('name')!r}: only VALUE "
                                  "variables are supported")
            if not var.get("name"):
                raise InvalidTask(f"task {tid}: environment variable without a name")
            app.env[var["name"]] = str(var.get("value", ""))
        if cmd.get("user"):
            app.user = cmd["user"]
        if cmd.get("uris"):
            raise InvalidTask(f"task {tid}: command.uris (the fetcher) is not supported by pypod's executor")
    app.env.setdefault("MESOS_TASK_ID", tid)
    cpus = _limit(task, "cpus") or scalar(task.get("resources"), "cpus")
    mem = _limit(task, "mem") or scalar(task.get("resources"), "mem")
    res = Resources()
    if cpus is not None and math.isfinite(cpus) and cpus > 0:
        res.cpu = max(10, int(round(cpus * 1000)))
    if mem is not None and math.isfinite(mem) and mem > 0:
        res.memory = int(mem * (1 << 20))
    app.resources = res
    for i, vol in enumerate((task.get("container") or {}).get("volumes") or []):
        _volume(manifest, app, vol, f"task {tid}: container.volumes[{i}]", exec_sandbox, task_sandbox)
    return app, pull


def _volume(manifest: PodManifest, app: App, vol: dict, where: str, exec_sandbox: str, task_sandbox: str) -> None:
    target = vol.get("container_path")
    if not target:
        raise InvalidTask(f"{where}: container_path is missing")
    if not target.startswith("/"):
        target = os.path.join(SANDBOX_MOUNT, target)
    ro = vol.get("mode", "RW") == "RO"
    src = vol.get("source") or {}
    stype = src.get("type")
    if stype == "SANDBOX_PATH":
        sp = src.get("sandbox_path") or {}
        rel = sp.get("path", "")
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise InvalidTask(f"{where}: sandbox_path.path must be relative, without '..'")
        base = exec_sandbox if sp.get("type", "SELF") == "PARENT" else task_sandbox
        host = os.path.join(base, rel)
    elif stype == "HOST_PATH":
        host = (src.get("host_path") or {}).get("path")
    elif stype is None and vol.get("host_path"):
        host = vol["host_path"]
    else:
        raise InvalidTask(f"{where}: volume source {stype or 'image'} is not supported "
                          "(SANDBOX_PATH and HOST_PATH are)")
    if not host or not host.startswith("/"):
        raise InvalidTask(f"{where}: the host path must be absolute")
    key = "v-" + re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")[-50:]
    if manifest.volume(key) is None:
        manifest.volumes.append(Volume(name=key, kind="host", source=host))
    app.mounts.append(Mount(volume=key, target=target, read_only=ro))


def _add_sandbox(manifest: PodManifest, app: App, sandbox: str, tid: str) -> None:
    key = f"sandbox-{app.name}"[:63].rstrip("._-")
    manifest.volumes.append(Volume(name=key, kind="host", source=sandbox))
    app.mounts.insert(0, Mount(volume=key, target=SANDBOX_MOUNT))  # before volumes inside it
    app.env["MESOS_SANDBOX"] = SANDBOX_MOUNT


def _networks(manifest: PodManifest, executor_info: dict | None, tasks: list[dict]) -> None:
    infos = list(((executor_info or {}).get("container") or {}).get("network_infos") or [])
    for t in tasks:
        infos.extend((t.get("container") or {}).get("network_infos") or [])
    names: list[str] = []
    host = not infos
    for ni in infos:
        name = ni.get("name")
        if not name:
            host = True
            continue
        if name not in names:
            names.append(name)
        for pm in ni.get("port_mappings") or []:
            manifest.ports.append(Port(container_port=int(pm.get("container_port", 0)),
                                       protocol=(pm.get("protocol") or "tcp").lower(),
                                       host_port=int(pm.get("host_port", 0))))
    if host and names:
        raise InvalidTask("network_infos mix the host network (no name) with named networks")
    manifest.networks = [Network("host")] if host else [Network(n) for n in names]


# -- states back --------------------------------------------------------------------------------


def exit_message(code: int | None, signal: int | None) -> str:
    if signal:
        return f"Command terminated by signal {signal}"
    return f"Command exited with status {code}"
