//! The one audit dependency the core is given: events, durable lines and
//! ledger lines, checkpoints under the HSM's signing key, the context key,
//! and the log's health. The file log ([`super::Audit`]) is the real one;
//! [`MemoryLog`] keeps everything in memory for unit tests, and
//! [`NullSink`] drops everything (benchmarks run without a log).

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{AuditError, AuditSink, DiskSpace, Event, EventKind, NullSink, Outcome, Signer};
use crate::sync::Recover;

/// What the core writes to and asks of the audit log.
pub trait AuditLog: AuditSink {
    /// Writes one line and returns once it is durable, with its sequence
    /// number. Its fields are bounded like every request's.
    fn record(&self, fields: Map<String, Value>) -> Result<u64, AuditError>;

    /// Writes one registry ledger line (its record, MAC'd), unbounded, and
    /// returns once it is durable.
    fn record_ledger(&self, fields: Map<String, Value>) -> Result<u64, AuditError>;

    /// The newest line's sequence number and hash, for a backup's header;
    /// `None` for a log that has no chain.
    fn head(&self) -> Result<Option<(u64, String)>, AuditError>;

    /// Signs a checkpoint over the chain so far.
    fn checkpoint(&self, reason: &str) -> Result<u64, AuditError>;

    /// Sets (or, `None`, drops) what signs checkpoints.
    fn set_signer(&self, signer: Option<Signer>);

    /// Publishes the signing key's public point beside the log.
    fn publish_public_key(&self, point: &[u8]) -> Result<(), AuditError>;

    /// Where the public key is published, if on disk.
    fn public_key_path(&self) -> Option<PathBuf>;

    /// Notes the registry generation a write reached (what a rollback must
    /// be measured against).
    fn note_registry_generation(&self, generation: u64);

    /// The highest registry generation noted since the log was opened.
    fn witnessed_registry_generation(&self) -> u64;

    /// Sets (or drops) the key that digests encryption-context values.
    fn set_context_key(&self, key: Option<&[u8; 32]>);

    /// An encryption context as the log records it: each value digested
    /// under the context key, or `null` while there is none.
    fn context_digest(&self, context: &HashMap<String, String>) -> Map<String, Value>;

    /// Whether lines can be written now.
    fn health(&self) -> Result<(), AuditError>;

    /// The forwarder's counters, if lines are forwarded.
    fn forward_status(&self) -> Option<super::forward::ForwardStatus>;

    /// The log's filesystem, if it can be read.
    fn disk_space(&self) -> Option<DiskSpace>;

    /// The log's files, oldest first, to read it back (a tampering
    /// acknowledgement replays the ledger from them); `None` for a log
    /// kept elsewhere than in files.
    fn files(&self) -> Option<std::io::Result<Vec<PathBuf>>>;
}

impl AuditLog for super::Audit {
    fn record(&self, fields: Map<String, Value>) -> Result<u64, AuditError> {
        super::Audit::record(self, fields)
    }
    fn record_ledger(&self, fields: Map<String, Value>) -> Result<u64, AuditError> {
        super::Audit::record_ledger(self, fields)
    }
    fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        super::Audit::head(self).map(Some)
    }
    fn checkpoint(&self, reason: &str) -> Result<u64, AuditError> {
        super::Audit::checkpoint(self, reason)
    }
    fn set_signer(&self, signer: Option<Signer>) {
        super::Audit::set_signer(self, signer)
    }
    fn publish_public_key(&self, point: &[u8]) -> Result<(), AuditError> {
        super::Audit::publish_public_key(self, point)
    }
    fn public_key_path(&self) -> Option<PathBuf> {
        Some(super::Audit::public_key_path(self))
    }
    fn note_registry_generation(&self, generation: u64) {
        super::Audit::note_registry_generation(self, generation)
    }
    fn witnessed_registry_generation(&self) -> u64 {
        super::Audit::witnessed_registry_generation(self)
    }
    fn set_context_key(&self, key: Option<&[u8; 32]>) {
        super::Audit::set_context_key(self, key)
    }
    fn context_digest(&self, context: &HashMap<String, String>) -> Map<String, Value> {
        super::Audit::context_digest(self, context)
    }
    fn health(&self) -> Result<(), AuditError> {
        super::Audit::health(self)
    }
    fn forward_status(&self) -> Option<super::forward::ForwardStatus> {
        super::Audit::forward_status(self)
    }
    fn disk_space(&self) -> Option<DiskSpace> {
        super::Audit::disk_space(self)
    }
    fn files(&self) -> Option<std::io::Result<Vec<PathBuf>>> {
        Some(super::Audit::log_files(self))
    }
}

/// Values of a context with nothing to digest them under.
fn undigested(context: &HashMap<String, String>) -> Map<String, Value> {
    context.keys().map(|k| (k.clone(), Value::Null)).collect()
}

/// No log: benchmarks that measure the daemon without its audit writes.
/// Every write succeeds and is dropped.
impl AuditLog for NullSink {
    fn record(&self, _fields: Map<String, Value>) -> Result<u64, AuditError> {
        Ok(0)
    }
    fn record_ledger(&self, _fields: Map<String, Value>) -> Result<u64, AuditError> {
        Ok(0)
    }
    fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        Ok(None)
    }
    fn checkpoint(&self, _reason: &str) -> Result<u64, AuditError> {
        Ok(0)
    }
    fn set_signer(&self, _signer: Option<Signer>) {}
    fn publish_public_key(&self, _point: &[u8]) -> Result<(), AuditError> {
        Ok(())
    }
    fn public_key_path(&self) -> Option<PathBuf> {
        None
    }
    fn note_registry_generation(&self, _generation: u64) {}
    fn witnessed_registry_generation(&self) -> u64 {
        0
    }
    fn set_context_key(&self, _key: Option<&[u8; 32]>) {}
    fn context_digest(&self, context: &HashMap<String, String>) -> Map<String, Value> {
        undigested(context)
    }
    fn health(&self) -> Result<(), AuditError> {
        Ok(())
    }
    fn forward_status(&self) -> Option<super::forward::ForwardStatus> {
        None
    }
    fn disk_space(&self) -> Option<DiskSpace> {
        None
    }
    fn files(&self) -> Option<std::io::Result<Vec<PathBuf>>> {
        None
    }
}

/// An audit log in memory, for unit tests: every event and line kept, in
/// order, with the registry generations noted.
#[derive(Default)]
pub struct MemoryLog {
    events: std::sync::Mutex<Vec<Event>>,
    lines: std::sync::Mutex<Vec<Map<String, Value>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl MemoryLog {
    /// Every event recorded so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.locked().clone()
    }

    /// The (kind, outcome) of every event so far.
    pub fn kinds(&self) -> Vec<(EventKind, Outcome)> {
        self.events().iter().map(|e| (e.kind, e.outcome)).collect()
    }

    /// Every line written with [`AuditLog::record`] or
    /// [`AuditLog::record_ledger`], oldest first.
    pub fn lines(&self) -> Vec<Map<String, Value>> {
        self.lines.locked().clone()
    }

    fn push(&self, fields: Map<String, Value>) -> u64 {
        let mut lines = self.lines.locked();
        lines.push(fields);
        lines.len() as u64
    }
}

impl AuditSink for MemoryLog {
    fn event(&self, e: Event) {
        self.events.locked().push(e);
    }
}

impl AuditLog for MemoryLog {
    fn record(&self, fields: Map<String, Value>) -> Result<u64, AuditError> {
        Ok(self.push(fields))
    }
    fn record_ledger(&self, fields: Map<String, Value>) -> Result<u64, AuditError> {
        Ok(self.push(fields))
    }
    fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        Ok(None)
    }
    fn checkpoint(&self, _reason: &str) -> Result<u64, AuditError> {
        Ok(self.lines.locked().len() as u64)
    }
    fn set_signer(&self, _signer: Option<Signer>) {}
    fn publish_public_key(&self, _point: &[u8]) -> Result<(), AuditError> {
        Ok(())
    }
    fn public_key_path(&self) -> Option<PathBuf> {
        None
    }
    fn note_registry_generation(&self, generation: u64) {
        self.generation
            .fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
    }
    fn witnessed_registry_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
    fn set_context_key(&self, _key: Option<&[u8; 32]>) {}
    fn context_digest(&self, context: &HashMap<String, String>) -> Map<String, Value> {
        undigested(context)
    }
    fn health(&self) -> Result<(), AuditError> {
        Ok(())
    }
    fn forward_status(&self) -> Option<super::forward::ForwardStatus> {
        None
    }
    fn disk_space(&self) -> Option<DiskSpace> {
        None
    }
    fn files(&self) -> Option<std::io::Result<Vec<PathBuf>>> {
        None
    }
}
