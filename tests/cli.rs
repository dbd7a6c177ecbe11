//! The CLI as a user runs it: the real binary against the real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datakey_round_trip_through_the_cli() {
    let d = Daemon::builder().start().await;
    let k = json(&d.cli(
        &[
            "key",
            "create",
            "records",
            "--description",
            "patient records",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(k["name"], "records");
    assert_eq!(k["current_version"], 1);
    assert_eq!(k["versions"][0]["state"], "active");

    let g = json(&d.cli(
        &[
            "datakey",
            "generate",
            "--key",
            "records",
            "--context",
            "tenant=clinic-1",
            "--context",
            "kind=mri",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(g["key"], "records");
    assert_eq!(g["version"], 1);
    let plaintext = g["plaintext"].as_str().unwrap().to_string();
    let ciphertext = g["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(plaintext.len(), 44); // base64 of 32 bytes

    // The blob from stdin, the context in another order.
    let out = d.cli(
        &[
            "datakey",
            "decrypt",
            "--context",
            "kind=mri",
            "--context",
            "tenant=clinic-1",
        ],
        Some(&format!("{ciphertext}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), plaintext);

    let dj = json(&d.cli(
        &[
            "datakey",
            "decrypt",
            "--context",
            "kind=mri",
            "--context",
            "tenant=clinic-1",
            "--ciphertext",
            &ciphertext,
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(dj["plaintext"], plaintext.as_str());
    assert_eq!(dj["key"], "records");

    // The wrong context fails with a non-zero exit and a message on stderr.
    let out = d.cli(
        &[
            "datakey",
            "decrypt",
            "--context",
            "tenant=clinic-2",
            "--context",
            "kind=mri",
        ],
        Some(&ciphertext),
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("encryption_context"),
        "{err}"
    );

    // --no-plaintext prints no plaintext field.
    let np = json(&d.cli(
        &[
            "datakey",
            "generate",
            "--key",
            "records",
            "--no-plaintext",
            "--output",
            "json",
        ],
        None,
    ));
    assert!(np.get("plaintext").is_none());
    assert!(np["ciphertext"].as_str().unwrap().len() > 100);

    let list = json(&d.cli(&["key", "list", "--output", "json"], None));
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    let show = json(&d.cli(&["key", "show", "records", "--output", "json"], None));
    assert_eq!(show["description"], "patient records");
    let status = json(&d.cli(&["status", "--output", "json"], None));
    assert_eq!(status["hsm_health"], "ok");
    assert_eq!(status["key_count"], 1);
    assert_eq!(status["token"]["label"], "keywarden-dev");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_are_clear() {
    let d = Daemon::builder().start().await;
    let out = d.cli(&["datakey", "generate", "--key", "nope"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NotFound") && err.contains("\"nope\""),
        "{err}"
    );

    let out = d.cli(&["datakey", "decrypt"], Some("!!!not base64"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("base64"));

    let out = d.cli(
        &["datakey", "generate", "--key", "k", "--context", "novalue"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));

    let out = std::process::Command::new(BIN)
        .args(["status", "--socket", "/nonexistent/keywarden.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") && err.contains("/nonexistent/keywarden.sock"),
        "{err}"
    );
}

#[test]
fn serve_refuses_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[server]\nsocket = \"s\"\nstate_dir = \"st\"\n[hsm]\nprofile = \"p\"\ntoken_label = \"x\"\npin = \"1234\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `pin`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
