//! An application that depends on the client crate must not inherit the
//! daemon's dependencies: no PKCS#11, SQLite, age, Shamir or nix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn the_client_links_none_of_the_daemons_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "keywarden-client",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--locked",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"keywarden-proto"), "{tree}");
    assert!(crates.contains(&"aes-gcm"), "{tree}");
    for banned in [
        "cryptoki",
        "cryptoki-sys",
        "rusqlite",
        "libsqlite3-sys",
        "age",
        "vsss-rs",
        "nix",
        "keywarden",
    ] {
        assert!(
            !crates.contains(&banned),
            "keywarden-client depends on {banned}:\n{tree}"
        );
    }
}
