"""Image trust: a policy per registry or repository prefix, and cosign-style signatures checked
before an image is first stored.

**Policy** (``<config_dir>/policy.json``, in the spirit of containers-policy.json)::

    {
      "default": {"type": "accept"},
      "scopes": {
        "registry.example.com/team": {"type": "signed", "keys": ["sha256:3f1c..."]},
        "registry.example.com/team/legacy": {"type": "reject"}
      }
    }

A rule is ``accept`` (alias ``insecureAcceptAnything``), ``reject``, or ``signed`` with the keys
that may sign: key IDs of keys in ``<config_dir>/trust/`` or absolute paths of PEM public keys.
A scope is a host (``quay.io``, ``127.0.0.1:5000``) or host/path prefix, matched on whole path
components; the longest matching scope wins and its rule alone applies; without a match the
``default`` applies. No file means accept everything (pypod's behaviour before trust existed).

**Keys**: ECDSA P-256 public keys in PEM (``cosign.pub``), stored as
``<config_dir>/trust/<hex>.pem`` where the key ID ``sha256:<hex>`` is the SHA-256 of the key's
DER SubjectPublicKeyInfo (``openssl pkey -pubin -outform DER | sha256sum``).

**Signatures** follow cosign's SIGNATURE_SPEC: the signatures of the image whose top manifest
(or index) has digest ``sha256:H`` are an OCI image manifest tagged ``sha256-H.sig`` in the same
repository. Each layer of type ``application/vnd.dev.cosign.simplesigning.v1+json`` is a
simple-signing payload; its descriptor's ``dev.cosignproject.cosign/signature`` annotation is the
base64 of an ASN.1 DER ECDSA signature over the payload bytes (SHA-256). An image passes when one
of those layers has a payload whose bytes match its descriptor's digest, whose signature verifies
with a key the rule trusts, and which (only then parsed) is a ``cosign container image
signature`` naming ``docker-manifest-digest`` = the pulled digest and a ``docker-reference``
in the pulled repository (tag or digest in it ignored).

Everything here raises :class:`TrustError` (an ImageError: exit 254) with a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import DigestMismatch, ImageError, NotFound, UsageError
from . import reference
from .content import check_digest

if TYPE_CHECKING:
    from ..config import Config
    from .registry import RegistryClient

POLICY_FILE = "policy.json"
KEYS_DIR = "trust"
ACCEPT, REJECT, SIGNED = "accept", "reject", "signed"
_TYPES = {ACCEPT: ACCEPT, "insecureAcceptAnything": ACCEPT, REJECT: REJECT, SIGNED: SIGNED}

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
_SIG_MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                       "application/vnd.docker.distribution.manifest.v2+json")
MAX_PAYLOAD = 256 << 10     # cosign's payloads are a few hundred bytes
MAX_SIGNATURES = 16         # signature layers examined per image
_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                      r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HEX_RE = re.compile(r"[0-9a-f]{64}")


class TrustError(ImageError):
    """The trust policy refuses an image."""


# -- keys -------------------------------------------------------------------------------------

def key_id(public_key: Any) -> str:
    """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_public_key(pem: bytes, source: str) -> Any:
    """An ECDSA P-256 public key from PEM (cosign's ``cosign.pub``); UsageError otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise UsageError(f"{source}: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = f"ECDSA {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise UsageError(f"{source}: the key is {kind}; pypod verifies ECDSA P-256 (cosign's scheme) only")
    return key


def _hex_of(ref: str) -> str | None:
    h = ref[7:] if ref.startswith("sha256:") else ref
    return h if re.fullmatch(r"[0-9a-f]{1,64}", h) else None


class KeyStore:
    """Public keys under ``<config_dir>/trust/``, one ``<hex>.pem`` per key."""

    def __init__(self, config_dir: str | os.PathLike):
        self.dir = Path(config_dir) / KEYS_DIR

    def path(self, kid: str) -> Path:
        return self.dir / f"{kid.removeprefix('sha256:')}.pem"

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted("sha256:" + n[:-4] for n in names if n.endswith(".pem") and _HEX_RE.fullmatch(n[:-4]))

    def add(self, pem: bytes, source: str) -> str:
        key = load_public_key(pem, source)
        kid = key_id(key)
        path = self.path(kid)
        if not path.exists():
            from cryptography.hazmat.primitives import serialization

            self.dir.mkdir(parents=True, exist_ok=True)
            data = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            _write_atomic(path, data)
        return kid

    def remove(self, kid: str) -> bool:
        try:
            self.path(kid).unlink()
            return True
        except FileNotFoundError:
            return False

    def find(self, ref: str, known: Iterable[str] = ()) -> str:
        """The full ID of a key named by ID, hex, or a unique hex prefix (8 digits or more),
        among the stored keys and ``known`` IDs (those the policy names)."""
        h = _hex_of(ref.strip())
        if h is None:
            raise UsageError(f"{ref!r} is not a key ID (sha256:<hex>, or at least 8 of its hex digits)")
        if len(h) < 8:
            raise UsageError(f"key ID prefix {ref!r} is too short: give at least 8 hex digits")
        ids = set(self.ids()) | {k for k in known if k.startswith("sha256:")}
        hits = sorted(k for k in ids if k[7:].startswith(h))
        if not hits:
            raise NotFound(f"no trusted key {ref}")
        if len(hits) > 1:
            raise UsageError(f"key ID prefix {ref!r} is ambiguous: {', '.join(hits)}")
        return hits[0]

    def load(self, ref: str) -> tuple[str, Any]:
        """(key ID, key) for a policy key reference: a key ID or an absolute PEM path."""
        if ref.startswith("/"):
            path = Path(ref)
        else:
            path = self.path(ref)
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise TrustError(f"trusted key {ref} is missing ({path} does not exist)") from None
        except OSError as e:
            raise TrustError(f"cannot read trusted key {path}: {e.strerror}") from None
        try:
            key = load_public_key(pem, str(path))
        except UsageError as e:
            raise TrustError(str(e)) from None
        kid = key_id(key)
        if not ref.startswith("/") and kid != ref:
            raise TrustError(f"trusted key file {path} holds key {kid}, not {ref}")
        return kid, key


# -- policy -------------------------------------------------------------------------------------

@dataclass
class Rule:
    type: str
    keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == SIGNED:
            d["keys"] = list(self.keys)
        return d


def normalize_scope(text: str) -> str:
    """A policy scope in canonical form: ``host[:port][/path]``, no tag, digest or scheme;
    ``index.docker.io`` is ``docker.io`` (Docker Hub's official images are ``docker.io/library/NAME``)."""
    s = text.strip()
    s = s.removeprefix("docker://").rstrip("/")
    host, _, path = s.partition("/")
    if not _HOST_RE.fullmatch(host) or not ("." in host or ":" in host or host == "localhost"):
        raise UsageError(f"scope {text!r} must start with a registry host (e.g. docker.io/library/busybox, "
                         f"quay.io, 127.0.0.1:5000/team)")
    if "@" in path or ":" in path:
        raise UsageError(f"scope {text!r} names a tag or digest; scopes are registries or repository prefixes")
    if path and not all(_COMPONENT_RE.fullmatch(c) for c in path.split("/")):
        raise UsageError(f"scope {text!r}: repository paths are lowercase [a-z0-9._-] components")
    if host == "index.docker.io":
        host = reference.DEFAULT_HOST
    return f"{host}/{path}" if path else host


def _under(repository: str, scope: str) -> bool:
    return repository == scope or repository.startswith(scope + "/")


@dataclass
class Policy:
    default: Rule = field(default_factory=lambda: Rule(ACCEPT))
    scopes: dict[str, Rule] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, config_dir: str | os.PathLike) -> Policy:
        path = Path(config_dir) / POLICY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path=path)
        except OSError as e:
            raise UsageError(f"cannot read the trust policy {path}: {e.strerror}") from None
        policy = cls.parse(data, str(path))
        policy.path = path
        return policy

    @classmethod
    def parse(cls, data: bytes, source: str = POLICY_FILE) -> Policy:
        """A strictly checked policy: anything unknown is an error, so a typo never loosens it."""
        try:
            doc = json.loads(data, object_pairs_hook=_no_duplicates)
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise UsageError(f"{source}: expected a JSON object")
        unknown = set(doc) - {"default", "scopes"}
        if unknown:
            raise UsageError(f"{source}: unknown field(s) {', '.join(sorted(unknown))} (expected default, scopes)")
        policy = cls()
        if "default" in doc:
            policy.default = _rule(doc["default"], f"{source}: default")
        scopes = doc.get("scopes", {})
        if not isinstance(scopes, dict):
            raise UsageError(f"{source}: scopes must be an object mapping scope to rule")
        for raw, rule in scopes.items():
            try:
                scope = normalize_scope(raw)
            except UsageError as e:
                raise UsageError(f"{source}: {e}") from None
            if scope in policy.scopes:
                raise UsageError(f"{source}: scope {scope} is given twice")
            policy.scopes[scope] = _rule(rule, f"{source}: scope {raw}")
        return policy

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default.to_json(),
                "scopes": {s: r.to_json() for s, r in sorted(self.scopes.items())}}

    def save(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, (json.dumps(self.to_json(), indent=2) + "\n").encode())

    def rule_for(self, repository: str) -> tuple[str | None, Rule]:
        """(scope, rule) for a repository (``host/path``); scope None is the default."""
        best = None
        for scope in self.scopes:
            if _under(repository, scope) and (best is None or len(scope) > len(best)):
                best = scope
        return (best, self.scopes[best]) if best is not None else (None, self.default)

    def key_refs(self) -> set[str]:
        refs = set(self.default.keys)
        for rule in self.scopes.values():
            refs.update(rule.keys)
        return refs


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _rule(doc: Any, where: str) -> Rule:
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: a rule is an object like {{\"type\": \"accept\"}}")
    unknown = set(doc) - {"type", "keys"}
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    kind = _TYPES.get(doc.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise UsageError(f"{where}: type {doc.get('type')!r} is not accept, reject or signed")
    keys = doc.get("keys", [])
    if kind != SIGNED and keys:
        raise UsageError(f"{where}: only a \"signed\" rule has keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UsageError(f"{where}: keys must be a list of key IDs or absolute PEM paths")
    out = []
    for k in keys:
        if k.startswith("/"):
            out.append(k)
            continue
        h = _hex_of(k)
        if h is None or len(h) != 64:
            raise UsageError(f"{where}: {k!r} is neither a key ID (sha256:<64 hex>) nor an absolute PEM path")
        out.append("sha256:" + h)
    return Rule(kind, out)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


# -- verification -------------------------------------------------------------------------------

def signature_tag(digest: str) -> str:
    """The tag under which cosign stores the signatures of ``digest``."""
    algo, _, hexpart = check_digest(digest).partition(":")
    return f"{algo}-{hexpart}.sig"


def _scope_name(scope: str | None) -> str:
    return f"scope {scope}" if scope is not None else "the default rule"


def verify_signature(payload: bytes, signature_b64: str, keys: dict[str, Any]) -> str | None:
    """The ID of the key in ``keys`` whose ECDSA/SHA-256 signature over ``payload`` is
    ``signature_b64`` (base64 of ASN.1 DER), None if none; TrustError if it is not base64."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        sig = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise TrustError("its signature annotation is not base64") from None
    for kid, key in keys.items():
        try:
            key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
            return kid
        except (InvalidSignature, ValueError):
            continue
    return None


def check_claims(payload: bytes, digest: str, repository: str) -> None:
    """Check a verified simple-signing payload names ``digest`` in ``repository``; TrustError
    with the reason otherwise. Keys of the ``critical`` section are matched case-insensitively
    (as cosign's Go decoder does); a key given twice in any spelling is refused."""
    try:
        doc = json.loads(payload, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as e:
        raise TrustError(f"the signed payload is not valid JSON ({e})") from None
    crit = _folded(doc, "payload").get("critical")
    crit = _folded(crit, "critical")
    kind = crit.get("type")
    if kind != COSIGN_TYPE:
        raise TrustError(f"the signed payload's critical.type is {kind!r}, not {COSIGN_TYPE!r}")
    image = _folded(crit.get("image"), "critical.image")
    signed = image.get("docker-manifest-digest")
    if signed != digest:
        raise TrustError(f"the signature is for image {signed}, not {digest}")
    ident = _folded(crit.get("identity"), "critical.identity")
    ref = ident.get("docker-reference")
    if not isinstance(ref, str):
        raise TrustError("the signed payload has no critical.identity.docker-reference")
    try:
        claimed = reference.parse(ref).repository
    except UsageError:
        raise TrustError(f"the signed payload names an invalid docker-reference {ref!r}") from None
    if claimed != repository:
        raise TrustError(f"the signature is for repository {claimed}, not {repository}")


def _folded(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise TrustError(f"the signed payload has no {what} object")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        low = k.lower()
        if low in out:
            raise TrustError(f"the signed payload gives {what}.{low} twice")
        out[low] = v
    return out


@dataclass
class _Candidate:
    digest: str
    size: int
    signature: str | None


def _signature_layers(data: bytes) -> list[_Candidate]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise TrustError("its signature manifest is not valid JSON") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise TrustError("its signature manifest has no layers")
    out = []
    for d in layers:
        if not isinstance(d, dict) or d.get("mediaType") != SIMPLESIGNING:
            continue
        digest, size = d.get("digest"), d.get("size")
        if not isinstance(digest, str) or not reference.DIGEST_RE.fullmatch(digest):
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            continue
        ann = d.get("annotations")
        sig = ann.get(SIGNATURE_ANNOTATION) if isinstance(ann, dict) else None
        out.append(_Candidate(digest, size, sig if isinstance(sig, str) else None))
    return out


class Gate:
    """What the trust policy asks of one registry image. Made before anything is fetched, so
    that a ``reject`` rule refuses at once; :meth:`verify` runs once the top manifest's digest
    is known and before anything of the image is stored."""

    def __init__(self, config: Config, ref: reference.Reference):
        self.config = config
        self.ref = ref
        self.policy = Policy.load(config.config_dir)
        self.scope, self.rule = self.policy.rule_for(ref.repository)
        if self.rule.type == REJECT:
            raise TrustError(f"image {ref} is refused by the trust policy ({_scope_name(self.scope)} "
                             f"rejects it)")

    @property
    def skipped(self) -> bool:
        return "image" in self.config.insecure

    def verify(self, client: RegistryClient, digest: str) -> str | None:
        """Check the signatures of the image whose top manifest has ``digest``; returns the ID
        of the key that signed it, None when the rule accepts anything or the check is skipped."""
        if self.rule.type == ACCEPT or self.skipped:
            return None
        ref = self.ref
        fail = f"image {ref} ({digest}) is refused by the trust policy"
        keys = self._keys(fail)
        tag = signature_tag(digest)
        try:
            got = client.get_manifest(reference.Reference(ref.host, ref.path, tag, None), _SIG_MANIFEST_TYPES)
        except NotFound:
            raise TrustError(f"{fail}: it is not signed (no signature {tag} in {ref.repository}; "
                             f"{_scope_name(self.scope)} requires one by a trusted key; "
                             f"--insecure-options=image skips the check)") from None
        try:
            candidates = _signature_layers(got.data)
        except TrustError as e:
            raise TrustError(f"{fail}: {e}") from None
        if not candidates:
            raise TrustError(f"{fail}: its signature manifest {tag} has no simple-signing payload")
        best: tuple[int, str] = (0, "")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pypod-sig-") as tmp:
            for i, cand in enumerate(candidates[:MAX_SIGNATURES]):
                rank, why = self._check_one(client, cand, keys, Path(tmp) / f"payload-{i}", digest)
                if rank == 0:
                    return why  # the key ID
                if rank > best[0]:
                    best = (rank, why)
        n = min(len(candidates), MAX_SIGNATURES)
        raise TrustError(f"{fail}: {best[1]} ({n} signature{'s' if n != 1 else ''} checked)")

    def _keys(self, fail: str) -> dict[str, Any]:
        store = KeyStore(self.config.config_dir)
        keys = {}
        for ref in self.rule.keys:
            kid, key = store.load(ref)
            keys[kid] = key
        if not keys:
            raise TrustError(f"{fail}: {_scope_name(self.scope)} requires a signature but lists no trusted keys "
                             f"(pypod trust add)")
        return keys

    def _check_one(self, client: RegistryClient, cand: _Candidate, keys: dict[str, Any], dest: Path,
                   digest: str) -> tuple[int, str]:
        """(0, key ID) when this signature layer vouches for the image, else (rank, reason):
        the higher the rank, the more telling the reason."""
        if cand.signature is None:
            return 1, f"a signature layer has no {SIGNATURE_ANNOTATION} annotation"
        if cand.size > MAX_PAYLOAD:
            return 1, f"a signature payload is {cand.size} bytes, over the limit of {MAX_PAYLOAD}"
        try:
            client.fetch_blob(self.ref, cand.digest, dest, size=cand.size)
            payload = dest.read_bytes()
        except DigestMismatch:
            return 2, f"the signature payload {cand.digest} does not match its digest"
        except NotFound:
            return 1, f"the signature payload {cand.digest} is missing from the registry"
        finally:
            dest.unlink(missing_ok=True)
        if "sha256:" + hashlib.sha256(payload).hexdigest() != cand.digest:  # fetch_blob checked; be sure
            return 2, f"the signature payload {cand.digest} does not match its digest"
        try:
            kid = verify_signature(payload, cand.signature, keys)
        except TrustError as e:
            return 1, f"a signature is malformed: {e}"
        if kid is None:
            return 1, (f"it is not signed by a key that {_scope_name(self.scope)} trusts "
                       f"({', '.join(k[:19] for k in keys)})")
        try:
            check_claims(payload, digest, self.ref.repository)
        except TrustError as e:
            return 3, f"{e} (signed by trusted key {kid[:19]})"
        return 0, kid


def check_local(config: Config, names: Iterable[str], source: str) -> None:
    """Images from local sources carry no signatures and are not verified; only a ``reject``
    rule for the name they get (the default rule when they get none) refuses them."""
    policy = Policy.load(config.config_dir)
    repos = []
    for name in names:
        try:
            repos.append(reference.parse(name).repository)
        except UsageError:
            continue
    for repo in repos or [None]:
        scope, rule = policy.rule_for(repo) if repo is not None else (None, policy.default)
        if rule.type == REJECT:
            what = f"image {repo}" if repo else "an unnamed image"
            raise TrustError(f"{source}: {what} is refused by the trust policy ({_scope_name(scope)} rejects it)")
