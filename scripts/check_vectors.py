#!/usr/bin/env python3
"""An independent implementation of the Keywarden envelope format, version 1
(docs/FORMAT.md), checked against the committed vectors: every vector is
rebuilt byte for byte from its inputs, opened back, and refused when altered.

It uses only the standard library and `cryptography` (AES-GCM, HKDF-Expand).
Checks are explicit (not `assert`, which `python -O` strips).
Run: python3 scripts/check_vectors.py docs/vectors/envelope-v1.json
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

SEGMENT = 16384
TAG = 16
INFO_PREFIX = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00"


class Refused(Exception):
    """The message does not open."""


def encode_context(ctx: dict[str, str]) -> bytes:
    out = struct.pack(">I", len(ctx))
    for k in sorted(ctx, key=lambda s: s.encode()):
        kb, vb = k.encode(), ctx[k].encode()
        out += struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb
    return out


def header(recipients: list[bytes]) -> bytes:
    out = b"KWEN" + bytes([1]) + struct.pack(">HIB", 1, SEGMENT, len(recipients))
    for b in recipients:
        out += struct.pack(">H", len(b)) + b
    return out


def chunk_context(hdr: bytes, ctx: dict[str, str]) -> bytes:
    return hashlib.sha256(hdr).digest() + hashlib.sha256(encode_context(ctx)).digest()


def derive(key: bytes, salt: bytes, hdr: bytes, ctx: dict[str, str]) -> tuple[bytes, bytes, bytes]:
    okm = HKDFExpand(hashes.SHA256(), 76, INFO_PREFIX + salt + chunk_context(hdr, ctx)).derive(key)
    return okm[:32], okm[32:44], okm[44:]


def nonce(base: bytes, i: int) -> bytes:
    return base[:4] + (int.from_bytes(base[4:], "big") ^ i).to_bytes(8, "big")


def seal(key: bytes, salt: bytes, recipients: list[bytes], ctx: dict[str, str], pt: bytes) -> bytes:
    hdr = header(recipients)
    k, base, commitment = derive(key, salt, hdr, ctx)
    aead = AESGCM(k)
    out = hdr + salt + commitment
    for i in range(len(pt) // SEGMENT + 1):
        out += aead.encrypt(nonce(base, i), pt[i * SEGMENT : (i + 1) * SEGMENT], None)
    return out


def open_message(key: bytes, msg: bytes, ctx: dict[str, str]) -> bytes:
    if msg[:4] != b"KWEN" or len(msg) < 12 or msg[4] != 1:
        raise Refused("header")
    suite, seg, n = struct.unpack(">HIB", msg[5:12])
    if suite != 1 or seg != SEGMENT or not 1 <= n <= 8:
        raise Refused("header fields")
    at = 12
    for _ in range(n):
        if len(msg) < at + 2:
            raise Refused("truncated header")
        (ln,) = struct.unpack(">H", msg[at : at + 2])
        if not 1 <= ln <= 1024 or len(msg) < at + 2 + ln:
            raise Refused("blob length")
        at += 2 + ln
    hdr, salt, commitment = msg[:at], msg[at : at + 24], msg[at + 24 : at + 56]
    if len(commitment) != 32:
        raise Refused("truncated")
    k, base, want = derive(key, salt, hdr, ctx)
    if commitment != want:
        raise Refused("commitment")
    body = msg[at + 56 :]
    full, rest = divmod(len(body), SEGMENT + TAG)
    if rest < TAG:
        raise Refused("truncated")
    aead, out = AESGCM(k), b""
    for i in range(full + 1):
        try:
            out += aead.decrypt(nonce(base, i), body[i * (SEGMENT + TAG) : (i + 1) * (SEGMENT + TAG)], None)
        except InvalidTag as e:
            raise Refused(f"segment {i}") from e
    return out


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"FAILED: {what}")
        sys.exit(1)


def main(path: str) -> int:
    with open(path) as f:
        doc = json.load(f)
    for v in doc["vectors"]:
        name = v["name"]
        pt = bytes(i % 251 for i in range(v["plaintext_length"]))
        recipients = [bytes.fromhex(b) for b in v["recipients"]]
        key, salt, ctx = bytes.fromhex(v["data_key"]), bytes.fromhex(v["salt"]), v["context"]
        hdr = header(recipients)
        check(hdr.hex() == v["header"], f"{name}: header")
        check(encode_context(ctx).hex() == v["context_encoding"], f"{name}: context encoding")
        check(chunk_context(hdr, ctx).hex() == v["chunk_context"], f"{name}: chunk context")
        check(derive(key, salt, hdr, ctx)[2].hex() == v["commitment"], f"{name}: commitment")
        msg = seal(key, salt, recipients, ctx, pt)
        check(len(msg) == v["message_length"], f"{name}: length")
        check(hashlib.sha256(msg).hexdigest() == v["message_sha256"], f"{name}: digest")
        if "message" in v:
            check(msg.hex() == v["message"], f"{name}: message")
        check(open_message(key, msg, ctx) == pt, f"{name}: round trip")
        # Refusals: wrong context, a flipped bit in the header, the salt and
        # the last byte, a truncation at the last segment boundary.
        bad_ctx = dict(ctx, extra="")
        altered = [
            (msg, bad_ctx),
            (msg[:5] + bytes([msg[5] ^ 1]) + msg[6:], ctx),
            (msg[: len(hdr)] + bytes([msg[len(hdr)] ^ 1]) + msg[len(hdr) + 1 :], ctx),
            (msg[:-1] + bytes([msg[-1] ^ 1]), ctx),
            (msg[: len(hdr) + 56 + (len(pt) // SEGMENT) * (SEGMENT + TAG)], ctx),
        ]
        for i, (m, c) in enumerate(altered):
            try:
                open_message(key, m, c)
            except Refused:
                continue
            check(False, f"{name}: alteration {i} was accepted")
        print(f"ok: {name}")
    print(f"{len(doc['vectors'])} vectors match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/vectors/envelope-v1.json"))
