"""A small cosign-style signer for the tests, written from cosign's SIGNATURE_SPEC and
independent of pypod's verifier.

A signature of the image whose top manifest (or index) has digest ``sha256:H`` is an OCI image
manifest tagged ``sha256-H.sig`` in the image's repository; each of its layers is a
simple-signing JSON payload (media type ``application/vnd.dev.cosign.simplesigning.v1+json``)
whose descriptor carries ``dev.cosignproject.cosign/signature``: the base64 of an ASN.1 DER
ECDSA P-256 signature over the payload bytes with SHA-256.

Tests make keys with :class:`Key`, payloads with :func:`payload` (or their own bytes), sign
them with :meth:`Key.sign` and push them with :func:`push_signatures`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Key:
    """An ECDSA key pair (P-256 unless ``curve`` says otherwise)."""

    def __init__(self, curve=None):
        from cryptography.hazmat.primitives.asymmetric import ec

        self.private = ec.generate_private_key(curve or ec.SECP256R1())
        self.public = self.private.public_key()

    @property
    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def key_id(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo, as ``sha256:<hex>``."""
        from cryptography.hazmat.primitives import serialization

        der = self.public.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        return sha256(der)

    def write_public(self, path: Path) -> Path:
        path.write_bytes(self.public_pem)
        return path

    def sign(self, data: bytes) -> str:
        """base64 of the DER ECDSA signature of ``data`` with SHA-256."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return base64.b64encode(self.private.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def payload(repository: str, digest: str, *, kind: str = "cosign container image signature",
            optional: dict | None = None) -> bytes:
    """A simple-signing payload naming ``digest`` in ``repository`` (as cosign writes it)."""
    doc = {"critical": {"identity": {"docker-reference": repository},
                        "image": {"docker-manifest-digest": digest},
                        "type": kind},
           "optional": optional}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Signature:
    """One layer of a signature manifest: the payload bytes and the annotation to put on it
    (``signature`` None leaves the annotation out)."""

    payload: bytes
    signature: str | None
    media_type: str = SIMPLESIGNING

    @property
    def digest(self) -> str:
        return sha256(self.payload)


def signature_tag(digest: str) -> str:
    algo, hexpart = digest.split(":", 1)
    return f"{algo}-{hexpart}.sig"


def signature_manifest(signatures: list[Signature]) -> tuple[bytes, dict[str, bytes]]:
    """(manifest bytes, {digest: blob}) for a cosign signature manifest."""
    blobs = {s.digest: s.payload for s in signatures}
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [s.digest for s in signatures]}},
                        separators=(",", ":")).encode()
    blobs[sha256(config)] = config
    layers = []
    for s in signatures:
        desc = {"mediaType": s.media_type, "size": len(s.payload), "digest": s.digest}
        if s.signature is not None:
            desc["annotations"] = {SIGNATURE_ANNOTATION: s.signature}
        layers.append(desc)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256(config)},
                "layers": layers}
    return json.dumps(manifest, separators=(",", ":")).encode(), blobs


def push_signatures(client, repo: str, image_digest: str, signatures: list[Signature]) -> str:
    """Push ``signatures`` as the signature manifest of ``image_digest`` in ``repo`` with a
    ``support.registry.RegistryClient``; returns the signature tag."""
    data, blobs = signature_manifest(signatures)
    for digest, blob in blobs.items():
        client.push_blob(repo, digest, blob)
    tag = signature_tag(image_digest)
    client.push_manifest(repo, tag, data, OCI_MANIFEST)
    return tag


def sign_image(client, key: Key, registry_host: str, repo: str, image_digest: str, *,
               reference: str | None = None, digest_claim: str | None = None) -> Signature:
    """Sign ``repo@image_digest`` with ``key`` as cosign does and push the signature; the
    payload may claim another ``reference`` or digest (for tests of refusals)."""
    data = payload(reference or f"{registry_host}/{repo}", digest_claim or image_digest)
    sig = Signature(data, key.sign(data))
    push_signatures(client, repo, image_digest, [sig])
    return sig
