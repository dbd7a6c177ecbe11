//! The audit log of `tests/access.rs`'s daemons: what it records and never
//! records, tampering caught by `audit verify`, rotation, a log that cannot
//! be written, and `audit query` / `audit tail`.

use super::*;

/// A scripted session, then the log verifies; every kind of tampering is
/// caught at the right sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_verifies_and_tampering_is_detected() {
    let mut d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let secret_ctx = "patient-4711-secret";
    let mut plaintexts = Vec::new();
    for i in 0..5 {
        let g = generate(
            &mut c,
            "k",
            &[("patient", secret_ctx), ("n", &format!("v{i}"))],
        )
        .await;
        decrypt(
            &mut c,
            &g.ciphertext_blob,
            &[("patient", secret_ctx), ("n", &format!("v{i}"))],
        )
        .await
        .unwrap();
        plaintexts.push(g.plaintext);
    }
    let _ = decrypt(&mut c, b"garbage", &[("patient", secret_ctx)]).await;
    drop(c);
    d.stop(); // final checkpoint at shutdown

    let dir = d.audit_dir();
    let live = dir.join("audit.log");
    let v = d.verify_audit(&["--output", "json"]).assert_ok().json();
    assert_eq!(v["ok"], true);
    assert!(v["checkpoints"].as_u64().unwrap() >= 2);

    // No context value, data key or share appears anywhere in the log.
    use base64::Engine;
    let log = std::fs::read_to_string(&live).unwrap();
    assert!(!log.contains(secret_ctx));
    for p in &plaintexts {
        assert!(!log.contains(&base64::engine::general_purpose::STANDARD.encode(p)));
        assert!(!log.contains(&hex::encode(p)));
    }
    let share = d.dev_share.clone().unwrap();
    assert!(!log.to_lowercase().contains(&share.to_lowercase()));
    assert!(!log.contains(
        &share
            .split('-')
            .skip(4)
            .take(8)
            .collect::<Vec<_>>()
            .concat()
    ));
    // Equal context values correlate (same HMAC) without appearing.
    let digests: std::collections::HashSet<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["context"]["patient"].as_str().map(str::to_string))
        .collect();
    assert_eq!(digests.len(), 1, "{digests:?}");

    let lines: Vec<String> = log.lines().map(str::to_string).collect();
    let n = lines.len();
    let public_key = dir.join("audit-signing.pub").display().to_string();
    let verify = |text: &str| -> (bool, String) {
        let f = dir.join("tampered.log");
        std::fs::write(&f, text).unwrap();
        let r = audit_verify(&[&f], &["--public-key", &public_key]);
        (r.ok, r.stderr)
    };
    let join = |ls: &[String]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();

    // A request line to tamper with; in one file from genesis, line i is seq i.
    let i = lines
        .iter()
        .position(|l| l.contains("\"op\":\"GenerateDataKey\""))
        .unwrap();
    assert!(i + 4 < n);
    // Edit one byte of line i.
    let mut edited = lines.clone();
    edited[i] = edited[i].replacen("\"op\":\"", "\"op\":\"X", 1);
    let (good, msg) = verify(&join(&edited));
    assert!(!good && msg.contains(&format!("seq {i}")), "{msg}");
    // Delete line i+1.
    let mut deleted = lines.clone();
    deleted.remove(i + 1);
    let (good, msg) = verify(&join(&deleted));
    assert!(
        !good && msg.contains(&format!("seq {}", i + 1)) && msg.contains("deleted"),
        "{msg}"
    );
    // Swap lines i+2 and i+3.
    let mut swapped = lines.clone();
    swapped.swap(i + 2, i + 3);
    let (good, msg) = verify(&join(&swapped));
    assert!(!good && msg.contains(&format!("seq {}", i + 2)), "{msg}");
    // Truncate the tail (the final checkpoint and two lines before it).
    let (good, msg) = verify(&join(&lines[..n - 3]));
    assert!(
        !good && msg.contains("not covered by a checkpoint"),
        "{msg}"
    );
    // Edit a line and re-chain everything after it: the checkpoint signature fails.
    let mut rechained = lines.clone();
    rechained[i] = rechained[i].replacen("\"code\":\"OK\"", "\"code\":\"NotFound\"", 1);
    assert_ne!(rechained[i], lines[i]);
    for j in i + 1..n {
        use sha2::Digest;
        let prev = hex::encode(sha2::Sha256::digest(rechained[j - 1].as_bytes()));
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&rechained[j]).unwrap();
        v.insert("prev".into(), serde_json::json!(prev));
        rechained[j] = serde_json::Value::Object(v).to_string();
    }
    let (good, msg) = verify(&join(&rechained));
    assert!(!good && msg.contains("bad signature"), "{msg}");
    // The untouched copy still verifies.
    let (good, msg) = verify(&join(&lines));
    assert!(good, "{msg}");

    // Who used the key: the query.
    let q = d.cli(
        &[
            "audit",
            "query",
            "--key",
            "k",
            "--dir",
            &dir.display().to_string(),
            "--output",
            "json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    assert!(v["entries"].as_array().unwrap().len() >= 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_audit_log_fails_closed_and_recovers() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let g = generate(&mut c, "k", &[]).await;
    let live = d.audit_dir().join("audit.log");
    let kept = d.audit_dir().join("audit-kept.log.bak");
    std::fs::rename(&live, &kept).unwrap();
    std::os::unix::fs::symlink("/dev/full", &live).unwrap();

    let r = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "k".into(),
            encryption_context: ctx(&[]),
        })
        .await;
    assert_status(r, Code::Unavailable, "audit log unavailable");
    assert_status(
        decrypt(&mut c, &g.ciphertext_blob, &[]).await,
        Code::Unavailable,
        "audit",
    );
    let r = c
        .keys
        .create_key(proto::CreateKeyRequest {
            name: "k2".into(),
            description: String::new(),
            rotation_period_secs: 0,
            kind: String::new(),
        })
        .await;
    assert_status(r, Code::Unavailable, "audit");
    // Status still answers, and says why.
    let s = status(&mut c).await;
    assert_eq!(s.audit_health, "unavailable");
    assert!(
        s.audit_detail.contains("No space left"),
        "{}",
        s.audit_detail
    );

    // The path becomes writable again: service resumes without a restart.
    std::fs::remove_file(&live).unwrap();
    let back = decrypt(&mut c, &g.ciphertext_blob, &[]).await.unwrap();
    assert_eq!(back.plaintext, g.plaintext);
    let s = status(&mut c).await;
    assert_eq!(s.audit_health, "ok", "{}", s.audit_detail);
}

/// Rotation by size keeps the chain across files, across a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rotation_keeps_the_chain_across_files() {
    let mut d = Daemon::builder()
        .args(&["--audit-max-file-bytes", "4096"])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    for i in 0..60 {
        generate(&mut c, "k", &[("n", &i.to_string())]).await;
        if i % 20 == 0 {
            // A checkpoint (at seal) lets the writer rotate.
            c.operator.seal(proto::SealRequest {}).await.unwrap();
            d.unseal_dev(&mut c).await;
        }
    }
    drop(c);
    d.restart().await;
    let mut c = d.client().await;
    generate(&mut c, "k", &[]).await;
    drop(c);
    d.stop();
    let rotated: Vec<_> = std::fs::read_dir(d.audit_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
        .collect();
    assert!(
        rotated.len() >= 2,
        "expected rotated files, found {}",
        rotated.len()
    );
    let v = d.verify_audit(&["--output", "json"]).assert_ok().json();
    assert_eq!(v["first_seq"], 0);
    assert!(v["files"].as_u64().unwrap() >= 3);
}

/// The operator without a SIEM: `audit query` filters (principal,
/// operation, outcome, time), `--context NAME=VALUE` answered through the
/// daemon's HMAC (auditors only, itself audited, the value never in the
/// log), and `audit tail --follow` printing entries as they are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_query_filters_context_lookup_and_tail_follow() {
    users();
    let d = Daemon::builder().policy(&policy("")).start().await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    let dir = d.audit_dir().display().to_string();
    let app = |args: &[&str]| d.cli_as("kwtest-app1", args, None);
    for patient in ["123", "124", "123"] {
        ok(&app(&[
            "datakey",
            "generate",
            "--key",
            "patients",
            "--context",
            "tenant=clinic-1",
            "--context",
            &format!("patient={patient}"),
        ]));
    }
    // A refusal: the app may not use another key.
    assert!(!app(&[
        "datakey",
        "generate",
        "--key",
        "other",
        "--context",
        "tenant=t"
    ])
    .status
    .success());
    let query = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["--output", "json", "audit", "query", "--dir", dir.as_str()];
        args.extend_from_slice(extra);
        let out = d.cli(&args, None);
        let v: serde_json::Value = serde_json::from_slice(&ok(&out).into_bytes()).unwrap();
        v["entries"].as_array().unwrap().clone()
    };

    let by_ehr = query(&["--principal", "ehr", "--op", "GenerateDataKey"]);
    assert_eq!(by_ehr.len(), 4, "{by_ehr:?}");
    let ok_only = query(&["--principal", "ehr", "--outcome", "ok"]);
    assert_eq!(ok_only.len(), 3);
    let denied = query(&["--principal", "ehr", "--outcome", "PERMISSION_DENIED"]);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(query(&["--principal", "ehr", "--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(
        query(&["--principal", "ehr", "--since", "2000-01-01T00:00:00Z"]).len(),
        4
    );

    // Every operation on patient 123's records, though the log holds no "123".
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(!log.contains("\"123\""));
    let p123 = query(&["--context", "patient=123", "--op", "GenerateDataKey"]);
    assert_eq!(p123.len(), 2, "{p123:?}");
    assert_eq!(
        query(&[
            "--context",
            "patient=123",
            "--context",
            "tenant=clinic-1",
            "--op",
            "GenerateDataKey"
        ])
        .len(),
        2
    );
    // Who looked the patient up is part of the patient's record too: the
    // lookup's own line holds the same HMAC.
    let all = query(&["--context", "patient=123"]);
    assert!(
        all.iter()
            .any(|v| v["op"] == "AuditHash" && v["principal"] == "operators"),
        "{all:?}"
    );
    assert!(query(&["--context", "patient=999", "--op", "GenerateDataKey"]).is_empty());
    // The value from stdin instead of the command line.
    let out = d.cli(
        &[
            "--output",
            "json",
            "audit",
            "query",
            "--dir",
            &dir,
            "--context-file",
            "-",
            "--op",
            "GenerateDataKey",
        ],
        Some("patient=123\n"),
    );
    let v: serde_json::Value = serde_json::from_slice(&ok(&out).into_bytes()).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    // A name given twice is refused, not overwritten.
    let out = d.cli(
        &[
            "audit",
            "query",
            "--dir",
            &dir,
            "--context",
            "patient=1",
            "--context",
            "patient=2",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("given twice"));
    // The lookup is itself audited, with the HMAC, not the value.
    let lookups = query(&["--op", "AuditHash", "--outcome", "ok"]);
    assert!(lookups.len() >= 4, "{lookups:?}");
    assert_eq!(lookups[0]["principal"], "operators");
    assert!(lookups[0]["context"]["patient"].is_string());
    // Auditors only: an admin who is not an auditor is refused.
    let out = d.cli_as(
        "kwtest-admin",
        &["audit", "query", "--dir", &dir, "--context", "patient=123"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the auditor role"),
        "{out:?}"
    );

    // tail: the last entries, then new ones as they come.
    let mut tail = ChildGuard::spawn(
        std::process::Command::new(BIN)
            .args([
                "--socket",
                d.socket().to_str().unwrap(),
                "--output",
                "json",
                "audit",
                "tail",
                "--dir",
                &dir,
                "-n",
                "1",
                "--follow",
                "--principal",
                "ehr",
            ])
            .stdout(std::process::Stdio::piped()),
    )
    .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["code"], "PermissionDenied", "{first}");
    // No pause needed here: tail read the history, and took its place in
    // the live file, before it printed that line, so what is written from
    // now on reaches it.
    ok(&app(&[
        "datakey",
        "generate",
        "--key",
        "patients",
        "--context",
        "tenant=clinic-1",
    ]));
    let next = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    let next: serde_json::Value = serde_json::from_str(&next).unwrap();
    assert_eq!(
        (next["op"].as_str(), next["code"].as_str()),
        (Some("GenerateDataKey"), Some("OK"))
    );
    drop(tail);
}
