//! The committed test vectors (`docs/vectors/envelope-v1.json`) against
//! this implementation: every message is reproduced byte for byte from its
//! inputs, opens back to its plaintext, and fails under a wrong key, a
//! wrong context and a flipped bit in each part.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keywarden_client::format::{self, Context, Header, MessageKeys};
use keywarden_client::MessageError;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn vectors() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/vectors/envelope-v1.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

struct Case {
    key: [u8; 32],
    salt: [u8; 24],
    header: Header,
    ctx: Context,
    plaintext: Vec<u8>,
}

fn case(v: &Value) -> Case {
    let recipients: Vec<Vec<u8>> = v["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| unhex(b.as_str().unwrap()))
        .collect();
    let ctx: Context = serde_json::from_value(v["context"].clone()).unwrap();
    let len = v["plaintext_length"].as_u64().unwrap() as usize;
    Case {
        key: unhex(v["data_key"].as_str().unwrap()).try_into().unwrap(),
        salt: unhex(v["salt"].as_str().unwrap()).try_into().unwrap(),
        header: Header::new(recipients).unwrap(),
        ctx,
        plaintext: (0..len).map(|i| (i % 251) as u8).collect(),
    }
}

#[test]
fn every_vector_is_reproduced_byte_for_byte() {
    let vs = vectors();
    assert!(vs.len() >= 6, "the vector file lost cases");
    for v in &vs {
        let c = case(v);
        let name = v["name"].as_str().unwrap();
        assert_eq!(hex(c.header.as_bytes()), v["header"], "{name}: header");
        assert_eq!(
            hex(&format::encode_context(&c.ctx)),
            v["context_encoding"],
            "{name}"
        );
        assert_eq!(
            hex(&format::chunk_context(c.header.as_bytes(), &c.ctx)),
            v["chunk_context"],
            "{name}"
        );
        let keys = MessageKeys::derive(&c.key, &c.salt, c.header.as_bytes(), &c.ctx).unwrap();
        assert_eq!(
            hex(keys.commitment()),
            v["commitment"],
            "{name}: commitment"
        );
        let msg = format::seal_message(&c.key, &c.header, &c.salt, &c.ctx, &c.plaintext).unwrap();
        assert_eq!(
            msg.len() as u64,
            v["message_length"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex(&Sha256::digest(&msg)),
            v["message_sha256"],
            "{name}: digest"
        );
        if let Some(m) = v.get("message") {
            assert_eq!(&hex(&msg), m, "{name}: message");
        }
        if let Some(p) = v.get("message_prefix") {
            assert!(p.as_str().unwrap().starts_with(&hex(&msg[..100])), "{name}");
        }
        let back = format::open_message(&c.key, &msg, &c.ctx).unwrap();
        assert_eq!(&back[..], &c.plaintext[..], "{name}: round trip");
    }
}

#[test]
fn wrong_key_or_context_fails_the_commitment_before_any_segment() {
    for v in vectors() {
        let c = case(&v);
        let msg = format::seal_message(&c.key, &c.header, &c.salt, &c.ctx, &c.plaintext).unwrap();
        let mut other = c.key;
        other[0] ^= 1;
        assert_eq!(
            format::open_message(&other, &msg, &c.ctx).map(|_| ()),
            Err(MessageError::Commitment)
        );
        let mut ctx = c.ctx.clone();
        ctx.insert("extra".into(), String::new());
        assert_eq!(
            format::open_message(&c.key, &msg, &ctx).map(|_| ()),
            Err(MessageError::Commitment)
        );
    }
}

#[test]
fn a_flipped_bit_anywhere_is_refused() {
    // The two-recipient, four-segment vector: every byte of the header,
    // salt and commitment, and a byte in every segment and every tag.
    let v = vectors().into_iter().last().unwrap();
    let c = case(&v);
    let msg = format::seal_message(&c.key, &c.header, &c.salt, &c.ctx, &c.plaintext).unwrap();
    let head = c.header.as_bytes().len() + format::SALT + format::COMMITMENT;
    let mut positions: Vec<usize> = (0..head).collect();
    let mut seg = head;
    while seg < msg.len() {
        positions.push(seg);
        let end = (seg + format::SEALED_SEGMENT).min(msg.len());
        positions.push(end - 1);
        seg = end;
    }
    for at in positions {
        let mut bad = msg.clone();
        bad[at] ^= 0x01;
        assert!(
            format::open_message(&c.key, &bad, &c.ctx).is_err(),
            "a flipped bit at byte {at} was not detected"
        );
    }
}

#[test]
fn truncation_reordering_duplication_and_appending_are_refused() {
    let v = vectors().into_iter().last().unwrap();
    let c = case(&v);
    let msg = format::seal_message(&c.key, &c.header, &c.salt, &c.ctx, &c.plaintext).unwrap();
    let body = c.header.as_bytes().len() + format::SALT + format::COMMITMENT;
    let seg = |i: usize| {
        let s = body + i * format::SEALED_SEGMENT;
        &msg[s..(s + format::SEALED_SEGMENT).min(msg.len())]
    };
    let open = |m: &[u8]| format::open_message(&c.key, m, &c.ctx).map(|_| ());
    // Truncated at every segment boundary and in the middle of each.
    for cut in [
        body,
        body + 1,
        body + format::SEALED_SEGMENT,
        body + format::SEALED_SEGMENT + 7,
        body + 2 * format::SEALED_SEGMENT,
        body + 3 * format::SEALED_SEGMENT,
        msg.len() - 1,
    ] {
        assert!(open(&msg[..cut]).is_err(), "truncated at {cut} accepted");
    }
    assert!(matches!(
        open(&msg[..body + 3 * format::SEALED_SEGMENT]),
        Err(MessageError::Truncated { segments: 3 })
    ));
    // Swapped segments 0 and 1.
    let mut swapped = msg[..body].to_vec();
    swapped.extend_from_slice(seg(1));
    swapped.extend_from_slice(seg(0));
    swapped.extend_from_slice(&msg[body + 2 * format::SEALED_SEGMENT..]);
    assert_eq!(open(&swapped), Err(MessageError::Segment { index: 0 }));
    // Segment 1 duplicated.
    let mut dup = msg[..body + 2 * format::SEALED_SEGMENT].to_vec();
    dup.extend_from_slice(seg(1));
    dup.extend_from_slice(&msg[body + 2 * format::SEALED_SEGMENT..]);
    assert!(open(&dup).is_err());
    // Segment 2 dropped.
    let mut dropped = msg[..body + 2 * format::SEALED_SEGMENT].to_vec();
    dropped.extend_from_slice(&msg[body + 3 * format::SEALED_SEGMENT..]);
    assert_eq!(open(&dropped), Err(MessageError::Segment { index: 2 }));
    // Bytes appended after the final segment.
    for extra in [1usize, 16, 100] {
        let mut longer = msg.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        assert!(open(&longer).is_err(), "{extra} appended bytes accepted");
    }
}

// The Python client (clients/python) checks the same vectors in its own
// suite (tests/test_vectors.py), run by scripts/python-test.sh.
