#![no_main]
//! Protobuf requests as they arrive on the socket, decoded and put through
//! the core's validation: never panics.
use keywarden::core::{blob::Blob, validate};
use keywarden::proto;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = proto::GenerateDataKeyRequest::decode(data) {
        let _ = validate::key_name("key", &r.key);
        let _ = validate::context(r.encryption_context);
    }
    if let Ok(r) = proto::DecryptRequest::decode(data) {
        let _ = validate::blob_size(r.ciphertext_blob.len());
        let _ = Blob::decode(&r.ciphertext_blob);
        let _ = validate::context(r.encryption_context);
    }
    if let Ok(r) = proto::BatchGenerateDataKeyRequest::decode(data) {
        let _ = validate::batch_size(r.requests.len());
    }
    if let Ok(r) = proto::ReEncryptRequest::decode(data) {
        let _ = Blob::decode(&r.ciphertext_blob);
        let _ = validate::context(r.destination_encryption_context);
    }
    let _ = proto::CreateKeyRequest::decode(data).map(|r| validate::key_name("name", &r.name));
    let _ = proto::PlaceHoldRequest::decode(data).map(|r| validate::hold_id(&r.hold_id));
    let _ = proto::UnsealRequest::decode(data).map(|r| keywarden::seal::share::parse(&r.share).is_ok());
});
