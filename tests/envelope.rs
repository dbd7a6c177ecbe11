//! The client SDK's envelope encryption against the real daemon: records
//! and streams, ranges, multiple recipients, crypto-shredding, the
//! data-key cache and its revocation, and `keywarden encrypt | decrypt`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use keywarden_client::format::SEGMENT;
use keywarden_client::{CacheConfig, Client, Context, Error, MessageError};

fn context(pairs: &[(&str, &str)]) -> Context {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64) as u8)
        .collect()
}

async fn sdk(d: &Daemon) -> Client {
    Client::connect(d.socket()).await.unwrap()
}

/// How many audit lines record this operation.
fn audited(d: &Daemon, op: &str) -> usize {
    let needle = format!("\"op\":\"{op}\"");
    std::fs::read_dir(d.audit_dir())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .map(|t| t.lines().filter(|l| l.contains(&needle)).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_streams_and_ranges_round_trip() {
    let d = Daemon::builder().start().await;
    let mut raw = d.client().await;
    create_key(&mut raw, "clinic").await;
    let c = sdk(&d).await;
    let ctx = context(&[("patient", "p-1001"), ("table", "notes")]);
    for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 << 20] {
        let pt = pattern(len, 7);
        let sealed = c.encrypt(&["clinic"], &ctx, &pt).await.unwrap();
        assert_eq!(
            &c.decrypt(&ctx, &sealed).await.unwrap()[..],
            &pt[..],
            "record of {len}"
        );
        // A stream and a record are the same format.
        let mut streamed = Vec::new();
        let n = c
            .encrypt_stream(&["clinic"], &ctx, &pt[..], &mut streamed)
            .await
            .unwrap();
        assert_eq!(n as usize, len);
        assert_eq!(streamed.len(), sealed.len());
        assert_eq!(&c.decrypt(&ctx, &streamed).await.unwrap()[..], &pt[..]);
        let mut back = Vec::new();
        c.decrypt_stream(&ctx, &sealed[..], &mut back)
            .await
            .unwrap();
        assert_eq!(back, pt, "stream of {len}");
    }

    // A byte range of a file, read without the rest.
    let pt = pattern(5 * SEGMENT + 123, 3);
    let sealed = c.encrypt(&["clinic"], &ctx, &pt).await.unwrap();
    let path = d.dir.join("image.kw");
    std::fs::write(&path, &sealed).unwrap();
    for (off, len) in [
        (0u64, 10u64),
        (SEGMENT as u64 - 3, 10),
        (2 * SEGMENT as u64, SEGMENT as u64),
        (pt.len() as u64 - 5, 100),
        (pt.len() as u64, 10),
    ] {
        let f = tokio::fs::File::open(&path).await.unwrap();
        let mut out = Vec::new();
        let n = c.decrypt_range(&ctx, f, off, len, &mut out).await.unwrap();
        let end = (off + len).min(pt.len() as u64) as usize;
        assert_eq!(n as usize, end - off as usize);
        assert_eq!(out, pt[off as usize..end], "range {off}+{len}");
    }
    let f = tokio::fs::File::open(&path).await.unwrap();
    let past = c
        .decrypt_range(&ctx, f, pt.len() as u64 + 1, 1, &mut Vec::new())
        .await;
    assert!(matches!(
        past,
        Err(Error::Message(MessageError::Range { .. }))
    ));
    // A truncated file fails the range read too (the length is proven by
    // the final segment).
    std::fs::write(&path, &sealed[..sealed.len() - 1]).unwrap();
    let f = tokio::fs::File::open(&path).await.unwrap();
    assert!(c
        .decrypt_range(&ctx, f, 0, 10, &mut Vec::new())
        .await
        .is_err());

    // The wrong context opens nothing; nor does an altered message.
    let wrong = context(&[("patient", "p-1002"), ("table", "notes")]);
    let r = c.decrypt(&wrong, &sealed).await;
    assert!(
        matches!(r, Err(Error::InvalidArgument { ref field, .. }) if field.as_deref() == Some("ciphertext_blob")),
        "{:?}",
        r.err()
    );
    let mut bad = sealed.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        c.decrypt(&ctx, &bad).await,
        Err(Error::Message(MessageError::Segment { index: 5 }))
    ));
    let mut bad_stream = Vec::new();
    assert!(c
        .decrypt_stream(&ctx, &sealed[..sealed.len() - 20], &mut bad_stream)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_and_crypto_shredding() {
    let d = Daemon::builder()
        .args(&["--destroy-min-delay", "1s", "--destroy-approvals", "1"])
        .start()
        .await;
    let mut raw = d.client().await;
    for k in ["clinic", "recovery", "shredded"] {
        create_key(&mut raw, k).await;
    }
    let c = sdk(&d).await;
    let ctx = context(&[("backup", "2026-12-01")]);
    let pt = pattern(100_000, 1);
    let both = c.encrypt(&["clinic", "recovery"], &ctx, &pt).await.unwrap();
    let info = keywarden_client::inspect(&both[..]).await.unwrap();
    assert_eq!(info.header.recipients().len(), 2);
    assert_eq!(info.plaintext_len, pt.len() as u64);

    // One recipient disabled: the other opens it.
    raw.keys.disable_key(name_req("clinic")).await.unwrap();
    assert_eq!(&c.decrypt(&ctx, &both).await.unwrap()[..], &pt[..]);
    // Both disabled: refused, and each recipient's reason is listed.
    raw.keys.disable_key(name_req("recovery")).await.unwrap();
    match c.decrypt(&ctx, &both).await {
        Err(Error::Message(MessageError::NoRecipient(why))) => {
            assert_eq!(why.len(), 2);
            assert!(why.iter().all(|w| w.contains("suspended")), "{why:?}");
        }
        other => panic!("{:?}", other.err()),
    }
    raw.keys.enable_key(name_req("recovery")).await.unwrap();
    // Too many recipients or a repeated one: refused before any call.
    let nine: Vec<&str> = vec!["clinic"; 9];
    assert!(matches!(
        c.encrypt(&nine, &ctx, b"x").await,
        Err(Error::Usage { field: "keys", .. })
    ));
    assert!(matches!(
        c.encrypt(&["recovery", "recovery"], &ctx, b"x").await,
        Err(Error::Usage { .. })
    ));
    // A message claiming nine recipients is refused by its header.
    let mut nine_hdr = both.clone();
    nine_hdr[11] = 9;
    assert!(matches!(
        c.decrypt(&ctx, &nine_hdr).await,
        Err(Error::Message(MessageError::Header {
            field: "recipients",
            ..
        }))
    ));

    // Crypto-shredding: under a destroyed key nothing opens, record or
    // stream, and the error says it is destroyed.
    let gone = c.encrypt(&["shredded"], &ctx, &pt).await.unwrap();
    assert_eq!(&c.decrypt(&ctx, &gone).await.unwrap()[..], &pt[..]);
    raw.keys.destroy_now(name_req("shredded")).await.unwrap();
    wait_key(&mut raw, "shredded", 10, "the key was not destroyed", |k| {
        k.state == "destroyed"
    })
    .await;
    for r in [
        c.decrypt(&ctx, &gone).await.map(|_| ()),
        c.decrypt_stream(&ctx, &gone[..], &mut Vec::new())
            .await
            .map(|_| ()),
    ] {
        match r {
            Err(Error::FailedPrecondition { key_state, message }) => {
                assert_eq!(key_state.as_deref(), Some("destroyed"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_saves_calls_and_drops_revoked_keys_within_a_second() {
    let d = Daemon::builder().start().await;
    let mut raw = d.client().await;
    create_key(&mut raw, "records").await;
    create_key(&mut raw, "other").await;
    let ctx = context(&[("table", "patients")]);

    // Without the cache: one GenerateDataKey per record.
    let plain = sdk(&d).await;
    let before = audited(&d, "GenerateDataKey");
    for i in 0..200u32 {
        plain
            .encrypt(&["records"], &ctx, &i.to_be_bytes())
            .await
            .unwrap();
    }
    assert_eq!(audited(&d, "GenerateDataKey") - before, 200);

    // With it: one per max_messages records.
    let cached = sdk(&d)
        .await
        .with_cache(CacheConfig {
            max_messages: 500,
            ..CacheConfig::default()
        })
        .unwrap();
    wait_until(
        "the cache to hear from the daemon",
        Duration::from_secs(5),
        async || cached.cache_stats().unwrap().live,
    )
    .await;
    let before = audited(&d, "GenerateDataKey");
    let mut sealed = Vec::new();
    for i in 0..2_000u32 {
        sealed.push(
            cached
                .encrypt(&["records"], &ctx, &i.to_be_bytes())
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        audited(&d, "GenerateDataKey") - before,
        4,
        "2,000 records, 500 per data key"
    );
    let before = audited(&d, "Decrypt");
    for (i, m) in sealed.iter().enumerate() {
        assert_eq!(
            &cached.decrypt(&ctx, m).await.unwrap()[..],
            &(i as u32).to_be_bytes()
        );
    }
    assert_eq!(
        audited(&d, "Decrypt") - before,
        4,
        "one unwrap per data key"
    );

    // Revocation: in a loop, a background task encrypts and decrypts with
    // the cache while the admin disables the key; nothing cached succeeds
    // later than one second after the admin's call returned.
    for round in 0..3 {
        raw.keys.enable_key(name_req("records")).await.unwrap();
        let sample = cached.encrypt(&["records"], &ctx, b"warm").await.unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let cached = cached.clone();
            let ctx = ctx.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let mut last_ok = None;
                let stop = Instant::now() + Duration::from_secs(3);
                while Instant::now() < stop {
                    let e = cached.encrypt(&["records"], &ctx, b"x").await.is_ok();
                    let dd = cached.decrypt(&ctx, &sample).await.is_ok();
                    if e || dd {
                        last_ok = Some(Instant::now());
                        served.store(true, std::sync::atomic::Ordering::Release);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                last_ok
            })
        };
        wait_until(
            "the worker to be served before the disable",
            Duration::from_secs(2),
            async || served.load(std::sync::atomic::Ordering::Acquire),
        )
        .await;
        raw.keys.disable_key(name_req("records")).await.unwrap();
        let returned = Instant::now();
        let last_ok = worker
            .await
            .unwrap()
            .expect("nothing succeeded before the disable");
        let late = last_ok.saturating_duration_since(returned);
        assert!(
            late < Duration::from_secs(1),
            "round {round}: a cached key served {late:?} after the disable returned"
        );
    }
    assert!(cached.cache_stats().unwrap().revoked > 0);
    // The other key's entries are untouched by this key's change, and a
    // disabled key is refused by the daemon itself.
    assert!(cached.encrypt(&["other"], &ctx, b"y").await.is_ok());
    assert!(matches!(
        cached.encrypt(&["records"], &ctx, b"z").await,
        Err(Error::FailedPrecondition { .. })
    ));
}

/// Runs the CLI with stdin from `input`, returning (status ok, stdout,
/// stderr).
fn pipe(d: &Daemon, args: &[&str], input: &[u8]) -> (bool, Vec<u8>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["--socket", d.socket().to_str().unwrap()])
        .args(args);
    let out = output_with_stdin(&mut cmd, input).unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_encrypts_and_decrypts_pipes_and_refuses_tampering() {
    let d = Daemon::builder().start().await;
    let mut raw = d.client().await;
    create_key(&mut raw, "backups").await;
    let pt = pattern(8 * SEGMENT + 999, 5);
    let (ok, sealed, err) = pipe(
        &d,
        &[
            "encrypt",
            "--key",
            "backups",
            "--context",
            "dump=2026-12-01",
        ],
        &pt,
    );
    assert!(ok, "{err}");
    let (ok, back, err) = pipe(&d, &["decrypt", "--context", "dump=2026-12-01"], &sealed);
    assert!(ok, "{err}");
    assert_eq!(back, pt);

    // inspect: the header without any context.
    let (ok, text, err) = pipe(&d, &["--output", "json", "inspect"], &sealed);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["plaintext_bytes"], pt.len() as u64);
    assert_eq!(v["segments"], 9);
    assert_eq!(v["recipients"][0]["key_version"], 1);

    // Truncated (at a segment boundary and inside one), altered, or the
    // wrong context: non-zero exit with a clear message.
    let body = sealed.len() - (pt.len() + 9 * 16);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (sealed[..body + 3 * (SEGMENT + 16)].to_vec(), "truncated"),
        (
            sealed[..sealed.len() - 100].to_vec(),
            "failed authentication",
        ),
        (
            {
                let mut b = sealed.clone();
                b[body + 5] ^= 4;
                b
            },
            "failed authentication",
        ),
        (
            {
                let mut b = sealed.clone();
                b[body - 40] ^= 4;
                b
            },
            "commitment",
        ),
    ];
    for (input, want) in &cases {
        let (ok, _, err) = pipe(&d, &["decrypt", "--context", "dump=2026-12-01"], input);
        assert!(!ok);
        assert!(err.contains(want), "want {want:?}: {err}");
        assert!(err.contains("discard"), "{err}");
    }
    let (ok, _, err) = pipe(&d, &["decrypt", "--context", "dump=2026-12-02"], &sealed);
    assert!(!ok);
    assert!(err.contains("encryption_context"), "{err}");

    // To a file: nothing appears unless the whole message verified.
    let out = d.dir.join("restored.sql");
    let (ok, _, _) = pipe(
        &d,
        &[
            "decrypt",
            "--context",
            "dump=2026-12-01",
            "-o",
            out.to_str().unwrap(),
        ],
        &cases[0].0,
    );
    assert!(!ok);
    assert!(!out.exists(), "a truncated message left an output file");
    let leftovers: Vec<_> = std::fs::read_dir(&d.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    let (ok, _, err) = pipe(
        &d,
        &[
            "decrypt",
            "--context",
            "dump=2026-12-01",
            "-o",
            out.to_str().unwrap(),
        ],
        &sealed,
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), pt);
    assert_eq!(
        path_mode(&out) & 0o077,
        0,
        "plaintext output readable by others"
    );
}

/// The client crate's own example (an application that depends on nothing
/// but `keywarden-client`) against a dev daemon: a record and a stream of
/// `KEYWARDEN_EXAMPLE_MIB` MiB (1024 here: 1 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_depending_only_on_the_client_crate() {
    let d = Daemon::builder().start().await;
    let mut raw = d.client().await;
    create_key(&mut raw, "clinic").await;
    let example = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples")
        .join("records");
    // Built here (cargo test does not leave examples at a fixed path);
    // `--workspace` keeps the features of the test build, so nothing is
    // rebuilt but the example itself.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--workspace", "--locked", "--example", "records"])
        .status()
        .unwrap();
    assert!(status.success(), "building the example failed");
    assert!(
        example.exists(),
        "no example binary at {}",
        example.display()
    );
    let out = Command::new(&example)
        .env("KEYWARDEN_SOCKET", d.socket())
        .env("KEYWARDEN_EXAMPLE_KEY", "clinic")
        .env("KEYWARDEN_EXAMPLE_MIB", "1024")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("record: ok"), "{stdout}");
    assert!(stdout.contains("stream: 1073741824 bytes"), "{stdout}");
}
