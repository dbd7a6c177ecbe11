//! Running as a system service: the systemd protocol, socket activation,
//! graceful shutdown, privilege checks, hardening, `hsm check` and the
//! hardened unit's exposure score.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn drain(sock: &UnixDatagram, for_: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + for_;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_watchdog_and_unhealthy_stops_pings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let p = path.display().to_string();
    let d = Daemon::builder()
        .envs(&[("NOTIFY_SOCKET", &p), ("WATCHDOG_USEC", "200000")])
        .start()
        .await;
    let msgs = drain(&sock, Duration::from_millis(800));
    assert!(msgs.iter().any(|m| m.contains("READY=1")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("WATCHDOG=1")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("STATUS=")), "{msgs:?}");

    // Make the audit log unwritable: the next key operation fails, the
    // health check fails, the pings stop.
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let live = d.audit_dir().join("audit.log");
    std::fs::rename(&live, d.audit_dir().join("kept.bak")).unwrap();
    std::os::unix::fs::symlink("/dev/full", &live).unwrap();
    let r = c
        .datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: "k".into(),
            encryption_context: ctx(&[]),
        })
        .await;
    assert!(r.is_err());
    drain(&sock, Duration::from_millis(300));
    let msgs = drain(&sock, Duration::from_millis(1000));
    assert!(
        !msgs.iter().any(|m| m.contains("WATCHDOG=1")),
        "pings went on: {msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("unhealthy")), "{msgs:?}");
    // Healthy again: pings resume.
    std::fs::remove_file(&live).unwrap();
    generate(&mut c, "k", &[]).await;
    let msgs = drain(&sock, Duration::from_millis(800));
    assert!(msgs.iter().any(|m| m.contains("WATCHDOG=1")), "{msgs:?}");
}

/// STATUS= follows the seal at once, not at the next watchdog tick (a
/// minute apart here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_sent_when_the_seal_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let p = path.display().to_string();
    let d = Daemon::builder()
        .envs(&[("NOTIFY_SOCKET", &p), ("WATCHDOG_USEC", "120000000")])
        .start()
        .await;
    drain(&sock, Duration::from_millis(300));
    let out = d.cli(&["operator", "seal"], None);
    assert!(out.status.success(), "{out:?}");
    let msgs = drain(&sock, Duration::from_millis(1500));
    assert!(msgs.iter().any(|m| m.contains("STATUS=sealed")), "{msgs:?}");
    let mut c = d.client().await;
    d.unseal_dev(&mut c).await;
    let msgs = drain(&sock, Duration::from_millis(1500));
    assert!(
        msgs.iter().any(|m| m.contains("STATUS=unsealed")),
        "{msgs:?}"
    );
    assert!(!msgs.iter().any(|m| m.contains("WATCHDOG=1")), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_the_passed_descriptor() {
    // Provision a token and seal file with dev mode, then run the daemon
    // the way systemd would: on a socket it did not bind itself.
    let mut d = Daemon::builder().start().await;
    d.stop();
    let sa_sock = d.dir.join("activated.sock");
    let mut child = ChildGuard::spawn(
        std::process::Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(&sa_sock)
            .arg(format!(
                "--setenv=SOFTHSM2_CONF={}",
                d.softhsm_conf().display()
            ))
            .arg(BIN)
            .arg("serve")
            .arg("--dev")
            .arg("--config")
            .arg(d.dir.join("keywarden.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .expect("systemd-socket-activate (Debian package systemd)");
    wait_until(
        "systemd-socket-activate to bind its socket",
        Duration::from_secs(20),
        async || sa_sock.exists(),
    )
    .await;
    // The first connection starts the daemon on that descriptor.
    let s = wait_for(
        "the activated daemon to answer Status",
        Duration::from_secs(20),
        async || {
            let mut c = keywarden_client::Client::connect(&sa_sock)
                .await
                .map_err(|e| e.to_string())?;
            let s = c.operator.status(proto::StatusRequest {}).await;
            s.map(|s| s.into_inner()).map_err(|s| s.to_string())
        },
    )
    .await;
    assert_eq!(s.seal.unwrap().phase, "sealed");
    // The configured path was not bound: only the passed socket serves.
    assert!(!d.socket().exists());
    let mut c = keywarden_client::Client::connect(&sa_sock).await.unwrap();
    d.unseal_dev(&mut c).await;
    create_key(&mut c, "via-activation").await;
    child.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_calls_and_exits_zero() {
    let mut d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = d.client().await;
        let (stop, served) = (stop.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut other) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .datakeys
                    .generate_data_key(proto::GenerateDataKeyRequest {
                        key: "k".into(),
                        encryption_context: ctx(&[]),
                    })
                    .await;
                match r {
                    Ok(g) => {
                        assert_eq!(g.into_inner().plaintext.len(), 32);
                        ok += 1;
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // After shutdown begins: the connection goes away. A call
                    // that races the server's GOAWAY was never started on the
                    // server; tonic reports it as INTERNAL with the h2 reason.
                    Err(s) => {
                        let refused_by_goaway = s.code() == tonic::Code::Internal
                            && format!("{s:?}").contains("GoAway");
                        assert!(
                            refused_by_goaway
                                || matches!(
                                    s.code(),
                                    tonic::Code::Unavailable
                                        | tonic::Code::Cancelled
                                        | tonic::Code::Unknown
                                ),
                            "{s:?}"
                        );
                        other += 1;
                        break;
                    }
                }
            }
            (ok, other)
        }));
    }
    // Under load: the 8 clients have been served 40 data keys.
    wait_until(
        "the 8 clients to be served 40 data keys",
        Duration::from_secs(20),
        async || served.load(std::sync::atomic::Ordering::Relaxed) >= 40,
    )
    .await;
    let pid = d.serve_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let code = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(20)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total_ok = 0;
    for t in tasks {
        total_ok += t.await.unwrap().0;
    }
    assert!(total_ok > 0);
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(d.log().contains("SIGTERM: shutting down") && d.log().contains("stopped"));
    // The final checkpoint was written: the log verifies without an unsigned tail.
    d.verify_audit(&[]).assert_ok();
}

#[test]
fn root_without_the_override_is_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(&profile, keywarden::hsm::profile::SOFTHSM2_PROFILE).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nsocket = \"s.sock\"\nstate_dir = \"st\"\n[hsm]\nprofile = {profile:?}\ntoken_label = \"x\"\n[policy]\nfile = \"policy.toml\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to run as root"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_is_hardened_and_hsm_check_passes() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        s.hardening.iter().any(|h| h.starts_with("non-dumpable")),
        "{:?}",
        s.hardening
    );
    assert!(
        s.hardening.iter().any(|h| h == "RLIMIT_CORE 0"),
        "{:?}",
        s.hardening
    );
    // The kernel agrees: core dumps are off for the daemon process.
    let pid = d.serve_pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    // The daemon's own files are private (umask 077).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.dir.join("state").join("registry.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    // hsm check against the dev token.
    let pin_file = d.dir.join("check.pin");
    let so_pin_file = d.dir.join("check-so.pin");
    let share = d.dev_share.clone().unwrap();
    for (path, pin) in [
        (&pin_file, d.user_pin()),
        (&so_pin_file, d.derive_pin(&[&share], true)),
    ] {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, pin.as_bytes()).unwrap();
    }
    let out = std::process::Command::new(BIN)
        .args(["hsm", "check", "--profile"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-profiles/softhsm2.toml"))
        .args(["--token-label", "keywarden-dev", "--pin-file"])
        .arg(&pin_file)
        .arg("--so-pin-file")
        .arg(&so_pin_file)
        .env("SOFTHSM2_CONF", d.softhsm_conf())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "SO login and C_SetPIN",
        "mechanism CKM_AES_GCM",
        "key sensitive, never extractable",
        "session copy",
        "AES-GCM wrap and unwrap",
        "ECDSA P-256 audit signing",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(want) && l.contains("PASS")),
            "{want}: {text}"
        );
    }
    // A wrong PIN fails the check.
    std::fs::write(&pin_file, "wrong-pin").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["hsm", "check", "--profile"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-profiles/softhsm2.toml"))
        .args(["--token-label", "keywarden-dev", "--pin-file"])
        .arg(&pin_file)
        .env("SOFTHSM2_CONF", d.softhsm_conf())
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The check changed no PIN: both derived PINs still open the token.
    let so = d.derive_pin(&[&share], true);
    let user = d.pkcs11_tool(&["--list-objects"]);
    assert!(
        user.status.success(),
        "{}",
        String::from_utf8_lossy(&user.stderr)
    );
    let so_login = d.pkcs11_tool_with(
        &[
            "--session-rw",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            &so,
        ],
        &["--list-objects"],
    );
    assert!(
        so_login.status.success(),
        "{}",
        String::from_utf8_lossy(&so_login.stderr)
    );
}

#[test]
fn the_unit_scores_one_or_lower_and_verifies_its_syntax() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/systemd/keywarden.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(score <= 1.0, "exposure {score}: {text}");
}

/// Under systemd (stderr is the journal's stream, as `JOURNAL_STREAM`
/// says), the daemon's log goes to the journal natively: each field of an
/// event a journal field. A real `systemd-journald` runs here in a private
/// mount namespace (its own /run/systemd and /run/log on tmpfs, so the
/// host's journal is untouched), and `journalctl` reads what it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_journal_log_lines_carry_native_fields() {
    let mut d = Daemon::builder().start().await;
    d.stop();
    let out = d.dir.join("journal.json");
    let err = d.dir.join("serve.stderr");
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs /run/systemd 2>/dev/null || {{ mkdir -p /run/systemd; mount -t tmpfs tmpfs /run/systemd; }}
mkdir -p /run/log /run/systemd/journal
mount -t tmpfs tmpfs /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
/lib/systemd/systemd-journald >/dev/null 2>&1 &
J=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
exec 3>&2 2>{err:?}
export JOURNAL_STREAM=$(stat -L -c '%d:%i' /proc/self/fd/2)
SOFTHSM2_CONF={conf:?} {bin:?} serve --dev --config {config:?} &
S=$!
for i in $(seq 200); do [ -S {sock:?} ] && break; sleep 0.1; done
{bin:?} --socket {sock:?} status >/dev/null || true
kill $S; wait $S || true
sleep 0.5
journalctl -D /run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=keywarden >{out:?}
kill $J
"#,
        err = err.display().to_string(),
        conf = d.softhsm_conf().display().to_string(),
        bin = BIN,
        config = d.dir.join("keywarden.toml").display().to_string(),
        sock = d.socket().display().to_string(),
        out = out.display().to_string(),
    );
    let status = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .status()
        .expect("unshare (util-linux)");
    assert!(status.success(), "the journal script failed");
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started = entries
        .iter()
        .find(|e| e["MESSAGE"] == "started")
        .unwrap_or_else(|| panic!("no `started` entry in the journal: {entries:?}"));
    assert_eq!(started["KW_STATE"], "sealed", "{started}");
    assert_eq!(started["PRIORITY"], "6", "{started}");
    assert_eq!(started["KW_DEV_MODE"], "1", "{started}");
    assert!(
        entries
            .iter()
            .any(|e| e["KW_EVENT"] == "daemon_start" && e["TARGET"] == "keywarden::audit"),
        "{entries:?}"
    );
    // Nothing of it went to stderr as text.
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(!text.contains("started"), "{text}");
}
