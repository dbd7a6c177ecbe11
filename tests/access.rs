//! Identities, the policy and the audit log, end to end: the daemon runs as
//! root, clients as other Unix users (setpriv), over the real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

/// The audit log's tests, on the same policy and users.
#[path = "access/audit.rs"]
mod audit;

use common::*;
use keywarden::proto;
use std::time::Duration;
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
    let s = status(&mut c).await;
    assert_eq!(s.break_glass.len(), 1);
    assert_eq!(s.break_glass[0].key, "patients");
    assert!(s.break_glass[0].reason.contains("court"));
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("BREAK-GLASS ACCESS GRANTED"));
    assert!(log
        .lines()
        .any(|l| l.contains("\"break_glass\":true") && l.contains("\"op\":\"GenerateDataKey\"")));
    // The grant ends 2 s after it was made: until Status lists it no more.
    wait_until(
        "the 2 s break-glass grant to expire (Status lists none)",
        Duration::from_secs(20),
        async || status(&mut c).await.break_glass.is_empty(),
    )
    .await;
    let r = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "patients".into(),
            encryption_context: ctx(&[("tenant", "t")]),
        })
        .await;
    assert_status(r, Code::PermissionDenied, "needs the app role");
    assert!(status(&mut c).await.break_glass.is_empty());
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
