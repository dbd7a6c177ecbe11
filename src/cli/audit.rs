//! `keywarden audit ...`: offline verification and queries of the audit
//! log. Needs only the files (and the public key beside them), not the
//! daemon.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::{out, print_json, Output};
use crate::audit::{verify, PUBLIC_KEY_FILE};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, the sequence and every checkpoint signature.
    Verify {
        /// Log files, oldest first (default: every file in --dir).
        files: Vec<PathBuf>,
        /// The audit directory (default: the directory of the first file).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The public key (default: DIR/audit-signing.pub).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Accept entries after the last checkpoint (a live log).
        #[arg(long)]
        allow_unsigned_tail: bool,
    },
    /// Who used a key, and when.
    Query {
        #[arg(long)]
        key: String,
        /// Only entries at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// The audit directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// The log files of a directory, oldest first: rotated files by name, then
/// the live `audit.log`.
pub fn log_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut rotated = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("audit-") && name.ends_with(".log") {
            rotated.push(p);
        }
    }
    rotated.sort();
    let live = dir.join("audit.log");
    if live.exists() {
        rotated.push(live);
    }
    if rotated.is_empty() {
        bail!("no audit log files in {}", dir.display());
    }
    Ok(rotated)
}

pub fn run(output: Output, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            files,
            dir,
            public_key,
            allow_unsigned_tail,
        } => {
            let dir = match (&dir, files.first()) {
                (Some(d), _) => d.clone(),
                (None, Some(f)) => f.parent().map(Path::to_path_buf).unwrap_or_default(),
                (None, None) => bail!("give log files or --dir"),
            };
            let files = if files.is_empty() {
                log_files(&dir)?
            } else {
                files
            };
            let key_path = public_key.unwrap_or_else(|| dir.join(PUBLIC_KEY_FILE));
            let key = verify::load_public_key(&key_path).map_err(anyhow::Error::msg)?;
            let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            match verify::verify_files(&refs, &key, allow_unsigned_tail) {
                Ok(r) => {
                    match output {
                        Output::Json => print_json(&json!({
                            "ok": true, "files": r.files, "entries": r.entries,
                            "checkpoints": r.checkpoints, "first_seq": r.first_seq,
                            "last_seq": r.last_seq, "unsigned_tail": r.unsigned_tail,
                            "starts_mid_chain": r.starts_mid_chain,
                        }))?,
                        Output::Text => {
                            out!(
                                "OK: {} entries (seq {}..{}) in {} files, {} signed checkpoints",
                                r.entries,
                                r.first_seq,
                                r.last_seq,
                                r.files,
                                r.checkpoints
                            );
                            if r.unsigned_tail > 0 {
                                out!("warning: the last {} entries are not yet covered by a checkpoint", r.unsigned_tail);
                            }
                            if r.starts_mid_chain {
                                out!("note: the first file starts at seq {}, not at the genesis line", r.first_seq);
                            }
                        }
                    }
                    Ok(())
                }
                Err(b) => {
                    if output == Output::Json {
                        print_json(&json!({"ok": false, "seq": b.seq, "problem": b.what}))?;
                    }
                    bail!("audit log BROKEN at seq {}: {}", b.seq, b.what)
                }
            }
        }
        AuditCommand::Query { key, since, dir } => {
            let since = match since {
                Some(s) => Some(
                    humantime::parse_rfc3339_weak(&s)
                        .with_context(|| format!("--since {s:?}: expected RFC 3339"))?,
                ),
                None => None,
            };
            let mut rows = Vec::new();
            for f in log_files(&dir)? {
                let text = std::fs::read_to_string(&f)?;
                for line in text.lines() {
                    let Ok(v) = serde_json::from_str::<Value>(line) else {
                        continue;
                    };
                    let in_items = v["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| i["key"] == key));
                    let hit = v["key"] == key || v["detail"]["key"] == key || in_items;
                    if !hit {
                        continue;
                    }
                    if let Some(since) = since {
                        let t = v["time"]
                            .as_str()
                            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
                        if t.is_none_or(|t| t < since) {
                            continue;
                        }
                    }
                    rows.push(v);
                }
            }
            match output {
                Output::Json => print_json(&json!({"key": key, "entries": rows}))?,
                Output::Text => {
                    out!(
                        "{:<26} {:>6} {:<22} {:<10} {:<34} {:>4} OUTCOME",
                        "TIME",
                        "UID",
                        "PRINCIPAL",
                        "ROLE",
                        "OPERATION",
                        "VER"
                    );
                    for v in &rows {
                        let op = v["op"].as_str().or(v["event"].as_str()).unwrap_or("");
                        out!(
                            "{:<26} {:>6} {:<22} {:<10} {:<34} {:>4} {}{}",
                            v["time"].as_str().unwrap_or(""),
                            v["caller"]["uid"]
                                .as_u64()
                                .map(|u| u.to_string())
                                .unwrap_or_default(),
                            v["principal"].as_str().unwrap_or(""),
                            v["role"].as_str().unwrap_or(""),
                            op,
                            v["version"]
                                .as_u64()
                                .map(|u| u.to_string())
                                .unwrap_or_default(),
                            v["code"].as_str().or(v["outcome"].as_str()).unwrap_or(""),
                            if v["break_glass"] == true {
                                "  BREAK-GLASS"
                            } else {
                                ""
                            },
                        );
                    }
                }
            }
            Ok(())
        }
    }
}
