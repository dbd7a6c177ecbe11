"""The data-key cache against a real dev daemon: hits within its bounds,
nothing served before the daemon is heard, and a key change (disable,
revoke) stops cached use."""

from __future__ import annotations

import io
import time

import pytest

import keywarden
from keywarden import format as fmt

CTX = {"tenant": "clinic-a"}


def wait(pred, what: str, secs: float = 5.0) -> None:
    deadline = time.monotonic() + secs
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture()
def cached(dev):
    with keywarden.Client(dev.socket, cache=keywarden.CacheConfig(max_messages=50)) as c:
        wait(lambda: c.cache_stats().live, "the cache never heard from the daemon")
        yield c


def test_records_reuse_a_key_within_its_bounds(dev, cached) -> None:
    key = dev.create_key("py-cache-bounds")
    msgs = [cached.encrypt(key, f"record {i}".encode(), CTX) for i in range(120)]
    blobs = {fmt.split_message(m).header.recipients[0] for m in msgs}
    # 120 messages at most 50 per key: at least three data keys, and far
    # fewer than 120 (a heartbeat delayed past 0.75 s on a loaded machine
    # makes the cache miss, never serve stale).
    assert 3 <= len(blobs) <= 12
    for i, m in enumerate(msgs):
        assert cached.decrypt(m, CTX) == f"record {i}".encode()
    s = cached.cache_stats()
    assert s.hits >= 200


def test_a_disabled_key_is_not_served_from_the_cache(dev, cached) -> None:
    key = dev.create_key("py-cache-revoke")
    msg = cached.encrypt(key, b"x", CTX)
    assert cached.decrypt(msg, CTX) == b"x"
    before = cached.cache_stats().revoked
    dev.cli("key", "disable", key)
    wait(lambda: cached.cache_stats().revoked > before, "the change never reached the cache")
    with pytest.raises(keywarden.FailedPreconditionError):
        cached.decrypt(msg, CTX)
    with pytest.raises(keywarden.FailedPreconditionError):
        cached.encrypt(key, b"y", CTX)
    dev.cli("key", "enable", key)


def test_a_stream_stops_when_its_key_changes(dev, cached) -> None:
    key = dev.create_key("py-cache-stream")
    pt = bytes(64 * fmt.SEGMENT)
    sealed = io.BytesIO()
    cached.encrypt_stream(key, io.BytesIO(pt), sealed, CTX)
    out = io.BytesIO()
    cached.decrypt_stream(io.BytesIO(sealed.getvalue()), out, CTX)  # caches the key
    assert out.getvalue() == pt

    class Revoking(io.BytesIO):
        """Disables the key once the stream is under way."""

        done = False

        def read(self, n: int = -1) -> bytes:
            if self.tell() > 20 * fmt.SEALED_SEGMENT and not self.done:
                before = cached.cache_stats().revoked
                dev.cli("key", "disable", key)
                wait(lambda: cached.cache_stats().revoked > before, "no change")
                self.done = True
            return super().read(n)

    out = io.BytesIO()
    with pytest.raises(keywarden.FailedPreconditionError):
        cached.decrypt_stream(Revoking(sealed.getvalue()), out, CTX)
    assert len(out.getvalue()) < len(pt)
    dev.cli("key", "enable", key)


def test_without_the_daemon_nothing_is_served(dev) -> None:
    c = keywarden.Client(dev.socket, cache=keywarden.CacheConfig())
    # Before the first heartbeat the cache is not live: every call is a miss.
    assert not c.cache_stats().live
    c.close()
    assert not c.cache_stats().live


def test_a_key_fetched_while_no_stream_was_open_is_not_stored() -> None:
    """A change made while the watch stream was down reached nobody: the
    first event of the next stream forgets everything, and a key fetched
    before it (its ticket older) is not cached."""
    import grpc

    from keywarden.cache import DataKeyCache
    from keywarden.v1 import datakey_pb2 as pb

    channel = grpc.insecure_channel("unix:/nonexistent/kw.sock", options=keywarden.channel_options())
    cache = DataKeyCache(channel, keywarden.CacheConfig())
    try:
        ticket = cache.ticket()  # an app fetches a key while the stream is down
        heartbeat = pb.KeyEvent(kind=pb.KeyEvent.HEARTBEAT)
        cache._event(heartbeat, True)  # the stream is back
        cache.put_decrypt(ticket, b"blob", b"ctx", bytearray(32), "key-id")
        assert cache.take_decrypt(b"blob", b"ctx") is None
        # A key fetched after the stream is back is cached, and an unknown
        # event kind forgets it (fail closed).
        ticket = cache.ticket()
        cache.put_decrypt(ticket, b"blob", b"ctx", bytearray(32), "key-id")
        lease = cache.take_decrypt(b"blob", b"ctx")
        assert lease is not None and lease.valid()
        cache._event(pb.KeyEvent(kind=99), False)
        assert not lease.valid() and cache.take_decrypt(b"blob", b"ctx") is None
    finally:
        cache.close()
        channel.close()
