//! `keywarden drill restore`: a disaster-recovery rehearsal on dev-mode
//! daemons (the real binary, a real software token, a real socket).
//!
//! It runs a daemon with a few keys and data keys, backs it up, makes
//! changes after the backup (a key destroyed, a hold placed, a key
//! created), copies the audit log off the "host", throws the host's state
//! away, restores the backup into a new directory with the audit trail,
//! unseals with the original share, and checks that every data key recorded
//! before the backup opens to the same key, that the destroyed key's do
//! not, and that the key created after the backup is reported lost. It
//! prints the RPO and RTO it measured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::dev::DevToken;
use keywarden::proto;
use keywarden_client::{Client, Context, Error};

/// Options of `keywarden drill restore`.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub token: DevToken,
    pub token_module: Option<PathBuf>,
    /// Keys made before the backup (besides the one destroyed after it).
    pub keys: usize,
    /// Data keys recorded under each.
    pub data_keys: usize,
    /// Keep the drill's directories here instead of a temporary one.
    pub keep: Option<PathBuf>,
}

/// A `keywarden dev --dir` child and what it printed.
struct DevProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    socket: PathBuf,
}

impl DevProcess {
    async fn start(dir: &Path, opts: &DrillOptions, extra: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("dev").arg("--dir").arg(dir).args(extra);
        if opts.token == DevToken::Kryoptic {
            cmd.arg("--token").arg("kryoptic");
        }
        if let Some(m) = &opts.token_module {
            cmd.arg("--token-module").arg(m);
        }
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(l);
                }
            });
        }
        let p = DevProcess {
            child,
            lines,
            socket: dir.join("keywarden.sock"),
        };
        p.wait_for(|l| l.starts_with("Keywarden dev daemon is running"))
            .await?;
        Ok(p)
    }

    async fn wait_for(&self, f: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|l| f(l))
            {
                return Ok(l.clone());
            }
            if Instant::now() > deadline {
                bail!("the dev daemon did not get ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(s) => {
                s?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// A recorded data key: its blob and the SHA-256 of its plaintext (the
/// plaintext itself is dropped, wiped, at once).
struct Recorded {
    key: String,
    blob: Vec<u8>,
    digest: [u8; 32],
}

async fn record(c: &Client, key: &str, n: usize, ctx: &Context) -> anyhow::Result<Vec<Recorded>> {
    let items: Vec<(&str, &Context)> = (0..n).map(|_| (key, ctx)).collect();
    let mut out = Vec::with_capacity(n);
    for r in c.generate_data_keys(&items).await? {
        let g = r?;
        out.push(Recorded {
            key: key.to_string(),
            digest: Sha256::digest(g.plaintext.expose()).into(),
            blob: g.ciphertext_blob.clone(),
        });
    }
    Ok(out)
}

async fn create(c: &mut Client, name: &str) -> anyhow::Result<()> {
    c.keys
        .create_key(proto::CreateKeyRequest {
            name: name.into(),
            description: "restore drill".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating {name}: {}", s.message()))?;
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Runs the drill; returns an error (and prints why) if any check fails.
pub async fn restore(opts: DrillOptions) -> anyhow::Result<()> {
    let temp;
    let root = match &opts.keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("keywarden-drill-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let primary = root.join("primary");
    let restored = root.join("restored");
    let offsite = root.join("offsite");
    std::fs::create_dir_all(&primary)?;
    std::fs::create_dir_all(&offsite)?;
    let ctx: Context = [("drill".to_string(), "restore".to_string())].into();

    println!(
        "drill: 1. a dev daemon with {} keys and {} data keys each",
        opts.keys, opts.data_keys
    );
    let dev = DevProcess::start(&primary, &opts, &["--destroy-approvals", "1"]).await?;
    let share_line = dev.wait_for(|l| l.starts_with("Unseal share: ")).await?;
    dev.wait_for(|l| l == "Unsealed.").await?;
    let share = share_line
        .trim_start_matches("Unseal share: ")
        .trim()
        .to_string();
    let share_file = offsite.join("custodian.share");
    std::fs::write(&share_file, format!("{share}\n"))?;
    let mut c = Client::connect(&dev.socket).await?;
    let names: Vec<String> = (1..=opts.keys).map(|i| format!("records-{i}")).collect();
    let mut kept = Vec::new();
    for n in &names {
        create(&mut c, n).await?;
        kept.extend(record(&c, n, opts.data_keys, &ctx).await?);
    }
    create(&mut c, "retired").await?;
    let shredded = record(&c, "retired", opts.data_keys, &ctx).await?;

    println!("drill: 2. backup");
    let backup = offsite.join("keywarden.kwb");
    let t_backup = Instant::now();
    let mut stream = c
        .operator
        .backup(proto::BackupRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("backup: {}", s.message()))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    std::fs::write(&backup, &bytes)?;
    let backup_took = t_backup.elapsed();

    println!("drill: 3. after the backup: destroy \"retired\", hold \"records-1\", create \"after-backup\"");
    c.keys
        .destroy_now(proto::KeyNameRequest {
            name: "retired".into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("destroying retired: {}", s.message()))?;
    c.keys
        .place_hold(proto::PlaceHoldRequest {
            name: names[0].clone(),
            reason: "restore drill".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("hold: {}", s.message()))?;
    create(&mut c, "after-backup").await?;
    let late = record(&c, "after-backup", 1, &ctx).await?;
    drop(c);

    println!("drill: 4. the host is lost: its audit log survives only as the off-host copy");
    dev.stop().await?;
    let t_loss = Instant::now();
    let mut trail: Vec<PathBuf> = std::fs::read_dir(primary.join("state").join("audit"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    // Rotated files (audit-<seq>.log) are older than the live audit.log.
    trail.sort_by_key(|p| (p.file_name().is_some_and(|n| n == "audit.log"), p.clone()));
    let mut copies = Vec::new();
    for f in &trail {
        let to = offsite.join(f.file_name().unwrap_or_default());
        std::fs::copy(f, &to)?;
        copies.push(to);
    }
    std::fs::remove_dir_all(&primary)?;

    println!("drill: 5. restore into a new directory, replaying the trail");
    let t_restore = Instant::now();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["operator", "restore", "--from"])
        .arg(&backup)
        .arg("--dir")
        .arg(&restored)
        .arg("--share-file")
        .arg(&share_file)
        .arg("--replay-audit")
        .args(&copies);
    if let Some(m) = &opts.token_module {
        cmd.arg("--token-module").arg(m);
    }
    let out = cmd.output().context("running keywarden operator restore")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!(
        "{}",
        text.lines()
            .map(|l| format!("  | {l}\n"))
            .collect::<String>()
    );
    if !out.status.success() {
        bail!("restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let restore_took = t_restore.elapsed();
    if !text.contains("LOST: after-backup") {
        bail!("the restore did not report the key created after the backup as lost");
    }

    println!("drill: 6. start the restored daemon (sealed), unseal with the original share");
    let dev2 = DevProcess::start(&restored, &opts, &[]).await?;
    let mut c = Client::connect(&dev2.socket).await?;
    c.operator
        .unseal(proto::UnsealRequest {
            share: share.clone(),
            reset: false,
            accept_restore_window: false,
        })
        .await
        .map_err(|s| anyhow::anyhow!("unseal: {}", s.message()))?;

    println!("drill: 7. check every recorded data key");
    let mut opened = 0;
    let mut first_served = None;
    for chunk in kept.chunks(512) {
        let items: Vec<(&[u8], &Context)> =
            chunk.iter().map(|r| (r.blob.as_slice(), &ctx)).collect();
        let results = c.decrypt_data_keys(&items).await?;
        first_served.get_or_insert_with(|| t_restore.elapsed());
        for (r, want) in results.into_iter().zip(chunk) {
            let got = r.with_context(|| {
                format!("a data key of {} recorded before the backup", want.key)
            })?;
            if <[u8; 32]>::from(Sha256::digest(got.plaintext.expose())) != want.digest {
                bail!("a data key of {} opened to a different key", want.key);
            }
            opened += 1;
        }
    }
    let items: Vec<(&[u8], &Context)> =
        shredded.iter().map(|r| (r.blob.as_slice(), &ctx)).collect();
    for r in c.decrypt_data_keys(&items).await? {
        match r {
            Err(Error::FailedPrecondition { .. }) => {}
            Err(e) => bail!("a data key of the destroyed key failed the wrong way: {e}"),
            Ok(_) => {
                bail!("a data key of the key destroyed after the backup opened after the restore")
            }
        }
    }
    for r in &late {
        match c.decrypt_data_key(&r.blob, &ctx).await {
            Err(Error::NotFound { .. }) => {}
            other => bail!(
                "the key created after the backup: expected NOT_FOUND, got {:?}",
                other.err()
            ),
        }
    }
    let held = c
        .keys
        .describe_key(proto::DescribeKeyRequest {
            name: names[0].clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("describe: {}", s.message()))?
        .into_inner();
    if held.key.map(|k| k.holds.is_empty()).unwrap_or(true) {
        bail!("the hold placed after the backup did not survive the restore");
    }
    drop(c);
    dev2.stop().await?;

    let rto = first_served.unwrap_or_default();
    let rpo = t_loss.duration_since(t_backup);
    println!();
    println!("drill restore: PASSED");
    println!(
        "  data keys recorded before the backup that open: {opened} of {}",
        kept.len()
    );
    println!(
        "  data keys of the key destroyed after the backup that open: 0 of {}",
        shredded.len()
    );
    println!("  backup: {} bytes in {}", bytes.len(), secs(backup_took));
    println!("  RPO, key states (destructions, holds): 0 s: replayed from the audit trail up to its last line");
    println!("  RPO, key material: {} (the backup's age when the host was lost; \"after-backup\" is lost)", secs(rpo));
    println!(
        "  RTO: {} (restore {}, then start, unseal and first data key served)",
        secs(rto),
        secs(restore_took)
    );
    Ok(())
}
