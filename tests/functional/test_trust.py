"""Image trust through the real CLI against a real registry (Debian's docker-registry): policy
rules per prefix, cosign-style signatures made by the tests' own signer (support.cosign),
``pypod trust`` and ``--insecure-options``.

Every refusal must be one clear line, exit 254, and leave nothing: no image listed, no blob
after ``image gc``, no pod."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support import cosign
from support.cli import Pypod
from support.leaks import Snapshot, leaked
from support.registry import FaultProxy, Registry

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def keys() -> dict[str, cosign.Key]:
    return {"trusted": cosign.Key(), "other": cosign.Key()}


def insecure(host: str) -> str:
    return f'[[registry]]\nprefix = "{host}"\ninsecure = true\n'


@pytest.fixture
def pypod(tmp_path: Path, registry: Registry) -> Pypod:
    p = Pypod(tmp_path / "data")
    p.configure(insecure(registry.host))
    return p


def trust(p: Pypod, key: cosign.Key, prefix: str, tmp_path: Path) -> None:
    pem = key.write_public(tmp_path / f"{key.key_id[7:19]}.pem")
    r = p("trust", "add", "--prefix", prefix, str(pem))
    assert key.key_id in r.out


def push(registry: Registry, test_images, repo: str, key: str = "busybox") -> str:
    """Push a test image to ``repo``:latest; returns its top digest."""
    return registry.push(test_images[key], repo, "latest")


def blobs(p: Pypod) -> list[str]:
    d = p.data_dir / "images" / "blobs" / "sha256"
    return sorted(os.listdir(d)) if d.is_dir() else []


def assert_refused(p: Pypod, ref: str, *reasons: str) -> str:
    """``fetch`` and ``run`` of ``ref`` are refused with one line naming ``reasons``, and
    nothing of the image (record, blobs) or any pod is left."""
    r = p("fetch", ref, check=False)
    assert r.rc == 254, r
    assert r.err.count("\n") == 1 and r.err.startswith("pypod: "), r.err
    for reason in reasons:
        assert reason in r.err, r.err
    assert "refused by the trust policy" in r.err
    run = p("run", "--net=none", ref, "--exec", "/bin/echo", "--", "must-not-run", check=False)
    assert run.rc == 254 and "must-not-run" not in run.out, run
    assert run.err.strip() == r.err.strip()
    assert p("image", "list", "--format", "json").json() == []
    assert p("list", "--format", "json").json() == []
    p("image", "gc", "--grace-period", "0s")
    assert blobs(p) == []
    return r.err


# -- accepted ---------------------------------------------------------------------------------

def test_signed_by_the_trusted_key_pulls_and_runs(pods: Pypod, registry: Registry, test_images, keys,
                                                  tmp_path: Path) -> None:
    pods.configure(insecure(registry.host))
    digest = push(registry, test_images, "trust/good")
    cosign.sign_image(registry.client(), keys["trusted"], registry.host, "trust/good", digest)
    trust(pods, keys["trusted"], f"{registry.host}/trust/good", tmp_path)
    ref = f"{registry.host}/trust/good:latest"
    r = pods("run", "--net=none", ref, "--exec", "/bin/echo", "--", "signed-and-running")
    assert r.out == "signed-and-running\n"
    (img,) = [i for i in pods("image", "list", "--format", "json").json() if ref in i["names"]]
    assert img["repo_digests"] == [f"{registry.host}/trust/good@{digest}"]


def test_any_signature_by_a_trusted_key_will_do_and_an_index_is_signed_by_its_digest(
        pypod: Pypod, registry: Registry, test_images, keys, tmp_path: Path) -> None:
    digest = push(registry, test_images, "trust/multi", "multiarch")
    assert digest == test_images.multiarch.index_digest
    host = registry.host
    bad = cosign.payload(f"{host}/trust/multi", digest)
    good = cosign.payload(f"{host}/trust/multi", digest, optional={"creator": "ci"})
    cosign.push_signatures(registry.client(), "trust/multi", digest, [
        cosign.Signature(bad, keys["other"].sign(bad)),
        cosign.Signature(good, None),                               # no annotation
        cosign.Signature(good, keys["trusted"].sign(good)),
    ])
    trust(pypod, keys["trusted"], f"{host}/trust", tmp_path)
    got = pypod("fetch", "--platform", "linux/arm64", f"{host}/trust/multi").out.strip()
    assert got == test_images.multiarch.platforms["linux/arm64"].config_digest


def test_insecure_options_image_pulls_an_unsigned_image_for_that_command_only(
        pypod: Pypod, registry: Registry, test_images, keys, tmp_path: Path) -> None:
    push(registry, test_images, "trust/unsigned-ok")
    trust(pypod, keys["trusted"], f"{registry.host}/trust/unsigned-ok", tmp_path)
    ref = f"{registry.host}/trust/unsigned-ok:latest"
    assert pypod("--insecure-options=image", "fetch", ref).out.strip() == test_images.busybox.config_digest
    pypod("image", "rm", ref)
    assert pypod("fetch", "--insecure-options", "image", ref).rc == 0  # also after the command
    pypod("image", "rm", ref)
    assert_refused(pypod, ref, "not signed")
    r = pypod("--insecure-options=image,bogus", "fetch", ref, check=False)
    assert r.rc == 2 and "bogus" in r.err


# -- refused ----------------------------------------------------------------------------------

def test_unsigned_image_is_refused(pypod: Pypod, registry: Registry, test_images, keys, tmp_path: Path) -> None:
    digest = push(registry, test_images, "trust/unsigned")
    trust(pypod, keys["trusted"], f"{registry.host}/trust/unsigned", tmp_path)
    err = assert_refused(pypod, f"{registry.host}/trust/unsigned", "it is not signed",
                         cosign.signature_tag(digest), "--insecure-options=image")
    assert digest in err


def test_signed_by_another_key_is_refused(pypod: Pypod, registry: Registry, test_images, keys,
                                          tmp_path: Path) -> None:
    digest = push(registry, test_images, "trust/other-key")
    cosign.sign_image(registry.client(), keys["other"], registry.host, "trust/other-key", digest)
    trust(pypod, keys["trusted"], f"{registry.host}/trust/other-key", tmp_path)
    assert_refused(pypod, f"{registry.host}/trust/other-key", "not signed by a key", keys["trusted"].key_id[:19])


def test_tampered_payload_is_refused(pypod: Pypod, registry: Registry, test_images, keys, tmp_path: Path) -> None:
    """The payload was changed after signing (its descriptor names the new bytes)."""
    digest = push(registry, test_images, "trust/tampered")
    signed = cosign.payload(f"{registry.host}/trust/tampered", digest)
    changed = cosign.payload(f"{registry.host}/trust/tampered", digest, optional={"approved": True})
    cosign.push_signatures(registry.client(), "trust/tampered", digest,
                           [cosign.Signature(changed, keys["trusted"].sign(signed))])
    trust(pypod, keys["trusted"], f"{registry.host}/trust/tampered", tmp_path)
    assert_refused(pypod, f"{registry.host}/trust/tampered", "not signed by a key")


def test_payload_not_matching_its_digest_is_refused(faulty_registry: FaultProxy, registry: Registry,
                                                    test_images, keys, tmp_path: Path) -> None:
    """A registry (here a proxy) serving other bytes than the descriptor's digest."""
    p = Pypod(tmp_path / "data")
    p.configure(insecure(faulty_registry.host))
    digest = push(registry, test_images, "trust/corrupted")
    sig = cosign.sign_image(registry.client(), keys["trusted"], faulty_registry.host, "trust/corrupted", digest)
    trust(p, keys["trusted"], f"{faulty_registry.host}/trust/corrupted", tmp_path)
    faulty_registry.corrupt_blob(sig.digest)
    assert_refused(p, f"{faulty_registry.host}/trust/corrupted", "does not match its digest")
    assert faulty_registry.count("GET", f"/blobs/{sig.digest}") >= 1


def test_signature_for_another_digest_is_refused(pypod: Pypod, registry: Registry, test_images, keys,
                                                 tmp_path: Path) -> None:
    """A valid signature of another image, copied to this image's signature tag."""
    digest = push(registry, test_images, "trust/replayed")
    other = test_images.layered.manifest_digest
    cosign.sign_image(registry.client(), keys["trusted"], registry.host, "trust/replayed", digest,
                      digest_claim=other)
    trust(pypod, keys["trusted"], f"{registry.host}/trust/replayed", tmp_path)
    assert_refused(pypod, f"{registry.host}/trust/replayed", f"the signature is for image {other}, not {digest}")


def test_signature_for_another_repository_is_refused(pypod: Pypod, registry: Registry, test_images, keys,
                                                     tmp_path: Path) -> None:
    digest = push(registry, test_images, "trust/copied")
    cosign.sign_image(registry.client(), keys["trusted"], registry.host, "trust/copied", digest,
                      reference=f"{registry.host}/trust/original:latest")
    trust(pypod, keys["trusted"], f"{registry.host}/trust", tmp_path)
    assert_refused(pypod, f"{registry.host}/trust/copied",
                   f"the signature is for repository {registry.host}/trust/original, not {registry.host}/trust/copied")


def test_reject_rule_refuses_even_with_insecure_options(pypod: Pypod, registry: Registry, test_images,
                                                       keys) -> None:
    push(registry, test_images, "trust/rejected")
    (pypod.config_dir / "policy.json").write_text(json.dumps(
        {"default": {"type": "insecureAcceptAnything"},
         "scopes": {f"{registry.host}/trust/rejected": {"type": "reject"}}}))
    ref = f"{registry.host}/trust/rejected"
    r = pypod("--insecure-options=all", "fetch", ref, check=False)
    assert r.rc == 254 and "rejects it" in r.err
    assert not (pypod.data_dir / "images").exists()  # refused before anything was fetched or made
    assert_refused(pypod, ref, f"scope {registry.host}/trust/rejected rejects it")
    assert pypod("fetch", f"{registry.host}/test/busybox").rc == 0  # the default still accepts


def test_prefix_scoping(pypod: Pypod, registry: Registry, test_images, keys, tmp_path: Path) -> None:
    """A key trusted for trust/a vouches for trust/a and below, not for trust/b; trust/ab is
    not under trust/a (whole path components) and falls to the default rule (accept)."""
    host = registry.host
    for repo in ("trust/a", "trust/a/sub", "trust/b", "trust/ab"):
        digest = push(registry, test_images, repo)
        if repo != "trust/ab":
            cosign.sign_image(registry.client(), keys["trusted"], host, repo, digest)
    trust(pypod, keys["trusted"], f"{host}/trust/a", tmp_path)
    trust(pypod, keys["other"], f"{host}/trust/b", tmp_path)
    assert_refused(pypod, f"{host}/trust/b", "not signed by a key", f"scope {host}/trust/b",
                   keys["other"].key_id[:19])
    assert pypod("fetch", f"{host}/trust/a").rc == 0
    assert pypod("fetch", f"{host}/trust/a/sub").rc == 0
    assert pypod("fetch", f"{host}/trust/ab").rc == 0
    listed = pypod("trust", "list", "--format", "json").json()
    assert {s["prefix"]: s["keys"] for s in listed["scopes"]} == {
        f"{host}/trust/a": [keys["trusted"].key_id], f"{host}/trust/b": [keys["other"].key_id]}


def test_removing_a_key_fails_closed_and_removing_the_rule_reopens(pypod: Pypod, registry: Registry, test_images,
                                                                   keys, tmp_path: Path) -> None:
    host = registry.host
    digest = push(registry, test_images, "trust/revoked")
    cosign.sign_image(registry.client(), keys["trusted"], host, "trust/revoked", digest)
    trust(pypod, keys["trusted"], f"{host}/trust/revoked", tmp_path)
    r = pypod("trust", "rm", keys["trusted"].key_id[7:19])
    assert "no trusted key left" in r.out
    assert not (pypod.config_dir / "trust" / f"{keys['trusted'].key_id[7:]}.pem").exists()
    assert_refused(pypod, f"{host}/trust/revoked", "lists no trusted keys")
    pypod("trust", "rm", "--prefix", f"{host}/trust/revoked")
    assert pypod("fetch", f"{host}/trust/revoked").rc == 0


def test_local_sources_are_not_verified_unless_rejected(pypod: Pypod, test_images, keys, tmp_path: Path) -> None:
    trust(pypod, keys["trusted"], "localhost", tmp_path)  # signatures required for localhost/...
    src = f"oci:{test_images.busybox.oci_ref}"
    assert pypod("fetch", src, "--name", "mine").rc == 0  # local: not verifiable, not verified
    (pypod.config_dir / "policy.json").write_text(json.dumps({"default": {"type": "reject"}}))
    r = pypod("fetch", src, "--name", "other", check=False)
    assert r.rc == 254 and "localhost/other is refused by the trust policy" in r.err and r.err.count("\n") == 1
    assert [i["names"] for i in pypod("image", "list", "--format", "json").json()] == [["localhost/mine:latest"]]


def test_insecure_options_tls(tmp_path: Path, tls_registry: Registry, test_images) -> None:
    p = Pypod(tmp_path / "data")
    ref = tls_registry.ref("test/busybox")
    r = p("fetch", ref, check=False)
    assert r.rc == 254 and "TLS verification failed" in r.err
    assert p("--insecure-options=tls", "fetch", ref).out.strip() == test_images.busybox.config_digest


def test_trust_needs_valid_keys_and_prefixes(pypod: Pypod, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = cosign.Key(ec.SECP384R1()).write_public(tmp_path / "p384.pem")
    r = pypod("trust", "add", "--prefix", "quay.io/team", str(p384), check=False)
    assert r.rc == 2 and "P-256" in r.err
    good = cosign.Key().write_public(tmp_path / "good.pem")
    for bad in ("team/app", "quay.io/team:v1", "quay.io/Team"):
        r = pypod("trust", "add", "--prefix", bad, str(good), check=False)
        assert r.rc == 2 and "scope" in r.err, (bad, r)
    r = pypod("trust", "add", str(good), check=False)
    assert r.rc == 2 and "--prefix" in r.err
    (pypod.config_dir / "policy.json").write_text('{"default": {"type": "acept"}}')
    r = pypod("fetch", "quay.io/x", check=False)
    assert r.rc == 2 and "policy.json" in r.err and "acept" in r.err


def test_openssl_agrees_on_key_ids(pypod: Pypod, tmp_path: Path) -> None:
    """The key ID is the SHA-256 of the DER SubjectPublicKeyInfo, as openssl writes it."""
    key = cosign.Key()
    pem = key.write_public(tmp_path / "k.pem")
    try:
        der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pem), "-outform", "DER"],
                             capture_output=True, check=True).stdout
    except FileNotFoundError:
        pytest.skip("openssl is not installed")
    out = pypod("trust", "add", "--prefix", "quay.io", str(pem)).out
    assert cosign.sha256(der) in out
