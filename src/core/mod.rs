//! The core: envelope encryption (data keys bound to an encryption
//! context), the key lifecycle and the registry. It knows nothing of gRPC.
//!
//! Every public method is synchronous and may block on the HSM or the
//! registry; [`Keywarden`] is shared behind an `Arc` and the API layer runs
//! calls with `spawn_blocking`. While unsealed, the verified registry is
//! held in memory (the [`Table`]); every change is written through to disk
//! before the table changes, so a disabled key is refused by the very next
//! request.

mod acknowledge;
pub mod backup;
mod batch;
pub mod blob;
mod envelope;
pub mod error;
mod fields;
pub mod lifecycle;
pub mod membership;
mod metrics;
pub mod model;
mod reconcile;
pub mod registry;
mod requests;
mod status;
pub mod validate;
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
        name: String,
        key_id: String,
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
        RegistryError::Unreachable(why) => CoreError::RegistryUnavailable(why),
        RegistryError::Stale { found, .. } => CoreError::RegistryMoved { found },
        other => CoreError::Registry(other.to_string()),
    }
}

impl Keywarden {
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

    fn sync_context_key(&self) {
        let a = &self.audit;
        let set = self
            .seal
            .with_keyring(|k| a.set_context_key(Some(&*k.audit_key)));
        if set.is_err() {
            a.set_context_key(None);
        }
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

    /// After a login: make sure the audit-signing key exists, publish its
    /// public half beside the log, install the signer, checkpoint.
    fn on_login(&self, reason: &str) {
        let audit = &self.audit;
        match self.hsm.ensure_signing_key() {
            Ok(point) => {
                if let Err(e) = audit.publish_public_key(&point) {
                    warn!(error = %e, "could not write the audit public key");
                }
                let hsm = self.hsm.clone();
                audit.set_signer(Some(Arc::new(move |d: &[u8; 32]| hsm.sign_digest(d))));
                if let Err(e) = audit.checkpoint(reason) {
                    warn!(error = %e, "audit checkpoint failed");
                }
            }
            Err(e) => warn!(error = %e, "no audit signing key; checkpoints are not signed"),
        }
    }

    /// Before a logout: a final signed checkpoint, then no signer.
    fn before_logout(&self, reason: &str) {
        // Key operations stop here, before the checkpoint that closes them.
        let logged_in = self.seal.begin_closing();
        let audit = &self.audit;
        if logged_in {
            if let Err(e) = audit.checkpoint(reason) {
                warn!(error = %e, "final audit checkpoint failed");
            }
        }
        audit.set_signer(None);
    }

    /// Graceful shutdown: final checkpoint, log out of the HSM.
    pub fn shutdown(&self) {
        self.before_logout("shutdown");
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

    /// Whether init may run now (see [`Seal::check_init_allowed`]).
    pub fn check_init_allowed(&self) -> CoreResult<()> {
        Ok(self.seal.check_init_allowed()?)
    }

    /// The init ceremony (see [`Seal::init`]).
    pub fn init(
        &self,
        spec: ShareSpec<'_>,
        user_pin: Pin,
        so_pin: Pin,
    ) -> CoreResult<Vec<IssuedShare>> {
        let r = self.seal.init(self.hsm.as_ref(), spec, user_pin, so_pin);
        self.seal_changed.notify_one();
        Ok(r?)
    }

    /// The scheduler's second try at a login whose registry did not load.
    pub(crate) fn retry_login(&self) {
        self.after_login("registry loaded on retry");
        self.seal_changed.notify_one();
    }

    /// Everything that follows a login: the verified registry, session
    /// copies, the audit signer, overdue lifecycle work.
    fn after_login(&self, reason: &str) {
        // The seal is logged in but not yet open for keys. A registry that
        // cannot be loaded keeps it so (key operations refused, fail
        // closed); the scheduler tries again.
        if let Err(e) = self.load_table() {
            warn!(error = %e, "loading the registry failed; key operations stay refused until it loads (retried by the scheduler)");
            return;
        }
        self.sync_context_key();
        if !self.seal.open_for_keys() {
            // Sealed or closing meanwhile: nothing more to do.
            return;
        }
        if let Err(e) = self.reconcile() {
            warn!(error = %e, "reconciliation failed");
        }
        self.on_login(reason);
        // Destructions and rotations that fell due while sealed or down.
        self.tick();
    }

    /// Submits one unseal share; at the threshold the daemon unseals.
    /// `accept_restore_window`: the custodian accepts the window a restore
    /// without the audit trail may have lost (refused without it while one
    /// stands).
    pub fn unseal(&self, share: &str, accept_restore_window: bool) -> CoreResult<ShareProgress> {
        let p = self.seal.submit_unseal_share_accepting(
            self.hsm.as_ref(),
            share,
            accept_restore_window,
        );
        if let Ok(p) = &p {
            if p.complete {
                self.after_login("unseal");
            }
        }
        self.seal_changed.notify_one();
        Ok(p?)
    }

    pub fn unseal_reset(&self) -> CoreResult<usize> {
        let r = self.seal.reset_unseal();
        self.seal_changed.notify_one();
        Ok(r?)
    }

    pub fn seal(&self) -> CoreResult<()> {
        self.before_logout("seal");
        let _ = self.changes.send(KeyChange::Reset);
        let r = self.seal.seal(self.hsm.as_ref());
        // After the seal: a concurrent unseal cannot set the key again.
        self.sync_context_key();
        self.seal_changed.notify_one();
        r?;
        *self.table.write_locked() = Table::default();
        Ok(())
    }

    pub fn rekey_start(&self, spec: ShareSpec<'_>) -> CoreResult<(String, u8)> {
        let r = self.seal.rekey_start(spec);
        self.seal_changed.notify_one();
        Ok(r?)
    }

    pub fn rekey_submit(
        &self,
        share: &str,
    ) -> CoreResult<(ShareProgress, Option<crate::seal::NewShareSet>)> {
        let r = self.seal.rekey_submit(share);
        self.seal_changed.notify_one();
        Ok(r?)
    }

    pub fn rekey_verify(&self, share: &str) -> CoreResult<ShareProgress> {
        let r = self.seal.rekey_verify(self.hsm.as_ref(), share);
        // A commit whose re-login failed leaves the daemon sealed.
        if !self.seal.logged_in() {
            self.sync_context_key();
        }
        let p = r.inspect_err(|_| self.seal_changed.notify_one())?;
        if p.complete {
            // The login was renewed: session copies must be made again.
            self.after_login("rekey");
        }
        self.seal_changed.notify_one();
        Ok(p)
    }

    pub fn rekey_cancel(&self) -> CoreResult<()> {
        let r = self.seal.rekey_cancel();
        self.seal_changed.notify_one();
        Ok(r?)
    }

    fn registry_key(&self) -> CoreResult<zeroize::Zeroizing<[u8; 32]>> {
        self.seal
            .with_keyring(|k| zeroize::Zeroizing::new(*k.registry_key))
            .map_err(CoreError::Seal)
    }

    /// The HSM's registry generation counter, then the registry, verified.
    fn load_verified(&self) -> CoreResult<(Option<u64>, registry::Loaded)> {
        let key = self.registry_key()?;
        let hsm_gen = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(CoreError::from_hsm)?;
        let loaded = self.registry.load_verified(&key, None).map_err(reg_err)?;
        Ok((hsm_gen, loaded))
    }

    /// Loads and verifies the registry into memory (at unseal), and checks
    /// it against the witnesses of its generation ([`witness`]).
    fn load_table(&self) -> CoreResult<()> {
        let (hsm_gen, mut loaded) = self.load_verified()?;
        let manifest_problem = loaded.global.is_some();
        let audited = Some(self.audit.witnessed_registry_generation());
        let rollback = witness::check(loaded.generation, hsm_gen, audited);
        if loaded.global.is_none() {
            if let Some(r) = &rollback {
                loaded.global = Some(r.to_string());
            }
        }
        if loaded.global.is_none() {
            if hsm_gen.is_none_or(|h| loaded.generation > h) {
                // A fresh token (the counter is created before the first
                // registry write), or a crash between the registry commit
                // and the counter update: catch up.
                if let Err(e) = self
                    .hsm
                    .write_counter(REGISTRY_COUNTER_LABEL, loaded.generation)
                {
                    warn!(error = %e, "could not update the registry generation in the HSM");
                }
            }
            self.audit.note_registry_generation(loaded.generation);
        }
        let mut t = Table {
            global: loaded.global.clone(),
            rollback: if manifest_problem { None } else { rollback },
            ..Table::default()
        };
        for (k, what) in &loaded.tampered {
            t.tampered.insert(k.clone(), what.clone());
            self.event(
                EventKind::RegistryTampering,
                Outcome::Detected,
                serde_json::json!({"key": k, "what": what}),
            );
        }
        if let Some(g) = &loaded.global {
            self.event(
                EventKind::RegistryTampering,
                Outcome::Detected,
                serde_json::json!({"key": null, "what": g}),
            );
        }
        let mut counters = self.counters.locked();
        for r in loaded.keys {
            for v in &r.versions {
                // After a restart everything reserved counts as used.
                counters.insert(
                    v.hsm_id,
                    Counter {
                        used: v.reserved,
                        reserved: v.reserved,
                    },
                );
            }
            t.by_id.insert(r.id, r.name.clone());
            t.by_name.insert(r.name.clone(), Arc::new(r));
        }
        drop(counters);
        info!(
            keys = t.by_name.len(),
            tampered = t.tampered.len(),
            generation = loaded.generation,
            "registry verified"
        );
        *self.table.write_locked() = t;
        self.set_applied(loaded.generation);
        let _ = self.changes.send(KeyChange::Reset);
        Ok(())
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read_locked()
    }

    /// A verified record by name.
    pub(crate) fn record(&self, name: &str) -> CoreResult<Arc<KeyRecord>> {
        let t = self.table();
        if let Some(g) = &t.global {
            return Err(CoreError::RegistryTampered {
                key: None,
                what: g.clone(),
            });
        }
        if let Some(what) = t.tampered.get(name) {
            return Err(CoreError::RegistryTampered {
                key: Some(name.to_string()),
                what: what.clone(),
            });
        }
        t.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::KeyNotFound { name: name.into() })
    }

    fn record_by_id(&self, id: &[u8; 16]) -> CoreResult<Arc<KeyRecord>> {
        let name = self.table().by_id.get(id).cloned();
        match name {
            Some(n) => self.record(&n),
            None => {
                let t = self.table();
                if let Some(g) = &t.global {
                    return Err(CoreError::RegistryTampered {
                        key: None,
                        what: g.clone(),
                    });
                }
                Err(CoreError::BlobKeyUnknown {
                    key_id: uuid::Uuid::from_bytes(*id).to_string(),
                })
            }
        }
    }

    /// Writes a changed (or new) record through to disk, then to memory.
    ///
    /// The audit log records the record first (the ledger line a restore
    /// replays, [`crate::backup`]): a change the log cannot hold is not
    /// made. The caller holds `writes`, so the generation is the next one.
    ///
    /// Returns the record and, in a cluster, the generation the other
    /// nodes must have applied before the caller answers: pass it to
    /// [`confirm`](Self::confirm) once `writes` is released.
    pub(crate) fn store(
        &self,
        record: KeyRecord,
        is_new: bool,
    ) -> CoreResult<(Arc<KeyRecord>, Option<u64>)> {
        let key = self.registry_key()?;
        let next = self.registry.generation().saturating_add(1);
        let ledger_seq = self
            .audit
            .record_ledger(crate::backup::ledger::line(&record, next, &key)?)
            .map_err(|e| CoreError::AuditUnavailable(e.to_string()))?;
        let gen = match self.registry.put(&record, &key, is_new) {
            Ok(g) => g,
            Err(e) => {
                // Best effort: a replay that misses this line applies a
                // change that never happened, which is the safe side for a
                // destruction or a revocation.
                let _ = self.audit.record(crate::backup::ledger::failed(
                    &record.name,
                    next,
                    ledger_seq,
                    &key,
                ));
                return Err(reg_err(e));
            }
        };
        self.audit.note_registry_generation(gen);
        self.advance_counter(gen);
        let rec = Arc::new(record);
        let mut t = self.table.write_locked();
        t.by_id.insert(rec.id, rec.name.clone());
        let old = t.by_name.insert(rec.name.clone(), rec.clone());
        drop(t);
        self.set_applied(gen);
        // Encryption-count reservations change nothing a cache depends on.
        let access_changed = old.is_none_or(|o| access_view(&o) != access_view(&rec));
        if !is_new && access_changed {
            // Before the caller's answer: a cache that hears this stops
            // using the key before the admin sees the call succeed. No
            // subscriber is not an error.
            let _ = self.changes.send(KeyChange::Changed {
                name: rec.name.clone(),
                key_id: rec.id_text(),
                state: rec.state.as_str(),
            });
        }
        // And before it, no other node serves what this replaced (a new
        // key is known everywhere when its create returns).
        let confirm = (is_new || access_changed) && self.membership.is_some();
        Ok((rec, confirm.then_some(gen)))
    }

    /// Returns once no node of the cluster can still serve the state a
    /// change replaced ([`Membership::wait_applied`]). Called without
    /// `writes` held: the wait can last up to a lease, and this node's
    /// data-key calls and its taking in of other changes go on meanwhile.
    pub(crate) fn confirm(&self, gen: Option<u64>) {
        if let (Some(g), Some(m)) = (gen, &self.membership) {
            m.wait_applied(g);
        }
    }

    /// The registry generation kept in the HSM follows the registry, with
    /// the generation this node wrote (never the database's unverified
    /// claim). The counter only moves up (the `Hsm` contract), so another
    /// node's later write stands; two nodes racing can leave it one behind
    /// until the next write (CLUSTER.md).
    fn advance_counter(&self, gen: u64) {
        if let Err(e) = self.hsm.write_counter(REGISTRY_COUNTER_LABEL, gen) {
            warn!(error = %e, "could not advance the registry generation in the HSM");
        }
    }

    /// Writes a new record, taking in other nodes' changes and trying
    /// again if one came first.
    pub(crate) fn store_new(&self, record: KeyRecord) -> CoreResult<(Arc<KeyRecord>, Option<u64>)> {
        self.retrying(|| {
            // After taking other nodes' changes in, the registry may be
            // found tampered with: nothing is written on top of it.
            if let Some(g) = &self.table().global {
                return Err(CoreError::RegistryTampered {
                    key: None,
                    what: g.clone(),
                });
            }
            self.store(record.clone(), true)
        })
    }

    /// Runs a write; if another node wrote first, takes that change in and
    /// runs it again (the caller holds `writes`).
    fn retrying<T>(&self, mut write: impl FnMut() -> CoreResult<T>) -> CoreResult<T> {
        let mut tries = 0;
        loop {
            match write() {
                Err(CoreError::RegistryMoved { .. }) if tries < WRITE_TRIES => {
                    tries += 1;
                    self.refresh_locked()?;
                }
                other => return other,
            }
        }
    }

    /// Read-modify-write of one record under the write lock.
    ///
    /// In a cluster another node may have written since this one loaded:
    /// the write is then refused, the changes are taken in and `f` runs
    /// again on the record as it now is.
    pub(crate) fn update<T>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut KeyRecord) -> CoreResult<T>,
    ) -> CoreResult<(T, Arc<KeyRecord>)> {
        let w = self.writes.locked();
        let (out, (stored, confirm)) = self.retrying(|| {
            let mut rec = (*self.record(name)?).clone();
            let out = f(&mut rec)?;
            Ok((out, self.store(rec, false)?))
        })?;
        drop(w);
        self.confirm(confirm);
        Ok((out, stored))
    }

    pub fn hsm(&self) -> &Arc<dyn Hsm> {
        &self.hsm
    }

    pub fn list_keys(&self) -> CoreResult<Vec<KeyRecord>> {
        self.unsealed()?;
        let t = self.table();
        if let Some(g) = &t.global {
            return Err(CoreError::RegistryTampered {
                key: None,
                what: g.clone(),
            });
        }
        let mut v: Vec<KeyRecord> = t.by_name.values().map(|r| (**r).clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub fn describe_key(&self, name: &str) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        Ok((*self.record(name)?).clone())
    }
}

#[cfg(test)]
mod tests;
