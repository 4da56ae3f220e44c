"""Pod networking with the real CNI plugins (/usr/lib/cni), as root, only inside namespaces made here.

Every test gets its own config dir, data dir and netns dir (tmp), so the default network file, the
CNI cache and the state files are private; the host-wide parts the plugins touch are the default
bridge ``pypod0`` (or a test bridge ``pypodt-*``), veth pairs, host-local IPAM files under
/var/lib/cni/networks/<network>/ and iptables rules.

``leaks`` (autouse) detaches what the test attached with the library's own teardown, then fails
the test on anything of its own left behind: a namespace mount, a veth it was given, a veth on a
test bridge, an IPAM allocation naming its containers, an iptables rule naming its containers or
addresses. Attribution (rather than a whole-host diff) keeps the check exact while other pypod
users on the host (the pod engine's own tests) attach pods to the same default network.
``host_guard`` (module) puts the host back at the end (bridges, the plugins' unused shared chains,
nft tables and ip_forward that appeared) and asserts it equals what it found, whenever no one
else's containers are attached at that moment.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import pypod.network as net
from pypod.errors import Conflict, UsageError
from pypod.network import netns
from pypod.network.cni import CNI, ConfigError, PluginError, PluginNotFound
from pypod.network.dns import DNSConfig, write_etc

PLUGIN_DIR = "/usr/lib/cni"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
NEEDED = ("bridge", "host-local", "portmap", "firewall")
SUBNET = "172.30.0.0/16"          # the default network's
TEST_BRIDGES = ("pypod0", "pypodt-nm0", "pypodt-cs0", "pypodt-dn0", "pypodt-sl0", "pypodt-df0")
TEST_NETS = ("default", "pypodt-named", "pypodt-custom", "pypodt-dns", "pypodt-slow")

_missing = [p for p in NEEDED if not os.access(f"{PLUGIN_DIR}/{p}", os.X_OK)]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates namespaces, veths and iptables rules"),
    pytest.mark.skipif(bool(_missing), reason=f"CNI plugins {_missing} missing in {PLUGIN_DIR} (make system-deps)"),
    pytest.mark.skipif(not shutil.which("iptables-save"), reason="iptables missing (make system-deps)"),
    pytest.mark.skipif(not os.access(BUSYBOX, os.X_OK), reason="busybox-static missing (make system-deps)"),
]


# -- host observation -----------------------------------------------------------------------------

def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=check).stdout


def veths() -> set[str]:
    return {ln.split(":")[1].strip().split("@")[0] for ln in sh("ip", "-o", "link", "show", "type", "veth").splitlines()}


def nsfs_mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {ln.split()[4] for ln in f if " - nsfs " in ln}


def ipam_allocations() -> set[str]:
    out = set()
    for n in TEST_NETS:
        d = Path("/var/lib/cni/networks", n)
        if d.is_dir():
            out |= {f"{n}/{f}" for f in os.listdir(d) if re.fullmatch(r"[0-9a-f.:]+", f) and ("." in f or ":" in f)}
    return out


def iptables_rules() -> set[str]:
    rules = set()
    for tool in ("iptables-save", "ip6tables-save"):
        table = ""
        for ln in sh(tool, check=False).splitlines():
            if ln.startswith("*"):
                table = ln[1:]
            elif ln.startswith(("-A", ":")):
                rules.add(f"{tool[:-5]} {table} {ln.split(' [')[0] if ln.startswith(':') else ln}")
    return rules


# The plugins' per-host scaffolding (created on first use, shared by every CNI user, not per pod).
SCAFFOLD = re.compile(
    r'ip6?tables (filter|nat) (:(CNI-FORWARD|CNI-ADMIN|CNI-HOSTPORT-DNAT|CNI-HOSTPORT-MASQ|CNI-HOSTPORT-SETMARK) -|'
    r'-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD|'
    r'-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN|'
    r'-A (PREROUTING|OUTPUT) -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT|'
    r'-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ|'
    r'-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE|'
    r'-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000|'
    r':(PREROUTING|INPUT|OUTPUT|POSTROUTING|FORWARD) ACCEPT)\Z')


def ipam_owner(ip: str) -> str | None:
    """The container id holding ``ip`` in any test network's host-local store, if allocated."""
    for n in TEST_NETS:
        try:
            return Path("/var/lib/cni/networks", n, ip).read_text().split()[0]
        except (OSError, IndexError):
            continue
    return None


def bridge_ports_of_test_networks() -> set[str]:
    out = set()
    for br in os.listdir("/sys/class/net"):
        if br.startswith("pypodt-") and os.path.isdir(f"/sys/class/net/{br}/brif"):
            out |= {f"{br}:{p}" for p in os.listdir(f"/sys/class/net/{br}/brif")}
    return out


def own_leftovers(env: "Env", rules_before: set[str]) -> dict[str, list[str]]:
    """Everything of this test still on the host (see the module doc)."""
    found: dict[str, list[str]] = {}
    mounts = sorted(m for m in nsfs_mounts() if m.startswith(str(env.tmp)) or env.tag in m)
    links = sorted((env.veths & veths()) | bridge_ports_of_test_networks())
    allocs = []
    for n in TEST_NETS:
        d = Path("/var/lib/cni/networks", n)
        for f in os.listdir(d) if d.is_dir() else []:
            try:
                if env.tag in (d / f).read_text():
                    allocs.append(f"{n}/{f}")
            except OSError:
                pass
    mine_ips = {ip for ip in env.ips if (ipam_owner(ip) or env.tag).find(env.tag) >= 0}
    rules = sorted(r for r in iptables_rules()
                   if env.tag in r or (r not in rules_before and any(re.search(rf"\b{re.escape(ip)}(/|\b)", r)
                                                                    for ip in mine_ips)))
    for what, items in (("namespace mounts", mounts), ("veths", links), ("IPAM allocations", sorted(allocs)),
                        ("iptables rules", rules)):
        if items:
            found[what] = items
    return found


# -- fixtures -------------------------------------------------------------------------------------

def _nft_tables() -> set[str]:
    return set(sh("nft", "list", "tables", check=False).split("\n")) - {""} if shutil.which("nft") else set()


def _restore_host(before: dict) -> None:
    """Undo the host-wide side effects the plugins had during this module (only what did not exist
    before and is unused now)."""
    s = net.NetSettings()
    for br in TEST_BRIDGES:
        if br not in before["links"] and Path("/sys/class/net", br).exists():
            net.prune(net.NetSettings(default_bridge=br))
    for n in TEST_NETS:
        d = Path("/var/lib/cni/networks", n)
        if n not in before["ipam dirs"] and d.is_dir() and not [f for f in os.listdir(d)
                                                             if f != "lock" and not f.startswith("last_reserved")]:
            shutil.rmtree(d)
    for p in (Path("/var/lib/cni/networks"), Path("/var/lib/cni")):
        if str(p) not in before["ipam dirs"] and p.is_dir() and not os.listdir(p):
            p.rmdir()
    scaffold = {r for r in iptables_rules() - before["rules"] if SCAFFOLD.search(r) and " :CNI-" in r}
    if scaffold:  # the plugins' shared chains appeared during these tests: remove them if unused now
        net.prune(s, bridge=False, ipam=False, chains=True)
    for t in _nft_tables() - before["nft tables"]:  # tables iptables-nft made for the plugins, if now empty
        listing = sh("nft", "list", *t.split(), check=False)
        skeleton = re.compile(r"\s*(table \S+ \S+ \{|chain \S+ \{|type \w+ hook .*;|\})?\s*")
        if listing and all(skeleton.fullmatch(ln) for ln in listing.splitlines()):
            subprocess.run(["nft", "delete", *t.split()], capture_output=True)
    for d in (netns.NETNS_DIR, netns.NETNS_DIR.parent):  # made by the netns test, if empty now
        if str(d) not in before["ipam dirs"] and d.is_dir() and not os.listdir(d):
            d.rmdir()
    if before["ip_forward"] == "0" and not veths() - before["veths"]:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("0\n")


@pytest.fixture(scope="module", autouse=True)
def host_guard():
    before = {"links": set(os.listdir("/sys/class/net")), "rules": iptables_rules(), "nft tables": _nft_tables(),
              "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(), "veths": veths(),
              "ipam dirs": {str(p) for p in [Path("/var/lib/cni"), Path("/var/lib/cni/networks"),
                                             netns.NETNS_DIR, netns.NETNS_DIR.parent] if p.exists()}
              | {n for n in TEST_NETS if Path("/var/lib/cni/networks", n).exists()}}
    yield
    _restore_host(before)
    assert not [ln for ln in os.listdir("/sys/class/net") if ln.startswith("pypodt-")], "test bridges left"
    assert not [r for r in iptables_rules() if "pypodt" in r], "rules of the test networks left"
    if veths() - before["veths"]:
        return  # someone else's containers are attached now: the shared parts are theirs to keep
    assert set(os.listdir("/sys/class/net")) - before["links"] == set(), "interfaces left on the host"
    assert iptables_rules() ^ before["rules"] == set(), "iptables differ from before the tests"
    assert _nft_tables() == before["nft tables"], "nft tables differ from before the tests"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == before["ip_forward"]


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.settings = net.NetSettings(config_dir=tmp / "etc", data_dir=tmp / "data", netns_dir=tmp / "netns",
                                        plugin_paths=(PLUGIN_DIR,))
        self.tag = uuid.uuid4().hex[:8]
        self.ids: list[str] = []
        self.ips: set[str] = set()
        self.veths: set[str] = set()
        self.state_files: list[tuple[str, Path]] = []
        self.procs: list[subprocess.Popen] = []

    def pod_id(self) -> str:
        pid = f"t{self.tag}-{len(self.ids)}"
        self.ids.append(pid)
        return pid

    def attach(self, networks=None, **kw) -> tuple[str, net.NetworkStatus, Path]:
        pid = kw.pop("pod_id", None) or self.pod_id()
        sf = self.tmp / f"{pid}.net-info.json"
        self.state_files.append((pid, sf))
        reqs = net.parse_net(networks) if isinstance(networks, (str, list)) else networks
        st = net.attach(pid, kw.pop("netns_path", None), reqs, state_file=sf, settings=self.settings, **kw)
        self.remember(st)
        return pid, st, sf

    def remember(self, st: net.NetworkStatus) -> None:
        for a in st.networks:
            self.ips |= {i.split("/")[0] for i in a.ips}
            self.veths |= {h for h in a.host_interfaces if h.startswith("veth")}

    def detach(self, pid: str, sf: Path) -> None:
        net.detach(pid, None, sf, settings=self.settings)

    def write_net(self, name: str, plugins: list[dict], fname: str | None = None, **extra) -> Path:
        d = self.settings.net_dir
        d.mkdir(parents=True, exist_ok=True)
        p = d / (fname or f"20-{name}.conflist")
        p.write_text(json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": plugins, **extra}))
        return p

    def spawn(self, netns_path: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["nsenter", f"--net={netns_path}", BUSYBOX, *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def teardown(self) -> list[str]:
        """What pypod's callers do: stop the processes, detach every pod (errors are returned)."""
        errors = []
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.procs.clear()
        for pid, sf in self.state_files:
            try:
                net.detach(pid, None, sf, settings=self.settings)
            except Exception as e:
                errors.append(f"detach {pid}: {e}")
        return errors

    def force_cleanup(self) -> None:
        """After a failed check: remove namespaces the library should have removed."""
        for ns in netns.list_netns(self.settings.netns_dir):
            netns.delete(ns.path)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.teardown()
    e.force_cleanup()


@pytest.fixture(autouse=True)
def leaks(env):
    """Detaches every pod the test attached (the library's own teardown), then fails the test if a
    veth, a netns mount, an IPAM allocation or an iptables rule is left."""
    rules_before = iptables_rules()
    yield
    errors = env.teardown()
    found = own_leftovers(env, rules_before)
    if errors:
        found["teardown errors"] = errors
    env.force_cleanup()
    assert not found, f"leaked: {found}"


def netns_links(path: str) -> list[str]:
    return sorted(netns.interfaces(path))


def in_subnet(ip: str, subnet: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)


def http_get(url: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def host_ip() -> str | None:
    for ln in sh("ip", "-4", "-o", "addr", "show", "scope", "global").splitlines():
        dev, cidr = ln.split()[1], ln.split()[3]
        if dev not in TEST_BRIDGES and not dev.startswith("veth"):
            return cidr.split("/")[0]
    return None


# -- tests ----------------------------------------------------------------------------------------

def test_default_network_gives_an_ip_in_the_subnet_and_eth0_plus_lo(env):
    pid, st, sf = env.attach()
    assert st.mode == "cni" and st.owns_netns and st.netns == str(env.settings.netns_dir / pid)
    assert netns.is_netns(st.netns)
    assert netns_links(st.netns) == ["eth0", "lo"]
    a = st.networks[0]
    assert (a.network, a.ifname, a.complete) == ("default", "eth0", True)
    assert in_subnet(st.ip, SUBNET) and st.gateway == "172.30.0.1"
    assert a.mac and "pypod0" in a.host_interfaces and any(h in veths() for h in a.host_interfaces)
    conf = json.loads((env.settings.net_dir / "50-default.conflist").read_text())
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap", "firewall"]
    assert Path(f"/var/lib/cni/networks/default/{st.ip}").read_text().startswith(pid)
    # lo is up inside, and eth0 has the address: ping ourselves and the gateway from inside
    assert subprocess.run(["nsenter", f"--net={st.netns}", BUSYBOX, "ping", "-c1", "-W1", "127.0.0.1"],
                          capture_output=True).returncode == 0
    assert subprocess.run(["nsenter", f"--net={st.netns}", BUSYBOX, "ping", "-c1", "-W1", st.gateway],
                          capture_output=True).returncode == 0
    recorded = net.status(sf)
    assert recorded.ip == st.ip and recorded.networks[0].complete
    net.check(sf, env.settings)  # CHECK of every plugin passes on a healthy attachment
    env.detach(pid, sf)
    assert not os.path.exists(st.netns) and net.status(sf) is None
    assert not Path(f"/var/lib/cni/networks/default/{st.ip}").exists()
    assert not list((env.settings.cache_dir / "results").iterdir())
    env.detach(pid, sf)  # idempotent


def test_two_pods_on_the_default_network_reach_each_other(env):
    _, a, _ = env.attach()
    _, b, _ = env.attach()
    assert a.ip != b.ip
    for src, dst in ((a, b), (b, a)):
        p = subprocess.run(["nsenter", f"--net={src.netns}", BUSYBOX, "ping", "-c1", "-W1", dst.ip],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_http_server_reachable_at_pod_ip_and_through_port_mapping(env, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(f"hello from {env.tag}\n")
    hp, hp2 = free_port(), free_port()
    while hp2 == hp:
        hp2 = free_port()
    pid, st, sf = env.attach(ports=[net.parse_port(f"80:{hp}"), net.parse_port(f"80:127.0.0.1:{hp2}")])
    env.spawn(st.netns, "httpd", "-f", "-p", "80", "-h", str(www))
    # housekeeping leaves everything in use alone: bridge, IPAM directory, the plugins' chains
    assert net.prune(env.settings, chains=True) == []
    want = f"hello from {env.tag}\n"
    assert http_get(f"http://{st.ip}/") == want                 # straight to the pod
    assert http_get(f"http://127.0.0.1:{hp}/") == want          # localhost -> DNAT + SNAT (route_localnet)
    assert http_get(f"http://127.0.0.1:{hp2}/") == want         # a mapping bound to one host IP
    assert Path("/proc/sys/net/ipv4/conf/pypod0/route_localnet").read_text().strip() == "1"
    hip = host_ip()
    if hip is None:
        pytest.skip("the host has no global IPv4 address to test HOSTIP:HOSTPORT with")
    assert http_get(f"http://{hip}:{hp}/") == want
    # hairpin: the pod reaches itself through its own host port
    # (busybox 1.35's wget crashes with -T: the subprocess timeout bounds it instead)
    p = subprocess.run(["nsenter", f"--net={st.netns}", BUSYBOX, "wget", "-q", "-O", "-", f"http://{hip}:{hp}/"],
                       capture_output=True, text=True, timeout=10)
    assert p.stdout == want, (p.returncode, p.stderr)
    assert any(str(hp) in r for r in iptables_rules())
    env.detach(pid, sf)
    assert not any(f"--dport {hp} " in r or f"--dport {hp2} " in r for r in iptables_rules())
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{hp}/", timeout=1)


def test_twenty_pods_in_parallel_get_twenty_distinct_ips(env):
    with cf.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: env.attach(), range(20)))
    ips = [st.ip for _, st, _ in results]
    assert len(set(ips)) == 20 and all(in_subnet(ip, SUBNET) for ip in ips)
    assert all(netns_links(st.netns) == ["eth0", "lo"] for _, st, _ in results)
    assert len(veths()) >= 20
    with cf.ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda r: env.detach(r[0], r[2]), results))
    assert not any(os.path.exists(st.netns) for _, st, _ in results)
    assert not any(Path(f"/var/lib/cni/networks/default/{ip}").exists() for ip in ips)
    assert not any(pid in r or f"{ip}/" in r for pid, _, _ in results for ip in ips for r in iptables_rules()
                   if ipam_owner(ip) is None)


def test_none_mode_has_only_loopback(env):
    pid, st, sf = env.attach("none")
    assert st.mode == "none" and st.networks == [] and netns_links(st.netns) == ["lo"]
    assert subprocess.run(["nsenter", f"--net={st.netns}", BUSYBOX, "ping", "-c1", "-W1", "127.0.0.1"],
                          capture_output=True).returncode == 0
    with pytest.raises(UsageError, match="needs a CNI network"):
        env.attach("none", ports=[net.parse_port("80:18080")])
    env.detach(pid, sf)
    assert not os.path.exists(st.netns)


def test_host_mode_uses_the_callers_namespace(env):
    pid, st, sf = env.attach("host")
    assert (st.mode, st.netns, st.networks) == ("host", None, [])
    assert netns.list_netns(env.settings.netns_dir) == []
    assert "eth0" in [n for _, n in socket.if_nameindex()]
    env.detach(pid, sf)


def test_broken_conflist_fails_naming_the_file_and_leaves_nothing(env):
    d = env.settings.net_dir
    d.mkdir(parents=True)
    bad = d / "30-pypodt-named.conflist"
    bad.write_text('{"cniVersion": "1.0.0", "name": "pypodt-named", "plugins": [ {"type": "bridge",')
    pid = env.pod_id()
    sf = env.tmp / "broken.json"
    with pytest.raises(ConfigError, match=rf"network 'pypodt-named': {re.escape(str(bad))}: invalid JSON"):
        net.attach(pid, None, net.parse_net("pypodt-named"), state_file=sf, settings=env.settings)
    assert not sf.exists() and netns.list_netns(env.settings.netns_dir) == []
    assert not (env.settings.cache_dir / "results").exists() or not list((env.settings.cache_dir / "results").iterdir())


def test_missing_plugin_fails_naming_plugin_and_path_and_leaves_nothing(env):
    path = env.write_net("pypodt-named", [
        {"type": "bridge", "bridge": "pypodt-nm0", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.8.0/24"}]]}},
        {"type": "no-such-cni-plugin"}])
    pid = env.pod_id()
    sf = env.tmp / "missing.json"
    with pytest.raises(PluginNotFound) as ei:
        net.attach(pid, None, net.parse_net("pypodt-named"), state_file=sf, settings=env.settings)
    assert str(ei.value) == (f"network 'pypodt-named' ({path}): CNI plugin 'no-such-cni-plugin' not found in "
                             f"{PLUGIN_DIR}")
    # found missing before any plugin ran: no state, no netns, no cache, no veth/IPAM/rules (leaks)
    assert not sf.exists() and netns.list_netns(env.settings.netns_dir) == []
    results = env.settings.cache_dir / "results"
    assert not results.exists() or not list(results.iterdir())


def test_plugin_error_names_network_file_and_plugin(env):
    path = env.write_net("pypodt-named", [
        {"type": "bridge", "bridge": "pypodt-nm0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.8.0/33"}]]}}])
    pid = env.pod_id()
    with pytest.raises(PluginError, match=rf"^network 'pypodt-named' \({re.escape(str(path))}\): plugin bridge failed: "):
        net.attach(pid, None, net.parse_net("pypodt-named"), state_file=env.tmp / "e.json", settings=env.settings)
    assert netns.list_netns(env.settings.netns_dir) == []


@pytest.mark.parametrize("with_capability", [True, False], ids=["runtimeConfig-ips", "CNI_ARGS-IP"])
def test_named_network_with_a_static_ip(env, with_capability):
    bridge = {"type": "bridge", "bridge": "pypodt-nm0", "isGateway": True,
              "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.8.0/24"}]]}}
    if with_capability:
        bridge["capabilities"] = {"ips": True}
    env.write_net("pypodt-named", [bridge])
    pid, st, sf = env.attach("pypodt-named:IP=172.29.8.77")
    assert st.ip == "172.29.8.77" and st.networks[0].ips == ["172.29.8.77/24"]
    rec = json.loads(sf.read_text())["networks"][0]
    assert rec["args"] == {"IP": "172.29.8.77"}
    assert rec["capabilityArgs"] == ({"ips": ["172.29.8.77"]} if with_capability else {})
    assert Path("/var/lib/cni/networks/pypodt-named/172.29.8.77").exists()
    # the address is taken: a second pod asking for it fails cleanly
    with pytest.raises(PluginError, match="172.29.8.77"):
        env.attach("pypodt-named:IP=172.29.8.77")
    env.detach(pid, sf)
    assert not Path("/var/lib/cni/networks/pypodt-named/172.29.8.77").exists()


def test_custom_default_subnet_and_a_second_network(env):
    env.settings.default_subnet = "172.28.0.0/24"
    env.settings.default_bridge = "pypodt-df0"
    env.write_net("pypodt-custom", [{"type": "bridge", "bridge": "pypodt-cs0", "isGateway": True,
                                     "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.9.0/28"}]]}}])
    pid, st, sf = env.attach(["default", "pypodt-custom"])
    assert [(a.network, a.ifname) for a in st.networks] == [("default", "eth0"), ("pypodt-custom", "eth1")]
    assert in_subnet(st.networks[0].ip, "172.28.0.0/24") and in_subnet(st.networks[1].ip, "172.29.9.0/28")
    assert netns_links(st.netns) == ["eth0", "eth1", "lo"]
    env.detach(pid, sf)


def test_dns_from_the_cni_result_lands_in_resolv_conf(env):
    env.write_net("pypodt-dns", [{"type": "bridge", "bridge": "pypodt-dn0", "isGateway": True,
                                  "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.10.0/24"}]]},
                                  "dns": {"nameservers": ["172.29.10.1"], "search": ["pods.test"]}}])
    pid, st, sf = env.attach("pypodt-dns")
    files = write_etc(env.tmp / "etc-pod", hostname="web", ips=st.ips, cni_dns=st.dns)
    assert "nameserver 172.29.10.1\nsearch pods.test\n" in files["resolv.conf"].read_text()
    assert f"{st.ip}\tweb\n" in files["hosts"].read_text()
    files = write_etc(env.tmp / "etc-pod2", hostname="web", ips=st.ips, cni_dns=st.dns,
                      dns=DNSConfig(servers=["10.0.0.53"]))
    assert "nameserver 10.0.0.53\n" in files["resolv.conf"].read_text()
    assert "172.29.10.1" not in files["resolv.conf"].read_text()
    env.detach(pid, sf)


def test_shared_namespace_for_several_apps(env):
    name = f"alloc-{env.tag}"
    env.ids.append(name)
    st = net.create_shared(name, net.parse_net("default"), settings=env.settings)
    env.remember(st)
    assert st.netns == str(env.settings.netns_dir / name) and in_subnet(st.ip, SUBNET)
    with pytest.raises(Conflict):
        net.create_shared(name, settings=env.settings)
    # two "apps" join the namespace by path and see the same interface and address
    for _ in range(2):
        out = subprocess.run(["nsenter", f"--net={st.netns}", BUSYBOX, "ip", "-4", "-o", "addr", "show", "eth0"],
                             capture_output=True, text=True).stdout
        assert f"inet {st.ip}/" in out
    assert [s.pod_id for s in net.list_shared(env.settings)] == [name]
    assert net.shared_status(name, env.settings).ip == st.ip
    assert net.destroy_shared(name, settings=env.settings) is True
    assert not os.path.exists(st.netns) and net.shared_status(name, env.settings) is None
    assert net.destroy_shared(name, settings=env.settings) is False


def test_detach_tolerates_a_namespace_already_gone(env):
    path = netns.create(f"ext-{env.tag}", env.settings.netns_dir)
    pid, st, sf = env.attach(netns_path=str(path))
    assert not st.owns_netns and st.netns == str(path)
    ip = st.ip
    netns.delete(path)  # e.g. the infra's namespace vanished, or the host rebooted
    env.detach(pid, sf)
    assert not Path(f"/var/lib/cni/networks/default/{ip}").exists()
    assert net.status(sf) is None


def test_teardown_after_the_engine_is_killed_mid_attach(env, tmp_path):
    """A plugin that hangs in ADD, the attaching process SIGKILLed: detach from the state file undoes
    the bridge plugin's ADD (veth, IPAM, masquerade rules) with the cached intermediate result."""
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    slow = plugdir / "pypodt-hang"
    slow.write_text('#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = ADD ] && exec sleep 60\nexit 0\n')
    slow.chmod(0o755)
    env.settings.plugin_paths = (str(plugdir), PLUGIN_DIR)
    env.write_net("pypodt-slow", [{"type": "bridge", "bridge": "pypodt-sl0", "isGateway": True, "ipMasq": True,
                                   "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.11.0/24"}]]}},
                                  {"type": "pypodt-hang"}])
    pid = env.pod_id()
    sf = tmp_path / "killed.json"
    env.state_files.append((pid, sf))
    code = (f"import pypod.network as n, pathlib as p\n"
            f"s = n.NetSettings(config_dir=p.Path({str(env.settings.config_dir)!r}), data_dir=p.Path({str(env.settings.data_dir)!r}),"
            f" netns_dir=p.Path({str(env.settings.netns_dir)!r}), plugin_paths=({str(plugdir)!r}, {PLUGIN_DIR!r}))\n"
            f"n.attach({pid!r}, None, [n.NetworkRequest('pypodt-slow')], state_file={str(sf)!r}, settings=s)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    cni = CNI(env.settings.plugin_paths, env.settings.cache_dir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entry = cni.cached("pypodt-slow", pid, "eth0")
        if entry is not None and entry.result is not None:
            break
        time.sleep(0.05)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the attach never reached the hanging plugin")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    st = net.status(sf)
    assert st is not None and st.networks[0].complete is False  # recorded before ADD, never completed
    ip = entry.result["ips"][0]["address"].split("/")[0]
    env.ips.add(ip)
    assert Path(f"/var/lib/cni/networks/pypodt-slow/{ip}").exists()
    assert any(pid in r and "MASQUERADE" in r for r in iptables_rules())
    net.detach(pid, None, sf, settings=env.settings)
    assert not Path(f"/var/lib/cni/networks/pypodt-slow/{ip}").exists()
    assert not any(pid in r for r in iptables_rules())
    assert netns.list_netns(env.settings.netns_dir) == [] and cni.cached("pypodt-slow", pid, "eth0") is None


def test_gc_releases_attachments_whose_pod_state_is_lost(env):
    pid, st, sf = env.attach()
    keep_pid, keep, keep_sf = env.attach()
    sf.unlink()  # the pod directory went away with its net-info.json
    assert net.gc([keep_pid], env.settings) == [pid]
    assert not Path(f"/var/lib/cni/networks/default/{st.ip}").exists()
    assert Path(f"/var/lib/cni/networks/default/{keep.ip}").exists()
    netns.delete(st.netns)
    env.detach(keep_pid, keep_sf)


def test_check_detects_a_broken_attachment(env):
    pid, st, sf = env.attach()
    subprocess.run(["nsenter", f"--net={st.netns}", "ip", "link", "del", "eth0"], check=True)
    with pytest.raises(PluginError, match=r"plugin bridge failed \(CHECK\)"):
        net.check(sf, env.settings)
    env.detach(pid, sf)


def test_attach_twice_is_refused_and_changes_nothing(env):
    pid, st, sf = env.attach()
    with pytest.raises(Conflict, match="already attached"):
        net.attach(pid, st.netns, None, state_file=sf, settings=env.settings)
    assert net.status(sf).ip == st.ip
    env.detach(pid, sf)


def test_netns_create_list_delete_in_the_default_directory(env):
    name = f"pypodtest-{env.tag}"
    path = netns.create(name)
    try:
        assert path == netns.NETNS_DIR / name and netns.is_netns(path)
        assert netns_links(str(path)) == ["lo"]
        assert netns.NetNS(name, path, True) in netns.list_netns()
        with pytest.raises(Conflict):
            netns.create(name)
    finally:
        assert netns.delete(name) is True
    assert not path.exists() and netns.delete(name) is False
    assert str(path) not in nsfs_mounts()


def test_netns_create_leaves_nothing_when_the_mount_fails(env, monkeypatch):
    import pypod.mount

    def boom(*a, **kw):
        raise OSError(1, "mount refused")

    monkeypatch.setattr(pypod.mount, "mount", boom)
    with pytest.raises(netns.NetnsError, match="mount refused"):
        netns.create("doomed", env.settings.netns_dir)
    assert not (env.settings.netns_dir / "doomed").exists()
    # a stale file from a crash between create and mount is replaced on the next create
    monkeypatch.undo()
    (env.settings.netns_dir / "stale").touch()
    p = netns.create("stale", env.settings.netns_dir)
    assert netns.is_netns(p)
    netns.delete(p)


def test_failure_on_a_later_network_undoes_the_earlier_ones(env):
    # the second plugin of the second network fails when it runs (a missing one is found before any ADD)
    env.write_net("pypodt-named", [{"type": "bridge", "bridge": "pypodt-nm0",
                                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.8.0/24"}]]}},
                                   {"type": "bridge", "bridge": "lo",
                                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.29.9.0/24"}]]}}])
    pid = env.pod_id()
    sf = env.tmp / "two.json"
    with pytest.raises(PluginError, match='"lo" already exists but is not a bridge'):
        net.attach(pid, None, net.parse_net("default,pypodt-named"), state_file=sf, settings=env.settings)
    assert not sf.exists() and netns.list_netns(env.settings.netns_dir) == []
    ipam = Path("/var/lib/cni/networks/default")
    assert not [f for f in (os.listdir(ipam) if ipam.is_dir() else []) if ipam_owner(f) == pid]
    results = env.settings.cache_dir / "results"
    assert not results.exists() or not list(results.iterdir())


def test_an_existing_namespace_of_the_same_name_is_never_taken_or_removed(env):
    pid = env.pod_id()
    other = netns.create(pid, env.settings.netns_dir)  # someone else's namespace with the pod's name
    try:
        with pytest.raises(Conflict, match="already exists"):
            net.attach(pid, None, None, state_file=env.tmp / "c.json", settings=env.settings)
        assert netns.is_netns(other) and not (env.tmp / "c.json").exists()
    finally:
        netns.delete(other)
