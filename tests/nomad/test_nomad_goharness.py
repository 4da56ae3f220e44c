"""hashicorp/go-plugin's real client (Go, from the module proxy) drives the plugin as Nomad's
loader does: Go stubs generated from pypod's own .proto files, configs encoded with go-cty's
msgpack. Builds tests/nomad/goharness once (cached under .tools/nomad/) and runs it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nomad_harness import PLUGIN

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent / "goharness"
TOOLS = ROOT / ".tools" / "nomad"
PROTO = ROOT / "integrations" / "nomad" / "proto"
GEN_TOOLS = {"protoc-gen-go": "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.10",
             "protoc-gen-go-grpc": "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1"}


def _go_env() -> dict[str, str]:
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    env["PATH"] = f"{TOOLS / 'bin'}:{env.get('PATH', '')}"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"


def build_harness() -> Path:
    """The compiled harness (go test -c), rebuilt when its sources or the .proto files change."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: the go-plugin harness needs a Go toolchain")
    h = hashlib.sha256()
    for f in sorted([*HARNESS.glob("*.go"), HARNESS / "go.mod", HARNESS / "go.sum", *PROTO.glob("*.proto")]):
        h.update(f.name.encode() + f.read_bytes())
    h.update(repr(GEN_TOOLS).encode())
    binary = TOOLS / f"goharness-{h.hexdigest()[:16]}.test"
    if binary.exists():
        return binary
    env = _go_env()
    TOOLS.mkdir(parents=True, exist_ok=True)
    for name, pkg in GEN_TOOLS.items():
        if not (TOOLS / "bin" / name).exists():
            _run([go, "install", pkg], HARNESS, dict(env, GOBIN=str(TOOLS / "bin")))
    shutil.rmtree(HARNESS / "gen", ignore_errors=True)
    _run([sys.executable, "-m", "pypod.nomad.proto.generate", "--go", str(HARNESS)], HARNESS, env)
    tmp = binary.with_suffix(".tmp")
    _run([go, "test", "-c", "-o", str(tmp), "."], HARNESS, env)
    for old in TOOLS.glob("goharness-*.test"):
        old.unlink()
    tmp.rename(binary)
    return binary


@pytest.mark.timeout(1200)  # the first build downloads and compiles go-plugin, grpc and protobuf
@pytest.mark.usefixtures("leak_check")
def test_go_plugin_client_drives_the_driver(agent_config, tmp_path):
    binary = build_harness()
    env = dict(os.environ, PYPOD_NOMAD_PLUGIN=PLUGIN, PYPOD_DATA_DIR=agent_config["data_dir"],
               PYPOD_CONFIG_DIR=agent_config["config_dir"])
    p = subprocess.run([str(binary), "-test.v", "-test.count=1", "-test.timeout=300s"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=360)
    assert p.returncode == 0, p.stdout[-8000:] + p.stderr[-4000:]
    assert "--- PASS: TestNomadClientSequence" in p.stdout, p.stdout[-4000:]
    assert "failed to exit gracefully" not in p.stdout
    assert "using plugin: version=2" in p.stdout  # go-plugin's own log of the handshake it parsed
