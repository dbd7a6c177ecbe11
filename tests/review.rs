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

/// `keywarden serve` on the dev daemon's configuration, without dev mode's
/// automatic init (to look at a daemon that must not be initialised).
struct Serve(std::process::Child);

impl Serve {
    async fn start(d: &Daemon) -> Serve {
        let (var, conf) = d.token_conf();
        let log = std::fs::File::create(d.dir.join("serve.log")).unwrap();
        let child = std::process::Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(d.dir.join("keywarden.toml"))
            .env(var, conf)
            .current_dir(&d.dir)
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Serve(child);
        for _ in 0..600 {
            if let Ok(mut c) = keywarden::client::Client::connect(&d.socket()).await {
                if c.operator.status(proto::StatusRequest {}).await.is_ok() {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("serve did not start: {}", std::fs::read_to_string(d.dir.join("serve.log")).unwrap_or_default());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn tampering(d: &Daemon) -> Vec<String> {
    let mut c = d.client().await;
    c.operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .registry_tampering
}

/// A data key under `key` is refused as DATA_LOSS (the registry is not
/// trusted) or served.
async fn gdk(c: &mut keywarden::client::Client, key: &str) -> Result<(), tonic::Status> {
    c.datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: key.into(),
            encryption_context: ctx(&[("t", "1")]),
        })
        .await
        .map(|_| ())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn acknowledge(d: &Daemon) -> std::process::Output {
    d.cli(
        &[
            "operator",
            "acknowledge-tampering",
            "--reason",
            "restored from backup on purpose (drill)",
        ],
        None,
    )
}

/// Finding 1: an older registry with the HSM's generation counter deleted
/// was accepted. Now it is reported and every key is refused until an
/// admin acknowledges it, which the audit log records.
#[tokio::test]
async fn an_old_registry_with_the_counter_deleted_is_caught() {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    drop(c);
    d.stop();
    // The old copy: the key is active.
    let reg = d.registry_path();
    let old = d.dir.join("registry.old");
    std::fs::copy(&reg, &old).unwrap();
    d.restart().await;
    let mut c = d.client().await;
    c.keys.disable_key(name_req("patients")).await.unwrap();
    assert_status(gdk(&mut c, "patients").await, Code::FailedPrecondition, "");
    drop(c);
    d.stop();
    // The attack: the old registry back, the counter object gone.
    std::fs::copy(&old, &reg).unwrap();
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(reg.with_extension(ext));
    }
    d.restart_sealed().await;
    let out = d.pkcs11_tool(&[
        "--delete-object",
        "--type",
        "data",
        "--label",
        "keywarden-registry-generation",
    ]);
    assert!(out.status.success(), "{out:?}");
    let share = d.dev_share.clone().unwrap();
    let mut c = d.client().await;
    c.operator
        .unseal(proto::UnsealRequest {
            share,
            reset: false,
        })
        .await
        .unwrap();
    d.wait_phase("unsealed").await;
    let t = tampering(&d).await;
    assert!(
        t.iter().any(|l| l.contains("generation counter is missing")),
        "{t:?}"
    );
    // The disabled key must not come back to life.
    assert_status(gdk(&mut c, "patients").await, Code::DataLoss, "registry");
    // A restart does not launder it: the counter is not recreated.
    drop(c);
    d.restart().await;
    let mut c = d.client().await;
    assert_status(gdk(&mut c, "patients").await, Code::DataLoss, "registry");
    // The explicit, audited way back.
    let out = acknowledge(&d);
    assert!(out.status.success(), "{out:?}");
    assert!(tampering(&d).await.is_empty());
    gdk(&mut c, "patients").await.unwrap();
    drop(c);
    d.restart().await;
    assert!(tampering(&d).await.is_empty(), "the acceptance did not last");
    d.stop();
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("\"tampering_acknowledged\""), "not audited");
    let (ok, v) = audit_verify(&d);
    assert!(ok, "{v}");
}

/// Finding 1, beyond the counter: registry and token copied back together
/// (the counter agrees with the registry), caught by the audit log, which
/// recorded a later generation.
#[tokio::test]
async fn a_consistent_rollback_of_registry_and_token_is_caught_by_the_audit_log() {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    create_key(&mut c, "scans").await;
    drop(c);
    d.stop();
    let snap = d.dir.join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    copy_dir(&d.dir.join("state").join("registry.db"), &snap);
    copy_dir(&d.dir.join("tokens"), &snap);
    d.restart().await;
    let mut c = d.client().await;
    c.keys
        .place_hold(proto::PlaceHoldRequest {
            name: "scans".into(),
            reason: "litigation 2026-17".into(),
            hold_id: String::new(),
        })
        .await
        .unwrap();
    drop(c);
    d.stop();
    std::fs::remove_dir_all(d.dir.join("tokens")).unwrap();
    copy_dir(&snap.join("tokens"), &d.dir);
    let reg = d.registry_path();
    std::fs::copy(snap.join("registry.db"), &reg).unwrap();
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(reg.with_extension(ext));
    }
    d.restart().await;
    let t = tampering(&d).await;
    assert!(
        t.iter()
            .any(|l| l.contains("the audit log has recorded")),
        "{t:?}"
    );
    let mut c = d.client().await;
    assert_status(gdk(&mut c, "scans").await, Code::DataLoss, "registry");
}

/// Finding 10: a deleted audit log started a new chain silently. Now the
/// registry's history without a log is reported until acknowledged.
#[tokio::test]
async fn a_deleted_audit_log_is_reported_until_acknowledged() {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    drop(c);
    d.stop();
    std::fs::remove_dir_all(d.audit_dir()).unwrap();
    d.restart().await;
    let t = tampering(&d).await;
    assert!(t.iter().any(|l| l.contains("audit log holds no record")), "{t:?}");
    let mut c = d.client().await;
    assert_status(gdk(&mut c, "k").await, Code::DataLoss, "audit log");
    let out = acknowledge(&d);
    assert!(out.status.success(), "{out:?}");
    gdk(&mut c, "k").await.unwrap();
}

/// Finding 9: seal.json edited (pending_init) or deleted.
#[tokio::test]
async fn an_edited_or_deleted_seal_file_is_reported_as_tampering() {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    drop(c);
    d.stop();
    let path = d.seal_file();
    let original = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["pending_init"] = serde_json::json!(true);
    std::fs::write(&path, v.to_string()).unwrap();
    d.restart_sealed().await;
    let mut c = d.client().await;
    let r = c
        .operator
        .unseal(proto::UnsealRequest {
            share: d.dev_share.clone().unwrap(),
            reset: false,
        })
        .await;
    assert_status(r, Code::DataLoss, "seal.json does not verify");
    assert_eq!(d.phase().await, "sealed");
    drop(c);
    d.stop();
    // Deleted: not "uninitialized", and init is refused before the token
    // is touched.
    std::fs::remove_file(&path).unwrap();
    let serve = Serve::start(&d).await;
    let t = tampering(&d).await;
    assert!(t.iter().any(|l| l.contains("seal.json is missing")), "{t:?}");
    // Any PINs: the daemon must refuse before it spends a login attempt.
    let pin = d.dir.join("user.pin");
    for f in [&pin, &d.dir.join("so.pin")] {
        std::fs::write(f, "12345678").unwrap();
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let out = d.cli(
        &[
            "operator",
            "init",
            "--shares",
            "1",
            "--threshold",
            "1",
            "--pin-file",
            &pin.display().to_string(),
            "--so-pin-file",
            &d.dir.join("so.pin").display().to_string(),
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("seal.json is missing"), "{err}");
    drop(serve);
    // Restored from backup: unseals as before.
    std::fs::write(&path, &original).unwrap();
    d.restart().await;
    let mut c = d.client().await;
    gdk(&mut c, "k").await.unwrap();
}
