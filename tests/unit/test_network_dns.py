"""resolv.conf, hosts and hostname generation; DNS and hosts flag parsing. Pure functions, no root."""

from __future__ import annotations

import pytest

from pypod.errors import UsageError
from pypod.network.cni import DNS
from pypod.network.dns import (DNSConfig, HostsEntry, hostname_file, hosts_file, parse_dns_flags,
                               parse_hosts_entry, parse_resolv, resolv_conf, write_etc)

HOST_RESOLV = """# from the host
nameserver 127.0.0.53
nameserver 192.0.2.53
nameserver ::1
search corp.example lab.example
options edns0 trust-ad
"""


@pytest.fixture
def host_files(tmp_path):
    r = tmp_path / "resolv.conf"
    r.write_text(HOST_RESOLV)
    h = tmp_path / "hosts"
    h.write_text("127.0.0.1\tlocalhost\n192.0.2.2\tbuildhost\n")
    return r, h


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.startswith("#")]


def test_flags_win_over_cni_and_host(host_files):
    r, _ = host_files
    flags = parse_dns_flags(["10.0.0.53", "10.0.0.54"], ["svc.test"], ["ndots:2"], None)
    cni = [DNS(("172.30.0.1",), None, ("cni.test",), ("rotate",))]
    assert lines(resolv_conf(flags, cni, host_file=str(r))) == [
        "nameserver 10.0.0.53", "nameserver 10.0.0.54", "search svc.test", "options ndots:2"]


def test_cni_dns_when_no_flags_merged_across_networks(host_files):
    r, _ = host_files
    cni = [DNS(("172.30.0.1",), "pod.test", (), ()), DNS(("172.31.0.1", "172.30.0.1"), None, ("b.test",), ())]
    out = lines(resolv_conf(None, cni, host_file=str(r)))
    assert out == ["nameserver 172.30.0.1", "nameserver 172.31.0.1", "search pod.test b.test",
                   "options edns0 trust-ad"]


def test_host_fallback_skips_loopback_resolvers_in_a_netns(host_files, tmp_path):
    r, _ = host_files
    assert lines(resolv_conf(None, [], host_file=str(r), resolved_file="/nonexistent")) == [
        "nameserver 192.0.2.53", "search corp.example lab.example", "options edns0 trust-ad"]
    # with the host's network the loopback resolvers work and are kept
    assert lines(resolv_conf(None, [], own_netns=False, host_file=str(r)))[:3] == [
        "nameserver 127.0.0.53", "nameserver 192.0.2.53", "nameserver ::1"]


def test_only_loopback_on_host_falls_back_to_resolved_upstreams(tmp_path):
    r = tmp_path / "resolv.conf"
    r.write_text("nameserver 127.0.0.53\noptions edns0\n")
    up = tmp_path / "upstream.conf"
    up.write_text("nameserver 198.51.100.1\nnameserver 127.0.0.1\n")
    assert lines(resolv_conf(None, [], host_file=str(r), resolved_file=str(up))) == [
        "nameserver 198.51.100.1", "options edns0"]


def test_dns_host_copies_and_none_keeps_the_images_file(host_files):
    r, _ = host_files
    assert resolv_conf(parse_dns_flags(["host"]), [DNS(("1.2.3.4",))], host_file=str(r)) == HOST_RESOLV
    assert resolv_conf(parse_dns_flags(["none"]), [DNS(("1.2.3.4",))], host_file=str(r)) is None


def test_dns_domain_and_search(host_files):
    r, _ = host_files
    out = lines(resolv_conf(parse_dns_flags(domain="pods.example"), [], host_file=str(r)))
    assert "domain pods.example" in out and not any(ln.startswith("search") for ln in out)
    out = lines(resolv_conf(parse_dns_flags(search=["a.example"], domain="pods.example"), [], host_file=str(r)))
    assert "search pods.example a.example" in out


@pytest.mark.parametrize("args, msg", [
    ((["8.8.8.8", "host"],), "cannot be combined"),
    ((["host", "none"],), "conflicts"),
    ((["not-an-ip"],), "invalid IP address"),
    ((["none"], ["x.example"]), "cannot be combined"),
    (([], ["bad_domain!"]), "invalid --dns-search"),
    (([], [], ["ndots 2"]), "invalid resolver option"),
    (([], [], [], "-bad"), "invalid --dns-domain"),
])
def test_dns_flag_errors(args, msg):
    with pytest.raises(UsageError, match=msg):
        parse_dns_flags(*args)


def test_dns_flags_parse_lists_and_capability():
    f = parse_dns_flags(["1.1.1.1,2001:db8::1"], ["a.example,b.example"], ["ndots:2,edns0"])
    assert f.servers == ["1.1.1.1", "2001:db8::1"] and f.search == ["a.example", "b.example"]
    assert f.options == ["ndots:2", "edns0"]
    assert f.capability() == {"servers": ["1.1.1.1", "2001:db8::1"], "searches": ["a.example", "b.example"],
                              "options": ["ndots:2", "edns0"]}
    assert parse_dns_flags(["host"]).capability() is None


def test_manifest_like_objects_are_accepted(host_files):
    r, _ = host_files

    class ManifestDNS:  # pypod.pods.manifest.DNS's fields
        mode = None
        servers = ["10.1.1.1"]
        search: list = []
        options: list = []
        domain = None

    assert lines(resolv_conf(ManifestDNS(), [], host_file=str(r)))[0] == "nameserver 10.1.1.1"


def test_hosts_generated_with_hostname_ip_and_entries():
    out = hosts_file("web", ["172.30.0.7/16", "fd00::7/64"],
                     [parse_hosts_entry("10.0.0.9=db,db.internal"), HostsEntry("10.0.0.10", ("cache",))])
    assert lines(out) == ["127.0.0.1\tlocalhost localhost.localdomain",
                          "::1\tlocalhost ip6-localhost ip6-loopback",
                          "172.30.0.7\tweb", "fd00::7\tweb",
                          "10.0.0.9\tdb db.internal", "10.0.0.10\tcache"]


def test_hosts_without_ip_maps_hostname_to_127_0_1_1_and_adds_domain():
    out = lines(hosts_file("box", [], domain="pods.example"))
    assert out[-1] == "127.0.1.1\tbox.pods.example box"


def test_hosts_entry_host_copies_the_hosts_file(host_files):
    _, h = host_files
    out = hosts_file("web", ["172.30.0.7"], [HostsEntry("10.0.0.9", ("db",))], mode="host", host_file=str(h))
    assert out.startswith("127.0.0.1\tlocalhost\n192.0.2.2\tbuildhost\n")
    assert out.splitlines()[-2:] == ["172.30.0.7\tweb", "10.0.0.9\tdb"]
    # a hostname the host's file already names is not added twice
    assert hosts_file("buildhost", ["1.2.3.4"], mode="host", host_file=str(h)) == h.read_text()


@pytest.mark.parametrize("text, msg", [("10.0.0.1", "expected IP=NAME"), ("nope=web", "invalid IP"),
                                       ("10.0.0.1=", "no host name"), ("10.0.0.1=bad_name", "invalid --hosts-entry name")])
def test_hosts_entry_errors(text, msg):
    with pytest.raises(UsageError, match=msg):
        parse_hosts_entry(text)


def test_hosts_entry_host_keyword():
    assert parse_hosts_entry("host") == "host"


def test_hostname_file_validates():
    assert hostname_file("pod-1.example") == "pod-1.example\n"
    for bad in ("", "-x", "a" * 64, "under_score", "x..y"):
        with pytest.raises(UsageError):
            hostname_file(bad)


def test_parse_resolv_last_search_or_domain_wins():
    r = parse_resolv("search a b\ndomain c\nnameserver 1.1.1.1 # comment\noptions ndots:1\noptions edns0\n")
    assert (r.search, r.domain, r.servers, r.options) == ([], "c", ["1.1.1.1"], ["ndots:1", "edns0"])


def test_write_etc_writes_the_three_files(tmp_path, host_files):
    r, h = host_files
    out = write_etc(tmp_path / "etc", hostname="web", ips=["172.30.0.9/16"],
                    cni_dns=[DNS(("172.30.0.1",))], dns=DNSConfig(search=["s.example"]),
                    hosts=[HostsEntry("10.1.1.1", ("x",))], host_resolv=str(r), host_hosts=str(h))
    assert sorted(out) == ["hostname", "hosts", "resolv.conf"]
    assert (tmp_path / "etc" / "hostname").read_text() == "web\n"
    assert "nameserver 172.30.0.1\nsearch s.example\n" in (tmp_path / "etc" / "resolv.conf").read_text()
    assert "172.30.0.9\tweb\n10.1.1.1\tx\n" in (tmp_path / "etc" / "hosts").read_text()
    assert oct((tmp_path / "etc" / "hosts").stat().st_mode & 0o777) == "0o644"
    out = write_etc(tmp_path / "etc2", hostname=None, dns=DNSConfig(mode="none"), host_hosts=str(h))
    assert sorted(out) == ["hosts"]
