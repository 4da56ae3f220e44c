"""Apps' root filesystems: an overlay of the image's snapshots plus a per-app upper dir.

Mounts live in the host's mount namespace under the pod dir (so the runtime can use them as a
bundle rootfs); gc unmounts everything under the pod dir, deepest first, before deleting it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .. import mount

if TYPE_CHECKING:
    from .userns import Range

# overlayfs takes its options in one page; beyond that the lower dirs are given relative to a
# common directory from a forked child that chdirs there (podman's trick).
_MAX_OPTIONS = 4000


def app_dir(pod_dir: Path, app: str) -> Path:
    return pod_dir / "apps" / app


def mount_app(pod_dir: Path, app: str, layers: Sequence[Path], *, idmap: "Range | None" = None) -> Path:
    """Mount (idempotently) the app's rootfs; ``layers`` bottom first. Returns the rootfs path.

    ``idmap`` (a pod with private users): the layers are seen through the pod's id mapping and
    the upper dir belongs to the pod's root, so what the app writes has the pod's host ids (see
    :mod:`.userns`)."""
    d = app_dir(pod_dir, app)
    root, upper, work = d / "rootfs", d / "upper", d / "work"
    for p in (root, upper, work):
        p.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(root):
        return root
    if idmap is None:
        _mount_overlay(root, list(layers), upper, work, app)
        return root
    from . import userns

    userns.own(upper, idmap)
    if userns.idmap_supported():
        try:
            with userns.idmapped_layers(layers, d / "idmap", idmap) as lowers:
                _mount_overlay(root, lowers, upper, work, app)
            return root
        except OSError as e:
            if not userns.is_idmap_refusal(e):
                raise
    _mount_overlay(root, userns.shifted_copies(layers, d / "shifted", idmap), upper, work, app)
    return root


def _mount_overlay(root: Path, lowers: list[Path], upper: Path, work: Path, app: str) -> None:
    opts = mount.overlay_options(lowers, upper, work)
    if len(opts) <= _MAX_OPTIONS:
        mount.mount("overlay", root, "overlay", 0, opts)
        return
    common = os.path.commonpath([str(p) for p in lowers])
    rel = [Path(os.path.relpath(p, common)) for p in lowers]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.chdir(common)
            mount.mount("overlay", root, "overlay", 0, mount.overlay_options(rel, upper, work))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(f"mounting the rootfs of app {app} failed (too many layers?)")


def unmount_all(pod_dir: Path) -> None:
    """Unmount everything mounted under the pod dir (lazily if busy)."""
    for point in mount.mounted_under(pod_dir):
        mount.umount(point)


def remove_app(pod_dir: Path, app: str) -> None:
    d = app_dir(pod_dir, app)
    for point in mount.mounted_under(d):
        mount.umount(point)
    shutil.rmtree(d, ignore_errors=True)
