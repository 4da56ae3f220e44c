"""The local registry fixtures: push and fetch over HTTP(S) against the real
docker-registry, with and without credentials, and through the fault proxy.

skopeo (containers/image, an independent client) cross-checks what the
fixtures serve. Nothing here uses pypod.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import ssl
import subprocess
import urllib.parse

import pytest

from support.registry import REGISTRY_REPOS
from support import images as im
from support.registry import (Credentials, FaultProxy, Registry, RegistryClient, RegistryError,
                              TokenServer, parse_challenge, process_gone)

SKOPEO = shutil.which("skopeo")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed (make system-deps)")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo_inspect(ref: str, *args: str, raw: bool = False, arch: str | None = None) -> dict:
    """``skopeo inspect`` of ``docker://ref``; ``args`` are inspect options."""
    cmd = [SKOPEO] + (["--override-arch", arch] if arch else [])
    cmd += ["inspect", "--retry-times", "0", *args]
    if raw:
        cmd.append("--raw")
    out = subprocess.run(cmd + [f"docker://{ref}"], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return json.loads(out)


# --- plain, anonymous -------------------------------------------------------

@pytest.mark.parametrize("repo", sorted(REGISTRY_REPOS))
def test_plain_registry_serves_pushed_manifests(registry, test_images, repo):
    img = test_images[REGISTRY_REPOS[repo]]
    resp = registry.client().get_manifest(repo, "latest")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == img.digest
    assert resp.headers["Content-Type"] == img.media_type
    assert resp.body == img.read_blob(img.digest)
    assert registry.pushed[f"{repo}:latest"] == img.digest


def test_plain_registry_serves_blobs_and_platform_manifests(registry, test_images):
    client = registry.client()
    img = test_images.layered_zstd
    for layer in img.layers:
        assert sha(client.get_blob("test/layered-zstd", layer.digest)) == layer.digest
    assert sha(client.get_blob("test/layered-zstd", img.config_digest)) == img.config_digest
    multi = test_images.multiarch
    for plat, sub in multi.platforms.items():
        resp = client.get_manifest("test/multiarch", sub.manifest_digest)
        assert sha(resp.body) == sub.manifest_digest, plat
    assert client.tags("test/busybox") == ["latest"]


def test_plain_registry_push_by_digest_only(registry, test_images):
    client = registry.client()
    digest = client.push_image(test_images.configured, "test/by-digest", tag=None)
    assert digest == test_images.configured.digest
    assert sha(client.get_manifest("test/by-digest", digest).body) == digest
    assert client.head_manifest("test/by-digest", "latest").status == 404


def test_ref_helpers(registry):
    assert registry.host.startswith("127.0.0.1:") and registry.url == f"http://{registry.host}"
    assert registry.ref("test/busybox") == f"{registry.host}/test/busybox:latest"
    assert registry.ref("test/busybox", "sha256:ab") == f"{registry.host}/test/busybox@sha256:ab"
    assert registry.ca_file is None and registry.credentials is None
    assert registry.is_running()


@needs_skopeo
def test_skopeo_reads_plain_registry(registry, test_images):
    info = skopeo_inspect(registry.ref("test/layered"), "--tls-verify=false")
    assert info["Digest"] == test_images.layered.digest
    assert info["Layers"] == test_images.layered.layer_digests
    info = skopeo_inspect(registry.ref("test/busybox-docker"), "--tls-verify=false")
    assert info["Digest"] == test_images.busybox_docker.digest
    raw = skopeo_inspect(registry.ref("test/multiarch-docker"), "--tls-verify=false", raw=True)
    assert raw["mediaType"] == im.MT_DOCKER_LIST
    info = skopeo_inspect(registry.ref("test/multiarch"), "--tls-verify=false", arch="arm64")
    assert info["Architecture"] == "arm64" and info["Labels"] == {"org.example.arch": "arm64"}


# --- TLS --------------------------------------------------------------------

def test_tls_registry_needs_its_ca(tls_registry, test_images):
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert "BEGIN CERTIFICATE" in tls_registry.ca_file.read_text()
    resp = tls_registry.client().get_manifest("test/busybox", "latest")
    assert resp.headers["Docker-Content-Digest"] == test_images.busybox.digest
    # The system trust store does not know the throwaway CA.
    untrusted = RegistryClient(tls_registry.url)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusted.get_manifest("test/busybox", "latest")
    # Plain HTTP to the TLS port is refused by the Go server.
    plain = RegistryClient(f"http://{tls_registry.host}")
    assert plain.raw("GET", "/v2/").status == 400
    # localhost is in the certificate too.
    ctx = ssl.create_default_context(cafile=str(tls_registry.ca_file))
    conn = http.client.HTTPSConnection("localhost", tls_registry.port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/v2/")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


@needs_skopeo
def test_skopeo_trusts_tls_registry_with_ca(tls_registry, test_images, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(tls_registry.ca_file, certs / "ca.crt")
    info = skopeo_inspect(tls_registry.ref("test/busybox"), "--cert-dir", str(certs))
    assert info["Digest"] == test_images.busybox.digest
    with pytest.raises(subprocess.CalledProcessError) as err:
        skopeo_inspect(tls_registry.ref("test/busybox"))
    assert "certificate" in err.value.stderr


# --- basic auth (htpasswd) --------------------------------------------------

def test_basic_auth_registry(basic_auth_registry, test_images):
    reg = basic_auth_registry
    anon = reg.client(None)
    ping = anon.ping()
    assert ping.status == 401
    kind, params = parse_challenge(ping.headers["WWW-Authenticate"])
    assert kind == "basic" and params["realm"] == "pypod-test-registry"
    with pytest.raises(RegistryError) as err:
        anon.get_manifest("test/busybox", "latest")
    assert err.value.response.status == 401
    wrong = reg.client(Credentials("pypod", "wrong"))
    with pytest.raises(RegistryError) as err:
        wrong.get_manifest("test/busybox", "latest")
    assert err.value.response.status == 401
    good = reg.client()
    resp = good.get_manifest("test/busybox", "latest")
    assert resp.headers["Docker-Content-Digest"] == test_images.busybox.digest
    assert good.push_image(test_images.layered, "test/layered-basic") == test_images.layered.digest
    reader = reg.client(reg.credentials_for("reader"))
    assert reader.get_manifest("test/layered-basic", "latest").status == 200


@needs_skopeo
def test_skopeo_basic_auth(basic_auth_registry, test_images):
    creds = basic_auth_registry.credentials
    info = skopeo_inspect(basic_auth_registry.ref("test/busybox"), "--tls-verify=false",
                          "--creds", f"{creds.username}:{creds.password}")
    assert info["Digest"] == test_images.busybox.digest
    with pytest.raises(subprocess.CalledProcessError):
        skopeo_inspect(basic_auth_registry.ref("test/busybox"), "--tls-verify=false",
                       "--no-creds")


def test_basic_auth_over_tls(test_images):
    with Registry(tls=True, auth="htpasswd") as reg:
        assert reg.url.startswith("https://")
        assert reg.push(test_images.busybox, "test/busybox") == test_images.busybox.digest
        with pytest.raises(RegistryError):
            reg.client(None).get_manifest("test/busybox", "latest")
        assert reg.client().get_manifest("test/busybox", "latest").status == 200


# --- bearer tokens ----------------------------------------------------------

def test_token_registry_challenge(token_registry):
    ping = token_registry.client(None).ping()
    assert ping.status == 401
    kind, params = parse_challenge(ping.headers["WWW-Authenticate"])
    assert kind == "bearer"
    assert params["realm"] == token_registry.token_server.realm
    assert params["service"] == token_registry.token_server.service


def test_token_flow_with_credentials(token_registry, token_counts, test_images):
    client = token_registry.client()
    resp = client.get_manifest("test/busybox", "latest")
    assert resp.headers["Docker-Content-Digest"] == test_images.busybox.digest
    assert client.token_fetches == 1
    [req] = token_counts.requests
    assert (req.method, req.account, req.status) == ("GET", "pypod", 200)
    assert req.scopes == ["repository:test/busybox:pull"]
    assert req.granted == [{"type": "repository", "name": "test/busybox", "actions": ["pull"]}]
    # The token is reused for the same scope.
    client.get_blob("test/busybox", test_images.busybox.layers[0].digest)
    assert client.token_fetches == 1 and token_counts.issued == 1


def test_token_flow_anonymous_and_wrong_password(token_registry, token_counts):
    with pytest.raises(RegistryError) as err:
        token_registry.client(None).get_manifest("test/busybox", "latest")
    assert err.value.response.status == 401   # token issued, but without access
    assert token_counts.requests[-1].account is None
    assert token_counts.requests[-1].granted == []
    with pytest.raises(RegistryError) as err:
        token_registry.client(Credentials("pypod", "wrong")).get_manifest("test/busybox", "latest")
    assert "token request failed: 401" in str(err.value)
    assert token_counts.denied == 1


def test_token_reader_cannot_push(token_registry, token_counts, test_images):
    reader = token_registry.client(token_registry.credentials_for("reader"))
    assert reader.get_manifest("test/busybox", "latest").status == 200
    with pytest.raises(RegistryError) as err:
        reader.push_image(test_images.configured, "test/reader-push")
    assert err.value.response.status == 401
    push_reqs = [r for r in token_counts.requests if "push" in r.scopes[0]]
    assert push_reqs and all(r.granted == [{"type": "repository", "name": "test/reader-push",
                                            "actions": ["pull"]}] for r in push_reqs)


def _get_with_token(registry: Registry, token: str) -> int:
    return registry.client(None).raw(
        "GET", "/v2/test/busybox/manifests/latest",
        headers={"Authorization": f"Bearer {token}", "Accept": im.MT_OCI_MANIFEST}).status


def test_registry_rejects_foreign_and_misaddressed_tokens(token_registry, tmp_path):
    server = token_registry.token_server
    access = [{"type": "repository", "name": "test/busybox", "actions": ["pull"]}]
    assert _get_with_token(token_registry, server.make_token("pypod", access)) == 200
    stranger = TokenServer(tmp_path / "other", server.users)
    assert _get_with_token(token_registry, stranger.make_token("pypod", access)) == 401
    assert _get_with_token(token_registry, server.make_token("pypod", access,
                                                             audience="elsewhere")) == 401
    assert _get_with_token(token_registry, server.make_token("pypod", access,
                                                             issuer="someone")) == 401
    assert _get_with_token(token_registry, server.make_token("pypod", access,
                                                             expires_in=-3600)) == 401
    assert _get_with_token(token_registry, server.make_token("pypod", [])) == 401


def test_token_x5c_header_and_anonymous_pull(test_images):
    with Registry(auth="token", token_header="x5c", anonymous_pull=True) as reg:
        token = reg.token_server.make_token("pypod", [])
        header = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[0] + "=="))
        assert "x5c" in header and "kid" not in header
        reg.push(test_images.busybox, "test/busybox")
        anon = reg.client(None)
        assert anon.get_manifest("test/busybox", "latest").status == 200
        assert reg.token_server.requests[-1].account is None
        with pytest.raises(RegistryError):
            anon.push_image(test_images.configured, "test/anon-push")


def test_token_server_oauth_post_and_injected_failure(token_registry, token_counts):
    server = token_registry.token_server
    url = urllib.parse.urlsplit(server.realm)
    body = urllib.parse.urlencode({"grant_type": "password", "username": "pypod",
                                   "password": token_registry.credentials.password,
                                   "service": server.service, "client_id": "pypod-tests",
                                   "scope": "repository:test/busybox:pull"})
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST", "/token", body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert _get_with_token(token_registry, data["access_token"]) == 200
    server.fail_next(1, 503)
    with pytest.raises(RegistryError) as err:
        token_registry.client().get_manifest("test/busybox", "latest")
    assert "token request failed: 503" in str(err.value)
    assert [r.status for r in token_counts.requests] == [200, 503]


@needs_skopeo
def test_skopeo_token_auth(token_registry, token_counts, test_images):
    creds = token_registry.credentials
    info = skopeo_inspect(token_registry.ref("test/busybox"), "--tls-verify=false",
                          "--creds", f"{creds.username}:{creds.password}")
    assert info["Digest"] == test_images.busybox.digest
    assert token_counts.issued >= 1
    assert all(r.account == "pypod" for r in token_counts.requests)


# --- fault proxy --------------------------------------------------------------

def test_fault_proxy_passes_through_and_counts(faulty_registry, test_images):
    client = RegistryClient(faulty_registry.url)
    resp = client.get_manifest("test/busybox", "latest")
    assert resp.headers["Docker-Content-Digest"] == test_images.busybox.digest
    assert faulty_registry.count("GET", "/manifests/") == 1
    assert faulty_registry.requests[0].status == 200


def test_fault_proxy_status_codes(faulty_registry):
    client = RegistryClient(faulty_registry.url)
    faulty_registry.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(RegistryError) as err:
            client.get_manifest("test/busybox", "latest")
        assert err.value.response.status == 503
    assert client.get_manifest("test/busybox", "latest").status == 200
    faulty_registry.fail_next(1, 429, retry_after="2")
    with pytest.raises(RegistryError) as err:
        client.get_manifest("test/busybox", "latest")
    assert err.value.response.status == 429 and err.value.response.headers["Retry-After"] == "2"
    faulty_registry.fail_next(1, 500, path_contains="/blobs/")
    assert client.get_manifest("test/busybox", "latest").status == 200   # not a blob
    assert [r.status for r in faulty_registry.requests] == [503, 503, 200, 429, 200]


def test_fault_proxy_reset(faulty_registry):
    client = RegistryClient(faulty_registry.url)
    faulty_registry.reset_next(1)
    with pytest.raises(ConnectionResetError):
        client.get_manifest("test/busybox", "latest")
    assert client.get_manifest("test/busybox", "latest").status == 200
    assert [r.fault for r in faulty_registry.requests] == ["reset", None]


def test_fault_proxy_corrupts_and_truncates_blobs(faulty_registry, test_images):
    client = RegistryClient(faulty_registry.url)
    layer = test_images.busybox.layers[0]
    faulty_registry.corrupt_blob(layer.digest, n=1)
    bad = client.get_blob("test/busybox", layer.digest)
    assert len(bad) == layer.size and sha(bad) != layer.digest
    assert sha(client.get_blob("test/busybox", layer.digest)) == layer.digest
    faulty_registry.truncate_blob(layer.digest, n=1)
    with pytest.raises(http.client.IncompleteRead):
        client.get_blob("test/busybox", layer.digest)
    assert sha(client.get_blob("test/busybox", layer.digest)) == layer.digest


def test_push_through_fault_proxy(faulty_registry, test_images):
    client = RegistryClient(faulty_registry.url)
    digest = client.push_image(test_images.layered, "test/via-proxy")
    assert digest == test_images.layered.digest
    # Upload locations point back at the proxy, so every step went through it.
    assert faulty_registry.count("POST", "/blobs/uploads/") == 4   # 3 layers + config
    assert faulty_registry.count("PUT", "/blobs/uploads/") == 4
    assert faulty_registry.count("PUT", "/manifests/latest") == 1


def test_fault_proxy_in_front_of_token_registry(token_registry, test_images):
    with FaultProxy.for_registry(token_registry) as proxy:
        client = RegistryClient(proxy.url, credentials=token_registry.credentials)
        proxy.fail_next(1, 503, path_contains="/manifests/")
        with pytest.raises(RegistryError):
            client.get_manifest("test/busybox", "latest")
        resp = client.get_manifest("test/busybox", "latest")
        assert resp.headers["Docker-Content-Digest"] == test_images.busybox.digest
        assert [r.status for r in proxy.requests] == [503, 401, 200]


# --- lifecycle ----------------------------------------------------------------

def test_registry_stop_leaves_nothing(test_images):
    reg = Registry(auth="token", tls=True).start()
    pid, workdir, token_url = reg.pid, reg.workdir, reg.token_server.url
    assert not process_gone(pid) and workdir.exists()
    reg.stop()
    assert process_gone(pid)
    assert not workdir.exists()
    assert reg.token_server is None and not reg.is_running()
    with pytest.raises(OSError):
        url = urllib.parse.urlsplit(token_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=2)
        conn.request("GET", "/token")
        conn.getresponse()
    reg.stop()   # idempotent


def test_two_registries_side_by_side(test_images):
    with Registry() as a, Registry() as b:
        assert a.port != b.port
        a.push(test_images.busybox, "test/only-in-a")
        assert a.client().head_manifest("test/only-in-a", "latest").status == 200
        assert b.client().head_manifest("test/only-in-a", "latest").status == 404
