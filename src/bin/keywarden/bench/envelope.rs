//! The envelope figures of `keywarden bench`: stream encryption and
//! decryption through the client SDK against the same AES-256-GCM
//! in-process, the peak memory of `keywarden encrypt` on a 1 GiB pipe, and
//! the daemon calls 10,000 record encryptions make with and without the
//! data-key cache.

use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use keywarden_client::format::SEGMENT;
use keywarden_client::{CacheConfig, Client, Context};

/// How much each figure pushes through.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// The stream figures (256 MiB).
    pub stream_bytes: u64,
    /// The `keywarden encrypt` memory figure's input (1 GiB).
    pub pipe_bytes: u64,
    /// Records for the cache figures (10,000).
    pub records: u32,
}

impl Sizes {
    /// The figures the docs quote.
    pub const FULL: Sizes = Sizes {
        stream_bytes: 256 << 20,
        pipe_bytes: 1 << 30,
        records: 10_000,
    };
    /// A smoke run (sub-second figures): a sixteenth of each.
    pub const SMOKE: Sizes = Sizes {
        stream_bytes: 16 << 20,
        pipe_bytes: 64 << 20,
        records: 625,
    };
}

/// `left` bytes of a fixed pattern, copied out as fast as memory allows.
struct Source {
    left: u64,
    block: Vec<u8>,
}

impl Source {
    fn new(len: u64) -> Self {
        Source {
            left: len,
            block: (0..1 << 20).map(|i: u32| (i * 131) as u8).collect(),
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.left)
            .min(self.block.len() as u64) as usize;
        buf.put_slice(&self.block[..n]);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Counts and drops what is written.
#[derive(Default)]
struct Sink(u64);

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    (bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64() * 10.0).round() / 10.0
}

/// The same AES-256-GCM work in-process, with no SDK around it: 16 KiB
/// segments copied from the same source pattern and sealed in place one
/// after the other; for the open figure, the segments are sealed first
/// (not timed) and then copied and opened in place.
fn raw_gcm(bytes: u64, open: bool) -> Duration {
    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    let src = Source::new(0).block;
    let segments = bytes / SEGMENT as u64;
    let nonce = |i: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&i.to_be_bytes());
        n
    };
    let mut buf = vec![0u8; SEGMENT];
    let seal_all = |keep: Option<&mut Vec<(Vec<u8>, aes_gcm::Tag)>>| {
        let mut keep = keep;
        let mut buf = vec![0u8; SEGMENT];
        let t0 = Instant::now();
        for i in 0..segments {
            let at = (i as usize * SEGMENT) % src.len();
            buf.copy_from_slice(&src[at..at + SEGMENT]);
            if let Ok(t) =
                cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce(i)), &[], &mut buf)
            {
                if let Some(k) = keep.as_mut() {
                    k.push((buf.clone(), t));
                }
            }
        }
        t0.elapsed()
    };
    if !open {
        return seal_all(None);
    }
    let mut sealed = Vec::with_capacity(segments as usize);
    seal_all(Some(&mut sealed));
    let t0 = Instant::now();
    for (i, (ct, tag)) in sealed.iter().enumerate() {
        buf.copy_from_slice(ct);
        let _ = cipher.decrypt_in_place_detached(
            Nonce::from_slice(&nonce(i as u64)),
            &[],
            &mut buf,
            tag,
        );
    }
    t0.elapsed()
}

/// Stream figures through the SDK and the raw AES-GCM baseline.
async fn streams(
    socket: &Path,
    key: &str,
    stream_bytes: u64,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let client = Client::connect(socket).await?;
    let ctx = Context::from([("bench".to_string(), "stream".to_string())]);
    let mut out = serde_json::Map::new();
    // Timed into a sink that drops the bytes, as the raw figure does;
    // then once more, untimed, into memory for the decrypt figure.
    let t0 = Instant::now();
    let mut out_sink = Sink::default();
    client
        .encrypt_stream(&[key], &ctx, Source::new(stream_bytes), &mut out_sink)
        .await?;
    let enc = t0.elapsed();
    let mut sealed = Vec::with_capacity(out_sink.0 as usize);
    client
        .encrypt_stream(&[key], &ctx, Source::new(stream_bytes), &mut sealed)
        .await?;
    let t0 = Instant::now();
    let mut sink = Sink::default();
    client.decrypt_stream(&ctx, &sealed[..], &mut sink).await?;
    let dec = t0.elapsed();
    anyhow::ensure!(sink.0 == stream_bytes, "the stream came back short");
    drop(sealed);
    let raw_enc = tokio::task::spawn_blocking(move || raw_gcm(stream_bytes, false)).await?;
    let raw_dec = tokio::task::spawn_blocking(move || raw_gcm(stream_bytes, true)).await?;
    let ratio =
        |a: Duration, b: Duration| (b.as_secs_f64() / a.as_secs_f64() * 100.0).round() / 100.0;
    out.insert(
        "stream_encrypt_mib_s".into(),
        json!(mib_s(stream_bytes, enc)),
    );
    out.insert(
        "stream_decrypt_mib_s".into(),
        json!(mib_s(stream_bytes, dec)),
    );
    out.insert(
        "raw_gcm_encrypt_mib_s".into(),
        json!(mib_s(stream_bytes, raw_enc)),
    );
    out.insert(
        "raw_gcm_decrypt_mib_s".into(),
        json!(mib_s(stream_bytes, raw_dec)),
    );
    out.insert(
        "stream_vs_raw".into(),
        json!({"encrypt": ratio(enc, raw_enc), "decrypt": ratio(dec, raw_dec)}),
    );
    Ok(out)
}

/// Peak RSS (VmHWM, KiB) of `keywarden encrypt` fed 1 GiB on stdin, with
/// stdout to /dev/null.
fn encrypt_pipe_rss(socket: &Path, key: &str, pipe_bytes: u64) -> anyhow::Result<(u64, Duration)> {
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("--socket")
        .arg(socket)
        .args(["encrypt", "--key", key, "--context", "bench=pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let t0 = Instant::now();
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        let block: Vec<u8> = (0..1u32 << 20).map(|i| (i * 131) as u8).collect();
        for _ in 0..pipe_bytes / block.len() as u64 {
            stdin.write_all(&block)?;
        }
        Ok(())
    });
    let mut peak = 0u64;
    loop {
        if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
        {
            peak = peak.max(kib);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("the feeder thread failed"))??;
    Ok((peak, took))
}

/// 10,000 record encryptions without and with the cache: daemon calls
/// (GenerateDataKey lines in the audit log when the bench owns the daemon,
/// the cache's misses otherwise) and records per second.
async fn cache(
    socket: &Path,
    key: &str,
    audit_dir: Option<&Path>,
    records: u32,
) -> anyhow::Result<Value> {
    let count = || -> Option<usize> {
        let dir = audit_dir?;
        Some(
            std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| t.matches("\"op\":\"GenerateDataKey\"").count())
                .sum(),
        )
    };
    let ctx = Context::from([("table".to_string(), "patients".to_string())]);
    let record = [0x42u8; 200];
    let plain = Client::connect(socket).await?;
    let before = count();
    let t0 = Instant::now();
    for _ in 0..records {
        plain.encrypt(&[key], &ctx, &record).await?;
    }
    let without = t0.elapsed();
    let without_calls = before.and_then(|b| count().map(|a| a - b));

    let config = CacheConfig::default();
    let cached = Client::connect(socket).await?.with_cache(config)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cached.cache_stats().is_some_and(|s| s.live) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cache never heard from the daemon"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = count();
    let t0 = Instant::now();
    for _ in 0..records {
        cached.encrypt(&[key], &ctx, &record).await?;
    }
    let with = t0.elapsed();
    let stats = cached.cache_stats().unwrap_or_default();
    let with_calls = before.and_then(|b| count().map(|a| a - b));
    Ok(json!({
        "records": records,
        "record_bytes": record.len(),
        "max_messages": config.max_messages,
        "without_cache": {
            "daemon_calls": without_calls,
            "records_per_sec": (records as f64 / without.as_secs_f64()).round(),
        },
        "with_cache": {
            "daemon_calls": with_calls.unwrap_or(stats.misses as usize),
            "cache_misses": stats.misses,
            "records_per_sec": (records as f64 / with.as_secs_f64()).round(),
        },
    }))
}

/// All envelope figures, as one object.
pub async fn figures(
    socket: &Path,
    key: &str,
    audit_dir: Option<&Path>,
    sizes: Sizes,
) -> anyhow::Result<Value> {
    let mut out = streams(socket, key, sizes.stream_bytes).await?;
    out.insert("stream_bytes".into(), json!(sizes.stream_bytes));
    let (s, k) = (socket.to_path_buf(), key.to_string());
    let pipe = sizes.pipe_bytes;
    let (rss, took) = tokio::task::spawn_blocking(move || encrypt_pipe_rss(&s, &k, pipe)).await??;
    out.insert("encrypt_pipe_bytes".into(), json!(pipe));
    out.insert("encrypt_pipe_peak_rss_kib".into(), json!(rss));
    out.insert("encrypt_pipe_mib_s".into(), json!(mib_s(pipe, took)));
    out.insert(
        "cache".into(),
        cache(socket, key, audit_dir, sizes.records).await?,
    );
    Ok(Value::Object(out))
}
