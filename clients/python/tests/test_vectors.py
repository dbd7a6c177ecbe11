"""The envelope format against the committed test vectors
(docs/vectors/envelope-v1.json), which the Rust SDK also checks: every
vector is rebuilt byte for byte from its inputs, opened back, and refused
when altered."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from keywarden import MessageError
from keywarden import format as fmt

VECTORS = Path(__file__).resolve().parents[3] / "docs" / "vectors" / "envelope-v1.json"
DOC = json.loads(VECTORS.read_text())


def plaintext(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


@pytest.mark.parametrize("v", DOC["vectors"], ids=[v["name"] for v in DOC["vectors"]])
def test_vector_is_reproduced_and_opens(v: dict) -> None:
    pt = plaintext(v["plaintext_length"])
    recipients = [bytes.fromhex(b) for b in v["recipients"]]
    key, salt, ctx = bytes.fromhex(v["data_key"]), bytes.fromhex(v["salt"]), v["context"]
    header = fmt.encode_header(recipients)
    assert header.hex() == v["header"]
    assert fmt.encode_context(ctx).hex() == v["context_encoding"]
    assert fmt.chunk_context(header, ctx).hex() == v["chunk_context"]
    assert fmt.MessageKeys(key, salt, header, ctx).commitment.hex() == v["commitment"]
    msg = fmt.seal_message(key, salt, recipients, ctx, pt)
    assert len(msg) == v["message_length"]
    assert hashlib.sha256(msg).hexdigest() == v["message_sha256"]
    if "message" in v:
        assert msg.hex() == v["message"]
    split = fmt.split_message(msg)
    assert list(split.header.recipients) == recipients
    assert fmt.open_body(fmt.open_keys(key, split, ctx), split.body) == pt


@pytest.mark.parametrize("v", DOC["vectors"], ids=[v["name"] for v in DOC["vectors"]])
def test_altered_vectors_are_refused(v: dict) -> None:
    pt = plaintext(v["plaintext_length"])
    recipients = [bytes.fromhex(b) for b in v["recipients"]]
    key, salt, ctx = bytes.fromhex(v["data_key"]), bytes.fromhex(v["salt"]), v["context"]
    msg = fmt.seal_message(key, salt, recipients, ctx, pt)
    h = len(fmt.encode_header(recipients))
    altered = {
        "wrong context": (msg, dict(ctx, extra="")),
        "header bit": (msg[:5] + bytes([msg[5] ^ 1]) + msg[6:], ctx),
        "salt bit": (msg[:h] + bytes([msg[h] ^ 1]) + msg[h + 1 :], ctx),
        "last byte": (msg[:-1] + bytes([msg[-1] ^ 1]), ctx),
        "cut at the last boundary": (msg[: h + 56 + (len(pt) // fmt.SEGMENT) * fmt.SEALED_SEGMENT], ctx),
        "cut in the header": (msg[: h - 1], ctx),
    }
    for what, (m, c) in altered.items():
        with pytest.raises(MessageError):
            split = fmt.split_message(m)
            fmt.open_body(fmt.open_keys(key, split, c), split.body)
        assert what


def test_header_fields_are_refused_before_reading_on() -> None:
    good = fmt.encode_header([b"\x01" * 84])
    for bad in [
        b"KWEX",
        good[:4] + b"\x02" + good[5:],
        good[:5] + b"\x00\x02" + good[7:],
        good[:11] + b"\x00",
    ]:
        with pytest.raises(MessageError):
            fmt.header_length(bad)
    assert fmt.header_length(good[:12]) is None
    assert fmt.header_length(good) == len(good)


def test_blind_index_input_and_truncation_match_the_format() -> None:
    from keywarden import blind

    # docs/FORMAT.md, "Blind indexes": the worked example.
    want = (
        "6b657977617264656e2e626c696e642d696e6465782e763100"  # label and NUL
        "0000000c"  # domain length
        "70617469656e74732e6d726e"  # "patients.mrn"
        "4d524e2d31"  # "MRN-1"
    )
    assert blind.blind_input("patients.mrn", b"MRN-1").hex() == want
    mac = bytes(range(32))
    assert blind.truncate(mac, 256) == mac
    assert blind.truncate(mac, 16) == b"\x00\x01"
    assert blind.truncate(b"\xff" * 32, 12) == b"\xff\xf0"
    assert blind.truncate(b"\xff" * 32, 1) == b"\x80"
