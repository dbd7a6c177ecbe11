"""A throwaway Keywarden daemon for an application's tests:
``keywarden dev`` (a SoftHSM token, config and state in a temporary
directory, unsealed, dev mode's open policy), started and stopped around a
test session. Never for production.

>>> with DevDaemon() as dev:                      # doctest: +SKIP
...     dev.create_key("patients")
...     with keywarden.Client(dev.socket) as kw: ...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import UsageError


def find_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """``binary``, else ``$KEYWARDEN_BIN``, else ``keywarden`` on the PATH."""
    found = binary or os.environ.get("KEYWARDEN_BIN") or shutil.which("keywarden")
    if not found or not Path(found).is_file():
        raise UsageError(f"binary: no keywarden binary ({found or 'not on PATH'}); set KEYWARDEN_BIN")
    return Path(found)


class DevDaemon:
    """``keywarden dev`` in a temporary directory. ``shared=True`` lets
    other local users reach the socket (to test a second admin)."""

    def __init__(
        self, binary: str | os.PathLike[str] | None = None, *, shared: bool = False, timeout: float = 60
    ) -> None:
        self.binary = find_binary(binary)
        self.shared = shared
        self.timeout = timeout
        self._tmp: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.socket = ""
        self.env: dict[str, str] = {}

    def start(self) -> DevDaemon:
        """Starts the daemon and waits until it is unsealed."""
        self._tmp = tempfile.mkdtemp(prefix="kw-dev-")
        if self.shared:
            os.chmod(self._tmp, 0o755)
        self.socket = os.path.join(self._tmp, "kw.sock")
        self.env = dict(os.environ, KEYWARDEN_SOCKET=self.socket)
        log = Path(self._tmp) / "dev.log"
        with open(log, "wb") as out:
            self._proc = subprocess.Popen(
                [str(self.binary), "dev", "--dir", os.path.join(self._tmp, "dev"), "--socket", self.socket],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + self.timeout
        while b"Unsealed." not in log.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"keywarden dev did not unseal:\n{text}")
            time.sleep(0.05)
        if self.shared:
            os.chmod(os.path.join(self._tmp, "dev"), 0o755)
        return self

    def stop(self) -> None:
        """Stops the daemon and removes its directory."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> DevDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cli(
        self, *args: str, input: bytes | None = None, check: bool = True, as_user: list[str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Runs the real CLI against this daemon (``as_user``: a command
        prefix such as ``setpriv --reuid=...``)."""
        r = subprocess.run(
            [*(as_user or []), str(self.binary), *args],
            env=self.env,
            input=input,
            capture_output=True,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"keywarden {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
        return r

    def create_key(self, name: str, *extra: str) -> str:
        """Creates a CMK (``extra``: e.g. ``--kind``, ``hmac``)."""
        self.cli("key", "create", name, *extra)
        return name
