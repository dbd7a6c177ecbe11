"""Blind indexes: truncated HMAC-SHA256 of a normalised value, so that an
encrypted column can be found by equality without the database seeing the
value (``docs/POSTGRES.md`` says what it leaks)."""

from __future__ import annotations

import struct

#: Prefix of every blind-index input (``docs/FORMAT.md``).
LABEL = b"keywarden.blind-index.v1\x00"
#: The widest index: a whole HMAC-SHA256.
MAX_BITS = 256


def blind_input(domain: str, value: bytes) -> bytes:
    """What is MACed for ``value`` in index ``domain`` (e.g.
    ``patients.mrn``): the label, the domain as u32-length-prefixed UTF-8,
    then the value. One HMAC key may serve several indexes: their domains
    keep them apart."""
    d = domain.encode()
    return LABEL + struct.pack(">I", len(d)) + d + value


def truncate(mac: bytes, bits: int) -> bytes:
    """The first ``bits`` bits of ``mac`` (the last byte's unused low bits
    are zero)."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits: {bits}; 1 to {MAX_BITS}")
    n = (bits + 7) // 8
    out = bytearray(mac[:n])
    spare = n * 8 - bits
    if spare:
        out[-1] &= 0xFF << spare & 0xFF
    return bytes(out)
