"""The client against a real dev daemon: data keys, records, streams,
typed errors, and interoperability with the CLI both ways."""

from __future__ import annotations

import copy
import io
import os
import pickle

import pytest

import keywarden
from keywarden import format as fmt

CTX = {"table": "patients", "column": "note", "row": "42"}


@pytest.fixture(scope="module")
def key(dev) -> str:
    return dev.create_key("py-records")


def test_data_key_round_trip_and_secrecy(client, key) -> None:
    dk = client.generate_data_key(key, CTX)
    assert len(dk.plaintext) == 32 and dk.key == key and dk.key_version == 1
    assert bytes(dk.plaintext) not in repr(dk).encode()
    for leak in (lambda: pickle.dumps(dk), lambda: copy.copy(dk), lambda: copy.deepcopy(dk)):
        with pytest.raises(TypeError):
            leak()
    again = client.decrypt_data_key(dk.ciphertext_blob, CTX)
    assert again.plaintext == dk.plaintext
    dk.wipe()
    with pytest.raises(ValueError):
        _ = dk.plaintext
    with pytest.raises(keywarden.InvalidArgumentError) as e:
        client.decrypt_data_key(again.ciphertext_blob, dict(CTX, row="43"))
    assert e.value.field == "ciphertext_blob"


def test_errors_are_typed(client, key) -> None:
    with pytest.raises(keywarden.NotFoundError):
        client.generate_data_key("no-such-key")
    with pytest.raises(keywarden.InvalidArgumentError) as e:
        client.decrypt_data_key(b"S1c=")
    assert e.value.field == "ciphertext_blob"
    with pytest.raises(keywarden.UsageError):
        client.encrypt(key, b"x", {"row": 42})  # type: ignore[dict-item]
    with pytest.raises(keywarden.ConnectError):
        keywarden.Client("/nonexistent/kw.sock", retries=1).status()


def test_batches_succeed_or_fail_per_item(client, key) -> None:
    got = client.generate_data_keys([(key, {"row": str(i)}) for i in range(5)] + [("missing", None)])
    assert all(isinstance(g, keywarden.DataKey) for g in got[:5])
    assert isinstance(got[5], keywarden.NotFoundError)
    opened = client.decrypt_data_keys([(g.ciphertext_blob, {"row": str(i)}) for i, g in enumerate(got[:5])])
    assert [bytes(o.plaintext) for o in opened] == [bytes(g.plaintext) for g in got[:5]]


def test_records_round_trip_and_refuse_the_wrong_context(client, key) -> None:
    for n in (0, 1, fmt.SEGMENT - 1, fmt.SEGMENT, 3 * fmt.SEGMENT + 7):
        pt = os.urandom(n)
        msg = client.encrypt(key, pt, CTX)
        assert client.decrypt(msg, CTX) == pt
    with pytest.raises(keywarden.KeywardenError):
        client.decrypt(msg, dict(CTX, row="43"))
    with pytest.raises(keywarden.MessageError):
        client.decrypt(msg[:-1], CTX)


def test_streams_in_constant_memory(client, key) -> None:
    pt = os.urandom(5 * fmt.SEGMENT + 123)
    sealed = io.BytesIO()
    n = client.encrypt_stream(key, io.BytesIO(pt), sealed, CTX)
    assert n == len(sealed.getvalue())
    # The stream and the record API write the same format.
    assert client.decrypt(sealed.getvalue(), CTX) == pt
    out = io.BytesIO()
    assert client.decrypt_stream(io.BytesIO(sealed.getvalue()), out, CTX) == len(pt)
    assert out.getvalue() == pt
    # Truncated at a segment boundary: refused at the end.
    cut = sealed.getvalue()[: -(123 + fmt.TAG)]
    with pytest.raises(keywarden.MessageError):
        client.decrypt_stream(io.BytesIO(cut), io.BytesIO(), CTX)


def test_two_recipients_either_opens(dev, client, key) -> None:
    other = dev.create_key("py-records-dr")
    msg = client.encrypt([key, other], b"backup", CTX)
    assert len(fmt.split_message(msg).header.recipients) == 2
    assert client.decrypt(msg, CTX) == b"backup"


def test_the_cli_opens_what_python_wrote_and_back(dev, client, key, tmp_path) -> None:
    pt = os.urandom(2 * fmt.SEGMENT + 99)
    ctx_args = [a for k, v in CTX.items() for a in ("--context", f"{k}={v}")]
    # Python -> CLI
    (tmp_path / "py.kwen").write_bytes(client.encrypt(key, pt, CTX))
    r = dev.cli("decrypt", "-i", str(tmp_path / "py.kwen"), *ctx_args)
    assert r.stdout == pt
    # CLI -> Python
    r = dev.cli("encrypt", "--key", key, *ctx_args, input=pt)
    assert client.decrypt(r.stdout, CTX) == pt
    with open(tmp_path / "cli.kwen", "wb") as f:
        f.write(r.stdout)
    out = io.BytesIO()
    with open(tmp_path / "cli.kwen", "rb") as f:
        client.decrypt_stream(f, out, CTX)
    assert out.getvalue() == pt
