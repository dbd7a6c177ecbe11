"""A real dev daemon for the tests that need one: ``keywarden dev`` (the
real binary, a throwaway SoftHSM token, a real socket in a temporary
directory), started once per session and stopped at the end."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def keywarden_bin() -> Path:
    """``$KEYWARDEN_BIN``, else the workspace's debug build."""
    env = os.environ.get("KEYWARDEN_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "keywarden"
    if not path.is_file():
        pytest.fail(f"no keywarden binary at {path}: run `cargo build` or set KEYWARDEN_BIN")
    return path


@dataclass
class Dev:
    """A running dev daemon."""

    socket: str
    bin: Path
    env: dict[str, str]

    def cli(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Runs the real CLI against this daemon."""
        r = subprocess.run([str(self.bin), *args], env=self.env, input=input, capture_output=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"keywarden {' '.join(args)} failed: {r.stderr.decode()}")
        return r

    def create_key(self, name: str, *extra: str) -> str:
        self.cli("key", "create", name, *extra)
        return name


@pytest.fixture(scope="session")
def dev() -> Iterator[Dev]:
    binary = keywarden_bin()
    with tempfile.TemporaryDirectory(prefix="kw-py-") as tmp:
        socket = os.path.join(tmp, "kw.sock")
        env = dict(os.environ, KEYWARDEN_SOCKET=socket)
        log = open(os.path.join(tmp, "dev.log"), "wb")
        proc = subprocess.Popen(
            [str(binary), "dev", "--dir", os.path.join(tmp, "dev"), "--socket", socket],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while b"Unsealed." not in Path(log.name).read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("keywarden dev did not unseal: " + Path(log.name).read_text())
                time.sleep(0.05)
            yield Dev(socket=socket, bin=binary, env=env)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


@pytest.fixture()
def client(dev: Dev) -> Iterator[object]:
    import keywarden

    with keywarden.Client(dev.socket) as c:
        yield c
