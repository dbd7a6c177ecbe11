"""The opt-in data-key cache, bounded by age, messages and bytes, and
emptied by the daemon's key changes (the same design as the Rust SDK's,
``docs/ENVELOPE.md``).

A cached key must not outlive its CMK's revocation. A background thread
holds a ``WatchKeys`` stream open: the daemon sends every change of a key
(disabled, a version revoked, destruction scheduled or done, rotated)
before the admin's call returns, and a heartbeat every 250 ms. The cache
serves only while it has heard from the daemon within the last
:data:`LIVENESS` seconds; a broken or silent stream empties it and every
call goes to the daemon until the stream is back. A key change invalidates
every lease of that key, so a stream using it stops at its next batch of
segments. A key fetched while a change arrives is not cached (a ticket is
taken before the fetch).

Cached keys are held in ``bytearray`` and wiped when their entry goes; a
lease hands out a copy, which its user wipes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from .v1 import datakey_pb2 as pb

#: Seconds since the daemon was last heard from within which the cache
#: serves (the daemon's heartbeat is every 0.25 s).
LIVENESS = 0.75


@dataclass(frozen=True)
class CacheConfig:
    """Each entry is one data key reused for at most ``max_age`` seconds,
    ``max_messages`` messages and ``max_bytes`` plaintext bytes."""

    max_age: float = 60.0
    max_messages: int = 1000
    max_bytes: int = 64 << 20
    max_entries: int = 1000


@dataclass
class CacheStats:
    """What the cache has done so far."""

    hits: int = 0
    misses: int = 0
    revoked: int = 0
    live: bool = False


@dataclass
class _Entry:
    key: bytearray
    blobs: tuple[bytes, ...]
    key_ids: tuple[str, ...]
    stamps: tuple[int, ...]
    epoch: int
    created: float
    messages: int = 0
    bytes: int = 0

    def wipe(self) -> None:
        for i in range(len(self.key)):
            self.key[i] = 0


@dataclass
class Lease:
    """A data key handed out by the cache: a copy of the key (wipe it), its
    blobs, and what :meth:`valid` checks against."""

    key: bytearray
    blobs: tuple[bytes, ...]
    _valid: Callable[[], bool] = field(repr=False)

    def valid(self) -> bool:
        """False once a key it involves changed or the cache lost the
        daemon."""
        return self._valid()

    def wipe(self) -> None:
        for i in range(len(self.key)):
            self.key[i] = 0

    def __repr__(self) -> str:
        return "Lease(<redacted>)"


class DataKeyCache:
    """Started by ``Client(cache=CacheConfig(...))``; not used directly."""

    def __init__(self, channel: grpc.Channel, config: CacheConfig) -> None:
        if config.max_messages <= 0 or config.max_entries <= 0 or config.max_age <= 0:
            raise ValueError("cache: max_age, max_messages and max_entries must be above zero")
        from .v1 import datakey_pb2_grpc

        self.config = config
        self._stub = datakey_pb2_grpc.DataKeyServiceStub(channel)
        self._lock = threading.Lock()
        self._enc: OrderedDict[tuple[tuple[str, ...], bytes], _Entry] = OrderedDict()
        self._dec: OrderedDict[tuple[bytes, bytes], _Entry] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self._changes = 0
        self._heard = float("-inf")
        self._stats = CacheStats()
        self._closed = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, name="keywarden-watch", daemon=True)
        self._thread.start()

    # -- the watcher ----------------------------------------------------------

    def _follow(self) -> None:
        pause = 0.05
        while not self._closed.is_set():
            stream = self._stub.WatchKeys(pb.WatchKeysRequest())
            with self._lock:
                # close() cancels the stream it sees; one made after it ran
                # is cancelled here.
                if self._closed.is_set():
                    stream.cancel()
                    break
                self._stream = stream
            try:
                first = True
                for ev in stream:
                    if self._closed.is_set():
                        break
                    pause = 0.05
                    self._event(ev, first)
                    first = False
            except grpc.RpcError:
                pass
            self._lost()
            self._closed.wait(pause)
            pause = min(pause * 2, 2.0)

    def _event(self, ev: pb.KeyEvent, first: bool) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._heard = time.monotonic()
            if first:
                # Changes made while no stream was open reached nobody: a key
                # fetched meanwhile (its ticket older than this) is not stored.
                self._forget_all()
            if ev.kind == pb.KeyEvent.CHANGED:
                self._generations[ev.key_id] = self._generations.get(ev.key_id, 0) + 1
                self._changes += 1
                self._stats.revoked += self._drop(lambda e: ev.key_id in e.key_ids)
            elif ev.kind != pb.KeyEvent.HEARTBEAT:
                # RESET, or a kind this client does not know: forget all.
                self._forget_all()
            self._sweep()

    def _sweep(self) -> None:
        """Wipes the entries that reached their age."""
        now = time.monotonic()
        self._drop(lambda e: now - e.created > self.config.max_age)

    def _lost(self) -> None:
        with self._lock:
            self._heard = float("-inf")
            self._forget_all()

    def _forget_all(self) -> None:
        self._epoch += 1
        self._changes += 1
        self._stats.revoked += self._drop(lambda e: True)

    def _drop(self, which: Callable[[_Entry], bool]) -> int:
        n = 0
        for table in (self._enc, self._dec):
            for k in [k for k, e in table.items() if which(e)]:
                table.pop(k).wipe()
                n += 1
        return n

    def close(self) -> None:
        """Stops the watcher and wipes every entry; nothing is served after."""
        with self._lock:
            self._closed.set()
            stream = self._stream
        if stream is not None:
            stream.cancel()
        self._thread.join(timeout=5)
        self._lost()

    # -- serving --------------------------------------------------------------

    def _live(self) -> bool:
        return not self._closed.is_set() and time.monotonic() - self._heard <= LIVENESS

    def stats(self) -> CacheStats:
        with self._lock:
            s = CacheStats(self._stats.hits, self._stats.misses, self._stats.revoked, self._live())
        return s

    def ticket(self) -> int:
        """Taken before a daemon call whose key is to be stored."""
        with self._lock:
            return self._changes

    def _lease(self, e: _Entry) -> Lease:
        key_ids, stamps, epoch = e.key_ids, e.stamps, e.epoch

        def valid() -> bool:
            with self._lock:
                return (
                    self._live()
                    and self._epoch == epoch
                    and all(self._generations.get(k, 0) == g for k, g in zip(key_ids, stamps, strict=True))
                )

        return Lease(bytearray(e.key), e.blobs, valid)

    def _usable(self, e: _Entry, nbytes: int) -> bool:
        c = self.config
        return (
            time.monotonic() - e.created <= c.max_age
            and e.messages < c.max_messages
            and e.bytes + nbytes <= c.max_bytes
        )

    def take_encrypt(self, keys: Sequence[str], ctx: bytes, nbytes: int) -> Lease | None:
        """A cached key for encrypting ``nbytes`` under ``keys`` with this
        (encoded) context, or ``None``."""
        with self._lock:
            k = (tuple(keys), ctx)
            e = self._enc.get(k)
            if e is None or not self._live() or not self._usable(e, nbytes):
                self._retire(self._enc, k, e)
                return None
            e.messages += 1
            e.bytes += nbytes
            self._stats.hits += 1
            return self._lease(e)

    def put_encrypt(
        self,
        ticket: int,
        keys: Sequence[str],
        ctx: bytes,
        key: bytearray,
        blobs: Sequence[bytes],
        key_ids: Sequence[str],
        nbytes: int,
    ) -> None:
        """Stores a fresh key (unless a change arrived since ``ticket``)."""
        self._put(self._enc, (tuple(keys), ctx), ticket, key, blobs, key_ids, nbytes)

    def take_decrypt(self, blob: bytes, ctx: bytes) -> Lease | None:
        """A cached key for this recipient blob and context, or ``None``."""
        with self._lock:
            k = (blob, ctx)
            e = self._dec.get(k)
            if e is None or not self._live() or not self._usable(e, 0):
                self._retire(self._dec, k, e)
                return None
            e.messages += 1
            self._stats.hits += 1
            return self._lease(e)

    def _retire(self, table: OrderedDict[Any, _Entry], k: object, e: _Entry | None) -> None:
        """A miss: an entry past its bounds is wiped at once."""
        self._stats.misses += 1
        if e is not None and self._live() and not self._usable(e, 0):
            table.pop(k).wipe()

    def put_decrypt(self, ticket: int, blob: bytes, ctx: bytes, key: bytearray, key_id: str) -> None:
        self._put(self._dec, (blob, ctx), ticket, key, [blob], [key_id], 0)

    def _put(
        self,
        table: OrderedDict[Any, _Entry],
        k: object,
        ticket: int,
        key: bytearray,
        blobs: Sequence[bytes],
        key_ids: Sequence[str],
        nbytes: int,
    ) -> None:
        with self._lock:
            if ticket != self._changes or not self._live():
                return
            while len(self._enc) + len(self._dec) >= self.config.max_entries:
                # The older of the two tables' oldest entries goes.
                heads = [t for t in (self._enc, self._dec) if t]
                oldest = min(heads, key=lambda t: next(iter(t.values())).created)
                oldest.popitem(last=False)[1].wipe()
            old = table.pop(k, None)
            if old is not None:
                old.wipe()
            table[k] = _Entry(
                key=bytearray(key),
                blobs=tuple(blobs),
                key_ids=tuple(key_ids),
                stamps=tuple(self._generations.get(i, 0) for i in key_ids),
                epoch=self._epoch,
                created=time.monotonic(),
                messages=1,
                bytes=nbytes,
            )
