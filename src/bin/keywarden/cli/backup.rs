//! `keywarden operator backup` (on a running daemon) and `keywarden
//! operator restore` (offline, with a quorum's shares).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use zeroize::Zeroizing;

use super::{client, out, print_json, status_error, Output};
use keywarden::backup::restore::{self, Report, Target};
use keywarden::proto;

/// Options of `keywarden operator restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file (`keywarden operator backup --out`).
    #[arg(long)]
    pub from: PathBuf,
    /// Restore into the state directory and token of this daemon
    /// configuration (the token module's configuration comes from the
    /// environment, as for the daemon: SOFTHSM2_CONF or KRYOPTIC_CONF).
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    pub config: Option<PathBuf>,
    /// Restore into a new `keywarden dev --dir DEVDIR` directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// With --dir: the software token's PKCS#11 module, when its profile
    /// does not find it (Kryoptic).
    #[arg(long)]
    pub token_module: Option<PathBuf>,
    /// Audit log files kept off the host since the backup (oldest first;
    /// the files from the one holding the backup's chain head onwards).
    #[arg(long = "replay-audit", value_name = "FILE", num_args = 1..)]
    pub replay_audit: Vec<PathBuf>,
    /// A file holding one unseal share (repeat for each custodian);
    /// otherwise shares are read from stdin, one per line, or prompted.
    #[arg(long = "share-file", value_name = "FILE")]
    pub share_files: Vec<PathBuf>,
}

/// Streams a backup from the daemon into `out` (written beside it, then
/// renamed, so a failed backup never leaves a partial file under the name).
pub async fn backup(socket: &Path, output: Output, out_path: &Path) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    let mut stream = c
        .operator
        .backup(proto::BackupRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let dir = out_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let mut info = None;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if info.is_none() {
            info = chunk.info;
        }
        sha2::Digest::update(&mut hasher, &chunk.data);
        n += chunk.data.len() as u64;
        tmp.write_all(&chunk.data)?;
    }
    let Some(info) = info else {
        bail!("the daemon sent no backup");
    };
    let got = hex::encode(sha2::Digest::finalize(hasher));
    if got != info.id || n != info.bytes {
        bail!(
            "the backup arrived damaged ({n} bytes, SHA-256 {got}; the daemon sent {} bytes, {})",
            info.bytes,
            info.id
        );
    }
    tmp.as_file().sync_all()?;
    tmp.persist(out_path)
        .with_context(|| format!("writing {}", out_path.display()))?;
    match output {
        Output::Json => print_json(&json!({
            "file": out_path.display().to_string(),
            "id": info.id,
            "bytes": info.bytes,
            "generation": info.generation,
            "created_at": info.created_at,
            "set_id": info.set_id,
            "sealed": info.sealed,
            "token_files": info.token_files,
            "vendor_procedure": info.vendor_procedure,
            "chain_head_seq": info.chain_head_seq,
        }))?,
        Output::Text => {
            out!(
                "Backup written to {} ({} bytes).",
                out_path.display(),
                info.bytes
            );
            out!("  id:          {}", info.id);
            out!(
                "  generation:  {} (registry), chain head: audit seq {}",
                info.generation,
                info.chain_head_seq
            );
            out!(
                "  share set:   {} (a quorum of it opens this backup)",
                info.set_id
            );
            if info.sealed {
                out!("  taken while sealed: the registry is verified when it is restored");
            }
            if info.token_files {
                out!("  the software token's files are inside");
            } else {
                out!("  the token is NOT inside: back it up with the vendor's procedure:");
                out!("    {}", info.vendor_procedure);
            }
            out!("Keep it off this host, on immutable storage, with the audit log copies.");
        }
    }
    Ok(())
}

/// The shares: from files, or stdin (one per line), or prompted.
fn read_shares(files: &[PathBuf], threshold: u8) -> anyhow::Result<Vec<Zeroizing<String>>> {
    let mut shares = Vec::new();
    if !files.is_empty() {
        for f in files {
            let mut s = Zeroizing::new(String::new());
            std::fs::File::open(f)
                .with_context(|| format!("opening {}", f.display()))?
                .take(16 * 1024)
                .read_to_string(&mut s)
                .with_context(|| format!("reading {}", f.display()))?;
            shares.push(Zeroizing::new(s.trim().to_string()));
        }
    } else if std::io::stdin().is_terminal() {
        for i in 1..=threshold {
            let s = Zeroizing::new(
                rpassword::prompt_password(format!(
                    "Unseal share {i} of {threshold} (input hidden): "
                ))
                .context("reading a share")?,
            );
            shares.push(Zeroizing::new(s.trim().to_string()));
        }
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = Zeroizing::new(line?);
            if !line.trim().is_empty() {
                shares.push(Zeroizing::new(line.trim().to_string()));
            }
        }
    }
    Ok(shares)
}

/// Where a restore goes, given its arguments and the token profile the
/// backup was taken on: a daemon's configuration or a new dev directory.
/// The binary decides (main.rs), not the CLI.
pub type TargetFor = fn(&RestoreArgs, &str) -> anyhow::Result<Target>;

/// Runs `keywarden operator restore`.
pub fn run_restore(output: Output, args: RestoreArgs, target_for: TargetFor) -> anyhow::Result<()> {
    let meta = std::fs::metadata(&args.from)
        .with_context(|| format!("reading {}", args.from.display()))?;
    if meta.len() > keywarden::backup::format::MAX_FILE {
        bail!(
            "{}: larger than any backup ({} bytes)",
            args.from.display(),
            meta.len()
        );
    }
    let file =
        std::fs::read(&args.from).with_context(|| format!("reading {}", args.from.display()))?;
    let (header, _) = keywarden::backup::format::read_header(&file).map_err(anyhow::Error::msg)?;
    let target = target_for(&args, &header.deployment.profile)?;
    let shares = read_shares(&args.share_files, header.deployment.threshold)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let report = restore::restore(&file, &shares, &target, &args.replay_audit, now)
        .map_err(anyhow::Error::msg)?;
    print_report(output, &report, &target)
}

fn print_report(output: Output, r: &Report, target: &Target) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&json!({
            "backup": r.backup,
            "backup_created_at": r.backup_created_at,
            "backup_generation": r.backup_generation,
            "generation": r.generation,
            "keys": r.keys,
            "token_files": r.token_files,
            "trail": r.trail.map(|(files, first, last)| json!({"files": files, "first_seq": first, "last_seq": last})),
            "replayed": r.replayed,
            "destroyed_on_token": r.destroyed_on_token,
            "lost": r.lost,
            "missing_on_token": r.missing_on_token,
            "window_to_accept": r.window,
            "trail_ends": r.trail_ends,
            "state_dir": target.state_dir.display().to_string(),
        })),
        Output::Text => {
            out!(
                "Restored backup {} into {}.",
                r.backup,
                target.state_dir.display()
            );
            out!(
                "  taken at {} (Unix time), registry generation {}; now generation {}",
                r.backup_created_at,
                r.backup_generation,
                r.generation
            );
            out!(
                "  {} keys in the registry; {} token files put back",
                r.keys,
                r.token_files
            );
            match r.trail {
                Some((files, first, last)) => {
                    out!("  replayed the audit trail: {files} file(s), seq {first} to {last}");
                    if let Some(t) = &r.trail_ends {
                        out!("  the trail ends at {t}: changes after that are not known to this restore");
                    }
                    for c in &r.replayed {
                        out!("    {c}");
                    }
                    for d in &r.destroyed_on_token {
                        out!("    destroyed on the token (destroyed after the backup): {d}");
                    }
                }
                None => {
                    out!("  NO audit trail replayed: destructions, revocations and holds made after the backup");
                    out!("  may be lost, and keys created after it are unknown. Each custodian of the unseal");
                    out!("  quorum must accept that window: keywarden operator unseal --accept-restore-window");
                }
            }
            if r.lost.is_empty() && r.trail.is_some() {
                out!("  lost: nothing the trail records");
            }
            for l in &r.lost {
                out!("  LOST: {l}");
            }
            for m in &r.missing_on_token {
                out!("  MISSING ON THE TOKEN: {m}");
            }
            out!("Start the daemon; it is sealed. Custodians unseal with their existing shares.");
            Ok(())
        }
    }
}
