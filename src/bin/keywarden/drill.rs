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

use crate::devdir::DevToken;
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

/// The drill's directories and the encryption context of its data keys.
struct Site<'a> {
    opts: &'a DrillOptions,
    /// The dev daemon that is backed up, then lost.
    primary: PathBuf,
    /// Where the backup is restored.
    restored: PathBuf,
    /// What survives the host: the backup, the share, the audit log copies.
    offsite: PathBuf,
    ctx: Context,
}

/// The data keys recorded: before the backup under the kept keys, under
/// the key destroyed after it, and under the key created after it.
struct Records {
    names: Vec<String>,
    kept: Vec<Recorded>,
    shredded: Vec<Recorded>,
    late: Vec<Recorded>,
}

/// The first daemon, running with the custodian's share written off-host.
struct Primary {
    dev: DevProcess,
    client: Client,
    share: String,
    share_file: PathBuf,
}

/// The backup taken, and when.
struct Backup {
    path: PathBuf,
    bytes: usize,
    taken_at: Instant,
    took: Duration,
}

/// What the drill measured, for its report.
struct Measured {
    opened: usize,
    kept: usize,
    shredded: usize,
    backup_bytes: usize,
    backup_took: Duration,
    rpo: Duration,
    rto: Duration,
    restore_took: Duration,
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
    let site = Site {
        opts: &opts,
        primary: root.join("primary"),
        restored: root.join("restored"),
        offsite: root.join("offsite"),
        ctx: [("drill".to_string(), "restore".to_string())].into(),
    };
    std::fs::create_dir_all(&site.primary)?;
    std::fs::create_dir_all(&site.offsite)?;

    let (mut primary, mut records) = start_primary(&site).await?;
    let backup = take_backup(&mut primary.client, &site.offsite).await?;
    records.late = change_after_backup(&mut primary.client, &records, &site.ctx).await?;
    drop(primary.client);
    let (lost_at, copies) = lose_host(primary.dev, &site).await?;
    let (t_restore, restore_took) =
        restore_offline(&site, &backup.path, &primary.share_file, &copies)?;
    let (opened, first_served) = check_restored(&site, &primary.share, &records, t_restore).await?;

    print_report(&Measured {
        opened,
        kept: records.kept.len(),
        shredded: records.shredded.len(),
        backup_bytes: backup.bytes,
        backup_took: backup.took,
        rpo: lost_at.duration_since(backup.taken_at),
        rto: first_served.unwrap_or_default(),
        restore_took,
    });
    Ok(())
}

/// Step 1: a dev daemon with keys and data keys recorded under each, and the
/// custodian's share written off-host.
async fn start_primary(site: &Site<'_>) -> anyhow::Result<(Primary, Records)> {
    let opts = site.opts;
    println!(
        "drill: 1. a dev daemon with {} keys and {} data keys each",
        opts.keys, opts.data_keys
    );
    let dev = DevProcess::start(&site.primary, opts, &["--destroy-approvals", "1"]).await?;
    let share_line = dev.wait_for(|l| l.starts_with("Unseal share: ")).await?;
    dev.wait_for(|l| l == "Unsealed.").await?;
    let share = share_line
        .trim_start_matches("Unseal share: ")
        .trim()
        .to_string();
    let share_file = site.offsite.join("custodian.share");
    std::fs::write(&share_file, format!("{share}\n"))?;
    let mut c = Client::connect(&dev.socket).await?;
    let names: Vec<String> = (1..=opts.keys).map(|i| format!("records-{i}")).collect();
    let mut kept = Vec::new();
    for n in &names {
        create(&mut c, n).await?;
        kept.extend(record(&c, n, opts.data_keys, &site.ctx).await?);
    }
    create(&mut c, "retired").await?;
    let shredded = record(&c, "retired", opts.data_keys, &site.ctx).await?;
    let primary = Primary {
        dev,
        client: c,
        share,
        share_file,
    };
    let records = Records {
        names,
        kept,
        shredded,
        late: Vec::new(),
    };
    Ok((primary, records))
}

/// Step 2: the backup, streamed into the off-host directory.
async fn take_backup(c: &mut Client, offsite: &Path) -> anyhow::Result<Backup> {
    println!("drill: 2. backup");
    let path = offsite.join("keywarden.kwb");
    let taken_at = Instant::now();
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
    std::fs::write(&path, &bytes)?;
    Ok(Backup {
        path,
        bytes: bytes.len(),
        taken_at,
        took: taken_at.elapsed(),
    })
}

/// Step 3: changes the backup does not hold: a key destroyed, a hold placed, a
/// key created (its data key is returned).
async fn change_after_backup(
    c: &mut Client,
    records: &Records,
    ctx: &Context,
) -> anyhow::Result<Vec<Recorded>> {
    println!("drill: 3. after the backup: destroy \"retired\", hold \"records-1\", create \"after-backup\"");
    c.keys
        .destroy_now(proto::KeyNameRequest {
            name: "retired".into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("destroying retired: {}", s.message()))?;
    c.keys
        .place_hold(proto::PlaceHoldRequest {
            name: records.names[0].clone(),
            reason: "restore drill".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("hold: {}", s.message()))?;
    create(c, "after-backup").await?;
    record(c, "after-backup", 1, ctx).await
}

/// Step 4: the host is lost: the daemon stops, its audit log is copied
/// off-host, its directory goes. Returns when, and the copies (oldest
/// first).
async fn lose_host(dev: DevProcess, site: &Site<'_>) -> anyhow::Result<(Instant, Vec<PathBuf>)> {
    println!("drill: 4. the host is lost: its audit log survives only as the off-host copy");
    dev.stop().await?;
    let lost_at = Instant::now();
    let mut trail: Vec<PathBuf> = std::fs::read_dir(site.primary.join("state").join("audit"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    // Rotated files (audit-<seq>.log) are older than the live audit.log.
    trail.sort_by_key(|p| (p.file_name().is_some_and(|n| n == "audit.log"), p.clone()));
    let mut copies = Vec::new();
    for f in &trail {
        let to = site.offsite.join(f.file_name().unwrap_or_default());
        std::fs::copy(f, &to)?;
        copies.push(to);
    }
    std::fs::remove_dir_all(&site.primary)?;
    Ok((lost_at, copies))
}

/// Step 5: `keywarden operator restore --dir` into a new directory, replaying
/// the audit log copies; its output is shown indented. Returns when it
/// started and how long it took.
fn restore_offline(
    site: &Site<'_>,
    backup: &Path,
    share_file: &Path,
    copies: &[PathBuf],
) -> anyhow::Result<(Instant, Duration)> {
    println!("drill: 5. restore into a new directory, replaying the trail");
    let t_restore = Instant::now();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["operator", "restore", "--from"])
        .arg(backup)
        .arg("--dir")
        .arg(&site.restored)
        .arg("--share-file")
        .arg(share_file)
        .arg("--replay-audit")
        .args(copies);
    if let Some(m) = &site.opts.token_module {
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
    Ok((t_restore, restore_took))
}

/// Steps 6 and 7: the restored daemon, unsealed with the original share: every
/// data key recorded before the backup opens to the same key, the
/// destroyed key's do not, the key created after it is unknown, the hold
/// placed after it stands. Returns how many opened, and when the first
/// was served (since `t_restore`).
async fn check_restored(
    site: &Site<'_>,
    share: &str,
    records: &Records,
    t_restore: Instant,
) -> anyhow::Result<(usize, Option<Duration>)> {
    println!("drill: 6. start the restored daemon (sealed), unseal with the original share");
    let dev2 = DevProcess::start(&site.restored, site.opts, &[]).await?;
    let mut c = Client::connect(&dev2.socket).await?;
    c.operator
        .unseal(proto::UnsealRequest {
            share: share.to_string(),
            reset: false,
            accept_restore_window: false,
        })
        .await
        .map_err(|s| anyhow::anyhow!("unseal: {}", s.message()))?;

    println!("drill: 7. check every recorded data key");
    let (opened, first_served) = check_kept(&c, &records.kept, &site.ctx, t_restore).await?;
    check_gone(&c, records, &site.ctx).await?;
    check_hold(&mut c, &records.names[0]).await?;
    drop(c);
    dev2.stop().await?;
    Ok((opened, first_served))
}

/// Every data key recorded before the backup opens to the same key.
async fn check_kept(
    c: &Client,
    kept: &[Recorded],
    ctx: &Context,
    t_restore: Instant,
) -> anyhow::Result<(usize, Option<Duration>)> {
    let mut opened = 0;
    let mut first_served = None;
    for chunk in kept.chunks(512) {
        let items: Vec<(&[u8], &Context)> =
            chunk.iter().map(|r| (r.blob.as_slice(), ctx)).collect();
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
    Ok((opened, first_served))
}

/// The data keys of the key destroyed after the backup stay shredded; the
/// key created after it is unknown.
async fn check_gone(c: &Client, records: &Records, ctx: &Context) -> anyhow::Result<()> {
    let items: Vec<(&[u8], &Context)> = records
        .shredded
        .iter()
        .map(|r| (r.blob.as_slice(), ctx))
        .collect();
    for r in c.decrypt_data_keys(&items).await? {
        match r {
            Err(Error::FailedPrecondition { .. }) => {}
            Err(e) => bail!("a data key of the destroyed key failed the wrong way: {e}"),
            Ok(_) => {
                bail!("a data key of the key destroyed after the backup opened after the restore")
            }
        }
    }
    for r in &records.late {
        match c.decrypt_data_key(&r.blob, ctx).await {
            Err(Error::NotFound { .. }) => {}
            other => bail!(
                "the key created after the backup: expected NOT_FOUND, got {:?}",
                other.err()
            ),
        }
    }
    Ok(())
}

/// The hold placed after the backup survived the restore.
async fn check_hold(c: &mut Client, name: &str) -> anyhow::Result<()> {
    let held = c
        .keys
        .describe_key(proto::DescribeKeyRequest {
            name: name.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("describe: {}", s.message()))?
        .into_inner();
    if held.key.map(|k| k.holds.is_empty()).unwrap_or(true) {
        bail!("the hold placed after the backup did not survive the restore");
    }
    Ok(())
}

fn print_report(m: &Measured) {
    println!();
    println!("drill restore: PASSED");
    println!(
        "  data keys recorded before the backup that open: {} of {}",
        m.opened, m.kept
    );
    println!(
        "  data keys of the key destroyed after the backup that open: 0 of {}",
        m.shredded
    );
    println!(
        "  backup: {} bytes in {}",
        m.backup_bytes,
        secs(m.backup_took)
    );
    println!("  RPO, key states (destructions, holds): 0 s: replayed from the audit trail up to its last line");
    println!("  RPO, key material: {} (the backup's age when the host was lost; \"after-backup\" is lost)", secs(m.rpo));
    println!(
        "  RTO: {} (restore {}, then start, unseal and first data key served)",
        secs(m.rto),
        secs(m.restore_took)
    );
}
