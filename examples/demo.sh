#!/usr/bin/env bash
# The main job, on a fresh machine with no internet: build a small image locally from Debian's
# busybox, import it into a throwaway pypod store, and show what the store holds.
# (Once the pod engine lands, this runs a two-app pod from that image.)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pypod=${PYPOD:-"$here/.venv/bin/pypod"}
work=$(mktemp -d /tmp/pypod-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
"$work/rootfs/bin/busybox" --install -s "$work/rootfs/bin" 2>/dev/null || \
  for a in $(/bin/busybox --list); do ln -sf busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/rootfs/etc/group"
tar -C "$work/rootfs" -czf "$work/busybox.tar.gz" .

export PYPOD_DIR="$work/data" PYPOD_CONFIG_DIR="$work/etc"
echo "+ pypod image import busybox.tar.gz --name demo/busybox"
"$pypod" image import "$work/busybox.tar.gz" --name demo/busybox
echo "+ pypod image export demo/busybox busybox-oci.tar && pypod fetch oci-archive:busybox-oci.tar --name demo/copy"
"$pypod" image export demo/busybox "$work/busybox-oci.tar"
"$pypod" fetch "oci-archive:$work/busybox-oci.tar" --name demo/copy
echo "+ pypod image list"
"$pypod" image list
echo "+ pypod image render demo/busybox rootfs && ls rootfs/bin | head"
"$pypod" image render demo/busybox "$work/rendered"
ls "$work/rendered/bin" | head -5
