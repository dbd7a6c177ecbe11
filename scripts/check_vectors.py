#!/usr/bin/env python3
"""An independent implementation of the Keywarden envelope format, version 1
(docs/FORMAT.md), checked against the committed vectors.

It uses only the standard library and `cryptography` (AES-GCM, HKDF-Expand).
Run: python3 scripts/check_vectors.py docs/vectors/envelope-v1.json
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

SEGMENT = 16384
TAG = 16
INFO_PREFIX = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00"


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


def derive(key: bytes, salt: bytes, hdr: bytes, ctx: dict[str, str]) -> tuple[bytes, bytes, bytes]:
    chunk_ctx = hashlib.sha256(hdr).digest() + hashlib.sha256(encode_context(ctx)).digest()
    okm = HKDFExpand(hashes.SHA256(), 76, INFO_PREFIX + salt + chunk_ctx).derive(key)
    return okm[:32], okm[32:44], okm[44:]


def seal(key: bytes, salt: bytes, recipients: list[bytes], ctx: dict[str, str], pt: bytes) -> bytes:
    hdr = header(recipients)
    k, base, commitment = derive(key, salt, hdr, ctx)
    aead = AESGCM(k)
    out = hdr + salt + commitment
    n_full = len(pt) // SEGMENT
    for i in range(n_full + 1):
        nonce = base[:4] + (int.from_bytes(base[4:], "big") ^ i).to_bytes(8, "big")
        out += aead.encrypt(nonce, pt[i * SEGMENT : (i + 1) * SEGMENT], None)
    return out


def main(path: str) -> int:
    doc = json.load(open(path))
    for v in doc["vectors"]:
        pt = bytes(i % 251 for i in range(v["plaintext_length"]))
        recipients = [bytes.fromhex(b) for b in v["recipients"]]
        key, salt = bytes.fromhex(v["data_key"]), bytes.fromhex(v["salt"])
        assert header(recipients).hex() == v["header"], v["name"]
        assert encode_context(v["context"]).hex() == v["context_encoding"], v["name"]
        _, _, commitment = derive(key, salt, header(recipients), v["context"])
        assert commitment.hex() == v["commitment"], v["name"]
        msg = seal(key, salt, recipients, v["context"], pt)
        assert len(msg) == v["message_length"], v["name"]
        assert hashlib.sha256(msg).hexdigest() == v["message_sha256"], v["name"]
        if "message" in v:
            assert msg.hex() == v["message"], v["name"]
        print(f"ok: {v['name']}")
    print(f"{len(doc['vectors'])} vectors match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/vectors/envelope-v1.json"))
