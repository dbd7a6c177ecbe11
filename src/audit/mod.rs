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
mod log;
pub mod scan;
pub mod severity;
pub mod verify;
mod writer;

pub use disk::DiskSpace;
pub use event::{AuditSink, Event, EventKind, NullSink, Outcome};
pub use log::{AuditLog, MemoryLog};
use writer::Writer;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::sync::Recover;
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
        /// What was being done.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        source: Arc<std::io::Error>,
    },
    /// The last line of an existing log could not be read.
    #[error("{}: {source}", path.display())]
    ReadLastLine {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: Arc<std::io::Error>,
    },
    /// The last line of an existing log is not JSON: the chain cannot be
    /// continued.
    #[error("the last audit line does not parse: {0}")]
    LastLineUnparsable(Arc<serde_json::Error>),
    /// The last line of an existing log has no `seq`.
    #[error("the last audit line has no seq")]
    LastLineWithoutSeq,
    /// A batch was to be written while no file is open.
    #[error("audit file not open")]
    NotOpen,
    /// The writer's thread or the forwarder could not be started.
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
    /// The writer thread is gone: nothing more can be written.
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

/// Where the log is kept and how it is checkpointed, rotated and
/// forwarded (`[audit]`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The live log file; rotated files go beside it.
    pub file: PathBuf,
    /// A signed checkpoint after this many lines (at least 1).
    pub checkpoint_every: u64,
    /// The live file is rotated once it reaches this size (in bytes), at the
    /// next checkpoint.
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
        self.metrics.locked().clone()
    }
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
            .locked()
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
        *self.state.signer.locked() = signer;
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
        *self.state.metrics.locked() = Some(m);
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

    /// The log's filesystem, or None if it cannot be read.
    pub fn disk_space(&self) -> Option<DiskSpace> {
        disk::space(&self.state.dir)
    }

    /// This log's files on disk, oldest first (to read it back with
    /// [`scan::scan`]).
    pub fn log_files(&self) -> std::io::Result<Vec<PathBuf>> {
        verify::log_files(&self.state.dir, &self.state.live)
    }

    /// The highest registry generation the log has recorded (its last
    /// line's when opened, raised by every note since): what a rollback is
    /// measured against.
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
        self.state.health.locked().clone()
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
        *self.state.context_key.locked() = key.map(|k| zeroize::Zeroizing::new(*k));
    }

    /// The log's form of a context: each name with the HMAC of its value,
    /// or null for every name while sealed. Takes no lock but its own.
    pub fn context_digest(
        &self,
        context: &std::collections::HashMap<String, String>,
    ) -> Map<String, Value> {
        let key = self.state.context_key.locked();
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
