#!/usr/bin/env bash
# The main job, on a fresh machine with no internet: build a small image locally from Debian's
# busybox, import it into a throwaway pypod store, and run a two-app pod from it: the apps share a
# volume, their output is streamed, and the pod's exit code is the first failing app's.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pypod=${PYPOD:-"$here/.venv/bin/pypod"}
work=$(mktemp -d /tmp/pypod-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
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
echo
echo "+ pypod run (two apps sharing an empty volume; the pod exits when both have)"
set +e
"$pypod" run --net=none --volume data,kind=empty \
  demo/busybox --name writer --mount volume=data,target=/data --exec /bin/sh -- -c \
    'for i in 1 2 3; do echo "message $i" >> /data/log; echo "wrote message $i"; sleep 0.2; done' --- \
  demo/busybox --name reader --mount volume=data,target=/data --exec /bin/sh -- -c \
    'sleep 1; echo "the writer left $(wc -l < /data/log) messages"; echo "hostname: $(hostname)"; exit 3'
echo "pod exit code: $? (the reader's)"
set -e
echo
echo "+ pypod list"
"$pypod" list
echo "+ pypod status"
"$pypod" status "$("$pypod" list --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["uuid"])')"
echo "+ pypod gc --grace-period 0s"
"$pypod" gc --grace-period 0s
