#!/usr/bin/env bash
# pypod-cri with crictl, offline: a throwaway pypod store and config, a busybox image imported into
# it (the CLI and pypod-cri share the store), then a pod with a web server driven through the CRI:
# runp, create, start, ps, exec, logs, port-forward, the host port, stop and remove.
# As root; crictl from tests/cri/build_tools.sh (make cri-tools) or PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin="$here/.venv/bin"
crictl=${CRICTL:-$(command -v crictl || echo "$here/.tools/bin/crictl")}
work=$(mktemp -d /tmp/pypod-cri-demo.XXXXXX)
export PYPOD_DIR="$work/data" PYPOD_CONFIG_DIR="$work/etc"
mkdir -p "$PYPOD_CONFIG_DIR"
printf '[cri]\nlisten = "%s"\n' "$work/cri.sock" > "$PYPOD_CONFIG_DIR/pypod.toml"
C=("$crictl" --config /dev/null -r "unix://$work/cri.sock" -i "unix://$work/cri.sock")
server=""
cleanup() {
  if [ -n "$server" ]; then
    for p in $("${C[@]}" pods -q 2>/dev/null); do "${C[@]}" rmp -f "$p" >/dev/null 2>&1 || true; done
    kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true
  fi
  "$bin/pypod" gc --grace-period 0s >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# an image: Debian's busybox as a one-layer rootfs
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/rootfs/etc/group"
tar -C "$work/rootfs" -czf "$work/busybox.tar.gz" .
"$bin/pypod" image import "$work/busybox.tar.gz" --name demo/busybox >/dev/null

"$bin/pypod-cri" --log-level warning &
server=$!
for _ in $(seq 100); do [ -S "$work/cri.sock" ] && break; sleep 0.1; done

sed "s#/var/log/pods/default_hello_hello-uid#$work/logs#" "$here/examples/kubelet/pod.json" > "$work/pod.json"
set -x
"${C[@]}" version
"${C[@]}" images
pod=$("${C[@]}" runp "$work/pod.json")
ctr=$("${C[@]}" create "$pod" "$here/examples/kubelet/web.json" "$work/pod.json")
"${C[@]}" start "$ctr"
"${C[@]}" pods
"${C[@]}" ps
"${C[@]}" exec "$ctr" sh -c 'hostname; ip addr show eth0 | grep inet'
sleep 0.5
curl -s http://127.0.0.1:18080/          # the host port, through CNI's portmap
"${C[@]}" port-forward "$pod" 18081:80 >/dev/null & pf=$!
sleep 1; curl -s http://127.0.0.1:18081/; kill $pf
"${C[@]}" logs "$ctr"
"$bin/pypod" list                          # the same pod, seen by the CLI
"${C[@]}" stop "$ctr"
"${C[@]}" inspect "$ctr" | grep -E '"(state|exitCode|reason)"'
"${C[@]}" stopp "$pod"
"${C[@]}" rmp "$pod"
