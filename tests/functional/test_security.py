"""Breakout attempts from inside a pod (issue 5 item 8, the runtime half), with crun and runc.

Each attempt must be denied; each test also shows the same operation going through where the
protection is lifted (a capability retained, seccomp unconfined, no_new_privs off), so that it
can fail. The attempts are harmless to the host even if a protection were missing: files are
opened for writing but nothing is written, kernel modules are junk, signals go to a sacrificial
``sleep`` the test started. docs/security.md lists every case and its result.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.breakout import build_breakout_image, euid_elf
from support.cli import Pypod

pytestmark = pytest.mark.root


def sh(script: str) -> list[str]:
    return ["--exec", "/bin/sh", "--", "-c", script]


def run(p: Pypod, runtime: str, *args: str, pod_flags: tuple[str, ...] = (), check: bool = False):
    return p("run", "--net=none", f"--runtime={runtime}", *pod_flags, *args, check=check)


def results(out: str) -> dict[str, str]:
    """``CASE name text...`` lines (possibly behind ``app: ``) → {name: text}."""
    found = {}
    for line in out.splitlines():
        if "CASE " in line:
            name, _, text = line.split("CASE ", 1)[1].partition(" ")
            found[name] = text
    return found


def case(name: str, command: str) -> str:
    """Run ``command``, print ``CASE name rc=N <its output>`` (one line)."""
    return f"o=$( ({command}) 2>&1 ); echo CASE {name} rc=$? $o"


@pytest.fixture(scope="module")
def breakout_image(tmp_path_factory):
    host_dir = tmp_path_factory.mktemp("hostside")
    (host_dir / "host-secret").write_text("host\n")
    return build_breakout_image(tmp_path_factory.mktemp("breakout") / "layout", str(host_dir))


@pytest.fixture
def victim():
    """A host process no pod may signal."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def test_breakout_attempts_are_denied(pods: Pypod, runtime: str, breakout_image, victim, tmp_path: Path) -> None:
    pods("fetch", f"oci:{breakout_image.oci_ref}", "--name", "breakout")
    me = os.getpid()
    attempts = [
        case("mount", "mount -t tmpfs none /tmp"),
        case("remount-root", "mount -o remount,rw /proc/sys"),
        case("unshare-user", "unshare -U -r true"),
        case("unshare-mount", "unshare -m true"),
        case("unshare-net", "unshare -n true"),
        case("nsenter-host", f"nsenter -t {me} -m true"),
        case("proc-sys", ": > /proc/sys/kernel/core_pattern"),
        case("sys", ": > /sys/kernel/mm/transparent_hugepage/enabled"),
        case("insmod", "printf junk > /tmp/m.ko && insmod /tmp/m.ko"),
        case("modprobe", "modprobe pypod_nonexistent_module"),
        case("host-pid-visible", f"test -e /proc/{me} && echo visible"),
        case("host-mem", f"head -c1 /proc/{me}/mem"),
        case("signal-host", f"kill -9 {victim.pid}"),
        case("signal-host-0", f"kill -0 {me}"),
        case("proc1-root", "cat /proc/1/root/etc/os-release"),
        case("dev-mem", "head -c1 /evil/mem"),
        case("dev-kmsg", "head -c1 /evil/kmsg"),
        case("dev-sda", "head -c1 /evil/sda"),
        case("mknod-read", "mknod /tmp/vda b 253 0 && head -c1 /tmp/vda"),
        # reboot(2) needs CAP_SYS_BOOT (absent) and seccomp blocks it; even granted, in a pid
        # namespace of its own (checked: the shell is PID 1) it could only end that namespace
        case("reboot-syscall", '[ "$$" = 1 ] && reboot -f -n'),
        case("swapon", "swapon /tmp/m.ko"),
        case("clock", "date -s \"$(date '+%Y-%m-%d %H:%M:%S')\" >/dev/null"),  # to the current time: harmless
    ]
    r = run(pods, runtime, "breakout", *sh("; ".join(attempts)), check=True)
    got = results(r.out)
    denied = "Operation not permitted"
    for name in ("mount", "remount-root"):
        assert "rc=0" not in got[name] and ("permission denied" in got[name] or denied in got[name]), got[name]
    for name in ("unshare-user", "unshare-mount", "unshare-net", "insmod", "swapon", "reboot-syscall", "clock"):
        assert denied in got[name], (name, got[name])
    assert "rc=0" not in got["nsenter-host"]  # no host process to enter: its pid does not exist here
    for name in ("proc-sys", "sys"):
        assert "Read-only file system" in got[name], (name, got[name])
    assert not got["modprobe"].startswith("rc=0")
    assert me > 100  # pod pids are small: the host pid cannot be one of the pod's own
    assert got["host-pid-visible"] == "rc=1" and "No such file" in got["host-mem"]
    assert "No such process" in got["signal-host"] and "No such process" in got["signal-host-0"]
    assert victim.poll() is None  # the host process survived
    assert 'NAME="pypod test busybox"' in got["proc1-root"]  # /proc/1/root is the pod's own root
    for name in ("dev-mem", "dev-kmsg", "dev-sda", "mknod-read"):
        assert denied in got[name], (name, got[name])  # the device cgroup: the node exists, opening fails


def test_the_same_attempts_go_through_where_a_protection_is_lifted(pods: Pypod, runtime: str) -> None:
    """Control: the denials above come from the protections, not from a broken test."""
    r = run(pods, runtime,
            "busybox", "--name", "unconfined", "--seccomp=unconfined", *sh(case("unshare-user", "unshare -U -r true")),
            "---", "busybox", "--name", "admin", "--caps-retain=SYS_ADMIN,NET_RAW",
            *sh(case("mount", "mount -t tmpfs none /tmp && grep -c ' /tmp tmpfs' /proc/mounts") + "; " +
                case("unshare-mount", "unshare -m true") + "; " + case("ping", "ping -c1 -W1 127.0.0.1 >/dev/null")),
            "---", "busybox", "--name", "noraw", "--caps-remove=NET_RAW", *sh(case("ping", "ping -c1 -W1 127.0.0.1")),
            check=True)
    out = r.out.splitlines()
    by_app = {app: results("\n".join(line for line in out if line.startswith(app + ": ")))
              for app in ("unconfined", "admin", "noraw")}
    assert by_app["unconfined"]["unshare-user"] == "rc=0"
    assert by_app["admin"]["mount"] == "rc=0 1"  # CAP_SYS_ADMIN lets mount(2) through the profile
    assert by_app["admin"]["unshare-mount"] == "rc=0"
    assert by_app["admin"]["ping"] == "rc=0"  # raw sockets with CAP_NET_RAW...
    assert by_app["noraw"]["ping"].startswith("rc=1") and "permission denied" in by_app["noraw"]["ping"]  # ...not without


def test_setuid_binaries_and_no_new_privs(pods: Pypod, runtime: str, breakout_image) -> None:
    if euid_elf() is None:
        pytest.skip("the setuid probe is an x86-64 executable")
    pods("fetch", f"oci:{breakout_image.oci_ref}", "--name", "breakout")
    run(pods, runtime, "breakout", "--name", "suid", "--user=1000", "--exec", "/usr/local/bin/euid", "---",
        "breakout", "--name", "nnp", "--user=1000", "--no-new-privs", "--exec", "/usr/local/bin/euid", "---",
        "breakout", "--name", "plain", "--user=1000", "--exec", "/usr/local/bin/euid-plain")
    uuid = pods("list", "--format", "json").json()[0]["uuid"]
    codes = {a["name"]: a["exit_code"] for a in pods("status", "--format", "json", uuid).json()["apps"]}
    assert codes["suid"] == 0            # the image's setuid-root binary works without no_new_privs...
    assert codes["nnp"] == 1000 % 256    # ...and gives nothing with it
    assert codes["plain"] == 1000 % 256


def test_root_in_a_user_namespace_pod_is_nobody_on_the_host(pods: Pypod, runtime: str, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    host.chmod(0o755)
    (host / "root-file").write_text("root's\n")
    (host / "root-file").chmod(0o600)
    r = run(pods, runtime, "busybox",
            "--caps-retain=CHOWN,DAC_OVERRIDE,FOWNER,SYS_ADMIN,SETUID,SETGID,KILL",
            "--mount", "volume=h,target=/h",
            *sh("; ".join([case("read", "cat /h/root-file"), case("write", "echo x > /h/new"),
                           case("chown", "chown 0:0 /h"), case("mount", "mount -t tmpfs none /tmp"),
                           case("id", "id -u")])),
            pod_flags=("--private-users", "--volume", f"h,kind=host,source={host}"), check=True)
    got = results(r.out)
    assert got["id"] == "rc=0 0"
    assert "Permission denied" in got["read"] and "Permission denied" in got["write"]
    assert "rc=0" not in got["chown"]
    assert got["mount"] == "rc=0"  # its own mount namespace, which its user namespace owns
    assert sorted(os.listdir(host)) == ["root-file"] and (host / "root-file").read_text() == "root's\n"
