//! Regression tests for the findings of the adversarial review: each
//! reproduces an attack against the real daemon on a real token and checks
//! that it is now refused, detected or bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use keywarden::proto;
use tonic::Code;

/// A second daemon on the same configuration writes nothing (the audit chain
/// stays whole) and names the process that holds the lock.
#[tokio::test]
async fn a_second_daemon_writes_nothing_and_names_the_holder() {
    let mut d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let log = d.audit_dir().join("audit.log");
    let before = std::fs::read(&log).unwrap();
    let (var, conf) = d.token_conf();
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--dev")
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
    let v = d.verify_audit(&["--output", "json"]);
    assert!(v.ok, "audit verify failed: {}", v.json());
}

/// `keywarden serve` on the dev daemon's configuration, without dev mode's
/// automatic init (to look at a daemon that must not be initialised),
/// once it answers.
async fn start_serve(d: &Daemon) -> ChildGuard {
    let (var, conf) = d.token_conf();
    let log = d.dir.join("serve.log");
    let child = ChildGuard::spawn(
        std::process::Command::new(BIN)
            .arg("serve")
            .arg("--dev")
            .arg("--config")
            .arg(d.dir.join("keywarden.toml"))
            .env(var, conf)
            .current_dir(&d.dir)
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_for(
        "serve to answer Status",
        Duration::from_secs(30),
        async || {
            let serve_log = || Err(std::fs::read_to_string(&log).unwrap_or_default());
            let Ok(mut c) = keywarden_client::Client::connect(&d.socket()).await else {
                return serve_log();
            };
            match c.operator.status(proto::StatusRequest {}).await {
                Ok(_) => Ok(()),
                Err(_) => serve_log(),
            }
        },
    )
    .await;
    child
}

fn acknowledge_as(d: &Daemon, user: &str) -> std::process::Output {
    ensure_user(user);
    d.cli_as(
        user,
        &[
            "operator",
            "acknowledge-tampering",
            "--reason",
            "restored from backup on purpose (drill)",
        ],
        None,
    )
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
    let mut d = Daemon::builder().start().await;
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
            accept_restore_window: false,
        })
        .await
        .unwrap();
    d.wait_phase("unsealed").await;
    let t = tampering(&d).await;
    assert!(
        t.iter()
            .any(|l| l.contains("generation counter is missing")),
        "{t:?}"
    );
    // The disabled key must not come back to life.
    assert_status(gdk(&mut c, "patients").await, Code::DataLoss, "registry");
    // A restart does not launder it: the counter is not recreated.
    drop(c);
    d.restart().await;
    let mut c = d.client().await;
    assert_status(gdk(&mut c, "patients").await, Code::DataLoss, "registry");
    // The explicit, audited way back. With the counter gone nothing off
    // the disk vouches for the log, so it takes two admins; the disable
    // made after the copy is in the audit log's ledger, and accepting the
    // old registry keeps it.
    let out = acknowledge(&d);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 of 2 admins"), "{said}");
    assert_status(gdk(&mut c, "patients").await, Code::DataLoss, "registry");
    let out = acknowledge_as(&d, "kwtest-admin");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Accepted"), "{said}");
    assert!(said.contains("patients: active -> suspended"), "{said}");
    assert!(tampering(&d).await.is_empty());
    assert_status(gdk(&mut c, "patients").await, Code::FailedPrecondition, "");
    drop(c);
    d.restart().await;
    assert!(
        tampering(&d).await.is_empty(),
        "the acceptance did not last"
    );
    d.stop();
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("\"tampering_acknowledged\""), "not audited");
    let v = d.verify_audit(&["--output", "json"]);
    assert!(v.ok, "{}", v.json());
}

/// Finding 1, beyond the counter: registry and token copied back together
/// (the counter agrees with the registry), caught by the audit log, which
/// recorded a later generation.
#[tokio::test]
async fn a_consistent_rollback_of_registry_and_token_is_caught_by_the_audit_log() {
    let mut d = Daemon::builder().start().await;
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
        t.iter().any(|l| l.contains("the audit log has recorded")),
        "{t:?}"
    );
    let mut c = d.client().await;
    assert_status(gdk(&mut c, "scans").await, Code::DataLoss, "registry");
}

/// Finding 10: a deleted audit log started a new chain silently. Now the
/// registry's history without a log is reported until acknowledged.
#[tokio::test]
async fn a_deleted_audit_log_is_reported_until_acknowledged() {
    let mut d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    drop(c);
    d.stop();
    std::fs::remove_dir_all(d.audit_dir()).unwrap();
    d.restart().await;
    let t = tampering(&d).await;
    assert!(
        t.iter().any(|l| l.contains("audit log holds no record")),
        "{t:?}"
    );
    let mut c = d.client().await;
    assert_status(gdk(&mut c, "k").await, Code::DataLoss, "audit log");
    // A new log vouches for nothing that came before it: two admins.
    let out = acknowledge(&d);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 2 admins"));
    assert_status(gdk(&mut c, "k").await, Code::DataLoss, "audit log");
    let out = acknowledge_as(&d, "kwtest-admin");
    assert!(out.status.success(), "{out:?}");
    gdk(&mut c, "k").await.unwrap();
}

/// Finding 9: seal.json edited (pending_init) or deleted.
#[tokio::test]
async fn an_edited_or_deleted_seal_file_is_reported_as_tampering() {
    let mut d = Daemon::builder().start().await;
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
            accept_restore_window: false,
        })
        .await;
    assert_status(r, Code::DataLoss, "seal.json does not verify");
    assert_eq!(d.phase().await, "sealed");
    drop(c);
    d.stop();
    // Deleted: not "uninitialized", and init is refused before the token
    // is touched.
    std::fs::remove_file(&path).unwrap();
    let serve = start_serve(&d).await;
    let t = tampering(&d).await;
    assert!(
        t.iter().any(|l| l.contains("seal.json is missing")),
        "{t:?}"
    );
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
    assert!(
        !out.status.success() && err.contains("seal.json is missing"),
        "{err}"
    );
    drop(serve);
    // Restored from backup: unseals as before.
    std::fs::write(&path, &original).unwrap();
    d.restart().await;
    let mut c = d.client().await;
    gdk(&mut c, "k").await.unwrap();
}

fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Finding 2: a caller in no principal sending oversized contexts and
/// break-glass requests. Refused before any work; the log grows by a bounded
/// line per call; the daemon's memory stays under 128 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_from_a_caller_with_no_role_are_bounded() {
    // The test runs as root; the policy names only someone else.
    ensure_user("kwtest-app1");
    let d = Daemon::builder().policy("[[principal]]\nname = \"ehr\"\nusers = [\"kwtest-app1\"]\nroles = [\"app\"]\nkeys = [\"*\"]\n\n[[principal]]\nname = \"ops\"\nusers = [\"root\"]\nroles = [\"admin\", \"custodian\"]\n").start()
    .await;
    let pid = d.serve_pid().unwrap();
    let log = d.audit_dir().join("audit.log");
    let before = std::fs::metadata(&log).unwrap().len();
    // About the largest context the transport still decodes (256 KiB).
    let pairs: std::collections::HashMap<String, String> = (0..25_000)
        .map(|i| (format!("{i:x}"), String::new()))
        .collect();
    let calls = 16 * 4;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = d.client().await;
        let pairs = pairs.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let r = c
                    .datakeys
                    .generate_data_key(proto::GenerateDataKeyRequest {
                        key: "k".into(),
                        encryption_context: pairs.clone(),
                    })
                    .await;
                assert_eq!(
                    r.err().expect("the call must fail").code(),
                    Code::PermissionDenied
                );
                let r = c
                    .keys
                    .break_glass(proto::BreakGlassRequest {
                        name: "n".repeat(100_000),
                        reason: "r".repeat(100_000),
                        duration_secs: 60,
                    })
                    .await;
                let s = r.unwrap_err();
                assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
                assert!(
                    s.message().len() < 200,
                    "echoed: {} bytes",
                    s.message().len()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grown = std::fs::metadata(&log).unwrap().len() - before;
    let per_call = grown / (2 * calls);
    assert!(
        per_call < 2048,
        "the log grew {grown} bytes, {per_call} per refused call"
    );
    let hwm = vm_hwm_kib(pid);
    assert!(hwm < 128 * 1024, "peak RSS {hwm} KiB");
    eprintln!("log growth {per_call} bytes per refused call; daemon peak RSS {hwm} KiB");
}

/// Finding 3: 200 connections that send nothing, from one uid, leave
/// another uid served within a second; they are counted and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_from_one_uid_does_not_lock_out_another() {
    ensure_user("kwtest-app2");
    let d = Daemon::builder().start().await;
    let sock = d.socket().display().to_string();
    let script = format!(
        "import socket,time\nss=[]\nfor _ in range(200):\n  s=socket.socket(socket.AF_UNIX)\n  s.connect({sock:?})\n  ss.append(s)\nprint('open',flush=True)\ntime.sleep(60)\n"
    );
    let mut flood = ChildGuard::spawn(
        std::process::Command::new("setpriv")
            .args([
                "--reuid=kwtest-app2",
                "--regid=kwtest-app2",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                &script,
            ])
            .stdout(std::process::Stdio::piped()),
    )
    .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(flood.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "open");
    }
    let started = std::time::Instant::now();
    let mut c = d.client().await;
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "served after {took:?}");
    assert!(
        s.connections_refused >= 200 - 64,
        "{} refused",
        s.connections_refused
    );
    drop(flood);
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("\"connection_refused\""), "not audited");
}

/// What a hostile client sends as a Decrypt request: field 3 (the key
/// name, a string) holding bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct NotUtf8 {
    #[prost(bytes = "vec", tag = "3")]
    key: Vec<u8>,
}

/// Finding 8: bytes that are not the message are INVALID_ARGUMENT (tonic
/// said INTERNAL) and audited.
#[tokio::test]
async fn malformed_protobuf_is_invalid_argument_and_audited() {
    let d = Daemon::builder().start().await;
    let ch = keywarden_client::channel(&d.socket()).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<NotUtf8, proto::DecryptResponse> = Default::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/keywarden.v1.DataKeyService/Decrypt",
    );
    let r = grpc
        .unary(
            tonic::Request::new(NotUtf8 {
                key: vec![0xff, 0xfe],
            }),
            path,
            codec,
        )
        .await;
    let s = r.err().expect("the call must fail");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message().contains("does not decode as DecryptRequest"),
        "{}",
        s.message()
    );
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("\"malformed_request\""), "not audited");
}

/// Findings 6 and 7, and the share rate: control characters in a hold
/// reason are refused; a world-writable policy is refused at reload; a
/// flood of forged shares is cut off.
#[tokio::test]
async fn control_characters_writable_policy_and_share_floods_are_refused() {
    let d = Daemon::builder().policy("[[principal]]\nname = \"ops\"\nusers = [\"root\"]\nroles = [\"admin\", \"custodian\", \"auditor\", \"app\"]\nkeys = [\"*\"]\n").start()
    .await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let r = c
        .keys
        .place_hold(proto::PlaceHoldRequest {
            name: "k".into(),
            reason: "\x1b]0;pwned\x07\x1b[2J".into(),
            hold_id: String::new(),
        })
        .await;
    assert_status(
        r,
        Code::InvalidArgument,
        "reason: contains the control character",
    );
    std::fs::set_permissions(
        d.policy_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let r = c
        .operator
        .reload_policy(proto::ReloadPolicyRequest {})
        .await;
    assert_status(r, Code::InvalidArgument, "writable by every user");
    let mut refused = 0;
    for _ in 0..40 {
        let r = c
            .operator
            .unseal(proto::UnsealRequest {
                share: "KWS1-forged".into(),
                reset: false,
                accept_restore_window: false,
            })
            .await;
        if r.is_err_and(|s| s.code() == Code::ResourceExhausted) {
            refused += 1;
        }
    }
    // 30 a minute per uid (dev mode's own unseal was one of them).
    assert!((10..=11).contains(&refused), "{refused} refused");
}

/// Finding 4: SIGKILL at random points across a destroy-now of a key with
/// 30 versions. After each restart the key is never active: it is destroyed,
/// or its destruction is finished by the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_destroy_now_never_leaves_the_key_usable() {
    let mut d = Daemon::builder()
        .args(&["--destroy-approvals", "1", "--tick", "1s"])
        .start()
        .await;
    for round in 0..4u64 {
        let name = format!("k{round}");
        let mut c = d.client().await;
        create_key(&mut c, &name).await;
        for _ in 0..29 {
            c.keys.rotate_key(name_req(&name)).await.unwrap();
        }
        let blob = generate(&mut c, &name, &[]).await.ciphertext_blob;
        let pid = d.serve_pid().unwrap();
        let delay = Duration::from_millis(5 + (round * 37) % 60);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let _ = c.keys.destroy_now(name_req(&name)).await;
        killer.await.unwrap();
        drop(c);
        d.restart().await;
        let mut c = d.client().await;
        let r = c
            .datakeys
            .generate_data_key(proto::GenerateDataKeyRequest {
                key: name.clone(),
                encryption_context: Default::default(),
            })
            .await;
        let k = describe(&mut c, &name).await;
        if k.state == "active" {
            // The kill came before the approval was written: a clean state.
            assert!(r.is_ok());
            assert!(
                decrypt(&mut c, &blob, &[]).await.is_ok(),
                "active but half destroyed"
            );
            continue;
        }
        assert!(r.is_err(), "round {round}: {} served a data key", k.state);
        wait_key(&mut c, &name, 20, "destruction never finished", |k| {
            k.state == "destroyed"
        })
        .await;
        assert!(decrypt(&mut c, &blob, &[]).await.is_err());
    }
}
