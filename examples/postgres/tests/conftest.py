"""A real PostgreSQL server for the example's tests: ``initdb`` in a
temporary directory, listening only on a Unix socket there, run as an
unprivileged user when the tests run as root (PostgreSQL refuses root), and
stopped at the end. Plus a real ``keywarden dev`` daemon (the Python
client's fixture)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keywarden.testing import DevDaemon

HERE = Path(__file__).resolve().parents[1]
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
os.environ.setdefault("KEYWARDEN_BIN", str(REPO / "target" / "debug" / "keywarden"))


@pytest.fixture(scope="session")
def dev() -> Iterator[DevDaemon]:
    # Shared: a second admin (another uid) approves the crypto-shredding.
    with DevDaemon(shared=True) as d:
        yield d


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"no {name}: scripts/install-deps.sh --test installs postgresql")
    return path


@dataclass
class Postgres:
    """A running server."""

    data: Path
    sockets: Path
    user: str
    run_as: list[str]

    def dsn(self, db: str = "postgres") -> str:
        return f"host={self.sockets} user={self.user} dbname={db}"

    def cmd(self, name: str, *args: str) -> list[str]:
        """A client tool's command line, connected to this server."""
        return [pg_bin(name), "-h", str(self.sockets), "-U", self.user, *args]

    def tool(self, name: str, *args: str) -> bytes:
        """Runs a client tool; returns its output."""
        return subprocess.run(self.cmd(name, *args), check=True, capture_output=True).stdout


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    tmp = Path(tempfile.mkdtemp(prefix="kw-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as nobody.
        nobody = pwd.getpwnam("nobody")
        os.chmod(tmp, 0o755)
        run_as = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    data, sockets = tmp / "data", tmp / "sockets"
    for d in (data, sockets):
        d.mkdir()
        if run_as:
            os.chown(d, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    user = "clinic"
    subprocess.run(
        [
            *run_as,
            pg_bin("initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(sockets / "postgres.log"),
            "-w",
            "-o",
            f"-c listen_addresses='' -k {sockets} -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield Postgres(data=data, sockets=sockets, user=user, run_as=run_as)
    finally:
        subprocess.run(
            [*run_as, pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)
