#!/usr/bin/env python3
"""Generates the protobuf and gRPC stubs in ``src/keywarden/v1`` from the
daemon's own ``.proto`` files (``crates/keywarden-proto/proto``).

The stubs are committed, so that ``pip install`` needs no compiler; the test
``tests/test_stubs.py`` regenerates them into a temporary directory and
fails if they differ from what is committed. Needs ``grpcio-tools`` at the
version pinned in ``requirements-dev.txt``.

Run: python3 clients/python/generate_stubs.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "crates" / "keywarden-proto" / "proto"
PROTOS = ["datakey.proto", "keys.proto", "mac.proto", "operator.proto"]


def generate(out: Path) -> list[Path]:
    """Writes the stubs under ``out`` (which receives ``keywarden/v1/...``)
    and returns the files written."""
    from grpc_tools import protoc  # only needed to generate

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
    ] + [str(PROTO_ROOT / "keywarden" / "v1" / p) for p in PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted((out / "keywarden" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "src"
    for f in generate(target):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
