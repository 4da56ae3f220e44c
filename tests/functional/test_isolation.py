"""Isolation through the real CLI with crun and runc (issue 5 items 1-6): capabilities, seccomp,
no_new_privs, masked and read-only paths, /dev and the device cgroup, sysctls, user namespaces,
volume propagation and volume targets that are symlinks. Each test runs few pods with several
checks each (the host has two shared CPUs), and every check can fail: each denial is paired with
a setting under which the same operation goes through.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from support.breakout import build_breakout_image
from support.cli import Pypod

pytestmark = pytest.mark.root

DEFAULT_CAPS = 0x00000000A80425FB  # rkt's/Docker's 14 capabilities
USERNS_REGISTRY = Path("/run/pypod/userns")


def sh(script: str) -> list[str]:
    return ["--exec", "/bin/sh", "--", "-c", script]


def run(p: Pypod, runtime: str, *args: str, pod_flags: tuple[str, ...] = (), check: bool = False):
    return p("run", "--net=none", f"--runtime={runtime}", *pod_flags, *args, check=check)


def detach(p: Pypod, runtime: str, *args: str, pod_flags: tuple[str, ...] = ()) -> str:
    uuid = p("run", "-d", "--net=none", f"--runtime={runtime}", *pod_flags, *args).out.strip()
    p("status", "--wait-ready=20s", uuid)
    return uuid


def lines_of(out: str, prefix: str) -> dict[str, str]:
    """``prefix KEY VALUE...`` lines → {KEY: VALUE...} (``run`` puts ``app: `` before the lines of
    pods with several apps)."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"[\w.-]+: (.*)$", line)
        if m and m.group(1).startswith(prefix + " "):
            line = m.group(1)
        if line.startswith(prefix + " "):
            key, *value = line[len(prefix) + 1:].split(None, 1)
            found[key] = value[0].strip() if value else ""
    return found


def caps_of(out: str, prefix: str) -> dict[str, int]:
    """CapBnd/CapEff/CapPrm printed as ``<prefix> CapBnd: <hex>``."""
    return {k.rstrip(":"): int(v, 16) for k, v in lines_of(out, prefix).items() if k.startswith("Cap")}


STATUS = "grep -E '^(CapBnd|CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status | sed 's/^/{p} /'"


def app_codes(p: Pypod, uuid: str) -> dict[str, int | None]:
    return {a["name"]: a["exit_code"] for a in p("status", "--format", "json", uuid).json()["apps"]}


def last_uuid(p: Pypod) -> str:
    return p("list", "--format", "json").json()[-1]["uuid"]


@pytest.fixture(scope="module")
def breakout_image(tmp_path_factory):
    host_dir = tmp_path_factory.mktemp("hostside")
    (host_dir / "host-secret").write_text("host\n")
    img = build_breakout_image(tmp_path_factory.mktemp("breakout") / "layout", str(host_dir))
    return img, host_dir


# -- 1. capabilities ------------------------------------------------------------------------------
def test_default_capabilities_and_retain_remove(pods: Pypod, runtime: str) -> None:
    r = run(pods, runtime,
            "busybox", "--name", "default", *sh(STATUS.format(p="default")), "---",
            "busybox", "--name", "retain", "--caps-retain=NET_ADMIN,cap_chown", *sh(STATUS.format(p="retain")),
            "---",
            "busybox", "--name", "remove", "--caps-remove=CAP_NET_RAW,mknod",
            *sh(STATUS.format(p="remove") + "; ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 || echo remove ping-refused;"
                " mknod /tmp/n c 1 3 2>/dev/null || echo remove mknod-refused"), check=True)
    assert caps_of(r.out, "default") == {"CapBnd": DEFAULT_CAPS, "CapEff": DEFAULT_CAPS, "CapPrm": DEFAULT_CAPS}
    assert caps_of(r.out, "retain") == dict.fromkeys(("CapBnd", "CapEff", "CapPrm"), (1 << 12) | (1 << 0))
    removed = DEFAULT_CAPS & ~(1 << 13) & ~(1 << 27)
    assert caps_of(r.out, "remove") == dict.fromkeys(("CapBnd", "CapEff", "CapPrm"), removed)
    assert {"ping-refused": "", "mknod-refused": ""}.items() <= lines_of(r.out, "remove").items()


def test_capability_flags_are_checked_before_anything_starts(pods: Pypod, tmp_path: Path) -> None:
    r = pods("run", "--net=none", "busybox", "--caps-retain=NET_ADMIN", "--caps-remove=NET_RAW", check=False)
    assert r.rc != 0 and "--caps-retain and --caps-remove are mutually exclusive" in r.err
    r = pods("run", "--net=none", "busybox", "--caps-retain=CAP_FLY", check=False)
    assert r.rc != 0 and "unknown capability 'CAP_FLY'" in r.err
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps({"pypodVersion": 1, "kind": "PodManifest", "networks": [{"name": "none"}],
                                    "apps": [{"name": "a", "image": "busybox", "isolators": {
                                        "capabilities": {"retain": ["CHOWN"], "remove": ["KILL"]}}}]}))
    r = pods("run", "--pod-manifest", str(manifest), check=False)
    assert r.rc != 0 and "apps[0].isolators: capabilities: retain" in r.err and "mutually exclusive" in r.err
    manifest.write_text(json.dumps({"pypodVersion": 1, "kind": "PodManifest", "networks": [{"name": "none"}],
                                    "apps": [{"name": "a", "image": "busybox", "isolators": {"privilegd": True}}]}))
    r = pods("run", "--pod-manifest", str(manifest), check=False)
    assert r.rc != 0 and "unknown isolator 'privilegd'" in r.err
    assert pods("list", "--format", "json").json() == []


def test_privileged_only_when_asked(pods: Pypod, runtime: str, tmp_path: Path) -> None:
    host_devs = {d for d in ("kmsg", "loop0", "kvm", "fuse", "vda", "sda") if os.path.exists(f"/dev/{d}")}
    if not host_devs:
        pytest.skip("the host has none of the device nodes this test looks for")
    probe = (STATUS + "; echo {p} dev $(ls /dev | tr '\\n' ' '); echo {p} sys $(grep ' /sys sysfs ' /proc/mounts | "
             "cut -d' ' -f4 | cut -d, -f1); echo {p} timer_list $(cat /proc/timer_list 2>/dev/null | wc -c)")
    r = run(pods, runtime, "busybox", "--name", "priv", "--privileged", *sh(probe.format(p="priv")), "---",
            "busybox", "--name", "plain", *sh(probe.format(p="plain")), check=True)
    held = int(re.search(r"^CapBnd:\s+(\w+)", Path("/proc/self/status").read_text(), re.M).group(1), 16)
    full = held & ((1 << (int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1)) - 1)  # all pypod holds
    priv, plain = lines_of(r.out, "priv"), lines_of(r.out, "plain")
    assert caps_of(r.out, "priv") == dict.fromkeys(("CapBnd", "CapEff", "CapPrm"), full)
    assert priv["Seccomp:"].strip() == "0" and plain["Seccomp:"].strip() == "2"
    assert host_devs <= set(priv["dev"].split()) and not host_devs & set(plain["dev"].split())
    assert priv["sys"] == "rw" and plain["sys"] == "ro"
    assert int(priv["timer_list"]) > 0 and int(plain["timer_list"]) == 0  # masked unless privileged
    assert caps_of(r.out, "plain")["CapEff"] == DEFAULT_CAPS
    # pod-level, from the manifest's isolators
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps({
        "pypodVersion": 1, "kind": "PodManifest", "networks": [{"name": "none"}], "runtime": runtime,
        "isolators": {"privileged": True},
        "apps": [{"name": "a", "image": "busybox", "exec": ["/bin/sh", "-c", STATUS.format(p="a")]}]}))
    r = pods("run", "--pod-manifest", str(manifest))
    assert caps_of(r.out, "a")["CapEff"] == full


# -- 2. seccomp -----------------------------------------------------------------------------------
def test_seccomp_default_flags_and_modes(pods: Pypod, runtime: str) -> None:
    userns = "out=$(unshare -U true 2>&1); echo {p} unshare rc=$? $out"
    r = run(pods, runtime,
            "busybox", "--name", "default", *sh(STATUS.format(p="default") + "; " + userns.format(p="default")),
            "---",
            "busybox", "--name", "unconfined", "--seccomp=unconfined",
            *sh(STATUS.format(p="unconfined") + "; " + userns.format(p="unconfined")), "---",
            "busybox", "--name", "enosys", "--seccomp=mode=remove,errno=ENOSYS,sethostname",
            *sh("hostname x 2>&1 | sed 's/^/enosys /'"), "---",
            "busybox", "--name", "sigsys", "--seccomp=mode=remove,@systemd/mount",
            *sh("echo sigsys before; exec umount /proc"), "---",
            "busybox", "--name", "retain", "--seccomp=mode=retain,errno=ENOTSUP,@rkt/default-whitelist",
            *sh("ls / >/dev/null && echo retain ls-ok; unshare -U true 2>&1 | sed 's/^/retain /'"), "---",
            # the smallest retain sets: what the runtimes need to start the app, and nothing else
            "busybox", "--name", "empty", "--seccomp=mode=retain,errno=ENOSYS,@appc.io/empty",
            "--exec", "/bin/uname", "--", "-s", "---",
            "busybox", "--name", "uname", "--seccomp=mode=retain,errno=ENOSYS,@appc.io/empty,uname",
            "--exec", "/bin/uname", "--", "-s")
    assert lines_of(r.out, "default")["Seccomp:"].strip() == "2"
    assert lines_of(r.out, "unconfined")["Seccomp:"].strip() == "0"
    # creating a user namespace needs no capability: only the profile stops it
    assert lines_of(r.out, "default")["unshare"].startswith("rc=1 ")
    assert "Operation not permitted" in lines_of(r.out, "default")["unshare"]
    assert lines_of(r.out, "unconfined")["unshare"] == "rc=0"
    assert "Function not implemented" in lines_of(r.out, "enosys")["hostname:"]
    assert lines_of(r.out, "retain")["ls-ok"] == ""
    assert "Operation not supported" in lines_of(r.out, "retain")["unshare:"]
    assert "empty: \n" in r.out + "\n" and "uname: Linux" in r.out  # uname(2) refused (ENOSYS) / allowed
    codes = app_codes(pods, last_uuid(pods))
    assert codes["sigsys"] == 128 + 31 and "sigsys before" in r.out  # killed by SIGSYS, not refused
    assert codes["default"] == codes["unconfined"] == codes["enosys"] == codes["retain"] == 0


def test_seccomp_profile_files_docker_and_oci(pods: Pypod, runtime: str, tmp_path: Path) -> None:
    docker = {"defaultAction": "SCMP_ACT_ALLOW",
              "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                          {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
              "syscalls": [{"name": "sethostname", "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "comment": "old form"},
                           {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                            "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                           {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                            "excludes": {"caps": ["CAP_SYS_ADMIN"]}}]}
    oci = {"defaultAction": "SCMP_ACT_ALLOW",
           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    (tmp_path / "docker.json").write_text(json.dumps(docker))
    (tmp_path / "oci.json").write_text(json.dumps(oci))
    probe = "hostname x 2>&1 | sed 's/^/{p} /'; mkdir /tmp/d 2>&1 | sed 's/^/{p} /'; mkdir -p /tmp/e; rmdir /tmp/e 2>&1 | sed 's/^/{p} /'"
    r = run(pods, runtime,
            "busybox", "--name", "docker", f"--seccomp-profile={tmp_path / 'docker.json'}", *sh(probe.format(p="docker")),
            "---", "busybox", "--name", "oci", f"--seccomp-profile={tmp_path / 'oci.json'}", *sh(probe.format(p="oci")))
    d, o = lines_of(r.out, "docker"), lines_of(r.out, "oci")
    assert "Function not implemented" in d["hostname:"]           # the rule from "name"
    assert "mkdir:" not in d                                       # included only with CAP_SYS_ADMIN
    assert "Permission denied" in d["rmdir:"]                      # excluded only with CAP_SYS_ADMIN
    assert "Operation not permitted" in o["hostname:"]             # no rule: the missing capability
    assert "Operation not permitted" in o["mkdir:"] and "Permission denied" not in o.get("rmdir:", "")
    (tmp_path / "bad.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_MAYBE"}))
    r = pods("run", "busybox", f"--seccomp-profile={tmp_path / 'bad.json'}", check=False)
    assert r.rc != 0 and "defaultAction must be one of" in r.err


# -- 3. no_new_privs, kernel paths, read-only rootfs, /dev, the device cgroup ---------------------
def test_kernel_paths_devices_and_read_only_rootfs(pods: Pypod, runtime: str) -> None:
    masked = [f for f in ("/proc/keys", "/proc/timer_list", "/proc/kallsyms", "/proc/kcore", "/proc/sched_debug")
              if os.path.exists(f)]
    # existing files only (creating a file in procfs or sysfs fails anyway); opening for writing
    # writes nothing, so even a failure of the test would not change the host
    bus = sorted(str(p) for p in Path("/proc/bus").rglob("*") if p.is_file())[:1]
    writes = [f for f in ("/proc/sys/kernel/panic", "/proc/sys/net/core/somaxconn", "/proc/sysrq-trigger",
                          "/sys/kernel/uevent_helper", "/sys/kernel/mm/transparent_hugepage/enabled",
                          "/sys/kernel/profiling", *bus) if os.path.exists(f)]
    script = "; ".join([
        STATUS.format(p="main"),
        "echo main dev $(ls /dev | tr '\\n' ' ')",
        *[f"echo main masked:{f} $(cat {f} 2>/dev/null | wc -c)" for f in masked],
        "echo main firmware $(ls -A /sys/firmware | wc -l)",
        *[f"echo main write:{f} $( (: > {f}) 2>&1)" for f in writes],
        "mknod /tmp/sda b 8 0 && (head -c1 /tmp/sda 2>&1 >/dev/null | sed 's/^/main blockdev /')",
        "mknod /tmp/mem c 1 1 && (head -c1 /tmp/mem 2>&1 >/dev/null | sed 's/^/main chardev /')",
        "echo ok > /dev/null && echo main null-ok",
    ])
    r = run(pods, runtime, "busybox", "--name", "main", *sh(script), "---",
            "busybox", "--name", "nnp", "--no-new-privs", "--readonly-rootfs",
            *sh(STATUS.format(p="nnp") + "; touch /x 2>&1 | sed 's/^/nnp rootfs /'; touch /tmp/x 2>&1 | sed 's/^/nnp tmp /';"
                " echo x > /dev/shm/x && echo nnp shm-ok"), check=True)
    main, nnp = lines_of(r.out, "main"), lines_of(r.out, "nnp")
    assert main["NoNewPrivs:"].strip() == "0" and nnp["NoNewPrivs:"].strip() == "1"  # off unless asked, as Docker
    dev = set(main["dev"].split())
    assert dev <= {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
                   "stdin", "stdout", "stderr", "console", "core"}, dev
    assert {"null", "zero", "urandom", "pts"} <= dev
    for f in masked:
        assert main[f"masked:{f}"] == "0", f  # hidden (reads as empty) although the host has content
    assert main["firmware"] == "0" and os.listdir("/sys/firmware")
    assert len(writes) >= 3
    for f in writes:
        assert "Read-only file system" in main[f"write:{f}"], f
    assert "Operation not permitted" in main["blockdev"] and "Operation not permitted" in main["chardev"]
    assert "null-ok" in main
    assert "Read-only file system" in nnp["rootfs"] and "Read-only file system" in nnp["tmp"]
    assert "shm-ok" in nnp


# -- 4. sysctls -----------------------------------------------------------------------------------
SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "99", "kernel.shmmax": "12345678",
           "kernel.msgmax": "9999", "fs.mqueue.msg_max": "17", "kernel.domainname": "pypod.test"}


def _read_sysctls(names) -> str:
    return "; ".join(f"echo ctl {n} $(cat /proc/sys/{n.replace('.', '/')})" for n in names)


def test_namespaced_sysctls_apply_inside_the_pod(pods: Pypod, runtime: str) -> None:
    host_before = {n: Path("/proc/sys", n.replace(".", "/")).read_text().strip() for n in SYSCTLS}
    flags = tuple(f"--sysctl={n}={v}" for n, v in SYSCTLS.items())
    r = run(pods, runtime, "busybox", *sh(_read_sysctls(SYSCTLS)), pod_flags=flags, check=True)
    assert lines_of(r.out, "ctl") == SYSCTLS
    assert {n: Path("/proc/sys", n.replace(".", "/")).read_text().strip() for n in SYSCTLS} == host_before


def test_host_wide_sysctls_are_refused_before_anything_starts(pods: Pypod) -> None:
    cases = [
        (("--sysctl=vm.swappiness=10",), "sysctl vm.swappiness: not namespaced"),
        (("--sysctl=kernel.panic=1",), "sysctl kernel.panic: not namespaced"),
        (("--net=host", "--sysctl=net.ipv4.ip_forward=1"), "--net=host"),
        (("--ipc=host", "--sysctl=kernel.shmmax=1"), "--ipc=host"),
        (("--sysctl=net..x=1",), "invalid name"),
    ]
    for flags, message in cases:
        r = pods("run", *flags, "busybox", *sh("true"), check=False)
        assert r.rc != 0 and message in r.err, (flags, r.err)
    assert pods("list", "--format", "json").json() == []


# -- 5. user namespaces ---------------------------------------------------------------------------
def _uid_map(pid: int) -> tuple[int, int, int]:
    inside, outside, size = Path(f"/proc/{pid}/uid_map").read_text().split()[:3]
    return int(inside), int(outside), int(size)


def _ids(pid: int) -> tuple[list[int], list[int]]:
    text = Path(f"/proc/{pid}/status").read_text()
    uids = [int(x) for x in re.search(r"^Uid:\s+(.*)$", text, re.M).group(1).split()]
    gids = [int(x) for x in re.search(r"^Gid:\s+(.*)$", text, re.M).group(1).split()]
    return uids, gids


def _claims_of(uuid: str) -> list[dict]:
    out = []
    for f in USERNS_REGISTRY.glob("[0-9]*") if USERNS_REGISTRY.is_dir() else ():
        try:
            claim = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if claim.get("pod") == uuid:
            out.append(claim)
    return out


def test_private_users_rootfs_volumes_and_ranges(pods: Pypod, runtime: str, tmp_path: Path) -> None:
    hv = tmp_path / "hv"
    hv.mkdir()
    hv.chmod(0o777)
    (hv / "root-owned").write_text("host root's\n")
    flags = ("--private-users", "--volume", f"hv,kind=host,source={hv}", "--volume", "ev,kind=empty",
             "--sysctl=net.ipv4.ip_unprivileged_port_start=80", "--sysctl=kernel.shmmax=7777777")
    uuid = detach(pods, runtime, "busybox", "--mount", "volume=hv,target=/hv", "--mount", "volume=ev,target=/ev",
                  *sh("exec sleep 1000"), pod_flags=flags)
    other = detach(pods, runtime, "busybox", *sh("exec sleep 1000"), pod_flags=("--private-users",))
    st = pods("status", "--format", "json", uuid).json()
    pid = st["apps"][0]["pid"]
    _, base, size = _uid_map(pid)
    _, other_base, _ = _uid_map(pods("status", "--format", "json", other).json()["apps"][0]["pid"])
    assert size == 65536 and base >= 65536 and other_base >= 65536
    assert abs(base - other_base) >= 65536  # no overlap between the two pods
    assert [c["uid"] for c in _claims_of(uuid)] == [base] and [c["uid"] for c in _claims_of(other)] == [other_base]
    uids, gids = _ids(pid)
    assert uids == [base] * 4 and gids == [base] * 4  # the app's root is an unprivileged host user
    r = pods("enter", uuid, "sh", "-c",
             "echo in id $(id -u) $(id -g); echo in map $(cat /proc/self/uid_map); echo in busybox $(ls -ln /bin/busybox);"
             " echo x > /created; echo y > /hv/made; echo z > /ev/made;"
             " echo in hostfile $( (echo w >> /hv/root-owned) 2>&1);"
             " echo in net $(ls /sys/class/net); echo in ctl $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start"
             " /proc/sys/kernel/shmmax); ping -c1 -W1 127.0.0.1 >/dev/null && echo in ping ok")
    got = lines_of(r.out, "in")
    assert got["id"] == "0 0"
    assert got["map"].split() == ["0", str(base), "65536"]
    assert got["busybox"].split()[2:4] == ["0", "0"]  # image files are root's inside (idmapped layers)
    assert "Permission denied" in got["hostfile"]     # host root's file: not the pod root's to change
    assert got["net"] == "lo"                         # the pod's own sysfs: its netns belongs to its userns
    assert got["ctl"] == "80 7777777" and got["ping"] == "ok"
    pod_dir = next(pods.data_dir.glob(f"pods/*/{uuid}"))
    for made in (pod_dir / "apps/busybox/upper/created", hv / "made", pod_dir / "volumes/ev/made"):
        st_ = made.stat()
        assert (st_.st_uid, st_.st_gid) == (base, base), made
    assert (hv / "root-owned").read_text() == "host root's\n"
    assert subprocess.run(["grep", "-c", f"pods/{uuid}/rootfs", "/proc/self/mountinfo"],
                          capture_output=True, text=True).stdout.strip() == "1"
    reach = Path(f"/run/pypod/pods/{uuid}/rootfs")  # where the runtime found the rootfs...
    assert (reach.stat().st_uid, reach.stat().st_mode & 0o777) == (base, 0o700)
    other_user = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "ls",
                                 str(reach / "busybox" / "tmp")], capture_output=True, text=True)
    assert other_user.returncode != 0 and "Permission denied" in other_user.stderr  # ...is the pod's only
    pods("stop", "--force", uuid, other)
    pods("gc", "--grace-period", "0s")
    assert _claims_of(uuid) == [] and _claims_of(other) == []  # freed at gc
    assert not Path(f"/run/pypod/pods/{uuid}").exists()


def test_private_users_without_idmapped_mounts_uses_shifted_copies(pods: Pypod, runtime: str,
                                                                   monkeypatch) -> None:
    if runtime != "runc":
        pytest.skip("the fallback does not depend on the runtime: runc only, to keep the suite lean")
    monkeypatch.setenv("PYPOD_USERNS_NO_IDMAP", "1")
    r = run(pods, runtime, "busybox", *sh("id -u; ls -ln /bin/busybox; echo x > /created"),
            pod_flags=("--private-users",), check=True)
    out = r.out.splitlines()
    assert out[0] == "0" and out[1].split()[2:4] == ["0", "0"]
    pod_dir = next(pods.data_dir.glob("pods/*/*/apps/busybox")).parent.parent
    base = json.loads((pod_dir / "userns.json").read_text())["uid"]
    copy = pod_dir / "apps/busybox/shifted/0/bin/busybox"
    assert copy.stat().st_uid == base and (pod_dir / "apps/busybox/upper/created").stat().st_uid == base


# -- 6. mounts ------------------------------------------------------------------------------------
def test_volume_propagation_private_rslave_rshared(pods: Pypod, runtime: str, tmp_path: Path) -> None:
    src = tmp_path / "prop"
    (src / "sub").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        vols = []
        for name, prop in (("p", "rprivate"), ("s", "rslave"), ("sh", "rshared")):
            vols += ["--volume", f"{name},kind=host,source={src},propagation={prop}"]
        uuid = detach(pods, runtime, "busybox", "--mount", "volume=p,target=/private", "--mount",
                      "volume=s,target=/slave", "--mount", "volume=sh,target=/shared", *sh("exec sleep 1000"),
                      pod_flags=tuple(vols))
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src / "sub")], check=True)  # after the start
        (src / "sub" / "marker").write_text("mounted later\n")
        r = pods("enter", uuid, "sh", "-c", "for d in private slave shared; do echo $d: $(cat /$d/sub/marker 2>&1); done")
        seen = dict(line.split(": ", 1) for line in r.out.splitlines())
        assert seen["slave"] == seen["shared"] == "mounted later", seen
        assert "No such file" in seen["private"], seen
        pods("stop", "--force", uuid)
    finally:
        subprocess.run(["umount", "-l", str(src / "sub")], check=False)
        subprocess.run(["umount", "-l", str(src)], check=False)


def test_volume_targets_are_resolved_inside_the_rootfs(pods: Pypod, runtime: str, tmp_path: Path,
                                                       breakout_image) -> None:
    img, host_dir = breakout_image
    pods("fetch", f"oci:{img.oci_ref}", "--name", "breakout")
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "from-volume").write_text("v\n")
    flags = ("--volume", f"v,kind=host,source={vol}")
    inside = host_dir.as_posix()
    r = run(pods, runtime, "breakout", "--mount", "volume=v,target=/escape-abs", "--mount", "volume=v,target=/escape-rel",
            "--mount", "volume=v,target=/escape-chain",
            *sh(f"ls /escape-abs /escape-rel /escape-chain; echo w > /escape-abs/written; "
                f"grep -c ' {inside}' /proc/self/mountinfo; ls {inside}/"), pod_flags=flags, check=True)
    assert r.out.count("from-volume") >= 3
    assert sorted(os.listdir(host_dir)) == ["host-secret"]  # the host directory the symlinks name is untouched
    assert (vol / "written").read_text() == "w\n"
    pod_dir = next(pods.data_dir.glob("pods/*/*/apps/breakout")).parent.parent
    assert (pod_dir / "apps/breakout/upper" / inside.lstrip("/")).is_dir()  # made inside the rootfs
    for target, resolved in (("/kproc", "/proc"), ("/kproc/sys", "/proc/sys"), ("/ksys", "/sys/kernel"),
                             ("/proc/sys/kernel", "/proc/sys/kernel"), ("/sys", "/sys")):
        r = run(pods, runtime, "breakout", "--mount", f"volume=v,target={target}", *sh("true"), pod_flags=flags)
        assert r.rc != 0 and f"a read-write volume cannot be mounted on {target}" in r.err, (target, r.err)
        assert resolved in r.err
