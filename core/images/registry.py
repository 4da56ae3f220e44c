"""Pull side of the Docker Registry HTTP API v2 / OCI distribution spec.

:class:`RegistryClient` fetches manifests and blobs, verifying every byte against its digest.

Endpoints. ``config.registry_for(ref.repository)`` picks the ``[[registry]]`` entry whose prefix
matches. Its mirrors are tried first, in order, then its ``location`` (or the prefix itself);
mirror and location both replace the matched prefix (``prefix = "registry.k8s.io"``,
``location = "127.0.0.1:5000/k8s"``: ``registry.k8s.io/pause`` is ``k8s/pause`` on
``127.0.0.1:5000``). A mirror that fails in any way (unreachable, TLS, 401, 404, 5xx after
retries, wrong bytes) hands over to the next endpoint; the origin's error is the one reported.
A mirror found unreachable is skipped for the rest of the client's life. ``docker.io``'s API
host is ``registry-1.docker.io``.

Transport security. Every endpoint speaks verified HTTPS (the system CAs, plus the entry's
``ca_file``) unless configured ``insecure``. An insecure endpoint gets what Docker's and
containers' ``insecure`` give: HTTPS without certificate verification is tried first (one
``/v2/`` probe per host) and plain HTTP is used when the TLS handshake fails. Nothing else ever
speaks plain HTTP: redirects to ``http://`` are refused for secure endpoints, and credentials
are never sent to an ``http://`` token realm on behalf of a secure endpoint. Proxy environment
variables are not consulted. ``--insecure-options=tls`` (``config.insecure``) turns certificate
verification off for every endpoint of that one command, still over HTTPS.

Authentication. Anonymous first; on ``401`` the ``WWW-Authenticate`` challenge decides: Basic
sends the credentials found for the host actually contacted (a mirror's own host, see
:func:`pypod.images.auth.credentials_for`); Bearer fetches a token from the realm
(``?service=..&scope=repository:<path>:pull``, with the Basic credentials when there are any)
and caches it per (host, scope) until ``expires_in``. Later requests to the host authenticate
up front.

Retries (tenacity). Connection failures, resets, timeouts, 408, 429 and 5xx are retried with
jittered exponential backoff; a ``Retry-After`` on those answers is honoured up to a cap; other 4xx are
never retried. :class:`RetryPolicy` bounds the attempts and the total time. A blob download
that breaks mid-stream resumes with a ``Range`` request (or starts over if the registry
ignores it), keeping what was hashed so far.

One pooled ``httpx.Client`` serves all requests and may be used from several threads at once.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import hashlib
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn
from urllib.parse import quote

import httpx
import tenacity

from .. import __version__
from ..config import Config
from ..errors import (DigestMismatch, ImageError, LimitExceeded, NotFound, RegistryError,
                      TransientRegistryError, UsageError)
from .auth import Credentials, credentials_for, load_auths
from .reference import Reference

log = logging.getLogger(__name__)

DOCKER_HUB_API_HOST = "registry-1.docker.io"
_DOCKER_HOSTS = frozenset({"docker.io", "index.docker.io"})
_BLOB_DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_ERROR_BODY_MAX = 64 << 10
_TOKEN_BODY_MAX = 1 << 20
_MAX_REDIRECTS = 5
_TLS_EXT = "pypod.tls"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TOKEN_MARGIN = 10.0  # seconds: a cached token is renewed this long before it expires

__all__ = ["DOCKER_HUB_API_HOST", "Fetched", "RegistryClient", "RegistryEndpoint", "RegistryTLSError",
           "RegistryUnreachable", "RetryPolicy", "Unauthorized", "UnknownHost", "resolve_endpoints"]


# ---------------------------------------------------------------------------------------------
# errors (all RegistryError, so callers may catch that alone)

class Unauthorized(RegistryError):
    """The registry (or its token server) refused us after authenticating, or wants credentials
    we do not have."""


class RegistryUnreachable(TransientRegistryError):
    """Connection refused, reset, timed out: the endpoint may come back, so it is retried."""


class UnknownHost(RegistryError):
    """The endpoint's host name does not resolve."""


class RegistryTLSError(RegistryError):
    """Certificate verification or the TLS handshake failed; retrying will not help."""


class _RetryLater(TransientRegistryError):
    """A 408/429/5xx answer, with the delay the registry asked for, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------
# public data types

@dataclass
class Fetched:
    """A manifest as served: its bytes, their media type and their sha256 digest."""

    data: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry transient failures of one request (or one blob download)."""

    attempts: int = 4             # tries in all, the first one included
    initial_wait: float = 0.5     # before the first retry; doubled on each retry (with jitter)
    max_wait: float = 5.0         # cap on one backoff wait
    max_retry_after: float = 10.0  # cap on a server's Retry-After
    deadline: float = 60.0        # no retry once this many seconds have passed since the first try


@dataclass(frozen=True)
class RegistryEndpoint:
    """A place to fetch one repository from: ``host`` as contacted, ``path`` as named there."""

    host: str
    path: str
    insecure: bool = False
    ca_file: str | None = None
    mirror: bool = False
    skip_verify: bool = False     # --insecure-options=tls: HTTPS without certificate checks

    @property
    def tls(self) -> tuple[bool, str | None]:
        """(verify certificates?, extra CA file): the key of the connection pool to use."""
        verify = not (self.insecure or self.skip_verify)
        return (verify, self.ca_file if verify else None)

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


def resolve_endpoints(config: Config, ref: Reference) -> list[RegistryEndpoint]:
    """The endpoints to try for ``ref``, in order: the configured mirrors, then the origin."""
    reg = config.registry_for(ref.repository)
    skip = "tls" in config.insecure
    if reg is None:
        return [_endpoint(ref.repository, insecure=False, ca_file=None, mirror=False, skip_verify=skip)]
    rest = ref.repository[len(reg.prefix.rstrip("/")):]  # "" or "/more/path"
    endpoints = [_endpoint(m.location.rstrip("/") + rest, insecure=m.insecure, ca_file=m.ca_file, mirror=True,
                           skip_verify=skip)
                 for m in reg.mirrors]
    endpoints.append(_endpoint((reg.location or reg.prefix).rstrip("/") + rest, insecure=reg.insecure,
                               ca_file=reg.ca_file, mirror=False, skip_verify=skip))
    return endpoints


def _endpoint(name: str, *, insecure: bool, ca_file: str | None, mirror: bool,
              skip_verify: bool = False) -> RegistryEndpoint:
    if "://" in name:
        raise UsageError(f"registry location {name!r}: write host[:port][/path], without a scheme")
    host, _, path = name.partition("/")
    if not host or not path:
        raise UsageError(f"registry location {name!r} does not name a host and a repository path")
    if host.lower() in _DOCKER_HOSTS:
        host = DOCKER_HUB_API_HOST
        if "/" not in path:
            path = f"library/{path}"
    return RegistryEndpoint(host, path, insecure, ca_file, mirror, skip_verify)


# ---------------------------------------------------------------------------------------------
# the client

@dataclass
class _Challenge:
    scheme: str                   # "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class _Download:
    """One blob download's progress, kept across retries and endpoints."""

    algorithm: str
    hasher: object = None
    written: int = 0
    reported: int = 0             # high-water mark of bytes passed to progress()

    def restart(self, f: IO[bytes]) -> None:
        f.seek(0)
        f.truncate()
        self.hasher = hashlib.new(self.algorithm)
        self.written = 0


class RegistryClient:
    """Fetches manifests and blobs from registries as configured in ``config``.

    ``auths`` maps ``host[/path]`` to (user, password); when ``None`` they are read from
    ``config.auth_file`` or the default auth files. ``timeout`` bounds connecting and each read.
    """

    def __init__(self, config: Config, auths: Mapping[str, Credentials] | None = None, *,
                 timeout: float = 30.0, retry: RetryPolicy | None = None):
        self.config = config
        self._auths: dict[str, Credentials] = dict(load_auths(config.auth_file) if auths is None else auths)
        self._retry = retry or RetryPolicy()
        self._transport = _TLSRouter()
        self._http = httpx.Client(
            transport=self._transport, timeout=httpx.Timeout(timeout), follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": f"pypod/{__version__}", "Accept-Encoding": "identity"})
        self._lock = threading.Lock()          # guards the dicts below
        self._token_lock = threading.Lock()    # one token fetch at a time
        self._schemes: dict[str, str] = {}     # insecure host -> "https" | "http"
        self._challenges: dict[str, _Challenge] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._down: set[str] = set()           # mirror hosts found unreachable

    # -- context manager ---------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API -----------------------------------------------------------------------------------

    def get_manifest(self, ref: Reference, accept: Sequence[str]) -> Fetched:
        """GET the manifest (or index) ``ref`` names, by digest when pinned, else by tag.

        Raises NotFound, DigestMismatch (pinned digest vs. bytes), LimitExceeded (over
        ``config.limits.max_manifest``), Unauthorized, or another RegistryError.
        """
        return self._on_endpoints(ref, lambda ep: self._manifest_at(ep, ref, accept))

    def fetch_blob(self, ref: Reference, digest: str, dest: Path, *, size: int | None = None,
                   progress: Callable[[int], None] | None = None) -> None:
        """Stream blob ``digest`` of ``ref``'s repository into ``dest``, verifying it.

        ``size``, when known, is enforced as the download goes. ``progress(n)`` is called with
        the number of new bytes per chunk (never twice for the same offset, across restarts).
        On any failure ``dest`` is removed; on wrong content the error is DigestMismatch.
        """
        if not _BLOB_DIGEST_RE.fullmatch(digest):
            raise ImageError(f"unsupported or malformed blob digest {digest!r}")
        dest = Path(dest)
        state = _Download(digest.partition(":")[0])
        try:
            self._on_endpoints(ref, lambda ep: self._blob_at(ep, digest, dest, size, progress, state))
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    # -- endpoints, retries ----------------------------------------------------------------------

    def _on_endpoints(self, ref: Reference, op: Callable[[RegistryEndpoint], object]):
        endpoints = resolve_endpoints(self.config, ref)
        for ep in endpoints:
            if ep.mirror:
                with self._lock:
                    if ep.host in self._down:
                        continue
            try:
                return op(ep)
            except (RegistryError, NotFound, ImageError) as e:
                if not ep.mirror:
                    raise
                if isinstance(e, (RegistryUnreachable, UnknownHost, RegistryTLSError)):
                    with self._lock:
                        self._down.add(ep.host)
                log.log(logging.INFO if isinstance(e, NotFound) else logging.WARNING,
                        "mirror %s failed, trying the next endpoint: %s", ep.host, e)
        raise AssertionError("unreachable: the origin is always the last endpoint")  # pragma: no cover

    def _retrying(self) -> tenacity.Retrying:
        p = self._retry
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientRegistryError),
            stop=tenacity.stop_after_attempt(max(1, p.attempts)) | tenacity.stop_after_delay(p.deadline),
            wait=self._backoff, reraise=True, before_sleep=_log_retry)

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        p = self._retry
        wait = min(p.max_wait, p.initial_wait * 2 ** (state.attempt_number - 1))
        wait *= 0.5 + random.random() / 2
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, min(retry_after, p.max_retry_after))
        return wait

    # -- manifests -------------------------------------------------------------------------------

    def _manifest_at(self, ep: RegistryEndpoint, ref: Reference, accept: Sequence[str]) -> Fetched:
        what = f"manifest {ref}"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        limit = self.config.limits.max_manifest
        data = b""
        content_type = ""
        for attempt in self._retrying():
            with attempt:
                resp = self._open(ep, f"manifests/{quote(ref.object, safe=':')}", headers, what)
                try:
                    content_type = resp.headers.get("content-type", "")
                    data = self._read_capped(resp, ep, limit, lambda: LimitExceeded(
                        f"{what} from {ep.host} exceeds the max_manifest limit of {limit} bytes"))
                finally:
                    resp.close()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.digest and digest != ref.digest:
            raise DigestMismatch(f"{what}: {ep.host} served content whose digest is {digest}")
        return Fetched(data, _media_type(content_type, data), digest)

    # -- blobs -----------------------------------------------------------------------------------

    def _blob_at(self, ep: RegistryEndpoint, digest: str, dest: Path, size: int | None,
                 progress: Callable[[int], None] | None, state: _Download) -> None:
        what = f"blob {digest}"
        with open(dest, "wb") as f:
            state.restart(f)
            for attempt in self._retrying():
                with attempt:
                    self._blob_attempt(ep, digest, f, size, progress, state)
        if size is not None and state.written != size:
            raise DigestMismatch(f"{what} from {ep.host}: expected {size} bytes, got {state.written}")
        actual = f"{state.algorithm}:{state.hasher.hexdigest()}"  # type: ignore[attr-defined]
        if actual != digest:
            raise DigestMismatch(f"{what} from {ep.host}: content has digest {actual}")

    def _blob_attempt(self, ep: RegistryEndpoint, digest: str, f: IO[bytes], size: int | None,
                      progress: Callable[[int], None] | None, state: _Download) -> None:
        what = f"blob {digest}"
        offset = state.written
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self._open(ep, f"blobs/{digest}", headers, what)
        try:
            if offset and resp.status_code == 206:
                if _content_range_start(resp.headers.get("content-range")) != offset:
                    state.restart(f)
                    raise _RetryLater(f"{what}: {ep.host} answered a resumed download with the wrong range")
                log.info("%s: resuming at byte %d", what, offset)
            elif offset:
                log.info("%s: %s ignored the range request, starting over", what, ep.host)
                state.restart(f)
            length = resp.headers.get("content-length", "")
            if size is not None and length.isdigit() and state.written + int(length) > size:
                raise DigestMismatch(f"{what} from {ep.host}: {state.written + int(length)} bytes announced, "
                                     f"expected {size}")
            with self._translate(ep, resp.request.url):
                for chunk in resp.iter_bytes():
                    if size is not None and state.written + len(chunk) > size:
                        raise DigestMismatch(f"{what} from {ep.host}: more than the expected {size} bytes")
                    f.write(chunk)
                    state.hasher.update(chunk)  # type: ignore[attr-defined]
                    state.written += len(chunk)
                    if progress is not None and state.written > state.reported:
                        progress(state.written - state.reported)
                        state.reported = state.written
        finally:
            resp.close()

    # -- one request -------------------------------------------------------------------------------

    def _open(self, ep: RegistryEndpoint, sub: str, headers: dict[str, str], what: str) -> httpx.Response:
        """One attempt at ``GET /v2/<path>/<sub>``, authenticating as needed and following
        redirects. Returns an open, streaming 2xx response; raises otherwise."""
        url = httpx.URL(f"{self._base_url(ep)}/v2/{quote(ep.path, safe='/')}/{sub}")
        auth = self._authorization(ep)
        resp = self._get(ep, url, headers, auth)
        if resp.status_code == 401:
            challenge = _pick_challenge(resp.headers.get_list("www-authenticate"))
            if challenge is None:
                self._raise_for(resp, ep, what)
            resp.close()
            with self._lock:
                self._challenges[ep.host] = challenge  # type: ignore[assignment]
            auth = self._authorization(ep, rejected=auth or "")
            if auth is None:
                raise Unauthorized(f"unauthorized: {ep.host} requires credentials for {ep.path} "
                                   f"and none are configured for it")
            resp = self._get(ep, url, headers, auth)
        if not 200 <= resp.status_code < 300:
            self._raise_for(resp, ep, what)
        return resp

    def _get(self, ep: RegistryEndpoint, url: httpx.URL, headers: Mapping[str, str],
             auth: str | None) -> httpx.Response:
        hdrs = dict(headers)
        if auth:
            hdrs["Authorization"] = auth
        for _ in range(_MAX_REDIRECTS + 1):
            request = self._http.build_request("GET", url, headers=hdrs, extensions={_TLS_EXT: ep.tls})
            with self._translate(ep, url):
                resp = self._http.send(request, stream=True)
            if resp.status_code not in _REDIRECTS or "location" not in resp.headers:
                return resp
            target = url.join(resp.headers["location"])
            resp.close()
            if target.scheme not in ("http", "https"):
                raise RegistryError(f"{ep.host} redirected to an unsupported URL {target}")
            if target.scheme == "http" and not ep.insecure:
                raise RegistryError(f"{ep.host} redirected to plain HTTP ({target.host}); refusing, "
                                    f"the registry is not configured insecure")
            if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
                hdrs.pop("Authorization", None)
            url = target
        raise RegistryError(f"{ep.host}: too many redirects")

    def _base_url(self, ep: RegistryEndpoint) -> str:
        if not ep.insecure:
            return f"https://{ep.host}"
        with self._lock:
            scheme = self._schemes.get(ep.host)
        if scheme is None:
            try:
                probe = self._get(ep, httpx.URL(f"https://{ep.host}/v2/"), {}, None)
                probe.close()
                scheme = "https"
            except RegistryTLSError as e:
                log.info("insecure registry %s: no TLS (%s), using plain HTTP", ep.host, e)
                scheme = "http"
            with self._lock:
                self._schemes[ep.host] = scheme
        return f"{scheme}://{ep.host}"

    @contextmanager
    def _translate(self, ep: RegistryEndpoint, url: httpx.URL) -> Iterator[None]:
        """Turn httpx's exceptions into one-line RegistryErrors."""
        try:
            yield
        except httpx.HTTPError as e:
            raise _transport_error(e, ep, url) from None

    def _raise_for(self, resp: httpx.Response, ep: RegistryEndpoint, what: str) -> NoReturn:
        status = resp.status_code
        try:
            message, codes = _error_details(resp)
        finally:
            resp.close()
        detail = f": {message}" if message else ""
        head = f"HTTP {status} {resp.reason_phrase}".rstrip()
        if status == 404 or codes & {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"}:
            raise NotFound(f"{what} not found at {ep}{detail or ' (' + head + ')'}")
        if status == 401:
            raise Unauthorized(f"unauthorized: {ep.host} refused access to {ep.path}{detail}")
        if status == 403:
            raise Unauthorized(f"denied: {ep.host} refused access to {ep.path}{detail}")
        if status in (408, 429) or status >= 500:
            raise _RetryLater(f"registry {ep.host} answered {head} for {what}{detail}",
                              _retry_after(resp.headers.get("retry-after")))
        raise RegistryError(f"registry {ep.host} answered {head} for {what}{detail}")

    # -- auth ----------------------------------------------------------------------------------

    def _authorization(self, ep: RegistryEndpoint, rejected: str | None = None) -> str | None:
        """The Authorization header for ``ep``, per the challenge learned from its host.
        ``rejected`` is a header the registry just refused: a new token is fetched unless
        another thread already replaced it."""
        with self._lock:
            challenge = self._challenges.get(ep.host)
        if challenge is None:
            return None
        creds = credentials_for(self._auths, ep.host, ep.path)
        if challenge.scheme == "basic":
            if creds is None:
                return None
            header = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            if rejected == header:
                raise Unauthorized(f"unauthorized: {ep.host} rejected the credentials for {ep.path}")
            return header
        return "Bearer " + self._token(ep, challenge, creds, rejected)

    def _token(self, ep: RegistryEndpoint, challenge: _Challenge, creds: Credentials | None,
               rejected: str | None) -> str:
        scope = f"repository:{ep.path}:pull"
        key = (ep.host, scope)
        with self._token_lock:
            with self._lock:
                cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic() and rejected != f"Bearer {cached[0]}":
                return cached[0]
            token, lifetime = self._fetch_token(ep, challenge, creds, scope)
            with self._lock:
                self._tokens[key] = (token, time.monotonic() + max(0.0, lifetime - min(_TOKEN_MARGIN, lifetime / 4)))
            return token

    def _fetch_token(self, ep: RegistryEndpoint, challenge: _Challenge, creds: Credentials | None,
                     scope: str) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"registry {ep.host} asked for a bearer token without naming a realm")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise RegistryError(f"registry {ep.host} named an invalid token realm {realm!r}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise RegistryError(f"registry {ep.host} named an invalid token realm {realm!r}")
        if url.scheme == "http" and creds and not ep.insecure:
            raise RegistryError(f"refusing to send credentials for {ep.host} to token server {url.host} over "
                                f"plain HTTP")
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params.append(("scope", scope))
        if creds:
            params.append(("account", creds[0]))
        auth = None
        if creds:
            auth = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        resp = self._get(ep, url.copy_merge_params(params), {"Accept": "application/json"}, auth)
        server = url.netloc.decode("ascii", "replace")
        if resp.status_code in (401, 403):
            message, _ = _error_details(resp)
            resp.close()
            whose = f"the credentials for {ep.host}" if creds else f"anonymous access to {ep.host}"
            raise Unauthorized(f"unauthorized: token server {server} rejected {whose}/{ep.path}"
                               + (f": {message}" if message else ""))
        if not 200 <= resp.status_code < 300:
            self._raise_for(resp, ep, f"token from {server}")
        try:
            body = self._read_capped(resp, ep, _TOKEN_BODY_MAX, lambda: RegistryError(
                f"token server {server} sent an oversized answer"))
        finally:
            resp.close()
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"token server {server} sent an invalid answer") from None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {server} sent no token")
        return token, lifetime

    # -- reading ----------------------------------------------------------------------------------

    def _read_capped(self, resp: httpx.Response, ep: RegistryEndpoint, limit: int,
                     too_big: Callable[[], Exception]) -> bytes:
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big()
        buf = bytearray()
        with self._translate(ep, resp.request.url):
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) > limit:
                    raise too_big()
        return bytes(buf)


# ---------------------------------------------------------------------------------------------
# transport: one httpx.Client, one connection pool per TLS setting

class _TLSRouter(httpx.BaseTransport):
    """Sends each request through the pool for the TLS setting its endpoint needs (verified with
    the system CAs, verified with an extra CA file, or unverified for insecure endpoints).
    httpx fixes TLS per transport, so a per-endpoint setting needs one pool per setting."""

    def __init__(self) -> None:
        self._pools: dict[tuple[bool, str | None], httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = request.extensions.get(_TLS_EXT, (True, None))
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = httpx.HTTPTransport(verify=_ssl_context(*key))
        return pool.handle_request(request)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def _ssl_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"cannot load registry ca_file {ca_file}: {getattr(e, 'strerror', None) or e}") from None
    return ctx


# ---------------------------------------------------------------------------------------------
# helpers

def _transport_error(exc: httpx.HTTPError, ep: RegistryEndpoint, url: httpx.URL) -> RegistryError:
    host = url.netloc.decode("ascii", "replace")
    where = f"registry {host}" if host == ep.host else f"{host} (for registry {ep.host})"
    tls = _cause(exc, ssl.SSLError)
    if isinstance(tls, ssl.SSLCertVerificationError):
        reason = tls.verify_message or tls.reason or str(tls)
        return RegistryTLSError(f"TLS verification failed for host {host}: {reason}; configure ca_file or insecure")
    if tls is not None:
        reason = tls.reason or str(tls)
        return RegistryTLSError(f"TLS handshake with {host} failed ({reason}); if it speaks plain HTTP, "
                                f"configure it insecure")
    if isinstance(exc, httpx.TimeoutException):
        return RegistryUnreachable(f"cannot reach {where}: timed out")
    if _cause(exc, socket.gaierror) is not None:
        return UnknownHost(f"cannot reach {where}: unknown host")
    oserr = _cause(exc, OSError)
    reasons = {errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset",
               errno.EHOSTUNREACH: "no route to host", errno.ENETUNREACH: "network unreachable",
               errno.ECONNABORTED: "connection aborted", errno.EPIPE: "connection closed"}
    if oserr is not None and oserr.errno in reasons:
        return RegistryUnreachable(f"cannot reach {where}: {reasons[oserr.errno]}")
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, (httpx.UnsupportedProtocol, httpx.ProxyError)):
        return RegistryUnreachable(f"connection to {where} failed: {_one_line(str(exc)) or type(exc).__name__}")
    return RegistryError(f"request to {where} failed: {_one_line(str(exc)) or type(exc).__name__}")


def _cause(exc: BaseException, kind: type) -> BaseException | None:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 16:
        if isinstance(cur, kind):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _error_details(resp: httpx.Response) -> tuple[str, set[str]]:
    """The registry's error message (from ``{"errors": [{"code", "message"}]}``) and codes."""
    buf = bytearray()
    try:
        for chunk in resp.iter_bytes():
            buf += chunk
            if len(buf) > _ERROR_BODY_MAX:
                break
    except httpx.HTTPError:
        pass
    codes: set[str] = set()
    try:
        doc = json.loads(bytes(buf))
        messages = []
        for err in doc.get("errors") or []:
            code = str(err.get("code") or "")
            codes.add(code.upper())
            messages.append(str(err.get("message") or code.lower().replace("_", " ")))
        if not messages and doc.get("details"):  # some token servers
            messages.append(str(doc["details"]))
        return _one_line("; ".join(messages)), codes
    except (ValueError, AttributeError, TypeError):
        text = buf.decode("utf-8", "replace")
        if resp.headers.get("content-type", "").startswith("text/plain"):
            return _one_line(text), codes
        return "", codes


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _pick_challenge(values: list[str]) -> _Challenge | None:
    challenges = parse_challenges(values)
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})")


def parse_challenges(values: list[str]) -> list[_Challenge]:
    """Parse ``WWW-Authenticate`` values (RFC 7235) into challenges with lower-cased schemes
    and parameter names."""
    out: list[_Challenge] = []
    for value in values:
        pos, current = 0, None
        while pos < len(value):
            if value[pos] in ", \t":
                pos += 1
                continue
            m = _PARAM_RE.match(value, pos) if current is not None else None
            if m:
                raw = m.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                current.params[m.group(1).lower()] = raw  # type: ignore[union-attr]
                pos = m.end()
                continue
            m = _SCHEME_RE.match(value, pos)
            if not m:
                break
            current = _Challenge(m.group(1).lower())
            out.append(current)
            pos = m.end()
    return out


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_range_start(value: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*", value or "")
    return int(m.group(1)) if m else None


_GENERIC_TYPES = frozenset({"", "application/octet-stream", "text/plain", "application/json"})


def _media_type(content_type: str, data: bytes) -> str:
    """The Content-Type without parameters; when that says nothing, the manifest's mediaType."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _GENERIC_TYPES:
        try:
            doc = json.loads(data)
        except ValueError:
            return media_type
        if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
            return doc["mediaType"]
    return media_type


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.info("attempt %d failed (%s); retrying in %.2fs", state.attempt_number, exc, wait)
