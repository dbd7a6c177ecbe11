"""The committed protobuf stubs are exactly what the pinned grpcio-tools
makes from the daemon's .proto files: they cannot go stale unnoticed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate_stubs", HERE / "generate_stubs.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    sys.modules["generate_stubs"] = gen
    spec.loader.exec_module(gen)
    fresh = gen.generate(tmp_path)
    assert fresh, "nothing was generated"
    committed = HERE / "src" / "keywarden" / "v1"
    names = sorted(p.name for p in fresh)
    expected = [*committed.glob("*_pb2*.py*"), committed / "metadata.py"]
    assert names == sorted(p.name for p in expected), "a stub is missing or extra"
    for f in fresh:
        assert f.read_bytes() == (committed / f.name).read_bytes(), (
            f"{f.name} is stale: run python3 clients/python/generate_stubs.py"
        )
