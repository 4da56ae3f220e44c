"""Every image critest (v1.37.0) pulls, built offline from Debian packages, and pushed to a local
``docker-registry`` under the names critest uses (``<registry>/<host>/<path>``, which pypod's
``[[registry]]`` rewrites serve as ``<host>/<path>``).

Base ("busybox" below): Debian's *dynamic* busybox (``apt-get download busybox``; the host's
busybox-static runs applets in-process, so ``sh -c ls`` would never exec a masked ``/bin/ls``)
with the host's libc, every applet a hard link to ``/bin/busybox`` (a bind mount over one name
masks only that name), ``pgrep`` and ``ipcs`` as shell scripts (Debian's busybox has neither),
``/etc/passwd`` with root, www-data, nobody. The others add to it:

==================================================  ==============================================
``registry.k8s.io/e2e-test-images/busybox:1.29-2``  the base, ``CMD ["sh"]``
``.../nginx:1.14-2``, ``gcr.io/.../hostnet-nginx-*``  Debian's nginx binary and libraries, 200 on
                                                    :80 (hostnet: :12003), pid in /var/run/nginx.pid
``.../httpd:2.4.39-4``                              busybox httpd on :80, announcing "httpd"
``.../nonewprivs:1.3``                              a setuid-root program printing its euid (Go)
``registry.k8s.io/pause:3.9``, ``k8s.gcr.io/...``   catatonit (static), one image under both names
``gcr.io/k8s-staging-cri-tools/test-image-*``       the base plus a distinct file; user images with
                                                    ``User`` 1002, www-data, 1003:1004, www-data:1004
==================================================  ==============================================

Built once per session into a cache directory keyed by the inputs' digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a script: tests/ holds the support package
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import images as im  # noqa: E402

ARCH = im.host_arch()
DEBS = ("busybox", "nginx")
HOST_LIBS = ("/lib/x86_64-linux-gnu", "/lib64")

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """\
root:x:0:
daemon:x:1:
www-data:x:33:
nogroup:x:65534:
"""

PGREP = """#!/bin/sh
# pgrep PATTERN: the pids of processes whose name matches (busybox of Debian has no pgrep)
[ -n "$1" ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
found=1
for d in /proc/[0-9]*; do
    [ "${d#/proc/}" = "$$" ] && continue
    name=$(cat "$d/comm" 2>/dev/null) || continue
    if echo "$name" | grep -q -- "$1"; then echo "${d#/proc/}"; found=0; fi
done
exit $found
"""

IPCS = """#!/bin/sh
# ipcs [-m]: System V shared memory segments of this IPC namespace (from /proc/sysvipc/shm)
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm 2>/dev/null | while read key shmid perms size cpid lpid nattch uid rest; do
    printf '0x%08x %-10s %-10s %-10s %-10s %-10s\\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
echo
"""

NGINX_CONF = """user www-data;
worker_processes 1;
pid /var/run/nginx.pid;
error_log stderr;
daemon off;
events { worker_connections 64; }
http {
    access_log off;
    server {
        listen %(port)d;
        location / { return 200 "pypod test nginx\\n"; }
    }
}
"""

NONEWPRIVS_GO = """package main

import (
	"fmt"
	"os"
)

// Installed setuid root: without no_new_privs the kernel makes it root.
func main() { fmt.Printf("Effective uid: %d\\n", os.Geteuid()) }
"""


@dataclass
class Built:
    """An image in an OCI layout, and every name critest knows it by."""

    image: im.Image
    names: tuple[str, ...]  # host/path:tag


def _deb_root(work: Path) -> Path:
    root = work / "debs"
    if (root / "bin" / "busybox").exists() and (root / "usr" / "sbin" / "nginx").exists():
        return root
    dl = work / "download"
    dl.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["apt-get", "download", *DEBS], cwd=dl, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)  # no package lists yet
        subprocess.run(["apt-get", "download", *DEBS], cwd=dl, check=True, capture_output=True)
    root.mkdir(exist_ok=True)
    for deb in dl.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _needed_libs(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(Path(path))
    return libs


def _add_libs(t: im.LayerTar, binaries: list[Path]) -> None:
    seen: set[str] = set()
    for b in binaries:
        for lib in _needed_libs(b):
            name = str(lib).lstrip("/")
            if name in seen:
                continue
            seen.add(name)
            t.file(name, lib.resolve().read_bytes(), 0o755)


def _base_tar(debs: Path, extra_passwd: str = "", extra_group: str = "") -> bytes:
    t = im.LayerTar()
    for name, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("proc", 0o755),
                       ("root", 0o700), ("run", 0o755), ("sbin", 0o755), ("sys", 0o755), ("tmp", 0o1777),
                       ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("var", 0o755),
                       ("var/run", 0o755), ("var/www", 0o755), ("var/tmp", 0o1777)]:
        t.dir(name, mode)
    busybox = debs / "bin" / "busybox"
    t.file("bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in sorted(set(applets) - {"busybox"}):
        _hardlink(t, f"bin/{applet}", "bin/busybox", 0o755)
    t.file("bin/pgrep", PGREP, 0o755)
    t.file("bin/ipcs", IPCS, 0o755)
    _add_libs(t, [busybox])
    t.file("etc/passwd", PASSWD + extra_passwd)
    t.file("etc/group", GROUP + extra_group)
    t.file("etc/hosts", "127.0.0.1\tlocalhost\n")
    return t.bytes()


def _hardlink(t: im.LayerTar, name: str, target: str, mode: int) -> None:
    """A hard link entry carrying the file's own mode: some unpackers (containerd's) apply the
    entry's mode to the shared inode."""
    import tarfile

    info = t._info(name, tarfile.LNKTYPE, mode, 0, 0)
    info.linkname = target
    t._add(info)


def _extra_tar(files: dict[str, tuple[bytes | str, int]], dirs: dict[str, tuple[int, int]] | None = None,
               libs_for: list[Path] = ()) -> bytes:
    t = im.LayerTar()
    for name, (mode, uid) in (dirs or {}).items():
        t.dir(name, mode, uid=uid, gid=uid)
    for name, (data, mode) in files.items():
        t.file(name, data, mode)
    _add_libs(t, list(libs_for))
    return t.bytes()


def _image(dest: Path, name: str, tars: list[bytes], config: dict) -> im.Image:
    layout = im.Layout(dest)
    layers = [im._add_layer(layout, tar, "gzip") for tar in tars]
    cfg = im._config(layers, config, history=[f"{name} layer {i}" for i in range(len(layers))])
    return im._write_manifest(layout, name, "latest", layers, cfg)


def _nonewprivs(work: Path) -> bytes:
    """A static binary printing its effective uid (Go, which building crictl needs anyway)."""
    src = work / "nonewprivs.go"
    src.write_text(NONEWPRIVS_GO)
    out = work / "nonewprivs"
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false", GOTOOLCHAIN="local")
    go = shutil.which("go") or "/usr/local/go/bin/go"  # Go's own tarball installs there
    subprocess.run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), str(src)],
                   check=True, capture_output=True, env=env, cwd=work)
    return out.read_bytes()


def inputs_digest() -> str:
    """What the images depend on: this file, the host's libc and catatonit."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for p in ("/usr/bin/catatonit", "/lib/x86_64-linux-gnu/libc.so.6"):
        if os.path.exists(p):
            h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


E2E = "registry.k8s.io/e2e-test-images/"
STAGING = "gcr.io/k8s-staging-cri-tools/"
BENCH = "public.ecr.aws/docker/library/"


def build_all(work: Path) -> list[Built]:
    """Build every image into ``work`` (reused when present and current)."""
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "built.json"
    digest = inputs_digest()
    if stamp.exists():
        try:
            doc = json.loads(stamp.read_text())
            if doc.get("inputs") == digest:
                return [Built(_load(Path(b["layout"]), b["name"]), tuple(b["names"])) for b in doc["images"]]
        except (ValueError, KeyError, OSError):
            pass
    layouts = work / "layouts"
    shutil.rmtree(layouts, ignore_errors=True)
    debs = _deb_root(work)
    base = _base_tar(debs)
    env = {"Env": [f"PATH={im.DEFAULT_PATH}"]}
    out: list[Built] = []

    def add(name: str, tars: list[bytes], config: dict, names: list[str]) -> None:
        out.append(Built(_image(layouts / name, name, tars, {**env, **config}), tuple(names)))

    add("busybox", [base], {"Cmd": ["sh"]},
        [E2E + "busybox:1.29-2", *(BENCH + f"busybox:{t}" for t in
                                   ("1.35.0-glibc", "1-uclibc", "1", "1-glibc", "1-musl"))])
    nginx_bin = debs / "usr" / "sbin" / "nginx"
    for name, port, names in (("nginx", 80, [E2E + "nginx:1.14-2"]),
                              ("hostnet-nginx", 12003, [STAGING + f"hostnet-nginx-{ARCH}:latest"])):
        files = {"usr/sbin/nginx": (nginx_bin.read_bytes(), 0o755),
                 "etc/nginx/nginx.conf": (NGINX_CONF % {"port": port}, 0o644)}
        dirs = {"var/log/nginx": (0o755, 0), "var/lib/nginx": (0o755, 33), "usr/share/nginx": (0o755, 0)}
        add(name, [base, _extra_tar(files, dirs, [nginx_bin])], {"Cmd": ["nginx"], "ExposedPorts": {f"{port}/tcp": {}}},
            names)
    httpd = {"www/index.html": ("pypod test httpd\n", 0o644)}
    add("httpd", [base, _extra_tar(httpd)],
        {"Cmd": ["sh", "-c", "echo 'httpd: serving /www on :80'; exec httpd -f -v -p 80 -h /www"],
         "ExposedPorts": {"80/tcp": {}}}, [E2E + "httpd:2.4.39-4"])
    t = im.LayerTar()
    t.file("usr/local/bin/nonewprivs", _nonewprivs(work), 0o4755)
    add("nonewprivs", [base, t.bytes()], {"Cmd": ["/usr/local/bin/nonewprivs"]}, [E2E + "nonewprivs:1.3"])
    t = im.LayerTar()
    t.file("pause", Path("/usr/bin/catatonit").read_bytes(), 0o755)
    out.append(Built(_image(layouts / "pause", "pause", [t.bytes()],
                            {"Entrypoint": ["/pause", "-P"]}), ("registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9")))
    for n in ("1", "2", "3"):
        add(f"test-image-{n}", [base, _extra_tar({f"test-image-{n}": ("", 0o644)})], {"Cmd": ["sh"]},
            [STAGING + f"test-image-{n}:latest"])
    add("test-image-latest", [base, _extra_tar({"test-image-latest": ("", 0o644)})], {"Cmd": ["sh"]},
        [STAGING + "test-image-latest:latest"])
    add("test-image-tag", [base, _extra_tar({"test-image-tag": ("", 0o644)})], {"Cmd": ["sh"]},
        [STAGING + "test-image-tag:test", STAGING + "test-image-tag:all"])
    add("test-image-tags", [base, _extra_tar({"test-image-tags": ("", 0o644)})], {"Cmd": ["sh"]},
        [STAGING + f"test-image-tags:{n}" for n in ("1", "2", "3")])
    for suffix, user in (("uid", "1002"), ("username", "www-data"), ("uid-group", "1003:1004"),
                         ("username-group", "www-data:1004")):
        add(f"test-image-user-{suffix}", [base, _extra_tar({f"test-image-user-{suffix}": ("", 0o644)})],
            {"Cmd": ["sh"], "User": user}, [STAGING + f"test-image-user-{suffix}:latest"])
    group = _base_tar(debs, "default-user:x:1000:1000:default-user:/home:/bin/sh\n",
                      "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
    add("test-image-predefined-group", [group], {"Cmd": ["sh"], "User": "1000"},
        [STAGING + "test-image-predefined-group:latest"])
    stamp.write_text(json.dumps({"inputs": digest, "images": [
        {"layout": str(b.image.layout), "name": b.image.name, "names": list(b.names)} for b in out]}))
    return out


def _load(layout: Path, name: str) -> im.Image:
    """An :class:`support.images.Image` of a layout written by :func:`build_all`."""
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    cfg = manifest["config"]
    layers = tuple(im.Layer(la["mediaType"], la["digest"], la["size"], "", "gzip") for la in manifest["layers"])
    return im.Image(name=name, layout=layout, ref="latest", media_type=desc["mediaType"],
                    manifest_digest=desc["digest"], manifest_media_type=desc["mediaType"],
                    config_digest=cfg["digest"], config_media_type=cfg["mediaType"], layers=layers)


def push_all(registry, built: list[Built]) -> dict[str, str]:
    """Push every image under every name (``<host>/<path>`` as the registry's repository);
    returns name -> manifest digest."""
    out = {}
    for b in built:
        for name in b.names:
            repo, _, tag = name.rpartition(":")
            out[name] = registry.push(b.image, repo, tag)
    return out


def registries_toml(registry_host: str) -> str:
    """pypod.toml ``[[registry]]`` entries serving critest's registries from the local one."""
    parts = []
    for prefix in ("registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws"):
        parts.append(f'[[registry]]\nprefix = "{prefix}"\nlocation = "{registry_host}/{prefix}"\ninsecure = true\n')
    return "\n".join(parts)


if __name__ == "__main__":  # build into a directory and print what was built
    import sys

    for b in build_all(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())):
        print(b.image.name, b.image.manifest_digest, " ".join(b.names))
