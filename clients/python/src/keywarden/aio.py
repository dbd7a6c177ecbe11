"""The asyncio flavour: :class:`AsyncClient` offers the record, field, MAC
and data-key calls of :class:`keywarden.Client` as coroutines, for asyncio
applications (FastAPI, aiohttp). Each call runs the blocking client in a
worker thread (``asyncio.to_thread``), so the event loop never waits on the
daemon or the HSM; the cache, the typed errors and the secret handling are
the blocking client's own. Streams stay on the blocking client: asyncio has
no standard binary file object."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .cache import CacheConfig
from .client import Client, Context, Mac
from .datakey import DataKey
from .errors import KeywardenError

T = TypeVar("T")


class AsyncClient:
    """As :class:`keywarden.Client`; use ``async with``."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        cache: CacheConfig | None = None,
    ) -> None:
        self.sync = Client(socket, timeout=timeout, retries=retries, cache=cache)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stops the cache and closes the channel."""
        await self._run(self.sync.close)

    async def generate_data_key(self, key: str, context: Context | None = None) -> DataKey:
        return await self._run(self.sync.generate_data_key, key, context)

    async def decrypt_data_key(
        self, blob: bytes, context: Context | None = None, *, key: str | None = None
    ) -> DataKey:
        return await self._run(self.sync.decrypt_data_key, blob, context, key=key)

    async def encrypt(
        self, key: str | Sequence[str], plaintext: bytes, context: Context | None = None
    ) -> bytes:
        return await self._run(self.sync.encrypt, key, plaintext, context)

    async def decrypt(self, ciphertext: bytes, context: Context | None = None) -> bytes:
        return await self._run(self.sync.decrypt, ciphertext, context)

    async def encrypt_field(self, key: str, plaintext: bytes, context: Context | None = None) -> bytes:
        return await self._run(self.sync.encrypt_field, key, plaintext, context)

    async def decrypt_field(
        self, blob: bytes, context: Context | None = None, *, key: str | None = None
    ) -> bytes:
        return await self._run(self.sync.decrypt_field, blob, context, key=key)

    async def encrypt_fields(
        self, items: Iterable[tuple[str, bytes, Context | None]]
    ) -> list[bytes | KeywardenError]:
        return await self._run(self.sync.encrypt_fields, list(items))

    async def decrypt_fields(
        self, items: Iterable[tuple[bytes, Context | None]], *, key: str | None = None
    ) -> list[bytes | KeywardenError]:
        return await self._run(self.sync.decrypt_fields, list(items), key=key)

    async def mac(self, key: str, data: bytes, *, version: int | None = None) -> Mac:
        return await self._run(self.sync.mac, key, data, version=version)

    async def verify_mac(
        self, key: str, data: bytes, mac: bytes | Mac, *, version: int | None = None
    ) -> bool:
        return await self._run(self.sync.verify_mac, key, data, mac, version=version)

    async def blind_index(
        self, key: str, value: bytes | str, *, bits: int = 32, domain: str = "", version: int | None = None
    ) -> bytes:
        return await self._run(self.sync.blind_index, key, value, bits=bits, domain=domain, version=version)

    async def blind_indexes(
        self,
        key: str,
        values: Iterable[bytes | str],
        *,
        bits: int = 32,
        domain: str = "",
        version: int | None = None,
    ) -> list[bytes]:
        return await self._run(
            self.sync.blind_indexes, key, list(values), bits=bits, domain=domain, version=version
        )
