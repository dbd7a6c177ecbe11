#![no_main]
//! The wrapped data-key blob parser: never panics; what parses re-encodes
//! to the same bytes.
use keywarden::core::blob::Blob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Blob::decode(data) {
        assert_eq!(b.encode(), data);
    }
});
