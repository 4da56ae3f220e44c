"""Endpoint resolution and WWW-Authenticate parsing of pypod.images.registry: pure, no network."""

import pytest

from pypod.config import Config, Endpoint, RegistryConfig
from pypod.errors import UsageError
from pypod.images.reference import parse
from pypod.images.registry import RegistryEndpoint, parse_challenges, resolve_endpoints


def test_unconfigured_host_is_verified_https_origin():
    [ep] = resolve_endpoints(Config(), parse("quay.io/team/app:1"))
    assert ep == RegistryEndpoint("quay.io", "team/app", insecure=False, ca_file=None, mirror=False)
    assert ep.tls == (True, None)


def test_docker_hub_api_host():
    [ep] = resolve_endpoints(Config(), parse("busybox"))
    assert (ep.host, ep.path) == ("registry-1.docker.io", "library/busybox")


def test_location_rewrites_the_prefix():
    cfg = Config(registries=[RegistryConfig(prefix="registry.k8s.io", location="127.0.0.1:5000/k8s",
                                            insecure=True)])
    [ep] = resolve_endpoints(cfg, parse("registry.k8s.io/pause:3.9"))
    assert (ep.host, ep.path, ep.insecure) == ("127.0.0.1:5000", "k8s/pause", True)
    assert ep.tls == (False, None)


def test_path_prefix_and_longest_match():
    cfg = Config(registries=[
        RegistryConfig(prefix="reg.io", location="a.local"),
        RegistryConfig(prefix="reg.io/team", location="b.local/mirror/team", ca_file="/ca.pem"),
    ])
    [ep] = resolve_endpoints(cfg, parse("reg.io/team/app"))
    assert (ep.host, ep.path, ep.ca_file, ep.tls) == ("b.local", "mirror/team/app", "/ca.pem", (True, "/ca.pem"))
    [ep] = resolve_endpoints(cfg, parse("reg.io/teammate/app"))
    assert (ep.host, ep.path) == ("a.local", "teammate/app")


def test_mirrors_first_then_origin():
    cfg = Config(registries=[RegistryConfig(prefix="docker.io", mirrors=[
        Endpoint("m1.local:5001", insecure=True), Endpoint("m2.local/cache", ca_file="/m2.pem")])])
    eps = resolve_endpoints(cfg, parse("alpine:3"))
    assert [(e.host, e.path, e.insecure, e.ca_file, e.mirror) for e in eps] == [
        ("m1.local:5001", "library/alpine", True, None, True),
        ("m2.local", "cache/library/alpine", False, "/m2.pem", True),
        ("registry-1.docker.io", "library/alpine", False, None, False),
    ]


def test_location_without_path_or_with_scheme_is_a_usage_error():
    cfg = Config(registries=[RegistryConfig(prefix="reg.io/app", location="https://other")])
    with pytest.raises(UsageError, match="without a scheme"):
        resolve_endpoints(cfg, parse("reg.io/app"))
    cfg = Config(registries=[RegistryConfig(prefix="reg.io/app", location="other.local")])
    with pytest.raises(UsageError, match="does not name a host and a repository path"):
        resolve_endpoints(cfg, parse("reg.io/app"))


def test_docker_io_location_gets_library():
    cfg = Config(registries=[RegistryConfig(prefix="hub.local", location="docker.io")])
    [ep] = resolve_endpoints(cfg, parse("hub.local/alpine"))
    assert (ep.host, ep.path) == ("registry-1.docker.io", "library/alpine")


@pytest.mark.parametrize("values,expected", [
    (['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
      'scope="repository:library/alpine:pull"'],
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:library/alpine:pull"})]),
    (['Basic realm="Registry Realm"'], [("basic", {"realm": "Registry Realm"})]),
    (['basic realm=simple, Bearer realm="http://t/x", service=svc'],
     [("basic", {"realm": "simple"}), ("bearer", {"realm": "http://t/x", "service": "svc"})]),
    (['Basic', 'Bearer realm="a\\"b,c"'], [("basic", {}), ("bearer", {"realm": 'a"b,c'})]),
    ([' Bearer  Realm = "r" ,  Scope="repository:a/b:pull,push" '],
     [("bearer", {"realm": "r", "scope": "repository:a/b:pull,push"})]),
    ([], []),
])
def test_parse_challenges(values, expected):
    assert [(c.scheme, c.params) for c in parse_challenges(values)] == expected
