"""Trust policy matching, key IDs, and the checks on signatures and signed payloads (named apart
from tests/functional/test_trust.py: test basenames are unique in this tree)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from pypod.config import parse_insecure_options
from pypod.errors import NotFound, UsageError
from pypod.images import trust
from support import cosign

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REPO = "registry.example.com/team/app"


def policy(doc: dict) -> trust.Policy:
    return trust.Policy.parse(json.dumps(doc).encode())


# -- policy -----------------------------------------------------------------------------------

def test_no_policy_file_accepts_everything(tmp_path: Path) -> None:
    p = trust.Policy.load(tmp_path)
    assert p.rule_for(REPO) == (None, trust.Rule("accept"))
    assert p.scopes == {}


def test_longest_prefix_wins_on_whole_components() -> None:
    k1, k2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    p = policy({"default": {"type": "reject"}, "scopes": {
        "registry.example.com": {"type": "accept"},
        "registry.example.com/team": {"type": "signed", "keys": [k1]},
        "registry.example.com/team/legacy": {"type": "signed", "keys": [k2]},
        "registry.example.com/team/legacy/frozen": {"type": "reject"},
    }})
    assert p.rule_for("registry.example.com/other") == ("registry.example.com", trust.Rule("accept"))
    assert p.rule_for(REPO) == ("registry.example.com/team", trust.Rule("signed", [k1]))
    assert p.rule_for("registry.example.com/team") == ("registry.example.com/team", trust.Rule("signed", [k1]))
    assert p.rule_for("registry.example.com/team/legacy/x")[1].keys == [k2]
    assert p.rule_for("registry.example.com/team/legacy/frozen")[1].type == "reject"
    assert p.rule_for("registry.example.com/teamwork")[0] == "registry.example.com"  # not under .../team
    assert p.rule_for("registry.example.com:5000/team/app") == (None, trust.Rule("reject"))
    assert p.rule_for("quay.io/team/app") == (None, trust.Rule("reject"))


def test_aliases_and_round_trip(tmp_path: Path) -> None:
    k = "sha256:" + "e" * 64
    p = policy({"default": {"type": "insecureAcceptAnything"},
                "scopes": {"index.docker.io/library/busybox/": {"type": "signed", "keys": ["e" * 64, "/k.pem"]}}})
    assert p.default == trust.Rule("accept")
    assert p.scopes == {"docker.io/library/busybox": trust.Rule("signed", [k, "/k.pem"])}
    p.path = tmp_path / "policy.json"
    p.save()
    again = trust.Policy.load(tmp_path)
    assert again.to_json() == p.to_json() and again.key_refs() == {k, "/k.pem"}


@pytest.mark.parametrize("doc,needle", [
    ({"default": {"type": "acept"}}, "acept"),
    ({"defaults": {"type": "accept"}}, "defaults"),
    ({"default": {"type": "accept", "keys": ["sha256:" + "1" * 64]}}, "only a \"signed\" rule"),
    ({"default": {"type": "signed", "keys": ["sha256:123"]}}, "neither a key ID"),
    ({"default": {"type": "signed", "keys": "sha256:" + "1" * 64}}, "must be a list"),
    ({"default": {"type": "signed", "keyPath": "/x"}}, "keyPath"),
    ({"scopes": {"team/app": {"type": "reject"}}}, "registry host"),
    ({"scopes": {"quay.io/app:v1": {"type": "reject"}}}, "tag or digest"),
    ({"scopes": {"quay.io/App": {"type": "reject"}}}, "lowercase"),
    ({"scopes": {"quay.io/a": {"type": "reject"}, "quay.io/a/": {"type": "accept"}}}, "twice"),
    ({"scopes": [{"quay.io": {"type": "reject"}}]}, "scopes must be an object"),
    ({"default": "accept"}, "a rule is an object"),
])
def test_policy_is_parsed_strictly(doc, needle) -> None:
    with pytest.raises(UsageError, match=None) as e:
        policy(doc)
    assert needle in str(e.value)


def test_policy_refuses_duplicate_json_keys_and_bad_json() -> None:
    with pytest.raises(UsageError, match="duplicate key"):
        trust.Policy.parse(b'{"default": {"type": "signed", "type": "accept"}}')
    with pytest.raises(UsageError, match="not valid JSON"):
        trust.Policy.parse(b"{")


@pytest.mark.parametrize("text,want", [
    ("quay.io", "quay.io"), ("docker://quay.io/team/", "quay.io/team"), ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b"),
    ("localhost", "localhost"), ("index.docker.io/library/busybox", "docker.io/library/busybox"),
    ("[::1]:5000/x", "[::1]:5000/x"),
])
def test_scopes_are_normalized(text: str, want: str) -> None:
    assert trust.normalize_scope(text) == want


@pytest.mark.parametrize("text", ["busybox", "library/busybox", "quay.io/a@sha256:" + "1" * 64, "", "quay.io/a//b",
                                  "-bad.io/x"])
def test_bad_scopes(text: str) -> None:
    with pytest.raises(UsageError):
        trust.normalize_scope(text)


# -- keys -------------------------------------------------------------------------------------

def test_key_id_is_sha256_of_the_der_subject_public_key_info() -> None:
    from cryptography.hazmat.primitives import serialization

    key = cosign.Key()
    der = key.public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert trust.key_id(trust.load_public_key(key.public_pem, "k")) == "sha256:" + hashlib.sha256(der).hexdigest()
    assert der[:2] == b"\x30\x59" and len(der) == 91  # SEQUENCE of a P-256 SPKI, not a raw point


def test_only_ecdsa_p256_public_keys_are_accepted() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    with pytest.raises(UsageError, match="secp384r1"):
        trust.load_public_key(cosign.Key(ec.SECP384R1()).public_pem, "k")
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(UsageError, match="P-256"):
        trust.load_public_key(ed, "k")
    priv = cosign.Key().private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
    with pytest.raises(UsageError, match="not a PEM public key"):
        trust.load_public_key(priv, "k")


def test_key_store_add_find_load_remove(tmp_path: Path) -> None:
    store = trust.KeyStore(tmp_path)
    a, b = cosign.Key(), cosign.Key()
    ka, kb = store.add(a.public_pem, "a"), store.add(b.public_pem, "b")
    assert (ka, kb) == (a.key_id, b.key_id)
    assert store.add(a.public_pem, "a") == ka and store.ids() == sorted([ka, kb])
    assert store.find(ka) == ka and store.find(ka[7:15]) == ka and store.find(kb[7:]) == kb
    with pytest.raises(UsageError, match="at least 8"):
        store.find(ka[7:10])
    with pytest.raises(NotFound):
        store.find("0" * 64 if not ka[7:].startswith("0") and not kb[7:].startswith("0") else "f" * 64)
    assert store.load(ka)[0] == ka
    store.path(kb).write_bytes(a.public_pem)  # a file that holds another key than its name says
    with pytest.raises(trust.TrustError, match="holds key"):
        store.load(kb)
    assert store.remove(ka) and not store.remove(ka)
    with pytest.raises(trust.TrustError, match="missing"):
        store.load(ka)


# -- signatures and claims --------------------------------------------------------------------

def test_signature_verification() -> None:
    a, b = cosign.Key(), cosign.Key()
    data = cosign.payload(REPO, DIGEST)
    keys = {a.key_id: a.public, b.key_id: b.public}
    assert trust.verify_signature(data, a.sign(data), keys) == a.key_id
    assert trust.verify_signature(data, b.sign(data), {a.key_id: a.public}) is None
    assert trust.verify_signature(data + b" ", a.sign(data), keys) is None
    assert trust.verify_signature(data, base64.b64encode(b"not DER").decode(), keys) is None
    with pytest.raises(trust.TrustError, match="not base64"):
        trust.verify_signature(data, "%%%", keys)


def test_claims_are_checked() -> None:
    trust.check_claims(cosign.payload(REPO, DIGEST), DIGEST, REPO)
    trust.check_claims(cosign.payload(REPO + ":v1", DIGEST), DIGEST, REPO)  # a tag in the identity is fine
    trust.check_claims(cosign.payload("index.docker.io/library/busybox", DIGEST), DIGEST, "docker.io/library/busybox")
    with pytest.raises(trust.TrustError, match=f"for image {OTHER}, not {DIGEST}"):
        trust.check_claims(cosign.payload(REPO, OTHER), DIGEST, REPO)
    with pytest.raises(trust.TrustError, match="for repository registry.example.com/team/other"):
        trust.check_claims(cosign.payload("registry.example.com/team/other", DIGEST), DIGEST, REPO)
    with pytest.raises(trust.TrustError, match="critical.type"):
        trust.check_claims(cosign.payload(REPO, DIGEST, kind="atomic container signature"), DIGEST, REPO)


def test_claim_keys_fold_case_but_never_twice() -> None:
    doc = {"critical": {"identity": {"docker-reference": REPO}, "image": {"Docker-manifest-digest": DIGEST},
                        "type": "cosign container image signature"}}
    trust.check_claims(json.dumps(doc).encode(), DIGEST, REPO)  # the spec's own example spelling
    doc["critical"]["image"]["docker-manifest-digest"] = OTHER
    with pytest.raises(trust.TrustError, match="twice"):
        trust.check_claims(json.dumps(doc).encode(), DIGEST, REPO)
    raw = ('{"critical":{"identity":{"docker-reference":"%s"},"image":{"docker-manifest-digest":"%s",'
           '"docker-manifest-digest":"%s"},"type":"cosign container image signature"}}' % (REPO, OTHER, DIGEST))
    with pytest.raises(trust.TrustError, match="not valid JSON"):
        trust.check_claims(raw.encode(), DIGEST, REPO)


@pytest.mark.parametrize("data", [b"[]", b'{"critical": []}', b'{"critical": {"type": "cosign container image '
                                  b'signature", "image": {"docker-manifest-digest": "%s"}}}' % DIGEST.encode(),
                                  b"\xff"])
def test_malformed_payloads(data: bytes) -> None:
    with pytest.raises(trust.TrustError):
        trust.check_claims(data, DIGEST, REPO)


def test_signature_tag() -> None:
    assert trust.signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    assert trust.signature_tag(DIGEST) == cosign.signature_tag(DIGEST)


def test_insecure_options() -> None:
    assert parse_insecure_options("") == frozenset()
    assert parse_insecure_options("none") == frozenset()
    assert parse_insecure_options("image") == {"image"}
    assert parse_insecure_options("image, tls") == {"image", "tls"}
    assert parse_insecure_options("all-fetch") == {"image", "tls"}
    assert "image" in parse_insecure_options("all")
    with pytest.raises(UsageError, match="ondisk"):
        parse_insecure_options("image,ondisk")
