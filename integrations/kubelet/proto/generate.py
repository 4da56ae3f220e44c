"""Generate the Python stubs of pypod's CRI .proto (``cri.proto``, this directory).

    python -m pypod.kubelet.proto.generate            # rewrite cri_pb2.py and cri_pb2_grpc.py here
    python -m pypod.kubelet.proto.generate --out DIR  # write them into DIR instead (the tests
                                                      # compare a fresh generation with the
                                                      # committed files)

protoc is grpcio-tools' (``grpc_tools.protoc``): nothing but PyPI packages is needed. The include
root is a temporary directory with ``pypod/kubelet/proto`` linked to this one, so the stubs import
each other as ``pypod.kubelet.proto.cri_pb2``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("cri_pb2.py", "cri_pb2_grpc.py")


def generate(out: Path = HERE) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "root", "pypod", "kubelet"))
        os.symlink(HERE, os.path.join(tmp, "root", "pypod", "kubelet", "proto"))
        gen = os.path.join(tmp, "out")
        os.makedirs(gen)
        rc = protoc.main(["protoc", f"-I{well_known}", f"-I{tmp}/root", f"--python_out={gen}",
                          f"--grpc_python_out={gen}", "pypod/kubelet/proto/cri.proto"])
        if rc != 0:
            raise SystemExit(f"protoc failed ({rc})")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            data = Path(gen, "pypod", "kubelet", "proto", name).read_bytes()
            (out / name).write_bytes(data)
            written.append(out / name)
        return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="directory for the stubs (default: here)")
    for path in generate(ap.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
