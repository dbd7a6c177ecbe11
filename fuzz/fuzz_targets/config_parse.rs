#![no_main]
//! The daemon configuration and HSM profile parsers: never panic.
use keywarden::config::Config;
use keywarden::hsm::profile::HsmProfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = HsmProfile::parse(text);
        let _ = Config::parse_str(text, std::path::Path::new("/nonexistent-fuzz-dir"));
    }
});
