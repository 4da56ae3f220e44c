"""Registry credentials from Docker-style auth files.

The format is Docker's ``config.json`` / containers' ``auth.json``::

    {"auths": {"registry.example.com": {"auth": "<base64 of user:password>"},
               "registry.example.com/team/app": {"username": "u", "password": "p"},
               "https://index.docker.io/v1/": {"auth": "..."}}}

Keys are a host (``host[:port]``) optionally followed by a repository path prefix; the most
specific key wins. Keys written with a scheme (``https://host/v1/``, Docker's legacy form) name
only their host. ``docker.io``, ``index.docker.io`` and ``registry-1.docker.io`` are one registry.
Entries without usable credentials (``{}`` left by a ``credsStore``) are ignored; credential
helpers and identity tokens are not supported.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import UsageError

Credentials = tuple[str, str]

_DOCKER_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER = "docker.io"


def default_auth_paths() -> list[Path]:
    """Where credentials are looked for when no file is named, highest priority first."""
    paths: list[Path] = []
    if os.environ.get("PYPOD_AUTH_FILE"):
        paths.append(Path(os.environ["PYPOD_AUTH_FILE"]))
    paths.append(Path("/etc/pypod/auth.json"))
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = os.path.expanduser("~")
    if not home.startswith("~"):  # unexpanded: no $HOME and no passwd entry
        paths.append(Path(home) / ".docker" / "config.json")
    return paths


def load_auths(path: Path | None = None) -> dict[str, Credentials]:
    """Read credentials, keyed by normalized ``host[/path]``.

    With ``path``, that file must exist. Without, every file of :func:`default_auth_paths` that
    exists is read and merged, an earlier file winning for a key both define.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"auth file {path} does not exist")
        return _read(path)
    merged: dict[str, Credentials] = {}
    for p in default_auth_paths():
        if p.is_file():
            for key, creds in _read(p).items():
                merged.setdefault(key, creds)
    return merged


def credentials_for(auths: Mapping[str, Credentials], host: str,
                    repository_path: str) -> Credentials | None:
    """The credentials for ``repository_path`` on ``host``: ``host/ns/repo`` beats ``host/ns``
    beats ``host``. ``None`` when nothing matches (anonymous access)."""
    if not auths:
        return None
    table = {normalize_key(k): v for k, v in auths.items()}
    host = _normalize_host(host)
    parts = [p for p in repository_path.strip("/").split("/") if p]
    for n in range(len(parts), -1, -1):
        key = "/".join([host, *parts[:n]])
        if key in table:
            return table[key]
    return None


def normalize_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``Quay.io/ns/`` -> ``quay.io/ns``."""
    key = key.strip()
    stripped = key
    for scheme in ("https://", "http://"):
        if stripped.lower().startswith(scheme):
            stripped = stripped[len(scheme):]
            break
    host, _, path = stripped.partition("/")
    if stripped != key:  # a URL-style key names a host, whatever path (/v1/, /v2/) follows
        path = ""
    host = _normalize_host(host)
    path = path.strip("/")
    return f"{host}/{path}" if path else host


def _normalize_host(host: str) -> str:
    host = host.strip().lower()
    return _DOCKER if host in _DOCKER_ALIASES else host


def _read(path: Path) -> dict[str, Credentials]:
    try:
        raw = json.loads(path.read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read auth file {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"auth file {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"auth file {path}: expected a JSON object")
    auths = raw.get("auths", {})
    if not isinstance(auths, dict):
        raise UsageError(f"auth file {path}: \"auths\" must be an object")
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise UsageError(f"auth file {path}: entry {key!r} must be an object")
        creds = _entry_credentials(path, key, entry)
        if creds is not None:
            out.setdefault(normalize_key(key), creds)
    return out


def _entry_credentials(path: Path, key: str, entry: dict) -> Credentials | None:
    encoded = entry.get("auth")
    if encoded:
        if not isinstance(encoded, str):
            raise UsageError(f"auth file {path}: entry {key!r}: \"auth\" must be a string")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise UsageError(f"auth file {path}: entry {key!r}: \"auth\" is not base64 of user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise UsageError(f"auth file {path}: entry {key!r}: \"auth\" is not base64 of user:password")
        return user, password
    user, password = entry.get("username"), entry.get("password")
    if user or password:
        if not isinstance(user, str) or not user or not isinstance(password, str):
            raise UsageError(f"auth file {path}: entry {key!r}: username and password must be strings")
        return user, password
    return None
