"""Small fields through the daemon's Encrypt, MACs and blind indexes, and
the generic-client experience: reflection (v1alpha, which grpcio-reflection
speaks) and raw calls with malformed bytes, against a real dev daemon."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import keywarden
from keywarden import blind

CTX = {"table": "patients", "column": "mrn", "row": "9"}


@pytest.fixture(scope="module")
def keys(dev) -> tuple[str, str]:
    return dev.create_key("py-fields"), dev.create_key("py-index", "--kind", "hmac")


def test_fields_round_trip_under_their_context_only(client, keys) -> None:
    aes, _ = keys
    for value in (b"", b"MRN-0042", bytes(range(256)) * 16):
        blob = client.encrypt_field(aes, value, CTX)
        assert blob[:4] == b"KW\x02\x01" and (not value or value not in blob)
        assert client.decrypt_field(blob, CTX) == value
    with pytest.raises(keywarden.InvalidArgumentError) as e:
        client.decrypt_field(blob, dict(CTX, row="10"))
    assert e.value.field == "ciphertext_blob"
    with pytest.raises(keywarden.InvalidArgumentError) as e:
        client.encrypt_field(aes, b"x" * 4097, CTX)
    assert e.value.field == "plaintext"


def test_batches_are_split_to_fit_the_message_limit(client, keys) -> None:
    aes, _ = keys
    # 300 items of 4 KiB: more than one 256 KiB request holds.
    items = [(aes, bytes([i % 256]) * 4096, {"row": str(i)}) for i in range(300)]
    blobs = client.encrypt_fields(items)
    assert all(isinstance(b, bytes) for b in blobs)
    opened = client.decrypt_fields([(b, {"row": str(i)}) for i, b in enumerate(blobs)])
    assert opened == [p for _, p, _ in items]


def test_macs_verify_and_keep_their_version(dev, client, keys) -> None:
    _, hmac_key = keys
    m = client.mac(hmac_key, b"MRN-0042")
    assert len(m.mac) == 32 and m.key_version == 1
    assert client.verify_mac(hmac_key, b"MRN-0042", m)
    assert not client.verify_mac(hmac_key, b"MRN-0043", m)
    with pytest.raises(keywarden.InvalidArgumentError) as e:
        client.mac(keys[0], b"x")
    assert e.value.field == "key"
    with pytest.raises(keywarden.InvalidArgumentError):
        client.generate_data_key(hmac_key)
    # A rotation: new MACs use version 2; an index built on version 1 asks
    # for version 1 until it is rebuilt.
    dev.cli("key", "rotate", hmac_key)
    assert client.mac(hmac_key, b"MRN-0042").key_version == 2
    old = client.blind_index(hmac_key, "MRN-0042", version=1, domain="patients.mrn")
    assert old == blind.truncate(
        client.mac(hmac_key, blind.blind_input("patients.mrn", b"MRN-0042"), version=1).mac, 32
    )
    assert old != client.blind_index(hmac_key, "MRN-0042", domain="patients.mrn")


def test_blind_indexes_truncate_and_separate_domains(client, keys) -> None:
    _, hmac_key = keys
    a = client.blind_index(hmac_key, "MRN-1", bits=12, domain="patients.mrn")
    assert len(a) == 2 and a[1] & 0x0F == 0
    assert a == client.blind_index(hmac_key, "MRN-1", bits=12, domain="patients.mrn")
    assert client.blind_index(hmac_key, "MRN-1", domain="patients.mrn") != client.blind_index(
        hmac_key, "MRN-1", domain="visits.mrn"
    )
    values = [f"MRN-{i}" for i in range(2000)]
    idx = client.blind_indexes(hmac_key, values, bits=8)
    # 8 bits: 2000 values fall into at most 256 buckets (many collide).
    assert len(set(idx)) <= 256 and len(idx) == 2000
    with pytest.raises(keywarden.UsageError):
        client.blind_index(hmac_key, "x", bits=0)


def test_a_generic_client_lists_and_calls_the_services_by_reflection(dev, keys) -> None:
    channel = grpc.insecure_channel(f"unix:{dev.socket}", options=keywarden.channel_options())
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {
        "keywarden.v1.DataKeyService",
        "keywarden.v1.KeyService",
        "keywarden.v1.MacService",
        "keywarden.v1.OperatorService",
    } <= services
    pool = descriptor_pool.DescriptorPool(db)
    method = pool.FindMethodByName("keywarden.v1.MacService.GenerateMac")
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/keywarden.v1.MacService/GenerateMac",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    resp = call(req_cls(key=keys[1], data=b"MRN-0042"), timeout=10)
    assert len(resp.mac) == 32
    channel.close()


def test_malformed_bytes_are_invalid_argument_and_oversized_out_of_range(dev) -> None:
    channel = grpc.insecure_channel(f"unix:{dev.socket}", options=keywarden.channel_options())
    raw = channel.unary_unary("/keywarden.v1.DataKeyService/Decrypt")
    for garbage in (b"\xff\xff\xff", b"\x1a\x02\xff\xfe"):  # bad varint; non-UTF-8 `key`
        with pytest.raises(grpc.RpcError) as e:
            raw(garbage, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x0a\x83\x80\x12" + b"\x00" * 300_000, timeout=10)  # a 300 kB blob field
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE, e.value.details()
    channel.close()


def test_a_field_planted_under_another_key_is_refused_when_the_key_is_named(dev, client, keys) -> None:
    aes, _ = keys
    other = dev.create_key("py-fields-other-tenant")
    planted = client.encrypt_field(other, b"forged note", CTX)
    assert client.decrypt_field(planted, CTX) == b"forged note"  # no key named: any key
    with pytest.raises(keywarden.InvalidArgumentError) as e:
        client.decrypt_field(planted, CTX, key=aes)
    assert e.value.field == "ciphertext_blob"
    [item] = client.decrypt_fields([(planted, CTX)], key=aes)
    assert isinstance(item, keywarden.InvalidArgumentError)


def test_a_payload_blob_never_passes_for_a_data_key(client, keys) -> None:
    aes, _ = keys
    blob = client.encrypt_field(aes, bytes(32), CTX)
    with pytest.raises(keywarden.MessageError):
        client.decrypt_data_key(blob, CTX)
