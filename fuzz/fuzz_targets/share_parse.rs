#![no_main]
//! The share-line parser: never panics; what parses formats back to an
//! equivalent line.
use keywarden::seal::share;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = share::parse(text) {
            let line = share::format(&s.set_id, s.threshold, &s.bytes);
            let again = share::parse(&line).expect("a formatted share parses");
            assert_eq!(again.set_id, s.set_id);
            assert_eq!(again.bytes.index, s.bytes.index);
        }
    }
});
