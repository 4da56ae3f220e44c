"""Generate the stubs of pypod's own Nomad .proto files (this directory).

    python -m pypod.nomad.proto.generate            # Python stubs, committed next to the .proto files
    python -m pypod.nomad.proto.generate --go DIR   # Go stubs for the test harness (needs protoc-gen-go
                                                    # and protoc-gen-go-grpc on PATH)
    python -m pypod.nomad.proto.generate --descriptors FILE   # a FileDescriptorSet (tests compare it
                                                    # with the committed stubs)

protoc is grpcio-tools' (``grpc_tools.protoc``), so nothing but PyPI packages is needed. The files
import each other as ``pypod/nomad/proto/<name>.proto``: an include root is laid out in a temporary
directory with a link to this one, so the Python stubs import ``pypod.nomad.proto.<name>_pb2``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ["goplugin.proto", "hclspec.proto", "structs.proto", "base.proto", "driver.proto"]
GRPC = ["goplugin.proto", "base.proto", "driver.proto"]  # the files that declare services


def _protoc(args: list[str]) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{well_known}", *args])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc}): {' '.join(args)}")


def _root(tmp: str) -> str:
    os.makedirs(os.path.join(tmp, "pypod", "nomad"))
    os.symlink(HERE, os.path.join(tmp, "pypod", "nomad", "proto"))
    return tmp


def generate_python(out: Path = HERE) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _root(tmp)
        files = [f"pypod/nomad/proto/{p}" for p in PROTOS]
        pyout = os.path.join(tmp, "out")
        os.makedirs(pyout)
        _protoc([f"-I{root}", f"--python_out={pyout}", f"--grpc_python_out={pyout}", *files])
        gen = Path(pyout, "pypod", "nomad", "proto")
        for p in PROTOS:
            stem = p.removesuffix(".proto")
            names = [f"{stem}_pb2.py"] + ([f"{stem}_pb2_grpc.py"] if p in GRPC else [])
            for name in names:
                (out / name).write_bytes((gen / name).read_bytes())


def generate_go(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _root(tmp)
        files = [f"pypod/nomad/proto/{p}" for p in PROTOS]
        out.mkdir(parents=True, exist_ok=True)
        _protoc([f"-I{root}", f"--go_out={out}", "--go_opt=module=pypod.test/goharness",
                 f"--go-grpc_out={out}", "--go-grpc_opt=module=pypod.test/goharness", *files])


def descriptor_set(path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _root(tmp)
        _protoc([f"-I{root}", f"--descriptor_set_out={path}",
                 *[f"pypod/nomad/proto/{p}" for p in PROTOS]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--go", metavar="DIR", type=Path, help="write Go stubs under DIR (module pypod.test/goharness)")
    ap.add_argument("--descriptors", metavar="FILE", type=Path, help="write a FileDescriptorSet")
    a = ap.parse_args(argv)
    if a.go:
        generate_go(a.go)
    if a.descriptors:
        descriptor_set(a.descriptors)
    if not a.go and not a.descriptors:
        generate_python()
    return 0


if __name__ == "__main__":
    sys.exit(main())
