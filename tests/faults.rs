//! HSM loss and recovery under load, through the project's PKCS#11
//! fault-injection shim (`testing/pkcs11-shim`), which forwards to a real
//! SoftHSM token and fails calls or drops sessions on command.
//!
//! Every call made while faults come and go either succeeds correctly (a
//! data key that decrypts to the same bytes) or fails with UNAVAILABLE;
//! the daemon serves again by itself, without a restart, within seconds of
//! each fault clearing; the watchdog keeps being fed and the systemd
//! status says the HSM is unreachable meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shim's cdylib, built by `cargo test --workspace` (or here).
fn shim_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let so = profile_dir.join("libkeywarden_pkcs11_shim.so");
    if !so.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "keywarden-pkcs11-shim"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "building the PKCS#11 shim failed");
    }
    assert!(so.exists(), "{} missing", so.display());
    so
}

/// The shim's control file: each command gets a new sequence number and is
/// written atomically (rename), since the shim reads it on every call.
struct Control {
    path: PathBuf,
    seq: u64,
}

/// Waits (bounded) until the daemon's log holds `needle`.
async fn wait_log(d: &Daemon, needle: &str) {
    let what = format!("the daemon to log {needle:?}");
    wait_until(&what, Duration::from_secs(30), async || {
        d.log().contains(needle)
    })
    .await
}

/// A dev daemon that reaches its token through the shim, and the shim's
/// control file (set to `pass`).
async fn start_through_shim(dir: &Path, extra_env: &[(&str, &str)]) -> (Daemon, Control) {
    let mut control = Control {
        path: dir.join("shim.ctl"),
        seq: 0,
    };
    control.set("pass");
    let shim = shim_path().display().to_string();
    let target = token_module();
    let ctl = control.path.display().to_string();
    let mut env = vec![
        ("KEYWARDEN_SHIM_TARGET", target.as_str()),
        ("KEYWARDEN_SHIM_CONTROL", ctl.as_str()),
    ];
    env.extend_from_slice(extra_env);
    let d = Daemon::builder()
        .args(&["--pkcs11-module", &shim])
        .envs(&env)
        .start()
        .await;
    (d, control)
}

impl Control {
    fn set(&mut self, cmd: &str) {
        self.seq += 1;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {cmd}\n", self.seq)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unavailable: AtomicU64,
    /// Anything else: must stay empty.
    wrong: Mutex<Vec<String>>,
}

fn note_error(t: &Tally, what: &str, s: &tonic::Status) {
    if s.code() == tonic::Code::Unavailable {
        t.unavailable.fetch_add(1, Ordering::Relaxed);
    } else {
        t.wrong
            .lock()
            .unwrap()
            .push(format!("{what}: {:?} {}", s.code(), s.message()));
    }
}

async fn load(
    d: &Daemon,
    n: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = d.client().await;
        let (stop, t) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = format!("t{i}");
            while !stop.load(Ordering::Relaxed) {
                let g = c
                    .datakeys
                    .generate_data_key(proto::GenerateDataKeyRequest {
                        key: "k".into(),
                        encryption_context: ctx(&[("tenant", &tenant)]),
                    })
                    .await;
                let g = match g {
                    Ok(g) => g.into_inner(),
                    Err(s) => {
                        note_error(&t, "generate", &s);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let r = c
                    .datakeys
                    .decrypt(proto::DecryptRequest {
                        ciphertext_blob: g.ciphertext_blob.clone(),
                        encryption_context: ctx(&[("tenant", &tenant)]),
                        key: "k".into(),
                    })
                    .await;
                match r {
                    Ok(r) => {
                        if r.into_inner().plaintext != g.plaintext {
                            t.wrong
                                .lock()
                                .unwrap()
                                .push("decrypt returned other bytes".into());
                        }
                        t.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => note_error(&t, "decrypt", &s),
                }
            }
        }));
    }
    tasks
}

/// Collects what the daemon tells systemd.
fn notify_listener(path: &Path) -> Arc<Mutex<Vec<String>>> {
    let sock = UnixDatagram::bind(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let msgs = Arc::new(Mutex::new(Vec::new()));
    let m = msgs.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                m.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
            if Arc::strong_count(&m) == 1 {
                return;
            }
        }
    });
    msgs
}

async fn hsm_health(c: &mut keywarden_client::Client) -> (String, String) {
    let s = status(c).await;
    (s.hsm_health, s.hsm_detail)
}

/// Waits until a data key round trip succeeds; returns how long it took.
async fn time_to_serve(c: &mut keywarden_client::Client, limit: Duration) -> Duration {
    let t0 = Instant::now();
    wait_for("serving after the fault cleared", limit, async || {
        let g = c
            .datakeys
            .generate_data_key(proto::GenerateDataKeyRequest {
                key: "k".into(),
                encryption_context: ctx(&[]),
            })
            .await;
        match g {
            Ok(_) => Ok(()),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                Err(s.message().to_string())
            }
        }
    })
    .await;
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_faults_under_load_fail_unavailable_and_recover_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let msgs = notify_listener(&notify);
    let n = notify.display().to_string();
    let (d, mut control) = start_through_shim(
        dir.path(),
        &[("NOTIFY_SOCKET", &n), ("WATCHDOG_USEC", "400000")],
    )
    .await;
    let pid_before = d.serve_pid().unwrap();
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    // Blobs made before any fault must decrypt after all of them.
    let mut before = Vec::new();
    for i in 0..20 {
        let context = ctx(&[("n", &i.to_string())]);
        let g = c
            .datakeys
            .generate_data_key(proto::GenerateDataKeyRequest {
                key: "k".into(),
                encryption_context: context.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        before.push((g.ciphertext_blob, g.plaintext, context));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = load(&d, 8, stop.clone(), tally.clone()).await;
    wait_until(
        "the load to be served",
        Duration::from_secs(20),
        async || tally.ok.load(Ordering::Relaxed) > 0,
    )
    .await;
    // What the daemon has said of losses so far: audited, and in watchdog
    // pings (which go on while the HSM is away).
    let losses = || d.log().matches("event=\"hsm_lost\"").count();
    let pings_while_lost = || {
        let m = msgs.lock().unwrap();
        m.iter()
            .filter(|s| s.contains("WATCHDOG=1") && s.contains("HSM unreachable"))
            .count()
    };

    // (shim command, what Status names while the fault lasts, or None for
    // a one-shot fault or one where the token itself still answers, so
    // that recovery succeeds and fails again in turn)
    let scenarios = [
        ("remove", Some("DeviceRemoved")),
        ("fail TOKEN_NOT_PRESENT", Some("TokenNotPresent")),
        ("fail DEVICE_ERROR C_Encrypt,C_Decrypt", None),
        ("drop", None),
        ("finalize", None),
    ];
    let mut report = Vec::new();
    for (cmd, shows) in scenarios {
        let lasting = !matches!(cmd, "drop" | "finalize");
        let ok_before = tally.ok.load(Ordering::Relaxed);
        let unavailable_before = tally.unavailable.load(Ordering::Relaxed);
        let (losses_before, pings_before) = (losses(), pings_while_lost());
        let armed = Instant::now();
        control.set(cmd);
        // The daemon goes through the fault: the load runs into it and the
        // loss is audited; a lasting fault lasts (until the test clears
        // it) until a watchdog ping also said the HSM is unreachable.
        wait_for(
            &format!("{cmd}: the daemon to go through the fault"),
            Duration::from_secs(20),
            async || {
                let refused = tally.unavailable.load(Ordering::Relaxed) - unavailable_before;
                let lost = losses() - losses_before;
                let pings = pings_while_lost() - pings_before;
                if refused > 0 && lost > 0 && (!lasting || pings > 0) {
                    Ok(())
                } else {
                    Err(format!(
                        "{refused} calls refused, {lost} losses audited, {pings} pings while lost"
                    ))
                }
            },
        )
        .await;
        if lasting {
            if let Some(class) = shows {
                // While the token is gone, Status says why.
                let what = format!("{cmd}: Status to report the HSM unavailable");
                let (health, detail) = wait_for(&what, Duration::from_secs(20), async || {
                    match hsm_health(&mut c).await {
                        (health, detail) if health == "unavailable" => Ok((health, detail)),
                        (health, detail) => Err(format!("{health}: {detail}")),
                    }
                })
                .await;
                assert_eq!(health, "unavailable", "{cmd}: {detail}");
                assert!(detail.contains(class), "{cmd}: {detail}");
            }
            control.set("pass");
        }
        let back = time_to_serve(&mut c, Duration::from_secs(15)).await;
        let (health, detail) = hsm_health(&mut c).await;
        assert_eq!(health, "ok", "{cmd}: {detail}");
        // Serve a while between faults: until the load is served again.
        let ok_back = tally.ok.load(Ordering::Relaxed);
        wait_until(
            &format!("{cmd}: the load to be served 8 times after recovery"),
            Duration::from_secs(20),
            async || tally.ok.load(Ordering::Relaxed) >= ok_back + 8,
        )
        .await;
        let refused = tally.unavailable.load(Ordering::Relaxed) - unavailable_before;
        assert!(refused > 0, "{cmd}: no call noticed the fault");
        assert!(
            tally.ok.load(Ordering::Relaxed) > ok_before,
            "{cmd}: nothing served after recovery"
        );
        report.push(format!(
            "{cmd}: {refused} calls UNAVAILABLE, serving again {} ms after the fault cleared ({} ms after it began)",
            back.as_millis(),
            armed.elapsed().as_millis()
        ));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    for line in &report {
        println!("{line}");
    }
    let wrong = tally.wrong.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "calls that were neither right nor UNAVAILABLE: {wrong:?}"
    );
    println!(
        "load: {} round trips correct, {} calls UNAVAILABLE, 0 other outcomes",
        tally.ok.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed)
    );

    // No restart: same process, still unsealed, and nothing was lost.
    assert_eq!(d.serve_pid(), Some(pid_before));
    assert_eq!(d.phase().await, "unsealed");
    for (blob, plaintext, context) in before {
        let r = c
            .datakeys
            .decrypt(proto::DecryptRequest {
                ciphertext_blob: blob,
                encryption_context: context,
                key: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.plaintext, plaintext);
    }
    let log = d.log();
    let lost = log.matches("event=\"hsm_lost\"").count();
    let recovered = log.matches("event=\"hsm_recovered\"").count();
    assert!(lost >= scenarios.len(), "hsm_lost audited {lost} times");
    assert_eq!(lost, recovered, "every loss ends in a recovery");

    // systemd heard about it, and the watchdog was fed throughout.
    let m = msgs.lock().unwrap().clone();
    assert!(
        m.iter().any(|s| s.contains("STATUS=HSM unreachable")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|s| s.contains("WATCHDOG=1") && s.contains("HSM unreachable")),
        "no watchdog ping while the HSM was lost: {m:?}"
    );

    // The audit chain, loss and recovery events included, verifies.
    // (The daemon still runs, so the newest entries await their checkpoint.)
    d.verify_audit(&["--allow-unsigned-tail"]).assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_while_the_hsm_is_lost_forgets_the_relogin_pin() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut control) = start_through_shim(dir.path(), &[]).await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    control.set("remove");
    let g = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "k".into(),
            encryption_context: ctx(&[]),
        })
        .await
        .err()
        .expect("the call must fail");
    assert_eq!(g.code(), tonic::Code::Unavailable, "{g:?}");
    // The recovery retries until it re-initialises the module, which fails
    // while the token is away and leaves the module finalised.
    wait_log(&d, "re-initialising the PKCS#11 module").await;
    // The custodians seal while the token is away.
    c.operator.seal(proto::SealRequest {}).await.unwrap();
    control.set("pass");
    // The token is back, but nothing logs in by itself: still sealed.
    assert_eq!(d.phase().await, "sealed");
    let g = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "k".into(),
            encryption_context: ctx(&[]),
        })
        .await
        .err()
        .expect("the call must fail");
    assert_eq!(g.code(), tonic::Code::FailedPrecondition, "{g:?}");
    // The share opens it again at once, whatever the recovery left behind
    // (it used to fail with CryptokiNotInitialized and lose the share).
    d.unseal_dev(&mut c).await;
    d.wait_phase("unsealed").await;
    assert!(!d.log().contains("HSM back"), "{}", d.log());
    assert!(time_to_serve(&mut c, Duration::from_secs(10)).await < Duration::from_secs(10));
}
