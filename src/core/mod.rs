//! The core: envelope encryption (data keys bound to an encryption
//! context), the key lifecycle and the registry. It knows nothing of gRPC.
//!
//! Every public method is synchronous and may block on the HSM or the
//! registry; [`Keywarden`] is shared behind an `Arc` and the gate runs
//! calls off the async runtime. While unsealed, the verified registry is
//! held in memory (the `Table`); every change is written through to disk
//! before the table changes, so a disabled key is refused by the very next
//! request.

mod acknowledge;
pub mod backup;
mod batch;
pub mod blob;
mod ceremonies;
mod envelope;
pub mod error;
mod fields;
pub mod lifecycle;
pub mod membership;
mod metrics;
pub mod model;
mod reconcile;
mod records;
pub mod registry;
mod requests;
mod scheduler;
mod status;
pub mod validate;
mod views;
pub mod witness;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use tracing::{info, warn};

use crate::audit::{EventKind, Outcome};
use crate::hsm::{
    Hsm, HsmKeyId, TokenDescription, UnwrapItem, LABEL_PREFIX, REGISTRY_COUNTER_LABEL,
};
use crate::seal::{IssuedShare, Seal, SealStatus, ShareProgress, ShareSpec};
use crate::secret::{DataKey, Pin};
use crate::sync::{Recover, RecoverRw};
pub use acknowledge::Acknowledgement;
use blob::Blob;
pub use error::{CoreError, CoreResult};
pub use lifecycle::{Actor, LifecycleConfig};
pub use membership::{Membership, SyncState};
pub use model::KeyRecord;
use model::{KeyState, VersionState};
use registry::{Registry, RegistryError};
pub use requests::*;
pub use status::{AttentionReason, Drift, KeyAttention, Status};
pub use views::{Ceremonies, Cluster, DataPath, Keys, Records};

/// The verified registry in memory (only while unsealed).
#[derive(Default)]
pub(crate) struct Table {
    by_name: HashMap<String, Arc<KeyRecord>>,
    by_id: HashMap<[u8; 16], String>,
    tampered: BTreeMap<String, String>,
    global: Option<String>,
    /// The global problem is a rollback an operator may accept
    /// ([`Keywarden::acknowledge_tampering`]); a manifest that does not
    /// verify cannot be.
    rollback: Option<witness::Rollback>,
    /// The admins (distinct uids) who have acknowledged that rollback, and
    /// the digest of what they saw would be accepted.
    acknowledged: Option<([u8; 32], std::collections::BTreeSet<u32>)>,
}

/// Encryptions per version: used in memory, reserved on disk.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counter {
    used: u64,
    reserved: u64,
}

/// The core: the HSM, the registry and the seal, with the verified table
/// and the encryption counters. One per daemon, shared behind an `Arc`;
/// its parts ([`Keys`], [`DataPath`], [`Ceremonies`], [`Records`],
/// [`Cluster`]) are reached through it.
pub struct Keywarden {
    hsm: Arc<dyn Hsm>,
    registry: Registry,
    seal: Seal,
    /// The audit log: lifecycle and integrity events, the registry's
    /// ledger lines, checkpoints under the HSM's signing key, the context
    /// key and the log's health. The file log in the daemon, a memory log
    /// in unit tests, none (dropped) in benchmarks without a log.
    audit: Arc<dyn crate::audit::AuditLog>,
    drift: RwLock<Drift>,
    table: RwLock<Table>,
    /// Serializes read-modify-write changes of records.
    writes: Mutex<()>,
    counters: Mutex<HashMap<HsmKeyId, Counter>>,
    pub(crate) lifecycle: LifecycleConfig,
    started_at: i64,
    /// Key changes, for `WatchKeys` subscribers (client caches).
    changes: tokio::sync::broadcast::Sender<KeyChange>,
    /// Woken after every ceremony step (init, share, seal, rekey), for
    /// whoever reports the state (systemd's STATUS=).
    seal_changed: tokio::sync::Notify,
    clock: Arc<dyn crate::clock::Clock>,
    /// The cluster this node belongs to (`None`: a single host).
    membership: Option<Arc<dyn Membership>>,
    /// The registry generation the table holds (set after the table).
    applied: std::sync::atomic::AtomicU64,
}

/// A change that client-side data-key caches must hear about before the
/// call that made it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// This key's record changed (state, versions, holds, destruction).
    Changed {
        /// The key's name.
        name: String,
        /// The key's id, as a hyphenated UUID.
        key_id: String,
        /// Its state now, as [`KeyState::as_str`] spells it.
        state: &'static str,
    },
    /// Forget every cached key (the daemon sealed, or lost its table).
    Reset,
}

/// What a client cache's use of a key depends on: everything but the
/// encryption counters and descriptive fields. Two records with equal
/// views need no `KeyChange`.
#[derive(PartialEq, Eq)]
struct AccessView {
    state: KeyState,
    min_decrypt_version: u32,
    versions: Vec<(u32, VersionState)>,
    destroy_due_at: Option<i64>,
    destruction_started_at: Option<i64>,
    destroyed_at: Option<i64>,
    holds: usize,
}

fn access_view(r: &KeyRecord) -> AccessView {
    AccessView {
        state: r.state,
        min_decrypt_version: r.min_decrypt_version,
        versions: r.versions.iter().map(|v| (v.version, v.state)).collect(),
        destroy_due_at: r.destroy_due_at,
        destruction_started_at: r.destruction_started_at,
        destroyed_at: r.destroyed_at,
        holds: r.holds.len(),
    }
}

/// How often a write refused because another node wrote first is tried
/// again (after taking that node's change in).
const WRITE_TRIES: usize = 5;

/// How many changes a slow subscriber may fall behind before it is told
/// to reset.
const CHANGE_BACKLOG: usize = 1024;

pub(crate) fn reg_err(e: RegistryError) -> CoreError {
    match e {
        RegistryError::AlreadyExists(name) => CoreError::AlreadyExists { name },
        e @ RegistryError::Unreachable { .. } => CoreError::RegistryUnavailable(Arc::new(e)),
        RegistryError::Stale { found, .. } => CoreError::RegistryMoved { found },
        other => CoreError::Registry(Arc::new(other)),
    }
}

impl Keywarden {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read_locked()
    }

    /// Builds the core. It starts sealed (or uninitialised): nothing touches
    /// the keys until custodians unseal.
    pub fn start(hsm: Arc<dyn Hsm>, registry: Registry, seal: Seal) -> Self {
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock::default());
        Keywarden {
            hsm,
            registry,
            seal,
            audit: Arc::new(crate::audit::NullSink),
            drift: RwLock::new(Drift::default()),
            table: RwLock::new(Table::default()),
            writes: Mutex::new(()),
            counters: Mutex::new(HashMap::new()),
            lifecycle: LifecycleConfig::default(),
            started_at: clock.now_secs(),
            changes: tokio::sync::broadcast::channel(CHANGE_BACKLOG).0,
            seal_changed: tokio::sync::Notify::new(),
            clock,
            membership: None,
            applied: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Reads time from `clock` (unit tests drive it); the start time is
    /// read again from it.
    pub fn with_clock(mut self, clock: Arc<dyn crate::clock::Clock>) -> Self {
        self.seal.set_clock(clock.clone());
        self.started_at = clock.now_secs();
        self.clock = clock;
        self
    }

    /// Unix time in seconds, from the injected clock.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    /// Completes after the seal's state (or a ceremony's progress) has
    /// changed since the last call returned.
    pub async fn seal_changed(&self) {
        self.seal_changed.notified().await
    }

    /// Subscribes to key changes (see [`KeyChange`]).
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<KeyChange> {
        self.changes.subscribe()
    }

    /// Whether key operations are served right now (unsealed and loaded).
    pub fn is_serving(&self) -> bool {
        self.unsealed().is_ok()
    }

    /// Replaces the lifecycle limits and waiting periods (set before the
    /// core is shared).
    pub fn with_lifecycle(mut self, cfg: LifecycleConfig) -> Self {
        self.lifecycle = cfg;
        self
    }

    /// Attaches the audit log: the seal's events go to it too.
    pub fn with_audit(mut self, audit: Arc<dyn crate::audit::AuditLog>) -> Self {
        self.seal.set_audit_sink(audit.clone());
        self.audit = audit;
        self
    }

    /// Records a lifecycle or integrity event.
    pub fn event(
        &self,
        kind: crate::audit::EventKind,
        outcome: crate::audit::Outcome,
        detail: serde_json::Value,
    ) {
        self.audit.record_event(kind, outcome, detail);
    }

    /// Graceful shutdown: final checkpoint, log out of the HSM.
    pub fn shutdown(&self) {
        self.ceremonies().before_logout("shutdown");
        self.hsm.logout();
        self.registry.close();
    }

    fn unsealed(&self) -> CoreResult<()> {
        // Sealed, or logged in but still loading the registry (or sealing):
        // the seal's one state says which.
        self.seal.require_unsealed().map_err(CoreError::Seal)?;
        // A node that cannot confirm it has every other node's changes
        // serves nothing (checked again after each HSM call).
        if let Some(m) = &self.membership {
            m.check_serving().map_err(CoreError::NodeNotCurrent)?;
        }
        Ok(())
    }

    /// The HSM behind the core.
    pub fn hsm(&self) -> &Arc<dyn Hsm> {
        &self.hsm
    }
}

#[cfg(test)]
mod tests;
