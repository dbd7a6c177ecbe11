//! Prints the envelope-format test vectors (`docs/vectors/envelope-v1.json`)
//! from fixed inputs: `cargo run -p keywarden-client --example vectors`.
//! `tests/vectors.rs` checks that the committed file matches this
//! implementation; the Python client (`clients/python`), an independent
//! implementation, checks it too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keywarden_client::format::{self, Context, Header, MessageKeys};
use serde_json::json;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The plaintext of a vector: byte i is i mod 251.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A daemon blob's shape: "KW", version 1, algorithm 1, key id, version,
/// then IV, wrapped key and tag (filled with a counter; the format treats
/// blobs as opaque).
fn blob(id_byte: u8, version: u32) -> Vec<u8> {
    let mut b = vec![0x4b, 0x57, 1, 1];
    b.extend((0..16).map(|i| id_byte.wrapping_add(i)));
    b.extend_from_slice(&version.to_be_bytes());
    b.extend((0..60).map(|i| (i as u8).wrapping_mul(7).wrapping_add(id_byte)));
    b
}

fn main() {
    let data_key: [u8; 32] = core::array::from_fn(|i| i as u8);
    let salt: [u8; 24] = core::array::from_fn(|i| 0xa0 + i as u8);
    let one: Context = [("tenant".to_string(), "clinic-1".to_string())].into();
    let two: Context = [
        ("tenant".to_string(), "clinic-1".to_string()),
        ("record".to_string(), "mri-0042".to_string()),
    ]
    .into();
    let cases: Vec<(&str, usize, Vec<Vec<u8>>, Context)> = vec![
        (
            "empty plaintext, one recipient",
            0,
            vec![blob(0x10, 1)],
            one.clone(),
        ),
        (
            "one byte, empty context",
            1,
            vec![blob(0x10, 1)],
            Context::new(),
        ),
        (
            "segment minus one",
            format::SEGMENT - 1,
            vec![blob(0x10, 1)],
            one.clone(),
        ),
        (
            "exactly one segment (then an empty final one)",
            format::SEGMENT,
            vec![blob(0x10, 1)],
            one.clone(),
        ),
        (
            "segment plus one",
            format::SEGMENT + 1,
            vec![blob(0x10, 1)],
            two.clone(),
        ),
        (
            "three segments and five bytes, two recipients",
            3 * format::SEGMENT + 5,
            vec![blob(0x10, 3), blob(0x80, 1)],
            two.clone(),
        ),
    ];
    let mut out = Vec::new();
    for (name, len, recipients, ctx) in cases {
        let header = Header::new(recipients.clone()).unwrap();
        let pt = pattern(len);
        let msg = format::seal_message(&data_key, &header, &salt, &ctx, &pt).unwrap();
        let keys = MessageKeys::derive(&data_key, &salt, header.as_bytes(), &ctx).unwrap();
        let mut v = json!({
            "name": name,
            "data_key": hex(&data_key),
            "salt": hex(&salt),
            "recipients": recipients.iter().map(|b| hex(b)).collect::<Vec<_>>(),
            "context": ctx,
            "context_encoding": hex(&format::encode_context(&ctx)),
            "header": hex(header.as_bytes()),
            "chunk_context": hex(&format::chunk_context(header.as_bytes(), &ctx)),
            "commitment": hex(keys.commitment()),
            "plaintext_length": len,
            "message_length": msg.len(),
            "message_sha256": hex(&Sha256::digest(&msg)),
        });
        if msg.len() <= 512 {
            v["message"] = json!(hex(&msg));
        } else {
            // The first 200 bytes: header, salt, commitment, the start of
            // the first segment.
            v["message_prefix"] = json!(hex(&msg[..200]));
        }
        out.push(v);
    }
    let doc = json!({
        "format": "Keywarden envelope message, version 1, suite 1 (docs/FORMAT.md)",
        "plaintext": "byte i of the plaintext is i mod 251",
        "vectors": out,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap());
}
