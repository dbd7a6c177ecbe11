//! Loses nothing and keeps working: SIGKILL at random points during
//! lifecycle work, socket abuse, and concurrent admin changes under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

struct Issued {
    key: String,
    blob: Vec<u8>,
    plaintext: Vec<u8>,
}

/// One round of random work (drawn from `rng`) until the daemon is killed.
async fn workload(
    socket: std::path::PathBuf,
    round: usize,
    mut rng: TestRng,
    issued: Arc<Mutex<Vec<Issued>>>,
) {
    // The daemon was just (re)started and waited for: a workload that
    // cannot connect would check nothing, so it fails the test.
    let mut c = keywarden_client::Client::connect(&socket)
        .await
        .expect("the crash workload could not connect to the restarted daemon");
    let keys = ["crash-a", "crash-b", "crash-c"];
    for step in 0..10_000usize {
        let k = keys[rng.below(3) as usize];
        let r = rng.below(10);
        let res: Result<(), tonic::Status> = async {
            match r {
                0 => {
                    let name = format!("crash-r{round}-{step}");
                    c.keys
                        .create_key(proto::CreateKeyRequest {
                            name,
                            description: String::new(),
                            rotation_period_secs: 0,
                            kind: String::new(),
                        })
                        .await?;
                }
                1 => {
                    c.keys.rotate_key(name_req(k)).await?;
                }
                2..=5 => {
                    let g = c
                        .datakeys
                        .generate_data_key(proto::GenerateDataKeyRequest {
                            key: k.into(),
                            encryption_context: ctx(&[("r", "x")]),
                        })
                        .await?
                        .into_inner();
                    issued.lock().unwrap().push(Issued {
                        key: k.into(),
                        blob: g.ciphertext_blob,
                        plaintext: g.plaintext,
                    });
                }
                6 => {
                    let blob = issued
                        .lock()
                        .unwrap()
                        .last()
                        .map(|i| (i.key.clone(), i.blob.clone(), i.plaintext.clone()));
                    if let Some((key, blob, pt)) = blob {
                        let r = c
                            .datakeys
                            .re_encrypt(proto::ReEncryptRequest {
                                ciphertext_blob: blob,
                                encryption_context: ctx(&[("r", "x")]),
                                destination_key: String::new(),
                                destination_encryption_context: Default::default(),
                                replace_context: false,
                            })
                            .await?
                            .into_inner();
                        issued.lock().unwrap().push(Issued {
                            key,
                            blob: r.ciphertext_blob,
                            plaintext: pt,
                        });
                    }
                }
                7 => {
                    c.keys
                        .place_hold(proto::PlaceHoldRequest {
                            name: k.into(),
                            reason: "crash test hold".into(),
                            hold_id: format!("h{round}"),
                        })
                        .await?;
                }
                8 => {
                    c.keys
                        .release_hold(proto::ReleaseHoldRequest {
                            name: k.into(),
                            hold_id: format!("h{round}"),
                        })
                        .await?;
                }
                _ => {
                    // Destroy only the throwaway keys, never the three the
                    // test follows (they must always decrypt).
                    let name = format!("crash-r{round}-{}", step.saturating_sub(1));
                    c.keys
                        .schedule_destroy(proto::ScheduleDestroyRequest {
                            name,
                            after_secs: 1,
                        })
                        .await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(s) = res {
            if matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) {
                return; // the daemon died
            }
        }
    }
}

/// KEYWARDEN_CRASH_ROUNDS kills in all (50 unless set), split between two
/// tests on two daemons so that a parallel runner runs them side by side.
fn crash_rounds_each() -> usize {
    let total: usize = std::env::var("KEYWARDEN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    total.div_ceil(2).max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing() {
    let seed = test_seed("sigkill_at_random_points_loses_nothing");
    sigkill_rounds(crash_rounds_each(), seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_on_a_second_daemon() {
    let seed = test_seed("sigkill_at_random_points_loses_nothing_on_a_second_daemon");
    sigkill_rounds(crash_rounds_each(), seed).await;
}

/// `rounds` kills, at points drawn from `seed` (each round's kill delay
/// and workload from a generator of its own, so a round draws the same
/// whatever the rounds before it did).
async fn sigkill_rounds(rounds: usize, seed: u64) {
    let mut d = Daemon::builder()
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
    let mut c = d.client().await;
    for k in ["crash-a", "crash-b", "crash-c"] {
        create_key(&mut c, k).await;
    }
    drop(c);
    let issued = Arc::new(Mutex::new(Vec::<Issued>::new()));
    let mut repaired_total = 0;
    for round in 0..rounds {
        let mut rng = TestRng::derived(seed, round as u64);
        // The kill point: 20-320 ms into the round.
        let delay = 20 + rng.below(300);
        let w = tokio::spawn(workload(d.socket(), round, rng, issued.clone()));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let pid = d.serve_pid().expect("serve pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = w.await;
        d.restart().await;
        let mut c = d.client().await;
        // Every data key issued before the kill still decrypts.
        let list: Vec<(String, Vec<u8>, Vec<u8>)> = issued
            .lock()
            .unwrap()
            .iter()
            .map(|i| (i.key.clone(), i.blob.clone(), i.plaintext.clone()))
            .collect();
        for (key, blob, pt) in &list {
            let r = decrypt(&mut c, blob, &[("r", "x")]).await;
            match r {
                Ok(back) => assert_eq!(
                    &back.plaintext, pt,
                    "round {round}: key {key} gave other bytes"
                ),
                Err(s) => panic!(
                    "round {round}: a data key under {key} no longer decrypts: {s:?}\n{}",
                    d.log()
                ),
            }
        }
        // Registry and token agree (orphans of interrupted creates repaired).
        let s = status(&mut c).await;
        let drift = s.drift.unwrap();
        assert!(
            drift.missing_on_token.is_empty(),
            "round {round}: {drift:?}"
        );
        assert!(
            drift.orphaned_on_token.is_empty(),
            "round {round}: {drift:?}"
        );
        assert!(
            s.registry_tampering.is_empty(),
            "round {round}: {:?}",
            s.registry_tampering
        );
        repaired_total += drift.repaired.len();
        // The audit chain verifies (the tail after the kill is unsigned).
        let v = d.verify_audit(&["--allow-unsigned-tail"]);
        assert!(v.ok, "round {round} (seed {seed}): {}", v.stderr);
        // Release holds so later rounds can schedule destructions again.
        for k in ["crash-a", "crash-b", "crash-c"] {
            let m = describe(&mut c, k).await;
            for h in m.holds.iter().filter(|h| h.released_at == 0) {
                let _ = c
                    .keys
                    .release_hold(proto::ReleaseHoldRequest {
                        name: k.into(),
                        hold_id: h.id.clone(),
                    })
                    .await;
            }
        }
    }
    let checked = issued.lock().unwrap().len();
    // The kills come 20-320 ms into each round: over the rounds, data keys
    // must have been issued and checked, or the test proved nothing.
    assert!(
        checked >= rounds,
        "only {checked} data keys were issued over {rounds} rounds: the workload did not run"
    );
    eprintln!(
        "crash test: {rounds} kills, {checked} data keys checked after every restart, {repaired_total} orphans repaired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_abuse_does_not_hurt_good_clients() {
    use std::io::Write;
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let sock = d.socket();
    // 10,000 connections opened and dropped; every tenth writes garbage.
    for i in 0..10_000 {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        if i % 10 == 0 {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage");
        }
    }
    // 50 clients that stall mid-request (half an HTTP/2 preface).
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
        stalled.push(s);
    }
    // Good clients are still served, promptly.
    let t0 = Instant::now();
    for _ in 0..20 {
        let g = generate(&mut c, "k", &[]).await;
        assert!(decrypt(&mut c, &g.ciphertext_blob, &[]).await.is_ok());
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Requests with every field missing get clear errors.
    let r = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest::default())
        .await;
    assert_status(r, Code::InvalidArgument, "key: must not be empty");
    let r = c.datakeys.decrypt(proto::DecryptRequest::default()).await;
    assert_status(r, Code::InvalidArgument, "ciphertext_blob: is empty");
    let r = c
        .datakeys
        .re_encrypt(proto::ReEncryptRequest::default())
        .await;
    assert_status(r, Code::InvalidArgument, "ciphertext_blob: is empty");
    let r = c.keys.create_key(proto::CreateKeyRequest::default()).await;
    assert_status(r, Code::InvalidArgument, "name: must not be empty");
    let r = c.keys.update_key(proto::UpdateKeyRequest::default()).await;
    assert_status(r, Code::InvalidArgument, "name: must not be empty");
    let r = c.keys.place_hold(proto::PlaceHoldRequest::default()).await;
    assert_status(r, Code::InvalidArgument, "name: must not be empty");
    let r = c
        .keys
        .approve_destroy(proto::ApproveDestroyRequest::default())
        .await;
    assert_status(r, Code::InvalidArgument, "name: must not be empty");
    let r = c.operator.unseal(proto::UnsealRequest::default()).await;
    assert_status(r, Code::FailedPrecondition, "already unsealed");
    // An empty Init on an initialised daemon: the state is what is wrong,
    // not the (irrelevant) empty PIN fields.
    let r = c.operator.init(proto::InitRequest::default()).await;
    assert_status(r, Code::FailedPrecondition, "already initialised");
    let r = c
        .keys
        .break_glass(proto::BreakGlassRequest::default())
        .await;
    assert!(r.is_err());
    // Memory stayed bounded.
    let pid = d.serve_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("abuse: 10000 connections, 50 stalled clients; daemon peak RSS {hwm} KiB");
    assert!(hwm < 256 * 1024, "peak RSS {hwm} KiB");
    drop(stalled);
    generate(&mut c, "k", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_while_admins_rotate_disable_and_enable() {
    let d = Daemon::builder().start().await;
    let mut admin = d.client().await;
    create_key(&mut admin, "k").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut c = d.client().await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u32, 0u32);
            let mut mine: Vec<(Vec<u8>, Vec<u8>, u32, String)> = Vec::new();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                if i % 2 == 1 || mine.is_empty() {
                    let tag = format!("{t}-{i}");
                    match c
                        .datakeys
                        .generate_data_key(proto::GenerateDataKeyRequest {
                            key: "k".into(),
                            encryption_context: ctx(&[("tag", &tag)]),
                        })
                        .await
                    {
                        Ok(g) => {
                            let g = g.into_inner();
                            mine.push((g.ciphertext_blob, g.plaintext, g.key_version, tag));
                            ok += 1;
                        }
                        Err(s) => {
                            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                            assert!(s.message().contains("suspended"), "{s:?}");
                            refused += 1;
                        }
                    }
                } else {
                    let (blob, pt, version, tag) = mine[i % mine.len()].clone();
                    match c
                        .datakeys
                        .decrypt(proto::DecryptRequest {
                            ciphertext_blob: blob.clone(),
                            encryption_context: ctx(&[("tag", &tag)]),
                            key: String::new(),
                        })
                        .await
                    {
                        Ok(r) => {
                            let r = r.into_inner();
                            assert_eq!(r.plaintext, pt, "decrypted to other bytes");
                            assert_eq!(r.key_version, version, "decrypted under another version");
                        }
                        Err(s) => {
                            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                            assert!(s.message().contains("suspended"), "{s:?}");
                            refused += 1;
                        }
                    }
                    // The wrong context never decrypts, whatever the state.
                    let wrong = c
                        .datakeys
                        .decrypt(proto::DecryptRequest {
                            ciphertext_blob: blob,
                            encryption_context: ctx(&[("tag", "other")]),
                            key: String::new(),
                        })
                        .await;
                    let s = wrong.err().expect("decrypted with the wrong context");
                    assert!(
                        matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition),
                        "{s:?}"
                    );
                }
            }
            (ok, refused, mine.len())
        }));
    }
    // The pauses pace the admin (the clients run against each state for a
    // moment); nothing waits for a state here.
    for _ in 0..10 {
        admin.keys.rotate_key(name_req("k")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        admin.keys.disable_key(name_req("k")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        admin.keys.enable_key(name_req("k")).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut oks, mut refusals) = (0, 0);
    for t in tasks {
        let (ok, refused, _) = t.await.unwrap();
        oks += ok;
        refusals += refused;
    }
    assert!(oks > 0);
    assert_eq!(describe(&mut admin, "k").await.current_version, 11);
    eprintln!(
        "concurrency: {oks} data keys, {refusals} calls refused while disabled, 10 rotations"
    );
}
