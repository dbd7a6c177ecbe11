"""A real dev daemon for the tests that need one (the real binary,
``$KEYWARDEN_BIN`` or the workspace's debug build), started once per
session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import keywarden
from keywarden.testing import DevDaemon

REPO = Path(__file__).resolve().parents[3]
os.environ.setdefault("KEYWARDEN_BIN", str(REPO / "target" / "debug" / "keywarden"))


@pytest.fixture(scope="session")
def dev() -> Iterator[DevDaemon]:
    with DevDaemon(shared=True) as d:
        yield d


@pytest.fixture()
def client(dev: DevDaemon) -> Iterator[keywarden.Client]:
    with keywarden.Client(dev.socket) as c:
        yield c
