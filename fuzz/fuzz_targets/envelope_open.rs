//! An envelope message from an attacker: the header parser, the length
//! arithmetic and the segment layer must refuse, never panic. The
//! commitment in the input is replaced by the right one for its header and
//! salt, so the fuzzer gets past it into the segments.
#![no_main]

use keywarden_client::format::{self, Context, Header, MessageKeys, COMMITMENT, SALT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = [0x42u8; 32];
    let ctx = Context::from([("k".to_string(), "v".to_string())]);
    let mut msg = data.to_vec();
    if let Ok((header, n)) = Header::parse(&msg) {
        if let Some(salt) = msg.get(n..n + SALT).and_then(|s| <[u8; SALT]>::try_from(s).ok()) {
            if let Ok(keys) = MessageKeys::derive(&key, &salt, header.as_bytes(), &ctx) {
                if let Some(c) = msg.get_mut(n + SALT..n + SALT + COMMITMENT) {
                    c.copy_from_slice(keys.commitment());
                }
            }
        }
    }
    let _ = format::open_message(&key, &msg, &ctx);
    let _ = format::open_message(&key, data, &ctx);
});
