"""The pod manifest: quantities, JSON round trip, validation naming the field, rkt-style flags,
environment precedence and the effective process (Docker's entrypoint/cmd rules)."""

from __future__ import annotations

import copy
import json

import pytest

from pypod.errors import UsageError
from pypod.pods import manifest as mf
from pypod.pods.flags import build_from_flags, parse_app_flags, parse_port_flag, parse_volume_flag
from pypod.pods.manifest import (App, Mount, PodManifest, Volume, default_app_name, format_cpu, merge_env,
                                 parse_cpu, parse_memory, resolve_process)

# -- quantities -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("128Mi", 128 << 20), ("1G", 10**9), ("1Gi", 1 << 30), ("1.5Gi", 3 << 29), ("129e6", 129_000_000),
    ("1000", 1000), ("1k", 1000), ("0.5Ki", 512), ("2Ti", 2 << 40), ("1E", 10**18), (4096, 4096),
    ("1.0001", 2),  # a fraction of a byte rounds up, as Kubernetes does
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("12Q", "invalid quantity '12Q'"), ("", "invalid quantity"), ("Mi", "invalid quantity"),
    ("-1", "invalid quantity"), (-5, "negative"), ("1 Mi", "invalid quantity"),
    ("100m", "did you mean 100Mi"), ("1e99", "invalid quantity"), ("9Ei", "too large"),
])
def test_parse_memory_errors(text, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_memory(text)


@pytest.mark.parametrize("text, millicores", [
    ("500m", 500), ("2", 2000), ("0.5", 500), ("1.5", 1500), ("0.001", 1), ("250m", 250), ("1k", 1_000_000),
])
def test_parse_cpu(text, millicores):
    assert parse_cpu(text) == millicores
    assert parse_cpu(format_cpu(millicores)) == millicores


@pytest.mark.parametrize("value, fragment", [
    ("0.0005", "finer than 1m"), ("abc", "invalid CPU quantity"), (2, "expected a string"),
    ("1.5m", "finer than 1m"),
])
def test_parse_cpu_errors(value, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_cpu(value)


def test_format_cpu():
    assert format_cpu(2000) == "2"
    assert format_cpu(1500) == "1500m"


# -- JSON -------------------------------------------------------------------------------------


def full_manifest() -> PodManifest:
    return PodManifest.from_dict({
        "pypodVersion": 1, "kind": "PodManifest",
        "apps": [
            {"name": "web", "image": "nginx:1.25", "imageID": "sha256:" + "a" * 64,
             "exec": ["/bin/sh", "-c"], "args": ["exec nginx"], "env": {"A": "1", "B": ""},
             "user": "www-data", "group": "101", "supplementaryGids": [27, 44], "workingDir": "/srv",
             "mounts": [{"volume": "data", "target": "/data", "readOnly": True},
                        {"volume": "scratch", "target": "/tmp"}],
             "resources": {"memory": "128Mi", "memoryReservation": "96Mi", "cpu": "500m", "cpuShares": 512,
                           "pids": 100},
             "restartPolicy": {"policy": "on-failure", "maxRetries": 3, "backoff": 2, "maxBackoff": 60},
             "readOnlyRootfs": True, "stdin": True, "tty": True, "oomScoreAdj": -100,
             "annotations": {"a": "b"}, "labels": {"tier": "front"},
             "isolators": {"capabilities": {"retain": ["CAP_NET_BIND_SERVICE"]}}},
            {"name": "sidecar", "image": "busybox", "exec": []},
        ],
        "volumes": [
            {"name": "data", "kind": "host", "source": "/srv/data", "readOnly": True, "propagation": "rslave",
             "recursive": False},
            {"name": "scratch", "kind": "tmpfs", "size": "64Mi", "mode": "1777"},
            {"name": "shared", "kind": "empty", "mode": "0750", "uid": 1000, "gid": 1000},
        ],
        "hostname": "web-1",
        "dns": {"servers": ["10.0.0.2", "fd00::53"], "search": ["example.org"], "options": ["ndots:2"],
                "domain": "example.org"},
        "hosts": [{"ip": "10.0.0.5", "hostnames": ["db", "db.local"]}],
        "ports": [{"containerPort": 80, "protocol": "tcp", "hostPort": 8080, "hostIP": "127.0.0.1"},
                  {"containerPort": 53, "protocol": "udp"}],
        "networks": [{"name": "default"}, {"name": "backend", "args": {"IP": "10.1.0.9"}}],
        "exitPolicy": "any-failed", "stage1": "oci", "runtime": "crun", "mutable": True,
        "pidMode": "pod", "ipcMode": "host",
        "annotations": {"io.kubernetes.pod.name": "web"}, "labels": {"app": "web"},
        "isolators": {"sysctls": {"net.core.somaxconn": "1024"}},
    })


def test_round_trip_keeps_every_field():
    pod = full_manifest()
    again = PodManifest.from_json(pod.to_json())
    assert again == pod
    assert again.to_dict() == pod.to_dict()
    web = again.apps[0]
    assert web.resources.memory == 128 << 20 and web.resources.cpu == 500
    assert web.resources.memory_reservation == 96 << 20
    assert again.volumes[1].size == 64 << 20
    assert again.apps[1].exec == []  # an explicit empty exec survives (it clears the entrypoint)
    assert json.loads(pod.to_json())["apps"][0]["resources"]["cpu"] == "500m"
    assert json.loads(pod.to_json())["apps"][0]["resources"]["memoryReservation"] == 96 << 20


def test_memory_reservation_alone_and_serialized_only_when_set():
    pod = PodManifest.from_dict({"pypodVersion": 1, "kind": "PodManifest", "apps": [
        {"name": "a", "image": "x", "resources": {"memoryReservation": 1000}},
        {"name": "b", "image": "x", "resources": {"memory": "64Mi"}}]})
    a, b = pod.apps
    assert a.resources.memory_reservation == 1000 and a.resources.memory is None
    assert not a.resources.is_empty()
    assert b.resources.memory_reservation is None
    apps = pod.to_dict()["apps"]
    assert apps[0]["resources"] == {"memoryReservation": 1000}
    assert apps[1]["resources"] == {"memory": 64 << 20}  # no memoryReservation key when unset


def test_defaults_fill_in_and_stay_short():
    pod = PodManifest.from_json('{"pypodVersion": 1, "kind": "PodManifest", "apps": [{"name": "a", "image": "x"}]}')
    assert pod.exit_policy == "all-exited" and pod.stage1 == "oci" and pod.runtime is None
    assert [n.name for n in pod.networks] == ["default"]
    assert pod.apps[0].restart.policy == "never" and pod.apps[0].exec is None
    doc = pod.to_dict()
    assert doc["apps"] == [{"name": "a", "image": "x"}]
    fly = PodManifest.from_json('{"pypodVersion": 1, "kind": "PodManifest", "stage1": "fly", '
                                '"apps": [{"name": "a", "image": "x"}]}')
    assert [n.name for n in fly.networks] == ["host"]


def _doc() -> dict:
    return copy.deepcopy(full_manifest().to_dict())


def _set(doc: dict, path: str, value) -> None:
    keys = path.split("/")
    cur = doc
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    last = keys[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


@pytest.mark.parametrize("path, value, message", [
    ("apps/1/name", "web", "apps[1].name: duplicate app name 'web'"),
    ("apps/0/resources/memory", "12Q", "apps[0].resources.memory: invalid quantity '12Q'"),
    ("apps/0/resources/memoryReservation", "12Q", "apps[0].resources.memoryReservation: invalid quantity '12Q'"),
    ("apps/0/resources/memoryReservation", 0, "apps[0].resources.memoryReservation: 0 out of range"),
    ("apps/0/resources/memoryReservation", "256Mi",
     "apps[0].resources.memoryReservation: 268435456 is above the memory limit 134217728"),
    ("apps/0/resources/cpu", 2, "apps[0].resources.cpu: invalid CPU quantity 2"),
    ("apps/0/resources/cpuShares", 1, "apps[0].resources.cpuShares: 1 out of range"),
    ("apps/0/resources/pids", 0, "apps[0].resources.pids: 0 out of range"),
    ("apps/0/name", "Web!", "apps[0].name: invalid app name 'Web!'"),
    ("apps/0/imagee", "x", "apps[0].imagee: unknown field"),
    ("apps/0/image", "", "apps[0].image: empty image name"),
    ("apps/0/imageID", "sha256:xyz", "apps[0].imageID: invalid image ID"),
    ("apps/0/exec", "/bin/sh", "apps[0].exec: expected a list of strings"),
    ("apps/0/args", ["a", 1], "apps[0].args[1]: expected a string"),
    ("apps/0/env", {"A=B": "1"}, "apps[0].env: invalid variable name 'A=B'"),
    ("apps/0/user", "bad user", "apps[0].user: invalid user 'bad user'"),
    ("apps/0/group", "4294967295", "apps[0].group: group 4294967295 out of range"),
    ("apps/0/supplementaryGids", [1, "2"], "apps[0].supplementaryGids[1]: expected an integer"),
    ("apps/0/workingDir", "srv", "apps[0].workingDir: must be an absolute path"),
    ("apps/0/mounts/0/volume", "nope", "apps[0].mounts[0].volume: no pod volume named 'nope'"),
    ("apps/0/mounts/1/target", "/data/", "apps[0].mounts[1].target: duplicate mount target '/data/'"),
    ("apps/0/mounts/0/target", "/a/../etc", "apps[0].mounts[0].target: must not contain '..'"),
    ("apps/0/mounts/0/readOnly", "yes", "apps[0].mounts[0].readOnly: expected true or false"),
    ("apps/0/restartPolicy/policy", "sometimes", "apps[0].restartPolicy.policy: invalid value 'sometimes'"),
    ("apps/0/restartPolicy/maxBackoff", 1, "apps[0].restartPolicy.maxBackoff: must be at least backoff"),
    ("apps/0/oomScoreAdj", 1001, "apps[0].oomScoreAdj: 1001 out of range"),
    ("apps/0/tty", "true", "apps[0].tty: expected true or false"),
    ("volumes/0/source", "relative", "volumes[0].source: must be an absolute path"),
    ("volumes/0/kind", "nfs", "volumes[0].kind: invalid value 'nfs'"),
    ("volumes/1/name", "data", "volumes[1].name: duplicate volume name 'data'"),
    ("volumes/0/propagation", "rsomething", "volumes[0].propagation: invalid value 'rsomething'"),
    ("volumes/1/size", "big", "volumes[1].size: invalid quantity 'big'"),
    ("volumes/2/mode", "999", "volumes[2].mode: invalid mode '999'"),
    ("hostname", "-bad-", "hostname: invalid hostname '-bad-'"),
    ("dns/servers", ["10.0.0.300"], "dns.servers[0]: invalid IP address '10.0.0.300'"),
    ("hosts/0/ip", "db", "hosts[0].ip: invalid IP address 'db'"),
    ("ports/0/containerPort", 70000, "ports[0].containerPort: 70000 out of range"),
    ("ports/1/protocol", "icmp", "ports[1].protocol: invalid value 'icmp'"),
    ("networks", [{"name": "host"}, {"name": "default"}], "networks[0]: network 'host' cannot be combined"),
    ("networks", [], "networks: no networks"),
    ("exitPolicy", "some-exited", "exitPolicy: invalid value 'some-exited'"),
    ("stage1", "kvm", "stage1: invalid value 'kvm'"),
    ("runtime", "youki", "runtime: invalid value 'youki'"),
    ("pidMode", "shared", "pidMode: invalid value 'shared'"),
    ("pypodVersion", 2, "pypodVersion: unsupported version 2"),
    ("kind", "Pod", "kind: expected 'PodManifest'"),
    ("labels", {"a": 1}, "labels.a: expected a string"),
])
def test_validation_names_the_field(path, value, message):
    doc = _doc()
    _set(doc, path, value)
    with pytest.raises(UsageError) as exc:
        PodManifest.from_dict(doc)
    assert str(exc.value).startswith(message), str(exc.value)


def test_validation_of_pod_level_rules():
    doc = _doc()
    doc["apps"] = []
    doc["mutable"] = False
    with pytest.raises(UsageError, match=r"^apps: a pod needs at least one app"):
        PodManifest.from_dict(doc)
    doc["mutable"] = True
    assert PodManifest.from_dict(doc).apps == []  # an empty mutable pod (app sandbox) is fine

    doc = _doc()
    doc["dns"] = {"mode": "host", "servers": ["10.0.0.2"]}
    with pytest.raises(UsageError, match=r"^dns: mode 'host' takes no servers"):
        PodManifest.from_dict(doc)

    doc = _doc()
    doc["ports"].append({"containerPort": 81, "hostPort": 8080, "hostIP": "127.0.0.1"})
    with pytest.raises(UsageError, match=r"^ports\[2\]\.hostPort: 8080/tcp is published twice"):
        PodManifest.from_dict(doc)

    doc = _doc()
    doc["networks"] = [{"name": "none"}]
    with pytest.raises(UsageError, match=r"^ports: ports cannot be published with network 'none'"):
        PodManifest.from_dict(doc)

    doc = _doc()
    doc["stage1"], doc["mutable"] = "fly", False
    with pytest.raises(UsageError, match=r"^apps: stage1 fly runs exactly one app, not 2"):
        PodManifest.from_dict(doc)

    with pytest.raises(UsageError, match=r"^pod manifest: not valid JSON"):
        PodManifest.from_json("{nope")
    with pytest.raises(UsageError, match=r"^manifest: expected a JSON object"):
        PodManifest.from_json("[]")


def test_validate_checks_objects_built_in_python():
    pod = PodManifest(apps=[App(name="a", image="x", mounts=[Mount("v", "/v")])],
                      volumes=[Volume(name="v", kind="empty", source="/host")])
    with pytest.raises(UsageError, match=r"^volumes\[0\]\.source: only host volumes have a source"):
        pod.validate()
    pod.volumes[0].source = None
    assert pod.validate() is pod


# -- environment and process -------------------------------------------------------------------

IMAGE = {"Env": ["PATH=/image/bin", "A=image", "B=image", "BARE"], "Entrypoint": ["/entry"],
         "Cmd": ["--default"], "User": "1000:1001", "WorkingDir": "/work"}


def test_env_precedence_image_manifest_flags():
    env = merge_env(IMAGE["Env"], {"B": "manifest", "C": "manifest"}, {"C": "flag"})
    assert env == {"PATH": "/image/bin", "A": "image", "B": "manifest", "C": "flag", "BARE": ""}
    app = App(name="a", image="x", env={"B": "manifest", "C": "manifest"})
    proc = resolve_process(app, IMAGE, flag_env={"C": "flag"})
    assert proc.env["A"] == "image" and proc.env["B"] == "manifest" and proc.env["C"] == "flag"
    assert proc.env["PATH"] == "/image/bin"


def test_env_defaults():
    proc = resolve_process(App(name="a", image="x", exec=["/bin/true"], tty=True), {})
    assert proc.env == {"PATH": mf.DEFAULT_PATH, "TERM": "xterm"}
    proc = resolve_process(App(name="a", image="x", exec=["/bin/true"], env={"PATH": "/mine"}), {})
    assert proc.env == {"PATH": "/mine"}


@pytest.mark.parametrize("exec_, args, expected", [
    (None, None, ["/entry", "--default"]),  # image entrypoint + cmd
    (None, ["--mine"], ["/entry", "--mine"]),  # args replace cmd, keep entrypoint
    (["/bin/sh"], None, ["/bin/sh"]),  # exec replaces entrypoint *and* cmd
    (["/bin/sh"], ["-c", "true"], ["/bin/sh", "-c", "true"]),
    ([], ["/bin/echo", "hi"], ["/bin/echo", "hi"]),  # an empty exec clears the entrypoint
])
def test_effective_process_follows_docker_rules(exec_, args, expected):
    proc = resolve_process(App(name="a", image="x", exec=exec_, args=args), IMAGE)
    assert proc.args == expected


def test_effective_process_without_a_command_names_the_field():
    with pytest.raises(UsageError, match=r"^apps\[2\]\.exec: app 'a' has no command"):
        resolve_process(App(name="a", image="scratch"), {"Env": []}, app_path="apps[2]")
    with pytest.raises(UsageError, match="has no command"):
        resolve_process(App(name="a", image="x", exec=[]), IMAGE)


def test_effective_user_group_and_workdir():
    proc = resolve_process(App(name="a", image="x"), IMAGE)
    assert (proc.user, proc.group, proc.cwd) == ("1000", "1001", "/work")
    proc = resolve_process(App(name="a", image="x", user="nobody"), IMAGE)
    assert (proc.user, proc.group) == ("nobody", None)  # --user replaces the image's whole User
    proc = resolve_process(App(name="a", image="x", group="0", working_dir="/srv"), IMAGE)
    assert (proc.user, proc.group, proc.cwd) == ("1000", "0", "/srv")
    proc = resolve_process(App(name="a", image="x", exec=["/x"]), None)
    assert (proc.user, proc.group, proc.cwd) == ("0", None, "/")


# -- flags ------------------------------------------------------------------------------------


def test_multi_app_run_argv():
    argv = ["--hostname=web-1", "--set-env", "G=pod", "--volume", "data,kind=empty,mode=0700",
            "--detach", "--uuid-file-save", "/tmp/u",
            "busybox", "--name", "web", "--memory", "128Mi", "--cpu=500m", "--mount", "volume=data,target=/data",
            "--exec", "/bin/sh", "--set-env=G=app", "--", "-c", "echo hi --name x", "---",
            "docker.io/library/busybox:1.36", "--readonly-rootfs", "--user", "1000:1000",
            "--supplementary-gids", "10,20", "--restart-policy", "on-failure:3,backoff=2s",
            "quay.io/x/busybox@sha256:" + "b" * 64, "--annotation", "k=v", "--cpu-shares", "512",
            "--working-dir", "/w", "--oom-score-adj=-10", "--pids-limit", "50", "--tty"]
    pod, rest = build_from_flags(argv, extra_flags={"--detach": False, "--uuid-file-save": True})
    assert rest == ["--detach", "--uuid-file-save=/tmp/u"]
    assert pod.hostname == "web-1"
    assert [a.name for a in pod.apps] == ["web", "busybox", "busybox-2"]
    web, bb, bb2 = pod.apps
    assert web.exec == ["/bin/sh"] and web.args == ["-c", "echo hi --name x"]
    assert web.env == {"G": "app"}  # the app's own --set-env wins over the pod-level one
    assert web.resources.memory == 128 << 20 and web.resources.cpu == 500
    assert web.mounts == [Mount("data", "/data")]
    assert bb.image == "docker.io/library/busybox:1.36" and bb.readonly_rootfs
    assert (bb.user, bb.group, bb.supplementary_gids) == ("1000", "1000", [10, 20])
    assert (bb.restart.policy, bb.restart.max_retries, bb.restart.backoff) == ("on-failure", 3, 2.0)
    assert bb.env == {"G": "pod"} and bb.exec is None and bb.args is None
    assert bb2.annotations == {"k": "v"} and bb2.resources.cpu_shares == 512
    assert (bb2.working_dir, bb2.oom_score_adj, bb2.resources.pids, bb2.tty) == ("/w", -10, 50, True)
    assert pod.volumes == [Volume(name="data", kind="empty", mode="0700")]


def test_apps_without_separator_and_args_until_triple_dash():
    pod, _ = build_from_flags(["a", "b", "--", "x", "--not-a-flag", "---", "c", "--", "y"])
    assert [(a.name, a.args) for a in pod.apps] == [("a", None), ("b", ["x", "--not-a-flag"]), ("c", ["y"])]


def test_pod_level_flags():
    argv = ["--exit-policy", "any-failed", "--annotation", "a=1", "--label", "l=2", "--stage1", "oci",
            "--runtime", "runc", "--dns", "10.0.0.2,10.0.0.3", "--dns-search", "a.example",
            "--dns-opt", "ndots:1", "--dns-domain", "example", "--hosts-entry", "10.0.0.9=db",
            "--hosts-entry", "10.0.0.9=db2", "--net", "default", "--net=backend:IP=10.1.0.2;X=y",
            "--port", "80:127.0.0.1:8080", "--port", "53:53/udp", "--port", "90:[::1]:9090/tcp",
            "--pid", "pod", "--ipc=host", "img"]
    pod, rest = build_from_flags(argv)
    assert rest == []
    assert pod.exit_policy == "any-failed" and pod.runtime == "runc"
    assert pod.annotations == {"a": "1"} and pod.labels == {"l": "2"}
    assert pod.dns.servers == ["10.0.0.2", "10.0.0.3"] and pod.dns.search == ["a.example"]
    assert pod.dns.options == ["ndots:1"] and pod.dns.domain == "example"
    assert [(h.ip, h.hostnames) for h in pod.hosts] == [("10.0.0.9", ["db", "db2"])]
    assert [(n.name, n.args) for n in pod.networks] == [("default", {}), ("backend", {"IP": "10.1.0.2", "X": "y"})]
    assert [(p.host_ip, p.host_port, p.container_port, p.protocol) for p in pod.ports] == [
        ("127.0.0.1", 8080, 80, "tcp"), (None, 53, 53, "udp"), ("::1", 9090, 90, "tcp")]
    assert (pod.pid_mode, pod.ipc_mode) == ("pod", "host")
    fly, _ = build_from_flags(["--stage1=fly", "img"])
    assert [n.name for n in fly.networks] == ["host"]
    host, _ = build_from_flags(["--dns", "host", "--hosts-entry", "host", "img"])
    assert host.dns.mode == "host" and host.hosts_mode == "host"


@pytest.mark.parametrize("argv, message", [
    (["busybox", "--memory", "12Q"], "app 1 (busybox): --memory 12Q: invalid quantity '12Q'"),
    (["a", "---", "b", "--cpu", "0.0001"], "app 2 (b): --cpu 0.0001: invalid CPU quantity '0.0001': finer than 1m"),
    (["busybox", "--hostname", "x"], "--hostname is a pod flag: put it before the first image"),
    (["--name", "x", "busybox"], "--name is an app flag: put it after the image it applies to"),
    (["--bogus", "busybox"], "unknown flag --bogus"),
    (["busybox", "--name"], "--name: needs a value"),
    (["--", "x"], "--: arguments must follow an image"),
    (["---"], "---: no image before it"),
    ([], "no image given"),
    (["busybox", "--set-env", "NOEQUALS"], "app 1 (busybox): --set-env NOEQUALS: expected KEY=VALUE"),
    (["--volume", "v,kind=host,bogus=1", "x"], "--volume v,kind=host,bogus=1: unknown option 'bogus'"),
    (["--port", "80:a", "x"], "--port 80:a: invalid host port 'a'"),
    (["--dns", "host", "--dns", "10.0.0.1", "x"], "--dns host: cannot be combined with DNS servers"),
    (["x", "--restart-policy", "always:3"], "app 1 (x): --restart-policy always:3: only on-failure takes"),
    (["x", "--readonly-rootfs=maybe"], "app 1 (x): --readonly-rootfs maybe: expected true or false"),
    (["x", "--name", "a", "---", "y", "--name", "a"], "apps[1].name: duplicate app name 'a'"),
    (["x", "--mount", "volume=nope,target=/d"], "apps[0].mounts[0].volume: no pod volume named 'nope'"),
    (["--stage1", "fly", "x", "y"], "apps: stage1 fly runs exactly one app, not 2"),
])
def test_flag_errors_name_the_flag(argv, message):
    with pytest.raises(UsageError) as exc:
        build_from_flags(argv)
    assert str(exc.value).startswith(message), str(exc.value)


def test_pod_manifest_file_with_overrides(tmp_path):
    doc = _doc()
    doc["mutable"] = False
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(doc))
    pod, rest = build_from_flags(["--pod-manifest", str(path), "--hostname", "other", "--set-env", "A=flag",
                                  "--annotation", "extra=1", "--detach"], extra_flags={"--detach": False})
    assert rest == ["--detach"]
    assert pod.hostname == "other" and pod.annotations["extra"] == "1"
    assert pod.apps[0].env == {"A": "flag", "B": ""}  # flags win over the manifest's env
    assert pod.apps[1].env == {"A": "flag"}
    with pytest.raises(UsageError, match="cannot be combined with images"):
        build_from_flags(["--pod-manifest", str(path), "busybox"])
    with pytest.raises(UsageError, match=r"--pod-manifest .*missing.json: No such file"):
        build_from_flags(["--pod-manifest", str(tmp_path / "missing.json")])
    doc["apps"][0]["resources"]["memory"] = "12Q"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=r"apps\[0\]\.resources\.memory: invalid quantity '12Q'"):
        build_from_flags(["--pod-manifest", str(path)])


def test_sandbox_without_apps():
    pod, _ = build_from_flags(["--mutable", "--hostname", "sb"], allow_no_apps=True)
    assert pod.apps == [] and pod.mutable
    pod, _ = build_from_flags(["--hostname", "sb"], allow_no_apps=True)
    assert pod.apps == [] and not pod.mutable


def test_parse_app_flags_for_app_add():
    app = parse_app_flags("redis:7", ["--name", "cache", "--memory=1Gi", "--", "redis-server", "--save", ""])
    assert (app.name, app.image, app.resources.memory) == ("cache", "redis:7", 1 << 30)
    assert app.args == ["redis-server", "--save", ""]
    with pytest.raises(UsageError, match="unknown app flag --hostname"):
        parse_app_flags("x", ["--hostname", "h"])
    with pytest.raises(UsageError, match="--memory 1Q: invalid quantity"):
        parse_app_flags("x", ["--memory", "1Q"])


def test_volume_and_port_flag_forms():
    v = parse_volume_flag("data,kind=host,source=/srv,readOnly=true,propagation=rshared,recursive=false")
    assert (v.name, v.kind, v.source, v.read_only, v.propagation, v.recursive) == (
        "data", "host", "/srv", True, "rshared", False)
    t = parse_volume_flag("t,kind=tmpfs,size=64Mi,mode=1777,uid=1,gid=2")
    assert (t.size, t.mode, t.uid, t.gid) == (64 << 20, "1777", 1, 2)
    assert parse_volume_flag("plain").kind == "host"  # rkt's default kind
    p = parse_port_flag("80:8080")  # CONTAINERPORT:HOSTPORT, as rkt
    assert (p.host_ip, p.host_port, p.container_port, p.protocol) == (None, 8080, 80, "tcp")


@pytest.mark.parametrize("image, name", [
    ("busybox", "busybox"), ("docker.io/library/busybox:1.36", "busybox"), ("localhost:5000/a/b_c:x", "b_c"),
    ("quay.io/x/Weird.Name@sha256:" + "c" * 64, "weird.name"), ("sha256:" + "d" * 64, "app"), ("___", "app"),
])
def test_default_app_name(image, name):
    assert default_app_name(image) == name
