"""CRI ids, derived from the engine's names so that nothing maps them but arithmetic.

- A sandbox id is its pod's UUID, as ``pypod list`` shows it.
- A container id is 64 hex digits: 32 of ``sha256(uuid/app)`` then the pod UUID's 32. The tail
  finds the pod, the head picks the app among the pod's apps (hashing each name). The head comes
  first so that crictl's 13-character short ids differ between containers of one pod.
- An app name is the CRI container name made a valid pypod name, plus ``-<attempt>``: the kubelet
  never creates the same (name, attempt) twice in a sandbox, and pypod refuses duplicate app
  names, which is the CRI's name reservation for free.
"""

from __future__ import annotations

import hashlib
import re

_HEX64 = re.compile(r"[0-9a-f]{64}")
_INVALID = re.compile(r"[^a-z0-9._-]+")
MAX_APP_NAME = 63


def container_id(uuid: str, app: str) -> str:
    return app_hash(uuid, app) + uuid.replace("-", "")


def app_hash(uuid: str, app: str) -> str:
    return hashlib.sha256(f"{uuid}/{app}".encode()).hexdigest()[:32]


def split_container_id(cid: str) -> tuple[str, str] | None:
    """``(pod uuid, app hash)`` of a well-formed container id, else None."""
    if not _HEX64.fullmatch(cid):
        return None
    h = cid[32:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", cid[:32]


def app_name(name: str, attempt: int) -> str:
    """A pypod app name for CRI container ``name`` (attempt ``attempt``)."""
    suffix = f"-{attempt}"
    base = _INVALID.sub("-", name.lower()).strip("._-")
    if base != name or len(base) + len(suffix) > MAX_APP_NAME:
        tag = hashlib.sha256(name.encode()).hexdigest()[:8]
        base = base[:MAX_APP_NAME - len(suffix) - len(tag) - 1].rstrip("._-")
        base = f"{base}-{tag}" if base else f"c{tag}"
    return base + suffix
