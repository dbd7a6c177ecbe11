"""The Keywarden client: data keys from the daemon over its Unix socket, and
envelope encryption of records and streams in the format every Keywarden
implementation shares (``docs/FORMAT.md``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import grpc

from . import blind
from . import format as fmt
from .cache import CacheConfig, CacheStats, DataKeyCache, Lease
from .datakey import DataKey
from .errors import (
    ConnectError,
    FailedPreconditionError,
    KeywardenError,
    MessageError,
    UnavailableError,
    UsageError,
    from_item,
    from_rpc_error,
)
from .v1 import datakey_pb2 as pb
from .v1 import datakey_pb2_grpc as pb_grpc
from .v1 import keys_pb2, keys_pb2_grpc, mac_pb2, mac_pb2_grpc, operator_pb2, operator_pb2_grpc

#: The environment variable naming the daemon's socket.
SOCKET_ENV = "KEYWARDEN_SOCKET"
#: Where a packaged daemon listens.
DEFAULT_SOCKET = "/run/keywarden/keywarden.sock"
#: The most items one batch call carries.
MAX_BATCH = 1024
#: The largest plaintext :meth:`Client.encrypt_field` takes (the daemon's
#: ``Encrypt`` limit), and the largest input of a MAC.
MAX_FIELD = 4096
#: Batches are also bounded by the daemon's 256 KiB message limit: batch
#: calls are split so that each request stays under this many bytes.
BATCH_BYTES = 192 * 1024

Context = Mapping[str, str]
T = TypeVar("T")


def channel_options() -> list[tuple[str, object]]:
    """The channel options a Unix-socket client needs. grpc-core would send
    the socket path as ``:authority``, which the daemon (like any HTTP/2
    server) rejects; ``localhost`` is what every Keywarden client sends."""
    return [
        ("grpc.default_authority", "localhost"),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.enable_retries", 0),
    ]


def check_context(context: Context | None, field: str = "context") -> dict[str, str]:
    """A copy of ``context`` as ``dict[str, str]``, or :class:`UsageError`."""
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise UsageError(f"{field}: must be a mapping of str to str, not {type(context).__name__}")
    out: dict[str, str] = {}
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise UsageError(f"{field}: keys and values must be str (got {k!r}: {type(v).__name__})")
        for text in (k, v):
            try:
                text.encode()
            except UnicodeEncodeError:
                raise UsageError(f"{field}: {text!r} is not encodable as UTF-8") from None
        out[k] = v
    return out


def _keys(key: str | Sequence[str]) -> list[str]:
    keys = [key] if isinstance(key, str) else list(key)
    if not 1 <= len(keys) <= fmt.MAX_RECIPIENTS:
        raise UsageError(f"key: {len(keys)} keys; a message is wrapped under 1 to {fmt.MAX_RECIPIENTS}")
    for i, k in enumerate(keys):
        if not isinstance(k, str) or not k:
            raise UsageError(f"key: must be a non-empty str, not {k!r}")
        if k in keys[:i]:
            raise UsageError(f"key: {k!r} is named twice")
    return keys


def _read_full(src: BinaryIO, n: int) -> bytes:
    """Reads until ``n`` bytes or the end of the input."""
    parts = []
    got = 0
    while got < n:
        b = src.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


class Client:
    """A connection to the daemon.

    ``socket`` defaults to ``$KEYWARDEN_SOCKET``, then to
    :data:`DEFAULT_SOCKET`. Calls that change nothing are retried on
    UNAVAILABLE (``retries`` attempts in all, with backoff); every call has
    a deadline of ``timeout`` seconds. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        cache: CacheConfig | None = None,
    ) -> None:
        path = os.fspath(socket) if socket is not None else os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
        if not path:
            raise UsageError("socket: is empty")
        self.socket = path
        self.timeout = timeout
        self.retries = max(1, retries)
        self._channel = grpc.insecure_channel(f"unix:{path}", options=channel_options())
        self.datakeys = pb_grpc.DataKeyServiceStub(self._channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self._channel)
        self.operator = operator_pb2_grpc.OperatorServiceStub(self._channel)
        self.macs_stub = mac_pb2_grpc.MacServiceStub(self._channel)
        self._cache = DataKeyCache(self._channel, cache) if cache is not None else None

    # -- plumbing -----------------------------------------------------------

    def close(self) -> None:
        """Stops the cache (wiping it) and closes the channel."""
        if self._cache is not None:
            self._cache.close()
        self._channel.close()

    def cache_stats(self) -> CacheStats | None:
        """The data-key cache's counters (``None`` without a cache)."""
        return self._cache.stats() if self._cache is not None else None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: object, *, idempotent: bool = True) -> T:
        pause = 0.05
        for attempt in range(1, self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if isinstance(err, UnavailableError) and not os.path.exists(self.socket):
                    err = ConnectError(
                        f"cannot reach the Keywarden daemon: no socket at {self.socket}", err.code
                    )
                retry = idempotent and isinstance(err, UnavailableError | ConnectError)
                if not retry or attempt == self.retries:
                    raise err from None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        raise KeywardenError("unreachable")  # pragma: no cover

    # -- status -------------------------------------------------------------

    def status(self) -> operator_pb2.StatusResponse:
        """The daemon's status (seal phase, HSM health, key count, ...)."""
        return self._call(self.operator.Status, operator_pb2.StatusRequest())

    def describe_key(self, key: str) -> keys_pb2.DescribeKeyResponse:
        """A key's record: state, versions, holds (needs the admin or
        auditor role)."""
        return self._call(self.keys.DescribeKey, keys_pb2.DescribeKeyRequest(name=key))

    # -- data keys ----------------------------------------------------------

    def generate_data_key(self, key: str, context: Context | None = None) -> DataKey:
        """A fresh 256-bit data key under the newest version of ``key``,
        bound to ``context``: the plaintext (wipe it after use) and the
        blob to store beside the data."""
        req = pb.GenerateDataKeyRequest(key=key, encryption_context=check_context(context))
        r = self._call(self.datakeys.GenerateDataKey, req, idempotent=False)
        return _data_key(r.plaintext, r.key, r.key_id, r.key_version, r.ciphertext_blob, r)

    def generate_data_key_without_plaintext(self, key: str, context: Context | None = None) -> bytes:
        """A fresh data key's wrapped blob only (to be decrypted later, by
        whoever may)."""
        req = pb.GenerateDataKeyRequest(key=key, encryption_context=check_context(context))
        r = self._call(self.datakeys.GenerateDataKeyWithoutPlaintext, req, idempotent=False)
        return bytes(r.ciphertext_blob)

    def decrypt_data_key(
        self, blob: bytes, context: Context | None = None, *, key: str | None = None
    ) -> DataKey:
        """Unwraps a data-key blob under the context it was made with;
        ``key`` (optional) insists on the CMK it must be under."""
        req = pb.DecryptRequest(
            ciphertext_blob=bytes(blob), encryption_context=check_context(context), key=key or ""
        )
        r = self._call(self.datakeys.Decrypt, req)
        return _data_key(r.plaintext, r.key, r.key_id, r.key_version, bytes(blob), r)

    def reencrypt(
        self,
        blob: bytes,
        destination_key: str,
        context: Context | None = None,
        destination_context: Context | None = None,
    ) -> bytes:
        """The same data key wrapped under ``destination_key`` (the
        plaintext never leaves the daemon)."""
        return bytes(self._reencrypt(blob, destination_key, context, destination_context).ciphertext_blob)

    def _reencrypt(
        self,
        blob: bytes,
        destination_key: str,
        context: Context | None,
        destination_context: Context | None,
    ) -> pb.ReEncryptResponse:
        req = pb.ReEncryptRequest(
            ciphertext_blob=bytes(blob),
            encryption_context=check_context(context),
            destination_key=destination_key,
        )
        if destination_context is not None:
            req.destination_encryption_context.update(
                check_context(destination_context, "destination_context")
            )
            req.replace_context = True
        return self._call(self.datakeys.ReEncrypt, req)

    def generate_data_keys(
        self, items: Iterable[tuple[str, Context | None]]
    ) -> list[DataKey | KeywardenError]:
        """Many data keys in as few calls as the limits allow (1024 items
        and 256 KiB per call); each item succeeds or fails on its own (a
        failed item is its typed error, not raised)."""
        reqs = [pb.GenerateDataKeyRequest(key=k, encryption_context=check_context(c)) for k, c in items]
        out: list[DataKey | KeywardenError] = []
        for chunk in _chunks(reqs):
            r = self._call(
                self.datakeys.BatchGenerateDataKey,
                pb.BatchGenerateDataKeyRequest(requests=chunk),
                idempotent=False,
            )
            for item in r.results:
                if item.HasField("ok"):
                    ok = item.ok
                    out.append(
                        _data_key(ok.plaintext, ok.key, ok.key_id, ok.key_version, ok.ciphertext_blob, ok)
                    )
                else:
                    out.append(_item_error(item.error))
        return out

    def decrypt_data_keys(
        self, items: Iterable[tuple[bytes, Context | None]]
    ) -> list[DataKey | KeywardenError]:
        """Many blobs unwrapped in as few calls as the limits allow, each
        on its own."""
        pairs = [(bytes(b), check_context(c)) for b, c in items]
        reqs = [pb.DecryptRequest(ciphertext_blob=b, encryption_context=c) for b, c in pairs]
        out: list[DataKey | KeywardenError] = []
        done = 0
        for chunk in _chunks(reqs):
            r = self._call(self.datakeys.BatchDecrypt, pb.BatchDecryptRequest(requests=chunk))
            for (blob, _), item in zip(pairs[done : done + len(chunk)], r.results, strict=True):
                if item.HasField("ok"):
                    ok = item.ok
                    try:
                        out.append(_data_key(ok.plaintext, ok.key, ok.key_id, ok.key_version, blob, ok))
                    except KeywardenError as e:
                        out.append(e)
                else:
                    out.append(_item_error(item.error))
            done += len(chunk)
        return out

    # -- small fields, encrypted by the daemon ------------------------------

    def encrypt_field(self, key: str, plaintext: bytes, context: Context | None = None) -> bytes:
        """Encrypts up to 4 KiB in the HSM under ``key`` (an ``aes`` key),
        bound to ``context``: one call, no data key on the client. The blob
        opens with :meth:`decrypt_field` (the daemon's ``Decrypt``)."""
        req = pb.EncryptRequest(
            key=key, plaintext=bytes(plaintext), encryption_context=check_context(context)
        )
        return bytes(self._call(self.datakeys.Encrypt, req, idempotent=False).ciphertext_blob)

    def decrypt_field(self, blob: bytes, context: Context | None = None, *, key: str | None = None) -> bytes:
        """Opens what :meth:`encrypt_field` made, under the same context.
        ``key`` insists on the CMK it must be under: a value planted under
        another key is refused."""
        req = pb.DecryptRequest(
            ciphertext_blob=bytes(blob), encryption_context=check_context(context), key=key or ""
        )
        r = self._call(self.datakeys.Decrypt, req)
        out = bytes(r.plaintext)
        r.ClearField("plaintext")
        return out

    def encrypt_fields(
        self, items: Iterable[tuple[str, bytes, Context | None]]
    ) -> list[bytes | KeywardenError]:
        """Many fields in as few calls as the limits allow (each item
        succeeds or fails on its own)."""
        reqs = [
            pb.EncryptRequest(key=k, plaintext=bytes(p), encryption_context=check_context(c))
            for k, p, c in items
        ]
        out: list[bytes | KeywardenError] = []
        for chunk in _chunks(reqs):
            r = self._call(
                self.datakeys.BatchEncrypt, pb.BatchEncryptRequest(requests=chunk), idempotent=False
            )
            for item in r.results:
                if item.HasField("ok"):
                    out.append(bytes(item.ok.ciphertext_blob))
                else:
                    out.append(_item_error(item.error))
        return out

    def decrypt_fields(
        self, items: Iterable[tuple[bytes, Context | None]], *, key: str | None = None
    ) -> list[bytes | KeywardenError]:
        """Many fields opened in as few calls as the limits allow; ``key``
        insists on the CMK every one must be under."""
        reqs = [
            pb.DecryptRequest(ciphertext_blob=bytes(b), encryption_context=check_context(c), key=key or "")
            for b, c in items
        ]
        out: list[bytes | KeywardenError] = []
        for chunk in _chunks(reqs):
            r = self._call(self.datakeys.BatchDecrypt, pb.BatchDecryptRequest(requests=chunk))
            for item in r.results:
                if item.HasField("ok"):
                    out.append(bytes(item.ok.plaintext))
                    item.ok.ClearField("plaintext")
                else:
                    out.append(_item_error(item.error))
        return out

    # -- MACs and blind indexes ---------------------------------------------

    def mac(self, key: str, data: bytes, *, version: int | None = None) -> Mac:
        """HMAC-SHA256 of ``data`` (up to 4 KiB) in the HSM under ``key`` (an
        ``hmac`` key): its newest version, or ``version``."""
        req = mac_pb2.GenerateMacRequest(key=key, data=bytes(data), key_version=version or 0)
        r = self._call(self.macs_stub.GenerateMac, req)
        return Mac(bytes(r.mac), r.key, r.key_version)

    def verify_mac(self, key: str, data: bytes, mac: bytes | Mac, *, version: int | None = None) -> bool:
        """Whether ``mac`` is the MAC of ``data`` under ``key`` (compared in
        constant time by the daemon). A :class:`Mac` carries its version."""
        if isinstance(mac, Mac):
            version = version or mac.key_version
            mac = mac.mac
        req = mac_pb2.VerifyMacRequest(key=key, data=bytes(data), mac=bytes(mac), key_version=version or 0)
        return bool(self._call(self.macs_stub.VerifyMac, req).valid)

    def macs(
        self, key: str, values: Iterable[bytes], *, version: int | None = None
    ) -> list[Mac | KeywardenError]:
        """MACs of many values under one key, in as few calls as the limits
        allow."""
        reqs = [mac_pb2.GenerateMacRequest(key=key, data=bytes(v), key_version=version or 0) for v in values]
        out: list[Mac | KeywardenError] = []
        for chunk in _chunks(reqs):
            r = self._call(self.macs_stub.BatchGenerateMac, mac_pb2.BatchGenerateMacRequest(requests=chunk))
            for item in r.results:
                if item.HasField("ok"):
                    out.append(Mac(bytes(item.ok.mac), item.ok.key, item.ok.key_version))
                else:
                    out.append(_item_error(item.error))
        return out

    def blind_index(
        self, key: str, value: bytes | str, *, bits: int = 32, domain: str = "", version: int | None = None
    ) -> bytes:
        """The blind index of ``value``: its HMAC under ``key`` in index
        ``domain`` (e.g. ``"patients.mrn"``), truncated to ``bits``. Fewer
        bits mean more false positives and less for an observer to learn.
        Pass the ``version`` the index was built with until it is rebuilt."""
        return self.blind_indexes(key, [value], bits=bits, domain=domain, version=version)[0]

    def blind_indexes(
        self,
        key: str,
        values: Iterable[bytes | str],
        *,
        bits: int = 32,
        domain: str = "",
        version: int | None = None,
    ) -> list[bytes]:
        """Blind indexes of many values (raises on the first failure)."""
        if not 1 <= bits <= blind.MAX_BITS:
            raise UsageError(f"bits: {bits}; 1 to {blind.MAX_BITS}")
        try:
            inputs = [
                blind.blind_input(domain, v.encode() if isinstance(v, str) else bytes(v)) for v in values
            ]
        except UnicodeEncodeError:
            raise UsageError("value: a value is not encodable as UTF-8") from None
        out = []
        for m in self.macs(key, inputs, version=version):
            if isinstance(m, KeywardenError):
                raise m
            out.append(blind.truncate(m.mac, bits))
        return out

    # -- envelope messages --------------------------------------------------

    def _material(
        self, keys: list[str], ctx: dict[str, str], nbytes: int | None
    ) -> tuple[bytearray, list[bytes], Lease | None]:
        """A data key (a copy: wipe it) and its blobs for one message of
        ``nbytes`` (``None``: a stream): from the cache, or fresh from the
        daemon (wrapped under the first key, rewrapped to the others), then
        cached. Streams never use the cache."""
        encoded = fmt.encode_context(ctx)
        cache = self._cache if nbytes is not None else None
        if cache is not None and nbytes is not None:
            lease = cache.take_encrypt(keys, encoded, nbytes)
            if lease is not None:
                return lease.key, list(lease.blobs), lease
        ticket = cache.ticket() if cache is not None else 0
        with self.generate_data_key(keys[0], ctx) as dk:
            blobs, key_ids = [dk.ciphertext_blob], [dk.key_id]
            for k in keys[1:]:
                r = self._reencrypt(dk.ciphertext_blob, k, ctx, None)
                blobs.append(bytes(r.ciphertext_blob))
                key_ids.append(r.key_id)
            key = bytearray(dk.plaintext)
        if cache is not None and nbytes is not None:
            cache.put_encrypt(ticket, keys, encoded, key, blobs, key_ids, nbytes)
        return key, blobs, None

    def _open_recipients(self, header: fmt.Header, ctx: dict[str, str]) -> tuple[bytearray, Lease | None]:
        """The data key of a message (a copy: wipe it), from the cache or
        from the daemon through any one recipient."""
        encoded = fmt.encode_context(ctx)
        if self._cache is not None:
            for blob in header.recipients:
                lease = self._cache.take_decrypt(blob, encoded)
                if lease is not None:
                    return lease.key, lease
        errors: list[KeywardenError] = []
        for blob in header.recipients:
            if blob[2:3] != b"\x01":
                errors.append(MessageError(f"a recipient is not a data-key blob (format {blob[2:3].hex()})"))
                continue
            ticket = self._cache.ticket() if self._cache is not None else 0
            try:
                dk = self.decrypt_data_key(blob, ctx)
            except KeywardenError as e:
                errors.append(e)
                continue
            with dk:
                key = bytearray(dk.plaintext)
                if self._cache is not None:
                    self._cache.put_decrypt(ticket, blob, encoded, key, dk.key_id)
            return key, None
        if len(errors) == 1:
            raise errors[0]
        raise MessageError(
            "no recipient of the message could be opened: " + "; ".join(str(e) for e in errors)
        )

    def encrypt(self, key: str | Sequence[str], plaintext: bytes, context: Context | None = None) -> bytes:
        """Encrypts a record in memory under a fresh data key wrapped under
        ``key`` (or each of up to 8 keys; any one opens it), bound to
        ``context``. Returns the whole message."""
        keys, ctx = _keys(key), check_context(context)
        plaintext = bytes(plaintext)
        key_copy, blobs, lease = self._material(keys, ctx, len(plaintext))
        try:
            out = fmt.seal_message(key_copy, fmt.random_salt(), blobs, ctx, plaintext)
        finally:
            _wipe(key_copy)
        _check_lease(lease)
        return out

    def decrypt(self, ciphertext: bytes, context: Context | None = None) -> bytes:
        """Opens a whole message under the context it was made with.
        Releases nothing unless every segment verifies."""
        ctx = check_context(context)
        split = fmt.split_message(bytes(ciphertext))
        key_copy, lease = self._open_recipients(split.header, ctx)
        try:
            keys = fmt.open_keys(key_copy, split, ctx)
        finally:
            _wipe(key_copy)
        out = fmt.open_body(keys, split.body)
        _check_lease(lease)
        return out

    def encrypt_stream(
        self, key: str | Sequence[str], src: BinaryIO, dst: BinaryIO, context: Context | None = None
    ) -> int:
        """Encrypts ``src`` to ``dst`` (binary file objects) in constant
        memory, one 16 KiB segment at a time. Returns the bytes written."""
        keys, ctx = _keys(key), check_context(context)
        # A stream's length is unknown: it always gets a fresh data key
        # (never a cached one, which its byte bound could not cover).
        key_copy, blobs, lease = self._material(keys, ctx, None)
        header = fmt.encode_header(blobs)
        salt = fmt.random_salt()
        try:
            mk = fmt.MessageKeys(key_copy, salt, header, ctx)
        finally:
            _wipe(key_copy)
        written = dst.write(header + salt + mk.commitment) or 0
        index = 0
        while True:
            segment = _read_full(src, fmt.SEGMENT)
            if index >= fmt.MAX_SEGMENTS:
                raise MessageError("the message exceeds the format's limit of 2^38 segments")
            if index % LEASE_CHECK == 0:
                _check_lease(lease)
            written += dst.write(mk.seal(index, segment)) or 0
            if len(segment) < fmt.SEGMENT:
                return written
            index += 1

    def decrypt_stream(self, src: BinaryIO, dst: BinaryIO, context: Context | None = None) -> int:
        """Decrypts ``src`` to ``dst`` in constant memory. Segments are
        written as they verify: on :class:`MessageError` (altered or
        truncated input) discard what was written. Returns the plaintext
        bytes written."""
        ctx = check_context(context)
        raw = _read_full(src, fmt.FIXED_HEADER)
        while (n := fmt.header_length(raw)) is None:
            more = src.read(fmt.MAX_BLOB + 2)
            if not more:
                raise MessageError("the message ends inside its header")
            raw += more
        rest = raw[n:]
        header = fmt.parse_header(raw[:n])
        tail = rest + _read_full(src, max(0, fmt.SALT + fmt.COMMITMENT - len(rest)))
        if len(tail) < fmt.SALT + fmt.COMMITMENT:
            raise MessageError("the message ends inside its header (salt or commitment)")
        split = fmt.Split(header, tail[: fmt.SALT], tail[fmt.SALT : fmt.SALT + fmt.COMMITMENT], b"")
        pending = tail[fmt.SALT + fmt.COMMITMENT :]
        key_copy, lease = self._open_recipients(header, ctx)
        try:
            mk = fmt.open_keys(key_copy, split, ctx)
        finally:
            _wipe(key_copy)
        written = 0
        index = 0
        while True:
            chunk = pending + _read_full(src, fmt.SEALED_SEGMENT - len(pending))
            pending = b""
            if len(chunk) < fmt.TAG:
                raise MessageError(
                    f"the message is truncated after segment {index}: no final segment; "
                    "discard any output already written"
                )
            plain = mk.open(index, chunk)
            if index % LEASE_CHECK == 0 or len(chunk) < fmt.SEALED_SEGMENT:
                _check_lease(lease)
            written += dst.write(plain) or 0
            if len(chunk) < fmt.SEALED_SEGMENT:
                return written
            index += 1


#: A cached key's lease is checked every this many segments (256 KiB).
LEASE_CHECK = 16


def _wipe(b: bytearray) -> None:
    for i in range(len(b)):
        b[i] = 0


def _check_lease(lease: Lease | None) -> None:
    """Refuses to go on with a cached key whose CMK changed (disabled,
    revoked, destroyed) or whose cache lost the daemon."""
    if lease is not None and not lease.valid():
        raise FailedPreconditionError(
            "the cached data key's CMK changed (or the daemon was lost) while it was in use; "
            "discard any output already written and retry",
            None,
            "changed",
        )


@dataclass(frozen=True)
class Mac:
    """A MAC and the key version that made it."""

    mac: bytes
    key: str
    key_version: int

    def __bytes__(self) -> bytes:
        return self.mac


def _chunks(reqs: list[Any]) -> Iterator[list[Any]]:
    """Splits batch items so that each call stays within the item and byte
    limits."""
    if not reqs:
        raise UsageError("items: empty; a batch carries 1 to 1024")
    chunk: list[Any] = []
    size = 0
    for r in reqs:
        n = r.ByteSize() + 8
        if chunk and (len(chunk) == MAX_BATCH or size + n > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += n
    yield chunk


def _item_error(e: pb.ItemError) -> KeywardenError:
    return from_item(e.code, e.message, e.field, e.key_state)


def _data_key(plaintext: bytes, key: str, key_id: str, version: int, blob: bytes, message: object) -> DataKey:
    # Only a data-key blob (format 1, a 32-byte key) makes a data key; a
    # payload blob (format 2, Encrypt) is not one, whatever its length.
    if len(plaintext) != 32 or blob[2:3] != b"\x01":
        raise MessageError(
            "not a data-key blob (a payload made by Encrypt?): it unwraps to no 32-byte data key"
        )
    dk = DataKey(bytearray(plaintext), key, key_id, version, bytes(blob))
    # Drop the message's own reference (the runtime's copy is its own).
    clear = getattr(message, "ClearField", None)
    if clear is not None:
        clear("plaintext")
    return dk
