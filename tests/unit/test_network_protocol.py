"""CNI execution against fake plugins (shell scripts that log their environment and stdin).

No root, no namespaces: the fake plugins never touch the network; they record what the runtime
handed them and answer what the test tells them to, so these check the protocol side of pypod:
environment, derived configuration, chaining, DEL order and prevResult, errors, the cache.
"""

from __future__ import annotations

import json
import stat

import pytest

from pypod.errors import NotFound
from pypod.network.cni import (CNI, ConfigError, NetworkError, PluginError, PluginNotFound, Result,
                               RuntimeConf, find_network, load_networks, parse_config)

# A plugin that appends {"cmd", "env", "stdin"} to $LOG, then: ADD -> prints its stdin's prevResult
# extended with one interface named after itself (or a fresh result); DEL/CHECK -> nothing.
# $FAIL_<NAME>=ADD|DEL|CHECK makes it fail that command with a CNI error object.
PLUGIN = r"""#!/bin/sh
name=$(basename "$0")
stdin=$(cat)
printf '{"plugin":"%s","cmd":"%s","env":{"CNI_COMMAND":"%s","CNI_CONTAINERID":"%s","CNI_NETNS":"%s","CNI_IFNAME":"%s","CNI_ARGS":"%s","CNI_PATH":"%s"},"stdin":%s}\n' \
  "$name" "$CNI_COMMAND" "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" "$stdin" >> "$LOG"
fail=$(eval echo "\$FAIL_$(echo "$name" | tr a-z- A-Z_)")
if [ "$fail" = "$CNI_COMMAND" ]; then
  echo '{"cniVersion":"1.0.0","code":7,"msg":"Invalid Configuration","details":"'"$name"' says no"}'
  echo "some log line on stderr" >&2
  exit 1
fi
if [ "$fail" = "CRASH-$CNI_COMMAND" ]; then
  echo "panic: runtime error" >&2
  exit 2
fi
if [ "$CNI_COMMAND" = ADD ]; then
  echo "$stdin" | python3 -c '
import json, sys
conf = json.load(sys.stdin)
name = sys.argv[1]
res = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": [], "routes": [], "dns": {}}
res["interfaces"].append({"name": name, "mac": "aa:bb:cc:dd:ee:%02x" % len(res["interfaces"])})
if not res["ips"]:
    res["interfaces"].append({"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/ns"})
    res["ips"].append({"address": "10.9.0.5/24", "gateway": "10.9.0.1", "interface": 1})
    res["routes"].append({"dst": "0.0.0.0/0"})
    res["dns"] = {"nameservers": ["10.9.0.1"], "search": ["pod.test"]}
print(json.dumps(res))
' "$name"
fi
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    d = tmp_path / "plugins"
    d.mkdir()
    for name in ("alpha", "beta", "gamma"):
        p = d / name
        p.write_text(PLUGIN)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("LOG", str(log))

    class P:
        dir = d
        def calls(self) -> list[dict]:
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines()]
        def clear(self) -> None:
            if log.exists():
                log.unlink()
    return P()


def conflist(*types: str, name: str = "testnet", **extra) -> dict:
    plugins = []
    for t in types:
        p: dict = {"type": t}
        if t == "beta":
            p["capabilities"] = {"portMappings": True, "ips": False}
            p["keep"] = {"nested": [1, 2]}
        plugins.append(p)
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins, **extra}


def runtime(tmp_path, plugins) -> CNI:
    return CNI([str(tmp_path / "nowhere"), str(plugins.dir)], tmp_path / "cache")


RT = RuntimeConf("pod-1", "/run/pypod/netns/pod-1", "eth0", {"IP": "10.9.0.7"},
                 {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                  "ips": ["10.9.0.7"], "bandwidth": {"x": 1}})


def test_add_sets_the_environment_and_derives_each_plugins_config(tmp_path, plugins):
    net = parse_config(conflist("alpha", "beta"), "/etc/pypod/net.d/10-testnet.conflist")
    res = runtime(tmp_path, plugins).add(net, RT)
    calls = plugins.calls()
    assert [c["plugin"] for c in calls] == ["alpha", "beta"]
    env = calls[0]["env"]
    assert env == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pod-1", "CNI_NETNS": "/run/pypod/netns/pod-1",
                   "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;IP=10.9.0.7",
                   "CNI_PATH": f"{tmp_path / 'nowhere'}:{plugins.dir}"}
    first, second = calls[0]["stdin"], calls[1]["stdin"]
    # name and cniVersion injected, no prevResult for the first plugin, no runtimeConfig (no capabilities)
    assert first == {"type": "alpha", "cniVersion": "1.0.0", "name": "testnet"}
    # capabilities removed; only declared-and-true capabilities become runtimeConfig; other keys kept
    assert "capabilities" not in second
    assert second["runtimeConfig"] == {"portMappings": RT.capability_args["portMappings"]}
    assert second["keep"] == {"nested": [1, 2]}
    # prevResult is the previous plugin's result
    assert [i["name"] for i in second["prevResult"]["interfaces"]] == ["alpha", "eth0"]
    assert [i.name for i in res.interfaces] == ["alpha", "eth0", "beta"]
    assert res.ips[0].address == "10.9.0.5/24" and res.ips[0].gateway == "10.9.0.1"
    assert res.dns.nameservers == ("10.9.0.1",) and res.dns.search == ("pod.test",)
    assert res.routes[0].dst == "0.0.0.0/0"


def test_add_caches_config_args_and_result(tmp_path, plugins):
    c = runtime(tmp_path, plugins)
    net = parse_config(conflist("alpha", "beta"), "/x/10-testnet.conflist")
    res = c.add(net, RT)
    path = tmp_path / "cache" / "results" / "testnet-pod-1-eth0"
    doc = json.loads(path.read_text())
    assert doc["complete"] is True and doc["result"] == dict(res.raw)
    assert doc["config"] == net.to_dict() and doc["cniArgs"] == {"IP": "10.9.0.7"}
    assert doc["capabilityArgs"]["portMappings"] == RT.capability_args["portMappings"]
    entry = c.cached("testnet", "pod-1", "eth0")
    assert entry is not None and entry.network == net and entry.complete


def test_del_runs_plugins_in_reverse_with_the_cached_result_and_config(tmp_path, plugins):
    c = runtime(tmp_path, plugins)
    net = parse_config(conflist("alpha", "beta", "gamma"), "/x/10-testnet.conflist")
    res = c.add(net, RT)
    plugins.clear()
    # DEL with no config at hand and different args: the cached ones are used
    c.delete(parse_config(conflist("alpha"), "/changed"), RuntimeConf("pod-1", "", "eth0"))
    calls = plugins.calls()
    assert [x["plugin"] for x in calls] == ["gamma", "beta", "alpha"]
    assert all(x["cmd"] == "DEL" for x in calls)
    assert all(x["stdin"]["prevResult"] == dict(res.raw) for x in calls)
    assert calls[1]["stdin"]["runtimeConfig"]["portMappings"] == RT.capability_args["portMappings"]
    assert calls[0]["env"]["CNI_ARGS"] == "IgnoreUnknown=1;IP=10.9.0.7"
    assert calls[0]["env"]["CNI_NETNS"] == ""  # the namespace may be gone
    assert not (tmp_path / "cache" / "results" / "testnet-pod-1-eth0").exists()
    plugins.clear()
    c.delete(net, RuntimeConf("pod-1", "", "eth0"))  # idempotent: DEL again without a cache
    assert [x["plugin"] for x in plugins.calls()] == ["gamma", "beta", "alpha"]
    assert all("prevResult" not in x["stdin"] for x in plugins.calls())


def test_del_is_best_effort_and_keeps_the_cache_on_failure(tmp_path, plugins, monkeypatch):
    c = runtime(tmp_path, plugins)
    net = parse_config(conflist("alpha", "beta", "gamma"), "/x/10-testnet.conflist")
    c.add(net, RT)
    plugins.clear()
    monkeypatch.setenv("FAIL_BETA", "DEL")
    with pytest.raises(NetworkError, match=r"plugin beta failed \(DEL\): Invalid Configuration: beta says no"):
        c.delete(net, RT)
    assert [x["plugin"] for x in plugins.calls()] == ["gamma", "beta", "alpha"]  # alpha still ran
    assert c.cached("testnet", "pod-1", "eth0") is not None
    monkeypatch.delenv("FAIL_BETA")
    c.delete(net, RT)
    assert c.cached("testnet", "pod-1", "eth0") is None


def test_failed_add_reports_file_and_plugin_and_deletes_what_ran(tmp_path, plugins, monkeypatch):
    c = runtime(tmp_path, plugins)
    net = parse_config(conflist("alpha", "beta", "gamma"), "/etc/pypod/net.d/10-testnet.conflist")
    monkeypatch.setenv("FAIL_BETA", "ADD")
    with pytest.raises(PluginError) as ei:
        c.add(net, RT)
    e = ei.value
    assert str(e) == ("network 'testnet' (/etc/pypod/net.d/10-testnet.conflist): plugin beta failed: "
                      "Invalid Configuration: beta says no (CNI error code 7)")
    assert (e.plugin, e.network, e.code, e.msg) == ("beta", "testnet", 7, "Invalid Configuration")
    calls = plugins.calls()
    assert [(x["plugin"], x["cmd"]) for x in calls] == [
        ("alpha", "ADD"), ("beta", "ADD"), ("gamma", "DEL"), ("beta", "DEL"), ("alpha", "DEL")]
    # the cleanup DEL carries alpha's result, so alpha can undo what it did
    assert [i["name"] for i in calls[-1]["stdin"]["prevResult"]["interfaces"]] == ["alpha", "eth0"]
    assert c.cached("testnet", "pod-1", "eth0") is None


def test_plugin_without_error_object_reports_stderr(tmp_path, plugins, monkeypatch):
    net = parse_config(conflist("alpha"), "/x/20-testnet.conflist")
    monkeypatch.setenv("FAIL_ALPHA", "CRASH-ADD")
    with pytest.raises(PluginError, match=r"\(/x/20-testnet.conflist\): plugin alpha failed: panic: runtime error"):
        runtime(tmp_path, plugins).add(net, RT)


def test_missing_plugin_names_plugin_file_and_search_path(tmp_path, plugins):
    net = parse_config(conflist("alpha", "nosuchplugin"), "/etc/pypod/net.d/30-testnet.conflist")
    c = runtime(tmp_path, plugins)
    with pytest.raises(PluginNotFound) as ei:
        c.add(net, RT)
    assert str(ei.value) == (f"network 'testnet' (/etc/pypod/net.d/30-testnet.conflist): CNI plugin "
                             f"'nosuchplugin' not found in {tmp_path / 'nowhere'}:{plugins.dir}")
    assert not getattr(ei.value, "__notes__", None)  # the cleanup itself did not fail
    # alpha was undone; the missing plugin never ran, so its absence does not block the cleanup
    assert [(x["plugin"], x["cmd"]) for x in plugins.calls()] == [("alpha", "ADD"), ("alpha", "DEL")]
    assert c.cached("testnet", "pod-1", "eth0") is None


def test_check_uses_cached_result_and_honours_disable_check(tmp_path, plugins, monkeypatch):
    c = runtime(tmp_path, plugins)
    net = parse_config(conflist("alpha", "beta"), "/x/n.conflist")
    with pytest.raises(NetworkError, match="not attached"):
        c.check(net, RT)
    res = c.add(net, RT)
    plugins.clear()
    c.check(net, RT)
    calls = plugins.calls()
    assert [(x["plugin"], x["cmd"]) for x in calls] == [("alpha", "CHECK"), ("beta", "CHECK")]
    assert all(x["stdin"]["prevResult"] == dict(res.raw) for x in calls)
    monkeypatch.setenv("FAIL_BETA", "CHECK")
    with pytest.raises(PluginError, match=r"plugin beta failed \(CHECK\)"):
        c.check(net, RT)
    net2 = parse_config(conflist("alpha", name="quiet", disableCheck=True), "/x/q.conflist")
    c.add(net2, RT)
    plugins.clear()
    c.check(net2, RT)
    assert plugins.calls() == []


def test_old_versions_get_no_prevresult_on_del(tmp_path, plugins):
    c = runtime(tmp_path, plugins)
    net = parse_config({"cniVersion": "0.3.1", "name": "old", "plugins": [{"type": "alpha"}]}, "/x/o")
    c.add(net, RT)
    plugins.clear()
    c.delete(net, RT)
    assert "prevResult" not in plugins.calls()[0]["stdin"]
    with pytest.raises(NetworkError, match="not attached"):
        c.check(net, RT)


def test_single_plugin_conf_and_lexical_order(tmp_path):
    d = tmp_path / "net.d"
    d.mkdir()
    (d / "20-b.conflist").write_text(json.dumps(conflist("alpha", name="dup")))
    (d / "10-a.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "dup", "type": "gamma",
                                             "ipam": {"type": "host-local"}}))
    (d / "30-c.json").write_text(json.dumps({"cniVersion": "1.0.0", "name": "single", "type": "beta"}))
    (d / "README").write_text("not a network")
    (d / ".hidden.conflist").write_text("{")
    nets, broken = load_networks(d)
    assert broken == {}
    assert sorted(nets) == ["dup", "single"]
    assert nets["dup"].source == str(d / "10-a.conf")       # the first file in lexical order wins
    assert nets["dup"].plugins == ({"type": "gamma", "ipam": {"type": "host-local"}},)
    assert nets["single"].plugin_types == ["beta"]


def test_broken_files_are_reported_with_their_path(tmp_path):
    d = tmp_path / "net.d"
    d.mkdir()
    (d / "10-broken.conflist").write_text('{"cniVersion": "1.0.0", "name": "broken", "plugins": [')
    (d / "20-ok.conflist").write_text(json.dumps(conflist("alpha", name="ok")))
    with pytest.raises(ConfigError, match=rf"network 'broken': {d}/10-broken.conflist: invalid JSON"):
        find_network(d, "broken")
    assert find_network(d, "ok").name == "ok"
    with pytest.raises(ConfigError, match=r"network 'other' not found .* \(defined there: ok\); unreadable files: "
                                          r".*10-broken.conflist: invalid JSON"):
        find_network(d, "other")
    (d / "10-broken.conflist").unlink()
    with pytest.raises(NotFound, match="network 'other' not found"):
        find_network(d, "other")


@pytest.mark.parametrize("doc, why", [
    ({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}, "network name"),
    ({"cniVersion": "1.0.0", "name": "-x", "plugins": [{"type": "a"}]}, "network name"),
    ({"name": "n", "plugins": [{"type": "a"}]}, "cniVersion"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "non-empty list"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../bin/sh"}]}, "plugin type"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"nope": 1}]}, "plugin type"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a", "capabilities": []}]}, "capabilities"),
    ({"cniVersion": "1.0.0", "name": "n"}, "neither"),
    ([1, 2], "JSON object"),
])
def test_invalid_configs(doc, why):
    with pytest.raises(ConfigError, match=why):
        parse_config(json.dumps(doc), "/f.conflist")


def test_invalid_attachment_parameters(tmp_path, plugins):
    c = runtime(tmp_path, plugins)
    net = parse_config(conflist("alpha"), "/x")
    with pytest.raises(NetworkError, match="container id"):
        c.add(net, RuntimeConf("bad/id", "/ns"))
    with pytest.raises(NetworkError, match="interface name"):
        c.add(net, RuntimeConf("ok", "/ns", "a-very-long-interface-name"))
    assert plugins.calls() == []


def test_result_parsing_legacy_and_interface_selection():
    r = Result.parse({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/16", "gateway": "10.1.0.1",
                                                    "routes": [{"dst": "0.0.0.0/0"}]},
                      "dns": {"nameservers": ["1.1.1.1"]}})
    assert r.ips[0].ip == "10.1.0.2" and r.routes[0].dst == "0.0.0.0/0" and r.dns.nameservers == ("1.1.1.1",)
    r = Result.parse({"cniVersion": "1.0.0",
                      "interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/ns"}, {"name": "eth1", "sandbox": "/ns"}],
                      "ips": [{"address": "10.0.0.2/24", "interface": 1}, {"address": "fd00::2/64", "interface": 1},
                              {"address": "10.1.0.2/24", "interface": 2}]})
    assert [i.address for i in r.ips_of("eth0")] == ["10.0.0.2/24", "fd00::2/64"]
    assert [i.version for i in r.ips_of("eth0")] == [4, 6]
    assert [i.address for i in r.ips_of("eth1")] == ["10.1.0.2/24"]


def test_plugin_timeout(tmp_path, plugins):
    p = plugins.dir / "sleepy"
    p.write_text("#!/bin/sh\ncat >/dev/null\nexec sleep 5\n")
    p.chmod(0o755)
    c = CNI([str(plugins.dir)], tmp_path / "cache", timeout=0.3)
    net = parse_config({"cniVersion": "1.0.0", "name": "slow", "plugins": [{"type": "sleepy"}]}, "/x/slow")
    with pytest.raises(PluginError, match="plugin sleepy ADD timed out"):
        c.add(net, RT)


def test_environment_drops_callers_cni_variables(tmp_path, plugins, monkeypatch):
    monkeypatch.setenv("CNI_ARGS", "EVIL=1")
    net = parse_config(conflist("alpha"), "/x")
    runtime(tmp_path, plugins).add(net, RuntimeConf("pod-2", "/ns", "eth1"))
    assert plugins.calls()[0]["env"]["CNI_ARGS"] == ""
    assert plugins.calls()[0]["env"]["CNI_IFNAME"] == "eth1"


def test_version_command(tmp_path):
    p = tmp_path / "v"
    p.write_text('#!/bin/sh\n[ "$CNI_COMMAND" = VERSION ] && echo \'{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}\'\n')
    p.chmod(0o755)
    assert CNI([str(tmp_path)], tmp_path / "c").version("v") == ["0.4.0", "1.0.0"]


def test_module_imports_stay_cheap():
    import subprocess
    import sys

    code = ("import sys, pypod.network, pypod.network.dns, pypod.network.netns; "
            "heavy = {'ctypes', 'ipaddress', 'asyncio', 'http', 'tenacity', 'httpx'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ctypes" not in out and "httpx" not in out and "asyncio" not in out, out
