"""Isolation policy without running anything: seccomp profiles, isolators and flags, the secure
join, user namespace ranges, and what lands in config.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pypod.errors import UsageError
from pypod.pods import isolation, userns
from pypod.pods.flags import build_from_flags
from pypod.pods.fsutil import resolve_in_root
from pypod.pods.manifest import App, PodManifest
from pypod.stage1 import Stage1Error, seccomp
from pypod.stage1.spec import DEFAULT_CAPABILITIES, AppSpec, Mount, generate


# -- seccomp ----------------------------------------------------------------------------------
def test_every_known_syscall_is_classified_once():
    by_cap = set().union(*seccomp.BY_CAPABILITY.values())
    buckets = [seccomp.ALLOWED, seccomp.CONDITIONAL, by_cap, seccomp.DENIED]
    assert set().union(*buckets) == seccomp.KNOWN
    for i, a in enumerate(buckets):
        for b in buckets[i + 1:]:
            assert not a & b, sorted(a & b)
    for name, members in seccomp.GROUPS.items():
        assert members <= seccomp.KNOWN, name


def _rules(profile, name):
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_default_profile_denies_by_default_with_conditions():
    p = seccomp.default_profile(DEFAULT_CAPABILITIES, machine="x86_64")
    assert (p["defaultAction"], p["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    seccomp.validate(p)
    allowed = {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}
    assert {"read", "openat", "execve", "socket", "chroot", "sethostname"} <= allowed
    assert not {"mount", "unshare", "setns", "reboot", "init_module", "keyctl", "bpf", "io_uring_setup",
                "clock_settime", "kexec_load", "open_by_handle_at"} & allowed
    (clone,) = _rules(p, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = _rules(p, "clone3")
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    assert sorted(r["args"][0]["value"] for r in _rules(p, "personality")) == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def test_default_profile_follows_the_capabilities():
    admin = seccomp.default_profile(["SYS_ADMIN", "CAP_SYS_TIME"], machine="aarch64")
    names = {n for r in admin["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}
    assert {"mount", "unshare", "setns", "clone", "clone3", "clock_settime"} <= names
    assert "chroot" not in names and "reboot" not in names  # CAP_SYS_CHROOT, CAP_SYS_BOOT not held
    assert admin["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


@pytest.mark.parametrize("text,message", [
    ("sethostname", "missing mode"),
    ("mode=keep,sethostname", "mode must be retain or remove"),
    ("mode=remove,nosuchcall", "unknown syscall 'nosuchcall'"),
    ("mode=remove,@nosuch/group", "unknown syscall group"),
    ("mode=remove,errno=EWHATEVER,mount", "unknown errno"),
    ("mode=remove", "the syscall set is empty"),
    ("mode=remove,level=3,mount", "unknown option"),
])
def test_rkt_syntax_errors(text, message):
    with pytest.raises(Stage1Error, match=message):
        seccomp.parse_rkt(text)


def test_rkt_remove_and_retain_sets():
    iso = seccomp.parse_rkt("mode=remove,errno=ENOSYS,@systemd/clock,sethostname")
    assert iso == {"mode": "remove", "set": ["@systemd/clock", "sethostname"], "errno": "ENOSYS"}
    p = seccomp.from_rkt(iso, DEFAULT_CAPABILITIES, machine="x86_64")
    assert p["defaultAction"] == "SCMP_ACT_ALLOW"
    (rule,) = p["syscalls"]
    assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == 38
    assert {"sethostname", "settimeofday", "clock_settime"} <= set(rule["names"])
    killed = seccomp.from_rkt(seccomp.parse_rkt("mode=remove,mount"), DEFAULT_CAPABILITIES)
    assert killed["syscalls"][0]["action"] == "SCMP_ACT_KILL_PROCESS"  # rkt: SIGSYS without errno
    retain = seccomp.from_rkt(seccomp.parse_rkt("mode=retain,errno=EPERM,read,write"), DEFAULT_CAPABILITIES)
    assert (retain["defaultAction"], retain["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    assert set(retain["syscalls"][0]["names"]) == {"read", "write"} | seccomp.RUNTIME_ESSENTIALS
    assert seccomp.EXEC_ESSENTIALS < seccomp.RUNTIME_ESSENTIALS <= seccomp.KNOWN
    assert not seccomp.RUNTIME_ESSENTIALS & {"mount", "unshare", "setns", "uname", "socket", "ptrace"}
    whitelist = seccomp.from_rkt(seccomp.parse_rkt("mode=retain,@rkt/default-whitelist,clone"), DEFAULT_CAPABILITIES)
    assert "clone" in whitelist["syscalls"][0]["names"]  # named explicitly: unconditional...
    assert not [r for r in whitelist["syscalls"][1:] if "clone" in r["names"]]  # ...no argument rule left
    assert _rules(whitelist, "personality") and whitelist["defaultAction"] == "SCMP_ACT_KILL_PROCESS"


DOCKER = {
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "basics"},
        {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["newsyscall"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]},
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
    ]}


def test_docker_profiles_are_evaluated_for_the_app_and_the_host():
    plain = seccomp.convert(DOCKER, DEFAULT_CAPABILITIES, machine="x86_64", kernel_release="6.18.1-x")
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = [r["names"] for r in plain["syscalls"]]
    assert names == [["read", "write"], ["arch_prctl"], ["ptrace"], ["clone"]]
    assert "comment" not in plain["syscalls"][0] and plain["syscalls"][3]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    admin = seccomp.convert(DOCKER, ["CAP_SYS_ADMIN"], machine="aarch64", kernel_release="4.4.0")
    assert admin["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert [r["names"] for r in admin["syscalls"]] == [["read", "write"], ["mount"]]


def test_oci_profiles_pass_through_and_bad_ones_are_refused():
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    assert seccomp.convert(oci, DEFAULT_CAPABILITIES) == oci
    for bad, message in (({"defaultAction": "SCMP_ACT_NOPE"}, "defaultAction"),
                         ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "architecture"),
                         ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]},
                          "names"),
                         ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                             {"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]},
                          "index")):
        with pytest.raises(Stage1Error, match=message):
            seccomp.convert(bad, DEFAULT_CAPABILITIES)


# -- capabilities, flags and isolators --------------------------------------------------------
def test_capability_names():
    assert isolation.parse_caps("net_admin, CAP_CHOWN,NET_ADMIN") == ["CAP_NET_ADMIN", "CAP_CHOWN"]
    with pytest.raises(UsageError, match="unknown capability 'CAP_FLY'"):
        isolation.parse_caps("CAP_FLY")
    assert len(isolation.ALL_CAPABILITIES) == 41 and isolation.ALL_CAPABILITIES[21] == "CAP_SYS_ADMIN"


def test_flags_become_isolators():
    pod, _ = build_from_flags(["--sysctl", "net.core.somaxconn=1024", "--private-users", "busybox",
                               "--caps-remove=net_raw", "--seccomp", "mode=retain,errno=ENOSYS,@rkt/default-whitelist",
                               "--no-new-privs", "---", "busybox", "--privileged", "--seccomp=unconfined"])
    assert pod.isolators == {"sysctl": {"net.core.somaxconn": "1024"}, "privateUsers": True}
    assert pod.apps[0].isolators == {"capabilities": {"remove": ["CAP_NET_RAW"]}, "noNewPrivileges": True,
                                     "seccomp": {"mode": "retain", "set": ["@rkt/default-whitelist"], "errno": "ENOSYS"}}
    assert pod.apps[1].isolators == {"privileged": True, "seccomp": "unconfined"}
    back = PodManifest.from_json(pod.to_json())
    assert back.apps[0].isolators == pod.apps[0].isolators and back.isolators == pod.isolators


@pytest.mark.parametrize("argv,message", [
    (["busybox", "--caps-retain=CHOWN", "--caps-remove=KILL"], "--caps-retain and --caps-remove are mutually exclusive"),
    (["--sysctl=vm.swappiness=1", "busybox"], "sysctl vm.swappiness: not namespaced"),
    (["--sysctl=kernel.hostname=x", "busybox"], "not namespaced"),
    (["--net=host", "--sysctl=net.core.somaxconn=1", "busybox"], "--net=host"),
    (["--ipc=host", "--sysctl=fs.mqueue.msg_max=20", "busybox"], "--ipc=host"),
    (["--private-users", "--net=host", "busybox"], "privateUsers: cannot be combined"),
    (["--private-users", "--ipc=host", "busybox"], "privateUsers: cannot be combined"),
    (["--stage1=fly", "--net=host", "busybox", "--caps-retain=CHOWN"], "stage1 fly has no isolation"),
    (["busybox", "--seccomp=mode=remove,nosuch"], "unknown syscall"),
    (["busybox", "--seccomp-profile=/nonexistent/profile.json"], "cannot read"),
])
def test_flag_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        build_from_flags(argv)


def _pod(app_isolators=None, **pod_fields):
    return PodManifest(apps=[App(name="a", image="busybox", isolators=dict(app_isolators or {}))], **pod_fields)


def test_isolator_validation_and_appc_aliases():
    with pytest.raises(UsageError, match=r"apps\[0\].isolators: unknown isolator 'capsRetain'"):
        _pod({"capsRetain": ["CHOWN"]}).validate()
    with pytest.raises(UsageError, match="unknown isolator 'sysctlz'"):
        _pod(isolators={"sysctlz": {}}).validate()
    with pytest.raises(UsageError, match="only one seccomp isolator"):
        _pod({"seccomp": "unconfined", "os/linux/seccomp-remove-set": {"set": ["mount"]}}).validate()
    with pytest.raises(UsageError, match="mutually exclusive"):
        _pod({"os/linux/capabilities-retain-set": {"set": ["CHOWN"]},
              "os/linux/capabilities-remove-set": {"set": ["KILL"]}}).validate()
    with pytest.raises(UsageError, match="privileged: expected true or false"):
        _pod({"privileged": "yes"}).validate()
    with pytest.raises(UsageError, match="sysctl and sysctls"):
        _pod(isolators={"sysctl": {}, "sysctls": {}}).validate()
    pod = _pod({"os/linux/capabilities-retain-set": {"set": ["NET_ADMIN"]},
                "os/linux/seccomp-remove-set": {"set": ["mount"], "errno": "EPERM"},
                "os/linux/no-new-privileges": True}, isolators={"sysctls": {"net/ipv4/ip_forward": "1"}})
    pod.validate()
    policy = isolation.app_policy(pod, pod.apps[0])
    assert policy.capabilities == ["CAP_NET_ADMIN"] and policy.no_new_privileges
    assert policy.seccomp == {"set": ["mount"], "errno": "EPERM", "mode": "remove"}
    assert isolation.sysctls(pod) == {"net.ipv4.ip_forward": "1"}
    assert isolation.app_policy(_pod(isolators={"privileged": True}), _pod().apps[0]).privileged


def test_sysctl_namespaces():
    assert isolation.sysctl_namespace("net.ipv4.tcp_syncookies") == "net"
    assert [isolation.sysctl_namespace(n) for n in ("kernel.shmmax", "kernel.sem", "fs.mqueue.queues_max")] == ["ipc"] * 3
    assert isolation.sysctl_namespace("kernel.domainname") == "uts"
    assert [isolation.sysctl_namespace(n) for n in ("vm.swappiness", "kernel.panic", "fs.file-max",
                                                   "kernel.shm_next_id_x")] == [None] * 4


# -- the secure join ------------------------------------------------------------------------
def test_resolve_in_root_never_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "a").mkdir()
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../../..", root / "up")
    os.symlink("/abs/sub", root / "chain")
    os.symlink("/proc", root / "kproc")
    os.symlink("loop", root / "loop")
    cases = {"/abs": "/etc", "/abs/passwd": "/etc/passwd", "/up": "/", "/up/etc/x": "/etc/x",
             "/chain": "/etc/sub", "/kproc/sys": "/proc/sys", "/a/../abs": "/etc", "/a/new/dir": "/a/new/dir",
             "/etc/../../../../tmp": "/tmp", "/": "/", "a//./b": "/a/b"}
    for path, want in cases.items():
        assert resolve_in_root(root, path) == want, path
    with pytest.raises(OSError, match="too many levels"):
        resolve_in_root(root, "/loop")


def test_volume_targets_in_the_spec(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    os.symlink("/data", root / "link")
    os.symlink("/proc/sys", root / "psys")
    pod = _pod()
    spec = AppSpec(args=["true"], rootfs=str(root), cgroups_path="/x",
                   mounts=[Mount.bind("/src", "/link/x", propagation="rslave"), Mount.bind("/ro", "/psys/k", readonly=True)])
    isolation.app_spec(spec, pod, pod.apps[0], tmp_path / "pod")
    assert [m.destination for m in spec.mounts] == ["/data/x", "/proc/sys/k"]
    assert spec.rootfs_propagation == "rslave"  # else crun makes / rprivate and cuts the volume off
    assert spec.seccomp["defaultAction"] == "SCMP_ACT_ERRNO" and spec.capabilities == DEFAULT_CAPABILITIES
    for target in ("/psys/k", "/proc", "/sys/kernel"):
        spec = AppSpec(args=["true"], rootfs=str(root), cgroups_path="/x", mounts=[Mount.bind("/src", target)])
        with pytest.raises(UsageError, match="a read-write volume cannot be mounted"):
            isolation.app_spec(spec, pod, pod.apps[0], tmp_path / "pod")


def test_privileged_in_config_json(tmp_path):
    pod = _pod({"privileged": True})
    spec = AppSpec(args=["true"], rootfs=str(tmp_path), cgroups_path="/x")
    isolation.app_spec(spec, pod, pod.apps[0], tmp_path / "pod")
    config = generate(spec, hard_limits={})
    linux = config["linux"]
    assert "seccomp" not in linux and linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert {m["destination"]: m["options"][-1] for m in config["mounts"] if m["type"] == "sysfs"} == {"/sys": "rw"}
    assert set(config["process"]["capabilities"]["bounding"]) == isolation.caller_capabilities()
    assert all(d["path"].startswith("/dev/") and d["type"] in "cb" for d in linux.get("devices", []))
    assert "/dev/null" not in {d["path"] for d in linux.get("devices", [])}  # the runtime's own


# -- user namespace ranges --------------------------------------------------------------------
def _pod_dir(data: Path, uuid: str) -> Path:
    d = data / "pods" / "run" / uuid
    d.mkdir(parents=True)
    return d


def test_ranges_do_not_collide_and_are_freed(tmp_path):
    reg, data = str(tmp_path / "reg"), tmp_path / "data"
    none = str(tmp_path / "none")
    a, b = _pod_dir(data, "a"), _pod_dir(data, "b")
    ra = userns.allocate(a, "a", data, registry=reg, subuid=none, subgid=none)
    rb = userns.allocate(b, "b", data, registry=reg, subuid=none, subgid=none)
    assert ra.uid == userns.OWN_FIRST and rb.uid == userns.OWN_FIRST + 65536 and ra.gid == ra.uid
    assert userns.allocate(a, "a", data, registry=reg) == ra == userns.load(a)  # idempotent
    assert ra.uid_mappings() == [{"containerID": 0, "hostID": ra.uid, "size": 65536}]
    userns.free(b, "a", registry=reg)  # not a's claim to drop
    assert sorted(userns.claimed(reg)) == [ra.uid, rb.uid]
    userns.free(b, "b", registry=reg)
    assert sorted(userns.claimed(reg)) == [ra.uid]
    c = _pod_dir(data, "c")
    assert userns.allocate(c, "c", data, registry=reg, subuid=none, subgid=none) == rb  # reused
    # a pod that vanished without gc: its claim is reclaimed by the next allocation
    import shutil

    shutil.rmtree(a)
    d = _pod_dir(data, "d")
    assert userns.allocate(d, "d", data, registry=reg, subuid=none, subgid=none).uid == ra.uid


def test_ranges_from_subuid(tmp_path):
    sub_u, sub_g = tmp_path / "subuid", tmp_path / "subgid"
    sub_u.write_text("alice:100000:65536\npypod:300000:131072\n")
    sub_g.write_text("pypod:500000:65536\n")
    assert userns.slots(str(sub_u), str(sub_g)) == ([(300000, 500000)], 1)
    data, reg = tmp_path / "data", str(tmp_path / "reg")
    r = userns.allocate(_pod_dir(data, "a"), "a", data, registry=reg, subuid=str(sub_u), subgid=str(sub_g))
    assert (r.uid, r.gid) == (300000, 500000)
    with pytest.raises(userns.UsernsError, match="no free user namespace range"):
        userns.allocate(_pod_dir(data, "b"), "b", data, registry=reg, subuid=str(sub_u), subgid=str(sub_g))
    claim = json.loads((Path(reg) / "300000").read_text())
    assert claim["pod"] == "a" and claim["dataDir"] == str(data)
