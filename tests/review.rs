//! Regression tests for the findings of the adversarial review: each
//! reproduces an attack against the real daemon on a real token and checks
//! that it is now refused, detected or bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use keywarden::proto;
use tonic::Code;

/// `keywarden audit verify --dir DIR --output json`, as JSON (and success).
fn audit_verify(d: &Daemon) -> (bool, serde_json::Value) {
    let out = d.cli(
        &[
            "audit",
            "verify",
            "--dir",
            &d.audit_dir().display().to_string(),
            "--output",
            "json",
        ],
        None,
    );
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

/// A second daemon on the same configuration writes nothing (the audit chain
/// stays whole) and names the process that holds the lock.
#[tokio::test]
async fn a_second_daemon_writes_nothing_and_names_the_holder() {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let log = d.audit_dir().join("audit.log");
    let before = std::fs::read(&log).unwrap();
    let (var, conf) = d.token_conf();
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(d.dir.join("keywarden.toml"))
        .env(var, conf)
        .current_dir(&d.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second daemon started: {stderr}");
    let holder = d.serve_pid().unwrap();
    assert!(
        stderr.contains(&format!("another daemon (pid {holder})")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        before,
        "the audit log changed"
    );
    assert_serving(&mut c).await;
    drop(c);
    d.stop();
    let (ok, v) = audit_verify(&d);
    assert!(ok, "audit verify failed: {v}");
}
