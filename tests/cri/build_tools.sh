#!/usr/bin/env bash
# Builds crictl and critest (cri-tools) with Go from the module proxy into TOOLS/bin, once:
# an existing binary of the right version is kept (make test calls this every time).
#   tests/cri/build_tools.sh [TOOLS_DIR]      (default: .tools next to the repo's Makefile)
set -euo pipefail
V=${CRI_TOOLS_VERSION:-v1.37.0}
TOOLS=$(realpath -m "${1:-$(dirname "$0")/../../.tools}")
BIN=$TOOLS/bin
mkdir -p "$BIN"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin  # Go's own tarball installs there
command -v go >/dev/null || { echo "go (>= 1.26) is needed to build cri-tools" >&2; exit 1; }

stamp() { cat "$BIN/.$1.version" 2>/dev/null || true; }

if [ ! -x "$BIN/crictl" ] || [ "$(stamp crictl)" != "$V" ]; then
    echo "building crictl $V" >&2
    GOBIN=$BIN go install "sigs.k8s.io/cri-tools/cmd/crictl@$V"
    echo "$V" > "$BIN/.crictl.version"
fi

if [ ! -x "$BIN/critest" ] || [ "$(stamp critest)" != "$V" ]; then
    echo "building critest $V" >&2
    # critest is a Go test binary (cmd/critest has only cri_test.go): go test -c in a scratch
    # module that requires cri-tools at $V.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    ( cd "$work" && go mod init pypod.local/critest >/dev/null 2>&1 &&
      go get "sigs.k8s.io/cri-tools@$V" >/dev/null 2>&1 &&
      CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" go test -c -o "$BIN/critest" \
          -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${V#v}" sigs.k8s.io/cri-tools/cmd/critest )
    echo "$V" > "$BIN/.critest.version"
fi
