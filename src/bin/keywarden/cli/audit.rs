//! `keywarden audit ...`: verification, queries and tailing of the audit
//! log. Needs only the files (and the public key beside them), not the
//! daemon, except `--context`, whose HMACs only the daemon can compute.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::{out, print_json, Output};
use keywarden::audit::{verify, PUBLIC_KEY_FILE};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, the sequence and every checkpoint signature.
    Verify {
        /// Log files, oldest first (default: every file in --dir).
        files: Vec<PathBuf>,
        /// The audit directory (default: the directory of the first file).
        /// Repeat it for the logs of several cluster nodes: each node's
        /// chain is verified on its own, and all must hold.
        #[arg(long)]
        dir: Vec<PathBuf>,
        /// The public key (default: DIR/audit-signing.pub).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Accept entries after the last checkpoint (a live log).
        #[arg(long)]
        allow_unsigned_tail: bool,
    },
    /// The entries that match every filter given (all of them without one).
    Query {
        /// The audit directory. Repeat it for several cluster nodes' logs:
        /// their entries are merged by time.
        #[arg(long, required = true)]
        dir: Vec<PathBuf>,
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
    /// At or after this time (RFC 3339 in UTC, e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (RFC 3339 in UTC).
    #[arg(long)]
    pub until: Option<String>,
    /// Entries whose encryption context had this value (repeatable). The
    /// daemon computes the HMAC the log shows (auditors only, audited);
    /// the value itself is never in the log.
    #[arg(long = "context", value_name = "NAME=VALUE")]
    pub context: Vec<String>,
    /// As --context, one NAME=VALUE per line, from FILE (`-`: stdin), so
    /// that a patient's identifier is not on a command line other local
    /// users can read (/proc/PID/cmdline) or in the shell's history.
    #[arg(long, value_name = "FILE")]
    pub context_file: Option<PathBuf>,
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
        let mut given = f.context.clone();
        if let Some(file) = &f.context_file {
            let text = if file == Path::new("-") {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
                t
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("--context-file {}", file.display()))?
            };
            given.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        // Each name once: a repeated one is refused, not overwritten.
        let pairs = super::parse_context(&given)?;
        let context = if pairs.is_empty() {
            Vec::new()
        } else {
            let mut c = super::client(socket).await?;
            let r = c
                .operator
                .audit_hash(keywarden::proto::AuditHashRequest { context: pairs })
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
        // JSON as serde writes it (control characters escaped), one
        // entry per line; C1 controls and bidi marks too, for terminals.
        println!("{}", json_line(v));
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
        match (v["break_glass"] == true, v["node"].as_str()) {
            (true, Some(n)) => format!("  BREAK-GLASS  node {n}"),
            (true, None) => "  BREAK-GLASS".to_string(),
            (false, Some(n)) => format!("  node {n}"),
            (false, None) => String::new(),
        },
    );
}

/// Reads a directory's log, oldest line first, and then (when asked)
/// follows the live file as it grows and rotates, without missing or
/// repeating a line: the live file is opened first and kept, rotated files
/// that are that same file are skipped, and at a rotation the old file is
/// read to its end before the new one is opened.
struct LogReader {
    path: PathBuf,
    live: std::io::BufReader<std::fs::File>,
    ino: u64,
    /// Bytes of a line not yet ended by its newline.
    partial: Vec<u8>,
}

impl LogReader {
    fn open_live(path: &Path) -> anyhow::Result<(std::io::BufReader<std::fs::File>, u64)> {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let ino = f.metadata()?.ino();
        Ok((std::io::BufReader::new(f), ino))
    }

    /// Every line of `dir` written so far, to `each`; then the reader,
    /// positioned after them.
    fn history(dir: &Path, mut each: impl FnMut(Value)) -> anyhow::Result<LogReader> {
        use std::io::BufRead;
        use std::os::unix::fs::MetadataExt;
        let path = dir.join("audit.log");
        let (live, ino) = Self::open_live(&path)?;
        for f in log_files(dir)? {
            if f == path {
                continue;
            }
            // A file rotated since the live one was opened is that file.
            if std::fs::metadata(&f).is_ok_and(|m| m.ino() == ino) {
                continue;
            }
            let r = std::io::BufReader::new(
                std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?,
            );
            for line in r.split(b'\n') {
                if let Some(v) = parse(&line?) {
                    each(v);
                }
            }
        }
        let mut me = LogReader {
            path,
            live,
            ino,
            partial: Vec::new(),
        };
        me.read_available(&mut each)?;
        Ok(me)
    }

    /// The complete lines now in the live file; a partial one waits.
    fn read_available(&mut self, each: &mut impl FnMut(Value)) -> anyhow::Result<()> {
        use std::io::BufRead;
        loop {
            let n = self.live.read_until(b'\n', &mut self.partial)?;
            if n == 0 {
                return Ok(());
            }
            if self.partial.ends_with(b"\n") {
                if let Some(v) = parse(&self.partial) {
                    each(v);
                }
                self.partial.clear();
            }
        }
    }

    /// Follows the live file for ever.
    fn follow(mut self, mut each: impl FnMut(Value)) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        loop {
            self.read_available(&mut each)?;
            std::thread::sleep(std::time::Duration::from_millis(200));
            let Ok(m) = std::fs::metadata(&self.path) else {
                continue;
            };
            if m.ino() != self.ino {
                // Rotated: finish the old file (kept open), then the new.
                self.read_available(&mut each)?;
                (self.live, self.ino) = Self::open_live(&self.path)?;
                self.partial.clear();
            }
        }
    }
}

/// An entry as one line of JSON, with every character a terminal could
/// act on (C0, C1, bidi controls) written as a `\\u` escape.
fn json_line(v: &Value) -> String {
    let mut out = String::new();
    for c in v.to_string().chars() {
        if keywarden::core::validate::unprintable(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of the log, if it is a JSON object.
fn parse(line: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(line).ok()?;
    serde_json::from_str::<Value>(text.trim_end()).ok()
}

/// The log files of a directory, oldest first: rotated files by name, then
/// the live `audit.log`.
pub fn log_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = verify::log_files(dir, &dir.join("audit.log"))
        .with_context(|| format!("reading {}", dir.display()))?;
    if files.is_empty() {
        bail!("no audit log files in {}", dir.display());
    }
    Ok(files)
}

pub async fn run(output: Output, cmd: AuditCommand, socket: &Path) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            files,
            dir,
            public_key,
            allow_unsigned_tail,
        } => verify(
            output,
            VerifyJob {
                files,
                dirs: dir,
                public_key,
                allow_unsigned_tail,
            },
        ),
        AuditCommand::Query { dir, filters } => query(output, &dir, filters, socket).await,
        AuditCommand::Tail {
            dir,
            lines,
            follow,
            filters,
        } => {
            let job = TailJob {
                dir,
                lines,
                follow,
                filters,
            };
            tail(output, job, socket).await
        }
    }
}

/// What `audit verify` was asked to check.
struct VerifyJob {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    public_key: Option<PathBuf>,
    allow_unsigned_tail: bool,
}

/// `audit verify`: one chain (the files given, or those of one --dir), or
/// each node's (several --dir).
fn verify(output: Output, job: VerifyJob) -> anyhow::Result<()> {
    let VerifyJob {
        files,
        dirs,
        public_key,
        allow_unsigned_tail,
    } = job;
    if dirs.len() > 1 {
        if !files.is_empty() {
            bail!("several --dir: the files are found in each directory; give no file names");
        }
        return verify_nodes(output, &dirs, public_key.as_deref(), allow_unsigned_tail);
    }
    let dir = match (dirs.first(), files.first()) {
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
        Ok(r) => print_verified(output, &r),
        Err(b) => {
            if output == Output::Json {
                print_json(&json!({"ok": false, "seq": b.seq, "problem": b.what}))?;
            }
            bail!("audit log BROKEN at seq {}: {}", b.seq, b.what)
        }
    }
}

/// The report of a chain that verified.
fn print_verified(output: Output, r: &verify::Report) -> anyhow::Result<()> {
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
                out!(
                    "warning: the last {} entries are not yet covered by a checkpoint",
                    r.unsigned_tail
                );
            }
            if r.starts_mid_chain {
                out!(
                    "note: the first file starts at seq {}, not at the genesis line",
                    r.first_seq
                );
            }
        }
    }
    Ok(())
}

/// `audit query`: the matching entries of every --dir, merged by time when
/// there are several.
async fn query(
    output: Output,
    dirs: &[PathBuf],
    filters: Filters,
    socket: &Path,
) -> anyhow::Result<()> {
    let filter = Filter::new(filters, socket).await?;
    let mut rows = Vec::new();
    for d in dirs {
        LogReader::history(d, |v| {
            if filter.matches(&v) {
                rows.push(v);
            }
        })?;
    }
    if dirs.len() > 1 {
        // Several nodes: one timeline (RFC 3339 UTC times sort as
        // text; a node's own entries keep their order).
        rows.sort_by(|a, b| {
            a["time"]
                .as_str()
                .unwrap_or("")
                .cmp(b["time"].as_str().unwrap_or(""))
        });
    }
    match output {
        Output::Json => print_json(&json!({"entries": rows}))?,
        Output::Text => {
            print_header();
            rows.iter().for_each(|v| print_entry(output, v));
        }
    }
    Ok(())
}

/// What `audit tail` was asked to show.
struct TailJob {
    dir: PathBuf,
    lines: usize,
    follow: bool,
    filters: Filters,
}

/// `audit tail`: the last matching entries, then (--follow) new ones.
async fn tail(output: Output, job: TailJob, socket: &Path) -> anyhow::Result<()> {
    let TailJob {
        dir,
        lines,
        follow,
        filters,
    } = job;
    let filter = Filter::new(filters, socket).await?;
    let mut last = std::collections::VecDeque::with_capacity(lines.min(10_000) + 1);
    let reader = LogReader::history(&dir, |v| {
        if filter.matches(&v) {
            last.push_back(v);
            if last.len() > lines {
                last.pop_front();
            }
        }
    })?;
    if output == Output::Text {
        print_header();
    }
    last.iter().for_each(|v| print_entry(output, v));
    if follow {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::task::spawn_blocking(move || {
            reader.follow(|v| {
                if filter.matches(&v) {
                    print_entry(output, &v);
                    let _ = std::io::stdout().flush();
                }
            })
        })
        .await??;
    }
    Ok(())
}

/// `audit verify --dir A --dir B ...`: each node's log is its own chain
/// (its own genesis, sequence numbers and checkpoints, signed by the shared
/// HSM's key); each is verified, and each line must name one node.
fn verify_nodes(
    output: Output,
    dirs: &[PathBuf],
    public_key: Option<&Path>,
    allow_unsigned_tail: bool,
) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    let mut broken = None;
    let mut seen_nodes = std::collections::BTreeMap::new();
    for d in dirs {
        let files = log_files(d)?;
        let key_path = public_key
            .map(Path::to_path_buf)
            .unwrap_or_else(|| d.join(PUBLIC_KEY_FILE));
        let key = verify::load_public_key(&key_path).map_err(anyhow::Error::msg)?;
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let mut nodes = std::collections::BTreeSet::new();
        LogReader::history(d, |v| {
            nodes.insert(v["node"].as_str().unwrap_or("").to_string());
        })?;
        let node = nodes.iter().next().cloned().unwrap_or_default();
        if nodes.len() > 1 {
            broken.get_or_insert(format!(
                "{}: lines of several nodes in one log ({nodes:?})",
                d.display()
            ));
        }
        if let Some(other) = seen_nodes.insert(node.clone(), d.clone()) {
            broken.get_or_insert(format!(
                "{} and {}: both logs are node {node:?}",
                other.display(),
                d.display()
            ));
        }
        match verify::verify_files(&refs, &key, allow_unsigned_tail) {
            Ok(r) => reports.push(json!({
                "dir": d, "node": node, "ok": true, "entries": r.entries,
                "checkpoints": r.checkpoints, "first_seq": r.first_seq, "last_seq": r.last_seq,
                "unsigned_tail": r.unsigned_tail,
            })),
            Err(b) => {
                broken.get_or_insert(format!(
                    "{} (node {node:?}): BROKEN at seq {}: {}",
                    d.display(),
                    b.seq,
                    b.what
                ));
                reports.push(
                    json!({"dir": d, "node": node, "ok": false, "seq": b.seq, "problem": b.what}),
                );
            }
        }
    }
    match output {
        Output::Json => print_json(&json!({"ok": broken.is_none(), "nodes": reports}))?,
        Output::Text => {
            for r in &reports {
                if r["ok"] == json!(true) {
                    out!(
                        "OK: node {} ({}): {} entries (seq {}..{}), {} signed checkpoints{}",
                        r["node"].as_str().unwrap_or(""),
                        r["dir"].as_str().unwrap_or(""),
                        r["entries"],
                        r["first_seq"],
                        r["last_seq"],
                        r["checkpoints"],
                        if r["unsigned_tail"].as_u64().unwrap_or(0) > 0 {
                            format!(
                                "; the last {} entries not yet covered by a checkpoint",
                                r["unsigned_tail"]
                            )
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
    }
    match broken {
        Some(b) => bail!("audit logs: {b}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(p: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn seq(v: &Value) -> u64 {
        v["seq"].as_u64().unwrap()
    }

    #[test]
    fn follow_reads_every_line_once_across_rotations_and_partial_writes() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.log");
        append(
            &dir.path().join("audit-000000000001.log"),
            "{\"seq\":0}\n{\"seq\":1}\n",
        );
        append(&live, "{\"seq\":2}\n{\"seq\":3");
        let mut seen = Vec::new();
        let reader = LogReader::history(dir.path(), |v| seen.push(seq(&v))).unwrap();
        // The partial line waits for its newline.
        assert_eq!(seen, [0, 1, 2]);

        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = reader.follow(|v| {
                let _ = tx.send(seq(&v));
            });
        });
        append(&live, "}\n{\"seq\":4}\n");
        // A rotation right after a write: the old file's last lines and
        // the new file's first come in order, once each.
        append(&live, "{\"seq\":5}\n");
        std::fs::rename(&live, dir.path().join("audit-000000000005.log")).unwrap();
        append(&live, "{\"seq\":6}\n");
        // A multi-byte character split across two writes.
        append(&live, "{\"seq\":7,\"k\":\"\u{e9}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        append(&live, "\"}\n");
        let got: Vec<u64> = (0..5)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, [3, 4, 5, 6, 7]);
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(600))
            .is_err());
    }

    #[test]
    fn history_skips_a_rotated_file_that_is_the_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.log");
        append(&live, "{\"seq\":0}\n");
        // The same file under a rotated name too (a rotation racing the
        // listing): its lines are read once.
        std::fs::hard_link(&live, dir.path().join("audit-000000000000.log")).unwrap();
        let mut seen = Vec::new();
        LogReader::history(dir.path(), |v| seen.push(seq(&v))).unwrap();
        assert_eq!(seen, [0]);
    }

    #[test]
    fn json_lines_escape_what_a_terminal_would_act_on() {
        let v = json!({"k": "a\u{9b}b\u{202e}c\u{1b}"});
        let line = json_line(&v);
        assert_eq!(line, r#"{"k":"a\u009bb\u202ec\u001b"}"#);
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
    }
}
