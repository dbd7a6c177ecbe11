//! An in-memory [`Hsm`] for unit tests: the same contract as the PKCS#11
//! implementation (PINs, login, CMK objects, AES-256-GCM wrapping with the
//! AAD, counters, an ECDSA P-256 signing key), with the key material in
//! this process's memory. It exists only in test builds (`cfg(test)` or
//! the `test-util` feature): a daemon binary never contains it, so CMK
//! material never lives in daemon memory.
//!
//! It can be told to lose the token ([`MemoryHsm::lose`]) so recovery paths
//! run without the fault shim.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

use super::{
    Hsm, HsmError, HsmKeyId, HsmObjectInfo, HsmResult, KeyAttributes, KeyKind, TokenDescription,
    UnwrapItem, WrappedKey, IV_LEN, MAC_LEN, TAG_LEN,
};
use crate::secret::{DataKey, Pin, DATA_KEY_LEN};
use crate::sync::Recover;

struct Cmk {
    label: String,
    kind: KeyKind,
    key: Zeroizing<[u8; 32]>,
}

/// What a token answers when a key is used for what its attributes forbid.
fn not_permitted(function: &str) -> HsmError {
    HsmError::Pkcs11 {
        function: function.into(),
        rv: "KeyFunctionNotPermitted".into(),
        class: super::ErrorClass::Caller,
        lost: false,
    }
}

struct State {
    user_pin: Zeroizing<String>,
    so_pin: Zeroizing<String>,
    logged_in: bool,
    cmks: HashMap<HsmKeyId, Cmk>,
    active: HashSet<HsmKeyId>,
    counters: HashMap<String, u64>,
    signing: Option<p256::ecdsa::SigningKey>,
    lost: Option<String>,
}

/// The in-memory token.
pub struct MemoryHsm {
    token: TokenDescription,
    state: Mutex<State>,
    /// Run at the start of every crypto call (tests: a change that lands
    /// while a key operation is in the HSM).
    hook: Mutex<Option<CryptoHook>>,
}

/// See [`MemoryHsm::on_crypto`].
pub type CryptoHook = std::sync::Arc<dyn Fn() + Send + Sync>;

impl MemoryHsm {
    /// A fresh token with these provisioning PINs.
    pub fn new(user_pin: &str, so_pin: &str) -> Self {
        MemoryHsm {
            token: TokenDescription {
                label: "memory".into(),
                serial: "0000".into(),
                manufacturer: "Keywarden tests".into(),
                model: "MemoryHsm".into(),
            },
            state: Mutex::new(State {
                user_pin: Zeroizing::new(user_pin.into()),
                so_pin: Zeroizing::new(so_pin.into()),
                logged_in: false,
                cmks: HashMap::new(),
                active: HashSet::new(),
                counters: HashMap::new(),
                signing: None,
                lost: None,
            }),
            hook: Mutex::new(None),
        }
    }

    /// Runs `hook` at the start of every crypto call, before the token's
    /// state is locked (`None` removes it).
    pub fn on_crypto(&self, hook: Option<CryptoHook>) {
        *self.hook.locked() = hook;
    }

    fn crypto_call(&self) {
        let hook = self.hook.locked().clone();
        if let Some(h) = hook {
            h();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Simulates losing the token: every key operation fails with
    /// `Unavailable` until [`Hsm::recover`].
    pub fn lose(&self, why: &str) {
        self.lock().lost = Some(why.into());
    }

    /// Removes a counter object, as someone with the SO PIN could.
    pub fn delete_counter(&self, label: &str) {
        self.lock().counters.remove(label);
    }

    fn usable(&self) -> HsmResult<MutexGuard<'_, State>> {
        let s = self.lock();
        if let Some(why) = &s.lost {
            return Err(HsmError::Unavailable(why.clone()));
        }
        if !s.logged_in {
            return Err(HsmError::NotLoggedIn);
        }
        Ok(s)
    }

    fn cipher(s: &State, id: &HsmKeyId) -> HsmResult<Aes256Gcm> {
        let c = s.cmks.get(id).ok_or(HsmError::ObjectNotFound(*id))?;
        if c.kind != KeyKind::Aes {
            return Err(not_permitted("C_EncryptInit or C_DecryptInit"));
        }
        Ok(Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(
            &c.key[..],
        )))
    }
}

fn random_bytes(buf: &mut [u8]) -> HsmResult<()> {
    getrandom::fill(buf).map_err(|e| HsmError::Unexpected(format!("random: {e}")))
}

fn seal(cipher: &Aes256Gcm, iv: &[u8; IV_LEN], aad: &[u8], key: &[u8]) -> HsmResult<Vec<u8>> {
    let mut buf = key.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(iv), aad, &mut buf)
        .map_err(|_| HsmError::Unexpected("AES-GCM encrypt".into()))?;
    buf.extend_from_slice(&tag);
    Ok(buf)
}

impl Hsm for MemoryHsm {
    fn with_token_writes_held(&self, f: &mut dyn FnMut()) {
        // Every write takes the state lock: holding it holds them all.
        let _state = self.state.locked();
        f();
    }

    fn token(&self) -> &TokenDescription {
        &self.token
    }
    fn session_copies(&self) -> bool {
        false
    }
    fn pool_size(&self) -> usize {
        1
    }
    fn profile_name(&self) -> &str {
        "memory"
    }
    fn health(&self) -> HsmResult<()> {
        match &self.lock().lost {
            Some(why) => Err(HsmError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }
    fn lost(&self) -> Option<String> {
        let s = self.lock();
        if s.logged_in {
            s.lost.clone()
        } else {
            None
        }
    }
    fn recover(&self) -> HsmResult<bool> {
        Ok(self.lock().lost.take().is_some())
    }
    fn login(&self, pin: &Pin) -> HsmResult<()> {
        let mut s = self.lock();
        if pin.expose_text() != s.user_pin.as_str() {
            return Err(HsmError::PinIncorrect { role: "user" });
        }
        s.logged_in = true;
        Ok(())
    }
    fn logout(&self) {
        let mut s = self.lock();
        s.logged_in = false;
        s.active.clear();
    }
    fn is_logged_in(&self) -> bool {
        self.lock().logged_in
    }
    fn verify_pins(&self, user: &Pin, so: &Pin) -> HsmResult<()> {
        let s = self.lock();
        if user.expose_text() != s.user_pin.as_str() {
            return Err(HsmError::PinIncorrect { role: "user" });
        }
        if so.expose_text() != s.so_pin.as_str() {
            return Err(HsmError::PinIncorrect { role: "so" });
        }
        Ok(())
    }
    fn change_pins(
        &self,
        user_old: &Pin,
        user_new: &Pin,
        so_old: &Pin,
        so_new: &Pin,
    ) -> HsmResult<()> {
        self.verify_pins(user_old, so_old)?;
        let mut s = self.lock();
        s.user_pin = Zeroizing::new(user_new.expose_text().into());
        s.so_pin = Zeroizing::new(so_new.expose_text().into());
        Ok(())
    }
    fn random(&self, buf: &mut [u8]) -> HsmResult<()> {
        drop(self.usable()?);
        random_bytes(buf)
    }
    fn generate_cmk(&self, id: &HsmKeyId, label: &str, kind: KeyKind) -> HsmResult<()> {
        let mut s = self.usable()?;
        let mut key = Zeroizing::new([0u8; 32]);
        random_bytes(&mut key[..])?;
        s.cmks.insert(
            *id,
            Cmk {
                label: label.into(),
                kind,
                key,
            },
        );
        Ok(())
    }
    fn activate(&self, id: &HsmKeyId) -> HsmResult<()> {
        let mut s = self.usable()?;
        if !s.cmks.contains_key(id) {
            return Err(HsmError::ObjectNotFound(*id));
        }
        s.active.insert(*id);
        Ok(())
    }
    fn destroy_cmk(&self, id: &HsmKeyId) -> HsmResult<()> {
        let mut s = self.usable()?;
        s.active.remove(id);
        s.cmks
            .remove(id)
            .map(|_| ())
            .ok_or(HsmError::ObjectNotFound(*id))
    }
    fn list_cmks(&self) -> HsmResult<Vec<HsmObjectInfo>> {
        let s = self.usable()?;
        let mut out: Vec<HsmObjectInfo> = s
            .cmks
            .iter()
            .map(|(id, c)| HsmObjectInfo {
                id: *id,
                label: c.label.clone(),
            })
            .collect();
        out.sort_by_key(|o| o.id);
        Ok(out)
    }
    fn key_attributes(&self, id: &HsmKeyId) -> HsmResult<KeyAttributes> {
        let s = self.usable()?;
        let c = s.cmks.get(id).ok_or(HsmError::ObjectNotFound(*id))?;
        let aes = c.kind == KeyKind::Aes;
        Ok(KeyAttributes {
            token: true,
            sensitive: true,
            always_sensitive: true,
            extractable: false,
            never_extractable: true,
            encrypt: aes,
            decrypt: aes,
            wrap: false,
            unwrap: false,
            sign: !aes,
            verify: !aes,
        })
    }
    fn wrap_new_keys(&self, key: &HsmKeyId, aads: &[&[u8]]) -> HsmResult<Vec<WrappedKey>> {
        self.crypto_call();
        let s = self.usable()?;
        let cipher = Self::cipher(&s, key)?;
        let mut out = Vec::with_capacity(aads.len());
        for aad in aads {
            let mut raw = Zeroizing::new([0u8; DATA_KEY_LEN + IV_LEN]);
            random_bytes(&mut raw[..])?;
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(&raw[DATA_KEY_LEN..]);
            let plaintext = DataKey::from_slice(&raw[..DATA_KEY_LEN])
                .ok_or_else(|| HsmError::Unexpected("random split".into()))?;
            let ciphertext = seal(&cipher, &iv, aad, plaintext.expose())?;
            out.push(WrappedKey {
                plaintext,
                iv,
                ciphertext,
            });
        }
        Ok(out)
    }
    fn encrypt_many(
        &self,
        key: &HsmKeyId,
        items: &[(&[u8], &[u8])],
    ) -> HsmResult<Vec<([u8; IV_LEN], Vec<u8>)>> {
        self.crypto_call();
        let s = self.usable()?;
        let cipher = Self::cipher(&s, key)?;
        items
            .iter()
            .map(|(aad, plaintext)| {
                let mut iv = [0u8; IV_LEN];
                random_bytes(&mut iv)?;
                Ok((iv, seal(&cipher, &iv, aad, plaintext)?))
            })
            .collect()
    }
    fn mac_many(&self, key: &HsmKeyId, data: &[&[u8]]) -> HsmResult<Vec<[u8; MAC_LEN]>> {
        use hmac::Mac;
        self.crypto_call();
        let s = self.usable()?;
        let c = s.cmks.get(key).ok_or(HsmError::ObjectNotFound(*key))?;
        if c.kind != KeyKind::Hmac {
            return Err(not_permitted("C_SignInit"));
        }
        data.iter()
            .map(|d| {
                let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&c.key[..])
                    .map_err(|_| HsmError::Unexpected("HMAC key".into()))?;
                m.update(d);
                Ok(m.finalize().into_bytes().into())
            })
            .collect()
    }
    fn read_counter(&self, label: &str) -> HsmResult<Option<u64>> {
        Ok(self.usable()?.counters.get(label).copied())
    }
    fn write_counter(&self, label: &str, value: u64) -> HsmResult<()> {
        let mut s = self.usable()?;
        let c = s.counters.entry(label.into()).or_insert(value);
        *c = (*c).max(value);
        Ok(())
    }
    fn decrypt_many(&self, items: &[UnwrapItem<'_>]) -> Vec<HsmResult<Zeroizing<Vec<u8>>>> {
        self.crypto_call();
        let s = match self.usable() {
            Ok(s) => s,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        items
            .iter()
            .map(|it| {
                let cipher = Self::cipher(&s, &it.key)?;
                let split =
                    it.ciphertext
                        .len()
                        .checked_sub(TAG_LEN)
                        .ok_or_else(|| HsmError::Pkcs11 {
                            function: "C_Decrypt".into(),
                            rv: "EncryptedDataLenRange".into(),
                            class: super::ErrorClass::Caller,
                            lost: false,
                        })?;
                let mut buf = Zeroizing::new(it.ciphertext[..split].to_vec());
                let tag = *Tag::from_slice(&it.ciphertext[split..]);
                cipher
                    .decrypt_in_place_detached(Nonce::from_slice(&it.iv), it.aad, &mut buf, &tag)
                    .map_err(|_| HsmError::AuthenticationFailed)?;
                Ok(buf)
            })
            .collect()
    }
    fn ensure_signing_key(&self) -> HsmResult<Vec<u8>> {
        let mut s = self.usable()?;
        if s.signing.is_none() {
            let mut seed = Zeroizing::new([0u8; 32]);
            random_bytes(&mut seed[..])?;
            let k = p256::ecdsa::SigningKey::from_slice(&seed[..])
                .map_err(|e| HsmError::Unexpected(format!("P-256 key: {e}")))?;
            s.signing = Some(k);
        }
        let k = s
            .signing
            .as_ref()
            .ok_or_else(|| HsmError::Unexpected("no key".into()))?;
        Ok(k.verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec())
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> HsmResult<Vec<u8>> {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let s = self.usable()?;
        let k = s
            .signing
            .as_ref()
            .ok_or_else(|| HsmError::Unexpected("no signing key".into()))?;
        let sig: p256::ecdsa::Signature = k
            .sign_prehash(digest)
            .map_err(|e| HsmError::Unexpected(format!("sign: {e}")))?;
        Ok(sig.to_bytes().to_vec())
    }
}
