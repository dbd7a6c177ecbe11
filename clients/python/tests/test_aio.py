"""The asyncio flavour against a real dev daemon: many calls in flight at
once from one event loop, with the blocking client's errors."""

from __future__ import annotations

import asyncio

import pytest

import keywarden
from keywarden.aio import AsyncClient


def test_concurrent_calls_from_one_event_loop(dev) -> None:
    aes = dev.create_key("py-aio")
    index = dev.create_key("py-aio-index", "--kind", "hmac")

    async def main() -> None:
        async with AsyncClient(dev.socket) as kw:
            ctxs = [{"row": str(i)} for i in range(40)]
            sealed = await asyncio.gather(*(kw.encrypt(aes, f"r{i}".encode(), c) for i, c in enumerate(ctxs)))
            opened = await asyncio.gather(*(kw.decrypt(m, c) for m, c in zip(sealed, ctxs, strict=True)))
            assert opened == [f"r{i}".encode() for i in range(40)]
            field = await kw.encrypt_field(aes, b"MRN-1", ctxs[0])
            assert await kw.decrypt_field(field, ctxs[0], key=aes) == b"MRN-1"
            m = await kw.mac(index, b"MRN-1")
            assert await kw.verify_mac(index, b"MRN-1", m)
            assert len(await kw.blind_index(index, "MRN-1", domain="patients.mrn")) == 4
            with pytest.raises(keywarden.NotFoundError):
                await kw.generate_data_key("py-aio-missing")

    asyncio.run(main())
