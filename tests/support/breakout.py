"""A hostile image for the isolation and breakout tests, built with the helpers of
:mod:`support.images` (busybox base layer + one hostile layer). Never imports pypod.

The hostile layer holds:

- ``/usr/local/bin/euid``: a setuid-root static x86-64 executable (hand-assembled, 176 bytes)
  that exits with its effective uid (mod 256): 0 when setuid took effect, the caller's uid
  otherwise; ``/usr/local/bin/euid-plain`` is the same without the setuid bit;
- device nodes outside /dev: ``/evil/mem`` (c 1 1), ``/evil/kmsg`` (c 1 11), ``/evil/sda`` (b 8 0);
- symlinks aimed at the host for volume targets: ``/escape-abs -> <host dir>``,
  ``/escape-rel -> ../../../../../../../<host dir>``, ``/escape-chain -> /escape-abs/sub``;
- symlinks aimed at kernel filesystems: ``/kproc -> /proc``, ``/ksys -> /sys/kernel``.
"""

from __future__ import annotations

import platform
import struct
import tarfile
from pathlib import Path

from .images import (BUSYBOX_CONTAINER_CONFIG, Image, Layout, LayerTar, _add_layer, _busybox_tar,
                     _config, _write_manifest)


def euid_elf() -> bytes | None:
    """A minimal static ELF: ``exit(geteuid())``. None off x86-64."""
    if platform.machine() != "x86_64":
        return None
    code = bytes.fromhex("b86b000000" "0f05" "89c7" "b83c000000" "0f05")  # geteuid; exit(eax)
    base, ehsize, phsize = 0x400000, 64, 56
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + ehsize + phsize, ehsize, 0, 0,
                               ehsize, phsize, 1, 0, 0, 0)
    size = ehsize + phsize + len(code)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


def _blockdev(t: LayerTar, name: str, major: int, minor: int) -> None:
    info = t._info(name, tarfile.BLKTYPE, 0o660, 0, 0)
    info.devmajor, info.devminor = major, minor
    t._add(info)


def hostile_layer(host_dir: str) -> bytes:
    t = LayerTar()
    elf = euid_elf()
    if elf is not None:
        t.file("usr/local/bin/euid", elf, 0o4755)
        t.file("usr/local/bin/euid-plain", elf, 0o755)
    t.dir("evil")
    t.chardev("evil/mem", 1, 1)
    t.chardev("evil/kmsg", 1, 11)
    _blockdev(t, "evil/sda", 8, 0)
    host = host_dir.strip("/")
    t.symlink("escape-abs", "/" + host)
    t.symlink("escape-rel", "../" * 7 + host)
    t.symlink("escape-chain", "/escape-abs/sub")
    t.symlink("kproc", "/proc")
    t.symlink("ksys", "/sys/kernel")
    return t.bytes()


def build_breakout_image(dest: Path, host_dir: str, ref: str = "latest") -> Image:
    """busybox plus :func:`hostile_layer` (``host_dir``: the host path the symlinks aim at)."""
    layout = Layout(dest)
    layers = [_add_layer(layout, _busybox_tar(), "gzip"),
              _add_layer(layout, hostile_layer(host_dir), "gzip")]
    cfg = _config(layers, dict(BUSYBOX_CONTAINER_CONFIG), history=["busybox rootfs", "hostile"])
    return _write_manifest(layout, "breakout", ref, layers, cfg)
