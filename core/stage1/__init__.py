"""Stage1: the isolation layer between the engine (stage0) and the apps (stage2).

A stage1 *flavor* implements :class:`Stage1` over a pod directory that stage0 owns and moves
through its state machine (``prepared/ run/ exited-garbage/ ...``). The flavor keeps its own files
under ``<pod dir>/stage1/`` and never renames or deletes the pod directory itself. Every method
is a short call that reads what it needs from disk: no stage1 object has to stay in memory and no
pypod process has to stay up while the pod runs (daemonless, as rkt). Calls on one pod must be
serialised by the caller (stage0's pod lock); calls on different pods are independent.

Flavors: ``oci`` (:class:`pypod.stage1.oci.OciStage1`: an infra container with ``catatonit -P``
owning the pod's namespaces, each app an OCI container run by crun or runc under conmon) and,
later, ``fly`` (chroot, no isolation) and a VM flavor. The interface keeps VM-friendly shapes:
apps are described by data (:class:`AppConfig`), exec/attach go through the flavor, and nothing
assumes stage0 can see the apps' processes.

Building blocks of the oci flavor, usable on their own:

- :mod:`.runtime`  OCI runtime probe/selection (crun, runc) and invocation
- :mod:`.cgroups`  cgroup layout, pypod's cgroup paths, limits → OCI resources, stats, removal
- :mod:`.spec`     OCI ``config.json`` from an :class:`~.spec.AppSpec`
- :mod:`.conmon`   create/exec/attach/stop under conmon; exit codes, OOM, CRI logs
- :mod:`.infra`    the pod infra container and its pinned namespaces

This module stays cheap to import: the building blocks are imported by their users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

from ..errors import PypodError

if TYPE_CHECKING:
    from .spec import AppSpec


class Stage1Error(PypodError):
    """A stage1 operation failed: the runtime, conmon or the kernel refused."""


@dataclass
class PodConfig:
    """The pod-level settings a flavor needs (stage0 derives them from the pod manifest).

    ``dir``: the pod directory (the flavor writes only below ``<dir>/stage1``). ``network``:
    ``"private"`` (a new network namespace: loopback only until stage0 runs CNI on
    :attr:`PodStatus.namespaces` ``["network"]``), ``"host"``, or the path of an existing network
    namespace. ``exit_command``: an argv run by conmon after any app exits, with the pod id and
    the app name appended (stage0's hook to record the exit with no resident process); it gets
    ``exit_env`` as its environment (plus PATH). ``lock_fd``: an fd of stage0's pod lock;
    ``start`` passes it to the infra's conmon, which keeps it open exactly as long as the infra
    runs (conmon closes every inherited fd when its container exits, before writing the exit
    file), so the kernel releases the lock when the pod dies. The caller closes its own copy
    afterwards (``LockedPod.handoff()``).
    """

    id: str
    dir: str
    hostname: str | None = None
    share_pid: bool = False
    host_pid: bool = False              # apps share the host's pid namespace (not the infra's)
    network: str = "private"
    ipc: str = "private"
    uts: str = "private"
    sysctl: Mapping[str, str] = field(default_factory=dict)
    runtime: str | None = None          # "crun" | "runc" | None: the host's default
    run_root: str = "/run/pypod"
    cgroup_parent: str = "/pypod"
    etc_hosts: str | None = None        # files stage0 generated for the pod, given to every app
    etc_resolv_conf: str | None = None
    etc_hostname: str | None = None
    exit_command: Sequence[str] = ()
    exit_env: Mapping[str, str] = field(default_factory=dict)
    lock_fd: int | None = None          # the pod lock, handed to the infra's monitor by start()
    uid_mappings: Sequence[dict] = ()   # a pod user namespace (made by the infra, joined by the
    gid_mappings: Sequence[dict] = ()   # apps): OCI {containerID, hostID, size} maps


@dataclass
class AppConfig:
    """One app: its OCI-level description plus how conmon handles its stdio.

    In ``spec``, the flavor fills ``cgroups_path`` and, when left at their defaults,
    ``namespaces`` (the pod's), ``hostname`` and the /etc files (the pod's).
    """

    name: str
    spec: "AppSpec"
    stdin: bool = False                 # keep a stdin pipe (attach can write to it)
    stdin_once: bool = False            # close it when the first attach client ends its stdin
    log_path: str | None = None         # CRI log file; default <dir>/stage1/apps/<name>/ctr.log
    log_size_max: int | None = None


@dataclass
class AppStatus:
    name: str
    state: str                          # "created" | "running" | "exited" | "unknown"
    pid: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    created_at: float | None = None     # epoch seconds (from marker files' mtimes)
    started_at: float | None = None
    finished_at: float | None = None
    log_path: str | None = None


@dataclass
class PodStatus:
    id: str
    state: str                          # "prepared" | "running" | "exited"
    infra_pid: int | None = None
    namespaces: dict[str, str] = field(default_factory=dict)   # OCI type → pinned path
    apps: dict[str, AppStatus] = field(default_factory=dict)


def signal_number(sig: str | int) -> int:
    """``TERM``, ``SIGTERM``, ``15`` -> 15."""
    import signal as signal_mod

    if isinstance(sig, int) or str(sig).isdigit():
        return int(sig)
    try:
        return int(getattr(signal_mod, "SIG" + str(sig).upper().removeprefix("SIG")))
    except AttributeError:
        raise Stage1Error(f"unknown signal {sig!r}") from None


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False


class Stage1(Protocol):
    """The stage1 contract. All methods act on the pod described by ``pod``.

    Lifecycle: ``prepare`` → ``start`` → (``add_app`` → ``start_app`` → ``stop_app`` →
    ``remove_app``)* → ``stop`` → ``gc``. ``status`` works in every state, including after
    ``stop`` (exit codes stay readable until ``gc``). Errors are :class:`Stage1Error`
    (``pypod.errors.NotFound`` for an unknown app, ``Conflict`` for a call in the wrong state).
    """

    name: str

    def prepare(self, pod: PodConfig) -> None:
        """Lay out ``<dir>/stage1`` and pick the runtime; starts nothing (``rkt prepare``)."""

    def start(self, pod: PodConfig) -> PodStatus:
        """Create the pod's namespaces and its infra; returns the namespace paths (for CNI)."""

    def add_app(self, pod: PodConfig, app: AppConfig) -> AppStatus:
        """Create an app in the running pod (state ``created``: process exists, not started)."""

    def start_app(self, pod: PodConfig, name: str) -> AppStatus:
        """Start a created app."""

    def stop_app(self, pod: PodConfig, name: str, grace: float = 10.0, stop_signal: str = "TERM") -> AppStatus:
        """``stop_signal`` (a name such as ``QUIT``, or a number) to the app, SIGKILL after ``grace``
        seconds; returns its exit status."""

    def remove_app(self, pod: PodConfig, name: str) -> None:
        """Stop (no grace) and delete an app with everything it left (cgroups, files)."""

    def exec(self, pod: PodConfig, name: str, args: Sequence[str], *,
             env: Mapping[str, str] | None = None, cwd: str | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a command inside a running app with the app's privileges (``rkt enter``)."""

    def attach(self, pod: PodConfig, name: str) -> str:
        """Path of the app's attach socket (conmon's SOCK_SEQPACKET protocol, see .conmon)."""

    def stop(self, pod: PodConfig, grace: float = 10.0) -> PodStatus:
        """Stop every app (TERM, KILL after ``grace``) and the infra. Namespaces stay pinned
        until ``gc`` so stage0 can still tear the network down."""

    def gc(self, pod: PodConfig) -> None:
        """Remove everything the pod left outside its directory: containers, runtime state,
        pinned namespaces, cgroups, attach links. Idempotent, resumable after a crash."""

    def status(self, pod: PodConfig) -> PodStatus:
        """The pod's and its apps' state, read from disk (cheap: spawns no process)."""


def get_flavor(name: str = "oci") -> Stage1:
    """The stage1 flavor called ``name``."""
    if name == "oci":
        from .oci import OciStage1

        return OciStage1()
    if name == "fly":
        from .fly import FlyStage1

        return FlyStage1()
    raise Stage1Error(f"unknown stage1 flavor {name!r} (available: oci, fly)")


__all__ = ["Stage1", "Stage1Error", "PodConfig", "AppConfig", "AppStatus", "PodStatus",
           "ExecResult", "get_flavor"]
