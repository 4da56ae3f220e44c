"""Stage0: from a pod manifest to running apps and back to nothing.

The engine ties the pieces together: the pod state machine (:mod:`.state`), images
(:mod:`pypod.images`), networks (:mod:`pypod.network`) and a stage1 flavor
(:mod:`pypod.stage1`). The CLI and every driver reach pods only through :class:`Engine`.

No pypod process stays up while a pod runs. The pod lock is handed to the infra's conmon, and
conmon runs ``pypod _hook app-exited POD APP`` when an app exits: that short-lived process records
the exit, applies the app's restart policy and the pod's exit policy, and goes away.

On disk, per pod (besides what :mod:`.state` keeps)::

    apps/<app>/rootfs   overlay of the image's snapshots (mounted while the pod has run, until gc)
    apps/<app>/upper    the app's changes (``export`` turns them into an image layer)
    volumes/<name>      ``empty`` volumes
    etc/                hosts, resolv.conf, hostname given to every app
    net-info.json       the pod's network attachments (network.attach / detach)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .. import events
from ..config import Config
from ..errors import Conflict, NotFound, PypodError, UsageError
from . import status as status_mod
from .manifest import App, PodManifest, Resources, Volume, resolve_process
from .state import RUN_DIR, LockedPod, Pod, PodStore

if TYPE_CHECKING:
    from ..images import Image, ImageStore
    from ..stage1 import AppConfig, PodConfig, Stage1

DEFAULT_STOP_GRACE = 10.0
NET_STATE = "net-info.json"
EXIT_POLICIES = ("all-exited", "any-exited", "any-failed")


@dataclass
class AppInfo:
    """One app as ``status`` and ``list`` show it."""

    name: str
    image: str
    image_id: str | None
    state: str
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    restarts: int = 0
    pid: int | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PodInfo:
    uuid: str
    state: str
    created: float | None
    started: float | None
    exited: float | None
    apps: list[AppInfo] = field(default_factory=list)
    networks: list[dict[str, Any]] = field(default_factory=list)
    ip: str | None = None
    exit_code: int | None = None
    mutable: bool = False
    stage1: str = "oci"
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["apps"] = [a.to_dict() for a in self.apps]
        return d


def failpoint(name: str) -> None:
    """Crash here (SIGKILL, as a power cut or the OOM killer would) when ``PYPOD_FAILPOINT``
    names this point: how the crash-safety tests stop pypod between two steps."""
    if os.environ.get("PYPOD_FAILPOINT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class Engine:
    """The engine API: one per data dir; cheap to create (nothing is touched until used)."""

    def __init__(self, config: Config):
        self.config = config
        self.pods = PodStore(config.data_dir)
        self._images: "ImageStore | None" = None

    @property
    def images(self) -> "ImageStore":
        if self._images is None:
            from ..images import ImageStore

            self._images = ImageStore(self.config)
        return self._images

    def _emit(self, type_: str, **attrs: Any) -> None:
        events.emit(self.config.data_dir, type_, **attrs)

    # -- creating pods ------------------------------------------------------------------------
    def resolve_image(self, name: str, *, pull: str = "new", progress: Callable | None = None,
                      credentials: tuple[str, str] | None = None) -> "Image":
        """The image ``name`` from the store, fetched first when missing (``pull="new"``),
        always (``"update"``) or never (``"never"``). ``credentials`` (user, password) are used
        for ``name``'s repository on top of the auth file (an orchestrator's per-workload auth)."""
        if pull not in ("new", "update", "never"):
            raise UsageError(f"--pull-policy {pull!r}: expected new, update or never")
        if pull != "update":
            try:
                img = self.images.resolve(name)
                return img
            except NotFound:
                if pull == "never":
                    raise
        if name.startswith(("oci:", "oci-archive:", "docker-archive:")):
            return self.images.import_source(name, progress=progress)
        if credentials is not None:
            from ..images import reference
            from ..images.auth import load_auths

            r = reference.parse(name)
            auths = dict(load_auths(self.config.auth_file))
            auths[f"{r.host}/{r.path}"] = (credentials[0], credentials[1])
            return self.images.pull(name, progress=progress, auths=auths)
        return self.images.pull(name, progress=progress)

    def prepare(self, manifest: PodManifest, *, pull: str = "new", uuid: str | None = None,
                progress: Callable | None = None) -> Pod:
        """``rkt prepare``: resolve images, lay out the pod; it waits in prepared/ for run-prepared."""
        locked = self._create(manifest, pull, uuid, progress)
        return locked.to_prepared()

    def run(self, manifest: PodManifest, *, pull: str = "new", uuid: str | None = None,
            progress: Callable | None = None) -> str:
        """Create and start a pod; returns its UUID once every app is running."""
        locked = self._create(manifest, pull, uuid, progress)
        self._emit(events.POD_PREPARED, pod=locked.uuid)
        locked.to_run()
        self._start(locked)
        return locked.uuid

    def run_prepared(self, ref: str) -> str:
        locked = self.pods.run_prepared(ref)
        self._start(locked)
        return locked.uuid

    def sandbox(self, manifest: PodManifest | None = None, *, uuid: str | None = None) -> str:
        """``app sandbox``: a running pod with no apps, kept alive until stopped (mutable)."""
        manifest = manifest or PodManifest()
        manifest.mutable = True
        return self.run(manifest, uuid=uuid)

    def _create(self, manifest: PodManifest, pull: str, uuid: str | None, progress: Callable | None
                ) -> LockedPod:
        if manifest.exit_policy not in EXIT_POLICIES:
            raise UsageError(f"exitPolicy: {manifest.exit_policy!r} is not one of {', '.join(EXIT_POLICIES)}")
        if manifest.stage1 == "fly" and len(manifest.apps) != 1:
            raise UsageError("stage1 fly runs exactly one app")
        if not manifest.apps and not manifest.mutable:
            raise UsageError("a pod needs at least one app (or use `app sandbox`)")
        images = []
        for i, app in enumerate(manifest.apps):
            img = self.resolve_image(app.image, pull=pull, progress=progress)
            app.image_id = img.id
            images.append(img)
        self._resolve_named_ports(manifest, images)
        manifest.validate()
        locked = self.pods.create(manifest, uuid=uuid)
        failpoint("create")
        try:
            for img in images:
                self.images.hold(locked.uuid, img)
            self._flavor(manifest).prepare(self._pod_config(locked, manifest))
            failpoint("prepared")
        except BaseException:
            self.images.release(locked.uuid)
            locked.abort()
            raise
        return locked

    def _resolve_named_ports(self, manifest: PodManifest, images: Sequence["Image"]) -> None:
        """rkt's ``--port NAME:[HOSTIP:]HOSTPORT``: NAME (``80-tcp``) is a port the apps' images
        declare (``ExposedPorts``); fill in its number and protocol, keep the name."""
        if not any(p.name and not p.container_port for p in manifest.ports):
            return
        from ..network.ports import exposed_port_names, resolve_port
        from .manifest import Port

        declared: dict[str, tuple[int, str]] = {}
        for img in images:
            declared.update(exposed_port_names(self.images.image_config(img).config.get("ExposedPorts")))
        for i, p in enumerate(manifest.ports):
            if p.name and not p.container_port:
                m = resolve_port(p, declared)
                manifest.ports[i] = Port(container_port=m.container_port, protocol=m.protocol,
                                         host_port=m.host_port, host_ip=m.host_ip, name=p.name)

    # -- starting -------------------------------------------------------------------------------
    def _flavor(self, manifest: PodManifest) -> "Stage1":
        from ..stage1 import get_flavor

        return get_flavor(manifest.stage1)

    def _pod_config(self, pod: Pod, manifest: PodManifest, *, lock_fd: int | None = None,
                    network: str = "private") -> "PodConfig":
        from ..stage1 import PodConfig
        from . import isolation

        etc = pod.path / "etc"
        hostname = manifest.hostname or f"pypod-{pod.uuid[:8]}"
        cfg = PodConfig(
            id=pod.uuid, dir=str(pod.path), hostname=hostname if network != "host" else None,
            share_pid=manifest.pid_mode == "pod", host_pid=manifest.pid_mode == "host", network=network,
            ipc="host" if manifest.ipc_mode == "host" else "private",
            uts="host" if network == "host" else "private",
            runtime=manifest.runtime or self.config.runtime,
            etc_hosts=str(etc / "hosts") if (etc / "hosts").exists() else None,
            etc_resolv_conf=str(etc / "resolv.conf") if (etc / "resolv.conf").exists() else None,
            etc_hostname=str(etc / "hostname") if (etc / "hostname").exists() else None,
            exit_command=self._hook_argv("app-exited"), lock_fd=lock_fd)
        if manifest.cgroup_parent:
            cfg.cgroup_parent = manifest.cgroup_parent
        return isolation.pod_config(cfg, manifest, pod.path)

    def _hook_argv(self, hook: str) -> list[str]:
        return [sys.executable, "-m", "pypod.cli", "--dir", str(self.config.data_dir),
                "--config-dir", str(self.config.config_dir), "_hook", hook]

    def _net_settings(self):
        from ..network import NetSettings

        return NetSettings.from_config(self.config)

    def _network_up(self, pod: Pod, manifest: PodManifest, netns: str | None = None) -> tuple[str, Any]:
        """Attach the pod's networks; returns the stage1 network mode and the network status."""
        from .. import network

        if manifest.netns is not None:  # an existing namespace (Nomad's group network): no CNI here
            if not os.path.exists(manifest.netns):
                raise UsageError(f"netns {manifest.netns!r} does not exist")
            return manifest.netns, None
        names = [n.name for n in manifest.networks] or ["default"]
        if names == ["host"]:
            if manifest.ports:
                raise UsageError("--port has no effect with --net=host (the apps bind the host's ports)")
            return "host", None
        st = network.attach(pod.uuid, netns, manifest.networks or None, state_file=pod.path / NET_STATE,
                            ports=manifest.ports, dns=manifest.dns, settings=self._net_settings())
        return st.netns, st

    def _write_etc(self, pod: Pod, manifest: PodManifest, net: Any, host_net: bool) -> None:
        from ..network import dns

        hostname = manifest.hostname or f"pypod-{pod.uuid[:8]}"
        dns.write_etc(pod.path / "etc", hostname=hostname if not host_net else None,
                      ips=net.ips if net is not None else (), cni_dns=net.dns if net is not None else (),
                      dns=manifest.dns, hosts=manifest.hosts, hosts_mode=manifest.hosts_mode or
                      ("host" if host_net else None), own_netns=not host_net)

    def _start(self, locked: LockedPod) -> None:
        """Bring a pod in run/ (locked by us) up: network, infra, apps. On failure the pod is
        left exited (lock released) with nothing running; gc cleans the rest."""
        from . import isolation

        manifest = locked.manifest()
        flavor = self._flavor(manifest)
        try:
            users = isolation.claim_users(locked.path, locked.uuid, manifest, self.config.data_dir)
            if users is not None:  # its netns must belong to its user namespace: the infra makes it
                infra = flavor.start(self._pod_config(locked, manifest, lock_fd=locked.fd))
            network, net = self._network_up(locked, manifest, infra.namespaces["network"] if users else None)
            failpoint("network")
            self._write_etc(locked, manifest, net, network == "host")
            cfg = self._pod_config(locked, manifest, lock_fd=locked.fd, network=network)
            if users is None:
                flavor.start(cfg)
            failpoint("infra")
            for app in manifest.apps:
                self._launch(locked, manifest, app, cfg, flavor)
        except BaseException as e:
            try:
                flavor.stop(self._pod_config(locked, manifest), grace=0)
            except Exception as stop_error:  # keep the original error; gc finishes the rest
                if isinstance(e, Exception):
                    e.add_note(f"stopping the failed pod also failed: {stop_error}")
            locked.release()
            raise
        locked.handoff()

    def _launch(self, pod: Pod, manifest: PodManifest, app: App, cfg: "PodConfig", flavor: "Stage1") -> None:
        """Mount an app's rootfs, create it in the stage1 and start it."""
        area = pod.status()
        app_cfg = self._app_config(pod, manifest, app)
        created = time.time_ns()
        flavor.add_app(cfg, app_cfg)
        failpoint("app-created")
        area.update_app(app.name, state=status_mod.APP_CREATED, created_at=created)
        self._emit(events.APP_CREATED, pod=pod.uuid, app=app.name, image=app.image_id)
        st = flavor.start_app(cfg, app.name)
        area.update_app(app.name, state=status_mod.APP_RUNNING, started_at=time.time_ns(), pid=st.pid)
        self._emit(events.APP_STARTED, pod=pod.uuid, app=app.name)

    def _app_config(self, pod: Pod, manifest: PodManifest, app: App) -> "AppConfig":
        from ..stage1 import AppConfig, cgroups
        from ..stage1.spec import AppSpec
        from . import isolation, rootfs, users

        img = self.images.resolve(app.image_id or app.image)
        cfg = self.images.image_config(img).config
        where = f"app {app.name!r}"
        root = rootfs.mount_app(pod.path, app.name, self.images.layer_dirs(img),
                                idmap=isolation.pod_users(pod.path))
        proc = resolve_process(app, cfg)
        ident = users.resolve(str(root), proc.user, proc.group, proc.supplementary_gids, where=where)
        if "HOME" not in proc.env:
            proc.env["HOME"] = ident.home or "/"
        mounts = [self._volume_mount(pod, manifest, m) for m in app.mounts]
        r = app.resources
        resources = cgroups.resources(memory=r.memory, memory_reservation=r.memory_reservation,
                                      cpu_limit_millis=r.cpu, cpu_shares=r.cpu_shares,
                                      pids=r.pids, cpuset_cpus=r.cpuset_cpus)
        spec = AppSpec(args=proc.args, rootfs=str(root), env=proc.env, cwd=proc.cwd, uid=ident.uid,
                       gid=ident.gid, additional_gids=ident.additional_gids, terminal=proc.tty,
                       readonly_rootfs=app.readonly_rootfs, mounts=mounts, resources=resources,
                       oom_score_adj=app.oom_score_adj, annotations=dict(app.annotations))
        isolation.app_spec(spec, manifest, app, pod.path)
        return AppConfig(name=app.name, spec=spec, stdin=proc.stdin, stdin_once=app.stdin_once,
                         log_path=app.log_path, log_size_max=self.config.log_size_max)

    def _volume_mount(self, pod: Pod, manifest: PodManifest, m: Any):
        mount = self._volume_mount_of(pod, manifest, m)
        if m.recursive_read_only:  # validated: read-only and private
            mount.options.append("rro")
        return mount

    def _volume_mount_of(self, pod: Pod, manifest: PodManifest, m: Any):
        from ..stage1.spec import Mount

        vol = manifest.volume(m.volume)
        if vol is None:
            raise UsageError(f"mount of unknown volume {m.volume!r}")
        ro = vol.read_only if m.read_only is None else m.read_only
        prop = vol.propagation or "rprivate"
        if vol.kind == "host":
            if not vol.source or not os.path.exists(vol.source):
                raise UsageError(f"volume {vol.name!r}: host path {vol.source!r} does not exist")
            return Mount.bind(vol.source, m.target, readonly=ro, propagation=prop, recursive=vol.recursive)
        if vol.kind == "tmpfs":
            opts = ["nosuid", "nodev", f"mode={vol.mode or '1777'}"] + (["ro"] if ro else [])
            if vol.size:
                opts.append(f"size={vol.size}")
            return Mount(destination=m.target, source="tmpfs", type="tmpfs", options=opts)
        path = pod.path / "volumes" / vol.name
        if not path.exists():
            path.mkdir(parents=True, mode=int(vol.mode, 8) if vol.mode else 0o755)
            if vol.uid is not None or vol.gid is not None:
                os.chown(path, vol.uid if vol.uid is not None else -1, vol.gid if vol.gid is not None else -1)
        return Mount.bind(str(path), m.target, readonly=ro, propagation=prop)

    # -- mutable pods ---------------------------------------------------------------------------
    def app_add(self, ref: str, app: App, *, start: bool = False, pull: str = "new",
                volumes: Sequence["Volume"] = ()) -> None:
        """Add an app to a running mutable pod. ``volumes`` are added to the pod for the app's
        mounts (a volume of the same name must be the same volume)."""
        pod = self._running(ref)
        img = self.resolve_image(app.image, pull=pull)
        app.image_id = img.id
        with pod.mutation_lock() as dfd:
            manifest = pod.manifest()
            if manifest.app(app.name) is not None:
                raise Conflict(f"pod {pod.uuid} already has an app {app.name!r}")
            for vol in volumes:
                known = manifest.volume(vol.name)
                if known is None:
                    manifest.volumes.append(vol)
                elif known != vol:
                    raise Conflict(f"pod {pod.uuid} already has another volume {vol.name!r}")
            manifest.apps.append(app)
            manifest.validate()
            flavor = self._flavor(manifest)
            if manifest.stage1 != "oci":
                raise Conflict(f"stage1 {manifest.stage1} pods are not mutable")
            self.images.hold(pod.uuid, img)
            _save_manifest(dfd, manifest)
            failpoint("app-add")
            try:
                cfg = self._pod_config(pod, manifest, network=self._net_mode(pod))
                app_cfg = self._app_config(pod, manifest, app)
                flavor.add_app(cfg, app_cfg)  # undoes its own work when it fails
            except BaseException:  # e.g. a user or a device that is not there: the app never was
                from . import rootfs

                try:
                    rootfs.remove_app(pod.path, app.name)
                except (PypodError, OSError):
                    pass  # gc finishes it
                manifest.apps = [a for a in manifest.apps if a.name != app.name]
                _save_manifest(dfd, manifest)
                raise
            pod.status().update_app(app.name, state=status_mod.APP_CREATED, created_at=time.time_ns())
            self._emit(events.APP_CREATED, pod=pod.uuid, app=app.name, image=app.image_id)
        if start:
            self.app_start(pod.uuid, app.name)

    def app_start(self, ref: str, name: str) -> None:
        """Start a created app, or run a stopped one again (as ``systemctl start`` did in rkt)."""
        pod = self._running(ref)
        manifest = pod.manifest()
        app = self._need_app(pod, manifest, name)
        flavor = self._flavor(manifest)
        cfg = self._pod_config(pod, manifest, network=self._net_mode(pod))
        with pod.mutation_lock():
            area = pod.status()
            area.update_pod(stoppingApps=[n for n in area.pod().get("stoppingApps", []) if n != name])
            current = flavor.status(cfg).apps.get(name)
            if current is not None and current.state == "exited":
                flavor.remove_app(cfg, name)
                flavor.add_app(cfg, self._app_config(pod, manifest, app))
        st = flavor.start_app(cfg, name)
        pod.status().update_app(name, state=status_mod.APP_RUNNING, started_at=time.time_ns(), pid=st.pid)
        self._emit(events.APP_STARTED, pod=pod.uuid, app=name)

    def app_stop(self, ref: str, name: str, grace: float = DEFAULT_STOP_GRACE,
                 stop_signal: str | None = None) -> AppInfo:
        """``stop_signal`` (default: the image's ``StopSignal``, else TERM) to the app, SIGKILL after
        ``grace`` seconds."""
        pod = self._running(ref)
        manifest = pod.manifest()
        app = self._need_app(pod, manifest, name)
        if stop_signal is None:
            stop_signal = self._image_stop_signal(app)
        with pod.mutation_lock():
            _mark_stopping(pod, name)
        self._flavor(manifest).stop_app(self._pod_config(pod, manifest, network=self._net_mode(pod)), name, grace,
                                        stop_signal)
        self._record_exit(pod, manifest, name)
        return next(a for a in self.status(pod.uuid).apps if a.name == name)

    def _image_stop_signal(self, app: App) -> str:
        try:
            img = self.images.resolve(app.image_id or app.image)
            sig = self.images.image_config(img).config.get("StopSignal")
        except (PypodError, OSError, ValueError):
            sig = None
        return str(sig) if sig else "TERM"

    def app_rm(self, ref: str, name: str) -> None:
        """Remove an app (stopping it first) from a running pod, or what is left of it in an
        exited one (its rootfs, files and manifest entry)."""
        pod = self.pods.get(ref)
        if pod.dir != RUN_DIR:
            raise Conflict(f"pod {pod.uuid} is {pod.state}: its apps go with it")
        with pod.mutation_lock() as dfd:
            manifest = pod.manifest()
            self._need_app(pod, manifest, name)
            _mark_stopping(pod, name)
            self._flavor(manifest).remove_app(self._pod_config(pod, manifest, network=self._net_mode(pod)), name)
            failpoint("app-rm")
            from . import rootfs

            rootfs.remove_app(pod.path, name)
            manifest.apps = [a for a in manifest.apps if a.name != name]
            _save_manifest(dfd, manifest)
            pod.status().remove_app(name)
        self._emit(events.APP_REMOVED, pod=pod.uuid, app=name)

    def app_update(self, ref: str, name: str, resources: "Resources") -> None:
        """Change a running app's resource limits (the runtime's ``update``); the manifest keeps
        them for restarts."""
        from ..stage1 import cgroups

        pod = self._running(ref)
        with pod.mutation_lock() as dfd:
            manifest = pod.manifest()
            app = self._need_app(pod, manifest, name)
            app.resources = resources
            manifest.validate()
            oci = cgroups.resources(memory=resources.memory, memory_reservation=resources.memory_reservation,
                                    cpu_limit_millis=resources.cpu,
                                    cpu_shares=resources.cpu_shares, pids=resources.pids)
            oci.pop("devices", None)  # the device rules stay as created
            self._stage1_call(manifest, "update_app")(self._pod_config(pod, manifest), name, oci)
            _save_manifest(dfd, manifest)

    def reopen_log(self, ref: str, name: str) -> None:
        """Have a running app's monitor reopen its log (after a rotation renamed it away);
        returns once the new file exists."""
        pod = self._running(ref)
        manifest = pod.manifest()
        self._need_app(pod, manifest, name)
        self._stage1_call(manifest, "reopen_log")(self._pod_config(pod, manifest), name)

    def resize(self, ref: str, name: str, height: int, width: int) -> None:
        """Resize a running terminal app's tty (what its attached clients see)."""
        pod = self._running(ref)
        manifest = pod.manifest()
        self._need_app(pod, manifest, name)
        self._stage1_call(manifest, "resize")(self._pod_config(pod, manifest), name, height, width)

    def netns(self, ref: str) -> str | None:
        """The path of a running pod's network namespace; None when the pod uses the host's."""
        pod = self._running(ref)
        mode = self._net_mode(pod)
        return None if mode == "host" else mode

    def _stage1_call(self, manifest: PodManifest, method: str) -> Callable:
        fn = getattr(self._flavor(manifest), method, None)
        if fn is None:
            raise UsageError(f"stage1 {manifest.stage1} cannot {method.replace('_', ' ')}")
        return fn

    def _running(self, ref: str) -> Pod:
        pod = self.pods.get(ref)
        if pod.state != "running":
            raise Conflict(f"pod {pod.uuid} is {pod.state}, not running")
        return pod

    @staticmethod
    def _need_app(pod: Pod, manifest: PodManifest, name: str) -> App:
        app = manifest.app(name)
        if app is None:
            raise NotFound(f"pod {pod.uuid} has no app {name!r}")
        return app

    def _net_mode(self, pod: Pod) -> str:
        from .. import network

        st = network.status(pod.path / NET_STATE)
        if st is None:
            netns = pod.manifest().netns
            if netns is not None:
                return netns
        return "host" if st is None or st.mode == "host" else (st.netns or "private")

    # -- exits: conmon's hook -------------------------------------------------------------------
    def on_app_exited(self, uuid: str, name: str) -> None:
        """Run by conmon (through ``pypod _hook app-exited``) after an app exits: record it, then
        apply the app's restart policy and the pod's exit policy. Costs nothing while apps run."""
        pod = self.pods.find(uuid)
        if pod is None or pod.dir != RUN_DIR:
            return
        manifest = pod.manifest()
        with pod.mutation_lock():
            info = self._record_exit(pod, manifest, name)
            if info is None or pod.state != "running":
                return
            app = manifest.app(name)
            area = pod.status()
            podrec = area.pod()
            stopping = bool(podrec.get("stopping")) or name in podrec.get("stoppingApps", [])
            if app is not None and not stopping and self._should_restart(app, info):
                self._restart(pod, manifest, app, info)
                return
        if not manifest.mutable and not stopping and self._pod_should_exit(pod, manifest, info):
            self.stop(uuid, grace=DEFAULT_STOP_GRACE, _from_hook=True)

    def poll_exits(self, ref: str) -> None:
        """Apply app exits now rather than when conmon's hook process gets to them (a cold Python
        start): a foreground ``run`` calls this while it waits. Both paths are idempotent."""
        pod = self.pods.find(ref)
        if pod is None or pod.dir != RUN_DIR:
            return
        manifest = pod.manifest()
        live = self._flavor(manifest).status(self._pod_config(pod, manifest)).apps
        area = pod.status()
        for name, st in live.items():
            rec = area.app(name)
            if st.state == "exited" and (rec is None or rec.state != status_mod.APP_EXITED):
                self.on_app_exited(pod.uuid, name)

    def _record_exit(self, pod: Pod, manifest: PodManifest, name: str) -> AppInfo | None:
        flavor = self._flavor(manifest)
        st = flavor.status(self._pod_config(pod, manifest)).apps.get(name)
        if st is None or st.state != "exited":
            return None
        area = pod.status()
        prev = area.app(name)
        if prev is not None and prev.state == status_mod.APP_EXITED and prev.exit_code == st.exit_code \
                and prev.exited_at and st.finished_at and prev.exited_at >= int(st.finished_at * 1e9) - 1000:
            return self._app_info(manifest, prev)  # recorded already (hook and stop both got here)
        signal = st.exit_code - 128 if st.exit_code is not None and st.exit_code > 128 else None
        exited_at = int((st.finished_at or time.time()) * 1e9)
        rec = area.update_app(name, state=status_mod.APP_EXITED, exit_code=st.exit_code, signal=signal,
                              oom_killed=st.oom_killed, exited_at=exited_at, pid=None)
        self._emit(events.APP_EXITED, pod=pod.uuid, app=name, exit_code=st.exit_code, signal=signal,
                   oom_killed=st.oom_killed)
        return self._app_info(manifest, rec)

    @staticmethod
    def _should_restart(app: App, info: AppInfo) -> bool:
        policy = app.restart.policy
        if policy == "always":
            pass
        elif policy == "on-failure":
            if info.exit_code == 0:
                return False
        else:
            return False
        return app.restart.max_retries is None or info.restarts < app.restart.max_retries

    def _restart(self, pod: Pod, manifest: PodManifest, app: App, info: AppInfo) -> None:
        delay = min(app.restart.backoff * (2 ** info.restarts), app.restart.max_backoff)
        time.sleep(delay)
        if pod.refresh().state != "running" or pod.status().pod().get("stopping"):
            return
        flavor = self._flavor(manifest)
        cfg = self._pod_config(pod, manifest, network=self._net_mode(pod))
        flavor.remove_app(cfg, app.name)
        flavor.add_app(cfg, self._app_config(pod, manifest, app))
        st = flavor.start_app(cfg, app.name)
        pod.status().update_app(app.name, state=status_mod.APP_RUNNING, restarts=info.restarts + 1,
                                started_at=time.time_ns(), exit_code=None, signal=None, oom_killed=False,
                                exited_at=None, pid=st.pid)
        self._emit(events.APP_RESTARTED, pod=pod.uuid, app=app.name, restarts=info.restarts + 1)

    def _pod_should_exit(self, pod: Pod, manifest: PodManifest, info: AppInfo) -> bool:
        if manifest.exit_policy == "any-exited":
            return True
        if manifest.exit_policy == "any-failed" and info.exit_code != 0:
            return True
        apps = pod.status().apps()
        return all(a.state == status_mod.APP_EXITED for n, a in apps.items() if manifest.app(n) is not None) \
            and len(apps) >= len(manifest.apps)

    # -- stopping and removing ------------------------------------------------------------------
    def stop(self, ref: str, *, grace: float = DEFAULT_STOP_GRACE, force: bool = False,
             _from_hook: bool = False) -> Pod:
        """SIGTERM every app, SIGKILL after ``grace`` (at once with ``force``), then the infra:
        the pod exits. The network is torn down now; mounts and state stay until gc."""
        pod = self.pods.get(ref)
        if pod.dir != RUN_DIR:
            raise Conflict(f"pod {pod.uuid} is {pod.state}, not running")
        manifest = pod.manifest()
        pod.status().update_pod(stopping=True)
        flavor = self._flavor(manifest)
        cfg = self._pod_config(pod, manifest)
        flavor.stop(cfg, grace=0 if force else grace)
        for app in manifest.apps:
            self._record_exit(pod, manifest, app.name)
        self._network_down(pod)
        pod = pod.refresh()
        if not pod.is_running:
            pod.record_exited(exit_code=self.exit_code(pod))
        return pod

    def _network_down(self, pod: Pod) -> None:
        from .. import network

        if (pod.path / NET_STATE).exists():
            network.detach(pod.uuid, None, pod.path / NET_STATE, settings=self._net_settings())

    def _teardown(self, pod: Pod) -> None:
        """gc's hook (the pod locked, state deleting): undo everything outside the pod dir."""
        from . import rootfs

        try:
            manifest = pod.manifest()
        except (PypodError, OSError, ValueError):
            manifest = None
        if manifest is not None:
            self._flavor(manifest).gc(self._pod_config(pod, manifest))
            failpoint("teardown")
        else:  # a pod that crashed before its manifest was written: try every flavor's leftovers
            from ..stage1 import get_flavor

            get_flavor("oci").gc(self._pod_config(pod, PodManifest()))
        self._network_down(pod)
        rootfs.unmount_all(pod.path)
        self.images.release(pod.uuid)
        from . import isolation

        isolation.release_users(pod.path, pod.uuid)

    def rm(self, ref: str) -> None:
        """Remove an exited (or prepared, or failed) pod now, with everything it left."""
        self.pods.rm(ref, hook=self._teardown)

    def gc(self, *, grace_period: float = 30 * 60.0, expire_prepared: float = 24 * 3600.0,
           mark_only: bool = False):
        report = self.pods.gc(grace_period=grace_period, expire_prepared=expire_prepared,
                              mark_only=mark_only, hook=self._teardown)
        if not mark_only:
            from .. import network

            from ..stage1 import cgroups

            live = {p.uuid for p in self.pods.list()}
            network.gc(live, settings=self._net_settings())
            if not live:  # pypod's parent cgroup goes with the last pod (rmdir: only if empty)
                cgroups.remove_if_empty()
        return report

    # -- looking at pods ------------------------------------------------------------------------
    def _app_info(self, manifest: PodManifest, rec: status_mod.AppStatus, pod_running: bool = True) -> AppInfo:
        app = manifest.app(rec.name)
        ns = 1e9
        return AppInfo(name=rec.name, image=app.image if app else "", image_id=app.image_id if app else None,
                       state=rec.effective_state(pod_running), exit_code=rec.exit_code, signal=rec.signal,
                       oom_killed=rec.oom_killed, restarts=rec.restarts, pid=rec.pid,
                       created=rec.created_at / ns if rec.created_at else None,
                       started=rec.started_at / ns if rec.started_at else None,
                       finished=rec.exited_at / ns if rec.exited_at else None)

    def info(self, pod: Pod) -> PodInfo:
        """A pod's state from the files alone (no stage1 call: cheap enough for ``list``)."""
        from .. import network

        manifest = pod.manifest()
        running = pod.state == "running"
        recs = pod.status().apps()
        apps = []
        for app in manifest.apps:
            rec = recs.get(app.name) or status_mod.AppStatus(app.name, state="prepared" if not pod.started
                                                             else status_mod.APP_CREATED)
            apps.append(self._app_info(manifest, rec, running))
        net = network.status(pod.path / NET_STATE)
        info = PodInfo(uuid=pod.uuid, state=pod.state, created=pod.created, started=pod.started,
                       exited=pod.exited, apps=apps, mutable=manifest.mutable, stage1=manifest.stage1,
                       annotations=dict(manifest.annotations), labels=dict(manifest.labels))
        if net is not None:
            info.networks = [{"name": a.network, "ifname": a.ifname, "ips": a.ips, "gateway": a.gateway}
                             for a in net.networks]
            info.ip = net.ip
        if not running and pod.started:
            info.exit_code = _pod_exit_code(apps)
        return info

    def status(self, ref: str) -> PodInfo:
        """Like :meth:`info`, refreshed from the stage1 (exits that no hook recorded, e.g. when
        conmon was killed)."""
        pod = self.pods.get(ref)
        if pod.dir == RUN_DIR:
            manifest = pod.manifest()
            try:
                live = self._flavor(manifest).status(self._pod_config(pod, manifest)).apps
            except PypodError:
                live = {}
            area = pod.status()
            for name, st in live.items():
                rec = area.app(name)
                if st.state == "exited" and (rec is None or rec.state != status_mod.APP_EXITED):
                    self._record_exit(pod, manifest, name)
        return self.info(pod.refresh())

    def list(self) -> list[PodInfo]:
        out = []
        for pod in self.pods.list():
            try:
                out.append(self.info(pod))
            except (PypodError, OSError, ValueError):
                out.append(PodInfo(uuid=pod.uuid, state=pod.state, created=pod.created, started=pod.started,
                                   exited=pod.exited))
        return out

    def stats(self, ref: str, app: str | None = None) -> dict[str, Any]:
        """Resource usage from the cgroups: of one app, or of the whole pod (every app plus infra).
        Keys: cpu_usage_ns, memory_usage, memory_max_usage, memory_limit, pids, oom_kills."""
        from ..stage1 import cgroups

        pod = self.pods.get(ref)
        manifest = pod.manifest()
        parent = manifest.cgroup_parent or cgroups.DEFAULT_PARENT
        if app is not None:
            self._need_app(pod, manifest, app)
            path = cgroups.app_path(pod.uuid, app, parent)
        else:
            path = cgroups.pod_path(pod.uuid, parent)
        st = cgroups.stats(path)
        return {"cpu_usage_ns": st.cpu_usage_ns, "memory_usage": st.memory_usage,
                "memory_max_usage": st.memory_max_usage, "memory_limit": st.memory_limit,
                "pids": st.pids, "oom_kills": st.oom_kills, "timestamp_ns": time.time_ns()}

    def create_network(self, name: str, networks: Sequence[Any] | None = None, ports: Sequence[Any] = ()) -> Any:
        """A named network namespace with its CNI attachments that several pods can join (Nomad's
        CreateNetwork, CRI sandboxes); returns its NetworkStatus (``.netns`` is the path)."""
        from .. import network

        return network.create_shared(name, networks, ports=ports, settings=self._net_settings())

    def destroy_network(self, name: str) -> bool:
        from .. import network

        return network.destroy_shared(name, settings=self._net_settings())

    def exit_code(self, pod: Pod) -> int | None:
        return _pod_exit_code(self.info(pod).apps)

    def wait(self, ref: str, timeout: float | None = None) -> PodInfo:
        pod = self.pods.wait_exit(ref, timeout)
        return self.status(pod.uuid)

    def export(self, ref: str, app: str | None, name: str) -> "Image":
        """An exited app's rootfs changes, on top of its image, as a new image (``rkt export``)."""
        import tempfile

        from ..images.sources import write_diff_layer
        from . import rootfs

        pod = self.pods.get(ref)
        manifest = pod.manifest()
        app_name = self._default_app(pod, manifest, app)
        info = next(a for a in self.info(pod).apps if a.name == app_name)
        if pod.state == "running" and info.state != "exited":
            raise Conflict(f"app {app_name!r} is still running: stop it before exporting")
        upper = rootfs.app_dir(pod.path, app_name) / "upper"
        if not upper.is_dir():
            raise NotFound(f"app {app_name!r} of pod {pod.uuid} has no rootfs changes to export")
        base = self.images.resolve(manifest.app(app_name).image_id)  # type: ignore[union-attr]
        self.images.content.init()
        with tempfile.NamedTemporaryFile(dir=self.images.content.ingest_dir, suffix=".tar.gz") as tmp:
            diff_id, _ = write_diff_layer(upper, Path(tmp.name))
            img = self.images.commit_layer(base, Path(tmp.name), diff_id, name,
                                           created_by=f"pypod export {pod.uuid} --app {app_name}")
        self._emit(events.IMAGE_IMPORTED, image=img.id, name=img.names[0] if img.names else None)
        return img

    # -- inside running apps --------------------------------------------------------------------
    def exec(self, ref: str, app: str | None, args: Sequence[str], *, timeout: float | None = None):
        pod = self._running(ref)
        manifest = pod.manifest()
        name = self._default_app(pod, manifest, app)
        return self._flavor(manifest).exec(self._pod_config(pod, manifest, network=self._net_mode(pod)),
                                           name, args, timeout=timeout)

    def kill(self, ref: str, app: str | None, signal: int | str) -> None:
        """Send ``signal`` (a number or a name: ``TERM``, ``SIGHUP``) to a running app's main
        process; what happens next is the app's business (its exit is recorded as usual)."""
        pod = self._running(ref)
        manifest = pod.manifest()
        name = self._default_app(pod, manifest, app)
        flavor = self._flavor(manifest)
        if not hasattr(flavor, "kill"):
            raise UsageError(f"stage1 {manifest.stage1} cannot signal apps")
        flavor.kill(self._pod_config(pod, manifest), name, signal)

    def enter_argv(self, ref: str, app: str | None, args: Sequence[str], tty: bool) -> list[str]:
        """The command line that runs ``args`` interactively inside an app (the runtime's exec
        with the caller's terminal), for ``pypod enter`` to exec."""
        pod = self._running(ref)
        manifest = pod.manifest()
        name = self._default_app(pod, manifest, app)
        return self._flavor(manifest).enter_argv(self._pod_config(pod, manifest), name, args, tty=tty)

    @staticmethod
    def _default_app(pod: Pod, manifest: PodManifest, app: str | None) -> str:
        if app is not None:
            if manifest.app(app) is None:
                raise NotFound(f"pod {pod.uuid} has no app {app!r}")
            return app
        if len(manifest.apps) != 1:
            names = ", ".join(a.name for a in manifest.apps) or "none"
            raise UsageError(f"pod {pod.uuid} has {len(manifest.apps)} apps ({names}): choose one with --app")
        return manifest.apps[0].name

    def log_path(self, ref: str, app: str | None) -> Path:
        pod = self.pods.get(ref)
        manifest = pod.manifest()
        name = self._default_app(pod, manifest, app)
        return self.log_paths(pod.uuid)[name]

    def log_paths(self, ref: str) -> dict[str, Path]:
        pod = self.pods.get(ref)
        return {a.name: Path(a.log_path) if a.log_path else pod.path / "stage1" / "apps" / a.name / "ctr.log"
                for a in pod.manifest().apps}

    def attach_socket(self, ref: str, app: str | None) -> str:
        pod = self._running(ref)
        manifest = pod.manifest()
        return self._flavor(manifest).attach(self._pod_config(pod, manifest), self._default_app(pod, manifest, app))


def _save_manifest(dfd: int, manifest: PodManifest) -> None:
    """Replace the manifest of the pod whose mutation lock we hold (``dfd``: its directory)."""
    from .fsutil import write_atomic
    from .state import MANIFEST

    write_atomic(MANIFEST, manifest.validate().to_json().encode(), dir_fd=dfd, mode=0o640, dir_group=True)


def _mark_stopping(pod: Pod, name: str) -> None:
    """Tell the exit hook that this app was stopped on purpose (no restart, no exit policy)."""
    area = pod.status()
    apps = set(area.pod().get("stoppingApps", []))
    area.update_pod(stoppingApps=sorted(apps | {name}))


def _pod_exit_code(apps: Sequence[AppInfo]) -> int | None:
    """rkt's rule: the code of the first app that failed (by exit time), else 0."""
    exited = [a for a in apps if a.exit_code is not None]
    if not exited:
        return None
    failed = sorted((a for a in exited if a.exit_code), key=lambda a: a.finished or 0)
    return failed[0].exit_code if failed else 0

