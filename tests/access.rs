//! Identities, the policy and the audit log, end to end: the daemon runs as
//! root, clients as other Unix users (setpriv), over the real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use tonic::Code;

fn policy(extra: &str) -> String {
    format!(
        r#"
[[principal]]
name = "operators"
users = ["root"]
roles = ["admin", "custodian", "auditor"]
break_glass = true
break_glass_keys = ["patients"]

[[principal]]
name = "ehr"
users = ["kwtest-app1"]
roles = ["app"]
keys = ["patients"]
require_context = ["tenant"]

[[principal]]
name = "custodian"
users = ["kwtest-cust"]
roles = ["custodian"]

[[principal]]
name = "second-admin"
users = ["kwtest-admin"]
roles = ["admin"]
{extra}
"#
    )
}

const IMAGING: &str = r#"
[[principal]]
name = "imaging"
users = ["kwtest-app2"]
roles = ["app"]
keys = ["images/*"]
"#;

fn users() {
    for u in ["kwtest-app1", "kwtest-app2", "kwtest-cust", "kwtest-admin"] {
        ensure_user(u);
    }
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn denied(out: &std::process::Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_get_their_keys_only_and_roles_are_enforced() {
    users();
    let d = Daemon::builder().policy(&policy(IMAGING)).start().await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    create_key(&mut c, "images/ct").await;
    create_key(&mut c, "backups").await;

    // The app user gets data keys for its key, with the required context.
    let g = ok(&d.cli_as(
        "kwtest-app1",
        &[
            "datakey",
            "generate",
            "--key",
            "patients",
            "--context",
            "tenant=c1",
            "--output",
            "json",
        ],
        None,
    ));
    let v: serde_json::Value = serde_json::from_str(&g).unwrap();
    let blob = v["ciphertext"].as_str().unwrap().to_string();
    ok(&d.cli_as(
        "kwtest-app1",
        &["datakey", "decrypt", "--context", "tenant=c1"],
        Some(&blob),
    ));
    // Other keys are refused, naming the missing grant and not the policy.
    denied(
        &d.cli_as(
            "kwtest-app1",
            &[
                "datakey",
                "generate",
                "--key",
                "backups",
                "--context",
                "tenant=c1",
            ],
            None,
        ),
        "no app grant for key \"backups\"",
    );
    // The context constraint.
    denied(
        &d.cli_as(
            "kwtest-app1",
            &["datakey", "generate", "--key", "patients"],
            None,
        ),
        "requires the context to contain \"tenant\"",
    );
    // Another app cannot decrypt this app's blob.
    denied(
        &d.cli_as(
            "kwtest-app2",
            &["datakey", "decrypt", "--context", "tenant=c1"],
            Some(&blob),
        ),
        "no app grant for key \"patients\"",
    );
    ok(&d.cli_as(
        "kwtest-app2",
        &["datakey", "generate", "--key", "images/ct"],
        None,
    ));

    // An app cannot unseal or manage keys; a custodian cannot manage keys.
    denied(
        &d.cli_as("kwtest-app1", &["operator", "unseal"], Some("KWS1-x")),
        "needs the custodian role",
    );
    denied(
        &d.cli_as("kwtest-app1", &["key", "create", "x"], None),
        "needs the admin role",
    );
    denied(
        &d.cli_as("kwtest-cust", &["key", "create", "x"], None),
        "needs the admin role",
    );
    denied(
        &d.cli_as(
            "kwtest-cust",
            &[
                "datakey",
                "generate",
                "--key",
                "patients",
                "--context",
                "tenant=c1",
            ],
            None,
        ),
        "needs the app role",
    );
    // A user the policy does not know gets nothing, not even Status.
    ensure_user("kwtest-nobody");
    denied(&d.cli_as("kwtest-nobody", &["status"], None), "uid");
    // The custodian can read the status and seal.
    ok(&d.cli_as("kwtest-cust", &["status"], None));
    ok(&d.cli_as("kwtest-cust", &["operator", "seal"], None));
    let share = d.dev_share.clone().unwrap();
    ok(&d.cli_as("kwtest-cust", &["operator", "unseal"], Some(&share)));

    // The audit log names who did what, including the refusals.
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    let app1 = nix::unistd::User::from_name("kwtest-app1")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["caller"]["uid"] == app1
        && l["op"] == "GenerateDataKey"
        && l["key"] == "patients"
        && l["code"] == "OK"
        && l["principal"] == "ehr"));
    assert!(lines.iter().any(|l| l["caller"]["uid"] == app1
        && l["key"] == "backups"
        && l["code"] == "PermissionDenied"));
    assert!(lines
        .iter()
        .any(|l| l["caller"]["uid"] == app1 && l["op"] == "Unseal" && l["outcome"] == "denied"));
    // The exe is recorded.
    assert!(lines.iter().any(|l| l["caller"]["exe"]
        .as_str()
        .unwrap_or("")
        .ends_with("/keywarden")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_only_where_permitted_and_it_expires() {
    users();
    let d = Daemon::builder().policy(&policy("")).start().await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    // root (operators) is an admin but not an app: refused without break-glass.
    let r = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "patients".into(),
            encryption_context: ctx(&[("tenant", "t")]),
        })
        .await;
    assert_status(r, Code::PermissionDenied, "needs the app role");
    // The second admin is not permitted to break glass.
    denied(
        &d.cli_as(
            "kwtest-admin",
            &[
                "key",
                "break-glass",
                "patients",
                "--reason",
                "incident 42",
                "--for",
                "1h",
            ],
            None,
        ),
        "no break-glass grant",
    );
    // A reason is required.
    let out = d.cli(
        &[
            "key",
            "break-glass",
            "patients",
            "--reason",
            "",
            "--for",
            "1h",
        ],
        None,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reason"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // root may, for 2 seconds.
    ok(&d.cli(
        &[
            "key",
            "break-glass",
            "patients",
            "--reason",
            "records request 42 from the court",
            "--for",
            "2s",
        ],
        None,
    ));
    let g = generate(&mut c, "patients", &[("tenant", "t")]).await;
    assert_eq!(g.plaintext.len(), 32);
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.break_glass.len(), 1);
    assert_eq!(s.break_glass[0].key, "patients");
    assert!(s.break_glass[0].reason.contains("court"));
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("BREAK-GLASS ACCESS GRANTED"));
    assert!(log
        .lines()
        .any(|l| l.contains("\"break_glass\":true") && l.contains("\"op\":\"GenerateDataKey\"")));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let r = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "patients".into(),
            encryption_context: ctx(&[("tenant", "t")]),
        })
        .await;
    assert_status(r, Code::PermissionDenied, "needs the app role");
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.break_glass.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_valid_and_invalid() {
    users();
    let d = Daemon::builder().policy(&policy(IMAGING)).start().await;
    let mut c = d.client().await;
    create_key(&mut c, "images/ct").await;
    ok(&d.cli_as(
        "kwtest-app2",
        &["datakey", "generate", "--key", "images/ct"],
        None,
    ));

    // An invalid policy is refused and the old one stays in force.
    std::fs::write(
        d.policy_path(),
        "[[principal]]\nname = \"x\"\nroles = [\"app\"]\n",
    )
    .unwrap();
    let out = d.cli(&["operator", "reload"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("previous policy stays in force"),
        "{err}"
    );
    ok(&d.cli_as(
        "kwtest-app2",
        &["datakey", "generate", "--key", "images/ct"],
        None,
    ));
    // Only admins reload.
    denied(
        &d.cli_as("kwtest-app2", &["operator", "reload"], None),
        "needs the admin role",
    );

    // A valid policy without the imaging app takes effect at once.
    std::fs::write(d.policy_path(), policy("")).unwrap();
    ok(&d.cli(&["operator", "reload"], None));
    denied(
        &d.cli_as(
            "kwtest-app2",
            &["datakey", "generate", "--key", "images/ct"],
            None,
        ),
        "uid",
    );
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"policy_reload\"") && log.contains("\"outcome\":\"refused\""));
}

/// The unit's `ExecReload=`: `keywarden reload` signals the daemon and
/// waits for its answer, failing (so `systemctl reload` fails) when the new
/// policy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_signal_reports_a_refused_policy() {
    users();
    let d = Daemon::builder().policy(&policy(IMAGING)).start().await;
    let mut c = d.client().await;
    create_key(&mut c, "images/ct").await;
    let pid = d.serve_pid().unwrap().to_string();
    let state = d.dir.join("state");
    let reload = || {
        run_bin(
            &[
                "reload",
                "--pid",
                &pid,
                "--state-dir",
                state.to_str().unwrap(),
                "--timeout",
                "20s",
            ],
            None,
            None,
        )
    };
    let out = reload();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "policy reloaded\n");

    std::fs::write(
        d.policy_path(),
        "[[principal]]\nname = \"x\"\nroles = [\"app\"]\n",
    )
    .unwrap();
    let out = reload();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the new policy") && err.contains("previous one stays in force"),
        "{err}"
    );
    // The daemon still serves, under the previous policy.
    ok(&d.cli_as(
        "kwtest-app2",
        &["datakey", "generate", "--key", "images/ct"],
        None,
    ));
}

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
    let out = d.cli(
        &[
            "audit",
            "verify",
            "--dir",
            &dir.display().to_string(),
            "--output",
            "json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let verify = |text: &str| -> (bool, String) {
        let f = dir.join("tampered.log");
        std::fs::write(&f, text).unwrap();
        let out = d.cli(
            &[
                "audit",
                "verify",
                &f.display().to_string(),
                "--public-key",
                &dir.join("audit-signing.pub").display().to_string(),
            ],
            None,
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
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
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
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
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
    let mut tail = std::process::Command::new(BIN)
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
        .stdout(std::process::Stdio::piped())
        .spawn()
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
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
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
    let _ = tail.kill();
    let _ = tail.wait();
}

/// Status lists keys that need attention (here: a version past its
/// rotate-after count) to admins and auditors, and to nobody else: an app
/// may not enumerate the key table through Status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_key_attention_only_to_roles_that_list_keys() {
    users();
    let d = Daemon::builder()
        .policy(&policy(""))
        .args(&["--rotate-after-encryptions", "1"])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    ok(&d.cli_as(
        "kwtest-app1",
        &[
            "datakey",
            "generate",
            "--key",
            "patients",
            "--context",
            "tenant=t",
        ],
        None,
    ));
    let status_of = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&ok(&out).into_bytes()).unwrap()
    };
    let admin = status_of(d.cli(&["--output", "json", "status"], None));
    let items = admin["key_attention"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{admin}");
    assert_eq!(items[0]["key"], "patients");
    assert_eq!(items[0]["reason"], "encryption_limit");
    let text = String::from_utf8(ok(&d.cli(&["status"], None)).into_bytes()).unwrap();
    assert!(
        text.starts_with("NEEDS ATTENTION") && text.contains("key patients version 1"),
        "{text}"
    );
    let app = status_of(d.cli_as("kwtest-app1", &["--output", "json", "status"], None));
    assert_eq!(app["key_attention"], serde_json::json!([]), "{app}");
    assert!(!app.to_string().contains("patients"), "{app}");
}
