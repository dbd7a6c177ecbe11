//! The core: envelope encryption (data keys bound to an encryption
//! context), the key lifecycle and the registry. It knows nothing of gRPC.
//!
//! Every public method is synchronous and may block on the HSM or the
//! registry; [`Keywarden`] is shared behind an `Arc` and the API layer runs
//! calls with `spawn_blocking`. While unsealed, the verified registry is
//! held in memory (the [`Table`]); every change is written through to disk
//! before the table changes, so a disabled key is refused by the very next
//! request.

pub mod blob;
pub mod error;
pub mod lifecycle;
pub mod model;
pub mod registry;
pub mod validate;
pub mod witness;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::audit::{EventKind, Outcome};
use crate::hsm::{
    Hsm, HsmKeyId, TokenDescription, UnwrapItem, LABEL_PREFIX, REGISTRY_COUNTER_LABEL,
};
use crate::seal::{IssuedShare, Seal, SealStatus, ShareProgress, ShareSpec};
use crate::secret::{DataKey, Pin};
use blob::Blob;
pub use error::{CoreError, CoreResult};
pub use lifecycle::{Actor, LifecycleConfig};
pub use model::KeyRecord;
use model::{KeyState, VersionState};
use registry::{Registry, RegistryError};

/// Algorithm name recorded for every CMK.
pub const CMK_ALGORITHM: &str = "AES_256_GCM";

/// Decides, per item, whether the caller may use `key` with this context;
/// `Ok(true)` when allowed only through a break-glass grant.
pub type Gate<'a> = &'a (dyn Fn(&str, &BTreeMap<String, String>) -> Result<bool, String> + Sync);

/// One item's outcome, with what the audit log records about it.
pub struct Item<T> {
    pub key: Option<String>,
    pub version: Option<u32>,
    pub break_glass: bool,
    pub result: CoreResult<T>,
}

/// One GenerateDataKey request.
pub struct GenerateRequest {
    pub key: String,
    pub context: HashMap<String, String>,
}

/// A fresh data key: plaintext (unless it was not asked for) and wrapped.
pub struct GeneratedKey {
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub plaintext: Option<DataKey>,
    pub blob: Vec<u8>,
}

/// One Decrypt request.
pub struct DecryptRequest {
    pub blob: Vec<u8>,
    pub context: HashMap<String, String>,
    /// When set, the blob must be under this key.
    pub key: Option<String>,
}

pub struct Decrypted {
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub plaintext: DataKey,
}

/// One ReEncrypt request.
pub struct ReEncryptRequest {
    pub blob: Vec<u8>,
    pub context: HashMap<String, String>,
    /// None: the blob's own key.
    pub destination_key: Option<String>,
    /// None: keep the source context.
    pub destination_context: Option<HashMap<String, String>>,
}

pub struct ReEncrypted {
    pub source_key: String,
    pub source_version: u32,
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub blob: Vec<u8>,
}

/// Differences between the registry and the token found at unseal.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    pub missing_on_token: Vec<String>,
    pub orphaned_on_token: Vec<String>,
    /// What reconciliation repaired (orphans destroyed).
    pub repaired: Vec<String>,
}

pub struct Status {
    pub version: &'static str,
    pub hsm_health: Result<(), String>,
    pub token: TokenDescription,
    pub profile: String,
    pub session_copies: bool,
    pub pool_size: usize,
    pub key_count: u32,
    pub drift: Drift,
    pub started_at: i64,
    pub seal: SealStatus,
    /// Registry integrity problems: (key or "registry", what).
    pub tampering: Vec<(String, String)>,
}

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
    audit: Option<crate::audit::Audit>,
    /// Where lifecycle and integrity events go (the audit log, or a test's
    /// memory).
    sink: Arc<dyn crate::audit::AuditSink>,
    drift: RwLock<Drift>,
    table: RwLock<Table>,
    /// Serializes read-modify-write changes of records.
    writes: Mutex<()>,
    counters: Mutex<HashMap<HsmKeyId, Counter>>,
    pub(crate) lifecycle: LifecycleConfig,
    /// Unsealed and the registry loaded: key operations may run.
    ready: std::sync::atomic::AtomicBool,
    started_at: i64,
    /// Key changes, for `WatchKeys` subscribers (client caches).
    changes: tokio::sync::broadcast::Sender<KeyChange>,
    clock: Arc<dyn crate::clock::Clock>,
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
/// encryption counters and descriptive fields.
#[allow(clippy::type_complexity)]
fn access_view(
    r: &KeyRecord,
) -> (
    KeyState,
    u32,
    Vec<(u32, VersionState)>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    usize,
) {
    (
        r.state,
        r.min_decrypt_version,
        r.versions.iter().map(|v| (v.version, v.state)).collect(),
        r.destroy_due_at,
        r.destruction_started_at,
        r.destroyed_at,
        r.holds.len(),
    )
}

/// How many changes a slow subscriber may fall behind before it is told
/// to reset.
const CHANGE_BACKLOG: usize = 1024;

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn reg_err(e: RegistryError) -> CoreError {
    match e {
        RegistryError::AlreadyExists(name) => CoreError::AlreadyExists { name },
        other => CoreError::Registry(other.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Keywarden {
    /// Builds the core. It starts sealed (or uninitialised): nothing touches
    /// the keys until custodians unseal.
    pub fn start(hsm: Arc<dyn Hsm>, registry: Registry, seal: Seal) -> Self {
        Keywarden {
            hsm,
            registry,
            seal,
            audit: None,
            sink: Arc::new(crate::audit::NullSink),
            drift: RwLock::new(Drift::default()),
            table: RwLock::new(Table::default()),
            writes: Mutex::new(()),
            counters: Mutex::new(HashMap::new()),
            lifecycle: LifecycleConfig::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            started_at: now(),
            changes: tokio::sync::broadcast::channel(CHANGE_BACKLOG).0,
            clock: Arc::new(crate::clock::SystemClock::default()),
        }
    }

    /// Reads time from `clock` (unit tests drive it).
    pub fn with_clock(mut self, clock: Arc<dyn crate::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Unix time in seconds, from the injected clock.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_secs()
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

    /// Attaches the audit log: checkpoints are signed by the HSM while
    /// unsealed and written at unseal, seal and shutdown.
    pub fn with_audit(mut self, audit: crate::audit::Audit) -> Self {
        self.sink = Arc::new(audit.clone());
        self.audit = Some(audit);
        self
    }

    /// Sends events to `sink` instead (unit tests).
    pub fn with_sink(mut self, sink: Arc<dyn crate::audit::AuditSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Records a lifecycle or integrity event.
    pub fn event(
        &self,
        kind: crate::audit::EventKind,
        outcome: crate::audit::Outcome,
        detail: serde_json::Value,
    ) {
        self.sink.record_event(kind, outcome, detail);
    }

    /// After a login: make sure the audit-signing key exists, publish its
    /// public half beside the log, install the signer, checkpoint.
    fn on_login(&self, reason: &str) {
        let Some(audit) = &self.audit else { return };
        match self.hsm.ensure_signing_key() {
            Ok(point) => {
                if let Err(e) = audit.publish_public_key(&point) {
                    warn!(error = %e, "could not write the audit public key");
                }
                let hsm = self.hsm.clone();
                audit.set_signer(Some(Arc::new(move |d: &[u8; 32]| {
                    hsm.sign_digest(d).map_err(|e| e.to_string())
                })));
                if let Err(e) = audit.checkpoint(reason) {
                    warn!(error = %e, "audit checkpoint failed");
                }
            }
            Err(e) => warn!(error = %e, "no audit signing key; checkpoints are not signed"),
        }
    }

    /// Before a logout: a final signed checkpoint, then no signer.
    fn before_logout(&self, reason: &str) {
        let Some(audit) = &self.audit else { return };
        if self.seal.phase() == crate::seal::Phase::Unsealed {
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
    }

    fn unsealed(&self) -> CoreResult<()> {
        self.seal.require_unsealed().map_err(CoreError::Seal)?;
        if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            // Logged in, but the registry is not loaded yet.
            return Err(CoreError::Seal(crate::seal::SealError::Sealed {
                received: 0,
                threshold: 0,
            }));
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
        Ok(self.seal.init(self.hsm.as_ref(), spec, user_pin, so_pin)?)
    }

    /// Everything that follows a login: the verified registry, session
    /// copies, the audit signer, overdue lifecycle work.
    fn after_login(&self, reason: &str) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Release);
        if let Err(e) = self.load_table() {
            warn!(error = %e, "loading the registry failed");
        }
        if let Some(a) = &self.audit {
            let _ = self
                .seal
                .with_keyring(|k| a.set_context_key(Some(&*k.audit_key)));
        }
        self.ready.store(true, std::sync::atomic::Ordering::Release);
        if let Err(e) = self.reconcile() {
            warn!(error = %e, "reconciliation failed");
        }
        self.on_login(reason);
        // Destructions and rotations that fell due while sealed or down.
        self.tick();
    }

    /// Submits one unseal share; at the threshold the daemon unseals.
    pub fn unseal(&self, share: &str) -> CoreResult<ShareProgress> {
        let p = self.seal.submit_unseal_share(self.hsm.as_ref(), share)?;
        if p.complete {
            self.after_login("unseal");
        }
        Ok(p)
    }

    pub fn unseal_reset(&self) -> CoreResult<usize> {
        Ok(self.seal.reset_unseal()?)
    }

    pub fn seal(&self) -> CoreResult<()> {
        self.ready
            .store(false, std::sync::atomic::Ordering::Release);
        self.before_logout("seal");
        let _ = self.changes.send(KeyChange::Reset);
        if let Some(a) = &self.audit {
            a.set_context_key(None);
        }
        self.seal.seal(self.hsm.as_ref())?;
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Table::default();
        Ok(())
    }

    pub fn rekey_start(&self, spec: ShareSpec<'_>) -> CoreResult<(String, u8)> {
        Ok(self.seal.rekey_start(spec)?)
    }

    pub fn rekey_submit(
        &self,
        share: &str,
    ) -> CoreResult<(ShareProgress, Option<crate::seal::NewShareSet>)> {
        Ok(self.seal.rekey_submit(share)?)
    }

    pub fn rekey_verify(&self, share: &str) -> CoreResult<ShareProgress> {
        let p = self.seal.rekey_verify(self.hsm.as_ref(), share)?;
        if p.complete {
            // The login was renewed: session copies must be made again.
            self.after_login("rekey");
        }
        Ok(p)
    }

    pub fn rekey_cancel(&self) -> CoreResult<()> {
        Ok(self.seal.rekey_cancel()?)
    }

    fn registry_key(&self) -> CoreResult<zeroize::Zeroizing<[u8; 32]>> {
        self.seal
            .with_keyring(|k| zeroize::Zeroizing::new(*k.registry_key))
            .map_err(CoreError::Seal)
    }

    /// Loads and verifies the registry into memory (at unseal), and checks
    /// it against the witnesses of its generation ([`witness`]).
    fn load_table(&self) -> CoreResult<()> {
        let key = self.registry_key()?;
        let hsm_gen = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(CoreError::from_hsm)?;
        let mut loaded = self.registry.load_verified(&key, None).map_err(reg_err)?;
        let manifest_problem = loaded.global.is_some();
        let audited = self
            .audit
            .as_ref()
            .map(|a| a.witnessed_registry_generation());
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
            if let Some(a) = &self.audit {
                a.note_registry_generation(loaded.generation);
            }
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
        let mut counters = lock(&self.counters);
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
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = t;
        let _ = self.changes.send(KeyChange::Reset);
        Ok(())
    }

    /// An operator's audited acceptance of a registry that a witness found
    /// older than it should be (a restore from backup, a lost audit log, a
    /// replaced token): the manifest, as verified, is re-authenticated at a
    /// generation above every witness, the HSM counter follows, and the
    /// registry is loaded again. Records whose own MAC fails stay refused,
    /// and a manifest that does not verify cannot be accepted this way.
    /// Returns what was accepted.
    pub fn acknowledge_tampering(&self) -> CoreResult<String> {
        self.unsealed()?;
        let _w = lock(&self.writes);
        let (what, rollback) = {
            let t = self.table();
            match (&t.global, &t.rollback) {
                (Some(g), Some(r)) => (g.clone(), r.clone()),
                (Some(g), None) => {
                    return Err(CoreError::Conflict(format!(
                        "the registry itself does not verify ({g}); this cannot be acknowledged: restore a good copy"
                    )))
                }
                (None, _) => {
                    return Err(CoreError::Conflict(
                        "no registry rollback or audit-log loss to acknowledge".into(),
                    ))
                }
            }
        };
        let key = self.registry_key()?;
        let counter = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(CoreError::from_hsm)?
            .unwrap_or(0);
        let audited = self
            .audit
            .as_ref()
            .map(|a| a.witnessed_registry_generation())
            .unwrap_or(0);
        let generation = self
            .registry
            .generation()
            .max(counter)
            .max(audited)
            .saturating_add(1);
        self.registry.reseal(&key, generation).map_err(reg_err)?;
        // Fail closed: without the counter the next load would refuse again.
        self.hsm
            .write_counter(REGISTRY_COUNTER_LABEL, generation)
            .map_err(CoreError::from_hsm)?;
        if let Some(a) = &self.audit {
            a.note_registry_generation(generation);
        }
        self.event(EventKind::RegistryTampering, Outcome::Acknowledged,
            serde_json::json!({"what": what, "kind": format!("{rollback:?}"), "new_generation": generation}),
        );
        drop(_w);
        self.load_table()?;
        if let Err(e) = self.reconcile() {
            warn!(error = %e, "reconciliation failed");
        }
        Ok(what)
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
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
    pub(crate) fn store(&self, record: KeyRecord, is_new: bool) -> CoreResult<Arc<KeyRecord>> {
        let key = self.registry_key()?;
        let gen = self.registry.put(&record, &key, is_new).map_err(reg_err)?;
        if let Some(a) = &self.audit {
            a.note_registry_generation(gen);
        }
        if let Err(e) = self.hsm.write_counter(REGISTRY_COUNTER_LABEL, gen) {
            warn!(error = %e, "could not advance the registry generation in the HSM");
        }
        let rec = Arc::new(record);
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        t.by_id.insert(rec.id, rec.name.clone());
        let old = t.by_name.insert(rec.name.clone(), rec.clone());
        drop(t);
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
        Ok(rec)
    }

    /// Read-modify-write of one record under the write lock.
    pub(crate) fn update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut KeyRecord) -> CoreResult<T>,
    ) -> CoreResult<(T, Arc<KeyRecord>)> {
        let _w = lock(&self.writes);
        let mut rec = (*self.record(name)?).clone();
        let out = f(&mut rec)?;
        let stored = self.store(rec, false)?;
        Ok((out, stored))
    }

    /// Compares the registry with the token; activates every usable version
    /// that is present; destroys orphans (Keywarden objects the registry
    /// never recorded: an interrupted create or rotate, which never wrapped
    /// anything); records what it found and what it repaired.
    pub fn reconcile(&self) -> CoreResult<Drift> {
        let _w = lock(&self.writes);
        let on_token = self.hsm.list_cmks().map_err(CoreError::from_hsm)?;
        let keys: Vec<Arc<KeyRecord>> = self.table().by_name.values().cloned().collect();
        let mut known: HashMap<HsmKeyId, String> = HashMap::new();
        let mut drift = Drift::default();
        let present: std::collections::HashSet<HsmKeyId> = on_token.iter().map(|o| o.id).collect();
        for k in &keys {
            for v in &k.versions {
                let what = format!("{}/v{} ({})", k.name, v.version, v.hsm_id);
                known.insert(v.hsm_id, what.clone());
                // Destroyed versions, and versions of a key whose destruction
                // was interrupted (the next tick finishes it), may be gone.
                if v.state == VersionState::Destroyed || k.state == KeyState::PendingDestruction {
                    continue;
                }
                if !present.contains(&v.hsm_id) {
                    warn!(key = %k.name, version = v.version, "CMK version recorded in the registry is missing from the token");
                    drift.missing_on_token.push(what);
                } else if matches!(v.state, VersionState::Active | VersionState::Deactivated) {
                    if let Err(e) = self.hsm.activate(&v.hsm_id) {
                        warn!(key = %k.name, version = v.version, error = %e, "could not activate CMK version");
                    }
                }
            }
        }
        let registry_ok = self.table().global.is_none();
        let reg_key = self.registry_key().ok();
        // Intents whose object was recorded after all (a crash between the
        // record and clearing the intent) are done.
        for id in self.registry.intent_ids().unwrap_or_default() {
            if known.contains_key(&HsmKeyId(id)) {
                self.intent_done(&HsmKeyId(id));
            }
        }
        for o in &on_token {
            if known.contains_key(&o.id) {
                continue;
            }
            {
                // Only an object with a verified creation intent (an
                // interrupted create or rotate that never wrapped anything)
                // is destroyed, and only with a verified registry. Anything
                // else is reported, never touched: it may be a real key
                // (a registry restored from an older copy, a deleted row).
                let intended = reg_key.as_ref().is_some_and(|k| {
                    self.registry
                        .has_intent(k, &o.id.0, &o.label)
                        .unwrap_or(false)
                });
                if registry_ok && self.table().tampered.is_empty() && intended {
                    match self.hsm.destroy_cmk(&o.id) {
                        Ok(()) => {
                            warn!(label = %o.label, id = %o.id, "destroyed an orphan CMK object (an interrupted create or rotate)");
                            self.event(
                                EventKind::ReconcileRepair,
                                Outcome::OrphanDestroyed,
                                serde_json::json!({"label": o.label, "id": o.id.to_hex()}),
                            );
                            drift
                                .repaired
                                .push(format!("destroyed orphan {} ({})", o.label, o.id));
                            self.intent_done(&o.id);
                            continue;
                        }
                        Err(e) => {
                            warn!(label = %o.label, error = %e, "could not destroy an orphan")
                        }
                    }
                }
                warn!(label = %o.label, id = %o.id, "Keywarden object on the token is not in the registry");
                drift
                    .orphaned_on_token
                    .push(format!("{} ({})", o.label, o.id));
            }
        }
        info!(
            keys = keys.len(),
            token_objects = on_token.len(),
            missing = drift.missing_on_token.len(),
            orphaned = drift.orphaned_on_token.len(),
            "reconciled registry with token"
        );
        *self.drift.write().unwrap_or_else(|p| p.into_inner()) = drift.clone();
        Ok(drift)
    }

    pub fn hsm(&self) -> &Arc<dyn Hsm> {
        &self.hsm
    }

    /// Encryptions made under a version (an upper bound after a restart).
    pub fn encryptions(&self, id: &HsmKeyId) -> u64 {
        lock(&self.counters).get(id).map(|c| c.used).unwrap_or(0)
    }

    /// Counts `n` encryptions under a version before they are made: refuses
    /// past the hard limit and persists a new reservation when needed.
    fn count_encryptions(
        &self,
        key: &KeyRecord,
        version: u32,
        id: HsmKeyId,
        n: u64,
    ) -> CoreResult<()> {
        let limit = self.lifecycle.hard_limit_encryptions;
        let mut counters = lock(&self.counters);
        let c = counters.entry(id).or_default();
        if c.used + n > limit {
            return Err(CoreError::VersionExhausted {
                name: key.name.clone(),
                version,
                limit,
            });
        }
        if c.used + n > c.reserved {
            let want = (c.used + n)
                .max(c.reserved + self.lifecycle.reserve_block)
                .min(limit);
            let (_, _) = self.update(&key.name, |r| {
                if let Some(v) = r.versions.iter_mut().find(|v| v.hsm_id == id) {
                    v.reserved = want;
                }
                Ok(())
            })?;
            c.reserved = want;
        }
        c.used += n;
        Ok(())
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

    fn usable_key(&self, name: &str, operation: &'static str) -> CoreResult<Arc<KeyRecord>> {
        let k = self.record(name)?;
        match k.state {
            KeyState::Active => Ok(k),
            KeyState::Destroyed => Err(CoreError::KeyDestroyed {
                name: k.name.clone(),
                at: k.destroyed_at.unwrap_or(0),
            }),
            other => Err(CoreError::KeyUnusable {
                name: k.name.clone(),
                state: other.as_str().to_string(),
                operation,
            }),
        }
    }

    /// The version a blob names, if it may decrypt.
    fn decryptable(k: &KeyRecord, version: u32) -> CoreResult<HsmKeyId> {
        let v = k
            .version(version)
            .ok_or_else(|| CoreError::BlobVersionUnknown {
                name: k.name.clone(),
                version,
            })?;
        match v.state {
            VersionState::Compromised | VersionState::Destroyed => Err(CoreError::VersionRevoked {
                name: k.name.clone(),
                version,
                state: v.state.as_str(),
            }),
            _ if version < k.min_decrypt_version => Err(CoreError::VersionRetired {
                name: k.name.clone(),
                version,
                min: k.min_decrypt_version,
            }),
            _ => Ok(v.hsm_id),
        }
    }

    /// GenerateDataKey for one or many requests; each item succeeds or fails
    /// on its own. The outer error refuses the whole call (sealed).
    pub fn generate_data_keys(
        &self,
        requests: Vec<GenerateRequest>,
        with_plaintext: bool,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<GeneratedKey>>> {
        self.unsealed()?;
        struct Prepared {
            key: Arc<KeyRecord>,
            version: u32,
            hsm_id: HsmKeyId,
            aad: Vec<u8>,
        }
        let mut metas: Vec<(Option<String>, Option<u32>, bool)> =
            Vec::with_capacity(requests.len());
        let mut prepared: Vec<CoreResult<Prepared>> = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = (None, None, false);
            let p = (|| {
                validate::key_name("key", &req.key)?;
                meta.0 = Some(req.key.clone());
                let ctx = validate::context(req.context)?;
                meta.2 = gate(&req.key, &ctx).map_err(CoreError::PermissionDenied)?;
                let key = self.usable_key(&req.key, "GenerateDataKey")?;
                let v = key.current().ok_or_else(|| CoreError::KeyUnusable {
                    name: key.name.clone(),
                    state: "without an active version".into(),
                    operation: "GenerateDataKey",
                })?;
                let (version, hsm_id) = (v.version, v.hsm_id);
                meta.1 = Some(version);
                let header = blob::header(&key.id, version);
                let aad = blob::aad(&header, &blob::canonical_context(&ctx));
                Ok(Prepared {
                    key,
                    version,
                    hsm_id,
                    aad,
                })
            })();
            metas.push(meta);
            prepared.push(p);
        }

        // One HSM call per CMK version in the batch, counted first.
        let mut groups: BTreeMap<HsmKeyId, Vec<usize>> = BTreeMap::new();
        for (i, p) in prepared.iter().enumerate() {
            if let Ok(p) = p {
                groups.entry(p.hsm_id).or_default().push(i);
            }
        }
        let mut results: Vec<Option<CoreResult<GeneratedKey>>> =
            (0..prepared.len()).map(|_| None).collect();
        for (hsm_id, idxs) in groups {
            let first = idxs.first().and_then(|&i| prepared[i].as_ref().ok());
            let counted = match first {
                Some(p) => self.count_encryptions(&p.key, p.version, hsm_id, idxs.len() as u64),
                None => Err(CoreError::Internal("empty group".into())),
            };
            if let Err(e) = counted {
                for &i in &idxs {
                    results[i] = Some(Err(e.clone()));
                }
                continue;
            }
            let aads: Vec<&[u8]> = idxs
                .iter()
                .filter_map(|&i| prepared[i].as_ref().ok().map(|p| p.aad.as_slice()))
                .collect();
            match self.hsm.wrap_new_keys(&hsm_id, &aads) {
                Ok(wrapped) if wrapped.len() == idxs.len() => {
                    for (&i, w) in idxs.iter().zip(wrapped) {
                        if let Some(Ok(p)) = prepared.get(i) {
                            let blob = Blob {
                                key_id: p.key.id,
                                key_version: p.version,
                                iv: w.iv,
                                ciphertext: w.ciphertext,
                            };
                            results[i] = Some(Ok(GeneratedKey {
                                key: p.key.name.clone(),
                                key_id: p.key.id_text(),
                                key_version: p.version,
                                plaintext: with_plaintext.then_some(w.plaintext),
                                blob: blob.encode(),
                            }));
                        }
                    }
                }
                Ok(_) => {
                    for &i in &idxs {
                        results[i] = Some(Err(CoreError::Internal(
                            "HSM returned a wrong number of keys".into(),
                        )));
                    }
                }
                Err(e) => {
                    warn!(id = %hsm_id, error = %e, "wrap failed");
                    for &i in &idxs {
                        results[i] = Some(Err(CoreError::from_hsm(e.clone())));
                    }
                }
            }
        }
        Ok(prepared
            .into_iter()
            .zip(results)
            .zip(metas)
            .map(|((p, r), (key, version, break_glass))| Item {
                key,
                version,
                break_glass,
                result: match (p, r) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(r)) => r,
                    (Ok(_), None) => {
                        Err(CoreError::Internal("batch item was not processed".into()))
                    }
                },
            })
            .collect())
    }

    /// Parses, looks up and authorizes one blob for decryption.
    fn prepare_unwrap(
        &self,
        blob_bytes: &[u8],
        context: HashMap<String, String>,
        expected_key: Option<&str>,
        gate: Gate<'_>,
        meta: &mut (Option<String>, Option<u32>, bool),
    ) -> CoreResult<(Arc<KeyRecord>, Blob, Vec<u8>, HsmKeyId)> {
        validate::blob_size(blob_bytes.len())?;
        if let Some(k) = expected_key {
            validate::key_name("key", k)?;
        }
        let ctx = validate::context(context)?;
        let blob = Blob::decode(blob_bytes)?;
        let key = self.record_by_id(&blob.key_id)?;
        meta.0 = Some(key.name.clone());
        meta.1 = Some(blob.key_version);
        meta.2 = gate(&key.name, &ctx).map_err(CoreError::PermissionDenied)?;
        if let Some(expected) = expected_key {
            if expected != key.name {
                return Err(CoreError::KeyMismatch {
                    expected: expected.to_string(),
                    actual: key.name.clone(),
                });
            }
        }
        let key = self.usable_key(&key.name, "Decrypt")?;
        let hsm_id = Self::decryptable(&key, blob.key_version)?;
        let aad = blob::aad(&blob.header(), &blob::canonical_context(&ctx));
        Ok((key, blob, aad, hsm_id))
    }

    /// Decrypt for one or many requests; each item succeeds or fails on its
    /// own.
    pub fn decrypt(
        &self,
        requests: Vec<DecryptRequest>,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<Decrypted>>> {
        self.unsealed()?;
        let mut metas = Vec::with_capacity(requests.len());
        let mut prepared = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = (None, None, false);
            let p =
                self.prepare_unwrap(&req.blob, req.context, req.key.as_deref(), gate, &mut meta);
            metas.push(meta);
            prepared.push(p);
        }
        let items: Vec<UnwrapItem<'_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|(_, blob, aad, hsm_id)| UnwrapItem {
                key: *hsm_id,
                iv: blob.iv,
                aad,
                ciphertext: &blob.ciphertext,
            })
            .collect();
        let mut unwrapped = if items.is_empty() {
            Vec::new()
        } else {
            self.hsm.unwrap_many(&items)
        }
        .into_iter();
        drop(items);
        Ok(prepared
            .into_iter()
            .zip(metas)
            .map(|(p, (key, version, break_glass))| Item {
                key,
                version,
                break_glass,
                result: (|| {
                    let (k, blob, _, _) = p?;
                    let dk = unwrapped
                        .next()
                        .ok_or_else(|| CoreError::Internal("HSM returned too few results".into()))?
                        .map_err(CoreError::from_hsm)?;
                    Ok(Decrypted {
                        key_id: k.id_text(),
                        key: k.name.clone(),
                        key_version: blob.key_version,
                        plaintext: dk,
                    })
                })(),
            })
            .collect())
    }

    /// ReEncrypt: unwrap inside the daemon, wrap again under the newest
    /// version of the destination key. The plaintext never leaves.
    pub fn reencrypt(
        &self,
        requests: Vec<ReEncryptRequest>,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<ReEncrypted>>> {
        self.unsealed()?;
        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = (None, None, false);
            let result = (|| {
                let src_ctx_copy = req.context.clone();
                let (src, blob, aad, hsm_id) =
                    self.prepare_unwrap(&req.blob, req.context, None, gate, &mut meta)?;
                let dest_name = match &req.destination_key {
                    Some(d) => {
                        validate::key_name("destination_key", d)?;
                        d.clone()
                    }
                    None => src.name.clone(),
                };
                let dest_ctx = validate::context(req.destination_context.unwrap_or(src_ctx_copy))?;
                let bg = gate(&dest_name, &dest_ctx).map_err(CoreError::PermissionDenied)?;
                meta.2 |= bg;
                let dest = self.usable_key(&dest_name, "ReEncrypt")?;
                let v = dest.current().ok_or_else(|| CoreError::KeyUnusable {
                    name: dest.name.clone(),
                    state: "without an active version".into(),
                    operation: "ReEncrypt",
                })?;
                let (dv, did) = (v.version, v.hsm_id);
                let dk = self
                    .hsm
                    .unwrap_many(&[UnwrapItem {
                        key: hsm_id,
                        iv: blob.iv,
                        aad: &aad,
                        ciphertext: &blob.ciphertext,
                    }])
                    .pop()
                    .ok_or_else(|| CoreError::Internal("no unwrap result".into()))?
                    .map_err(CoreError::from_hsm)?;
                self.count_encryptions(&dest, dv, did, 1)?;
                let header = blob::header(&dest.id, dv);
                let new_aad = blob::aad(&header, &blob::canonical_context(&dest_ctx));
                let (iv, ct) = self
                    .hsm
                    .wrap_existing(&did, &[(&new_aad, &dk)])
                    .map_err(CoreError::from_hsm)?
                    .pop()
                    .ok_or_else(|| CoreError::Internal("no wrap result".into()))?;
                drop(dk);
                Ok(ReEncrypted {
                    source_key: src.name.clone(),
                    source_version: blob.key_version,
                    key: dest.name.clone(),
                    key_id: dest.id_text(),
                    key_version: dv,
                    blob: Blob {
                        key_id: dest.id,
                        key_version: dv,
                        iv,
                        ciphertext: ct,
                    }
                    .encode(),
                })
            })();
            out.push(Item {
                key: meta.0,
                version: meta.1,
                break_glass: meta.2,
                result,
            });
        }
        Ok(out)
    }

    /// Lists drift-relevant token objects and creates a new CMK version in
    /// the HSM (label `keywarden:NAME/vN`), returning its id.
    pub(crate) fn new_hsm_version(&self, name: &str, version: u32) -> CoreResult<HsmKeyId> {
        let mut hsm_id = [0u8; 16];
        self.hsm.random(&mut hsm_id).map_err(CoreError::from_hsm)?;
        let hsm_id = HsmKeyId(hsm_id);
        let label = format!("{LABEL_PREFIX}{name}/v{version}");
        // Intent first: a crash after the object exists but before its
        // record is written leaves an orphan that reconciliation may destroy.
        let key = self.registry_key()?;
        self.registry
            .put_intent(&key, &hsm_id.0, &label)
            .map_err(reg_err)?;
        self.hsm
            .generate_cmk(&hsm_id, &label)
            .map_err(CoreError::from_hsm)?;
        Ok(hsm_id)
    }

    /// The record now names the object: the intent is done.
    pub(crate) fn intent_done(&self, hsm_id: &HsmKeyId) {
        if let Err(e) = self.registry.clear_intent(&hsm_id.0) {
            warn!(error = %e, "could not clear a creation intent");
        }
    }

    pub fn phase(&self) -> crate::seal::Phase {
        self.seal.phase()
    }

    pub fn status(&self) -> Status {
        let hsm_health = self.hsm.health().map_err(|e| e.to_string());
        let t = self.table();
        let mut tampering: Vec<(String, String)> = t
            .tampered
            .iter()
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        if let Some(g) = &t.global {
            tampering.insert(0, ("registry".into(), g.clone()));
        }
        let seal = self.seal.status();
        if let Some(what) = &seal.tampered {
            tampering.insert(0, ("seal".into(), what.clone()));
        }
        Status {
            version: crate::VERSION,
            hsm_health,
            token: self.hsm.token().clone(),
            profile: self.hsm.profile_name().to_string(),
            session_copies: self.hsm.session_copies(),
            pool_size: self.hsm.pool_size(),
            key_count: t.by_name.len() as u32,
            drift: self.drift.read().unwrap_or_else(|p| p.into_inner()).clone(),
            started_at: self.started_at,
            seal: {
                let mut st = seal;
                if st.phase == crate::seal::Phase::Unsealed
                    && !self.ready.load(std::sync::atomic::Ordering::Acquire)
                {
                    // Still loading the registry: not yet open for business.
                    st.phase = crate::seal::Phase::Sealed;
                }
                st
            },
            tampering,
        }
    }
    /// The encryption context for the audit log: each value replaced by
    /// HMAC-SHA256 under the keyring's audit key (first 16 bytes, hex), so
    /// equal values correlate but never appear. Sealed: values omitted.
    /// The audit layer holds the key (set at unseal), so this takes no seal
    /// lock on the data path.
    pub fn context_digest(
        &self,
        context: &HashMap<String, String>,
    ) -> serde_json::Map<String, serde_json::Value> {
        match &self.audit {
            Some(a) => a.context_digest(context),
            None => context
                .keys()
                .map(|k| (k.clone(), serde_json::Value::Null))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
