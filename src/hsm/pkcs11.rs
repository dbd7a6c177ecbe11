//! The PKCS#11 implementation of [`Hsm`], through `cryptoki`.
//!
//! Session discipline: one context initialised with OS locking; one
//! long-lived logged-in session that holds the login for the whole token
//! (and owns the session copies of CMK versions); a bounded pool of worker
//! sessions checked out per operation.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use zeroize::Zeroizing;

use super::profile::HsmProfile;
use super::{
    ErrorClass, Hsm, HsmError, HsmKeyId, HsmObjectInfo, HsmResult, KeyAttributes, TokenDescription,
    UnwrapItem, WrappedKey, IV_LEN, LABEL_PREFIX, TAG_LEN,
};
use crate::config::TokenSelector;
use crate::secret::{DataKey, Pin, DATA_KEY_LEN};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Classifies a PKCS#11 return value.
fn classify(rv: RvError) -> ErrorClass {
    match rv {
        RvError::DeviceRemoved
        | RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::SessionCount
        | RvError::CryptokiNotInitialized
        | RvError::UserNotLoggedIn
        | RvError::FunctionFailed => ErrorClass::Transient,
        RvError::ArgumentsBad
        | RvError::DataInvalid
        | RvError::DataLenRange
        | RvError::EncryptedDataInvalid
        | RvError::EncryptedDataLenRange => ErrorClass::Caller,
        _ => ErrorClass::Permanent,
    }
}

fn ck(e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, function) => HsmError::Pkcs11 {
            function: format!("C_{function:?}"),
            rv: format!("{rv:?}"),
            class: classify(rv),
        },
        CkError::LibraryLoading(e) => HsmError::Module(e.to_string()),
        other => HsmError::Unexpected(other.to_string()),
    }
}

fn is_transient(e: &HsmError) -> bool {
    e.class() == ErrorClass::Transient
}

/// A bounded pool of worker sessions.
struct SessionPool {
    sessions: Mutex<Vec<Session>>,
    available: Condvar,
    size: usize,
}

struct PooledSession<'a> {
    pool: &'a SessionPool,
    ctx: &'a Pkcs11,
    slot: Slot,
    session: Option<Session>,
    broken: bool,
}

impl SessionPool {
    fn open(ctx: &Pkcs11, slot: Slot, size: usize) -> HsmResult<Self> {
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            sessions.push(ctx.open_rw_session(slot).map_err(ck)?);
        }
        Ok(SessionPool {
            sessions: Mutex::new(sessions),
            available: Condvar::new(),
            size,
        })
    }

    fn get<'a>(&'a self, ctx: &'a Pkcs11, slot: Slot) -> PooledSession<'a> {
        let mut guard = lock(&self.sessions);
        loop {
            if let Some(session) = guard.pop() {
                return PooledSession {
                    pool: self,
                    ctx,
                    slot,
                    session: Some(session),
                    broken: false,
                };
            }
            guard = self
                .available
                .wait(guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl PooledSession<'_> {
    fn session(&self) -> HsmResult<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| HsmError::Unexpected("pooled session missing".into()))
    }

    /// Records an error; a transient one retires this session.
    fn note(&mut self, e: HsmError) -> HsmError {
        if is_transient(&e) {
            self.broken = true;
        }
        e
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        let mut session = self.session.take();
        if self.broken {
            drop(session.take());
            // Replace it so the pool keeps its size; if the token is gone this
            // fails and the pool shrinks until recovery rebuilds it.
            session = self.ctx.open_rw_session(self.slot).ok();
        }
        if let Some(s) = session {
            lock(&self.pool.sessions).push(s);
            self.pool.available.notify_one();
        }
    }
}

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

/// The PKCS#11 HSM.
pub struct Pkcs11Hsm {
    // Field order matters for drop: sessions close before the context
    // finalises.
    handles: RwLock<HashMap<HsmKeyId, KeyHandles>>,
    pool: SessionPool,
    login: Mutex<Session>,
    ctx: Pkcs11,
    slot: Slot,
    token: TokenDescription,
    profile: HsmProfile,
}

impl Pkcs11Hsm {
    /// Loads the module, initialises it with OS locking, selects the token by
    /// label or serial, logs in and opens the worker pool.
    pub fn open(
        module: &Path,
        selector: &TokenSelector,
        pin: &Pin,
        profile: HsmProfile,
        pool_size: usize,
    ) -> HsmResult<Self> {
        let ctx = Pkcs11::new(module).map_err(ck)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(ck(e)),
        }
        let (slot, token) = select_token(&ctx, selector)?;
        let login = ctx.open_rw_session(slot).map_err(ck)?;
        match login.login(UserType::User, Some(&pin.to_auth_pin())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(ck(e)),
        }
        let pool = SessionPool::open(&ctx, slot, pool_size.max(1))?;
        Ok(Pkcs11Hsm {
            handles: RwLock::new(HashMap::new()),
            pool,
            login: Mutex::new(login),
            ctx,
            slot,
            token,
            profile,
        })
    }

    fn session(&self) -> PooledSession<'_> {
        self.pool.get(&self.ctx, self.slot)
    }

    fn find_token_object(&self, session: &Session, id: &HsmKeyId) -> HsmResult<ObjectHandle> {
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

    fn handles(&self, session: &Session, id: &HsmKeyId) -> HsmResult<KeyHandles> {
        if let Some(h) = self
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(*h);
        }
        let token = self.find_token_object(session, id)?;
        let h = KeyHandles { token, copy: None };
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*id)
            .or_insert(h);
        Ok(h)
    }

    fn forget(&self, id: &HsmKeyId) -> Option<KeyHandles> {
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    fn gcm_decrypt(
        &self,
        session: &Session,
        item: &UnwrapItem<'_>,
    ) -> HsmResult<Zeroizing<Vec<u8>>> {
        let handle = self.handles(session, &item.key)?.for_crypto();
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

fn select_token(ctx: &Pkcs11, selector: &TokenSelector) -> HsmResult<(Slot, TokenDescription)> {
    let mut matches = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(ck)? {
        let info = ctx.get_token_info(slot).map_err(ck)?;
        if !info.token_initialized() {
            continue;
        }
        let hit = match selector {
            TokenSelector::Label(l) => info.label().trim_end() == l.trim_end(),
            TokenSelector::Serial(s) => info.serial_number().trim_end() == s.trim_end(),
        };
        if hit {
            matches.push((
                slot,
                TokenDescription {
                    label: info.label().trim_end().to_string(),
                    serial: info.serial_number().trim_end().to_string(),
                    manufacturer: info.manufacturer_id().trim_end().to_string(),
                    model: info.model().trim_end().to_string(),
                },
            ));
        }
    }
    match matches.len() {
        1 => matches
            .pop()
            .ok_or_else(|| HsmError::TokenNotFound(selector.to_string())),
        0 => Err(HsmError::TokenNotFound(format!(
            "no initialised token with {selector}"
        ))),
        n => Err(HsmError::TokenNotFound(format!(
            "{n} tokens match {selector}; select by serial"
        ))),
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
        self.pool.size
    }

    fn profile_name(&self) -> &str {
        &self.profile.name
    }

    fn health(&self) -> HsmResult<()> {
        let login = lock(&self.login);
        login.get_session_info().map_err(ck)?;
        Ok(())
    }

    fn random(&self, buf: &mut [u8]) -> HsmResult<()> {
        let mut s = self.session();
        let r = s.session()?.generate_random_slice(buf).map_err(ck);
        r.map_err(|e| s.note(e))
    }

    fn generate_cmk(&self, id: &HsmKeyId, label: &str) -> HsmResult<()> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Copyable(self.profile.session_key_copies),
            Attribute::Destroyable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Id(id.0.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let mut s = self.session();
        let r = s
            .session()?
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(ck);
        r.map(|_| ()).map_err(|e| s.note(e))
    }

    fn activate(&self, id: &HsmKeyId) -> HsmResult<()> {
        let mut s = self.session();
        let token = match self.find_token_object(s.session()?, id) {
            Ok(h) => h,
            Err(e) => return Err(s.note(e)),
        };
        drop(s);
        let copy = if self.profile.session_key_copies {
            // The copy belongs to the long-lived login session, so it lives
            // as long as the login does. CKA_SENSITIVE and CKA_EXTRACTABLE
            // are copied unchanged and cannot be weakened by C_CopyObject.
            let login = lock(&self.login);
            Some(
                login
                    .copy_object(token, &[Attribute::Token(false)])
                    .map_err(ck)?,
            )
        } else {
            None
        };
        let old = self
            .handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id, KeyHandles { token, copy });
        if let Some(KeyHandles { copy: Some(c), .. }) = old {
            let _ = lock(&self.login).destroy_object(c);
        }
        Ok(())
    }

    fn destroy_cmk(&self, id: &HsmKeyId) -> HsmResult<()> {
        if let Some(KeyHandles { copy: Some(c), .. }) = self.forget(id) {
            lock(&self.login).destroy_object(c).map_err(ck)?;
        }
        let mut s = self.session();
        let session = s.session()?;
        let r = self
            .find_token_object(session, id)
            .and_then(|h| session.destroy_object(h).map_err(ck));
        r.map_err(|e| s.note(e))
    }

    fn list_cmks(&self) -> HsmResult<Vec<HsmObjectInfo>> {
        let mut s = self.session();
        let r = (|| {
            let session = s.session()?;
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
        })();
        r.map_err(|e| s.note(e))
    }

    fn key_attributes(&self, id: &HsmKeyId) -> HsmResult<KeyAttributes> {
        let mut s = self.session();
        let r = (|| {
            let session = s.session()?;
            let h = self.find_token_object(session, id)?;
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
                    _ => {}
                }
            }
            Ok(k)
        })();
        r.map_err(|e| s.note(e))
    }

    fn wrap_new_keys(&self, key: &HsmKeyId, aads: &[&[u8]]) -> HsmResult<Vec<WrappedKey>> {
        const PER_KEY: usize = DATA_KEY_LEN + IV_LEN;
        let mut s = self.session();
        let r = (|| {
            let session = s.session()?;
            let handle = self.handles(session, key)?.for_crypto();
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
        })();
        r.map_err(|e| s.note(e))
    }

    fn unwrap_many(&self, items: &[UnwrapItem<'_>]) -> Vec<HsmResult<DataKey>> {
        let mut s = self.session();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let r = s
                .session()
                .and_then(|session| self.gcm_decrypt(session, item));
            let r = match r {
                Ok(pt) => DataKey::from_slice(&pt).ok_or_else(|| {
                    HsmError::Unexpected(format!("unwrapped key is {} bytes", pt.len()))
                }),
                Err(e) => Err(s.note(e)),
            };
            out.push(r);
        }
        out
    }
}
