//! Audit forwarding end to end: the real daemon sending its audit lines as
//! RFC 5424 syslog over TCP (octet counting) to a real `rsyslogd` (Debian's
//! package, started here on loopback with its own configuration and work
//! directory), rsyslog writing each message's MSG to a file, and
//! `keywarden audit verify` accepting that file: the SIEM's copy is the
//! log itself, hash chain and signatures included. Then the receiver goes
//! away: key operations go on, the loss is counted, and forwarding resumes
//! when it is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use keywarden::proto;

/// An rsyslogd in a temporary directory receiving on loopback TCP (or on
/// a Unix datagram socket of its own) and writing each message's MSG, one
/// per line, to `out`; stopped on drop.
struct Rsyslog {
    _child: ChildGuard,
    port: u16,
    out: PathBuf,
    /// `--audit-forward`'s argument for it.
    target: String,
}

impl Rsyslog {
    /// Starts one on `port` (0: any free port) writing to `dir/received.log`.
    fn start(dir: &Path, port: u16) -> Rsyslog {
        Self::start_on(dir, Some(port))
    }

    /// `None`: on a Unix datagram socket (imuxsock, RFC 5424 parsed, the
    /// settings AUDIT_FORWARDING.md gives).
    fn start_on(dir: &Path, port: Option<u16>) -> Rsyslog {
        let work = dir.join(format!("work-{port:?}"));
        std::fs::create_dir_all(&work).unwrap();
        let port_file = work.join("port");
        let out = dir.join("received.log");
        let conf = work.join("rsyslog.conf");
        let unix_socket = work.join("log.sock");
        let unix = port.is_none();
        let input = match port {
            Some(port) => format!(
                "module(load=\"imtcp\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" listenPortFileName={port_file:?} ruleset=\"keywarden\")\n",
                port_file = port_file.display().to_string(),
            ),
            None => format!(
                "module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
                 input(type=\"imuxsock\" Socket={sock:?} useSpecialParser=\"off\" parseHostname=\"on\" ruleset=\"keywarden\")\n",
                sock = unix_socket.display().to_string(),
            ),
        };
        // maxMessageSize: a ledger line holds a whole key record (rsyslog's
        // default of 8 KiB would cut long ones).
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory={work:?} maxMessageSize=\"256k\")\n\
                 template(name=\"msg\" type=\"string\" string=\"%msg%\\n\")\n\
                 template(name=\"sev\" type=\"string\" string=\"%syslogseverity% %msg%\\n\")\n\
                 ruleset(name=\"keywarden\") {{ action(type=\"omfile\" file={out:?} template=\"msg\")\n\
                 action(type=\"omfile\" file={sev:?} template=\"sev\") }}\n\
                 {input}",
                work = work.display().to_string(),
                out = out.display().to_string(),
                sev = dir.join("severity.log").display().to_string(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(work.join("rsyslogd.log")).unwrap();
        let child = ChildGuard::spawn(
            Command::new("rsyslogd")
                .args(["-n", "-f"])
                .arg(&conf)
                .arg("-i")
                .arg(work.join("rsyslogd.pid"))
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("rsyslogd (Debian package rsyslog) is installed: scripts/install-deps.sh --test");
        let port = wait_for_blocking("rsyslogd to listen", Duration::from_secs(30), || {
            // rsyslog writes the port file only for port 0; a fixed port is
            // up once it accepts a connection.
            let up = match port {
                None => unix_socket.exists().then_some(0),
                Some(0) => std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u16>().ok()),
                Some(p) => std::net::TcpStream::connect(("127.0.0.1", p))
                    .ok()
                    .map(|_| p),
            };
            up.ok_or_else(|| std::fs::read_to_string(work.join("rsyslogd.log")).unwrap_or_default())
        });
        let target = if unix {
            format!("unix://{}", unix_socket.display())
        } else {
            format!("tcp://127.0.0.1:{port}")
        };
        Rsyslog {
            _child: child,
            port,
            out,
            target,
        }
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `received` holds every line of the local log.
fn wait_for_copy(local: &Path, received: &Path) {
    let what = format!("{} to hold every line of the log", received.display());
    wait_for_blocking(&what, Duration::from_secs(30), || {
        let (got, want) = (lines(received).len(), lines(local).len());
        if got >= want {
            Ok(())
        } else {
            Err(format!("rsyslog received {got} of {want} lines"))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_the_log_unchanged_and_it_verifies() {
    receives_unchanged(Some(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_too() {
    receives_unchanged(None).await;
}

async fn receives_unchanged(port: Option<u16>) {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start_on(dir.path(), port);
    let d = Daemon::builder()
        .args(&["--audit-forward", &rs.target])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    let g = generate(&mut c, "patients", &[("patient", "123")]).await;
    decrypt(&mut c, &g.ciphertext_blob, &[("patient", "123")])
        .await
        .unwrap();
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[("patient", "124")])
        .await
        .is_err());
    // A signed checkpoint (the lines after it, of a live log, are not
    // signed yet: --allow-unsigned-tail, as for the local file).
    let seal = d.cli(&["operator", "seal"], None);
    assert!(seal.status.success(), "{seal:?}");

    let local = d.audit_dir().join("audit.log");
    wait_for_copy(&local, &rs.out);
    // Byte for byte the same lines: nothing added, escaped or reordered.
    assert_eq!(lines(&rs.out), lines(&local));
    let public_key = d.audit_dir().join("audit-signing.pub");
    let r = audit_verify(
        &[&rs.out],
        &[
            "--output",
            "json",
            "--public-key",
            public_key.to_str().unwrap(),
            "--allow-unsigned-tail",
        ],
    )
    .assert_ok()
    .json();
    assert_eq!(r["ok"], true);
    assert_eq!(r["first_seq"], 0, "the copy starts at the genesis line");
    assert!(r["checkpoints"].as_u64().unwrap() >= 1, "{r}");

    let before = lines(&local).len();
    let s = status(&mut c).await;
    let f = s.audit_forward.expect("Status shows the forwarder");
    assert_eq!(f.target, rs.target);
    assert!(f.connected);
    // Every line so far; the Status call's own line may or may not be.
    let sent = f.sent as usize;
    assert!(sent == before || sent == before + 1, "{sent} of {before}");
    assert_eq!(f.dropped, 0);
    let m = c
        .operator
        .metrics(proto::MetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .text;
    assert!(m.contains("keywarden_audit_forward_connected 1"), "{m}");
    let in_metrics: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("keywarden_audit_forward_sent_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sent counter in:\n{m}"));
    // The Status and Metrics calls' own lines may have gone meanwhile.
    assert!(
        (f.sent..=f.sent + 2).contains(&in_metrics),
        "{in_metrics} vs {}",
        f.sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_goes_away_never_blocks_key_operations() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path(), 0);
    let port = rs.port;
    let d = Daemon::builder()
        .args(&["--audit-forward", &format!("tcp://127.0.0.1:{port}")])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    wait_for_copy(&d.audit_dir().join("audit.log"), &rs.out);
    drop(rs);

    // The SIEM is gone: every request is still answered, promptly.
    let start = Instant::now();
    for i in 0..20 {
        generate(&mut c, "patients", &[("n", &i.to_string())]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    let f = wait_for(
        "the forwarder to notice the receiver is gone",
        Duration::from_secs(20),
        async || {
            let f = status(&mut c).await.audit_forward.unwrap();
            if !f.connected && f.errors > 0 {
                return Ok(f);
            }
            generate(&mut c, "patients", &[("n", "x")]).await;
            Err(format!("{f:?}"))
        },
    )
    .await;
    assert!(!f.last_error.is_empty(), "{f:?}");
    let text = d.cli(&["status"], None);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("NEEDS ATTENTION") && text.contains("audit forwarding to tcp://"),
        "{text}"
    );

    // Back on the same port: the lines queued meanwhile arrive, then new ones.
    std::fs::remove_file(dir.path().join("received.log")).ok();
    let rs = Rsyslog::start(dir.path(), port);
    generate(&mut c, "patients", &[("n", "after")]).await;
    wait_for(
        "forwarding to resume (the last local line received)",
        Duration::from_secs(30),
        async || {
            let got = lines(&rs.out);
            let last_local = lines(&d.audit_dir().join("audit.log")).pop().unwrap();
            if got.contains(&last_local) {
                Ok(())
            } else {
                Err(format!("{} lines received", got.len()))
            }
        },
    )
    .await;
    let f = status(&mut c).await.audit_forward.unwrap();
    assert!(f.connected, "{f:?}");
}

/// The severity rsyslog parsed from each forwarded line, by the line's
/// `event` (or `op`) and outcome: alert-class lines arrive at warning or
/// above, routine calls at informational.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_lines_reach_rsyslog_at_warning_or_above() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path(), 0);
    let d = Daemon::builder()
        .args(&["--audit-forward", &rs.target, "--destroy-approvals", "1"])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    let g = generate(&mut c, "patients", &[("patient", "123")]).await;
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[("patient", "124")])
        .await
        .is_err());
    let out = d.cli(&["key", "destroy-now", "patients"], None);
    assert!(out.status.success(), "{out:?}");
    // A failed ceremony step: sealed, then a share that is not one.
    let out = d.cli(&["operator", "seal"], None);
    assert!(out.status.success(), "{out:?}");
    let bad = c
        .operator
        .unseal(proto::UnsealRequest {
            share: "not-a-share".into(),
            reset: false,
            accept_restore_window: false,
        })
        .await;
    assert!(bad.is_err());
    wait_for_copy(&d.audit_dir().join("audit.log"), &rs.out);
    // The second file is written by a second action: waited for too.
    let sev = dir.path().join("severity.log");
    wait_for_copy(&d.audit_dir().join("audit.log"), &sev);
    let got = lines(&sev);
    let severity_of = |pred: &dyn Fn(&str) -> bool| -> Vec<u8> {
        got.iter()
            .filter(|l| pred(l))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let gdk =
        severity_of(&|l| l.contains("\"op\":\"GenerateDataKey\"") && l.contains("\"code\":\"OK\""));
    assert!(!gdk.is_empty() && gdk.iter().all(|s| *s == 6), "{gdk:?}");
    let refused = severity_of(&|l| l.contains("\"op\":\"Decrypt\""));
    assert!(
        !refused.is_empty() && refused.iter().all(|s| *s == 5),
        "{refused:?}"
    );
    let destroyed = severity_of(&|l| l.contains("\"event\":\"destroyed\""));
    assert!(
        !destroyed.is_empty() && destroyed.iter().all(|s| *s <= 4),
        "{destroyed:?}"
    );
    let ceremony = severity_of(&|l| {
        l.contains("\"event\":\"unseal_share\"") && l.contains("\"outcome\":\"refused\"")
    });
    assert!(
        !ceremony.is_empty() && ceremony.iter().all(|s| *s == 4),
        "{ceremony:?}\n{got:#?}"
    );
}
