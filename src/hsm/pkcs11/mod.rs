//! The PKCS#11 implementation of [`Hsm`], through `cryptoki`.
//!
//! Session discipline: one context initialised with OS locking; while
//! unsealed, one long-lived logged-in session that holds the login for the
//! whole token (and owns the session copies of CMK versions) and a bounded
//! pool of worker sessions checked out per operation. Sealing drops both.
//!
//! Recovery (`recovery.rs`): a call that fails because the token or its sessions are gone
//! (device removed, token not present, session handle invalid, cryptoki not
//! initialised, device error) marks the HSM *lost*. While lost every
//! operation fails fast with [`HsmError::Unavailable`]; [`Hsm::recover`]
//! (driven by the daemon every few hundred milliseconds) drops the dead
//! sessions, re-initialises the module if it has to, finds the same token
//! by serial, logs in again with the PIN kept for that purpose, reopens the
//! pool and rebuilds the session copies.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::sync::{Recover, RecoverRw};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use zeroize::Zeroizing;

mod error;
mod login;
mod objects;
mod pool;
mod recovery;

#[cfg(test)]
use error::LOSS;
use error::{ck, pin_err};
use objects::{counter_objects, find_by_label, select_token, unwrap_ec_point, P256_PARAMS};
use pool::{PooledSession, SessionPool};

use super::profile::HsmProfile;
use super::{
    ErrorClass, Hsm, HsmError, HsmKeyId, HsmObjectInfo, HsmResult, KeyAttributes, KeyKind,
    TokenDescription, UnwrapItem, WrappedKey, IV_LEN, LABEL_PREFIX, MAC_LEN, TAG_LEN,
};
use crate::config::TokenSelector;
use crate::secret::{DataKey, Pin, DATA_KEY_LEN};

#[derive(Clone, Copy)]
struct KeyHandles {
    token: ObjectHandle,
    copy: Option<ObjectHandle>,
}

impl KeyHandles {
    fn for_crypto(&self) -> ObjectHandle {
        self.copy.unwrap_or(self.token)
    }
}

/// What exists only while logged in. Field order matters for drop: handles,
/// then the pool, then the login session.
struct Live {
    handles: RwLock<HashMap<HsmKeyId, KeyHandles>>,
    pool: SessionPool,
    login: Mutex<Session>,
}

/// SoftHSM, its token files shared by several processes (a cluster's
/// nodes, a daemon and its backup), now and then refuses to create a token
/// object right after another wrote one: CKR_GENERAL_ERROR, and (seen in
/// CI) CKR_TEMPLATE_INCONSISTENT to a constant template every other call
/// accepts. Creating again succeeds. A token that really refuses the
/// template still fails, after three attempts.
fn transient_create(e: &HsmError) -> bool {
    error::is_rv(e, RvError::GeneralError) || error::is_rv(e, RvError::TemplateInconsistent)
}

/// The PKCS#11 HSM.
pub struct Pkcs11Hsm {
    live: RwLock<Option<Arc<Live>>>,
    /// Serializes every change of token objects (create, destroy,
    /// counters): SoftHSM fails C_GenerateKey with CKR_GENERAL_ERROR now and
    /// then when two sessions create token objects at once.
    token_writes: Mutex<()>,
    /// One loaded module. Re-initialising calls C_Finalize and
    /// C_Initialize on it; it is never unloaded.
    ctx: Pkcs11,
    /// The token's slot; it may change when the module is re-initialised.
    slot: RwLock<Slot>,
    token: TokenDescription,
    profile: HsmProfile,
    pool_size: usize,
    /// While unsealed: the user PIN, which is all that logging in again
    /// needs (never the unseal key). Zeroized when dropped; in memory that
    /// `mlockall` locked where the limit allowed.
    relogin: Mutex<Option<Pin>>,
    /// CMK versions made usable since login: their session copies are
    /// rebuilt after a recovery.
    activated: Mutex<HashSet<HsmKeyId>>,
    /// Why the HSM is lost, while it is.
    lost: RwLock<Option<HsmError>>,
    /// Recovery attempts that failed since the loss.
    failed_recoveries: AtomicU32,
    /// Counts logins (see [`SessionPool::generation`]).
    generation: AtomicU32,
    /// Serializes login, logout and recovery, so a seal during a recovery
    /// attempt cannot be undone by it.
    transitions: Mutex<()>,
}

impl Pkcs11Hsm {
    /// Loads the module, initialises it with OS locking and selects the
    /// token by label or serial. Does not log in.
    pub fn connect(
        module: &Path,
        selector: &TokenSelector,
        profile: HsmProfile,
        pool_size: usize,
    ) -> HsmResult<Self> {
        let ctx = Pkcs11::new(module).map_err(ck)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(ck(e)),
        }
        let (slot, token) = select_token(&ctx, selector)?;
        Ok(Pkcs11Hsm {
            live: RwLock::new(None),
            token_writes: Mutex::new(()),
            ctx,
            slot: RwLock::new(slot),
            token,
            profile,
            pool_size: pool_size.max(1),
            relogin: Mutex::new(None),
            activated: Mutex::new(HashSet::new()),
            lost: RwLock::new(None),
            failed_recoveries: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            transitions: Mutex::new(()),
        })
    }

    fn slot(&self) -> Slot {
        *self.slot.read_locked()
    }

    fn is_lost(&self) -> bool {
        self.lost.read_locked().is_some()
    }

    /// Opens the login session, logs in and opens the worker pool.
    fn open_live(&self, pin: &Pin) -> HsmResult<Arc<Live>> {
        let slot = self.slot();
        let login = self.ctx.open_rw_session(slot).map_err(ck)?;
        match login.login(UserType::User, Some(&pin.to_auth_pin())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(pin_err(e, "user")),
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pool = match SessionPool::open(&self.ctx, slot, self.pool_size, generation) {
            Ok(p) => p,
            Err(e) => {
                let _ = login.logout();
                return Err(e);
            }
        };
        Ok(Arc::new(Live {
            handles: RwLock::new(HashMap::new()),
            pool,
            login: Mutex::new(login),
        }))
    }

    /// Finds the token object and, where the profile says so, makes the
    /// session copy that crypto uses.
    fn activate_in(&self, live: &Live, id: &HsmKeyId) -> HsmResult<()> {
        let token = {
            let mut s = live.session(self)?;
            match Self::find_token_object(s.session()?, id) {
                Ok(h) => h,
                Err(e) => return Err(s.note(e)),
            }
        };
        let copy = if self.profile.session_key_copies {
            // The copy belongs to the long-lived login session, so it lives
            // as long as the login does. CKA_SENSITIVE and CKA_EXTRACTABLE
            // are copied unchanged and cannot be weakened by C_CopyObject.
            let login = live.login.locked();
            Some(
                login
                    .copy_object(
                        token,
                        &[Attribute::Token(false), Attribute::Modifiable(false)],
                    )
                    .map_err(ck)
                    .inspect_err(|e| self.note_loss(e, live.pool.generation))?,
            )
        } else {
            None
        };
        let old = live
            .handles
            .write_locked()
            .insert(*id, KeyHandles { token, copy });
        if let Some(KeyHandles { copy: Some(c), .. }) = old {
            let _ = live.login.locked().destroy_object(c);
        }
        Ok(())
    }

    /// The token's mechanisms, as cryptoki names them.
    pub fn mechanism_names(&self) -> Result<Vec<String>, cryptoki::error::Error> {
        self.ctx
            .get_mechanism_list(self.slot())
            .map(|l| l.iter().map(|m| m.to_string()).collect())
    }

    /// Checks out a worker session, runs `f` with it, and records what went
    /// wrong (a transient error retires the session; a lost token is
    /// noticed), the one place every token call goes through.
    fn with_session<T>(&self, f: impl FnOnce(&Live, &Session) -> HsmResult<T>) -> HsmResult<T> {
        let live = self.live()?;
        let mut s = live.session(self)?;
        let r = match s.session() {
            Ok(session) => f(&live, session),
            Err(e) => Err(e),
        };
        r.map_err(|e| s.note(e))
    }

    fn live(&self) -> HsmResult<Arc<Live>> {
        if let Some(why) = &*self.lost.read_locked() {
            return Err(HsmError::Unavailable(why.to_string()));
        }
        self.live.read_locked().clone().ok_or(HsmError::NotLoggedIn)
    }

    fn find_token_object(session: &Session, id: &HsmKeyId) -> HsmResult<ObjectHandle> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Id(id.0.to_vec()),
        ];
        let found = session.find_objects(&template).map_err(ck)?;
        match found.as_slice() {
            [h] => Ok(*h),
            [] => Err(HsmError::ObjectNotFound(*id)),
            _ => Err(HsmError::Unexpected(format!(
                "{} token objects share CKA_ID {id}",
                found.len()
            ))),
        }
    }

    fn gcm_decrypt(
        &self,
        live: &Live,
        session: &Session,
        item: &UnwrapItem<'_>,
    ) -> HsmResult<Zeroizing<Vec<u8>>> {
        let handle = live.handles(session, &item.key)?.for_crypto();
        let mut iv = item.iv;
        let params =
            GcmParams::new(&mut iv, item.aad, ((TAG_LEN * 8) as u64).into()).map_err(ck)?;
        match session.decrypt(&Mechanism::AesGcm(params), handle, item.ciphertext) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            Err(CkError::Pkcs11(rv, _)) if self.profile.is_gcm_tag_failure(&format!("{rv:?}")) => {
                // Some tokens (SoftHSM) report a bad tag as CKR_GENERAL_ERROR.
                // Only call it a bad blob if the token otherwise answers.
                match session.get_session_info() {
                    Ok(_) => Err(HsmError::AuthenticationFailed),
                    Err(e) => Err(ck(e)),
                }
            }
            Err(e) => Err(ck(e)),
        }
    }
}

impl Live {
    fn session<'a>(&'a self, hsm: &'a Pkcs11Hsm) -> HsmResult<PooledSession<'a>> {
        self.pool.get(hsm)
    }

    fn handles(&self, session: &Session, id: &HsmKeyId) -> HsmResult<KeyHandles> {
        if let Some(h) = self.handles.read_locked().get(id) {
            return Ok(*h);
        }
        let token = Pkcs11Hsm::find_token_object(session, id)?;
        let h = KeyHandles { token, copy: None };
        self.handles.write_locked().entry(*id).or_insert(h);
        Ok(h)
    }

    fn forget(&self, id: &HsmKeyId) -> Option<KeyHandles> {
        self.handles.write_locked().remove(id)
    }
}

impl Hsm for Pkcs11Hsm {
    fn token(&self) -> &TokenDescription {
        &self.token
    }

    fn session_copies(&self) -> bool {
        self.profile.session_key_copies
    }

    fn pool_size(&self) -> usize {
        self.pool_size
    }

    fn profile_name(&self) -> &str {
        &self.profile.name
    }

    fn health(&self) -> HsmResult<()> {
        match self.live() {
            Ok(live) => {
                live.login
                    .locked()
                    .get_session_info()
                    .map_err(ck)
                    .inspect_err(|e| self.note_loss(e, live.pool.generation))?;
                Ok(())
            }
            Err(e @ HsmError::Unavailable(_)) => Err(e),
            // Sealed: the token must still be present.
            Err(_) => self.ctx.get_token_info(self.slot()).map(|_| ()).map_err(ck),
        }
    }

    fn lost(&self) -> Option<String> {
        self.lost.read_locked().as_ref().map(HsmError::to_string)
    }

    fn recover(&self) -> HsmResult<bool> {
        self.recover_now()
    }

    fn reload_token(&self) -> HsmResult<()> {
        self.reload_logged_out()
    }
    fn login(&self, pin: &Pin) -> HsmResult<()> {
        self.login_now(pin)
    }

    fn logout(&self) {
        self.logout_now()
    }

    fn is_logged_in(&self) -> bool {
        // Lost but not sealed counts as logged in: recovery logs in again.
        self.relogin.locked().is_some()
    }

    fn verify_pins(&self, user: &Pin, so: &Pin) -> HsmResult<()> {
        self.verify_pins_now(user, so)
    }

    fn change_pins(
        &self,
        user_old: &Pin,
        user_new: &Pin,
        so_old: &Pin,
        so_new: &Pin,
    ) -> HsmResult<()> {
        self.change_pins_now(user_old, user_new, so_old, so_new)
    }

    fn ensure_signing_key(&self) -> HsmResult<Vec<u8>> {
        use super::AUDIT_KEY_LABEL;
        let _serial = self.token_writes.locked();
        self.with_session(|_live, session| {
            let public = match find_by_label(session, ObjectClass::PUBLIC_KEY, AUDIT_KEY_LABEL)? {
                Some(h) => h,
                None => {
                    let pub_t = [
                        Attribute::Token(true),
                        Attribute::Private(false),
                        Attribute::Verify(true),
                        Attribute::EcParams(P256_PARAMS.to_vec()),
                        Attribute::Label(AUDIT_KEY_LABEL.as_bytes().to_vec()),
                    ];
                    let priv_t = [
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Sign(true),
                        Attribute::Derive(false),
                        Attribute::Label(AUDIT_KEY_LABEL.as_bytes().to_vec()),
                    ];
                    let (public, _private) = session
                        .generate_key_pair(&Mechanism::EccKeyPairGen, &pub_t, &priv_t)
                        .map_err(ck)?;
                    public
                }
            };
            let attrs = session
                .get_attributes(public, &[AttributeType::EcPoint])
                .map_err(ck)?;
            for a in attrs {
                if let Attribute::EcPoint(p) = a {
                    return unwrap_ec_point(&p);
                }
            }
            Err(HsmError::Unexpected("audit key has no CKA_EC_POINT".into()))
        })
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> HsmResult<Vec<u8>> {
        use super::AUDIT_KEY_LABEL;
        self.with_session(|_live, session| {
            let key = find_by_label(session, ObjectClass::PRIVATE_KEY, AUDIT_KEY_LABEL)?
                .ok_or_else(|| HsmError::Unexpected("no audit signing key on the token".into()))?;
            session.sign(&Mechanism::Ecdsa, key, digest).map_err(ck)
        })
    }

    fn encrypt_many(
        &self,
        key: &HsmKeyId,
        items: &[(&[u8], &[u8])],
    ) -> HsmResult<Vec<([u8; IV_LEN], Vec<u8>)>> {
        self.with_session(|live, session| {
            let handle = live.handles(session, key)?.for_crypto();
            let mut ivs = vec![0u8; IV_LEN * items.len()];
            session.generate_random_slice(&mut ivs).map_err(ck)?;
            let mut out = Vec::with_capacity(items.len());
            for (chunk, (aad, plaintext)) in ivs.chunks_exact(IV_LEN).zip(items) {
                let mut iv = [0u8; IV_LEN];
                iv.copy_from_slice(chunk);
                let mut iv_param = iv;
                let params = GcmParams::new(&mut iv_param, aad, ((TAG_LEN * 8) as u64).into())
                    .map_err(ck)?;
                let ct = session
                    .encrypt(&Mechanism::AesGcm(params), handle, plaintext)
                    .map_err(ck)?;
                out.push((iv, ct));
            }
            Ok(out)
        })
    }

    fn read_counter(&self, label: &str) -> HsmResult<Option<u64>> {
        self.with_session(|_live, session| {
            let mut best = None;
            for (_, v) in counter_objects(session, label)? {
                best = best.max(Some(v));
            }
            Ok(best)
        })
    }

    fn write_counter(&self, label: &str, value: u64) -> HsmResult<()> {
        let _serial = self.token_writes.locked();
        // The counter is the rollback witness every node trusts: a write
        // lost to SoftHSM's transient refusals (see `transient_create`)
        // would let a rolled-back database pass. Tried again, reading the
        // objects afresh each time.
        let mut attempt = 0;
        loop {
            let r = self.with_session(|_live, session| {
                // Tokens (SoftHSM among them) keep CKA_VALUE of data objects
                // read only: write a new object, then remove the older
                // ones. A crash in between leaves two; readers take the
                // largest.
                let old = counter_objects(session, label)?;
                if old.iter().any(|(_, v)| *v >= value) {
                    return Ok(());
                }
                session
                    .create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Value(value.to_be_bytes().to_vec()),
                    ])
                    .map_err(ck)?;
                for (h, _) in old {
                    // Best effort: a leftover is harmless (readers take the max).
                    let _ = session.destroy_object(h);
                }
                Ok(())
            });
            match r {
                Err(e) if attempt < 2 && transient_create(&e) => {
                    tracing::warn!(error = %e, "C_CreateObject of the counter failed; trying again");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn random(&self, buf: &mut [u8]) -> HsmResult<()> {
        self.with_session(|_live, session| session.generate_random_slice(buf).map_err(ck))
    }

    fn generate_cmk(&self, id: &HsmKeyId, label: &str, kind: KeyKind) -> HsmResult<()> {
        let (key_type, mechanism, crypt, mac) = match kind {
            KeyKind::Aes => (KeyType::AES, Mechanism::AesKeyGen, true, false),
            KeyKind::Hmac => (
                KeyType::GENERIC_SECRET,
                Mechanism::GenericSecretKeyGen,
                false,
                true,
            ),
        };
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(
                self.profile.session_key_copies && self.profile.copy_needs_modifiable,
            ),
            Attribute::Copyable(self.profile.session_key_copies),
            Attribute::Destroyable(true),
            Attribute::Encrypt(crypt),
            Attribute::Decrypt(crypt),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(mac),
            Attribute::Verify(mac),
            Attribute::Derive(false),
            Attribute::Id(id.0.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let _serial = self.token_writes.locked();
        // SoftHSM now and then answers CKR_GENERAL_ERROR to a C_GenerateKey
        // right after other token objects were written (seen in CI just
        // after unseal, when the audit key pair and the counter are made):
        // the object is not created (checked), and a second attempt succeeds.
        // (See `transient_create`.)
        let mut attempt = 0;
        loop {
            let r = self.with_session(|_live, session| {
                session
                    .generate_key(&mechanism, &template)
                    .map(|_| ())
                    .map_err(ck)
            });
            match r {
                Err(e) if attempt < 2 && transient_create(&e) => {
                    // Made after all? Then it is there, once: done.
                    if self
                        .with_session(|_live, session| Self::find_token_object(session, id))
                        .is_ok()
                    {
                        return Ok(());
                    }
                    tracing::warn!(error = %e, "C_GenerateKey failed; trying again");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn activate(&self, id: &HsmKeyId) -> HsmResult<()> {
        let live = self.live()?;
        self.activate_in(&live, id)?;
        self.activated.locked().insert(*id);
        Ok(())
    }

    fn with_token_writes_held(&self, f: &mut dyn FnMut()) {
        let _serial = self.token_writes.locked();
        f();
    }

    fn destroy_cmk(&self, id: &HsmKeyId) -> HsmResult<()> {
        let _serial = self.token_writes.locked();
        let live = self.live()?;
        self.activated.locked().remove(id);
        if let Some(KeyHandles { copy: Some(c), .. }) = live.forget(id) {
            live.login
                .locked()
                .destroy_object(c)
                .map_err(ck)
                .inspect_err(|e| self.note_loss(e, live.pool.generation))?;
        }
        drop(live);
        self.with_session(|_live, session| {
            Self::find_token_object(session, id).and_then(|h| session.destroy_object(h).map_err(ck))
        })
    }

    fn list_cmks(&self) -> HsmResult<Vec<HsmObjectInfo>> {
        self.with_session(|_live, session| {
            let objects = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::Token(true),
                ])
                .map_err(ck)?;
            let mut out = Vec::new();
            for h in objects {
                let attrs = session
                    .get_attributes(h, &[AttributeType::Id, AttributeType::Label])
                    .map_err(ck)?;
                let mut id = None;
                let mut label = String::new();
                for a in attrs {
                    match a {
                        Attribute::Id(v) => id = <[u8; 16]>::try_from(v.as_slice()).ok(),
                        Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                        _ => {}
                    }
                }
                if let (Some(id), true) = (id, label.starts_with(LABEL_PREFIX)) {
                    out.push(HsmObjectInfo {
                        id: HsmKeyId(id),
                        label,
                    });
                }
            }
            Ok(out)
        })
    }

    fn key_attributes(&self, id: &HsmKeyId) -> HsmResult<KeyAttributes> {
        self.with_session(|_live, session| {
            let h = Self::find_token_object(session, id)?;
            let attrs = session
                .get_attributes(
                    h,
                    &[
                        AttributeType::Token,
                        AttributeType::Sensitive,
                        AttributeType::AlwaysSensitive,
                        AttributeType::Extractable,
                        AttributeType::NeverExtractable,
                        AttributeType::Encrypt,
                        AttributeType::Decrypt,
                        AttributeType::Wrap,
                        AttributeType::Unwrap,
                        AttributeType::Sign,
                        AttributeType::Verify,
                    ],
                )
                .map_err(ck)?;
            let mut k = KeyAttributes::default();
            for a in attrs {
                match a {
                    Attribute::Token(v) => k.token = v,
                    Attribute::Sensitive(v) => k.sensitive = v,
                    Attribute::AlwaysSensitive(v) => k.always_sensitive = v,
                    Attribute::Extractable(v) => k.extractable = v,
                    Attribute::NeverExtractable(v) => k.never_extractable = v,
                    Attribute::Encrypt(v) => k.encrypt = v,
                    Attribute::Decrypt(v) => k.decrypt = v,
                    Attribute::Wrap(v) => k.wrap = v,
                    Attribute::Unwrap(v) => k.unwrap = v,
                    Attribute::Sign(v) => k.sign = v,
                    Attribute::Verify(v) => k.verify = v,
                    _ => {}
                }
            }
            Ok(k)
        })
    }

    fn wrap_new_keys(&self, key: &HsmKeyId, aads: &[&[u8]]) -> HsmResult<Vec<WrappedKey>> {
        const PER_KEY: usize = DATA_KEY_LEN + IV_LEN;
        self.with_session(|live, session| {
            let handle = live.handles(session, key)?.for_crypto();
            // One C_GenerateRandom for every key and IV of the call.
            let mut random = Zeroizing::new(vec![0u8; PER_KEY * aads.len()]);
            session.generate_random_slice(&mut random).map_err(ck)?;
            let mut out = Vec::with_capacity(aads.len());
            for (chunk, aad) in random.chunks_exact(PER_KEY).zip(aads) {
                let mut iv = [0u8; IV_LEN];
                iv.copy_from_slice(&chunk[DATA_KEY_LEN..]);
                let plaintext = DataKey::from_slice(&chunk[..DATA_KEY_LEN])
                    .ok_or_else(|| HsmError::Unexpected("random split".into()))?;
                let mut iv_param = iv;
                let params = GcmParams::new(&mut iv_param, aad, ((TAG_LEN * 8) as u64).into())
                    .map_err(ck)?;
                let ciphertext = session
                    .encrypt(&Mechanism::AesGcm(params), handle, plaintext.expose())
                    .map_err(ck)?;
                if ciphertext.len() != DATA_KEY_LEN + TAG_LEN {
                    return Err(HsmError::Unexpected(format!(
                        "AES-GCM output is {} bytes, expected {}",
                        ciphertext.len(),
                        DATA_KEY_LEN + TAG_LEN
                    )));
                }
                out.push(WrappedKey {
                    plaintext,
                    iv,
                    ciphertext,
                });
            }
            Ok(out)
        })
    }

    fn mac_many(&self, key: &HsmKeyId, data: &[&[u8]]) -> HsmResult<Vec<[u8; MAC_LEN]>> {
        self.with_session(|live, session| {
            let handle = live.handles(session, key)?.for_crypto();
            let mut out = Vec::with_capacity(data.len());
            for d in data {
                let mac = session
                    .sign(&Mechanism::Sha256Hmac, handle, d)
                    .map_err(ck)?;
                let mac = <[u8; MAC_LEN]>::try_from(mac.as_slice()).map_err(|_| {
                    HsmError::Unexpected(format!("HMAC-SHA256 output is {} bytes", mac.len()))
                })?;
                out.push(mac);
            }
            Ok(out)
        })
    }

    fn decrypt_many(&self, items: &[UnwrapItem<'_>]) -> Vec<HsmResult<Zeroizing<Vec<u8>>>> {
        let live = match self.live() {
            Ok(l) => l,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut s = match live.session(self) {
            Ok(s) => s,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let r = s
                .session()
                .and_then(|session| self.gcm_decrypt(&live, session, item));
            out.push(r.map_err(|e| s.note(e)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn only_lost_token_or_session_errors_mark_the_hsm_lost() {
        for rv in LOSS {
            let e = ck(CkError::Pkcs11(*rv, Function::Encrypt));
            assert!(e.is_loss(), "{rv:?}");
            // A loss is retryable: the client sees UNAVAILABLE.
            assert_eq!(e.class(), ErrorClass::Transient, "{rv:?}");
        }
        for rv in [
            RvError::GeneralError,
            RvError::FunctionFailed,
            RvError::SessionCount,
            RvError::EncryptedDataInvalid,
            RvError::PinIncorrect,
            RvError::KeyHandleInvalid,
        ] {
            assert!(
                !ck(CkError::Pkcs11(rv, Function::Decrypt)).is_loss(),
                "{rv:?}"
            );
        }
        assert!(!HsmError::Unavailable("x".into()).is_loss());
        assert_eq!(
            HsmError::Unavailable("x".into()).class(),
            ErrorClass::Transient
        );
    }
}
