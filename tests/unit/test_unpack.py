"""The layer unpacker against real and hostile tar streams."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from pypod.config import Limits
from pypod.errors import DigestMismatch, ImageError, LimitExceeded
from pypod.images.unpack import apply_layer
from support import images as ti

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="whiteouts and device nodes need root (mknod)")


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """An outer dir holding the target: anything written beside the target is an escape."""
    target = tmp_path / "outer" / "target"
    target.mkdir(parents=True)
    return target


def _outside(target: Path) -> set[str]:
    return {p.name for p in target.parent.iterdir()} - {target.name}


def unpack(data: bytes, target: Path, **limits) -> None:
    apply_layer(io.BytesIO(data), str(target), Limits(**limits))


@pytest.mark.parametrize("kind", ["dotdot", "dotdot_nested", "whiteout_dotdot", "whiteout_nested",
                                  "whiteout_dots", "hardlink_up"])
def test_entries_pointing_outside_are_refused(kind: str, jail: Path) -> None:
    with pytest.raises(ImageError, match="outside the layer|invalid whiteout|invalid entry"):
        unpack(ti.HOSTILE_LAYERS[kind](), jail)
    assert _outside(jail) == set()


@pytest.mark.parametrize("kind,inside", [
    ("absolute", "abs-escape"),
    ("symlink_root", "tmp/pwned"),
    ("symlink_up", "pwned"),
    ("symlink_chain", "pwned-chain"),
    ("symlink_dir_replace", "pwned-replace"),
])
def test_writes_through_symlinks_stay_inside(kind: str, inside: str, jail: Path) -> None:
    unpack(ti.HOSTILE_LAYERS[kind](), jail)
    assert (jail / inside).is_file() and not (jail / inside).is_symlink()
    assert _outside(jail) == set()
    assert not Path("/tmp/pwned").exists() and not Path("/pwned-replace").exists()


@pytest.mark.parametrize("kind", ["hardlink_abs", "hardlink_via_symlink"])
def test_hardlinks_to_host_files_are_refused(kind: str, jail: Path) -> None:
    before = os.stat("/etc/shadow").st_nlink if os.path.exists("/etc/shadow") else None
    with pytest.raises(ImageError, match="hardlink"):
        unpack(ti.HOSTILE_LAYERS[kind](), jail)
    if before is not None:
        assert os.stat("/etc/shadow").st_nlink == before


@needs_root
def test_whiteout_through_symlink_stays_inside(jail: Path) -> None:
    unpack(ti.HOSTILE_LAYERS["whiteout_via_symlink"](), jail)
    wh = os.lstat(jail / "etc")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert Path("/etc/passwd").exists()


@needs_root
def test_device_nodes_and_fifos_are_created_inside_as_root(jail: Path) -> None:
    unpack(ti.HOSTILE_LAYERS["device"](), jail)
    unpack(ti.HOSTILE_LAYERS["fifo"](), jail)
    st = os.lstat(jail / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_ISFIFO(os.lstat(jail / "fifo").st_mode)


@needs_root
def test_setuid_bits_and_ownership_are_kept(jail: Path) -> None:
    unpack(ti.HOSTILE_LAYERS["setuid"](), jail)
    assert stat.S_IMODE(os.stat(jail / "usr/local/bin/suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(jail / "usr/local/bin/sgid").st_mode) == 0o2755


@needs_root
def test_ownership_and_modes_follow_the_image(jail: Path) -> None:
    t = ti.LayerTar()
    t.dir("home/app", mode=0o750, uid=1000, gid=1000)
    t.file("home/app/secret", "x", mode=0o600, uid=1000, gid=2000)
    t.symlink("home/link", "/nowhere", uid=1000, gid=1000)
    unpack(t.bytes(), jail)
    st = os.stat(jail / "home/app")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o750)
    st = os.stat(jail / "home/app/secret")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 2000, 0o600)
    assert os.lstat(jail / "home/link").st_uid == 1000 and os.readlink(jail / "home/link") == "/nowhere"


@needs_root
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_whiteouts_and_opaque_dirs_become_overlay_markers(compression: str, jail: Path) -> None:
    layers = ti.layered_tars()
    top = ti.compress(layers[-1], compression)
    apply_layer(io.BytesIO(top), str(jail), Limits())
    wh = os.lstat(jail / "data/remove-me")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(jail / "olddir", "trusted.overlay.opaque") == b"y"
    assert (jail / "olddir/new").is_file()


def test_diff_id_is_checked(jail: Path) -> None:
    data = ti.hostile_setuid() if not ROOT else ti.LayerTar().bytes()
    stats = apply_layer(io.BytesIO(ti.gzip_bytes(data)), str(jail), Limits())
    assert stats.diff_id == ti.sha256_digest(data)
    other = jail.parent / "other"
    other.mkdir()
    with pytest.raises(DigestMismatch, match="diff_id"):
        apply_layer(io.BytesIO(ti.gzip_bytes(data)), str(other), Limits(), "sha256:" + "0" * 64)


def test_truncated_gzip_is_an_image_error(jail: Path) -> None:
    t = ti.LayerTar()
    t.file("big", os.urandom(200_000))
    data = ti.gzip_bytes(t.bytes())
    with pytest.raises(ImageError, match="truncated|corrupted|malformed"):
        unpack(data[: len(data) // 2], jail)


def test_garbage_is_an_image_error(jail: Path) -> None:
    with pytest.raises(ImageError):
        unpack(b"\x1f\x8b" + os.urandom(5000), jail)


def test_decompression_bomb_is_stopped_by_the_limit(tmp_path: Path, jail: Path) -> None:
    bomb = tmp_path / "bomb.gz"
    ti.write_bomb_layer(bomb, size=64 << 20)
    with open(bomb, "rb") as f, pytest.raises(LimitExceeded, match="max_layer_unpacked"):
        apply_layer(f, str(jail), Limits(max_layer_unpacked=8 << 20))


def test_entry_count_limit(jail: Path) -> None:
    t = ti.LayerTar()
    for i in range(50):
        t.file(f"f{i}", "")
    with pytest.raises(LimitExceeded, match="entries"):
        unpack(t.bytes(), jail, max_layer_entries=10)


def test_hardlink_within_layer_and_replaced_entries(jail: Path) -> None:
    t = ti.LayerTar()
    t.file("a/file", "one")
    t.hardlink("a/link", "a/file")
    t.file("a/replaced", "first")
    t.file("a/replaced", "second")
    unpack(t.bytes(), jail)
    assert os.stat(jail / "a/file").st_ino == os.stat(jail / "a/link").st_ino
    assert (jail / "a/replaced").read_text() == "second"


def test_untrusted_overlay_xattrs_are_not_applied(jail: Path) -> None:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.ok": "yes"}
        tar.addfile(info)
    unpack(buf.getvalue(), jail)
    assert "trusted.overlay.redirect" not in os.listxattr(jail / "dir")
    assert os.getxattr(jail / "dir", "user.ok") == b"yes"
