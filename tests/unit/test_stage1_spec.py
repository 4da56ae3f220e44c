"""stage1 pure parts: OCI config generation, cgroup limit conversion and layout, conmon argv, logs.

No root, no runtime: these run anywhere.
"""

from __future__ import annotations

import os
import resource

import pytest

from pypod.stage1 import Stage1Error, cgroups, conmon, spec
from pypod.stage1.runtime import Runtime, crun_private_mount_prefix

INF = resource.RLIM_INFINITY
HARD = {"RLIMIT_NOFILE": 20000, "RLIMIT_NPROC": 32768}


def gen(**kw) -> dict:
    base = dict(args=["/bin/app", "-x"], rootfs="/r", cgroups_path="/pypod/p/apps/a")
    base.update(kw)
    return spec.generate(spec.AppSpec(**base), hard_limits=HARD)


# --- cgroup limits -------------------------------------------------------------------------------

def test_memory_limit_disables_swap_when_accounted():
    res = cgroups.resources(memory=20 << 20)
    assert res["memory"] == {"limit": 20 << 20, "swap": 20 << 20}
    assert res["devices"] == [{"allow": False, "access": "rwm"}]


def test_memory_without_swap_accounting_sets_no_swap():
    assert cgroups.resources(memory=1 << 30, swap_accounting=False)["memory"] == {"limit": 1 << 30}


def test_explicit_memory_swap_and_reservation():
    res = cgroups.resources(memory=100, memory_swap=300, memory_reservation=50)
    assert res["memory"] == {"limit": 100, "swap": 300, "reservation": 50}
    assert cgroups.resources(memory=100, memory_swap=-1)["memory"]["swap"] == -1


@pytest.mark.parametrize("kw", [dict(memory=0), dict(memory=100, memory_swap=50),
                                dict(memory_swap=100), dict(pids=0), dict(cpu_limit_millis=0)])
def test_invalid_limits_are_refused(kw):
    with pytest.raises(Stage1Error):
        cgroups.resources(**kw)


@pytest.mark.parametrize("millis,quota", [(1000, 100000), (500, 50000), (2500, 250000), (1, 1000), (250, 25000)])
def test_millicores_to_quota(millis, quota):
    assert cgroups.millicores_to_quota(millis) == (quota, 100000)


@pytest.mark.parametrize("millis,shares", [(1000, 1024), (250, 256), (1, 2), (0, 2), (10**6, 262144)])
def test_millicores_to_shares(millis, shares):
    assert cgroups.millicores_to_shares(millis) == shares


def test_cpu_and_pids_resources():
    res = cgroups.resources(cpu_limit_millis=1500, cpu_request_millis=500, pids=100,
                            cpuset_cpus="0-1", cpuset_mems="0")
    assert res["cpu"] == {"quota": 150000, "period": 100000, "shares": 512, "cpus": "0-1", "mems": "0"}
    assert res["pids"] == {"limit": 100}
    assert cgroups.resources(cpu_request_millis=500, cpu_shares=7)["cpu"] == {"shares": 7}
    assert "memory" not in cgroups.resources(pids=5)


def test_unified_passthrough():
    assert cgroups.resources(unified={"memory.high": "1G"})["unified"] == {"memory.high": "1G"}


def test_cgroup_paths():
    assert cgroups.pod_path("u1") == "/pypod/u1"
    assert cgroups.app_path("u1", "web") == "/pypod/u1/apps/web"
    assert cgroups.infra_path("u1", "/x/y/") == "/x/y/u1/infra"
    assert cgroups.conmon_path("u1") == "/pypod/u1/conmon"
    for bad in ("", "..", "a/b"):
        with pytest.raises(Stage1Error):
            cgroups.app_path("u1", bad)
    with pytest.raises(Stage1Error):
        cgroups.pod_path("u1", "relative")


# --- cgroup layout -------------------------------------------------------------------------------

HYBRID = """\
25 21 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
"""
V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1 = "\n".join(line for line in HYBRID.splitlines() if "cgroup2" not in line)


def test_parse_hybrid_layout():
    lay = cgroups.parse_mountinfo(HYBRID)
    assert lay.mode == "hybrid" and lay.unified == "/sys/fs/cgroup/unified"
    assert lay.v1["cpu"] == lay.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert lay.v1["name=systemd"] == "/sys/fs/cgroup/systemd"
    # co-mounted controllers count once; cgroup2 comes last
    assert lay.hierarchies == ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/cpu,cpuacct",
                               "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"]


def test_crun_private_mount_needed_only_with_controllers_in_hybrid():
    lay = cgroups.parse_mountinfo(HYBRID)
    assert not lay.crun_needs_private_mount  # no controllers known yet
    with_ctrl = cgroups.Layout(lay.mode, lay.v1, lay.unified, ("hugetlb",))
    assert with_ctrl.crun_needs_private_mount
    assert not cgroups.Layout("v2", {}, "/sys/fs/cgroup", ("memory",)).crun_needs_private_mount


def test_parse_v1_and_v2_layouts():
    assert cgroups.parse_mountinfo(V1).mode == "v1"
    v2 = cgroups.parse_mountinfo(V2)
    assert (v2.mode, v2.unified, v2.hierarchies) == ("v2", "/sys/fs/cgroup", ["/sys/fs/cgroup"])
    with pytest.raises(Stage1Error):
        cgroups.parse_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")


def _fake_v1(tmp_path) -> cgroups.Layout:
    v1 = {c: str(tmp_path / c) for c in ("memory", "cpuacct", "pids", "cpuset")}
    for d in v1.values():
        os.makedirs(d)
    return cgroups.Layout("v1", v1, None)


def test_stats_read_v1_files(tmp_path):
    lay = _fake_v1(tmp_path)
    for ctrl, files in {"memory": {"memory.usage_in_bytes": "1000\n", "memory.max_usage_in_bytes": "2000\n",
                                   "memory.limit_in_bytes": "9223372036854771712\n",
                                   "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"},
                        "cpuacct": {"cpuacct.usage": "12345\n"}, "pids": {"pids.current": "3\n"}}.items():
        d = tmp_path / ctrl / "pypod" / "p"
        d.mkdir(parents=True)
        for name, text in files.items():
            (d / name).write_text(text)
    st = cgroups.stats("/pypod/p", lay)
    assert (st.memory_usage, st.memory_max_usage, st.memory_limit) == (1000, 2000, None)
    assert (st.cpu_usage_ns, st.pids, st.oom_kills) == (12345, 3, 2)


def test_stats_read_v2_files(tmp_path):
    d = tmp_path / "pypod" / "p"
    d.mkdir(parents=True)
    (d / "memory.current").write_text("10\n")
    (d / "memory.max").write_text("max\n")
    (d / "cpu.stat").write_text("usage_usec 7\nuser_usec 5\n")
    (d / "pids.current").write_text("4\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    st = cgroups.stats("/pypod/p", cgroups.Layout("v2", {}, str(tmp_path)))
    assert (st.memory_usage, st.memory_limit, st.cpu_usage_ns, st.pids, st.oom_kills) == (10, None, 7000, 4, 1)


def test_ensure_copies_cpuset_and_remove_cleans_every_hierarchy(tmp_path):
    lay = _fake_v1(tmp_path)
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    cgroups.ensure("/pypod/p/conmon", lay)
    assert (tmp_path / "cpuset" / "pypod" / "p" / "conmon" / "cpuset.cpus").read_text() == "0-1"
    assert len(cgroups.exists("/pypod/p/conmon", lay)) == 4
    # regular directories: remove the files a real cgroupfs would not have
    for f in (tmp_path / "cpuset" / "pypod").rglob("cpuset.*"):
        f.unlink()
    cgroups.remove("/pypod/p", lay)
    assert cgroups.exists("/pypod/p", lay) == [] and len(cgroups.exists("/pypod", lay)) == 4
    cgroups.remove("/pypod/p", lay)  # idempotent


def test_remove_reports_what_stays_busy(tmp_path):
    lay = _fake_v1(tmp_path)
    d = tmp_path / "memory" / "pypod" / "busy"
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text("")  # a non-empty dir cannot be removed: stands for EBUSY
    with pytest.raises(Stage1Error, match="still busy"):
        cgroups.remove("/pypod", lay, timeout=0.05)


# --- OCI config ----------------------------------------------------------------------------------

def test_process_defaults():
    c = gen()
    p = c["process"]
    assert c["ociVersion"] == "1.0.2"
    assert p["args"] == ["/bin/app", "-x"] and p["cwd"] == "/" and p["terminal"] is False
    assert p["env"][0].startswith("PATH=")
    assert p["user"] == {"uid": 0, "gid": 0}
    caps = p["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == list(spec.DEFAULT_CAPABILITIES)
    assert len(spec.DEFAULT_CAPABILITIES) == 14 and "CAP_SYS_ADMIN" not in caps["bounding"]
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 20000}]
    assert c["linux"]["cgroupsPath"] == "/pypod/p/apps/a"
    assert c["root"] == {"path": "/r", "readonly": False}
    assert "hostname" not in c


def test_user_env_terminal_and_oom():
    c = gen(uid=1000, gid=100, additional_gids=[5, 6], env={"A": "1", "PATH": "/bin"}, terminal=True,
            oom_score_adj=500, umask=0o22, cwd="/srv", no_new_privileges=True)
    p = c["process"]
    assert p["user"] == {"uid": 1000, "gid": 100, "additionalGids": [5, 6], "umask": 0o22}
    assert p["env"] == ["A=1", "PATH=/bin", "TERM=xterm"]
    assert (p["oomScoreAdj"], p["cwd"], p["noNewPrivileges"], p["terminal"]) == (500, "/srv", True, True)
    with pytest.raises(Stage1Error):
        gen(oom_score_adj=2000)
    with pytest.raises(Stage1Error):
        gen(env=["NOEQUALS"])


def test_rlimits_are_clamped_to_the_callers_hard_limits():
    out = spec.clamp_rlimits({"RLIMIT_NOFILE": (1048576, 1048576), "RLIMIT_NPROC": (100, INF),
                              "RLIMIT_CORE": (INF, INF)}, HARD)
    assert out == [{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 20000},
                   {"type": "RLIMIT_NPROC", "hard": 32768, "soft": 100},
                   {"type": "RLIMIT_CORE", "hard": 2**64 - 1, "soft": 2**64 - 1}]
    with pytest.raises(Stage1Error):
        spec.clamp_rlimits({"RLIMIT_BOGUS": (1, 1)}, HARD)


def test_default_mounts_and_kernel_paths():
    c = gen()
    dests = [m["destination"] for m in c["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    byd = {m["destination"]: m for m in c["mounts"]}
    assert "ro" in byd["/sys"]["options"] and "ro" in byd["/sys/fs/cgroup"]["options"]
    assert byd["/dev/shm"]["type"] == "tmpfs"
    assert "/proc/kcore" in c["linux"]["maskedPaths"] and "/proc/sys" in c["linux"]["readonlyPaths"]


def test_volumes_etc_files_and_shared_shm():
    vol = spec.Mount.bind("/data", "/var/lib/db", readonly=True, propagation="rslave")
    c = gen(mounts=[vol], etc_hosts="/pod/hosts", etc_resolv_conf="/pod/resolv.conf",
            etc_hostname="/pod/hostname", shm_path="/pod/shm")
    byd = {m["destination"]: m for m in c["mounts"]}
    assert byd["/var/lib/db"] == {"destination": "/var/lib/db", "type": "bind", "source": "/data",
                                  "options": ["rbind", "rslave", "ro"]}
    assert byd["/etc/hosts"]["source"] == "/pod/hosts" and "rw" in byd["/etc/hosts"]["options"]
    assert byd["/etc/resolv.conf"]["options"] == ["bind", "rprivate", "rw"]
    assert byd["/etc/hostname"]["source"] == "/pod/hostname"
    assert byd["/dev/shm"]["type"] == "bind" and byd["/dev/shm"]["source"] == "/pod/shm"
    with pytest.raises(Stage1Error):
        spec.Mount.bind("/a", "/b", propagation="sideways")
    with pytest.raises(Stage1Error):
        gen(mounts=[spec.Mount("relative", "/x")])


def test_user_mount_replaces_a_default_destination():
    c = gen(mounts=[spec.Mount.bind("/host/shm", "/dev/shm")])
    shm = [m for m in c["mounts"] if m["destination"] == "/dev/shm"]
    assert len(shm) == 1 and shm[0]["source"] == "/host/shm"


def test_namespaces_join_pod_paths():
    ns = {"mount": None, "pid": "/run/p/ns/pid", "network": "/run/p/ns/net",
          "ipc": "/run/p/ns/ipc", "uts": "/run/p/ns/uts"}
    c = gen(namespaces=ns, hostname="podhost")
    assert c["linux"]["namespaces"] == [
        {"type": "pid", "path": "/run/p/ns/pid"}, {"type": "network", "path": "/run/p/ns/net"},
        {"type": "ipc", "path": "/run/p/ns/ipc"}, {"type": "uts", "path": "/run/p/ns/uts"},
        {"type": "mount"}]
    assert c["hostname"] == "podhost"


def test_host_namespaces_and_cgroupns():
    c = gen(namespaces={"pid": None})
    types = [n["type"] for n in c["linux"]["namespaces"]]
    assert types == ["pid", "mount"]
    assert "/dev/mqueue" not in [m["destination"] for m in c["mounts"]]  # host IPC
    with pytest.raises(Stage1Error):
        gen(namespaces={"pid": None}, hostname="x")  # hostname without a UTS namespace
    with pytest.raises(Stage1Error):
        gen(namespaces={"bogus": None})
    v2 = spec.generate(spec.AppSpec(args=["a"], rootfs="/r", cgroups_path="/p"), cgroup_v2=True, hard_limits=HARD)
    assert {"type": "cgroup"} in v2["linux"]["namespaces"]
    assert {"type": "cgroup"} not in gen()["linux"]["namespaces"]


def test_user_namespace_mappings_and_extras():
    maps = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    c = gen(uid_mappings=maps, gid_mappings=maps, sysctl={"net.ipv4.ip_forward": "1"},
            seccomp={"defaultAction": "SCMP_ACT_ALLOW"}, annotations={"k": "v"},
            resources=cgroups.resources(memory=1 << 20), readonly_rootfs=True)
    lin = c["linux"]
    assert {"type": "user"} in lin["namespaces"]
    assert lin["uidMappings"] == maps and lin["gidMappings"] == maps
    assert lin["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert lin["seccomp"] == {"defaultAction": "SCMP_ACT_ALLOW"}
    assert lin["resources"]["memory"]["limit"] == 1 << 20
    assert c["annotations"] == {"k": "v"} and c["root"]["readonly"] is True


def test_generate_refuses_bad_input():
    with pytest.raises(Stage1Error):
        gen(args=[])
    with pytest.raises(Stage1Error):
        gen(cgroups_path="relative/path")


def test_exec_process_keeps_the_apps_privileges():
    c = gen(uid=7, env={"A": "1", "B": "2"}, no_new_privileges=True)
    p = spec.exec_process(c, ["sh", "-c", "id"], env={"B": "3", "C": "4"}, cwd="/tmp", terminal=True)
    assert p["args"] == ["sh", "-c", "id"] and p["cwd"] == "/tmp" and p["terminal"] is True
    assert p["user"]["uid"] == 7 and p["noNewPrivileges"] is True
    assert p["capabilities"] == c["process"]["capabilities"]
    assert "B=3" in p["env"] and "C=4" in p["env"] and "A=1" in p["env"] and "B=2" not in p["env"]
    assert c["process"]["args"] == ["/bin/app", "-x"]  # the config is not modified
    with pytest.raises(Stage1Error):
        spec.exec_process(c, [])


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "config.json"
    spec.write_json(path, {"a": 1})
    spec.write_json(path, {"a": 2})
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"a":2}'
    assert os.listdir(tmp_path) == ["config.json"]


# --- runtime and conmon argv -----------------------------------------------------------------------

def test_crun_private_mount_prefix_hides_cgroup2():
    prefix = crun_private_mount_prefix("/usr/bin/crun")
    assert prefix[0].endswith("unshare") and prefix[1] == "-m"
    assert prefix[2:4] == ("--propagation", "unchanged")  # rshared volumes reach the host
    assert prefix[4:6] == ("/bin/sh", "-c")
    script = prefix[6]
    # made private before the umount, which therefore stays in this namespace
    assert script.index("mount --make-private /sys/fs/cgroup/unified") < script.index("umount /sys/fs/cgroup/unified")
    assert 'exec "$0" "$@"' in script
    assert prefix[7] == "/usr/bin/crun"


def test_runtime_argv_and_conmon_args():
    rt = Runtime("crun", "/usr/bin/crun", "/run/x/runtime/crun",
                 prefix=("/usr/bin/unshare", "-m", "/bin/sh", "-c", "S", "/usr/bin/crun"))
    assert rt.wrapped
    assert rt.argv("state", "c1")[-3:] == ["--root=/run/x/runtime/crun", "state", "c1"]
    assert rt.conmon_args() == ["-r", "/usr/bin/unshare", "--runtime-arg=-m", "--runtime-arg=/bin/sh",
                                "--runtime-arg=-c", "--runtime-arg=S", "--runtime-arg=/usr/bin/crun",
                                "--runtime-arg=--root=/run/x/runtime/crun"]
    runc = Runtime("runc", "/usr/sbin/runc", "/r", prefix=("/usr/sbin/runc",))
    assert not runc.wrapped and runc.conmon_args() == ["-r", "/usr/sbin/runc", "--runtime-arg=--root=/r"]


def test_conmon_create_argv():
    rt = Runtime("runc", "/usr/sbin/runc", "/r", prefix=("/usr/sbin/runc",))
    f = conmon.Files(cid="p.a", bundle="/b", state_dir="/s", log_path="/l/ctr.log",
                     exit_dir="/e", socket_dir="/sock")
    argv = conmon.create_argv(rt, f, stdin=True, log_size_max=1 << 20, conmon="/usr/bin/conmon",
                              exit_command=["/usr/bin/pypod", "app-exited", "p", "a"], exit_delay=2)
    assert argv[:3] == ["/usr/bin/conmon", "--api-version", "1"]
    assert "--sync" not in argv  # conmon must daemonise
    pairs = dict(zip(argv, argv[1:]))
    assert (pairs["-c"], pairs["-u"], pairs["-b"], pairs["-p"], pairs["-P"], pairs["-0"]) == \
        ("p.a", "p.a", "/b", "/s/pidfile", "/s/conmon.pid", "/s")
    assert pairs["-l"] == "k8s-file:/l/ctr.log" and pairs["--exit-dir"] == "/e"
    assert pairs["--socket-dir-path"] == "/sock" and pairs["--log-size-max"] == str(1 << 20)
    assert pairs["--exit-command"] == "/usr/bin/pypod" and pairs["--exit-delay"] == "2"
    assert [a for a in argv if a.startswith("--exit-command-arg=")] == \
        ["--exit-command-arg=app-exited", "--exit-command-arg=p", "--exit-command-arg=a"]
    assert "-i" in argv and "-t" not in argv
    assert f.attach_socket == "/sock/p.a/attach" and f.exit_file == "/e/p.a" and f.oom_file == "/s/oom"


def test_cri_log_parsing(tmp_path):
    log = tmp_path / "ctr.log"
    log.write_text("2026-11-29T01:52:10.123456789+00:00 stdout P hel\n"
                   "2026-11-29T01:52:10.123456790+00:00 stdout F lo\n"
                   "2026-11-29T01:52:10.2Z stderr F oops with  spaces \n"
                   "2026-11-29T01:52:10.3Z stdout P tail\n")
    lines = conmon.read_log(str(log))
    assert [(ll.stream, ll.partial, ll.content) for ll in lines] == [
        ("stdout", True, "hel"), ("stdout", False, "lo"), ("stderr", False, "oops with  spaces "),
        ("stdout", True, "tail")]
    assert conmon.log_streams(str(log)) == (b"hello\ntail", b"oops with  spaces \n")
    with pytest.raises(Stage1Error):
        conmon.parse_log_line("garbage")


def test_runtime_probe_prefers_crun_and_wraps_it_on_hybrid_hosts(monkeypatch):
    from pypod.stage1 import runtime

    bins = {"crun": "/usr/bin/crun", "runc": "/usr/sbin/runc", "unshare": "/usr/bin/unshare"}
    monkeypatch.setattr(runtime, "which", lambda name: bins.get(name))
    hybrid = cgroups.Layout("hybrid", {"memory": "/m"}, "/sys/fs/cgroup/unified", ("hugetlb",))
    monkeypatch.setattr(cgroups, "detect", lambda: hybrid)
    found = runtime._probe.__wrapped__()
    assert [f[0] for f in found] == ["crun", "runc"]
    assert found[0][2][:2] == ("/usr/bin/unshare", "-m") and found[0][2][-1] == "/usr/bin/crun"
    assert found[1][2] == ("/usr/sbin/runc",)
    monkeypatch.setattr(cgroups, "detect", lambda: cgroups.Layout("v1", {"memory": "/m"}, None))
    assert runtime._probe.__wrapped__()[0][2] == ("/usr/bin/crun",)
    del bins["unshare"]  # crun cannot be fixed up: runc only
    monkeypatch.setattr(cgroups, "detect", lambda: hybrid)
    assert [f[0] for f in runtime._probe.__wrapped__()] == ["runc"]


@pytest.mark.parametrize("bad", ["", "a/b", "..", "pod.with.dots", "-x"])
def test_pod_ids_that_could_escape_or_collide_are_refused(bad):
    from pypod.stage1 import infra

    with pytest.raises(Stage1Error):
        infra.InfraConfig(pod_id=bad)
    assert infra.check_pod_id("3f2b0c9e-1d2a-4c1e-9a8b-0123456789ab")
