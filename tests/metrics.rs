//! Metrics end to end: the real daemon serving `/metrics` on loopback, a
//! real Prometheus server (Debian's package, started here on loopback with
//! its own configuration and data directory) scraping it, `promtool`
//! checking the exposition and the shipped alert rules, and the shipped
//! Grafana dashboard naming only series the daemon exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use keywarden::proto;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET on loopback: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    output_with_stdin(
        Command::new("promtool").args(args),
        stdin.unwrap_or_default().as_bytes(),
    )
    .expect("promtool (Debian package prometheus) is installed: scripts/install-deps.sh --test")
}

/// A Prometheus server in a temporary directory, stopped on drop (the
/// process before its directory).
struct Prometheus {
    _child: ChildGuard,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/prometheus/keywarden-alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: keywarden\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n",
                rules.display().to_string()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = ChildGuard::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("prometheus (Debian package) is installed: scripts/install-deps.sh --test");
        Prometheus {
            _child: child,
            port,
            _dir: dir,
        }
    }
}

/// Polls Prometheus's instant-query API on `port` until `q` returns a
/// sample, or 60 s pass.
fn prom_query(port: u16, q: &str) -> serde_json::Value {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let what = format!("Prometheus to answer {q} with a sample");
    wait_for_blocking(&what, Duration::from_secs(60), || {
        let connected = std::net::TcpStream::connect(("127.0.0.1", port));
        let mut s = connected.map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(
            s,
            "GET /api/v1/query?query={enc} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let (_, body) = text.split_once("\r\n\r\n").ok_or_else(|| text.clone())?;
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(v)
                if v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()) =>
            {
                Ok(v)
            }
            _ => Err(body.to_string()),
        }
    })
}

/// The metric names an exposition declares (`# TYPE name kind`).
fn declared(page: &str) -> std::collections::BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_daemon_and_promtool_accepts_page_and_rules() {
    let port = free_port();
    let d = Daemon::builder()
        .args(&["--metrics-listen", &format!("127.0.0.1:{port}")])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    let g = generate(&mut c, "patients", &[("case", "1")]).await;
    decrypt(&mut c, &g.ciphertext_blob, &[("case", "1")])
        .await
        .unwrap();
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[("case", "2")])
        .await
        .is_err());

    let (status, page) = tokio::task::spawn_blocking(move || get(port, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    for want in [
        "keywarden_requests_total{method=\"GenerateDataKey\",code=\"OK\"} 1",
        "keywarden_requests_total{method=\"Decrypt\",code=\"INVALID_ARGUMENT\"} 1",
        "keywarden_request_duration_seconds_count{method=\"CreateKey\"} 1",
        "keywarden_hsm_operation_duration_seconds_count{operation=\"wrap_new_keys\"}",
        "keywarden_seal_state{state=\"unsealed\"} 1",
        "keywarden_keys{state=\"active\",kind=\"aes\"} 1",
        "keywarden_audit_up 1",
        "keywarden_hsm_up 1",
    ] {
        assert!(page.contains(want), "{want} missing from:\n{page}");
    }
    // No key name in a label unless per_key is set.
    assert!(!page.contains("patients"), "{page}");
    let (status, _) = tokio::task::spawn_blocking(move || get(port, "/other"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // The same page over the socket.
    let over_socket = c
        .operator
        .metrics(proto::MetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .text;
    assert_eq!(declared(&over_socket), declared(&page));

    // promtool lints the exposition and the shipped rules.
    let o = promtool(&["check", "metrics"], Some(&page));
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/prometheus/keywarden-alerts.yml"
    );
    let o = promtool(&["check", "rules", rules], None);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The rules' own scenarios: which alerts fire, and when.
    let o = promtool(
        &[
            "test",
            "rules",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/packaging/prometheus/keywarden-alerts.test.yml"
            ),
        ],
        None,
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // A real Prometheus scrapes it; the series arrive through its API.
    let p = Prometheus::start(port);
    let pport = p.port;
    let v = tokio::task::spawn_blocking(move || {
        [
            "keywarden_requests_total{method=\"GenerateDataKey\",code=\"OK\"}",
            "up{job=\"keywarden\"}",
            "keywarden_seal_state{state=\"unsealed\"}",
        ]
        .map(|q| prom_query(pport, q))
    })
    .await
    .unwrap();
    for r in &v {
        assert_eq!(
            r["data"]["result"][0]["value"][1].as_str(),
            Some("1"),
            "{r}"
        );
    }
    drop(p);
}

#[test]
fn the_grafana_dashboard_names_only_exported_series() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/packaging/grafana/keywarden.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    // The names the daemon exports, from its own renderer.
    let m = keywarden::metrics::Metrics::new(true);
    let page = m.render(&keywarden::metrics::Snapshot::default());
    let names = declared(&page);
    let mut seen = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("keywarden_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                assert!(names.contains(base), "{word} in {expr:?} is not exported");
                seen += 1;
            }
        }
    }
    assert!(seen >= 12, "only {seen} series used");
}
