"""Read access to a data dir for the members of a group, as rkt's ``rkt`` group had.

``pypod setup`` (root, explicit: no other command creates groups) makes the group (``pypod``
unless ``--group``) if it is missing and gives it the data dir. From then on the **data dir's
group is the group with read access**: whatever the engine (as root) creates on the read path
of ``list``, ``status``, ``image list`` and ``events`` gets that group, explicitly:

    =====================================  ===========  =====
    path                                   owner        mode
    =====================================  ===========  =====
    <data_dir>/                            root:GROUP   0750
    pods/, pods/<state>/, every pod dir    root:GROUP   0750
    pods/<state>/<uuid>/manifest.json      root:GROUP   0640
    images.db, images.db-wal, -shm         root:GROUP   0640
    events.log, events.log.1               root:GROUP   0640
    =====================================  ===========  =====

The rest of a pod dir (status files, network info) is readable through the pod dir; images'
blobs and snapshots stay root's. No setgid bit is used: a setgid data dir would pass the group
on to every directory made below it, image snapshots and overlay upper dirs included, and a
container would see the host's group on its own ``/``.

Changing state stays root's: the CLI refuses other callers (:func:`pypod.cli.require_root`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DEFAULT_GROUP = "pypod"
DIR_MODE = 0o750
FILE_MODE = 0o640


def shared_gid(data_dir: str | os.PathLike) -> int | None:
    """The group that gets read access: the data dir's, when root runs us and it is not root's."""
    if os.geteuid() != 0:
        return None
    try:
        gid = os.stat(data_dir).st_gid
    except OSError:
        return None
    return gid or None


def share(path: str | os.PathLike, gid: int, mode: int) -> bool:
    """Give ``path`` (never a symlink's target) to group ``gid`` with ``mode``; False if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return False
    if st.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
    return True


def setup(data_dir: Path, group: str = DEFAULT_GROUP) -> list[str]:
    """Create ``group`` if missing and give it read access to ``data_dir`` (made if missing),
    including what is already there. Idempotent; returns what it did, one line each."""
    import grp
    import subprocess

    from .errors import PypodError

    notes = []
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        p = subprocess.run(["groupadd", "--system", group], capture_output=True, text=True)
        if p.returncode != 0:
            raise PypodError(f"groupadd {group} failed: {p.stderr.strip() or p.returncode}") from None
        gid = grp.getgrnam(group).gr_gid
        notes.append(f"created group {group} (gid {gid})")
    data_dir.mkdir(parents=True, exist_ok=True)
    share(data_dir, gid, DIR_MODE)

    from .pods.state import DIRS, MANIFEST, PodStore

    pods = PodStore(data_dir, events=False)
    pods.init()  # makes pods/ and the state dirs, and shares them (the data dir's group is set)
    n = 0
    for d in DIRS:
        with os.scandir(pods.root / d) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False) and share(entry.path, gid, DIR_MODE):
                    share(os.path.join(entry.path, MANIFEST), gid, FILE_MODE)
                    n += 1

    from .images.metadata import Metadata

    meta = Metadata(data_dir / "images.db")
    meta.db  # noqa: B018 - creates it (persistent WAL, shared) if missing
    meta.close()
    for suffix in ("", "-wal", "-shm"):
        share(f"{meta.path}{suffix}", gid, FILE_MODE)

    from .events import LOG_NAME, OLD_SUFFIX

    log = data_dir / LOG_NAME
    os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE))
    share(log, gid, FILE_MODE)
    share(f"{log}{OLD_SUFFIX}", gid, FILE_MODE)
    notes.append(f"{data_dir}: readable by group {group} (gid {gid}): its members may run list, status, "
                 f"image list and events ({n} existing pod{'s' if n != 1 else ''})")
    return notes
