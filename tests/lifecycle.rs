//! The CMK lifecycle end to end, each behaviour in its own test, against a
//! real SoftHSM token over the real socket. Every test also checks that the
//! daemon keeps serving another key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use tonic::Code;

async fn other_key_serves(c: &mut keywarden_client::Client) {
    let g = generate(c, "bystander", &[("t", "x")]).await;
    assert!(decrypt(c, &g.ciphertext_blob, &[("t", "x")]).await.is_ok());
}

async fn setup(d: &Daemon) -> keywarden_client::Client {
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    create_key(&mut c, "bystander").await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_blobs_and_uses_the_new_version() {
    let d = Daemon::builder().start().await;
    let mut c = setup(&d).await;
    let old = generate(&mut c, "k", &[("a", "1")]).await;
    assert_eq!(old.key_version, 1);
    let r = c
        .keys
        .rotate_key(name_req("k"))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(r.current_version, 2);
    assert_eq!(r.versions[0].state, "deactivated");
    assert_eq!(r.versions[1].state, "active");
    let new = generate(&mut c, "k", &[("a", "1")]).await;
    assert_eq!(new.key_version, 2);
    let back = decrypt(&mut c, &old.ciphertext_blob, &[("a", "1")])
        .await
        .unwrap();
    assert_eq!((back.plaintext, back.key_version), (old.plaintext, 1));
    // Counters are kept per version.
    let m = describe(&mut c, "k").await;
    assert_eq!(m.versions[0].encryptions, 1);
    assert_eq!(m.versions[1].encryptions, 1);
    // The new version is a new object on the token.
    let objs = d.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    let text = String::from_utf8_lossy(&objs.stdout);
    assert!(
        text.contains("keywarden:k/v1") && text.contains("keywarden:k/v2"),
        "{text}"
    );
    other_key_serves(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_moves_a_blob_to_the_newest_version_without_the_plaintext() {
    let d = Daemon::builder().start().await;
    let mut c = setup(&d).await;
    let old = generate(&mut c, "k", &[("tenant", "a")]).await;
    c.keys.rotate_key(name_req("k")).await.unwrap();
    let r = c
        .datakeys
        .re_encrypt(proto::ReEncryptRequest {
            ciphertext_blob: old.ciphertext_blob.clone(),
            encryption_context: ctx(&[("tenant", "a")]),
            destination_key: String::new(),
            destination_encryption_context: ctx(&[]),
            replace_context: false,
        })
        .await
        .unwrap()
        .into_inner();
    // The response type has no plaintext field at all; the new blob is under v2.
    assert_eq!(
        (r.source_key.as_str(), r.source_key_version, r.key_version),
        ("k", 1, 2)
    );
    assert_ne!(r.ciphertext_blob, old.ciphertext_blob);
    let back = decrypt(&mut c, &r.ciphertext_blob, &[("tenant", "a")])
        .await
        .unwrap();
    assert_eq!(
        (back.plaintext.clone(), back.key_version),
        (old.plaintext.clone(), 2)
    );
    // To another key, with a new context.
    let moved = c
        .datakeys
        .re_encrypt(proto::ReEncryptRequest {
            ciphertext_blob: r.ciphertext_blob.clone(),
            encryption_context: ctx(&[("tenant", "a")]),
            destination_key: "bystander".into(),
            destination_encryption_context: ctx(&[("tenant", "b")]),
            replace_context: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.key, "bystander");
    assert!(decrypt(&mut c, &moved.ciphertext_blob, &[("tenant", "a")])
        .await
        .is_err());
    let back = decrypt(&mut c, &moved.ciphertext_blob, &[("tenant", "b")])
        .await
        .unwrap();
    assert_eq!(back.plaintext, old.plaintext);
    // A wrong source context is refused like a Decrypt.
    let bad = c
        .datakeys
        .re_encrypt(proto::ReEncryptRequest {
            ciphertext_blob: old.ciphertext_blob.clone(),
            encryption_context: ctx(&[("tenant", "zzz")]),
            destination_key: String::new(),
            destination_encryption_context: ctx(&[]),
            replace_context: false,
        })
        .await;
    assert_status(bad, Code::InvalidArgument, "authentication failed");
    // Batch form.
    let batch = c
        .datakeys
        .batch_re_encrypt(proto::BatchReEncryptRequest {
            requests: vec![proto::ReEncryptRequest {
                ciphertext_blob: old.ciphertext_blob.clone(),
                encryption_context: ctx(&[("tenant", "a")]),
                destination_key: String::new(),
                destination_encryption_context: ctx(&[]),
                replace_context: false,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        batch.results[0].result,
        Some(proto::batch_re_encrypt_result::Result::Ok(_))
    ));
    // The CLI.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&old.ciphertext_blob);
    let out = d.cli(
        &[
            "datakey",
            "rewrap",
            "--context",
            "tenant=a",
            "--output",
            "json",
        ],
        Some(&b64),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 2);
    assert!(v.get("plaintext").is_none());
    other_key_serves(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_and_revoked_versions_refuse_old_blobs() {
    let d = Daemon::builder().start().await;
    let mut c = setup(&d).await;
    let v1 = generate(&mut c, "k", &[]).await;
    c.keys.rotate_key(name_req("k")).await.unwrap();
    let v2 = generate(&mut c, "k", &[]).await;
    c.keys.rotate_key(name_req("k")).await.unwrap();
    let v3 = generate(&mut c, "k", &[]).await;
    // Retire v1.
    c.keys
        .update_key(proto::UpdateKeyRequest {
            name: "k".into(),
            rotation_period_secs: None,
            min_decrypt_version: Some(2),
        })
        .await
        .unwrap();
    assert_status(
        decrypt(&mut c, &v1.ciphertext_blob, &[]).await,
        Code::FailedPrecondition,
        "version 1 of key \"k\" is retired",
    );
    assert!(decrypt(&mut c, &v2.ciphertext_blob, &[]).await.is_ok());
    // min above the newest version is refused.
    let bad = c
        .keys
        .update_key(proto::UpdateKeyRequest {
            name: "k".into(),
            rotation_period_secs: None,
            min_decrypt_version: Some(9),
        })
        .await;
    assert_status(bad, Code::InvalidArgument, "min_decrypt_version");
    // Revoke v2.
    let m = c
        .keys
        .revoke_version(proto::RevokeVersionRequest {
            name: "k".into(),
            version: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(m.versions[1].state, "compromised");
    assert_status(
        decrypt(&mut c, &v2.ciphertext_blob, &[]).await,
        Code::FailedPrecondition,
        "compromised",
    );
    assert!(decrypt(&mut c, &v3.ciphertext_blob, &[]).await.is_ok());
    // Revoking the active version rotates first, so encryption goes on.
    let m = c
        .keys
        .revoke_version(proto::RevokeVersionRequest {
            name: "k".into(),
            version: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(m.current_version, 4);
    assert_status(
        decrypt(&mut c, &v3.ciphertext_blob, &[]).await,
        Code::FailedPrecondition,
        "compromised",
    );
    assert_eq!(generate(&mut c, "k", &[]).await.key_version, 4);
    other_key_serves(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_the_very_next_call_and_enable_restores() {
    let d = Daemon::builder().start().await;
    let mut c = setup(&d).await;
    let g = generate(&mut c, "k", &[]).await;
    c.keys.disable_key(name_req("k")).await.unwrap();
    assert_status(
        decrypt(&mut c, &g.ciphertext_blob, &[]).await,
        Code::FailedPrecondition,
        "key \"k\" is suspended",
    );
    let r = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "k".into(),
            encryption_context: ctx(&[]),
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "suspended");
    other_key_serves(&mut c).await;
    c.keys.enable_key(name_req("k")).await.unwrap();
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_destruction_waits_can_be_cancelled_and_shreds() {
    let d = Daemon::builder()
        .args(&[
            "--destroy-min-delay",
            "2s",
            "--destroy-approvals",
            "1",
            "--tick",
            "1s",
        ])
        .start()
        .await;
    let mut c = setup(&d).await;
    let g1 = generate(&mut c, "k", &[]).await;
    c.keys.rotate_key(name_req("k")).await.unwrap();
    let g2 = generate(&mut c, "k", &[]).await;

    // Below the minimum waiting period.
    let r = c
        .keys
        .schedule_destroy(proto::ScheduleDestroyRequest {
            name: "k".into(),
            after_secs: 1,
        })
        .await;
    assert_status(r, Code::InvalidArgument, "after_secs: the waiting period");
    // Scheduled, then cancelled: the key comes back.
    let r = c
        .keys
        .schedule_destroy(proto::ScheduleDestroyRequest {
            name: "k".into(),
            after_secs: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, "approved");
    assert_status(
        decrypt(&mut c, &g1.ciphertext_blob, &[]).await,
        Code::FailedPrecondition,
        "pending-destruction",
    );
    c.keys.cancel_destroy(name_req("k")).await.unwrap();
    // That the scheduler then leaves the key alone past its due time is
    // checked on a driven clock (src/core/tests.rs), not by sleeping here.
    assert!(decrypt(&mut c, &g1.ciphertext_blob, &[]).await.is_ok());
    assert!(token_labels(&d).contains("keywarden:k/v2"));

    // Scheduled and left to run.
    c.keys
        .schedule_destroy(proto::ScheduleDestroyRequest {
            name: "k".into(),
            after_secs: 2,
        })
        .await
        .unwrap();
    assert_eq!(describe(&mut c, "k").await.state, "pending-destruction");
    wait_key(&mut c, "k", 15, "destruction did not happen", |k| {
        k.state == "destroyed"
    })
    .await;
    let m = describe(&mut c, "k").await;
    assert!(m.destroyed_at > 0);
    assert!(m.versions.iter().all(|v| v.state == "destroyed"));
    let labels = token_labels(&d);
    assert!(!labels.contains("keywarden:k/"), "{labels}");
    assert!(labels.contains("keywarden:bystander/v1"));
    for g in [&g1, &g2] {
        assert_status(
            decrypt(&mut c, &g.ciphertext_blob, &[]).await,
            Code::FailedPrecondition,
            "was destroyed at",
        );
    }
    // It stays destroyed after a restart.
    other_key_serves(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legal_hold_refuses_and_pauses_destruction_until_released() {
    let d = Daemon::builder()
        .args(&[
            "--destroy-min-delay",
            "1s",
            "--destroy-approvals",
            "1",
            "--tick",
            "1s",
        ])
        .start()
        .await;
    let mut c = setup(&d).await;
    let g = generate(&mut c, "k", &[]).await;
    let hold = |id: &str| proto::PlaceHoldRequest {
        name: "k".into(),
        reason: "litigation 2026-117".into(),
        hold_id: id.into(),
    };
    c.keys.place_hold(hold("lit-117")).await.unwrap();
    c.keys.place_hold(hold("regulator-9")).await.unwrap();
    let r = c
        .keys
        .schedule_destroy(proto::ScheduleDestroyRequest {
            name: "k".into(),
            after_secs: 1,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "lit-117");
    let r = c.keys.destroy_now(name_req("k")).await;
    assert_status(r, Code::FailedPrecondition, "legal hold");
    // Release both, schedule, then a new hold pauses the scheduled destruction.
    for id in ["lit-117", "regulator-9"] {
        c.keys
            .release_hold(proto::ReleaseHoldRequest {
                name: "k".into(),
                hold_id: id.into(),
            })
            .await
            .unwrap();
    }
    c.keys
        .schedule_destroy(proto::ScheduleDestroyRequest {
            name: "k".into(),
            after_secs: 1,
        })
        .await
        .unwrap();
    c.keys.place_hold(hold("late-hold")).await.unwrap();
    // Past the due time the hold still holds: on a driven clock in
    // src/core/tests.rs; here, the state right after the hold.
    let m = describe(&mut c, "k").await;
    assert_eq!(
        m.state, "pending-destruction",
        "a hold must pause the destruction"
    );
    assert!(token_labels(&d).contains("keywarden:k/v1"));
    assert!(m
        .holds
        .iter()
        .any(|h| h.id == "late-hold" && h.released_at == 0));
    // Release: it proceeds.
    c.keys
        .release_hold(proto::ReleaseHoldRequest {
            name: "k".into(),
            hold_id: "late-hold".into(),
        })
        .await
        .unwrap();
    wait_key(&mut c, "k", 15, "destruction did not resume", |k| {
        k.state == "destroyed"
    })
    .await;
    assert_status(
        decrypt(&mut c, &g.ciphertext_blob, &[]).await,
        Code::FailedPrecondition,
        "destroyed",
    );
    other_key_serves(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destruction_needs_a_second_distinct_admin() {
    ensure_user("kwtest-admin");
    let d = Daemon::builder()
        .args(&[
            "--destroy-min-delay",
            "1s",
            "--destroy-approvals",
            "2",
            "--tick",
            "1s",
        ])
        .start()
        .await;
    let mut c = setup(&d).await;
    let g = generate(&mut c, "k", &[]).await;
    // root requests an immediate destruction: one approval is not enough.
    let out = d.cli(&["key", "destroy-now", "k", "--output", "json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let req = v["request_id"].as_str().unwrap().to_string();
    assert_eq!(v["status"], "open");
    assert_eq!(
        (v["approvals"].as_u64(), v["approvals_needed"].as_u64()),
        (Some(1), Some(2))
    );
    // One approval of two: nothing happens (also checked past any due time
    // on a driven clock in src/core/tests.rs).
    assert!(
        decrypt(&mut c, &g.ciphertext_blob, &[]).await.is_ok(),
        "one admin alone destroyed the key"
    );
    // The same admin cannot approve twice.
    let out = d.cli(&["key", "approve", "k", &req], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already approved"));
    // A second, different admin (another Unix user) approves: destroyed.
    let out = d.cli_as(
        "kwtest-admin",
        &["key", "approve", "k", &req, "--output", "json"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "done");
    assert_status(
        decrypt(&mut c, &g.ciphertext_blob, &[]).await,
        Code::FailedPrecondition,
        "destroyed",
    );
    assert!(!token_labels(&d).contains("keywarden:k/"));
    // The audit log names both approvers.
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"destroy_approved\""));
    let admin_uid = nix::unistd::User::from_name("kwtest-admin")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert!(log.contains(&format!("\"by_uid\":{admin_uid}")));
    other_key_serves(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_rotation_by_period_and_by_count_and_the_hard_limit() {
    let d = Daemon::builder()
        .args(&[
            "--rotate-after-encryptions",
            "20",
            "--hard-limit-encryptions",
            "30",
            "--tick",
            "1s",
        ])
        .start()
        .await;
    let mut c = setup(&d).await;
    // By count: 25 encryptions pass the rotation threshold of 20.
    for _ in 0..25 {
        generate(&mut c, "k", &[]).await;
    }
    wait_key(&mut c, "k", 10, "no rotation by count", |k| {
        k.current_version >= 2
    })
    .await;
    // The hard limit: a version never encrypts more than 30 times. A batch
    // that would pass it is refused as a whole.
    create_key(&mut c, "capped").await;
    let batch = |n: usize| proto::BatchGenerateDataKeyRequest {
        requests: (0..n)
            .map(|_| proto::GenerateDataKeyRequest {
                key: "capped".into(),
                encryption_context: ctx(&[]),
            })
            .collect(),
        without_plaintext: true,
    };
    let r = c
        .datakeys
        .batch_generate_data_key(batch(31))
        .await
        .unwrap()
        .into_inner();
    match r.results[0].result.as_ref().unwrap() {
        proto::batch_generate_data_key_result::Result::Error(e) => {
            assert_eq!(e.code, Code::ResourceExhausted as i32);
            assert!(e.message.contains("encryption limit"), "{}", e.message);
        }
        _ => panic!("31 encryptions passed a hard limit of 30"),
    }
    // By period: 2 seconds.
    c.keys
        .update_key(proto::UpdateKeyRequest {
            name: "bystander".into(),
            rotation_period_secs: Some(2),
            min_decrypt_version: None,
        })
        .await
        .unwrap();
    wait_key(&mut c, "bystander", 10, "no rotation by period", |k| {
        k.current_version >= 2
    })
    .await;
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(
        log.contains("\"reason\":\"encryption count\"")
            && log.contains("\"reason\":\"rotation period\"")
    );
    other_key_serves(&mut c).await;
}

/// Edits to the registry file are detected at the next unseal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edited_registry_is_detected() {
    let mut d = Daemon::builder().start().await;
    let mut c = setup(&d).await;
    create_key(&mut c, "held").await;
    create_key(&mut c, "counted").await;
    c.keys.disable_key(name_req("k")).await.unwrap();
    c.keys
        .place_hold(proto::PlaceHoldRequest {
            name: "held".into(),
            reason: "court order".into(),
            hold_id: "h1".into(),
        })
        .await
        .unwrap();
    for _ in 0..3 {
        generate(&mut c, "counted", &[]).await;
    }
    drop(c);
    d.stop();
    let reg = d.registry_path();
    let pristine = d.dir.join("registry.pristine");
    std::fs::copy(&reg, &pristine).unwrap();
    let sql = |q: &str| {
        let conn = rusqlite::Connection::open(&reg).unwrap();
        conn.execute_batch(q).unwrap();
    };
    let set = |state: &std::path::Path| {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", reg.display()));
        }
        std::fs::copy(state, &reg).unwrap();
    };

    // Re-enable the disabled key, delete the hold, roll back the counter.
    sql("UPDATE key_records SET record = replace(record, '\"suspended\"', '\"active\"') WHERE name = 'k';");
    sql("UPDATE key_records SET record = replace(record, '\"id\":\"h1\"', '\"id\":\"hX\"') WHERE name = 'held';");
    sql("UPDATE key_records SET record = replace(record, '\"reserved\":10000', '\"reserved\":0') WHERE name = 'counted';");
    d.restart().await;
    let mut c = d.client().await;
    for k in ["k", "held", "counted"] {
        let r = c
            .keys
            .describe_key(proto::DescribeKeyRequest { name: k.into() })
            .await;
        assert_status(r, Code::DataLoss, "integrity check failed");
    }
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.registry_tampering.len(), 3, "{:?}", s.registry_tampering);
    // Untouched keys still serve.
    other_key_serves(&mut c).await;
    drop(c);

    // Restore the older (pristine, validly MAC'd) copy of the whole file:
    // the session above wrote, so the HSM's generation counter is ahead.
    d.stop();
    set(&pristine);
    d.restart().await;
    let mut c = d.client().await;
    let r = c
        .keys
        .describe_key(proto::DescribeKeyRequest {
            name: "bystander".into(),
        })
        .await;
    assert_status(r, Code::DataLoss, "older copy of the registry was restored");
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        s.registry_tampering
            .iter()
            .any(|t| t.contains("older copy")),
        "{:?}",
        s.registry_tampering
    );
}
