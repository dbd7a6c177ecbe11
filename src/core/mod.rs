//! The core: envelope encryption (data keys bound to an encryption
//! context), CMK creation and the registry. It knows nothing of gRPC.
//!
//! Every public method is synchronous and may block on the HSM or the
//! registry; [`Keywarden`] is shared behind an `Arc` and the API layer runs
//! calls with `spawn_blocking`.

pub mod blob;
pub mod error;
pub mod registry;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::hsm::{Hsm, HsmKeyId, TokenDescription, UnwrapItem, LABEL_PREFIX};
use crate::seal::{IssuedShare, Seal, SealStatus, ShareProgress, ShareSpec};
use crate::secret::{DataKey, Pin};
use blob::Blob;
pub use error::{CoreError, CoreResult};
use registry::{KeyRecord, Registry, RegistryError, VersionRecord};

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

/// Differences between the registry and the token found at start.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    pub missing_on_token: Vec<String>,
    pub orphaned_on_token: Vec<String>,
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
}

pub struct Keywarden {
    hsm: Arc<dyn Hsm>,
    registry: Registry,
    seal: Seal,
    audit: Option<crate::audit::Audit>,
    drift: RwLock<Drift>,
    started_at: i64,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn reg_err(e: RegistryError) -> CoreError {
    match e {
        RegistryError::AlreadyExists(name) => CoreError::AlreadyExists { name },
        other => CoreError::Registry(other.to_string()),
    }
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
            drift: RwLock::new(Drift::default()),
            started_at: now(),
        }
    }

    /// Attaches the audit log: checkpoints are signed by the HSM while
    /// unsealed and written at unseal, seal and shutdown.
    pub fn with_audit(mut self, audit: crate::audit::Audit) -> Self {
        self.audit = Some(audit);
        self
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
        self.seal.require_unsealed().map_err(CoreError::Seal)
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

    /// Submits one unseal share; at the threshold the daemon unseals and
    /// reconciles the registry with the token.
    pub fn unseal(&self, share: &str) -> CoreResult<ShareProgress> {
        let p = self.seal.submit_unseal_share(self.hsm.as_ref(), share)?;
        if p.complete {
            if let Err(e) = self.reconcile() {
                warn!(error = %e, "reconciliation after unseal failed");
            }
            self.on_login("unseal");
        }
        Ok(p)
    }

    pub fn unseal_reset(&self) -> CoreResult<usize> {
        Ok(self.seal.reset_unseal()?)
    }

    pub fn seal(&self) -> CoreResult<()> {
        self.before_logout("seal");
        Ok(self.seal.seal(self.hsm.as_ref())?)
    }

    pub fn rekey_start(&self, spec: ShareSpec<'_>) -> CoreResult<(String, u8)> {
        Ok(self.seal.rekey_start(spec)?)
    }

    pub fn rekey_submit(&self, share: &str) -> CoreResult<(ShareProgress, Vec<IssuedShare>)> {
        Ok(self.seal.rekey_submit(share)?)
    }

    pub fn rekey_verify(&self, share: &str) -> CoreResult<ShareProgress> {
        let p = self.seal.rekey_verify(self.hsm.as_ref(), share)?;
        if p.complete {
            // The login was renewed: session copies must be made again.
            if let Err(e) = self.reconcile() {
                warn!(error = %e, "reconciliation after rekey failed");
            }
            self.on_login("rekey");
        }
        Ok(p)
    }

    pub fn rekey_cancel(&self) -> CoreResult<()> {
        Ok(self.seal.rekey_cancel()?)
    }

    /// Compares the registry with the token; records drift and activates
    /// every enabled version that is present.
    pub fn reconcile(&self) -> CoreResult<Drift> {
        let on_token = self.hsm.list_cmks().map_err(CoreError::from_hsm)?;
        let keys = self.registry.list().map_err(reg_err)?;
        let mut known: HashMap<HsmKeyId, String> = HashMap::new();
        let mut drift = Drift::default();
        let present: std::collections::HashSet<HsmKeyId> = on_token.iter().map(|o| o.id).collect();
        for k in &keys {
            for v in &k.versions {
                let what = format!("{}/v{} ({})", k.name, v.version, v.hsm_id);
                known.insert(v.hsm_id, what.clone());
                if !present.contains(&v.hsm_id) {
                    warn!(key = %k.name, version = v.version, "CMK version recorded in the registry is missing from the token");
                    drift.missing_on_token.push(what);
                } else if v.state == "enabled" {
                    if let Err(e) = self.hsm.activate(&v.hsm_id) {
                        warn!(key = %k.name, version = v.version, error = %e, "could not activate CMK version");
                    }
                }
            }
        }
        for o in &on_token {
            if !known.contains_key(&o.id) {
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

    /// Creates a CMK: generate in the HSM, record, and destroy the HSM
    /// object again if recording fails.
    pub fn create_key(&self, name: &str, description: &str) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        validate::description(description)?;
        if self.registry.key_by_name(name).map_err(reg_err)?.is_some() {
            return Err(CoreError::AlreadyExists { name: name.into() });
        }
        let mut hsm_id = [0u8; 16];
        self.hsm.random(&mut hsm_id).map_err(CoreError::from_hsm)?;
        let hsm_id = HsmKeyId(hsm_id);
        let id = *uuid::Uuid::new_v4().as_bytes();
        let label = format!("{LABEL_PREFIX}{name}/v1");
        self.hsm
            .generate_cmk(&hsm_id, &label)
            .map_err(CoreError::from_hsm)?;
        let created_at = now();
        let record = KeyRecord {
            id,
            name: name.to_string(),
            description: description.to_string(),
            state: "enabled".into(),
            created_at,
            algorithm: CMK_ALGORITHM.into(),
            versions: vec![VersionRecord {
                version: 1,
                hsm_id,
                state: "enabled".into(),
                created_at,
            }],
        };
        if let Err(e) = self.registry.insert_key(&record) {
            if let Err(de) = self.hsm.destroy_cmk(&hsm_id) {
                warn!(key = %name, id = %hsm_id, error = %de, "could not roll back HSM object after a failed registry write; it will show as drift");
            }
            return Err(reg_err(e));
        }
        if let Err(e) = self.hsm.activate(&hsm_id) {
            warn!(key = %name, error = %e, "no session copy for new CMK; the token object will be used");
        }
        info!(key = %name, key_id = %record.id_text(), "created CMK");
        Ok(record)
    }

    pub fn list_keys(&self) -> CoreResult<Vec<KeyRecord>> {
        self.unsealed()?;
        self.registry.list().map_err(reg_err)
    }

    pub fn describe_key(&self, name: &str) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        self.registry
            .key_by_name(name)
            .map_err(reg_err)?
            .ok_or_else(|| CoreError::KeyNotFound { name: name.into() })
    }

    fn usable_key(&self, name: &str, operation: &'static str) -> CoreResult<KeyRecord> {
        let k = self
            .registry
            .key_by_name(name)
            .map_err(reg_err)?
            .ok_or_else(|| CoreError::KeyNotFound { name: name.into() })?;
        if k.state != "enabled" {
            return Err(CoreError::KeyUnusable {
                name: k.name,
                state: k.state,
                operation,
            });
        }
        Ok(k)
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
        let mut metas: Vec<(Option<String>, Option<u32>, bool)> =
            Vec::with_capacity(requests.len());
        struct Prepared {
            key: KeyRecord,
            version: u32,
            hsm_id: HsmKeyId,
            header: [u8; blob::HEADER_LEN],
            aad: Vec<u8>,
        }
        let mut keys: HashMap<String, KeyRecord> = HashMap::new();
        let mut prepared: Vec<CoreResult<Prepared>> = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = (None, None, false);
            let p = (|| {
                validate::key_name("key", &req.key)?;
                meta.0 = Some(req.key.clone());
                let ctx = validate::context(req.context)?;
                meta.2 = gate(&req.key, &ctx).map_err(CoreError::PermissionDenied)?;
                let key = match keys.get(&req.key) {
                    Some(k) => k.clone(),
                    None => {
                        let k = self.usable_key(&req.key, "GenerateDataKey")?;
                        keys.insert(req.key.clone(), k.clone());
                        k
                    }
                };
                let v = key.current().ok_or_else(|| CoreError::KeyUnusable {
                    name: key.name.clone(),
                    state: "without an enabled version".into(),
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
                    header,
                    aad,
                })
            })();
            metas.push(meta);
            prepared.push(p);
        }

        // One HSM call per CMK version in the batch.
        let mut groups: BTreeMap<HsmKeyId, Vec<usize>> = BTreeMap::new();
        for (i, p) in prepared.iter().enumerate() {
            if let Ok(p) = p {
                groups.entry(p.hsm_id).or_default().push(i);
            }
        }
        let mut results: Vec<Option<CoreResult<GeneratedKey>>> =
            (0..prepared.len()).map(|_| None).collect();
        for (hsm_id, idxs) in groups {
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
                            debug_assert_eq!(blob.header(), p.header);
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

    /// Decrypt for one or many requests; each item succeeds or fails on its
    /// own.
    pub fn decrypt(
        &self,
        requests: Vec<DecryptRequest>,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<Decrypted>>> {
        self.unsealed()?;
        let mut metas: Vec<(Option<String>, Option<u32>, bool)> =
            Vec::with_capacity(requests.len());
        struct Prepared {
            key: KeyRecord,
            version: u32,
            blob: Blob,
            aad: Vec<u8>,
            hsm_id: HsmKeyId,
        }
        let mut prepared: Vec<CoreResult<Prepared>> = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = (None, None, false);
            let p = (|| {
                validate::blob_size(req.blob.len())?;
                if let Some(k) = &req.key {
                    validate::key_name("key", k)?;
                }
                let ctx = validate::context(req.context)?;
                let blob = Blob::decode(&req.blob)?;
                let key = self
                    .registry
                    .key_by_id(&blob.key_id)
                    .map_err(reg_err)?
                    .ok_or_else(|| CoreError::BlobKeyUnknown {
                        key_id: uuid::Uuid::from_bytes(blob.key_id).to_string(),
                    })?;
                meta.0 = Some(key.name.clone());
                meta.1 = Some(blob.key_version);
                meta.2 = gate(&key.name, &ctx).map_err(CoreError::PermissionDenied)?;
                if let Some(expected) = &req.key {
                    if *expected != key.name {
                        return Err(CoreError::KeyMismatch {
                            expected: expected.clone(),
                            actual: key.name,
                        });
                    }
                }
                if key.state != "enabled" {
                    return Err(CoreError::KeyUnusable {
                        name: key.name,
                        state: key.state,
                        operation: "Decrypt",
                    });
                }
                let v =
                    key.version(blob.key_version)
                        .ok_or_else(|| CoreError::BlobVersionUnknown {
                            name: key.name.clone(),
                            version: blob.key_version,
                        })?;
                let hsm_id = v.hsm_id;
                let aad = blob::aad(&blob.header(), &blob::canonical_context(&ctx));
                Ok(Prepared {
                    version: blob.key_version,
                    key,
                    blob,
                    aad,
                    hsm_id,
                })
            })();
            metas.push(meta);
            prepared.push(p);
        }
        let items: Vec<UnwrapItem<'_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|p| UnwrapItem {
                key: p.hsm_id,
                iv: p.blob.iv,
                aad: &p.aad,
                ciphertext: &p.blob.ciphertext,
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
                    let p = p?;
                    let dk = unwrapped
                        .next()
                        .ok_or_else(|| CoreError::Internal("HSM returned too few results".into()))?
                        .map_err(CoreError::from_hsm)?;
                    Ok(Decrypted {
                        key_id: p.key.id_text(),
                        key: p.key.name,
                        key_version: p.version,
                        plaintext: dk,
                    })
                })(),
            })
            .collect())
    }

    /// The encryption context for the audit log: each value replaced by
    /// HMAC-SHA256 under the keyring's audit key (first 16 bytes, hex), so
    /// equal values correlate but never appear. Sealed: values omitted.
    pub fn context_digest(
        &self,
        context: &HashMap<String, String>,
    ) -> serde_json::Map<String, serde_json::Value> {
        use hmac::{Hmac, Mac};
        let mut out = serde_json::Map::new();
        let digests = self.seal.with_keyring(|k| {
            context
                .iter()
                .map(|(name, value)| {
                    let d = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&k.audit_key[..]).map(
                        |mut m| {
                            m.update(name.as_bytes());
                            m.update(&[0]);
                            m.update(value.as_bytes());
                            hex::encode(&m.finalize().into_bytes()[..16])
                        },
                    );
                    (name.clone(), d.ok())
                })
                .collect::<Vec<_>>()
        });
        match digests {
            Ok(list) => {
                for (name, d) in list {
                    out.insert(name, d.map(serde_json::Value::from).unwrap_or_default());
                }
            }
            Err(_) => {
                for name in context.keys() {
                    out.insert(name.clone(), serde_json::Value::Null);
                }
            }
        }
        out
    }

    pub fn phase(&self) -> crate::seal::Phase {
        self.seal.phase()
    }

    pub fn status(&self) -> Status {
        let hsm_health = self.hsm.health().map_err(|e| e.to_string());
        Status {
            version: crate::VERSION,
            hsm_health,
            token: self.hsm.token().clone(),
            profile: self.hsm.profile_name().to_string(),
            session_copies: self.hsm.session_copies(),
            pool_size: self.hsm.pool_size(),
            key_count: match self.registry.count() {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "registry count failed");
                    0
                }
            },
            seal: self.seal.status(),
            drift: self.drift.read().unwrap_or_else(|p| p.into_inner()).clone(),
            started_at: self.started_at,
        }
    }
}
