"""The Keywarden envelope message, version 1 (``docs/FORMAT.md``): pure
functions, no I/O and no daemon.

A message is a header (magic ``KWEN``, version, suite, segment size, one to
eight wrapped data-key blobs), a 24-byte salt, a 32-byte key commitment, and
the plaintext sealed in 16 KiB segments with C2SP chunked-encryption v1
(HKDF-SHA-256, AES-256-GCM). The encryption context is bound twice: the
daemon binds it to each wrapped data key, and the message keys are derived
from it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .errors import MessageError

MAGIC = b"KWEN"
VERSION = 1
SUITE = 1
SEGMENT = 16384
TAG = 16
SEALED_SEGMENT = SEGMENT + TAG
SALT = 24
COMMITMENT = 32
MAX_RECIPIENTS = 8
MAX_BLOB = 1024
FIXED_HEADER = 12
MAX_SEGMENTS = 1 << 38
_INFO_PREFIX = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00"


def encode_context(context: Mapping[str, str]) -> bytes:
    """The canonical encoding of an encryption context: a u32 count, then
    each (key, value) as u32-length-prefixed UTF-8, sorted by key bytes."""
    items = sorted(((k.encode(), v.encode()) for k, v in context.items()), key=lambda kv: kv[0])
    out = bytearray(struct.pack(">I", len(items)))
    for k, v in items:
        out += struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v
    return bytes(out)


def encode_header(recipients: Sequence[bytes]) -> bytes:
    """The header for these wrapped data-key blobs."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise MessageError(f"{len(recipients)} recipients; a message has 1 to {MAX_RECIPIENTS}")
    out = bytearray(MAGIC + bytes([VERSION]) + struct.pack(">HIB", SUITE, SEGMENT, len(recipients)))
    for blob in recipients:
        if not 1 <= len(blob) <= MAX_BLOB:
            raise MessageError(f"a recipient blob of {len(blob)} bytes; 1 to {MAX_BLOB} allowed")
        out += struct.pack(">H", len(blob)) + blob
    return bytes(out)


@dataclass(frozen=True)
class Header:
    """A parsed header: its bytes (authenticated as a whole) and the
    wrapped data-key blobs it carries."""

    raw: bytes
    recipients: tuple[bytes, ...]


def header_length(prefix: bytes) -> int | None:
    """How long the header starting ``prefix`` is, once enough of it is
    known (``None``: read more). Raises on any field it does not accept,
    before reading further."""
    if len(prefix) < 4:
        if MAGIC[: len(prefix)] != prefix:
            raise MessageError("not a Keywarden envelope message (bad magic bytes)")
        return None
    if prefix[:4] != MAGIC:
        raise MessageError("not a Keywarden envelope message (bad magic bytes)")
    if len(prefix) < FIXED_HEADER:
        return None
    if prefix[4] != VERSION:
        raise MessageError(f"header field version: unsupported version {prefix[4]}")
    suite, seg, n = struct.unpack(">HIB", prefix[5:12])
    if suite != SUITE:
        raise MessageError(f"header field suite: unknown suite {suite}")
    if seg != SEGMENT:
        raise MessageError(f"header field segment_size: {seg}; suite 1 requires {SEGMENT}")
    if not 1 <= n <= MAX_RECIPIENTS:
        raise MessageError(f"header field recipients: {n}; 1 to {MAX_RECIPIENTS} allowed")
    at = FIXED_HEADER
    for _ in range(n):
        if len(prefix) < at + 2:
            return None
        (ln,) = struct.unpack(">H", prefix[at : at + 2])
        if not 1 <= ln <= MAX_BLOB:
            raise MessageError(f"header field recipient: blob length {ln}; 1 to {MAX_BLOB} allowed")
        at += 2 + ln
        if len(prefix) < at:
            return None
    return at


def parse_header(raw: bytes) -> Header:
    """Parses a complete header (exactly ``raw``)."""
    n = header_length(raw)
    if n is None or n != len(raw):
        raise MessageError("the message ends inside its header")
    recipients = []
    at = FIXED_HEADER
    for _ in range(raw[11]):
        (ln,) = struct.unpack(">H", raw[at : at + 2])
        recipients.append(raw[at + 2 : at + 2 + ln])
        at += 2 + ln
    return Header(raw=raw, recipients=tuple(recipients))


def chunk_context(header: bytes, context: Mapping[str, str]) -> bytes:
    """The context input of the key derivation: SHA-256 of the header, then
    SHA-256 of the canonical context."""
    return hashlib.sha256(header).digest() + hashlib.sha256(encode_context(context)).digest()


class MessageKeys:
    """The keys of one message, derived from the data key, salt, header and
    context: the AES-256-GCM key, the nonce base, the commitment."""

    __slots__ = ("_aead", "_counter", "_prefix", "commitment")

    def __init__(
        self, data_key: bytes | bytearray, salt: bytes, header: bytes, context: Mapping[str, str]
    ) -> None:
        if len(data_key) != 32 or len(salt) != SALT:
            raise MessageError("the data key could not be expanded into message keys")
        info = _INFO_PREFIX + salt + chunk_context(header, context)
        # No immutable copies of key material here (the caller's bytearray
        # is passed as is; ours are wiped). cryptography keeps its own.
        okm = bytearray(HKDFExpand(hashes.SHA256(), 76, info).derive(data_key))
        aes_key = okm[:32]
        self._aead = AESGCM(aes_key)
        self._prefix = bytes(okm[32:36])
        self._counter = int.from_bytes(okm[36:44], "big")
        self.commitment = bytes(okm[44:76])
        for b in (okm, aes_key):
            b[:] = bytes(len(b))

    def __repr__(self) -> str:
        return "MessageKeys(<redacted>)"

    def __reduce__(self) -> object:
        raise TypeError("message keys cannot be pickled")

    def nonce(self, index: int) -> bytes:
        """The nonce of segment ``index``: the base with the index XORed
        into its last 8 bytes."""
        return self._prefix + (self._counter ^ index).to_bytes(8, "big")

    def seal(self, index: int, segment: bytes) -> bytes:
        """Seals one plaintext segment."""
        return self._aead.encrypt(self.nonce(index), segment, None)

    def open(self, index: int, sealed: bytes) -> bytes:
        """Opens one sealed segment, or raises :class:`MessageError`."""
        try:
            return self._aead.decrypt(self.nonce(index), sealed, None)
        except InvalidTag:
            raise MessageError(
                f"segment {index} failed authentication: the message was altered, reordered or "
                "truncated; discard any output already written"
            ) from None


def random_salt() -> bytes:
    """A fresh salt from the OS."""
    return os.urandom(SALT)


def seal_segments(keys: MessageKeys, plaintext: bytes) -> Iterator[bytes]:
    """The sealed segments of a whole plaintext (the last one short, maybe
    empty)."""
    count = len(plaintext) // SEGMENT + 1
    if count > MAX_SEGMENTS:
        raise MessageError("the message exceeds the format's limit of 2^38 segments")
    for i in range(count):
        yield keys.seal(i, plaintext[i * SEGMENT : (i + 1) * SEGMENT])


def seal_message(
    data_key: bytes | bytearray,
    salt: bytes,
    recipients: Sequence[bytes],
    context: Mapping[str, str],
    plaintext: bytes,
) -> bytes:
    """A whole message (deterministic given the salt: the test vectors use
    this)."""
    header = encode_header(recipients)
    keys = MessageKeys(data_key, salt, header, context)
    return header + salt + keys.commitment + b"".join(seal_segments(keys, plaintext))


@dataclass(frozen=True)
class Split:
    """A whole message cut into its parts (nothing authenticated yet)."""

    header: Header
    salt: bytes
    commitment: bytes
    body: bytes


def split_message(message: bytes) -> Split:
    """Cuts a whole message into header, salt, commitment and body."""
    n = header_length(message)
    if n is None:
        raise MessageError("the message ends inside its header")
    if len(message) < n + SALT + COMMITMENT:
        raise MessageError("the message ends inside its header (salt or commitment)")
    return Split(
        header=parse_header(message[:n]),
        salt=message[n : n + SALT],
        commitment=message[n + SALT : n + SALT + COMMITMENT],
        body=message[n + SALT + COMMITMENT :],
    )


def open_keys(data_key: bytes | bytearray, split: Split, context: Mapping[str, str]) -> MessageKeys:
    """Derives the message keys and checks the key commitment."""
    keys = MessageKeys(data_key, split.salt, split.header.raw, context)
    if not _equal(keys.commitment, split.commitment):
        raise MessageError(
            "key commitment mismatch: the header was altered, the encryption context differs, "
            "or the message was built to open differently for different keys"
        )
    return keys


def open_body(keys: MessageKeys, body: bytes) -> bytes:
    """Opens every segment of a whole body; releases nothing unless all of
    them verify."""
    full, rest = divmod(len(body), SEALED_SEGMENT)
    if rest < TAG:
        raise MessageError(
            f"the message is truncated after segment {full}: no final segment; "
            "discard any output already written"
        )
    out = bytearray()
    for i in range(full + 1):
        out += keys.open(i, body[i * SEALED_SEGMENT : (i + 1) * SEALED_SEGMENT])
    return bytes(out)


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
