"""Real local registries for pypod's tests.

:class:`Registry` runs Debian's ``docker-registry`` (distribution 2.8) on
127.0.0.1 with a free port and a throwaway storage directory, in one of these
variants:

    Registry()                         plain HTTP, anonymous
    Registry(tls=True)                 HTTPS, certificate from a throwaway CA (``.ca_file``)
    Registry(auth="htpasswd")          HTTP basic auth (bcrypt htpasswd); works over plain
                                       HTTP with 2.8.2, and over TLS with tls=True
    Registry(auth="token")             bearer tokens from a :class:`TokenServer`
                                       (ES256 JWTs, ``kid`` or ``x5c`` header)

:class:`RegistryClient` speaks the registry HTTP API v2 with ``http.client``
(basic and bearer auth) and pushes OCI layout images (monolithic blob
uploads, manifests and indexes). :class:`FaultProxy` sits in front of a
registry and injects errors (status codes, connection resets, corrupted or
truncated blobs, delays) and counts requests.

Nothing here imports pypod.
"""

from __future__ import annotations

import base64
import ctypes
import datetime as _dt
import hashlib
import http.client
import ipaddress
import json
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable

REGISTRY_BIN = "/usr/bin/docker-registry"
TOKEN_SERVICE = "pypod-test-registry"
TOKEN_ISSUER = "pypod-test-token-issuer"

ACCEPT_MANIFESTS = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path      # PEM CA certificate: trust this
    cert_file: Path    # PEM server certificate (127.0.0.1, ::1, localhost)
    key_file: Path     # PEM server key (unencrypted PKCS#8)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def make_tls_files(directory: Path, hosts: Iterable[str] = ("127.0.0.1", "::1", "localhost"),
                   ) -> TLSFiles:
    """Writes a throwaway CA and a server certificate for ``hosts`` (ECDSA P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pypod tests"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "pypod test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, list(hosts)[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    files.key_file.chmod(0o600)
    return files


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


# --------------------------------------------------------------------------
# htpasswd
# --------------------------------------------------------------------------

def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """bcrypt htpasswd (``$2b$``, cost 5 to keep the tests fast).

    distribution 2.8 checks entries with golang.org/x/crypto/bcrypt, which
    accepts ``$2a$``, ``$2b$`` and ``$2y$``; it supports no other hash.
    """
    import bcrypt

    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(5)).decode()}"
             for user, pw in users.items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


# --------------------------------------------------------------------------
# Token server
# --------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key) -> str:
    """The key ID docker/libtrust derives from a public key, the form the
    registry's token auth expects in a JWT ``kid`` header: SHA-256 of the DER
    SubjectPublicKeyInfo, first 240 bits, base32, in 12 groups of 4 joined by ':'."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


@dataclass
class TokenRequest:
    """One request the token server saw."""
    method: str
    account: str | None       # the authenticated user, None when anonymous
    service: str | None
    scopes: list[str]
    status: int
    granted: list[dict] = field(default_factory=list)


class TokenServer:
    """A small Docker-style token server (``GET /token`` and OAuth2 ``POST /token``).

    Checks basic credentials against ``users`` (name -> (password, allowed
    actions)), grants the requested actions that the user is allowed, and
    returns an ES256 JWT the registry accepts: its signing certificate is the
    registry's ``rootcertbundle``. ``header`` picks how the JWT names its key:
    ``"kid"`` (libtrust key ID, like Docker Hub) or ``"x5c"`` (certificate
    chain). Anonymous requests get a token with no access unless
    ``anonymous_pull``. Counts every request in ``.requests``.
    """

    def __init__(self, workdir: Path, users: dict[str, tuple[str, set[str]]], *,
                 service: str = TOKEN_SERVICE, issuer: str = TOKEN_ISSUER,
                 header: str = "kid", anonymous_pull: bool = False,
                 expires_in: int = 300, tls: TLSFiles | None = None):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        if header not in ("kid", "x5c"):
            raise ValueError("header must be 'kid' or 'x5c'")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.service, self.issuer, self.header = service, issuer, header
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self.tls = tls
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._fail: list[int] = []   # statuses to return for the next requests

        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pypod test token signer")])
        now = _now()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1))
            .not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.key_id = libtrust_key_id(self._key.public_key())
        self.rootcertbundle = self.workdir / "token-signer.pem"
        self.rootcertbundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._cert_der = self._cert.public_bytes(serialization.Encoding.DER)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- JWT ------------------------------------------------------------
    def make_token(self, subject: str, access: list[dict], *, audience: str | None = None,
                   expires_in: int | None = None, issuer: str | None = None) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        header: dict = {"typ": "JWT", "alg": "ES256"}
        if self.header == "kid":
            header["kid"] = self.key_id
        else:
            header["x5c"] = [base64.b64encode(self._cert_der).decode()]
        now = int(time.time())
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    # -- request handling -----------------------------------------------
    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """The next ``n`` token requests get ``status`` (counted, no token)."""
        with self._lock:
            self._fail.extend([status] * n)

    @property
    def issued(self) -> int:
        return sum(1 for r in self.requests if r.status == 200)

    @property
    def denied(self) -> int:
        return sum(1 for r in self.requests if r.status == 401)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    def _authenticate(self, username: str | None, password: str | None) -> tuple[bool, str | None]:
        if username is None:
            return True, None
        entry = self.users.get(username)
        if entry is None or not secrets.compare_digest(entry[0], password or ""):
            return False, username
        return True, username

    def _grant(self, account: str | None, scopes: list[str]) -> list[dict]:
        allowed = ({"pull"} if self.anonymous_pull else set()) if account is None \
            else set(self.users[account][1])
        access = []
        for scope in scopes:
            for one in scope.split(" "):
                parts = one.split(":")
                if len(parts) < 3:
                    continue
                type_, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1]
                wanted = [a for a in actions.split(",") if a]
                granted = [a for a in wanted if a in allowed or "*" in allowed]
                if granted:
                    access.append({"type": type_, "name": name, "actions": granted})
        return access

    def handle(self, method: str, query: dict[str, list[str]], auth_header: str | None,
               form: dict[str, list[str]] | None) -> tuple[int, dict]:
        username = password = None
        if form is not None:   # OAuth2 password grant
            if (form.get("grant_type") or [""])[0] != "password":
                return 400, {"error": "unsupported_grant_type"}
            username = (form.get("username") or [None])[0]
            password = (form.get("password") or [""])[0]
            service = (form.get("service") or [None])[0]
            scopes = form.get("scope", [])
        else:
            service = (query.get("service") or [None])[0]
            scopes = query.get("scope", [])
            if auth_header and auth_header.lower().startswith("basic "):
                try:
                    raw = base64.b64decode(auth_header[6:].strip()).decode()
                    username, _, password = raw.partition(":")
                except (ValueError, UnicodeDecodeError):
                    return 400, {"error": "bad authorization header"}
        with self._lock:
            fail = self._fail.pop(0) if self._fail else None
        if fail is not None:
            self.requests.append(TokenRequest(method, username, service, scopes, fail))
            return fail, {"error": "injected failure"}
        ok, account = self._authenticate(username, password)
        if not ok:
            self.requests.append(TokenRequest(method, username, service, scopes, 401))
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        if service != self.service:
            self.requests.append(TokenRequest(method, account, service, scopes, 400))
            return 400, {"error": f"unknown service {service!r}"}
        access = self._grant(account, scopes)
        token = self.make_token(account or "", access)
        self.requests.append(TokenRequest(method, account, service, scopes, 200, access))
        body = {"token": token, "access_token": token, "expires_in": self.expires_in,
                "issued_at": _now().strftime("%Y-%m-%dT%H:%M:%SZ")}
        return 200, body

    # -- server ---------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "token server not started"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def realm(self) -> str:
        return self.url + "/token"

    def start(self) -> "TokenServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="pypod-test-token"')
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    return self._reply(404, {"error": "not found"})
                query = urllib.parse.parse_qs(url.query)
                self._reply(*owner.handle("GET", query, self.headers.get("Authorization"), None))

            def do_POST(self):
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                if url.path != "/token":
                    return self._reply(404, {"error": "not found"})
                form = urllib.parse.parse_qs(body)
                self._reply(*owner.handle("POST", {}, None, form))

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="pypod-test-token-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # no tracebacks on client resets
        pass


# --------------------------------------------------------------------------
# Registry HTTP API v2 client (for pushing fixtures and for checks)
# --------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


class RegistryError(Exception):
    def __init__(self, message: str, response: Response | None = None):
        super().__init__(message)
        self.response = response


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class RegistryClient:
    """A minimal Docker Registry HTTP API v2 client built on ``http.client``.

    Handles ``Basic`` and ``Bearer`` challenges (token fetched from the
    realm with the client's credentials, cached per scope). Counts requests
    in ``.request_count``; ``.token_fetches`` counts token requests.
    """

    def __init__(self, base_url: str, *, credentials: Credentials | None = None,
                 ca_file: Path | None = None, timeout: float = 30.0):
        self.base = urllib.parse.urlsplit(base_url)
        self.credentials = credentials
        self.ca_file = ca_file
        self.timeout = timeout
        self._tokens: dict[str, str] = {}
        self._basic = False
        self.request_count = 0
        self.token_fetches = 0

    def _connection(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.hostname, url.port, timeout=self.timeout,
                                               context=client_ssl_context(self.ca_file))
        return http.client.HTTPConnection(url.hostname, url.port, timeout=self.timeout)

    def raw(self, method: str, url: str, *, body=None, headers: dict | None = None) -> Response:
        """One request, no auth handling. ``url`` absolute or a path."""
        parts = urllib.parse.urlsplit(url)
        if not parts.scheme:
            parts = self.base._replace(path=parts.path, query=parts.query)
        conn = self._connection(parts)
        try:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request(method, target, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            self.request_count += 1
            return Response(resp.status, resp.headers, data)
        finally:
            conn.close()

    def _fetch_token(self, params: dict[str, str], scope: str) -> str:
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        if self.credentials:
            query["account"] = self.credentials.username
        url = params["realm"] + "?" + urllib.parse.urlencode(query)
        headers = {}
        if self.credentials:
            headers["Authorization"] = self.credentials.basic_header()
        self.token_fetches += 1
        resp = self.raw("GET", url, headers=headers)
        if resp.status != 200:
            raise RegistryError(f"token request failed: {resp.status} {resp.body[:200]!r}", resp)
        data = resp.json()
        return data.get("token") or data["access_token"]

    def request(self, method: str, path: str, *, scope: str = "", body=None,
                headers: dict | None = None, ok: Iterable[int] = ()) -> Response:
        """A request with auth handling. Raises :class:`RegistryError` unless the
        status is 2xx/3xx or in ``ok``."""
        headers = dict(headers or {})
        for attempt in range(2):
            h = dict(headers)
            if scope in self._tokens:
                h["Authorization"] = "Bearer " + self._tokens[scope]
            elif self._basic and self.credentials:
                h["Authorization"] = self.credentials.basic_header()
            if hasattr(body, "seek"):
                body.seek(0)
            resp = self.raw(method, path, body=body, headers=h)
            if resp.status != 401 or attempt:
                break
            challenge = resp.headers.get("WWW-Authenticate", "")
            kind, params = parse_challenge(challenge)
            if kind == "basic":
                if not self.credentials:
                    break
                self._basic = True
            elif kind == "bearer":
                self._tokens[scope] = self._fetch_token(params, scope or params.get("scope", ""))
            else:
                break
        if resp.status >= 400 and resp.status not in set(ok):
            raise RegistryError(f"{method} {path}: {resp.status} {resp.body[:300]!r}", resp)
        return resp

    # -- reading --------------------------------------------------------
    def ping(self) -> Response:
        """``GET /v2/`` without credentials: 200, or 401 with the challenge."""
        return self.raw("GET", "/v2/")

    def get_manifest(self, repo: str, reference: str, *,
                     accept: str = ACCEPT_MANIFESTS) -> Response:
        return self.request("GET", f"/v2/{repo}/manifests/{reference}",
                            scope=f"repository:{repo}:pull", headers={"Accept": accept})

    def head_manifest(self, repo: str, reference: str) -> Response:
        return self.request("HEAD", f"/v2/{repo}/manifests/{reference}",
                            scope=f"repository:{repo}:pull",
                            headers={"Accept": ACCEPT_MANIFESTS}, ok=(404,))

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}",
                            scope=f"repository:{repo}:pull").body

    def tags(self, repo: str) -> list[str]:
        return self.request("GET", f"/v2/{repo}/tags/list",
                            scope=f"repository:{repo}:pull").json()["tags"]

    # -- writing --------------------------------------------------------
    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}",
                            scope=f"repository:{repo}:pull,push", ok=(404,))
        return resp.status == 200

    def push_blob(self, repo: str, digest: str, data_or_path: bytes | Path) -> None:
        """Monolithic upload: POST /v2/<repo>/blobs/uploads/ then PUT <location>?digest=."""
        scope = f"repository:{repo}:pull,push"
        if self.blob_exists(repo, digest):
            return
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope,
                            headers={"Content-Length": "0"})
        location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        location = f"{location}{sep}digest={urllib.parse.quote(digest)}"
        if isinstance(data_or_path, (bytes, bytearray)):
            body, size = bytes(data_or_path), len(data_or_path)
            self.request("PUT", location, scope=scope, body=body,
                         headers={"Content-Type": "application/octet-stream",
                                  "Content-Length": str(size)})
        else:
            size = Path(data_or_path).stat().st_size
            with Path(data_or_path).open("rb") as f:
                self.request("PUT", location, scope=scope, body=f,
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(size)})

    def push_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{reference}",
                            scope=f"repository:{repo}:pull,push", body=data,
                            headers={"Content-Type": media_type,
                                     "Content-Length": str(len(data))})
        return resp.headers.get("Docker-Content-Digest", "")

    def push_image(self, image, repo: str, tag: str | None = "latest") -> str:
        """Pushes an image from an OCI layout (``support.images.Image``).

        Blobs first, then platform manifests by digest, then the top manifest
        (or index) by ``tag``, or by digest when ``tag`` is None. The bytes are
        pushed as stored, so digests are preserved. Returns the top digest.
        """
        layout = Path(image.layout)

        def blob(digest: str) -> Path:
            algo, _, hexpart = digest.partition(":")
            return layout / "blobs" / algo / hexpart

        def push_manifest_tree(digest: str, media_type: str, reference: str) -> None:
            data = blob(digest).read_bytes()
            doc = json.loads(data)
            if "manifests" in doc:
                for child in doc["manifests"]:
                    push_manifest_tree(child["digest"], child["mediaType"], child["digest"])
            else:
                for desc in [doc["config"], *doc.get("layers", [])]:
                    self.push_blob(repo, desc["digest"], blob(desc["digest"]))
            self.push_manifest(repo, reference, data, media_type)

        push_manifest_tree(image.digest, image.media_type, tag or image.digest)
        return image.digest


# --------------------------------------------------------------------------
# The registry process
# --------------------------------------------------------------------------

def _yaml(obj, indent: int = 0) -> str:
    """Enough YAML for the registry config: nested dicts of scalars and lists."""
    pad = "  " * indent
    lines = []
    for key, value in obj.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(_yaml(value, indent + 1))
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: {json.dumps(value)}")
        elif isinstance(value, bool):
            lines.append(f"{pad}{key}: {'true' if value else 'false'}")
        else:
            lines.append(f"{pad}{key}: {json.dumps(value) if isinstance(value, str) else value}")
    return "\n".join(lines)


def _set_pdeathsig() -> None:
    """In the child: get SIGTERM when the parent dies, so a crashed test run
    leaves no registry behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Registry:
    """A ``docker-registry`` process on 127.0.0.1 with throwaway storage.

    ``auth``: None (anonymous), "htpasswd" (basic) or "token" (bearer, with a
    :class:`TokenServer`; ``token_header`` "kid" or "x5c"). ``tls``: serve
    HTTPS with a certificate from a throwaway CA (``.ca_file``).

    Users (``.users``): "pypod" may pull and push, "reader" may only pull
    (token auth; htpasswd has no per-action rights). ``.credentials`` is
    pypod's. Use as a context manager or call start()/stop().
    """

    DEFAULT_USERS = {"pypod": ("pypod-secret", {"pull", "push", "delete"}),
                     "reader": ("reader-secret", {"pull"})}

    def __init__(self, *, tls: bool = False, auth: str | None = None,
                 token_header: str = "kid", anonymous_pull: bool = False,
                 users: dict[str, tuple[str, set[str]]] | None = None,
                 workdir: Path | None = None, start_timeout: float = 15.0):
        if auth not in (None, "htpasswd", "token"):
            raise ValueError(f"unknown auth {auth!r}")
        self.tls = tls
        self.auth = auth
        self.token_header = token_header
        self.anonymous_pull = anonymous_pull
        self.users = dict(users or self.DEFAULT_USERS)
        self.start_timeout = start_timeout
        self._workdir_arg = workdir
        self.workdir: Path | None = None
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.tls_files: TLSFiles | None = None
        self.token_server: TokenServer | None = None
        self.pushed: dict[str, str] = {}   # "repo:tag" -> digest
        self.last_pid: int | None = None

    # -- properties -----------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_file(self) -> Path | None:
        return self.tls_files.ca_file if self.tls_files else None

    @property
    def credentials(self) -> Credentials | None:
        if self.auth is None:
            return None
        return self.credentials_for("pypod")

    def credentials_for(self, user: str) -> Credentials:
        return Credentials(user, self.users[user][0])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "registry.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def ref(self, repo: str, tag: str = "latest") -> str:
        """``127.0.0.1:PORT/repo:tag`` (or ``@sha256:...`` when tag is a digest)."""
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag}"

    def client(self, credentials: Credentials | None | str = "default") -> RegistryClient:
        """A client; by default with ``.credentials``, pass None for anonymous."""
        creds = self.credentials if credentials == "default" else credentials
        return RegistryClient(self.url, credentials=creds, ca_file=self.ca_file)

    def push(self, image, repo: str, tag: str | None = "latest") -> str:
        """Pushes a ``support.images.Image``; returns its top digest."""
        digest = self.client().push_image(image, repo, tag)
        self.pushed[f"{repo}:{tag or digest}"] = digest
        return digest

    # -- lifecycle ------------------------------------------------------
    def _config(self) -> dict:
        assert self.workdir is not None
        cfg: dict = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": secrets.token_hex(16),
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.tls_files:
            cfg["http"]["tls"] = {"certificate": str(self.tls_files.cert_file),
                                  "key": str(self.tls_files.key_file)}
        if self.auth == "htpasswd":
            path = write_htpasswd(self.workdir / "htpasswd",
                                  {u: pw for u, (pw, _) in self.users.items()})
            cfg["auth"] = {"htpasswd": {"realm": "pypod-test-registry", "path": str(path)}}
        elif self.auth == "token":
            assert self.token_server is not None
            cfg["auth"] = {"token": {"realm": self.token_server.realm,
                                     "service": self.token_server.service,
                                     "issuer": self.token_server.issuer,
                                     "rootcertbundle": str(self.token_server.rootcertbundle)}}
        return cfg

    def start(self) -> "Registry":
        if self.process is not None:
            return self
        if self._workdir_arg is not None:
            self.workdir = Path(self._workdir_arg)
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="pypod-test-registry-"))
        try:
            if self.tls:
                self.tls_files = make_tls_files(self.workdir / "tls")
            if self.auth == "token":
                self.token_server = TokenServer(
                    self.workdir / "token", self.users, header=self.token_header,
                    anonymous_pull=self.anonymous_pull, tls=self.tls_files).start()
            last_error = ""
            for _ in range(5):
                self.port = free_port()
                config = self.workdir / "config.yml"
                config.write_text(_yaml(self._config()) + "\n")
                with self.log_path.open("ab") as log:
                    self.process = subprocess.Popen(
                        [REGISTRY_BIN, "serve", str(config)], stdin=subprocess.DEVNULL,
                        stdout=log, stderr=subprocess.STDOUT, preexec_fn=_set_pdeathsig)
                if self._wait_ready():
                    return self
                last_error = self.log()[-2000:]
                self._stop_process()
                if "address already in use" not in last_error:
                    break
            raise RuntimeError(f"docker-registry did not start:\n{last_error}")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        ctx = client_ssl_context(self.ca_file) if self.tls else None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if ctx:
                    conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2,
                                                       context=ctx)
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        return False

    def _stop_process(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.last_pid = proc.pid

    def stop(self) -> None:
        """Stops the registry (terminate, wait, kill) and the token server,
        and removes the work directory (unless one was given)."""
        self._stop_process()
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None
        if self.workdir is not None and self._workdir_arg is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (or is a zombie, i.e. has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except FileNotFoundError:
        return True


# --------------------------------------------------------------------------
# Fault-injecting proxy
# --------------------------------------------------------------------------

@dataclass
class ProxyRequest:
    method: str
    path: str
    status: int | None       # None when the connection was reset
    fault: str | None        # the fault applied, if any


@dataclass
class _Fault:
    kind: str                          # "status", "reset", "corrupt", "truncate", "delay"
    remaining: int | None              # None = every matching request
    match: Callable[[str, str], bool]
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    keep: float = 0.5


def _matcher(method: str | None, path_contains: str | None) -> Callable[[str, str], bool]:
    def match(m: str, p: str) -> bool:
        return (method is None or m == method) and (path_contains is None or path_contains in p)
    return match


_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                "te", "trailers", "transfer-encoding", "upgrade", "content-length"}


class FaultProxy:
    """A plain-HTTP reverse proxy on 127.0.0.1 in front of a registry.

    Faults apply to the next matching requests (``n=None``: to all of them)::

        proxy.fail_next(2, 503)                      # two 503s, then pass through
        proxy.fail_next(1, 429, retry_after="1")
        proxy.reset_next(1, path_contains="/blobs/") # connection reset (RST)
        proxy.corrupt_blob(digest)                   # flip a byte in that blob's body
        proxy.truncate_blob(digest)                  # send half of it, then FIN
        proxy.delay_next(1, 2.0)

    ``.requests`` lists what was seen; ``count(method, path_contains)``.
    The registry's Location headers point at the proxy (it forwards Host and
    sets X-Forwarded-Proto/Host).
    """

    def __init__(self, upstream_url: str, *, ca_file: Path | None = None):
        self.upstream = urllib.parse.urlsplit(upstream_url)
        self.ca_file = ca_file
        self.requests: list[ProxyRequest] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_registry(cls, registry: Registry) -> "FaultProxy":
        return cls(registry.url, ca_file=registry.ca_file)

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str = "latest") -> str:
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag}"

    # -- fault programming ----------------------------------------------
    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def fail_next(self, n: int | None = 1, status: int = 503, *, method: str | None = None,
                  path_contains: str | None = None, retry_after: str | None = None) -> None:
        self._add(_Fault("status", n, _matcher(method, path_contains), status=status,
                         retry_after=retry_after))

    def reset_next(self, n: int | None = 1, *, method: str | None = None,
                   path_contains: str | None = None) -> None:
        self._add(_Fault("reset", n, _matcher(method, path_contains)))

    def delay_next(self, n: int | None = 1, seconds: float = 1.0, *,
                   method: str | None = None, path_contains: str | None = None) -> None:
        self._add(_Fault("delay", n, _matcher(method, path_contains), seconds=seconds))

    def corrupt_blob(self, digest: str, n: int | None = None) -> None:
        """GETs of blob ``digest`` return the right length with one byte flipped."""
        self._add(_Fault("corrupt", n, _matcher("GET", f"/blobs/{digest}")))

    def truncate_blob(self, digest: str, n: int | None = None, keep: float = 0.5) -> None:
        """GETs of blob ``digest`` announce the full length, send ``keep`` of it, close."""
        self._add(_Fault("truncate", n, _matcher("GET", f"/blobs/{digest}"), keep=keep))

    def clear(self) -> None:
        """Drops pending faults and the request log."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        match = _matcher(method, path_contains)
        return sum(1 for r in list(self.requests) if match(r.method, r.path))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # -- serving --------------------------------------------------------
    def _upstream_connection(self) -> http.client.HTTPConnection:
        u = self.upstream
        if u.scheme == "https":
            return http.client.HTTPSConnection(u.hostname, u.port, timeout=60,
                                               context=client_ssl_context(self.ca_file))
        return http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def start(self) -> "FaultProxy":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def log_message(self, *args):
                pass

            def finish(self):
                try:
                    super().finish()
                except (OSError, ValueError):
                    pass

            def _read_body(self) -> bytes | None:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = self.headers.get("Content-Length")
                return self.rfile.read(int(length)) if length else None

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _close(self) -> None:
                # A clean FIN, so that the client sees a short body.
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _record(self, status, fault):
                owner.requests.append(ProxyRequest(self.command, self.path, status, fault))

            def _handle(self):
                body = self._read_body()
                fault = owner._take_fault(self.command, self.path)
                kind = fault.kind if fault else None
                if kind == "delay":
                    time.sleep(fault.seconds)
                if kind == "reset":
                    self._record(None, kind)
                    return self._reset()
                if kind == "status":
                    payload = json.dumps({"errors": [{"code": "UNAVAILABLE",
                                                      "message": "injected by FaultProxy"}]})
                    data = payload.encode()
                    self._record(fault.status, kind)
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_HEADERS}
                headers["X-Forwarded-Proto"] = "http"
                headers["X-Forwarded-Host"] = self.headers.get("Host", owner.host)
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn = owner._upstream_connection()
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read() if self.command != "HEAD" else b""
                finally:
                    conn.close()
                # Recorded before replying, so a client that has its answer sees it counted.
                self._record(resp.status, kind)
                self.send_response(resp.status, resp.reason)
                for k, v in resp.headers.items():
                    if k.lower() not in _HOP_HEADERS:
                        self.send_header(k, v)
                length = resp.headers.get("Content-Length") if self.command == "HEAD" \
                    else str(len(data))
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                if kind == "corrupt" and resp.status == 200 and data:
                    buf = bytearray(data)
                    buf[len(buf) // 2] ^= 0xFF
                    data = bytes(buf)
                if kind == "truncate" and resp.status == 200 and data:
                    self.wfile.write(data[: int(len(data) * fault.keep)])
                    self.wfile.flush()
                    return self._close()
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="pypod-test-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# repo in the registry -> key in TestImages.images; all tagged "latest".
REGISTRY_REPOS = {
    "test/busybox": "busybox",
    "test/layered": "layered",
    "test/layered-zstd": "layered_zstd",
    "test/layered-none": "layered_none",
    "test/configured": "configured",
    "test/multiarch": "multiarch",
    "test/busybox-docker": "busybox_docker",
    "test/multiarch-docker": "multiarch_docker",
}
