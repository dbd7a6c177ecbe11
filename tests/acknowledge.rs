//! Accepting an older registry never undoes what the audit log recorded:
//! the attack of the second review (one admin's tampering acknowledgement
//! brought back a key two admins destroyed, re-enabled a disabled key and
//! un-revoked a compromised version), and the dual control that applies
//! when the log cannot vouch for the whole gap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use tonic::Code;

/// Puts back the registry (and, if asked, the token) saved in `snap`.
fn roll_back(d: &Daemon, snap: &std::path::Path, token_too: bool) {
    let reg = d.registry_path();
    std::fs::copy(snap.join("registry.db"), &reg).unwrap();
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(reg.with_extension(ext));
    }
    if token_too {
        std::fs::remove_dir_all(d.dir.join("tokens")).unwrap();
        copy_dir(&snap.join("tokens"), &d.dir);
    }
}

fn snapshot(d: &Daemon) -> std::path::PathBuf {
    let snap = d.dir.join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    copy_dir(&d.registry_path(), &snap);
    copy_dir(&d.dir.join("tokens"), &snap);
    snap
}

/// `operator acknowledge-tampering` as `user` (None: root), as JSON.
fn acknowledge(d: &Daemon, user: Option<&str>) -> serde_json::Value {
    let args = [
        "operator",
        "acknowledge-tampering",
        "--reason",
        "restored from a disk snapshot (drill)",
        "--output",
        "json",
    ];
    let out = match user {
        None => d.cli(&args, None),
        Some(u) => d.cli_as(u, &args, None),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A daemon whose destructions need two admins, with key `k` created, a
/// snapshot of its state taken, then `k` disabled.
async fn disabled_after_a_snapshot() -> (Daemon, std::path::PathBuf) {
    ensure_user("kwtest-admin");
    let mut d = Daemon::builder()
        .args(&["--destroy-approvals", "2"])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    drop(c);
    d.stop();
    let snap = snapshot(&d);
    d.restart().await;
    let mut c = d.client().await;
    c.keys.disable_key(name_req("k")).await.unwrap();
    (d, snap)
}

/// The review's attack, on registry and token copied back together: one
/// admin's acknowledgement now takes back, from the audit log's ledger, the
/// revocation, the disable and the two-admin destruction made since the
/// copy; the destroyed key's object the copied token brought back is
/// destroyed again, and the alert names each change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_an_old_snapshot_keeps_destroyed_revoked_and_disabled() {
    ensure_user("kwtest-admin");
    let mut d = Daemon::builder()
        .args(&["--destroy-approvals", "2"])
        .start()
        .await;
    let mut c = d.client().await;
    for k in ["versions", "paused", "shredded"] {
        create_key(&mut c, k).await;
    }
    c.keys.rotate_key(name_req("versions")).await.unwrap();
    let v2 = generate(&mut c, "versions", &[("t", "1")]).await;
    assert_eq!(v2.key_version, 2);
    let gone = generate(&mut c, "shredded", &[("t", "1")]).await;
    drop(c);
    d.stop();
    let snap = snapshot(&d);
    d.restart().await;
    let mut c = d.client().await;
    c.keys
        .revoke_version(proto::RevokeVersionRequest {
            name: "versions".into(),
            version: 2,
        })
        .await
        .unwrap();
    c.keys.disable_key(name_req("paused")).await.unwrap();
    let out = d.cli(
        &["key", "destroy-now", "shredded", "--output", "json"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let req = v["request_id"].as_str().unwrap().to_string();
    let out = d.cli_as("kwtest-admin", &["key", "approve", "shredded", &req], None);
    assert!(out.status.success(), "{out:?}");
    assert!(!token_labels(&d).contains("keywarden:shredded/"));
    drop(c);
    d.stop();

    roll_back(&d, &snap, true);
    assert!(token_labels(&d).contains("keywarden:shredded/"));
    d.restart().await;
    assert!(!tampering(&d).await.is_empty());
    let mut c = d.client().await;
    assert_status(
        decrypt(&mut c, &v2.ciphertext_blob, &[("t", "1")]).await,
        Code::DataLoss,
        "registry",
    );

    // One admin is enough here: the log vouches for the whole gap.
    let ack = acknowledge(&d, None);
    assert_eq!(ack["complete"], true, "{ack}");
    assert_eq!(ack["unverified"], "", "{ack}");
    let replayed: Vec<String> = ack["replayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let says = |needle: &str| replayed.iter().any(|l| l.contains(needle));
    assert!(says("v2 active -> compromised"), "{replayed:?}");
    assert!(says("paused: active -> suspended"), "{replayed:?}");
    assert!(says("shredded: active -> destroyed"), "{replayed:?}");
    assert!(tampering(&d).await.is_empty());

    assert_status(
        decrypt(&mut c, &v2.ciphertext_blob, &[("t", "1")]).await,
        Code::FailedPrecondition,
        "compromised",
    );
    assert_status(gdk(&mut c, "paused").await, Code::FailedPrecondition, "");
    assert_status(
        decrypt(&mut c, &gone.ciphertext_blob, &[("t", "1")]).await,
        Code::FailedPrecondition,
        "destroyed",
    );
    assert!(
        !token_labels(&d).contains("keywarden:shredded/"),
        "the copied-back object of a destroyed key survived"
    );
    // It lasts across a restart, and the chain still verifies.
    drop(c);
    d.restart().await;
    assert!(tampering(&d).await.is_empty());
    let mut c = d.client().await;
    assert_status(
        decrypt(&mut c, &gone.ciphertext_blob, &[("t", "1")]).await,
        Code::FailedPrecondition,
        "destroyed",
    );
    drop(c);
    d.stop();
    let log: String = d
        .audit_files()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let alert = log
        .lines()
        .find(|l| l.contains("REGISTRY ROLLBACK ACCEPTED") && l.contains("\"replayed\""))
        .expect("no alert line");
    assert!(
        alert.contains("shredded: active -> destroyed")
            && alert.contains("v2 active -> compromised"),
        "{alert}"
    );
    d.verify_audit(&[]).assert_ok();
}

/// The audit log deleted and the registry rolled back while the HSM's
/// counter remembers a later generation: the log cannot say what changed,
/// so accepting needs as many distinct admins as a destruction; the same
/// admin twice counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unvouched_gap_needs_as_many_admins_as_a_destruction() {
    let (mut d, snap) = disabled_after_a_snapshot().await;
    d.stop();
    roll_back(&d, &snap, false);
    std::fs::remove_dir_all(d.audit_dir()).unwrap();
    d.restart().await;
    assert!(!tampering(&d).await.is_empty());

    for _ in 0..2 {
        let ack = acknowledge(&d, None);
        assert_eq!(ack["complete"], false, "{ack}");
        assert_eq!(
            (ack["approvals"].as_u64(), ack["approvals_needed"].as_u64()),
            (Some(1), Some(2))
        );
        assert!(
            ack["unverified"]
                .as_str()
                .unwrap()
                .contains("accounts for no write at registry generation 1"),
            "{ack}"
        );
        let mut c = d.client().await;
        assert_status(gdk(&mut c, "k").await, Code::DataLoss, "");
    }
    let ack = acknowledge(&d, Some("kwtest-admin"));
    assert_eq!(ack["complete"], true, "{ack}");
    assert!(tampering(&d).await.is_empty());
    d.stop();
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("REGISTRY ROLLBACK ACKNOWLEDGED, NOT YET ACCEPTED"));
    assert!(log.contains("REGISTRY ROLLBACK ACCEPTED"));
}

/// The review's sharper variant: the registry copied back while the HSM
/// counter remembers (a hardware HSM), and the audit log rewritten so that
/// the disable's ledger line is gone and the chain still links (seq and
/// prev recomputed after the cut, later checkpoints dropped). The cut
/// leaves the disable's generation unaccounted for: one admin is not
/// enough, and the disable is not undone by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_a_ledger_line_cut_out_does_not_vouch() {
    let (mut d, snap) = disabled_after_a_snapshot().await;
    let mut c = d.client().await;
    create_key(&mut c, "later").await;
    drop(c);
    d.stop();
    roll_back(&d, &snap, false);
    let live = d.audit_dir().join("audit.log");
    let text = std::fs::read_to_string(&live).unwrap();
    let mut out: Vec<String> = Vec::new();
    let mut cut = false;
    for line in text.lines() {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let disable = v["type"] == "registry_write"
            && v["key"] == "k"
            && v["record"].as_str().unwrap().contains("\"suspended\"");
        if disable {
            cut = true;
            continue;
        }
        if cut {
            if v["type"] == "checkpoint" {
                continue;
            }
            let prev: serde_json::Value = serde_json::from_str(out.last().unwrap()).unwrap();
            v.insert("seq".into(), (prev["seq"].as_u64().unwrap() + 1).into());
            use sha2::Digest;
            let h = hex::encode(sha2::Sha256::digest(out.last().unwrap().as_bytes()));
            v.insert("prev".into(), h.into());
        }
        out.push(keywarden::audit::canonical(&v));
    }
    assert!(cut, "no disable line in the log");
    std::fs::write(&live, out.join("\n") + "\n").unwrap();
    d.restart().await;
    assert!(!tampering(&d).await.is_empty());
    let ack = acknowledge(&d, None);
    assert_eq!(ack["complete"], false, "{ack}");
    assert!(
        ack["unverified"]
            .as_str()
            .unwrap()
            .contains("accounts for no write at registry generation"),
        "{ack}"
    );
    let mut c = d.client().await;
    assert_status(gdk(&mut c, "k").await, Code::DataLoss, "");
}

/// A key's row corrupted on disk so that the replay would skip it, to be
/// put back once the older registry is accepted: the audit log's record
/// is written over the row instead, and the row put back is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_row_is_written_over_from_the_ledger() {
    ensure_user("kwtest-admin");
    let mut d = Daemon::builder()
        .args(&["--destroy-approvals", "2"])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "shredded").await;
    let gone = generate(&mut c, "shredded", &[("t", "1")]).await;
    drop(c);
    d.stop();
    let snap = snapshot(&d);
    d.restart().await;
    let out = d.cli(
        &["key", "destroy-now", "shredded", "--output", "json"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let req = v["request_id"].as_str().unwrap().to_string();
    let out = d.cli_as("kwtest-admin", &["key", "approve", "shredded", &req], None);
    assert!(out.status.success(), "{out:?}");
    d.stop();
    roll_back(&d, &snap, true);
    // The row as the copy had it, kept to be put back later; then spoilt.
    let db = rusqlite::Connection::open(d.registry_path()).unwrap();
    let original: (Vec<u8>, String, i64, String) = db
        .query_row(
            "SELECT id, record, gen, mac FROM key_records WHERE name = 'shredded'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    db.execute(
        "UPDATE key_records SET mac = 'spoilt' WHERE name = 'shredded'",
        [],
    )
    .unwrap();
    drop(db);
    d.restart().await;
    let ack = acknowledge(&d, None);
    assert_eq!(ack["complete"], true, "{ack}");
    assert!(
        ack["replayed"]
            .to_string()
            .contains("shredded: its row failed its integrity check"),
        "{ack}"
    );
    let mut c = d.client().await;
    assert_status(
        decrypt(&mut c, &gone.ciphertext_blob, &[("t", "1")]).await,
        Code::FailedPrecondition,
        "destroyed",
    );
    drop(c);
    d.stop();
    // The genuine old row put back: it no longer matches the manifest.
    let db = rusqlite::Connection::open(d.registry_path()).unwrap();
    db.execute(
        "UPDATE key_records SET record = ?2, gen = ?3, mac = ?4 WHERE id = ?1",
        rusqlite::params![original.0, original.1, original.2, original.3],
    )
    .unwrap();
    drop(db);
    d.restart().await;
    let mut c = d.client().await;
    let r = decrypt(&mut c, &gone.ciphertext_blob, &[("t", "1")]).await;
    assert!(r.is_err(), "the destroyed key came back");
}
