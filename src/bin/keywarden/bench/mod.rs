//! `keywarden bench`: measures the daemon against its own limits in one run
//! (see `docs/PERFORMANCE.md`): the HSM's raw rate for what GenerateDataKey
//! does, a no-op RPC, the data-key calls at concurrency 1 and 16 with
//! latency percentiles, batches, peak daemon memory, and the same calls
//! with the audit log off, for comparison.

mod cluster;
mod envelope;

use std::future::Future;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::Output;
use keywarden::proto;
use keywarden_client::Client;

/// Options of `keywarden bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A running daemon to measure instead of throwaway ones (no `hsm_raw`
    /// and no audit-off comparison then).
    pub socket: Option<PathBuf>,
    /// The key to use on a running daemon (created if missing).
    pub key: String,
    pub duration: Duration,
    pub warmup: Duration,
    pub output: Output,
    /// Also measure a cluster: three nodes on a throwaway PostgreSQL
    /// registry, against this run's SQLite figures.
    pub cluster: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: u64,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    /// The daemon's CPU time (user and system, all threads) over the
    /// window, divided by the calls completed in it.
    pub cpu_us_per_call: Option<f64>,
}

impl Stats {
    fn json(&self) -> Value {
        json!({
            "per_sec": self.per_sec.round(), "ops": self.ops, "errors": self.errors,
            "p50_us": self.p50_us, "p99_us": self.p99_us, "p999_us": self.p999_us,
            "daemon_cpu_us_per_call": self.cpu_us_per_call.map(|c| c.round()),
        })
    }
}

/// The daemon's pid, from the peer credentials of a connection to its
/// socket: those of the process that listens on it. Under systemd's socket
/// activation that is pid 1, not the daemon, and no CPU figure is given.
async fn daemon_pid(socket: &Path) -> Option<i32> {
    let s = tokio::net::UnixStream::connect(socket).await.ok()?;
    s.peer_cred().ok()?.pid().filter(|&p| p > 1)
}

/// A process's CPU time so far (user plus system, every thread it has had),
/// from /proc/PID/stat, in microseconds.
fn cpu_time_us(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in ")".
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks * 1e6 / hz)
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as u64
}

/// Runs `op` from `concurrency` tasks (each with its own connection) for
/// warm-up plus duration, and reports what happened after the warm-up.
async fn measure<F, Fut>(
    socket: &Path,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    per_call: u64,
    op: F,
) -> anyhow::Result<Stats>
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let op = Arc::new(op);
    let pid = daemon_pid(socket).await;
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    // The daemon's CPU time at both ends of the window.
    let cpu = tokio::spawn(async move {
        let pid = pid?;
        tokio::time::sleep_until(measure_from.into()).await;
        let a = cpu_time_us(pid)?;
        tokio::time::sleep_until(end.into()).await;
        Some(cpu_time_us(pid)? - a)
    });
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let client = Client::connect(socket).await?;
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(64 * 1024);
            let mut errors = 0u64;
            let mut i = 0usize;
            tokio::time::sleep_until(start.into()).await;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = op(client.clone(), t * 1_000_000 + i).await;
                i += 1;
                let t1 = Instant::now();
                // A call counts when it completes inside the window (slow
                // calls, e.g. big batches on a debug build, still count).
                if t1 > measure_from && t1 <= end {
                    match r {
                        Ok(()) => lat.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32),
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let calls = all.len() as u64;
    let cpu = cpu.await.ok().flatten();
    Ok(Stats {
        cpu_us_per_call: cpu.filter(|_| calls > 0).map(|c| c / calls as f64),
        ops: calls * per_call,
        per_sec: (calls * per_call) as f64 / duration.as_secs_f64(),
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        p999_us: percentile(&all, 0.999),
        errors,
    })
}

/// The audit writer's counters at one moment, read from the daemon's
/// metrics through its Metrics RPC (rendered fresh for every call; a caller
/// with no admin or auditor role gets none, and the split is left out).
#[derive(Debug, Clone, Copy, Default)]
struct AuditCounters {
    commits: f64,
    commit_secs: f64,
    lines: f64,
    waits: f64,
    wait_secs: f64,
}

impl AuditCounters {
    async fn read(socket: &Path) -> Option<Self> {
        let mut c = Client::connect(socket).await.ok()?;
        let page = c
            .operator
            .metrics(proto::MetricsRequest {})
            .await
            .ok()?
            .into_inner()
            .text;
        let value = |name: &str| -> Option<f64> {
            page.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some(AuditCounters {
            commits: value("keywarden_audit_write_duration_seconds_count")?,
            commit_secs: value("keywarden_audit_write_duration_seconds_sum")?,
            lines: value("keywarden_audit_lines_total")?,
            waits: value("keywarden_audit_queue_wait_seconds_count")?,
            wait_secs: value("keywarden_audit_queue_wait_seconds_sum")?,
        })
    }

    /// What the writer did between `self` and `later`: commits, lines a
    /// commit, the mean commit (write and fdatasync) and the mean wait of a
    /// line before the writer took it.
    fn between(self, later: AuditCounters) -> Value {
        let commits = later.commits - self.commits;
        let lines = later.lines - self.lines;
        let waits = later.waits - self.waits;
        let per = |x: f64, n: f64| (n > 0.0).then(|| (x / n * 1e6).round());
        json!({
            "commits": commits,
            "lines_per_commit": (commits > 0.0).then(|| (lines / commits * 10.0).round() / 10.0),
            "commit_us": per(later.commit_secs - self.commit_secs, commits),
            "queue_wait_us": per(later.wait_secs - self.wait_secs, waits),
        })
    }
}

/// A throwaway dev daemon started by the bench.
struct DevDaemon {
    child: std::process::Child,
    dir: tempfile::TempDir,
    share: String,
}

impl DevDaemon {
    fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kw-bench-").tempdir()?;
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .arg("dev")
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("KEYWARDEN_SOCKET")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("dev stdout")?;
        let mut share = None;
        for line in std::io::BufReader::new(out).lines() {
            let line = line?;
            if let Some(s) = line.strip_prefix("Unseal share: ") {
                share = Some(s.to_string());
            }
            if line == "Unsealed." {
                break;
            }
            if line == "  keywarden operator unseal" {
                // The last line of a node joining another's seal (the
                // caller unseals it): the pipe must stay open until then.
                share = Some(String::new());
                break;
            }
        }
        let Some(share) = share else {
            let _ = child.kill();
            bail!("the dev daemon did not start");
        };
        Ok(DevDaemon { child, dir, share })
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("keywarden.sock")
    }

    /// The serve process (the dev process's child).
    fn serve_pid(&self) -> Option<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.serve_pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for DevDaemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

async fn ensure_key(socket: &Path, key: &str) -> anyhow::Result<()> {
    let mut c = Client::connect(socket).await?;
    let exists = c
        .keys
        .describe_key(proto::DescribeKeyRequest { name: key.into() })
        .await
        .is_ok();
    if !exists {
        c.keys
            .create_key(proto::CreateKeyRequest {
                name: key.into(),
                description: "keywarden bench".into(),
                rotation_period_secs: 0,
                kind: String::new(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("creating the bench key: {}", s.message()))?;
    }
    Ok(())
}

fn ctx(i: usize) -> std::collections::HashMap<String, String> {
    [("tenant".to_string(), format!("t{}", i % 97))].into()
}

/// The data-key figures on one daemon.
async fn datakey_figures(
    socket: &Path,
    key: &str,
    o: &BenchOptions,
    full: bool,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let (w, d) = (o.warmup, o.duration);
    let mut m = serde_json::Map::new();
    // The audit writer's split where there is an audit log (`full`).
    let read = || async {
        match full {
            true => AuditCounters::read(socket).await,
            false => None,
        }
    };
    let mut before = read().await;
    for conc in [1usize, 16] {
        let k = key.to_string();
        let s = measure(socket, conc, w, d, 1, move |mut c, i| {
            let k = k.clone();
            async move {
                c.datakeys
                    .generate_data_key(proto::GenerateDataKeyRequest {
                        key: k,
                        encryption_context: ctx(i),
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        m.insert(format!("generate_c{conc}"), s.json());
        let after = read().await;
        if let (Some(a), Some(b)) = (before, after) {
            // Over the warm-up too: the writer's averages, not a window.
            m.insert(format!("audit_writer_generate_c{conc}"), a.between(b));
        }
        before = after;
    }
    if !full {
        return Ok(m);
    }
    // Blobs to decrypt and rewrap.
    let mut c = Client::connect(socket).await?;
    let mut blobs = Vec::new();
    for i in 0..256 {
        let g = c
            .datakeys
            .generate_data_key_without_plaintext(proto::GenerateDataKeyRequest {
                key: key.into(),
                encryption_context: ctx(i),
            })
            .await?
            .into_inner();
        blobs.push((g.ciphertext_blob, ctx(i)));
    }
    let blobs = Arc::new(blobs);
    for conc in [1usize, 16] {
        let b = blobs.clone();
        let s = measure(socket, conc, w, d, 1, move |mut c, i| {
            let (blob, cx) = b[i % b.len()].clone();
            async move {
                c.datakeys
                    .decrypt(proto::DecryptRequest {
                        ciphertext_blob: blob,
                        encryption_context: cx,
                        key: String::new(),
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        m.insert(format!("decrypt_c{conc}"), s.json());
        let b = blobs.clone();
        let s = measure(socket, conc, w, d, 1, move |mut c, i| {
            let (blob, cx) = b[i % b.len()].clone();
            async move {
                c.datakeys
                    .re_encrypt(proto::ReEncryptRequest {
                        ciphertext_blob: blob,
                        encryption_context: cx,
                        destination_key: String::new(),
                        destination_encryption_context: Default::default(),
                        replace_context: false,
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        m.insert(format!("reencrypt_c{conc}"), s.json());
    }
    let k = key.to_string();
    let s = measure(socket, 4, w, d, 64, move |mut c, i| {
        let k = k.clone();
        async move {
            c.datakeys
                .batch_generate_data_key(proto::BatchGenerateDataKeyRequest {
                    requests: (0..64)
                        .map(|j| proto::GenerateDataKeyRequest {
                            key: k.clone(),
                            encryption_context: ctx(i + j),
                        })
                        .collect(),
                    without_plaintext: false,
                })
                .await
                .map(|_| ())
        }
    })
    .await?;
    m.insert("batch64_keys".into(), s.json());
    Ok(m)
}

async fn noop(socket: &Path, o: &BenchOptions, conc: usize) -> anyhow::Result<Stats> {
    measure(
        socket,
        conc,
        o.warmup,
        o.duration,
        1,
        |mut c, _| async move { c.operator.ping(proto::PingRequest {}).await.map(|_| ()) },
    )
    .await
}

/// `keywarden bench-hsm-raw` in a child process (its SOFTHSM2_CONF must be
/// set before the module initialises): the HSM's own GenerateDataKey rate.
fn run_hsm_raw(d: &DevDaemon, o: &BenchOptions) -> anyhow::Result<f64> {
    use std::io::Write;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("bench-hsm-raw")
        .arg("--config")
        .arg(d.dir.path().join("keywarden.toml"))
        .arg("--seconds")
        .arg(format!("{}", o.duration.as_secs_f64()))
        .arg("--warmup")
        .arg(format!("{}", o.warmup.as_secs_f64()))
        .env("SOFTHSM2_CONF", d.dir.path().join("softhsm2.conf"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(d.share.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("bench-hsm-raw failed");
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["per_sec"].as_f64().context("bench-hsm-raw output")
}

/// The in-process HSM measurement (run by `bench-hsm-raw`): random bytes
/// plus one AES-GCM encrypt under the bench CMK (its session copy where the
/// profile allows), from as many threads as the daemon has worker sessions.
pub fn hsm_raw(config: &Path, seconds: f64, warmup: f64, share_line: &str) -> anyhow::Result<f64> {
    use keywarden::hsm::pkcs11::Pkcs11Hsm;
    use keywarden::hsm::Hsm;
    use keywarden::seal::{shamir, share, store::SealFile};
    let cfg = keywarden::config::Config::load_for(config, true)?;
    let seal: SealFile =
        serde_json::from_str(&std::fs::read_to_string(cfg.state_dir.join("seal.json"))?)?;
    let set = seal.set_id().map_err(anyhow::Error::msg)?;
    let s = share::parse(share_line).map_err(|e| anyhow::anyhow!("share: {e}"))?;
    let key = shamir::combine(&[&s.bytes]).map_err(anyhow::Error::msg)?;
    let pin = key.user_pin(&set);
    let hsm = Pkcs11Hsm::connect(&cfg.module, &cfg.token, cfg.profile.clone(), cfg.pool_size)?;
    hsm.login(&pin)?;
    let cmk = hsm
        .list_cmks()?
        .into_iter()
        .find(|o| o.label.starts_with("keywarden:bench/"))
        .context("no bench CMK on the token")?;
    hsm.activate(&cmk.id)?;
    let hsm = Arc::new(hsm);
    let threads = cfg.pool_size;
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(warmup);
    let end = from + Duration::from_secs_f64(seconds);
    let aad = vec![0x5au8; 60];
    let mut handles = Vec::new();
    for _ in 0..threads {
        let hsm = hsm.clone();
        let id = cmk.id;
        let aad = aad.clone();
        handles.push(std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if hsm.wrap_new_keys(&id, &[&aad]).is_ok() && now >= from {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0u64;
    for h in handles {
        total += h.join().unwrap_or(0);
    }
    hsm.logout();
    Ok(total as f64 / seconds)
}

fn f(v: &Value) -> f64 {
    v["per_sec"].as_f64().unwrap_or(0.0)
}

pub async fn run(o: BenchOptions) -> anyhow::Result<()> {
    let mut report = serde_json::Map::new();
    let mut own = None;
    let socket = match &o.socket {
        Some(s) => s.clone(),
        None => {
            eprintln!("bench: starting a throwaway daemon on a fresh SoftHSM token...");
            let d = tokio::task::spawn_blocking(|| DevDaemon::start(&[])).await??;
            let s = d.socket();
            own = Some(d);
            s
        }
    };
    let key = if own.is_some() {
        "bench".to_string()
    } else {
        o.key.clone()
    };
    ensure_key(&socket, &key).await?;

    let hsm_raw = match &own {
        Some(d) => {
            eprintln!("bench: hsm_raw...");
            Some(run_hsm_raw(d, &o)?)
        }
        None => None,
    };
    eprintln!("bench: rpc_noop...");
    let noop1 = noop(&socket, &o, 1).await?;
    let noop16 = noop(&socket, &o, 16).await?;
    eprintln!("bench: data keys...");
    let figures = datakey_figures(&socket, &key, &o, true).await?;
    let peak = own.as_ref().and_then(|d| d.peak_rss_kib());
    eprintln!("bench: envelope streams, the encrypt pipe, the cache...");
    let audit_dir = own
        .as_ref()
        .map(|d| d.dir.path().join("state").join("audit"));
    let sizes = if o.duration < Duration::from_secs(1) {
        envelope::Sizes::SMOKE
    } else {
        envelope::Sizes::FULL
    };
    let envelope = envelope::figures(&socket, &key, audit_dir.as_deref(), sizes).await?;
    drop(own);

    let mut no_audit = None;
    if o.socket.is_none() {
        eprintln!("bench: the same with the audit log off...");
        let d =
            tokio::task::spawn_blocking(|| DevDaemon::start(&["--benchmark-no-audit"])).await??;
        ensure_key(&d.socket(), "bench").await?;
        no_audit = Some(datakey_figures(&d.socket(), "bench", &o, false).await?);
    }

    let gdk16 = f(&figures["generate_c16"]);
    let limit = hsm_raw.map(|h| 1.0 / (1.0 / h + 1.0 / noop16.per_sec));
    let batch = f(&figures["batch64_keys"]);
    report.insert("duration_secs".into(), json!(o.duration.as_secs_f64()));
    report.insert("hsm_raw".into(), json!(hsm_raw.map(f64::round)));
    report.insert("rpc_noop_c1".into(), noop1.json());
    report.insert("rpc_noop_c16".into(), noop16.json());
    for (k, v) in &figures {
        report.insert(k.clone(), v.clone());
    }
    report.insert("daemon_peak_rss_kib".into(), json!(peak));
    report.insert("envelope".into(), envelope);
    if let Some(na) = &no_audit {
        report.insert("audit_off".into(), Value::Object(na.clone()));
    }
    report.insert(
        "gdk_vs_limit".into(),
        json!(limit.map(|l| (gdk16 / l * 100.0).round() / 100.0)),
    );
    report.insert(
        "batch_vs_hsm".into(),
        json!(hsm_raw.map(|h| (batch / h * 100.0).round() / 100.0)),
    );
    if let (Some(na), Some(l)) = (&no_audit, limit) {
        report.insert(
            "gdk_vs_limit_audit_off".into(),
            json!((f(&na["generate_c16"]) / l * 100.0).round() / 100.0),
        );
    }
    if let Some(na) = &no_audit {
        report.insert(
            "audit_on_vs_off_c1".into(),
            json!(
                (f(&figures["generate_c1"]) / f(&na["generate_c1"]).max(1.0) * 100.0).round()
                    / 100.0
            ),
        );
        report.insert(
            "audit_on_vs_off_c16".into(),
            json!((gdk16 / f(&na["generate_c16"]).max(1.0) * 100.0).round() / 100.0),
        );
    }
    if o.cluster {
        eprintln!("bench: a cluster of three nodes on PostgreSQL...");
        report.insert("cluster".into(), cluster::figures(&o, &figures).await?);
    }
    let report = Value::Object(report);
    match o.output {
        Output::Json => crate::cli::print_json(&report)?,
        Output::Text => print_table(&report),
    }
    Ok(())
}

fn print_table(r: &Value) {
    let row = |name: &str, v: &Value| {
        println!(
            "{:<28} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9}",
            name,
            v["per_sec"]
                .as_f64()
                .map(|x| format!("{x:.0}"))
                .unwrap_or_default(),
            v["p50_us"]
                .as_u64()
                .map(|x| x.to_string())
                .unwrap_or_default(),
            v["p99_us"]
                .as_u64()
                .map(|x| x.to_string())
                .unwrap_or_default(),
            v["p999_us"]
                .as_u64()
                .map(|x| x.to_string())
                .unwrap_or_default(),
            v["errors"]
                .as_u64()
                .map(|x| x.to_string())
                .unwrap_or_default(),
            v["daemon_cpu_us_per_call"]
                .as_f64()
                .map(|x| format!("{x:.0}"))
                .unwrap_or_default(),
        );
    };
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "figure", "per sec", "p50 us", "p99 us", "p99.9 us", "errors", "cpu us"
    );
    if let Some(h) = r["hsm_raw"].as_f64() {
        println!("{:<28} {:>10.0}", "hsm_raw", h);
    }
    for k in [
        "rpc_noop_c1",
        "rpc_noop_c16",
        "generate_c1",
        "generate_c16",
        "decrypt_c1",
        "decrypt_c16",
        "reencrypt_c1",
        "reencrypt_c16",
        "batch64_keys",
    ] {
        row(k, &r[k]);
    }
    if r["audit_off"].is_object() {
        row("generate_c1 (audit off)", &r["audit_off"]["generate_c1"]);
        row("generate_c16 (audit off)", &r["audit_off"]["generate_c16"]);
    }
    println!();
    println!("daemon peak RSS:     {} KiB", r["daemon_peak_rss_kib"]);
    let e = &r["envelope"];
    println!(
        "stream MiB/s:        encrypt {} (raw GCM {}), decrypt {} (raw GCM {})",
        e["stream_encrypt_mib_s"],
        e["raw_gcm_encrypt_mib_s"],
        e["stream_decrypt_mib_s"],
        e["raw_gcm_decrypt_mib_s"]
    );
    println!(
        "stream_vs_raw:       encrypt {}, decrypt {}",
        e["stream_vs_raw"]["encrypt"], e["stream_vs_raw"]["decrypt"]
    );
    println!(
        "encrypt pipe:        {} bytes, peak RSS {} KiB, {} MiB/s",
        e["encrypt_pipe_bytes"], e["encrypt_pipe_peak_rss_kib"], e["encrypt_pipe_mib_s"]
    );
    println!(
        "{} records:        {} daemon calls without the cache, {} with it",
        e["cache"]["records"],
        e["cache"]["without_cache"]["daemon_calls"],
        e["cache"]["with_cache"]["daemon_calls"]
    );
    for c in ["c1", "c16"] {
        let a = &r[format!("audit_writer_generate_{c}")];
        if a.is_object() {
            println!(
                "audit writer, generate_{c}: {} lines a commit, commit (write+fdatasync) {} us, queue wait {} us",
                a["lines_per_commit"], a["commit_us"], a["queue_wait_us"]
            );
        }
    }
    println!(
        "gdk_vs_limit:        {} (audit log off: {})",
        r["gdk_vs_limit"], r["gdk_vs_limit_audit_off"]
    );
    println!("batch_vs_hsm:        {}", r["batch_vs_hsm"]);
    let c = &r["cluster"];
    if c.is_object() {
        row("generate_c1 (cluster)", &c["generate_c1"]);
        row("generate_c16 (cluster)", &c["generate_c16"]);
        row("decrypt_c16 (cluster)", &c["decrypt_c16"]);
        println!(
            "cluster vs SQLite:   generate {} at c1, {} at c16; decrypt {} at c16",
            c["vs_sqlite"]["generate_c1"],
            c["vs_sqlite"]["generate_c16"],
            c["vs_sqlite"]["decrypt_c16"]
        );
        println!(
            "DisableKey, 3 nodes: median {} ms, max {} ms over {} (EnableKey median {} ms)",
            c["disable_ms"]["median"],
            c["disable_ms"]["max"],
            c["disable_ms"]["n"],
            c["enable_ms"]["median"]
        );
    }
    if r["audit_on_vs_off_c16"].is_number() {
        println!(
            "audit on/off:        {} at c1, {} at c16",
            r["audit_on_vs_off_c1"], r["audit_on_vs_off_c16"]
        );
    }
}
