#![no_main]
//! The policy parser and evaluator: never panics.
use keywarden::policy::{Action, Identity, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = Policy::parse(text) {
            let c = Identity { uid: 1000, gid: 1000, pid: 1, groups: vec![1000], exe: "/bin/x".into() };
            let ctx = Default::default();
            let _ = p.authorize(&c, &Action::DataKey { key: "patients/1", context: &ctx });
            let _ = p.authorize(&c, &Action::KeyAdmin);
            let _ = p.authorize(&c, &Action::BreakGlass { key: "k" });
        }
    }
});
