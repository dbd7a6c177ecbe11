//! The tamper-evident audit log.
//!
//! One JSON line per event (sorted keys, no spaces): `seq`, `time`, `prev`
//! (the SHA-256 of the previous line, a hash chain from a genesis line) and
//! the event's fields. Every `checkpoint_every` lines, and at every seal,
//! unseal and shutdown, a `checkpoint` line carries an ECDSA P-256 signature
//! made by a key inside the HSM over the SHA-256 of the line without its
//! `sig` field; since that line contains `prev`, it signs the whole chain
//! before it. `keywarden audit verify` checks all of it offline.
//!
//! Writes are durable before they are acknowledged (write + fdatasync),
//! group-committed across concurrent requests by one writer thread. A
//! request is answered only after its line is acknowledged; if the log
//! cannot be written, key operations fail with UNAVAILABLE until it can.
//! Events never carry key material, shares, PINs, plaintext or context
//! values (context values appear only as HMACs under a keyring key).

mod disk;
pub mod event;
pub mod forward;
pub mod scan;
pub mod severity;
pub mod verify;

pub use disk::DiskSpace;
pub use event::{AuditSink, Event, EventKind, MemorySink, NullSink, Outcome};

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Signs a 32-byte digest (with the HSM's audit key); returns r||s.
pub type Signer = Arc<dyn Fn(&[u8; 32]) -> Result<Vec<u8>, crate::hsm::HsmError> + Send + Sync>;

/// Name of the public key file beside the log.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_BATCH: usize = 4096;
/// The longest the writer holds a commit open for lines that calls already
/// in progress have promised ([`Audit::promise`]): a commit (write and
/// fdatasync) costs the same for one line as for twenty, so under load
/// waiting a little makes fewer, fuller commits. With nothing promised (a
/// lone call) it commits at once.
const GATHER: std::time::Duration = std::time::Duration::from_micros(200);
/// How often the writer looks again at what is promised while it gathers.
const GATHER_SLICE: std::time::Duration = std::time::Duration::from_micros(25);

/// Why the log could not be opened or written, or why an entry or a
/// checkpoint was refused. Cloned to every waiter of a failed batch and
/// kept as the log's health, hence the `Arc`s.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A file operation failed; `doing` says which ("opening", "writing"...).
    #[error("{doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// The last line of an existing log could not be read.
    #[error("{}: {source}", path.display())]
    ReadLastLine {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("the last audit line does not parse: {0}")]
    LastLineUnparsable(Arc<serde_json::Error>),
    #[error("the last audit line has no seq")]
    LastLineWithoutSeq,
    #[error("audit file not open")]
    NotOpen,
    #[error("starting the audit writer: {0}")]
    StartWriter(Arc<std::io::Error>),
    /// An entry or checkpoint was refused because the log cannot be
    /// written (the health's error inside).
    #[error("audit log unavailable: {0}")]
    Unwritable(Box<AuditError>),
    /// A checkpoint was asked for while sealed.
    #[error("audit log unavailable: no signing key (sealed)")]
    NoSigner,
    /// The HSM could not sign a checkpoint.
    #[error("audit log unavailable: {0}")]
    Signing(crate::hsm::HsmError),
    #[error("audit log unavailable: audit writer stopped")]
    WriterStopped,
    /// A restored deployment's log was to continue an earlier chain, but a
    /// log is already there.
    #[error("{}: a log is already there; a restored deployment's log starts in an empty directory", .0.display())]
    ResumeOverExisting(PathBuf),
}

impl AuditError {
    fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
        let path = path.to_path_buf();
        move |e| AuditError::Io {
            doing,
            path,
            source: Arc::new(e),
        }
    }

    fn last_line(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
        let path = path.to_path_buf();
        move |e| AuditError::ReadLastLine {
            path,
            source: Arc::new(e),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub file: PathBuf,
    pub checkpoint_every: u64,
    pub max_file_bytes: u64,
    /// Where every durable line is also sent (`[audit.forward]`).
    pub forward: Option<forward::ForwardConfig>,
    /// A cluster node's id, written into every line (`node`), so that the
    /// logs of several nodes can be merged and told apart.
    pub node: Option<String>,
}

/// Where a job's outcome goes: a blocking waiter or an async one.
enum Ack {
    Sync(Sender<Result<u64, AuditError>>),
    Async(tokio::sync::oneshot::Sender<Result<u64, AuditError>>),
}

impl Ack {
    fn send(self, r: Result<u64, AuditError>) {
        match self {
            Ack::Sync(s) => {
                let _ = s.send(r);
            }
            Ack::Async(s) => {
                let _ = s.send(r);
            }
        }
    }
}

/// An entry on its way to the writer.
struct Entry {
    fields: Map<String, Value>,
    ack: Ack,
    /// When it was queued (the hand-off's wait is measured).
    queued: std::time::Instant,
    /// The promise of this line, kept until the writer has it, so that a
    /// line already queued is never waited for as a promised one.
    promise: Option<Promise>,
}

impl Entry {
    fn new(fields: Map<String, Value>, ack: Ack, promise: Option<Promise>) -> Self {
        Entry {
            fields,
            ack,
            queued: std::time::Instant::now(),
            promise,
        }
    }
}

enum Job {
    Entry(Entry),
    Checkpoint(String, Ack),
    /// The last line written (its seq and hash), after every job before it.
    Head(Sender<(u64, String)>),
}

/// A line that a call in progress will write ([`Audit::promise`]).
pub struct Promise(Arc<Shared>);

impl Drop for Promise {
    fn drop(&mut self) {
        self.0
            .promised
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: Arc<Mutex<Sender<Job>>>,
    state: Arc<Shared>,
}

struct Shared {
    health: Mutex<Result<(), AuditError>>,
    signer: Mutex<Option<Signer>>,
    dir: PathBuf,
    /// The live file (rotated files sit beside it).
    live: PathBuf,
    /// The highest registry generation known: every line carries it, so
    /// the log witnesses the registry's history (a registry older than the
    /// last line's generation was rolled back).
    registry_generation: std::sync::atomic::AtomicU64,
    /// This process found no log and began a new chain.
    new_chain: bool,
    /// The key that turns context values into the HMACs the log shows; set
    /// while unsealed (it comes from the keyring), `None` while sealed.
    context_key: Mutex<Option<zeroize::Zeroizing<[u8; 32]>>>,
    /// Where commit times, failures and the queue's depth are recorded.
    metrics: Mutex<Option<Arc<crate::metrics::Metrics>>>,
    /// Sends each durable line on to a SIEM, if configured.
    forward: Option<forward::Forwarder>,
    /// Lines promised by calls in progress, not yet queued.
    promised: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn metrics(&self) -> Option<Arc<crate::metrics::Metrics>> {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Writer {
    config: AuditConfig,
    file: Option<(File, u64, u64)>, // file, inode, device
    size: u64,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    last_was_checkpoint: bool,
    shared: Arc<Shared>,
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The canonical text of a JSON object: sorted keys, compact.
pub fn canonical(map: &Map<String, Value>) -> String {
    // A map serialises as the object it is (keys sorted, compact), without
    // a copy into a `Value` first: the same bytes. Serialising a map of JSON
    // values to a string cannot fail; were it to, the copy's text stands in.
    serde_json::to_string(map).unwrap_or_else(|_| Value::Object(map.clone()).to_string())
}

/// Reads the last complete line of a file, truncating an unacknowledged
/// partial line left by a crash.
fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // The last line is short, except a ledger line of a key with a long
    // history: widen the window until it holds the line's start.
    let mut window = 256 * 1024u64;
    let (start, buf) = loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let complete = buf
            .iter()
            .rposition(|&b| b == b'\n')
            .is_some_and(|end| buf[..end].contains(&b'\n'));
        if start == 0 || complete || window >= 64 << 20 {
            break (start, buf);
        }
        window *= 4;
    };
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok(None);
    };
    if end + 1 < buf.len() {
        // Bytes after the last newline were never acknowledged.
        f.set_len(start + end as u64 + 1)?;
        f.sync_all()?;
    }
    let body = &buf[..end];
    let line_start = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    Ok(Some(
        String::from_utf8_lossy(&body[line_start..]).into_owned(),
    ))
}

/// What [`gather`] took: the jobs, and how long each entry waited in the
/// queue before the writer had it.
#[derive(Default)]
struct Gathered {
    jobs: Vec<Job>,
    waits: Vec<std::time::Duration>,
    /// A thread is blocked on one of the jobs (a synchronous entry, a
    /// checkpoint, the head): the commit does not wait for more.
    blocking: bool,
}

impl Gathered {
    fn take(&mut self, mut job: Job) {
        match &mut job {
            Job::Entry(e) => {
                self.waits.push(e.queued.elapsed());
                // The line is here: it is no longer promised.
                drop(e.promise.take());
                self.blocking |= matches!(e.ack, Ack::Sync(_));
            }
            Job::Checkpoint(..) | Job::Head(_) => self.blocking = true,
        }
        self.jobs.push(job);
    }
}

/// Takes what is queued after `first`, then, while calls in progress have
/// promised lines (`promised`), waits for them up to `window`. It stops
/// waiting once a job a thread is blocked on is among them (that thread
/// may itself hold a promise that this commit would wait out).
fn gather(
    rx: &Receiver<Job>,
    first: Job,
    promised: &std::sync::atomic::AtomicUsize,
    window: std::time::Duration,
) -> Gathered {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::RecvTimeoutError;
    let mut g = Gathered::default();
    g.take(first);
    let start = std::time::Instant::now();
    loop {
        while g.jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => g.take(j),
                Err(_) => break,
            }
        }
        let left = window.saturating_sub(start.elapsed());
        if g.jobs.len() >= MAX_BATCH
            || g.blocking
            || promised.load(Ordering::Acquire) == 0
            || left.is_zero()
        {
            return g;
        }
        match rx.recv_timeout(left.min(GATHER_SLICE)) {
            Ok(j) => g.take(j),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return g,
        }
    }
}

impl Writer {
    fn ensure_open(&mut self) -> Result<(), AuditError> {
        let path = &self.config.file;
        // Reopen when the path now names another file (rotated, replaced,
        // removed) so that a fixed path resumes the log.
        let current = std::fs::metadata(path).ok().map(|m| (m.ino(), m.dev()));
        if let Some((_, ino, dev)) = &self.file {
            if current == Some((*ino, *dev)) {
                return Ok(());
            }
        }
        self.file = None;
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(AuditError::io("opening", path))?;
        let m = f.metadata().map_err(AuditError::io("stat", path))?;
        self.size = m.len();
        self.file = Some((f, m.ino(), m.dev()));
        Ok(())
    }

    fn line_for(&self, fields: &mut Map<String, Value>, seq: u64, prev: &str) -> String {
        fields.insert("seq".into(), json!(seq));
        fields.insert(
            "registry_generation".into(),
            json!(self
                .shared
                .registry_generation
                .load(std::sync::atomic::Ordering::Acquire)),
        );
        fields.insert("prev".into(), json!(prev));
        fields.entry("time").or_insert_with(|| json!(now_text()));
        if let Some(n) = &self.config.node {
            fields.insert("node".into(), json!(n));
        }
        canonical(fields)
    }

    /// Writes lines durably; on failure nothing advances. `severities`
    /// (one per line, or none: all routine) tell the forwarder which lines
    /// to keep when its queue is full.
    fn commit(
        &mut self,
        lines: &[String],
        severities: &[severity::Severity],
    ) -> Result<(), AuditError> {
        let start = std::time::Instant::now();
        let r = self.commit_untimed(lines, severities);
        if let Some(m) = self.shared.metrics() {
            m.audit_commit(lines.len(), start.elapsed(), r.is_ok());
        }
        r
    }

    fn commit_untimed(
        &mut self,
        lines: &[String],
        severities: &[severity::Severity],
    ) -> Result<(), AuditError> {
        self.ensure_open()?;
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        let before = self.size;
        let Some((f, _, _)) = self.file.as_mut() else {
            return Err(AuditError::NotOpen);
        };
        let r = f.write_all(&buf).and_then(|_| f.sync_data());
        if let Err(e) = r {
            // Nothing of a failed batch may stay behind: cut it off (a
            // device that refuses writes refuses this too, harmlessly).
            let _ = f.set_len(before);
            self.file = None;
            return Err(AuditError::io("writing", &self.config.file)(e));
        }
        self.size += buf.len() as u64;
        if let Some(f) = &self.shared.forward {
            for (i, l) in lines.iter().enumerate() {
                let sev = severities
                    .get(i)
                    .copied()
                    .unwrap_or(severity::Severity::Informational);
                f.offer(l, sev);
            }
        }
        Ok(())
    }

    fn set_health(&self, h: Result<(), AuditError>) {
        *self.shared.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    fn write_entries(&mut self, entries: Vec<(Map<String, Value>, Ack)>) {
        let mut lines = Vec::with_capacity(entries.len());
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let mut seqs = Vec::with_capacity(entries.len());
        let mut acks = Vec::with_capacity(entries.len());
        let forwarding = self.shared.forward.is_some();
        let mut severities = Vec::with_capacity(if forwarding { entries.len() } else { 0 });
        for (mut fields, ack) in entries {
            acks.push(ack);
            if forwarding {
                severities.push(severity::of_fields(&fields));
            }
            let line = self.line_for(&mut fields, seq, &prev);
            prev = sha256_hex(line.as_bytes());
            seqs.push(seq);
            seq += 1;
            lines.push(line);
        }
        match self.commit(&lines, &severities) {
            Ok(()) => {
                self.seq = seq;
                self.prev = prev;
                self.since_checkpoint += lines.len() as u64;
                self.last_was_checkpoint = false;
                self.set_health(Ok(()));
                for (ack, s) in acks.into_iter().zip(seqs) {
                    ack.send(Ok(s));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; key operations are refused until it works");
                self.set_health(Err(e.clone()));
                for ack in acks {
                    ack.send(Err(AuditError::Unwritable(Box::new(e.clone()))));
                }
            }
        }
    }

    fn checkpoint(&mut self, reason: &str) -> Result<u64, AuditError> {
        let signer = self
            .shared
            .signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(signer) = signer else {
            return Err(AuditError::NoSigner);
        };
        let mut body = Map::new();
        body.insert("type".into(), json!("checkpoint"));
        body.insert("reason".into(), json!(reason));
        body.insert("entries_since_last".into(), json!(self.since_checkpoint));
        body.insert(
            "registry_generation".into(),
            json!(self
                .shared
                .registry_generation
                .load(std::sync::atomic::Ordering::Acquire)),
        );
        body.insert("seq".into(), json!(self.seq));
        body.insert("prev".into(), json!(self.prev));
        body.insert("time".into(), json!(now_text()));
        if let Some(n) = &self.config.node {
            body.insert("node".into(), json!(n));
        }
        let digest: [u8; 32] = Sha256::digest(canonical(&body).as_bytes()).into();
        let sig = signer(&digest).map_err(AuditError::Signing)?;
        body.insert("sig".into(), json!(hex::encode(sig)));
        let line = canonical(&body);
        self.commit(std::slice::from_ref(&line), &[]).map_err(|e| {
            self.set_health(Err(e.clone()));
            AuditError::Unwritable(Box::new(e))
        })?;
        let s = self.seq;
        self.seq += 1;
        self.prev = sha256_hex(line.as_bytes());
        self.since_checkpoint = 0;
        self.last_was_checkpoint = true;
        Ok(s)
    }

    fn maybe_rotate(&mut self) {
        if self.size < self.config.max_file_bytes || !self.last_was_checkpoint {
            return;
        }
        let dir = self.config.file.parent().unwrap_or(Path::new("."));
        let rotated = dir.join(format!("audit-{:012}.log", self.seq.saturating_sub(1)));
        match std::fs::rename(&self.config.file, &rotated) {
            Ok(()) => {
                self.file = None;
                tracing::info!(file = %rotated.display(), "audit log rotated");
            }
            Err(e) => tracing::warn!(error = %e, "audit log rotation failed"),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let Gathered { jobs, waits, .. } = gather(&rx, first, &self.shared.promised, GATHER);
            let metrics = self.shared.metrics();
            if let Some(m) = &metrics {
                m.audit_queued(-(jobs.len() as i64));
                m.audit_waited(waits.into_iter());
            }
            let mut entries = Vec::new();
            let mut checkpoints = Vec::new();
            let mut heads = Vec::new();
            for j in jobs {
                match j {
                    Job::Entry(e) => entries.push((e.fields, e.ack)),
                    Job::Checkpoint(reason, ack) => checkpoints.push((reason, ack)),
                    Job::Head(ack) => heads.push(ack),
                }
            }
            if !entries.is_empty() {
                self.write_entries(entries);
            }
            for (reason, ack) in checkpoints {
                let r = self.checkpoint(&reason);
                ack.send(r);
            }
            for ack in heads {
                let _ = ack.send((self.seq.saturating_sub(1), self.prev.clone()));
            }
            if self.since_checkpoint >= self.config.checkpoint_every {
                if let Err(e) = self.checkpoint("interval") {
                    tracing::debug!(error = %e, "interval checkpoint deferred");
                }
            }
            self.maybe_rotate();
        }
    }
}

impl Audit {
    /// Opens the log, resuming the chain from its last line (or writing a
    /// genesis line), and starts the writer thread.
    pub fn open(config: AuditConfig) -> Result<Self, AuditError> {
        Self::open_after(config, None)
    }

    /// [`Audit::open`]; where there is no log yet and `resume` gives the
    /// seq and hash of a line of an earlier log (a restored deployment's
    /// trail), the new log continues that chain instead of starting a
    /// genesis line, so the old trail and the new log verify as one.
    pub fn open_after(
        config: AuditConfig,
        resume: Option<(u64, String)>,
    ) -> Result<Self, AuditError> {
        let dir = config
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir).map_err(AuditError::io("creating", &dir))?;
        let mut last = last_line(&config.file).map_err(AuditError::last_line(&config.file))?;
        if last.is_none() {
            // The live file may have just been rotated away (at the final
            // checkpoint of a shutdown): resume the chain from the newest
            // rotated file rather than starting a second genesis.
            let mut rotated: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(AuditError::io("reading", &dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log"))
                })
                .collect();
            rotated.sort();
            if let Some(newest) = rotated.last() {
                last = last_line(newest).map_err(AuditError::last_line(newest))?;
            }
        }
        if resume.is_some() && last.is_some() {
            return Err(AuditError::ResumeOverExisting(config.file.clone()));
        }
        let last_value: Option<Value> = match &last {
            Some(line) => Some(
                serde_json::from_str(line)
                    .map_err(|e| AuditError::LastLineUnparsable(Arc::new(e)))?,
            ),
            None => None,
        };
        // Lines written before the log carried the field count as 0: the
        // log then witnesses nothing, and a registry with history is
        // reported until an operator acknowledges it.
        let witnessed = last_value
            .as_ref()
            .and_then(|v| v["registry_generation"].as_u64())
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            health: Mutex::new(Ok(())),
            signer: Mutex::new(None),
            dir,
            live: config.file.clone(),
            registry_generation: std::sync::atomic::AtomicU64::new(witnessed),
            new_chain: last.is_none(),
            context_key: Mutex::new(None),
            metrics: Mutex::new(None),
            promised: std::sync::atomic::AtomicUsize::new(0),
            forward: match &config.forward {
                Some(c) => Some(
                    forward::Forwarder::start(c.clone())
                        .map_err(|e| AuditError::StartWriter(Arc::new(e)))?,
                ),
                None => None,
            },
        });
        let mut w = Writer {
            config,
            file: None,
            size: 0,
            seq: 0,
            prev: GENESIS_PREV.to_string(),
            since_checkpoint: 0,
            last_was_checkpoint: false,
            shared: shared.clone(),
        };
        match (last, last_value) {
            (Some(line), Some(v)) => {
                let seq = v["seq"].as_u64().ok_or(AuditError::LastLineWithoutSeq)?;
                w.seq = seq + 1;
                w.prev = sha256_hex(line.as_bytes());
                w.last_was_checkpoint = v["type"] == "checkpoint";
            }
            _ if resume.is_some() => {
                if let Some((seq, prev)) = resume {
                    w.seq = seq.saturating_add(1);
                    w.prev = prev;
                }
            }
            _ => {
                let mut g = Map::new();
                g.insert("type".into(), json!("genesis"));
                g.insert("version".into(), json!(crate::VERSION));
                let line = w.line_for(&mut g, 0, GENESIS_PREV);
                w.commit(std::slice::from_ref(&line), &[])?;
                w.seq = 1;
                w.prev = sha256_hex(line.as_bytes());
            }
        }
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| AuditError::StartWriter(Arc::new(e)))?;
        let audit = Audit {
            tx: Arc::new(Mutex::new(tx)),
            state: shared,
        };
        Ok(audit)
    }

    fn send(&self, job: Job) -> Result<(), AuditError> {
        let metrics = self.state.metrics();
        if let Some(m) = &metrics {
            m.audit_queued(1);
        }
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| AuditError::WriterStopped);
        if let (Err(_), Some(m)) = (&sent, &metrics) {
            m.audit_queued(-1);
        }
        sent
    }

    /// Writes an entry and waits until it is durable (blocking).
    pub fn record(&self, fields: Map<String, Value>) -> Result<u64, AuditError> {
        let (tx, rx) = channel();
        self.send(Job::Entry(Entry::new(bounded(fields), Ack::Sync(tx), None)))?;
        rx.recv().map_err(|_| AuditError::WriterStopped)?
    }

    /// Writes a ledger entry (a registry record as written, with its MAC)
    /// and waits until it is durable. Not bounded like other entries: the
    /// fields are the daemon's own, already validated, and a cut record
    /// would not verify when a restore replays it.
    pub fn record_ledger(&self, fields: Map<String, Value>) -> Result<u64, AuditError> {
        let (tx, rx) = channel();
        self.send(Job::Entry(Entry::new(fields, Ack::Sync(tx), None)))?;
        rx.recv().map_err(|_| AuditError::WriterStopped)?
    }

    /// Writes an entry and waits until it is durable (async).
    pub async fn record_async(&self, fields: Map<String, Value>) -> Result<u64, AuditError> {
        self.queue_async(fields, None)?.await
    }

    /// Queues an entry with the [`Promise`] its call made, if any (the
    /// writer releases it when it takes the line); the future answers when
    /// the line is durable.
    pub fn queue_async(
        &self,
        fields: Map<String, Value>,
        promise: Option<Promise>,
    ) -> Result<impl std::future::Future<Output = Result<u64, AuditError>>, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Entry(Entry::new(
            bounded(fields),
            Ack::Async(tx),
            promise,
        )))?;
        Ok(async move { rx.await.map_err(|_| AuditError::WriterStopped)? })
    }

    /// Promises a line soon (a data-path call that has started): the
    /// writer holds a commit open briefly for promised lines. Dropping
    /// the promise withdraws it, queued or not.
    pub fn promise(&self) -> Promise {
        self.state
            .promised
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Promise(self.state.clone())
    }

    /// The chain's head: the seq and hash of the last line written once
    /// every entry sent before this call is written (blocking).
    pub fn head(&self) -> Result<(u64, String), AuditError> {
        let (tx, rx) = channel();
        self.send(Job::Head(tx))?;
        rx.recv().map_err(|_| AuditError::WriterStopped)
    }

    /// Writes a signed checkpoint (blocking).
    pub fn checkpoint(&self, reason: &str) -> Result<u64, AuditError> {
        let (tx, rx) = channel();
        self.send(Job::Checkpoint(reason.to_string(), Ack::Sync(tx)))?;
        rx.recv().map_err(|_| AuditError::WriterStopped)?
    }

    /// Installs (unsealed) or removes (sealed) the checkpoint signer.
    pub fn set_signer(&self, signer: Option<Signer>) {
        *self.state.signer.lock().unwrap_or_else(|p| p.into_inner()) = signer;
    }

    /// Writes the public key beside the log (hex of the SEC1 point).
    pub fn publish_public_key(&self, point: &[u8]) -> Result<(), AuditError> {
        let path = self.state.dir.join(PUBLIC_KEY_FILE);
        let text = format!("{}\n", hex::encode(point));
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        std::fs::write(&path, text).map_err(AuditError::io("writing", &path))
    }

    /// Records commit times, failures and the queue's depth into `m`.
    pub fn set_metrics(&self, m: Arc<crate::metrics::Metrics>) {
        *self.state.metrics.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
    }

    /// The public key file beside the log.
    pub fn public_key_path(&self) -> PathBuf {
        self.state.dir.join(PUBLIC_KEY_FILE)
    }

    /// Raises the registry generation that the following lines carry.
    pub fn note_registry_generation(&self, generation: u64) {
        self.state
            .registry_generation
            .fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
    }

    /// The highest registry generation the log has recorded.
    /// Reads this log back from disk for its ledger ([`scan::scan`]),
    /// verifying the chain under `key` (the HSM's signing key).
    pub fn scan_ledger(
        &self,
        key: &p256::ecdsa::VerifyingKey,
    ) -> Result<scan::LedgerScan, scan::ScanError> {
        let files = verify::log_files(&self.state.dir, &self.state.live).map_err(|source| {
            scan::ScanError {
                path: self.state.dir.clone(),
                source,
            }
        })?;
        scan::scan(&files, key)
    }

    /// The log's filesystem, or None if it cannot be read.
    pub fn disk_space(&self) -> Option<DiskSpace> {
        disk::space(&self.state.dir)
    }

    pub fn witnessed_registry_generation(&self) -> u64 {
        self.state
            .registry_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this process found no log and began a new chain.
    pub fn began_new_chain(&self) -> bool {
        self.state.new_chain
    }

    /// The forwarder's counters, if lines are forwarded.
    pub fn forward_status(&self) -> Option<forward::ForwardStatus> {
        self.state.forward.as_ref().map(forward::Forwarder::status)
    }

    /// Waits (at most `deadline`) until the forwarder has sent every line
    /// offered; the lines still waiting, if lines are forwarded.
    pub fn drain_forward(&self, deadline: std::time::Duration) -> Option<u64> {
        self.state.forward.as_ref().map(|f| f.drain(deadline))
    }

    /// Ok, or why the log cannot be written.
    pub fn health(&self) -> Result<(), AuditError> {
        self.state
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Longest string kept whole in an audit line; longer ones are cut.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Most entries kept in one object or array of an audit line (a batch has
/// at most 1024 items, a context at most 64 pairs).
pub const MAX_FIELD_ENTRIES: usize = 1024;

/// What a refused request's text field looks like in the log: its size and
/// a short printable prefix, never the whole of it.
pub fn summary(s: &str) -> Value {
    if s.len() <= 128 && !s.chars().any(crate::core::validate::unprintable) {
        return json!(s);
    }
    let prefix: String = s
        .chars()
        .take(32)
        .filter(|c| !crate::core::validate::unprintable(*c))
        .collect();
    json!({"bytes": s.len(), "prefix": prefix})
}

/// Bounds an entry whatever its origin: strings over [`MAX_FIELD_BYTES`]
/// are cut (their length kept), objects and arrays over
/// [`MAX_FIELD_ENTRIES`] are cut (their count kept). A refused request can
/// therefore never grow the log by more than a bounded line.
pub fn bounded(fields: Map<String, Value>) -> Map<String, Value> {
    fn cut(v: &mut Value, depth: usize) {
        match v {
            Value::String(s) if s.len() > MAX_FIELD_BYTES => {
                let mut end = 256;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                let total = s.len();
                s.truncate(end);
                s.push_str(&format!("...[{total} bytes]"));
            }
            Value::Array(a) => {
                if a.len() > MAX_FIELD_ENTRIES {
                    let total = a.len();
                    a.truncate(MAX_FIELD_ENTRIES);
                    a.push(json!({"omitted": total - MAX_FIELD_ENTRIES}));
                }
                a.iter_mut().for_each(|x| cut(x, depth + 1));
            }
            Value::Object(m) => {
                if m.len() > MAX_FIELD_ENTRIES || depth > 8 {
                    let total = m.len();
                    *v = json!({"omitted_entries": total});
                    return;
                }
                m.values_mut().for_each(|x| cut(x, depth + 1));
            }
            _ => {}
        }
    }
    let mut v = Value::Object(fields);
    cut(&mut v, 0);
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl AuditSink for Audit {
    /// Written and fdatasync'ed before it returns (group-committed with
    /// whatever else is being written); a failure is logged, not returned.
    fn event(&self, e: Event) {
        tracing::info!(target: "keywarden::audit", event = e.kind.as_str(), outcome = e.outcome.as_str(), detail = %e.detail);
        if let Err(err) = self.record(e.fields()) {
            tracing::error!(error = %err, event = e.kind.as_str(), "could not audit event");
        }
    }
}

/// The HMAC-SHA-256 (first 16 bytes, hex) of a context pair under the
/// audit context key: the log can show that two calls used the same
/// context value without showing the value.
pub fn context_hmac(key: &[u8; 32], name: &str, value: &str) -> String {
    use hmac::{Hmac, Mac};
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(name.as_bytes());
            m.update(&[0]);
            m.update(value.as_bytes());
            hex::encode(&m.finalize().into_bytes()[..16])
        }
        // Unreachable: HMAC takes keys of any length.
        Err(_) => String::new(),
    }
}

impl Audit {
    /// Sets (at unseal) or clears (at seal) the context key.
    pub fn set_context_key(&self, key: Option<&[u8; 32]>) {
        *self
            .state
            .context_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = key.map(|k| zeroize::Zeroizing::new(*k));
    }

    /// The log's form of a context: each name with the HMAC of its value,
    /// or null for every name while sealed. Takes no lock but its own.
    pub fn context_digest(
        &self,
        context: &std::collections::HashMap<String, String>,
    ) -> Map<String, Value> {
        let key = self
            .state
            .context_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        context
            .iter()
            .map(|(name, value)| {
                let d = match key.as_ref() {
                    Some(k) => Value::from(context_hmac(k, name, value)),
                    None => Value::Null,
                };
                (name.clone(), d)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A line whose caller waits asynchronously (no thread blocked on it).
    fn line() -> Job {
        Job::Entry(Entry::new(
            Map::new(),
            Ack::Async(tokio::sync::oneshot::channel().0),
            None,
        ))
    }

    fn open_in(dir: &Path) -> Audit {
        Audit::open(AuditConfig {
            file: dir.join("audit.log"),
            checkpoint_every: 1000,
            max_file_bytes: 1 << 30,
            forward: None,
            node: None,
        })
        .unwrap()
    }

    #[test]
    fn with_nothing_promised_a_line_is_committed_at_once() {
        let (tx, rx) = channel();
        tx.send(line()).unwrap();
        let promised = AtomicUsize::new(0);
        // Nothing promised: no wait (a wait would last the whole minute).
        let start = std::time::Instant::now();
        let jobs = gather(&rx, line(), &promised, Duration::from_secs(60)).jobs;
        assert_eq!(jobs.len(), 2, "the first and what was queued");
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn promised_lines_join_the_commit_and_the_wait_ends_when_they_are_in() {
        let dir = tempfile::tempdir().unwrap();
        let audit = open_in(dir.path());
        let (tx, rx) = channel();
        // Three calls in progress, whose lines come later, each carrying
        // its promise (as `queue_async` sends them).
        let promises: Vec<Promise> = (0..3).map(|_| audit.promise()).collect();
        let sender = std::thread::spawn(move || {
            let mut answers = Vec::new();
            for p in promises {
                std::thread::sleep(Duration::from_millis(5));
                let (ack, answer) = tokio::sync::oneshot::channel();
                tx.send(Job::Entry(Entry::new(Map::new(), Ack::Async(ack), Some(p))))
                    .unwrap();
                answers.push(answer);
            }
            // Kept open: the gather must end on the promises, not on a
            // closed channel.
            (tx, answers)
        });
        let start = std::time::Instant::now();
        let jobs = gather(&rx, line(), &audit.state.promised, Duration::from_secs(60)).jobs;
        assert_eq!(jobs.len(), 4);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "it ended on the promises"
        );
        drop(sender.join().unwrap());
    }

    #[test]
    fn a_line_that_has_arrived_is_no_longer_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let audit = open_in(dir.path());
        let (_tx, rx) = channel::<Job>();
        let (ack, _answer) = tokio::sync::oneshot::channel();
        let line = Job::Entry(Entry::new(
            Map::new(),
            Ack::Async(ack),
            Some(audit.promise()),
        ));
        // Its own promise travels with it: taking it releases the promise,
        // so the writer does not wait out the window for it.
        let start = std::time::Instant::now();
        let g = gather(&rx, line, &audit.state.promised, Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(g.jobs.len(), 1);
        assert_eq!(g.waits.len(), 1);
        assert_eq!(audit.state.promised.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_blocking_writer_ends_the_wait() {
        // A synchronous entry (a thread blocked on it, perhaps holding a
        // promise of its own) is committed without waiting; so is a
        // checkpoint or a request for the head.
        for job in [
            Job::Head(channel().0),
            Job::Checkpoint("test".into(), Ack::Sync(channel().0)),
        ] {
            let (_tx, rx) = channel::<Job>();
            let promised = AtomicUsize::new(1);
            let start = std::time::Instant::now();
            assert_eq!(
                gather(&rx, job, &promised, Duration::from_secs(60))
                    .jobs
                    .len(),
                1
            );
            assert!(start.elapsed() < Duration::from_secs(30));
        }
        let (_tx, rx) = channel::<Job>();
        let promised = AtomicUsize::new(1);
        let line = Job::Entry(Entry::new(Map::new(), Ack::Sync(channel().0), None));
        let start = std::time::Instant::now();
        let g = gather(&rx, line, &promised, Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(g.jobs.len(), 1);
    }

    #[test]
    fn the_wait_for_promised_lines_is_bounded() {
        let (tx, rx) = channel::<Job>();
        let promised = AtomicUsize::new(1);
        let jobs = gather(&rx, line(), &promised, Duration::from_millis(20)).jobs;
        assert_eq!(
            jobs.len(),
            1,
            "a promise never kept does not hold the commit"
        );
        drop(tx);
    }

    #[test]
    fn a_promise_counts_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let audit = open_in(dir.path());
        let (a, b) = (audit.promise(), audit.promise());
        assert_eq!(audit.state.promised.load(Ordering::Acquire), 2);
        drop(a);
        drop(b);
        assert_eq!(audit.state.promised.load(Ordering::Acquire), 0);
    }
}
