"""``--port`` parsing and validation, ``--net`` parsing, the default network's shape. No root."""

from __future__ import annotations

import ipaddress
import json

import pytest

import pypod.network as net
from pypod.errors import UsageError
from pypod.network.ports import PortMapping, check_ports, exposed_port_names, parse_port, parse_ports

EXPOSED = {"80/tcp": {}, "53/udp": {}, "9000": {}}


@pytest.mark.parametrize("spec, expected", [
    ("80:8080", PortMapping(80, "tcp", 8080, None)),
    ("53:5353/udp", PortMapping(53, "udp", 5353, None)),
    ("80:127.0.0.1:8080", PortMapping(80, "tcp", 8080, "127.0.0.1")),
    ("80:0.0.0.0:8080/TCP", PortMapping(80, "tcp", 8080, None)),
    ("80:[::1]:8080", PortMapping(80, "tcp", 8080, "::1")),
    ("80:[2001:db8::0001]:8080/sctp", PortMapping(80, "sctp", 8080, "2001:db8::1")),
    ("80-tcp:8080", PortMapping(80, "tcp", 8080, None)),
    ("53-udp:192.0.2.2:53", PortMapping(53, "udp", 53, "192.0.2.2")),
    ("9000-tcp:9000/tcp", PortMapping(9000, "tcp", 9000, None)),
])
def test_parse_port(spec, expected):
    assert parse_port(spec, EXPOSED) == expected


@pytest.mark.parametrize("spec, msg", [
    ("80", "expected CONTAINERPORT"),
    (":8080", "expected CONTAINERPORT"),
    ("80:", "expected CONTAINERPORT"),
    ("80:8080/icmp", "unknown protocol 'icmp'"),
    ("0:8080", "invalid container port '0'"),
    ("80:65536", "invalid host port '65536'"),
    ("80:host:8080", "invalid host IP 'host'"),
    ("80:[::1]8080", r"expected \[IPv6\]:HOSTPORT"),
    ("http:8080", "the image declares no port named 'http' \\(declared: 53-udp, 80-tcp, 9000-tcp\\)"),
    ("53-udp:53/tcp", "port '53-udp' is udp, not tcp"),
])
def test_parse_port_errors(spec, msg):
    with pytest.raises(UsageError, match=msg):
        parse_port(spec, EXPOSED)


def test_exposed_port_names_forms():
    assert exposed_port_names(["80/tcp", "53/UDP", "x"]) == {"80-tcp": (80, "tcp"), "53-udp": (53, "udp")}
    assert exposed_port_names({"http": (8080, "TCP")}) == {"http": (8080, "tcp")}
    assert exposed_port_names(None) == {}
    assert parse_port("http:80", {"http": (8080, "tcp")}) == PortMapping(8080, "tcp", 80)


def test_conflicting_host_ports_are_refused():
    with pytest.raises(UsageError, match="already mapped"):
        parse_ports(["80:8080", "81:8080"])
    with pytest.raises(UsageError, match="already mapped"):
        parse_ports(["80:127.0.0.1:8080", "81:8080"])  # the wildcard overlaps every address
    ok = parse_ports(["80:127.0.0.1:8080", "81:192.0.2.2:8080", "82:8080/udp"])
    assert [p.to_cni() for p in ok] == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 8080, "containerPort": 81, "protocol": "tcp", "hostIP": "192.0.2.2"},
        {"hostPort": 8080, "containerPort": 82, "protocol": "udp"}]


def test_check_ports_accepts_manifest_ports_and_cni_dicts_and_skips_unpublished():
    class Port:  # pypod.pods.manifest.Port's fields
        def __init__(self, cp, proto, hp, ip=None):
            self.container_port, self.protocol, self.host_port, self.host_ip = cp, proto, hp, ip

    out = check_ports([Port(80, "tcp", 8080), Port(443, "tcp", 0),
                       {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "::"}])
    assert out == [PortMapping(80, "tcp", 8080), PortMapping(53, "udp", 5353)]
    with pytest.raises(UsageError, match="invalid port mapping"):
        check_ports([{"containerPort": "eighty", "hostPort": 1}])
    with pytest.raises(UsageError, match="invalid host IP"):
        check_ports([Port(80, "tcp", 8080, "nope")])
    assert str(PortMapping(80, "tcp", 8080, "::1")) == "80:[::1]:8080/tcp"


def test_parse_net():
    reqs = net.parse_net(["default", "a:IP=10.1.2.3;FOO=bar,b"])
    assert [(r.name, dict(r.args)) for r in reqs] == [("default", {}), ("a", {"IP": "10.1.2.3", "FOO": "bar"}),
                                                      ("b", {})]
    with pytest.raises(UsageError, match="expected NAME:KEY=VALUE"):
        net.parse_net("a:IP")


@pytest.mark.parametrize("names, msg", [(["host", "default"], "cannot be combined"),
                                        (["none", "x"], "cannot be combined"),
                                        (["-bad"], "invalid network name")])
def test_mode_errors(tmp_path, names, msg):
    s = net.NetSettings(config_dir=tmp_path, data_dir=tmp_path)
    with pytest.raises(UsageError, match=msg):
        net.attach("p1", "/nonexistent", [net.NetworkRequest(n) for n in names], state_file=tmp_path / "s.json",
                   settings=s)
    assert not (tmp_path / "s.json").exists()


def test_host_mode_records_without_namespace(tmp_path):
    s = net.NetSettings(config_dir=tmp_path, data_dir=tmp_path)
    st = net.attach("p1", None, [net.NetworkRequest("host")], state_file=tmp_path / "s.json", settings=s)
    assert (st.mode, st.netns, st.networks) == ("host", None, [])
    assert net.status(tmp_path / "s.json").mode == "host"
    net.detach("p1", None, tmp_path / "s.json", settings=s)
    assert net.status(tmp_path / "s.json") is None


def test_default_network_config_shape():
    conf = net.default_network_config("172.30.0.0/16", "pypod0")
    bridge, portmap, firewall = conf["plugins"]
    assert conf["name"] == "default" and conf["cniVersion"] == "1.0.0"
    assert bridge["type"] == "bridge" and bridge["bridge"] == "pypod0" and bridge["ipMasq"] is True
    assert bridge["isGateway"] and bridge["hairpinMode"] and bridge["capabilities"] == {"ips": True}
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "172.30.0.0/16"}]]
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    assert firewall == {"type": "firewall"}
    with pytest.raises(ValueError):
        net.default_network_config("172.30.0.1/16")


def test_default_network_is_written_once_and_user_files_win(tmp_path, monkeypatch):
    monkeypatch.setattr(net, "_host_routes", lambda: [(ipaddress.ip_network("192.0.2.0/24"), "eth0")])
    s = net.NetSettings(config_dir=tmp_path, data_dir=tmp_path / "data", default_subnet="172.29.0.0/16")
    conf = net.ensure_default_network(s)
    path = tmp_path / "net.d" / "50-default.conflist"
    assert conf.source == str(path)
    assert json.loads(path.read_text())["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "172.29.0.0/16"}]]
    assert net.ensure_default_network(s).source == str(path)
    path.unlink()
    (tmp_path / "net.d" / "10-mine.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "default", "plugins": [{"type": "ptp"}]}))
    assert net.ensure_default_network(s).plugin_types == ["ptp"]
    assert not path.exists()


def test_default_subnet_overlapping_a_host_route_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(net, "_host_routes", lambda: [(ipaddress.ip_network("172.30.5.0/24"), "eth1"),
                                                      (ipaddress.ip_network("0.0.0.0/0"), "eth0")])
    s = net.NetSettings(config_dir=tmp_path, data_dir=tmp_path / "data")
    with pytest.raises(net.ConfigError, match="172.30.0.0/16 overlaps the host's route 172.30.5.0/24 on eth1"):
        net.ensure_default_network(s)
    assert not (tmp_path / "net.d" / "50-default.conflist").exists()


def test_status_roundtrip(tmp_path):
    st = net.NetworkStatus("p", "cni", "/run/pypod/netns/p", True, ports=[PortMapping(80, "tcp", 8080)])
    a = net.AttachmentStatus("default", "eth0", "p", "/x", ["172.30.0.5/16", "fd00::5/64"], "172.30.0.1", "aa:bb")
    st.networks.append(a)
    st._records.append({"config": {"cniVersion": "1.0.0", "name": "default", "plugins": [{"type": "bridge"}]},
                        "args": {}, "capabilityArgs": {}})
    d = json.loads(json.dumps(st.to_dict()))
    back = net.NetworkStatus.from_dict(d)
    assert back.ip == "172.30.0.5" and back.gateway == "172.30.0.1" and back.ports == st.ports
    assert back.networks[0].ips == a.ips and back._records == st._records
