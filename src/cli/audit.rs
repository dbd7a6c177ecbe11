//! `keywarden audit ...`: verification, queries and tailing of the audit
//! log. Needs only the files (and the public key beside them), not the
//! daemon, except `--context`, whose HMACs only the daemon can compute.

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
    /// The entries that match every filter given (all of them without one).
    Query {
        /// The audit directory.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        filters: Filters,
    },
    /// The last entries, then (with --follow) new ones as they are written.
    Tail {
        /// The audit directory.
        #[arg(long)]
        dir: PathBuf,
        /// How many of the last matching entries to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing entries as they are written (across rotations).
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        filters: Filters,
    },
}

/// Which entries a query or tail shows: each filter given must match.
#[derive(Debug, Default, clap::Args)]
pub struct Filters {
    /// Entries naming this key (alone or as a batch item).
    #[arg(long)]
    pub key: Option<String>,
    /// Entries of this principal (the policy's name for the caller).
    #[arg(long)]
    pub principal: Option<String>,
    /// The operation (`GenerateDataKey`, `Decrypt`...) or event (`unseal`...).
    #[arg(long = "op", value_name = "OP")]
    pub op: Option<String>,
    /// `ok`, `error`, `denied`, or a gRPC code (`PERMISSION_DENIED`).
    #[arg(long)]
    pub outcome: Option<String>,
    /// At or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Entries whose encryption context had this value (repeatable). The
    /// daemon computes the HMAC the log shows (auditors only, audited);
    /// the value itself is never in the log.
    #[arg(long = "context", value_name = "NAME=VALUE")]
    pub context: Vec<String>,
}

/// [`Filters`], parsed: times read, context values replaced by HMACs.
#[derive(Debug, Default)]
pub struct Filter {
    key: Option<String>,
    principal: Option<String>,
    op: Option<String>,
    outcome: Option<String>,
    since: Option<std::time::SystemTime>,
    until: Option<std::time::SystemTime>,
    /// (name, HMAC of the value) pairs that one context must all hold.
    context: Vec<(String, String)>,
}

/// A code or outcome compared loosely: `PERMISSION_DENIED`,
/// `PermissionDenied` and `permission-denied` are one.
fn loose(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn time_arg(flag: &str, s: &Option<String>) -> anyhow::Result<Option<std::time::SystemTime>> {
    s.as_ref()
        .map(|s| {
            humantime::parse_rfc3339_weak(s)
                .with_context(|| format!("{flag} {s:?}: expected RFC 3339"))
        })
        .transpose()
}

impl Filter {
    /// Parses the filters; `--context` asks the daemon at `socket` for the
    /// HMACs (the one part that is not offline).
    pub async fn new(f: Filters, socket: &Path) -> anyhow::Result<Filter> {
        let mut pairs = std::collections::HashMap::new();
        for c in &f.context {
            let Some((k, v)) = c.split_once('=') else {
                bail!("--context {c:?}: expected NAME=VALUE");
            };
            pairs.insert(k.to_string(), v.to_string());
        }
        let context = if pairs.is_empty() {
            Vec::new()
        } else {
            let mut c = super::client(socket).await?;
            let r = c
                .operator
                .audit_hash(crate::proto::AuditHashRequest { context: pairs })
                .await
                .map_err(super::status_error)?
                .into_inner();
            let mut v: Vec<(String, String)> = r.hashes.into_iter().collect();
            v.sort();
            v
        };
        Ok(Filter {
            since: time_arg("--since", &f.since)?,
            until: time_arg("--until", &f.until)?,
            key: f.key,
            principal: f.principal,
            op: f.op,
            outcome: f.outcome.as_deref().map(loose),
            context,
        })
    }

    /// Whether an entry passes every filter given.
    pub fn matches(&self, v: &Value) -> bool {
        let items = v["items"].as_array();
        if let Some(key) = &self.key {
            let in_items = items.is_some_and(|items| items.iter().any(|i| i["key"] == **key));
            if !(v["key"] == **key || v["detail"]["key"] == **key || in_items) {
                return false;
            }
        }
        if let Some(p) = &self.principal {
            if v["principal"] != **p {
                return false;
            }
        }
        if let Some(op) = &self.op {
            if v["op"] != **op && v["event"] != **op {
                return false;
            }
        }
        if let Some(o) = &self.outcome {
            let hit = ["outcome", "code"]
                .iter()
                .any(|f| v[*f].as_str().is_some_and(|x| loose(x) == *o));
            if !hit {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = v["time"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        if !self.context.is_empty() {
            let holds = |c: &Value| self.context.iter().all(|(k, h)| c[k] == **h);
            let in_items = items.is_some_and(|items| items.iter().any(|i| holds(&i["context"])));
            if !(holds(&v["context"]) || in_items) {
                return false;
            }
        }
        true
    }
}

const HEADER: [&str; 7] = [
    "TIME",
    "UID",
    "PRINCIPAL",
    "ROLE",
    "OPERATION",
    "VER",
    "OUTCOME",
];

fn print_header() {
    out!(
        "{:<26} {:>6} {:<22} {:<10} {:<34} {:>4} {}",
        HEADER[0],
        HEADER[1],
        HEADER[2],
        HEADER[3],
        HEADER[4],
        HEADER[5],
        HEADER[6]
    );
}

/// One entry as a table row (text) or as its JSON line.
fn print_entry(output: Output, v: &Value) {
    if output == Output::Json {
        out!("{v}");
        return;
    }
    let op = v["op"]
        .as_str()
        .or(v["event"].as_str())
        .or(v["type"].as_str())
        .unwrap_or("");
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

/// Every entry of a directory's files, oldest first.
fn entries(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for f in log_files(dir)? {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        rows.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
        );
    }
    Ok(rows)
}

/// Prints entries written to `dir/audit.log` from now on, following the
/// file across rotations (a new file at the path is read from its start).
fn follow(output: Output, dir: &Path, filter: &Filter) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Seek};
    use std::os::unix::fs::MetadataExt;
    let path = dir.join("audit.log");
    let open = |from_end: bool| -> anyhow::Result<(BufReader<std::fs::File>, u64)> {
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let ino = f.metadata()?.ino();
        if from_end {
            f.seek(std::io::SeekFrom::End(0))?;
        }
        Ok((BufReader::new(f), ino))
    };
    let (mut r, mut ino) = open(true)?;
    let mut partial = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n > 0 {
            partial.push_str(&line);
            if !partial.ends_with('\n') {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(partial.trim_end()) {
                if filter.matches(&v) {
                    print_entry(output, &v);
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
            partial.clear();
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Rotated: the rest of the old file was read; go on with the new one.
        if let Ok(m) = std::fs::metadata(&path) {
            if m.ino() != ino {
                (r, ino) = open(false)?;
                partial.clear();
            }
        }
    }
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

pub async fn run(output: Output, cmd: AuditCommand, socket: &Path) -> anyhow::Result<()> {
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
        AuditCommand::Query { dir, filters } => {
            let filter = Filter::new(filters, socket).await?;
            let rows: Vec<Value> = entries(&dir)?
                .into_iter()
                .filter(|v| filter.matches(v))
                .collect();
            match output {
                Output::Json => print_json(&json!({"entries": rows}))?,
                Output::Text => {
                    print_header();
                    rows.iter().for_each(|v| print_entry(output, v));
                }
            }
            Ok(())
        }
        AuditCommand::Tail {
            dir,
            lines,
            follow: keep_on,
            filters,
        } => {
            let filter = Filter::new(filters, socket).await?;
            let rows: Vec<Value> = entries(&dir)?
                .into_iter()
                .filter(|v| filter.matches(v))
                .collect();
            if output == Output::Text {
                print_header();
            }
            rows[rows.len().saturating_sub(lines)..]
                .iter()
                .for_each(|v| print_entry(output, v));
            if keep_on {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                tokio::task::spawn_blocking(move || follow(output, &dir, &filter)).await??;
            }
            Ok(())
        }
    }
}
