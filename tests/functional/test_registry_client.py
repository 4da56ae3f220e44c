"""pypod.images.registry.RegistryClient against real docker-registry processes (tests/support):
plain, TLS, basic auth, bearer tokens, and a fault-injecting proxy that counts requests."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pypod.config import Config, Endpoint, Limits, RegistryConfig
from pypod.errors import (DigestMismatch, LimitExceeded, NotFound, RegistryError,
                          TransientRegistryError)
from pypod.images.reference import parse
from pypod.images.registry import (RegistryClient, RegistryTLSError, RegistryUnreachable,
                                   RetryPolicy, Unauthorized, UnknownHost)
from support import images as im
from support.registry import FaultProxy, Registry, free_port

ACCEPT = [im.MT_OCI_INDEX, im.MT_OCI_MANIFEST, im.MT_DOCKER_LIST, im.MT_DOCKER_MANIFEST]
FAST = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05, max_retry_after=3.0, deadline=20.0)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def insecure(*hosts: str) -> Config:
    return Config(registries=[RegistryConfig(prefix=h, insecure=True) for h in hosts])


def client(config: Config, auths: dict | None = None, retry: RetryPolicy = FAST) -> RegistryClient:
    return RegistryClient(config, auths if auths is not None else {}, timeout=10.0, retry=retry)


def creds_for(reg: Registry, user: str = "pypod") -> dict:
    c = reg.credentials_for(user)
    return {reg.host: (c.username, c.password)}


def single_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg
    return msg


# --- manifests and blobs from a plain registry ---------------------------------------------

def test_manifest_by_tag_and_by_digest(registry, test_images):
    img = test_images.busybox
    with client(insecure(registry.host)) as c:
        by_tag = c.get_manifest(parse(registry.ref("test/busybox")), ACCEPT)
        assert by_tag.data == img.read_blob(img.digest)
        assert by_tag.digest == img.digest and by_tag.media_type == img.media_type
        by_digest = c.get_manifest(parse(registry.ref("test/busybox", img.digest)), ACCEPT)
        assert (by_digest.data, by_digest.digest) == (by_tag.data, img.digest)


@pytest.mark.parametrize("repo,key", [("test/multiarch", "multiarch"),
                                      ("test/multiarch-docker", "multiarch_docker"),
                                      ("test/busybox-docker", "busybox_docker")])
def test_indexes_and_docker_media_types(registry, test_images, repo, key):
    img = test_images[key]
    with client(insecure(registry.host)) as c:
        f = c.get_manifest(parse(registry.ref(repo)), ACCEPT)
        assert (f.digest, f.media_type) == (img.digest, img.media_type)
        for sub in img.platforms.values():
            g = c.get_manifest(parse(registry.ref(repo, sub.manifest_digest)), ACCEPT)
            assert g.digest == sub.manifest_digest and g.media_type == sub.media_type


def test_fetch_blob_verified_with_progress(registry, test_images, tmp_path):
    img = test_images.layered
    ref = parse(registry.ref("test/layered"))
    with client(insecure(registry.host)) as c:
        for layer in img.layers:
            seen: list[int] = []
            dest = tmp_path / layer.digest.replace(":", "_")
            c.fetch_blob(ref, layer.digest, dest, size=layer.size, progress=seen.append)
            assert dest.read_bytes() == img.read_blob(layer.digest)
            assert sum(seen) == layer.size and all(n > 0 for n in seen)
        dest = tmp_path / "config"
        c.fetch_blob(ref, img.config_digest, dest)   # size unknown: still verified
        assert sha(dest.read_bytes()) == img.config_digest


def test_unknown_tag_repo_and_blob_are_not_found(registry, test_images, tmp_path):
    with client(insecure(registry.host)) as c:
        with pytest.raises(NotFound) as e:
            c.get_manifest(parse(registry.ref("test/busybox", "nope")), ACCEPT)
        assert f"{registry.host}/test/busybox:nope" in single_line(e.value)
        with pytest.raises(NotFound) as e:
            c.get_manifest(parse(registry.ref("test/nothing-here")), ACCEPT)
        assert "test/nothing-here" in single_line(e.value)
        missing = sha(b"never pushed")
        dest = tmp_path / "blob"
        with pytest.raises(NotFound) as e:
            c.fetch_blob(parse(registry.ref("test/busybox")), missing, dest)
        assert missing in single_line(e.value) and not dest.exists()


def test_manifest_size_limit(registry):
    cfg = insecure(registry.host)
    cfg.limits = Limits(max_manifest=100)
    with client(cfg) as c, pytest.raises(LimitExceeded, match="max_manifest"):
        c.get_manifest(parse(registry.ref("test/busybox")), ACCEPT)


def test_wrong_size_is_rejected_and_dest_removed(registry, test_images, tmp_path):
    layer = test_images.busybox.layers[0]
    ref = parse(registry.ref("test/busybox"))
    with client(insecure(registry.host)) as c:
        for size in (layer.size - 1, layer.size + 1):
            dest = tmp_path / f"blob-{size}"
            with pytest.raises(DigestMismatch) as e:
                c.fetch_blob(ref, layer.digest, dest, size=size)
            assert layer.digest in single_line(e.value) and not dest.exists()


def test_malformed_blob_digest_is_refused(registry, tmp_path):
    with client(insecure(registry.host)) as c:
        for digest in ("sha256:../../etc", "md5:abc", "sha256:" + "A" * 64):
            with pytest.raises(Exception, match="blob digest"):
                c.fetch_blob(parse(registry.ref("test/busybox")), digest, tmp_path / "x")


def test_concurrent_blob_downloads_share_one_client(registry, test_images, tmp_path):
    imgs = [test_images[k] for k in ("busybox", "layered", "layered_zstd", "layered_none")]
    repos = ["test/busybox", "test/layered", "test/layered-zstd", "test/layered-none"]
    jobs = [(repo, layer) for repo, img in zip(repos, imgs) for layer in img.layers] * 3
    with client(insecure(registry.host)) as c:
        def fetch(i_job):
            i, (repo, layer) = i_job
            dest = tmp_path / f"{i}.blob"
            c.fetch_blob(parse(registry.ref(repo)), layer.digest, dest, size=layer.size)
            return sha(dest.read_bytes()) == layer.digest
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(fetch, enumerate(jobs)))


# --- transport security ------------------------------------------------------------------

def test_plain_http_is_refused_unless_insecure(faulty_registry):
    ref = parse(faulty_registry.ref("test/busybox"))
    with client(Config()) as c, pytest.raises(RegistryTLSError) as e:
        c.get_manifest(ref, ACCEPT)
    msg = single_line(e.value)
    assert faulty_registry.host in msg and "insecure" in msg
    assert faulty_registry.count() == 0          # not a single plain-HTTP request was made
    # A registry entry for another host does not make this one insecure.
    with client(insecure("127.0.0.1:1")) as c, pytest.raises(RegistryTLSError):
        c.get_manifest(ref, ACCEPT)
    assert faulty_registry.count() == 0
    with client(insecure(faulty_registry.host)) as c:
        c.get_manifest(ref, ACCEPT)
    assert faulty_registry.count("GET", "/manifests/") == 1


def test_tls_verified_with_ca_file_and_refused_without(tls_registry, test_images):
    ref = parse(tls_registry.ref("test/busybox"))
    with client(Config()) as c, pytest.raises(RegistryTLSError) as e:
        c.get_manifest(ref, ACCEPT)
    msg = single_line(e.value)
    assert f"TLS verification failed for host {tls_registry.host}" in msg and "ca_file" in msg
    cfg = Config(registries=[RegistryConfig(prefix=tls_registry.host, ca_file=str(tls_registry.ca_file))])
    with client(cfg) as c:
        assert c.get_manifest(ref, ACCEPT).digest == test_images.busybox.digest
    # The CA is trusted for that entry only, not for other hosts' entries.
    other = Config(registries=[RegistryConfig(prefix="elsewhere.example", location=f"{tls_registry.host}/test"),
                               RegistryConfig(prefix="trusted.example", ca_file=str(tls_registry.ca_file))])
    with client(other) as c, pytest.raises(RegistryTLSError):
        c.get_manifest(parse("elsewhere.example/busybox"), ACCEPT)


def test_insecure_tls_registry_uses_unverified_https(tls_registry, test_images, tmp_path):
    ref = parse(tls_registry.ref("test/busybox"))
    with client(insecure(tls_registry.host)) as c:
        assert c.get_manifest(ref, ACCEPT).digest == test_images.busybox.digest
        layer = test_images.busybox.layers[0]
        c.fetch_blob(ref, layer.digest, tmp_path / "b", size=layer.size)


def test_connection_refused_is_retried_then_reported(tmp_path):
    port = free_port()
    ref = parse(f"127.0.0.1:{port}/test/busybox:latest")
    start = time.monotonic()
    with client(insecure(f"127.0.0.1:{port}")) as c, pytest.raises(RegistryUnreachable) as e:
        c.get_manifest(ref, ACCEPT)
    assert single_line(e.value) == f"cannot reach registry 127.0.0.1:{port}: connection refused"
    assert time.monotonic() - start < 5
    with client(Config()) as c, pytest.raises(RegistryUnreachable, match="connection refused"):
        c.fetch_blob(ref, sha(b"x"), tmp_path / "b")


def test_unknown_host():
    with client(Config()) as c, pytest.raises(UnknownHost) as e:
        c.get_manifest(parse("nonexistent.invalid/x/y:1"), ACCEPT)
    assert single_line(e.value) == "cannot reach registry nonexistent.invalid: unknown host"


# --- mirrors and rewriting ---------------------------------------------------------------

def test_location_rewrites_the_prefix(registry, test_images):
    cfg = Config(registries=[RegistryConfig(prefix="registry.example.org/pypod",
                                            location=f"{registry.host}/test", insecure=True)])
    with client(cfg) as c:
        f = c.get_manifest(parse("registry.example.org/pypod/layered:latest"), ACCEPT)
        assert f.digest == test_images.layered.digest


def test_mirror_is_used_first(faulty_registry, test_images, tmp_path):
    dead = free_port()   # the origin is unreachable: only the mirror can answer
    cfg = Config(registries=[RegistryConfig(
        prefix="origin.example", location=f"127.0.0.1:{dead}", insecure=True,
        mirrors=[Endpoint(f"{faulty_registry.host}/test", insecure=True)])])
    ref = parse("origin.example/busybox:latest")
    img = test_images.busybox
    with client(cfg) as c:
        assert c.get_manifest(ref, ACCEPT).digest == img.digest
        c.fetch_blob(ref, img.layers[0].digest, tmp_path / "layer", size=img.layers[0].size)
    assert faulty_registry.count("GET", "/v2/test/busybox/manifests/latest") == 1
    assert faulty_registry.count("GET", f"/v2/test/busybox/blobs/{img.layers[0].digest}") == 1


def test_mirror_without_the_image_falls_back_to_origin(registry, test_images, tmp_path):
    with Registry() as empty, FaultProxy.for_registry(empty) as mirror:
        cfg = Config(registries=[RegistryConfig(
            prefix="origin.example", location=f"{registry.host}/test", insecure=True,
            mirrors=[Endpoint(mirror.host, insecure=True)])])
        with client(cfg) as c:
            f = c.get_manifest(parse("origin.example/layered:latest"), ACCEPT)
            assert f.digest == test_images.layered.digest
            # the tag is unknown at the origin too: the origin's NotFound is what is reported
            with pytest.raises(NotFound) as e:
                c.get_manifest(parse("origin.example/layered:nope"), ACCEPT)
            assert registry.host in single_line(e.value)
        assert mirror.count("GET", "/v2/layered/manifests/latest") == 1   # 404, not retried
        assert mirror.count("GET", "/v2/layered/manifests/nope") == 1
        assert [r.status for r in mirror.requests if "/manifests/" in r.path] == [404, 404]


def test_failing_mirrors_fall_through_in_order(registry, test_images, tmp_path):
    dead = free_port()
    with FaultProxy.for_registry(registry) as broken:
        broken.fail_next(None, 503)
        cfg = Config(registries=[RegistryConfig(
            prefix="origin.example", location=f"{registry.host}/test", insecure=True,
            mirrors=[Endpoint(f"127.0.0.1:{dead}", insecure=True),
                     Endpoint(f"{broken.host}/test", insecure=True)])])
        img = test_images.busybox
        with client(cfg) as c:
            assert c.get_manifest(parse("origin.example/busybox"), ACCEPT).digest == img.digest
            assert broken.count("GET", "/manifests/") == FAST.attempts   # 5xx retried, then next
            layer = img.layers[0]
            c.fetch_blob(parse("origin.example/busybox"), layer.digest, tmp_path / "l", size=layer.size)
            assert sha((tmp_path / "l").read_bytes()) == layer.digest


def test_mirror_serving_corrupt_blob_falls_back(registry, test_images, tmp_path):
    layer = test_images.busybox.layers[0]
    with FaultProxy.for_registry(registry) as mirror:
        mirror.corrupt_blob(layer.digest)
        cfg = Config(registries=[RegistryConfig(
            prefix=registry.host, insecure=True, mirrors=[Endpoint(mirror.host, insecure=True)])])
        seen: list[int] = []
        with client(cfg) as c:
            c.fetch_blob(parse(registry.ref("test/busybox")), layer.digest, tmp_path / "l",
                         size=layer.size, progress=seen.append)
        assert sha((tmp_path / "l").read_bytes()) == layer.digest
        assert mirror.count("GET", "/blobs/") == 1
        assert sum(seen) == layer.size        # bytes re-downloaded from the origin not counted twice


# --- authentication ----------------------------------------------------------------------

def test_basic_auth(basic_auth_registry, test_images, tmp_path):
    reg = basic_auth_registry
    ref = parse(reg.ref("test/busybox"))
    cfg = insecure(reg.host)
    with client(cfg, creds_for(reg)) as c:
        assert c.get_manifest(ref, ACCEPT).digest == test_images.busybox.digest
        layer = test_images.busybox.layers[0]
        c.fetch_blob(ref, layer.digest, tmp_path / "l", size=layer.size)
    # the most specific key wins: a wrong host-wide password is overridden for this repo
    auths = {reg.host: ("pypod", "wrong"), f"{reg.host}/test/busybox": ("reader", "reader-secret")}
    with client(cfg, auths) as c:
        assert c.get_manifest(ref, ACCEPT).digest == test_images.busybox.digest
    with client(cfg) as c, pytest.raises(Unauthorized) as e:
        c.get_manifest(ref, ACCEPT)
    assert "requires credentials" in single_line(e.value)
    with client(cfg, {reg.host: ("pypod", "wrong")}) as c, pytest.raises(Unauthorized) as e:
        c.get_manifest(ref, ACCEPT)
    assert single_line(e.value).startswith("unauthorized:")


def test_basic_auth_is_not_retried(basic_auth_registry):
    with FaultProxy.for_registry(basic_auth_registry) as proxy:
        cfg = insecure(proxy.host)
        ref = parse(proxy.ref("test/busybox"))
        with client(cfg) as c, pytest.raises(Unauthorized):
            c.get_manifest(ref, ACCEPT)
        assert proxy.count("GET", "/manifests/") == 1
        proxy.clear()
        with client(cfg, {proxy.host: ("pypod", "wrong")}) as c, pytest.raises(Unauthorized):
            c.get_manifest(ref, ACCEPT)
        assert [r.status for r in proxy.requests if "/manifests/" in r.path] == [401, 401]


def test_bearer_token_with_credentials(token_registry, token_counts, test_images, tmp_path):
    reg = token_registry
    ref = parse(reg.ref("test/busybox"))
    img = test_images.busybox
    with client(insecure(reg.host), creds_for(reg)) as c:
        assert c.get_manifest(ref, ACCEPT).digest == img.digest
        for layer in img.layers:
            c.fetch_blob(ref, layer.digest, tmp_path / "l", size=layer.size)
        c.fetch_blob(ref, img.config_digest, tmp_path / "c")
    assert token_counts.issued == 1                      # cached per (host, scope)
    [req] = token_counts.requests
    assert (req.account, req.scopes) == ("pypod", ["repository:test/busybox:pull"])


def test_bearer_token_concurrent_first_use_fetches_one_token(token_registry, token_counts, test_images,
                                                             tmp_path):
    reg = token_registry
    ref = parse(reg.ref("test/busybox"))
    layer = test_images.busybox.layers[0]
    with client(insecure(reg.host), creds_for(reg)) as c:
        barrier = threading.Barrier(6)

        def fetch(i):
            barrier.wait()
            c.fetch_blob(ref, layer.digest, tmp_path / f"{i}", size=layer.size)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(fetch, range(6)))
    assert token_counts.issued == 1


def test_bearer_token_anonymous_and_wrong_password(token_registry, token_counts):
    reg = token_registry
    ref = parse(reg.ref("test/busybox"))
    with client(insecure(reg.host)) as c, pytest.raises(Unauthorized) as e:
        c.get_manifest(ref, ACCEPT)                      # an anonymous token without pull rights
    assert single_line(e.value).startswith("unauthorized:")
    assert token_counts.requests[-1].account is None
    token_counts.reset_counts()
    with client(insecure(reg.host), {reg.host: ("pypod", "wrong")}) as c, pytest.raises(Unauthorized) as e:
        c.get_manifest(ref, ACCEPT)
    assert "token server" in single_line(e.value) and "rejected the credentials" in str(e.value)
    assert token_counts.denied == 1 and len(token_counts.requests) == 1   # 401 not retried


def test_bearer_token_anonymous_pull(test_images):
    with Registry(auth="token", anonymous_pull=True) as reg:
        reg.push(test_images.busybox, "test/busybox")
        reg.token_server.reset_counts()
        with client(insecure(reg.host)) as c:
            f = c.get_manifest(parse(reg.ref("test/busybox")), ACCEPT)
        assert f.digest == test_images.busybox.digest
        assert [(r.account, r.status) for r in reg.token_server.requests] == [(None, 200)]


def test_bearer_token_renewed_after_expiry(token_registry, token_counts):
    server = token_registry.token_server
    ref = parse(token_registry.ref("test/busybox"))
    server.expires_in = 2
    try:
        with client(insecure(token_registry.host), creds_for(token_registry)) as c:
            c.get_manifest(ref, ACCEPT)
            c.get_manifest(ref, ACCEPT)
            assert token_counts.issued == 1
            time.sleep(2.1)
            c.get_manifest(ref, ACCEPT)
            assert token_counts.issued == 2
    finally:
        server.expires_in = 300


def test_token_server_failure_is_retried(token_registry, token_counts, test_images):
    token_counts.fail_next(2, 503)
    with client(insecure(token_registry.host), creds_for(token_registry)) as c:
        f = c.get_manifest(parse(token_registry.ref("test/busybox")), ACCEPT)
    assert f.digest == test_images.busybox.digest
    assert [r.status for r in token_counts.requests] == [503, 503, 200]


def test_credentials_are_looked_up_for_the_mirror_host(token_registry, basic_auth_registry, test_images):
    # origin: the token registry (no credentials configured for it); mirror: the basic-auth one
    cfg = Config(registries=[RegistryConfig(
        prefix=token_registry.host, insecure=True,
        mirrors=[Endpoint(basic_auth_registry.host, insecure=True)])])
    with client(cfg, creds_for(basic_auth_registry)) as c:
        f = c.get_manifest(parse(token_registry.ref("test/busybox")), ACCEPT)
    assert f.digest == test_images.busybox.digest


def test_origin_credentials_are_not_sent_to_a_mirror(token_registry, token_counts, basic_auth_registry,
                                                     test_images):
    # Both registries know user "pypod" with the same password, so a leak would succeed.
    with FaultProxy.for_registry(basic_auth_registry) as mirror:
        cfg = Config(registries=[RegistryConfig(prefix=token_registry.host, insecure=True,
                                                mirrors=[Endpoint(mirror.host, insecure=True)])])
        with client(cfg, creds_for(token_registry)) as c:
            f = c.get_manifest(parse(token_registry.ref("test/busybox")), ACCEPT)
        assert f.digest == test_images.busybox.digest
        assert [r.status for r in mirror.requests if "/manifests/" in r.path] == [401]
        assert token_counts.issued == 1      # served by the origin, with the origin's credentials


def test_token_and_basic_auth_over_verified_tls(test_images):
    for auth in ("token", "htpasswd"):
        with Registry(tls=True, auth=auth) as reg:
            reg.push(test_images.busybox, "test/busybox")
            if reg.token_server:
                reg.token_server.reset_counts()   # the token server is on TLS too, same CA
            cfg = Config(registries=[RegistryConfig(prefix=reg.host, ca_file=str(reg.ca_file))])
            with client(cfg, creds_for(reg)) as c:
                f = c.get_manifest(parse(reg.ref("test/busybox")), ACCEPT)
            assert f.digest == test_images.busybox.digest
            if reg.token_server:
                assert reg.token_server.issued == 1


# --- retries ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_retried_then_success(faulty_registry, test_images, status):
    faulty_registry.fail_next(2, status)
    with client(insecure(faulty_registry.host)) as c:
        f = c.get_manifest(parse(faulty_registry.ref("test/busybox")), ACCEPT)
    assert f.digest == test_images.busybox.digest
    assert [r.status for r in faulty_registry.requests] == [status, status, 200]


def test_429_honours_retry_after(faulty_registry, test_images):
    faulty_registry.fail_next(1, 429, retry_after="1")
    start = time.monotonic()
    with client(insecure(faulty_registry.host)) as c:
        f = c.get_manifest(parse(faulty_registry.ref("test/busybox")), ACCEPT)
    assert time.monotonic() - start >= 1.0
    assert f.digest == test_images.busybox.digest
    assert [r.status for r in faulty_registry.requests] == [429, 200]


def test_retry_after_is_capped(faulty_registry):
    faulty_registry.fail_next(1, 503, retry_after="3600")
    policy = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05, max_retry_after=0.2)
    start = time.monotonic()
    with client(insecure(faulty_registry.host), retry=policy) as c:
        c.get_manifest(parse(faulty_registry.ref("test/busybox")), ACCEPT)
    assert time.monotonic() - start < 5


def test_persistent_5xx_gives_up_after_the_configured_attempts(faulty_registry):
    faulty_registry.fail_next(None, 503)
    with client(insecure(faulty_registry.host)) as c, pytest.raises(TransientRegistryError) as e:
        c.get_manifest(parse(faulty_registry.ref("test/busybox")), ACCEPT)
    msg = single_line(e.value)
    assert "503" in msg and "injected by FaultProxy" in msg      # the registry's own message
    assert faulty_registry.count("GET", "/manifests/") == FAST.attempts


@pytest.mark.parametrize("status,error", [(404, NotFound), (401, Unauthorized), (403, Unauthorized),
                                          (400, RegistryError)])
def test_4xx_not_retried(faulty_registry, status, error):
    faulty_registry.fail_next(1, status)
    with client(insecure(faulty_registry.host)) as c, pytest.raises(error) as e:
        c.get_manifest(parse(faulty_registry.ref("test/busybox")), ACCEPT)
    assert not isinstance(e.value, TransientRegistryError)
    single_line(e.value)
    assert faulty_registry.count("GET", "/manifests/") == 1


def test_connection_reset_retried(faulty_registry, test_images):
    faulty_registry.reset_next(2)
    with client(insecure(faulty_registry.host)) as c:
        f = c.get_manifest(parse(faulty_registry.ref("test/busybox")), ACCEPT)
    assert f.digest == test_images.busybox.digest
    assert [r.fault for r in faulty_registry.requests if "/manifests/" in r.path] == ["reset", "reset", None]


def test_corrupt_blob_rejected_and_dest_removed(faulty_registry, test_images, tmp_path):
    layer = test_images.busybox.layers[0]
    faulty_registry.corrupt_blob(layer.digest)
    dest = tmp_path / "blob"
    with client(insecure(faulty_registry.host)) as c, pytest.raises(DigestMismatch) as e:
        c.fetch_blob(parse(faulty_registry.ref("test/busybox")), layer.digest, dest, size=layer.size)
    assert layer.digest in single_line(e.value)
    assert not dest.exists()


def test_truncated_blob_resumes_with_range(faulty_registry, test_images, tmp_path):
    layer = test_images.busybox.layers[0]
    faulty_registry.truncate_blob(layer.digest, n=1, keep=0.4)
    seen: list[int] = []
    dest = tmp_path / "blob"
    with client(insecure(faulty_registry.host)) as c:
        c.fetch_blob(parse(faulty_registry.ref("test/busybox")), layer.digest, dest, size=layer.size,
                     progress=seen.append)
    assert sha(dest.read_bytes()) == layer.digest
    assert sum(seen) == layer.size
    statuses = [r.status for r in faulty_registry.requests if "/blobs/" in r.path]
    assert statuses == [200, 206]


def test_reset_mid_blob_and_5xx_on_blob_retried(faulty_registry, test_images, tmp_path):
    layer = test_images.busybox.layers[0]
    faulty_registry.fail_next(1, 500, path_contains="/blobs/")
    faulty_registry.reset_next(1, path_contains="/blobs/")
    with client(insecure(faulty_registry.host)) as c:
        c.fetch_blob(parse(faulty_registry.ref("test/busybox")), layer.digest, tmp_path / "b",
                     size=layer.size)
    assert sha((tmp_path / "b").read_bytes()) == layer.digest
    assert faulty_registry.count("GET", "/blobs/") == 3


def test_read_timeout_retried(faulty_registry, test_images):
    faulty_registry.delay_next(1, 1.5, path_contains="/manifests/")
    with RegistryClient(insecure(faulty_registry.host), {}, timeout=0.5, retry=FAST) as c:
        f = c.get_manifest(parse(faulty_registry.ref("test/busybox")), ACCEPT)
    assert f.digest == test_images.busybox.digest
    time.sleep(1.5)   # the proxy records the delayed request once it has been served
    assert faulty_registry.count("GET", "/manifests/") == 2



# --- redirects to blob storage -------------------------------------------------------------

class _StorageServer:
    """Plain-HTTP file server over a registry's storage directory, the target of the registry's
    ``redirect`` storage middleware (as S3/GCS-backed registries redirect blob GETs)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.root: Path | None = None
        self.seen: list[tuple[str, str | None]] = []   # (path, Authorization header)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.seen.append((self.path, self.headers.get("Authorization")))
                path = (owner.root / self.path.lstrip("/")).resolve()
                if not path.is_relative_to(owner.root) or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _RedirectingRegistry(Registry):
    """A Registry whose blob GETs answer 307 to ``storage_url`` (distribution's redirect
    middleware)."""

    def __init__(self, storage: _StorageServer, **kw):
        super().__init__(**kw)
        self.storage = storage

    def _config(self) -> dict:
        cfg = super()._config()
        self.storage.root = (self.workdir / "storage").resolve()
        cfg["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": self.storage.url}}]}
        return cfg


@pytest.fixture
def storage_server():
    server = _StorageServer()
    yield server
    server.stop()


def test_blob_redirect_followed_without_credentials(storage_server, test_images, tmp_path):
    img = test_images.busybox
    layer = img.layers[0]
    with _RedirectingRegistry(storage_server, auth="htpasswd") as reg:
        reg.push(img, "test/busybox")
        storage_server.seen.clear()
        with client(insecure(reg.host), creds_for(reg)) as c:
            c.fetch_blob(parse(reg.ref("test/busybox")), layer.digest, tmp_path / "l", size=layer.size)
    assert sha((tmp_path / "l").read_bytes()) == layer.digest
    [(path, authorization)] = storage_server.seen
    assert path.endswith(f"/blobs/sha256/{layer.digest[7:9]}/{layer.digest[7:]}/data")
    assert authorization is None          # the registry's credentials stay with the registry


def test_redirect_from_verified_tls_to_plain_http_is_refused(storage_server, test_images, tmp_path):
    layer = test_images.busybox.layers[0]
    with _RedirectingRegistry(storage_server, tls=True) as reg:
        reg.push(test_images.busybox, "test/busybox")
        storage_server.seen.clear()
        cfg = Config(registries=[RegistryConfig(prefix=reg.host, ca_file=str(reg.ca_file))])
        dest = tmp_path / "l"
        with client(cfg) as c, pytest.raises(RegistryError) as e:
            c.fetch_blob(parse(reg.ref("test/busybox")), layer.digest, dest, size=layer.size)
    assert "plain HTTP" in single_line(e.value) and not dest.exists()
    assert storage_server.seen == []
