"""User namespaces for ``--private-users`` pods: host id ranges and idmapped rootfs layers.

**Ranges.** A pod's root maps to an unprivileged host range of :data:`SIZE` (65536) uids and
gids. Ranges come from the ``pypod`` entries of ``/etc/subuid`` and ``/etc/subgid`` when both
exist (the slots are taken in order, uid and gid slots paired), else from pypod's own range:
``1<<20`` upwards in steps of 65536, below ``1<<31``. A range is claimed host-wide, so pods of
different data dirs (different pypod users, parallel test runs) never share one: a claim is the
file ``<registry>/<first uid>`` (default registry ``/run/pypod/userns``) naming the pod and its
data dir, created under the registry's ``pypod.lock``. The pod records its range in
``<pod dir>/userns.json`` (so every later command reads it without the registry). ``free`` drops
the claim at gc; a claim whose pod no longer exists in its data dir (removed without pypod, or a
crash between gc and free) is reclaimed by the next allocation. The registry lives on /run: after
a reboot no pod runs, and exited pods keep their record (the ids of the files they left).

**Rootfs.** The image's layers are shared, read-only and owned by the image's ids (0 on disk
for root). For a pod with private users each layer is bind-mounted *idmapped* through the pod's
mapping (open_tree + mount_setattr(MOUNT_ATTR_IDMAP), :func:`pypod.mount.idmapped_bind`), the
overlay is mounted on those (overlayfs takes its own private clones of its layers, so the
idmapped binds are detached at once), and the upper dir is plain: files the app creates or copies
up are written with the app's *host* ids (the mapped range), as the issue asks and as `ls -ln`
on the host shows. Nothing is copied or chowned: the cost is one fork (to make a user namespace
carrying the mapping) plus three syscalls per layer; see docs/security.md for the measurements.
Where the kernel or the layers' filesystem refuses idmapped mounts, :func:`shifted_copies` is the
fallback: a per-app copy of the layers with every owner shifted (``cp -a`` then lchown), as rkt
did at extract time — correct, but costs a full copy of the image per app.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import PypodError

SIZE = 65536
OWN_FIRST = 1 << 20
OWN_LIMIT = 1 << 31
REGISTRY = "/run/pypod/userns"
RECORD = "userns.json"
LOCK = "pypod.lock"
#: Set to force the shifted-copy fallback (tests, or a filesystem without idmapped mounts).
NO_IDMAP_ENV = "PYPOD_USERNS_NO_IDMAP"


class UsernsError(PypodError):
    """No free range, or the kernel refused a user namespace operation."""


@dataclass(frozen=True)
class Range:
    """The host ids a pod's ids 0..size-1 map to."""

    uid: int
    gid: int
    size: int = SIZE

    def uid_mappings(self) -> list[dict]:
        return [{"containerID": 0, "hostID": self.uid, "size": self.size}]

    def gid_mappings(self) -> list[dict]:
        return [{"containerID": 0, "hostID": self.gid, "size": self.size}]

    def to_dict(self) -> dict:
        return {"uid": self.uid, "gid": self.gid, "size": self.size}


# -- the pool and the registry ----------------------------------------------------------------
def _sub_entries(path: str, name: str = "pypod") -> list[tuple[int, int]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] == name and parts[1].isdigit() and parts[2].isdigit():
                    out.append((int(parts[1]), int(parts[2])))
    except FileNotFoundError:
        pass
    return out


def slots(subuid: str = "/etc/subuid", subgid: str = "/etc/subgid") -> tuple[list[tuple[int, int]] | None, int]:
    """(explicit (uid, gid) slots from the ``pypod`` subordinate id entries, or None for pypod's
    own range; the number of slots)."""
    u = [s + k * SIZE for s, c in _sub_entries(subuid) for k in range(c // SIZE)]
    g = [s + k * SIZE for s, c in _sub_entries(subgid) for k in range(c // SIZE)]
    if u and g:
        pairs = list(zip(u, g))
        return pairs, len(pairs)
    return None, (OWN_LIMIT - OWN_FIRST) // SIZE


def _slot(pairs: list[tuple[int, int]] | None, i: int) -> Range:
    if pairs is not None:
        return Range(*pairs[i])
    base = OWN_FIRST + i * SIZE
    return Range(base, base)


def _pod_exists(data_dir: str, uuid: str) -> bool:
    from .state import DIRS

    return any(os.path.isdir(os.path.join(data_dir, "pods", d, uuid)) for d in DIRS)


def _claims(registry: str) -> dict[int, dict]:
    out = {}
    for name in os.listdir(registry):
        if name.isdigit():
            try:
                with open(os.path.join(registry, name)) as f:
                    out[int(name)] = json.load(f)
            except (OSError, ValueError):
                out[int(name)] = {}
    return out


def load(pod_dir: str | os.PathLike) -> Range | None:
    """The range recorded for a pod, None if it has none."""
    try:
        with open(os.path.join(pod_dir, RECORD)) as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    return Range(int(d["uid"]), int(d["gid"]), int(d.get("size", SIZE)))


def allocate(pod_dir: str | os.PathLike, uuid: str, data_dir: str | os.PathLike, *,
             registry: str = REGISTRY, subuid: str = "/etc/subuid", subgid: str = "/etc/subgid") -> Range:
    """Claim a free range for the pod (idempotent: a pod that has one keeps it)."""
    from ..lock import locked
    from .fsutil import write_atomic

    have = load(pod_dir)
    data_dir = os.path.abspath(data_dir)
    os.makedirs(registry, mode=0o700, exist_ok=True)
    with locked(os.path.join(registry, LOCK)):
        claims = _claims(registry)
        if have is not None:
            if have.uid not in claims:
                _write_claim(registry, have, uuid, data_dir)
            return have
        for base, claim in list(claims.items()):
            if claim.get("pod") and claim.get("dataDir") and not _pod_exists(claim["dataDir"], claim["pod"]):
                _unlink(os.path.join(registry, str(base)))
                del claims[base]
        pairs, count = slots(subuid, subgid)
        taken_u = set(claims)
        taken_g = {c.get("gid", b) for b, c in claims.items()}
        for i in range(count):
            r = _slot(pairs, i)
            if r.uid not in taken_u and r.gid not in taken_g:
                break
        else:
            src = "/etc/subuid and /etc/subgid (user pypod)" if pairs is not None else "pypod's own range"
            raise UsernsError(f"no free user namespace range of {SIZE} ids left in {src}")
        _write_claim(registry, r, uuid, data_dir)
        write_atomic(os.path.join(pod_dir, RECORD), json.dumps(r.to_dict()).encode())
    return r


def record(pod_dir: str | os.PathLike, r: Range) -> Range:
    """Record a range the pod's creator chose (no claim: the creator keeps ranges apart)."""
    from .fsutil import write_atomic

    write_atomic(os.path.join(pod_dir, RECORD), json.dumps(r.to_dict()).encode())
    return r


def _write_claim(registry: str, r: Range, uuid: str, data_dir: str) -> None:
    from .fsutil import write_atomic

    doc = {"pod": uuid, "dataDir": data_dir, "uid": r.uid, "gid": r.gid, "size": r.size}
    write_atomic(os.path.join(registry, str(r.uid)), json.dumps(doc).encode(), mode=0o600)


def free(pod_dir: str | os.PathLike, uuid: str, *, registry: str = REGISTRY) -> None:
    """Drop the pod's claim (its record goes with the pod dir)."""
    r = load(pod_dir)
    if r is None or not os.path.isdir(registry):
        return
    from ..lock import locked

    with locked(os.path.join(registry, LOCK)):
        path = os.path.join(registry, str(r.uid))
        try:
            with open(path) as f:
                owner = json.load(f).get("pod")
        except (OSError, ValueError):
            return
        if owner == uuid:
            _unlink(path)


def claimed(registry: str = REGISTRY) -> dict[int, dict]:
    """The current claims (first uid → claim), for status and tests."""
    return _claims(registry) if os.path.isdir(registry) else {}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- namespaces and idmapped layers -----------------------------------------------------------
@contextlib.contextmanager
def userns_fd(r: Range) -> Iterator[int]:
    """An fd of a fresh user namespace carrying ``r``'s mapping (for MOUNT_ATTR_IDMAP). A child
    unshares it and exits once we hold the fd; the namespace lives while the fd is open."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(ready_r)
            os.close(go_w)
            ok = libc.unshare(0x10000000) == 0  # CLONE_NEWUSER
            os.write(ready_w, b"1" if ok else b"0")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    fd = -1
    try:
        if os.read(ready_r, 1) != b"1":
            raise UsernsError("cannot create a user namespace (unshare CLONE_NEWUSER failed)")
        for name, hid in (("uid_map", r.uid), ("gid_map", r.gid)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(f"0 {hid} {r.size}\n")
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.write(go_w, b"x")
        os.close(go_w)
        os.waitpid(pid, 0)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def idmapped_layers(layers: Sequence[Path], work: Path, r: Range) -> Iterator[list[Path]]:
    """Layer paths, bottom first, that show ``layers`` through ``r``'s mapping, for the overlay
    to be mounted on while the block runs; they are detached afterwards (the overlay keeps its
    own clones). Raises OSError where the kernel or filesystem refuses idmapped mounts."""
    from .. import mount

    work.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    try:
        with userns_fd(r) as nsfd:
            for i, layer in enumerate(layers):
                target = work / str(i)
                target.mkdir(exist_ok=True)
                mount.idmapped_bind(layer, target, nsfd)
                done.append(target)
        yield list(done)
    finally:
        for target in reversed(done):
            try:
                mount.umount(target)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)


def idmap_supported() -> bool:
    return not os.environ.get(NO_IDMAP_ENV)


def shifted_copies(layers: Sequence[Path], dest: Path, r: Range) -> list[Path]:
    """The fallback: a copy of each layer with every owner moved into ``r`` (idempotent: kept
    copies are reused). Costs the image's size in disk and a full copy per app."""
    out = []
    dest.mkdir(parents=True, exist_ok=True)
    for i, layer in enumerate(layers):
        target = dest / str(i)
        out.append(target)
        if (dest / f"{i}.done").exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["cp", "-a", "--reflink=auto", f"{layer}/.", str(target)], check=True,
                       capture_output=True)
        shift_tree(target, r)
        (dest / f"{i}.done").touch()
    return out


def shift_tree(root: Path, r: Range) -> None:
    """lchown every entry below (and including) ``root`` by ``r``'s offsets (ids already in the
    range are left alone). lchown clears setuid/setgid bits, so modes are restored."""
    def shift(path: str) -> None:
        st = os.lstat(path)
        if st.st_uid >= r.size and st.st_gid >= r.size:
            return
        uid = st.st_uid + r.uid if st.st_uid < r.size else st.st_uid
        gid = st.st_gid + r.gid if st.st_gid < r.size else st.st_gid
        os.lchown(path, uid, gid)
        if not os.path.islink(path) and st.st_mode & 0o6000:
            os.chmod(path, st.st_mode & 0o7777)

    shift(str(root))
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            shift(os.path.join(top, name))


def own(path: str | os.PathLike, r: Range) -> None:
    """Make a directory pypod created (upper dir, empty volume) belong to the pod's ids: an id
    below the range's size moves into it, so a volume made for ``uid=1000`` belongs to the
    pod's 1000."""
    st = os.lstat(path)
    if st.st_uid < r.size or st.st_gid < r.size:
        os.lchown(path, st.st_uid + r.uid if st.st_uid < r.size else -1,
                  st.st_gid + r.gid if st.st_gid < r.size else -1)


def is_idmap_refusal(e: OSError) -> bool:
    return e.errno in (errno.EINVAL, errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP)
