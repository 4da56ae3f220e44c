"""Pod networking through the real ``pypod`` CLI (issue 4): the default bridge network with port
forwarding, pod-to-pod traffic, ``--net=none``/``host``, named networks of our own with static IPs
and custom subnets, DNS and hosts flags, failed CNI ADDs, 20 pods at once, and teardown on stop,
gc and after a crash.

Real CNI plugins (/usr/lib/cni), root, one runtime (networking does not depend on it). Everything
happens in namespaces pypod creates. The default network (bridge ``pypod0``, 172.30.0.0/16) is
shared with other pypod users on this host: tests only add and remove their own pods on it. The
networks these tests write (``pypodn-*``: their own bridges and 10.213.x subnets) are removed at
the end of the module when nothing is attached to them.

Besides the ``pods`` fixture's host-wide leak check (processes, mounts, netns, veths, iptables,
cgroups), every test ends with a check attributed to the pods it made (their ids from the data
dir's event log): no host-local IPAM file in /var/lib/cni/networks/*/ names them, no iptables rule
names them, no namespace of theirs is mounted, and the data dir's CNI result cache is empty.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.cli import Pypod

PLUGIN_DIR = "/usr/lib/cni"
NEEDED = ("bridge", "host-local", "portmap", "firewall")
IPAM_ROOT = Path("/var/lib/cni/networks")
NETNS_DIR = Path("/run/pypod/netns")
OWN_PREFIX = "pypodn-"  # our networks and their bridges
DEFAULT_SUBNET = ipaddress.ip_network("172.30.0.0/16")
HTTPD = "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www"

_missing = [p for p in NEEDED if not os.access(f"{PLUGIN_DIR}/{p}", os.X_OK)]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(bool(_missing), reason=f"CNI plugins {_missing} missing in {PLUGIN_DIR} (make system-deps)"),
    pytest.mark.skipif(not shutil.which("iptables-save"), reason="iptables missing (make system-deps)"),
]


# -- helpers ---------------------------------------------------------------------------------------
def sh(script: str) -> list[str]:
    return ["--exec", "/bin/sh", "--", "-c", script]


def status(p: Pypod, uuid: str) -> dict:
    return p("status", "--format", "json", uuid).json()


def detach(p: Pypod, *args: str) -> str:
    return p("run", "-d", *args).out.strip()


def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def http_get(host: str, port: int = 80) -> str | None:
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    try:
        with _opener.open(url, timeout=3) as r:
            return r.read().decode()
    except (OSError, urllib.error.URLError):
        return None


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick), for a host port mapping."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def host_ipv4() -> str:
    """An address of the host itself on a physical-ish interface (not a bridge, not loopback)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        ifname, addr = line.split()[1], line.split()[3].split("/")[0]
        if not os.path.isdir(f"/sys/class/net/{ifname}/bridge"):
            return addr
    pytest.skip("the host has no global IPv4 address outside a bridge to reach its ports at")


def link_names(text: str) -> set[str]:
    """Interface names from ``ip -o link`` output (``N: name@peer: <...>``)."""
    return {line.split(":")[1].strip().split("@")[0] for line in text.splitlines() if re.match(r"\d+:", line)}


def host_links() -> set[str]:
    return link_names(subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout)


def veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
    return link_names(out)


def iptables_lines() -> list[str]:
    return subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.splitlines()


def rules_naming(*needles: str) -> list[str]:
    return [ln for ln in iptables_lines() if ln.startswith("-A") and any(n in ln for n in needles)]


def dnat_rules_for(host_port: int) -> list[str]:
    return [ln for ln in iptables_lines() if ln.startswith("-A") and "DNAT" in ln
            and re.search(rf"--dports? (\S+,)?{host_port}\b", ln)]


def ipam_files_of(ids: set[str]) -> list[str]:
    """host-local allocations (files named by the IP, holding the container id) of these pods."""
    found = []
    for d in IPAM_ROOT.glob("*"):
        for f in d.iterdir() if d.is_dir() else ():
            try:
                owner = f.read_text().split()[0] if f.is_file() and not f.name.startswith(("lock", "last_")) else ""
            except (OSError, IndexError):
                continue
            if owner in ids:
                found.append(f"{d.name}/{f.name}")
    return found


def pod_dir(p: Pypod, uuid: str) -> Path:
    (d,) = [d for d in (p.data_dir / "pods").glob(f"*/{uuid}") if d.is_dir()]
    return d


def host_veths_of(p: Pypod, uuid: str) -> list[str]:
    """The host ends of a running pod's veths, from its recorded network state (not the bridges)."""
    state = json.loads((pod_dir(p, uuid) / "net-info.json").read_text())
    return [i for n in state["networks"] for i in n["hostInterfaces"] if not os.path.isdir(f"/sys/class/net/{i}/bridge")]


def write_net(p: Pypod, name: str, plugins: list[dict], prefix: str = "30") -> Path:
    d = p.config_dir / "net.d"
    d.mkdir(exist_ok=True)
    path = d / f"{prefix}-{name}.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, indent=1))
    return path


def bridge_net(bridge: str, subnet: str, **range_extra) -> dict:
    """A bridge plugin config of our own: own bridge, host-local IPAM, no masquerade (no rules)."""
    return {"type": "bridge", "bridge": bridge, "isGateway": True, "capabilities": {"ips": True},
            "ipam": {"type": "host-local", "ranges": [[dict(subnet=subnet, **range_extra)]],
                     "routes": [{"dst": "0.0.0.0/0"}]}}


def static_net(p: Pypod) -> Path:
    plugin = bridge_net("pypodn-st0", "10.213.1.0/24")
    plugin["dns"] = {"nameservers": ["10.213.1.53"], "search": ["static.pypodn.test"]}
    return write_net(p, "pypodn-static", [plugin])


def custom_net(p: Pypod) -> Path:
    return write_net(p, "pypodn-custom", [bridge_net("pypodn-cu0", "10.213.2.0/28", rangeStart="10.213.2.10",
                                                     rangeEnd="10.213.2.12")])


def pod_ids(p: Pypod) -> set[str]:
    """Every pod this data dir ever had: from the event log and the pod dirs."""
    ids = {d.name for d in (p.data_dir / "pods").glob("*/*")} if (p.data_dir / "pods").is_dir() else set()
    if p.data_dir.exists():
        for line in p("events", "--format", "json", check=False).out.splitlines():
            ids.add(json.loads(line).get("pod") or "")
    return ids - {""}


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def own_networks():
    """Our networks' bridges and IPAM dirs go at the end when nothing uses them any more."""
    before = {n for n in os.listdir("/sys/class/net") if n.startswith(OWN_PREFIX)}
    before_ipam = {d.name for d in IPAM_ROOT.glob(OWN_PREFIX + "*")}
    yield
    for br in sorted(set(os.listdir("/sys/class/net")) - before):
        if br.startswith(OWN_PREFIX) and not os.listdir(f"/sys/class/net/{br}/brif"):
            subprocess.run(["ip", "link", "del", br], check=False)
    for d in IPAM_ROOT.glob(OWN_PREFIX + "*"):
        if d.name not in before_ipam and all(f.name.startswith(("lock", "last_reserved_ip")) for f in d.iterdir()):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pods(pods: Pypod) -> Pypod:
    """The conftest's ``pods`` (own data dir, leak check) plus, at the end, a check that the pods
    of this test left no IPAM allocation, iptables rule, namespace, CNI cache entry or port on one of
    our bridges (the pods' veths die with their namespaces; the default bridge is shared)."""
    yield pods
    ids = pod_ids(pods)
    for pod in pods("list", "--format", "json", check=False).json() if pods.data_dir.exists() else []:
        if pod["state"] == "running":
            pods("stop", "--force", pod["uuid"], check=False)
    pods("gc", "--grace-period", "0s", "--expire-prepared", "0s", check=False)
    results = pods.data_dir / "cni" / "results"
    left = {"ipam": ipam_files_of(ids), "rules": rules_naming(*ids) if ids else [],
            "ports on our bridges": [f"{br}:{port}" for br in os.listdir("/sys/class/net") if br.startswith(OWN_PREFIX)
                                     and os.path.isdir(f"/sys/class/net/{br}/brif")
                                     for port in os.listdir(f"/sys/class/net/{br}/brif")],
            "netns": [str(NETNS_DIR / i) for i in ids if (NETNS_DIR / i).exists()],
            "cni cache": sorted(os.listdir(results)) if results.is_dir() else []}
    assert not any(left.values()), f"left behind by this test's pods: {left}"


# -- the default network: an HTTP server, port forwarding, status/list, stop -----------------------
def test_http_server_answers_at_the_pod_ip_and_the_host_port_until_stop(pods: Pypod) -> None:
    hp = free_port()
    host_ip = host_ipv4()
    uuid = detach(pods, "--port", f"80:{hp}", "busybox", *sh(HTTPD.format(body="hello-from-pod")))
    st = status(pods, uuid)
    ip = st["ip"]
    assert ipaddress.ip_address(ip) in DEFAULT_SUBNET
    (n,) = st["networks"]
    assert (n["name"], n["ifname"], n["ips"], n["gateway"]) == ("default", "eth0", [f"{ip}/16"], "172.30.0.1")

    assert wait_for(lambda: http_get(ip), what="httpd in the pod") == "hello-from-pod\n"
    assert http_get("127.0.0.1", hp) == "hello-from-pod\n"
    assert http_get(host_ip, hp) == "hello-from-pod\n"
    assert dnat_rules_for(hp)

    # status prints the network in rkt's form, list shows it in the NETWORKS column
    assert f"networks=default:ip4={ip}" in pods("status", uuid).out.splitlines()
    row = next(ln for ln in pods("list", "--no-legend").out.splitlines() if ln.startswith(uuid[:8]))
    assert row.split()[-1] == f"default:{ip}"
    (listed,) = pods("list", "--format", "json").json()
    assert listed["ip"] == ip and listed["networks"] == st["networks"]

    # stop runs CNI DEL: the pod still exists (until gc), its veth, address and rules are gone
    host_ends = host_veths_of(pods, uuid)
    assert host_ends and set(host_ends) <= veths()
    pods("stop", "--force", uuid)  # httpd, the app's pid 1, has no SIGTERM handler
    assert status(pods, uuid)["state"] == "exited"
    assert not set(host_ends) & veths()
    assert not dnat_rules_for(hp) and not rules_naming(uuid)
    assert not ipam_files_of({uuid})
    assert not (NETNS_DIR / uuid).exists()
    assert http_get("127.0.0.1", hp) is None


def test_two_pods_reach_each_other_by_ip_and_by_hosts_entry(pods: Pypod) -> None:
    server = detach(pods, "busybox", *sh(HTTPD.format(body="from-a")))
    a_ip = status(pods, server)["ip"]
    wait_for(lambda: http_get(a_ip), what="httpd in pod a")
    # busybox 1.35's wget -T crashes: the CLI call's own timeout bounds it instead
    r = pods("run", "--hosts-entry", f"{a_ip}=alpha,alpha.test", "busybox", *sh(
        f"wget -q -O - http://{a_ip}/ && wget -q -O - http://alpha/ && ping -c 1 -W 5 alpha.test >/dev/null "
        "&& echo ping-ok; ip -o -4 addr show eth0"), timeout=60)
    lines = r.out.splitlines()
    assert r.rc == 0, r.err
    assert lines[:3] == ["from-a", "from-a", "ping-ok"]
    b_ip = lines[3].split()[3].split("/")[0]
    assert b_ip != a_ip and ipaddress.ip_address(b_ip) in DEFAULT_SUBNET
    pods("stop", "--force", server)


# -- none and host ---------------------------------------------------------------------------------
def test_net_none_has_only_loopback(pods: Pypod) -> None:
    r = pods("run", "--net=none", "busybox", *sh("ip -o link; echo ==; ip -o -4 addr"))
    links, addrs = r.out.split("==\n")
    assert link_names(links) == {"lo"}
    assert "inet 127.0.0.1/8" in addrs and len(addrs.splitlines()) == 1
    (pod,) = pods("list", "--format", "json").json()
    assert pod["networks"] == [] and pod["ip"] is None
    assert not any(ln.startswith("networks=") for ln in pods("status", pod["uuid"]).out.splitlines())


def test_net_host_sees_the_host_interfaces_and_keeps_the_host_name(pods: Pypod) -> None:
    before = host_links()
    r = pods("run", "--net=host", "busybox", *sh("ip -o link; echo ==; hostname; echo ==; cat /etc/hosts"))
    after = host_links()
    links, name, hosts = r.out.split("==\n")
    # other pods on this host may add or remove veths meanwhile: compare with both snapshots
    assert before & after <= link_names(links) <= before | after
    assert "lo" in link_names(links) and len(link_names(links)) > 1
    assert name.strip() == socket.gethostname()
    assert hosts.startswith(Path("/etc/hosts").read_text())  # the host's hosts file, not a generated one
    (pod,) = pods("list", "--format", "json").json()
    assert pod["networks"] == [] and pod["ip"] is None
    r = pods("run", "--net=host", "--port", "80:8080", "busybox", *sh("true"), check=False)
    assert r.rc == 2 and "host" in r.err and r.err.count("\n") == 1


# -- many pods at once -----------------------------------------------------------------------------
def test_20_pods_in_parallel_get_distinct_ips_and_leave_nothing(pods: Pypod) -> None:
    base = [sys.executable, "-m", "pypod.cli", "--dir", str(pods.data_dir), "--config-dir", str(pods.config_dir)]
    cmd = base + ["run", "-d", "busybox", "--exec", "/bin/sleep", "--", "1000"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(20)]
    outs = [(p.wait(120), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in outs), [err for rc, _, err in outs if rc]
    uuids = [out.strip() for _, out, _ in outs]
    assert len(set(uuids)) == 20

    listed = {p["uuid"]: p for p in pods("list", "--format", "json").json()}
    ips = [listed[u]["ip"] for u in uuids]
    assert len(set(ips)) == 20 and all(ipaddress.ip_address(i) in DEFAULT_SUBNET for i in ips)
    assert sorted(ipam_files_of(set(uuids))) == sorted(f"default/{i}" for i in ips)
    host_ends = {v for u in uuids for v in host_veths_of(pods, u)}
    assert len(host_ends) == 20 and host_ends <= veths()
    assert all((NETNS_DIR / u).exists() for u in uuids)

    pods("stop", "--force", *uuids, timeout=300)
    assert not host_ends & veths()
    pods("rm", *uuids[:10])
    pods("gc", "--grace-period", "0s")
    assert pods("list", "--format", "json").json() == []
    assert not ipam_files_of(set(uuids))
    assert not rules_naming(*uuids) and not rules_naming(*(f"{i}/32" for i in ips))
    assert not [u for u in uuids if (NETNS_DIR / u).exists()]
    assert not os.listdir(pods.data_dir / "cni" / "results")


# -- failed CNI ADDs -------------------------------------------------------------------------------
def _assert_failed_cleanly(p: Pypod, r, *expected: str) -> None:
    assert r.rc == 254, (r.rc, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("pypod: "), r.err
    for text in expected:
        assert text in r.err, (text, r.err)
    assert [x for x in p("list", "--format", "json").json() if x["state"] == "running"] == []
    ids = pod_ids(p)
    assert ids and not [i for i in ids if (NETNS_DIR / i).exists()]
    p("gc", "--grace-period", "0s")
    assert p("list", "--format", "json").json() == []


def test_broken_conflist_fails_naming_the_file(pods: Pypod) -> None:
    path = pods.config_dir / "net.d" / "10-pypodn-broken.conflist"
    path.parent.mkdir(exist_ok=True)
    path.write_text('{"cniVersion": "1.0.0", "name": "pypodn-broken", "plugins": [')
    r = pods("run", "--net=pypodn-broken", "busybox", *sh("true"), check=False)
    _assert_failed_cleanly(pods, r, str(path), "invalid JSON")


def test_missing_plugin_fails_naming_it_and_creates_nothing(pods: Pypod) -> None:
    path = write_net(pods, "pypodn-missing", [bridge_net("pypodn-mi0", "10.213.3.0/24"),
                                              {"type": "pypod-no-such-plugin"}])
    r = pods("run", "--net=pypodn-missing", "busybox", *sh("true"), check=False)
    _assert_failed_cleanly(pods, r, "'pypod-no-such-plugin' not found", str(path))
    # checked before the first plugin ran: the bridge plugin made neither its bridge nor its IPAM dir
    assert not os.path.exists("/sys/class/net/pypodn-mi0")
    assert not (IPAM_ROOT / "pypodn-missing").exists()


def test_plugin_failure_after_others_ran_is_undone_and_does_not_wedge_the_network(pods: Pypod) -> None:
    # a bridge of its own, new to this test: the failed ADD below is the one that creates it
    if os.path.isdir("/sys/class/net/pypodn-we0/bridge") and not os.listdir("/sys/class/net/pypodn-we0/brif"):
        subprocess.run(["ip", "link", "del", "pypodn-we0"], check=True)
    write_net(pods, "pypodn-wedge", [bridge_net("pypodn-we0", "10.213.4.0/24")])
    # default attaches first (bridge, portmap, firewall ran), then the second network's IPAM refuses
    r = pods("run", "--net=default,pypodn-wedge:IP=10.99.0.5", "busybox", *sh("true"), check=False)
    _assert_failed_cleanly(pods, r, "pypodn-wedge", "plugin bridge failed", "10.99.0.5")
    assert not os.listdir("/sys/class/net/pypodn-we0/brif")  # its veth went with the namespace
    # the bridge that failed ADD made lost its address with its last port (plugins#620): the next
    # pod on that network still gets attached
    r = pods("run", "--net=pypodn-wedge", "busybox", *sh("ip -o -4 addr show eth0"), check=False)
    assert r.rc == 0, r.err
    assert ipaddress.ip_interface(r.out.split()[3]) in ipaddress.ip_network("10.213.4.0/24")


# -- named networks --------------------------------------------------------------------------------
def test_named_network_with_a_static_ip_and_the_networks_dns(pods: Pypod) -> None:
    static_net(pods)
    r = pods("run", "--net=pypodn-static:IP=10.213.1.77", "busybox", *sh(
        "ip -o -4 addr show eth0; cat /etc/resolv.conf; ping -c 1 -W 5 10.213.1.1 >/dev/null && echo gw-ok"))
    assert r.rc == 0, r.err
    assert "inet 10.213.1.77/24" in r.out
    assert "nameserver 10.213.1.53" in r.out and "search static.pypodn.test" in r.out  # from the CNI result
    assert "gw-ok" in r.out
    (pod,) = pods("list", "--format", "json").json()
    assert pod["state"] == "exited" and pod["networks"] == []  # torn down when its app exited
    assert not ipam_files_of({pod["uuid"]})


def test_custom_subnet_and_two_networks(pods: Pypod) -> None:
    custom_net(pods)
    static_net(pods)
    uuid = detach(pods, "--net=pypodn-custom,pypodn-static", "busybox", *sh("sleep 1000"))
    st = status(pods, uuid)
    custom, static = st["networks"]
    assert (custom["name"], custom["ifname"], custom["gateway"]) == ("pypodn-custom", "eth0", "10.213.2.1")
    assert (static["name"], static["ifname"]) == ("pypodn-static", "eth1")
    (cip,), (sip,) = custom["ips"], static["ips"]
    assert cip in ("10.213.2.10/28", "10.213.2.11/28", "10.213.2.12/28")  # rangeStart..rangeEnd
    assert ipaddress.ip_interface(sip) in ipaddress.ip_network("10.213.1.0/24")
    assert st["ip"] == cip.split("/")[0]
    r = pods("exec", uuid, "--", "/bin/sh", "-c", "ip -o -4 addr; ip route")
    assert f"eth0    inet {cip}" in r.out and f"eth1    inet {sip}" in r.out
    assert "default via 10.213.2.1 dev eth0" in r.out
    text = pods("status", uuid).out.splitlines()
    assert f"networks=pypodn-custom:ip4={cip.split('/')[0]},pypodn-static:ip4={sip.split('/')[0]}" in text
    row = next(ln for ln in pods("list", "--no-legend").out.splitlines() if ln.startswith(uuid[:8]))
    assert row.split()[-1] == f"pypodn-custom:{cip.split('/')[0]},pypodn-static:{sip.split('/')[0]}"
    pods("stop", "--force", uuid)
    assert not ipam_files_of({uuid})


# -- DNS and hosts ---------------------------------------------------------------------------------
def test_dns_and_hosts_flags_land_in_the_apps_files(pods: Pypod) -> None:
    r = pods("run", "--hostname", "web", "--dns", "1.2.3.4", "--dns-search", "x.example", "--dns-opt", "ndots:2",
             "--dns-domain", "y.example", "--hosts-entry", "10.9.8.7=db,db.internal", "busybox",
             *sh("cat /etc/resolv.conf; echo ==; cat /etc/hosts; echo ==; hostname; ip -o -4 addr show eth0"))
    assert r.rc == 0, r.err
    resolv, hosts, rest = r.out.split("==\n")
    assert [ln for ln in resolv.splitlines() if not ln.startswith("#")] == [
        "nameserver 1.2.3.4", "search y.example x.example", "options ndots:2"]
    hostname, addr = rest.splitlines()
    ip = addr.split()[3].split("/")[0]
    assert hostname == "web"
    entries = [ln.split() for ln in hosts.splitlines() if ln and not ln.startswith("#")]
    assert ["127.0.0.1", "localhost", "localhost.localdomain"] in entries
    assert [ip, "web.y.example", "web"] in entries  # the pod's hostname on its IP
    assert ["10.9.8.7", "db", "db.internal"] in entries


def test_dns_host_and_hosts_entry_host(pods: Pypod) -> None:
    r = pods("run", "--dns=host", "--hosts-entry=host", "busybox",
             *sh("cat /etc/resolv.conf; echo ==; cat /etc/hosts; echo ==; hostname; ip -o -4 addr show eth0"))
    assert r.rc == 0, r.err
    resolv, hosts, rest = r.out.split("==\n")
    hostname, addr = rest.splitlines()
    assert resolv == Path("/etc/resolv.conf").read_text()
    assert hosts.startswith(Path("/etc/hosts").read_text())
    assert f"{addr.split()[3].split('/')[0]}\t{hostname}" in hosts.splitlines()  # added: the pod's own name
    assert hostname.startswith("pypod-")


def test_dns_none_keeps_the_images_file(pods: Pypod) -> None:
    r = pods("run", "--dns=none", "busybox", *sh("cat /etc/resolv.conf 2>/dev/null || echo no-resolv-conf"))
    assert r.out == "no-resolv-conf\n"  # the busybox test image ships no resolv.conf


def test_dns_none_keeps_an_images_own_resolv_conf(pods: Pypod) -> None:
    # an image with a resolv.conf of its own (with --dns=none the write goes to the app's rootfs)
    pods("run", "--net=none", "--dns=none", "busybox", *sh("echo 'nameserver 9.9.9.9' > /etc/resolv.conf"))
    uuid = pods("list", "--format", "json").json()[0]["uuid"]
    pods("export", uuid, "with-resolv")
    r = pods("run", "--net=none", "--dns=none", "with-resolv", *sh("cat /etc/resolv.conf"))
    assert r.out == "nameserver 9.9.9.9\n"
    r = pods("run", "--net=none", "--dns", "1.2.3.4", "with-resolv", *sh("cat /etc/resolv.conf"))
    assert "nameserver 1.2.3.4" in r.out and "9.9.9.9" not in r.out  # otherwise pypod's file wins


def test_default_dns_is_the_hosts_without_loopback_resolvers(pods: Pypod) -> None:
    host = [ln.split()[1] for ln in Path("/etc/resolv.conf").read_text().splitlines()
            if ln.startswith("nameserver") and len(ln.split()) > 1]
    expected = [s for s in host if not ipaddress.ip_address(s.split("%")[0]).is_loopback]
    if not expected:
        pytest.skip("the host's resolv.conf lists only loopback resolvers (the fallback to systemd-resolved's "
                    "upstreams is covered by tests/unit/test_network_dns.py)")
    r = pods("run", "busybox", *sh("cat /etc/resolv.conf"))
    assert [ln.split()[1] for ln in r.out.splitlines() if ln.startswith("nameserver")] == expected


# -- named ports -----------------------------------------------------------------------------------
def test_named_port_from_the_images_exposed_ports(pods: Pypod) -> None:
    hp = free_port()
    uuid = detach(pods, "--port", f"80-tcp:127.0.0.1:{hp}", "configured", "--user", "0",
                  *sh(HTTPD.format(body="named-port")))
    ports = json.loads(pods("cat-manifest", uuid).out)["ports"]
    assert ports == [{"name": "80-tcp", "containerPort": 80, "protocol": "tcp", "hostPort": hp,
                      "hostIP": "127.0.0.1"}]
    assert wait_for(lambda: http_get("127.0.0.1", hp), what="httpd behind the named port") == "named-port\n"
    pods("stop", "--force", uuid)

    for args, message in [
        (("--port", f"8080-tcp:{hp}", "configured"), "no port named '8080-tcp' (declared: 53-udp, 80-tcp)"),
        (("--port", f"53-udp:{hp}/tcp", "configured"), "port '53-udp' is udp, not tcp"),
        (("--port", f"80-tcp:{hp}", "busybox"), "(declared: none)"),
    ]:
        r = pods("run", *args, *sh("true"), check=False)
        assert r.rc == 2 and message in r.err and r.err.count("\n") == 1, (args, r.err)


# -- crashes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["network", "infra"])
def test_killed_after_network_setup_gc_removes_the_port_mapping(pods: Pypod, point: str) -> None:
    hp = free_port()
    base = [sys.executable, "-m", "pypod.cli", "--dir", str(pods.data_dir), "--config-dir", str(pods.config_dir)]
    r = subprocess.run(base + ["run", "--port", f"80:{hp}", "busybox", "--exec", "/bin/sleep", "--", "1000"],
                       env=dict(os.environ, PYPOD_FAILPOINT=point), capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, (r.returncode, r.stderr)
    (pod,) = pods("list", "--format", "json").json()
    assert dnat_rules_for(hp) and ipam_files_of({pod["uuid"]})  # the crash left the attachment
    if pod["state"] == "running":
        pods("stop", "--force", pod["uuid"])
    pods("gc", "--grace-period", "0s", "--expire-prepared", "0s")
    assert pods("list", "--format", "json").json() == []
    assert not dnat_rules_for(hp)
    assert not ipam_files_of({pod["uuid"]}) and not (NETNS_DIR / pod["uuid"]).exists()
