//! An [`Hsm`] that times every operation that reaches the token into the
//! metrics (`keywarden_hsm_operation_duration_seconds`) and counts its
//! failures; everything else passes straight through.

use std::sync::Arc;
use std::time::Instant;

use zeroize::Zeroizing;

use super::*;
use crate::metrics::Metrics;

/// An [`Hsm`] whose operations are timed and counted in [`Metrics`]; a
/// failure that is the caller's ([`ErrorClass::Caller`]) is not counted
/// as an HSM error.
pub struct Metered {
    inner: Arc<dyn Hsm>,
    metrics: Arc<Metrics>,
}

impl Metered {
    /// `inner`, metered into `metrics`.
    pub fn new(inner: Arc<dyn Hsm>, metrics: Arc<Metrics>) -> Self {
        Metered { inner, metrics }
    }

    fn timed<T>(&self, op: &'static str, f: impl FnOnce() -> HsmResult<T>) -> HsmResult<T> {
        let start = Instant::now();
        let r = f();
        // The caller's mistakes (a wrong PIN, a bad blob) are not the HSM's.
        let fault = matches!(&r, Err(e) if e.class() != ErrorClass::Caller);
        self.metrics.hsm(op, start.elapsed(), !fault);
        r
    }
}

impl Hsm for Metered {
    fn token(&self) -> &TokenDescription {
        self.inner.token()
    }
    fn session_copies(&self) -> bool {
        self.inner.session_copies()
    }
    fn pool_size(&self) -> usize {
        self.inner.pool_size()
    }
    fn profile_name(&self) -> &str {
        self.inner.profile_name()
    }
    fn health(&self) -> HsmResult<()> {
        self.timed("health", || self.inner.health())
    }
    fn lost(&self) -> Option<String> {
        self.inner.lost()
    }
    fn recover(&self) -> HsmResult<bool> {
        self.timed("recover", || self.inner.recover())
    }
    fn reload_token(&self) -> HsmResult<()> {
        self.timed("reload_token", || self.inner.reload_token())
    }
    fn login(&self, pin: &Pin) -> HsmResult<()> {
        self.timed("login", || self.inner.login(pin))
    }
    fn logout(&self) {
        self.inner.logout()
    }
    fn is_logged_in(&self) -> bool {
        self.inner.is_logged_in()
    }
    fn verify_pins(&self, user: &Pin, so: &Pin) -> HsmResult<()> {
        self.timed("verify_pins", || self.inner.verify_pins(user, so))
    }
    fn change_pins(
        &self,
        user_old: &Pin,
        user_new: &Pin,
        so_old: &Pin,
        so_new: &Pin,
    ) -> HsmResult<()> {
        self.timed("change_pins", || {
            self.inner.change_pins(user_old, user_new, so_old, so_new)
        })
    }
    fn random(&self, buf: &mut [u8]) -> HsmResult<()> {
        self.timed("random", || self.inner.random(buf))
    }
    fn generate_cmk(&self, id: &HsmKeyId, label: &str, kind: KeyKind) -> HsmResult<()> {
        self.timed("generate_cmk", || self.inner.generate_cmk(id, label, kind))
    }
    fn activate(&self, id: &HsmKeyId) -> HsmResult<()> {
        self.timed("activate", || self.inner.activate(id))
    }
    fn destroy_cmk(&self, id: &HsmKeyId) -> HsmResult<()> {
        self.timed("destroy_cmk", || self.inner.destroy_cmk(id))
    }
    fn list_cmks(&self) -> HsmResult<Vec<HsmObjectInfo>> {
        self.timed("list_cmks", || self.inner.list_cmks())
    }
    fn key_attributes(&self, id: &HsmKeyId) -> HsmResult<KeyAttributes> {
        self.timed("key_attributes", || self.inner.key_attributes(id))
    }
    fn wrap_new_keys(&self, key: &HsmKeyId, aads: &[&[u8]]) -> HsmResult<Vec<WrappedKey>> {
        self.timed("wrap_new_keys", || self.inner.wrap_new_keys(key, aads))
    }
    fn encrypt_many(
        &self,
        key: &HsmKeyId,
        items: &[(&[u8], &[u8])],
    ) -> HsmResult<Vec<([u8; IV_LEN], Vec<u8>)>> {
        self.timed("encrypt_many", || self.inner.encrypt_many(key, items))
    }
    fn read_counter(&self, label: &str) -> HsmResult<Option<u64>> {
        self.timed("read_counter", || self.inner.read_counter(label))
    }
    fn write_counter(&self, label: &str, value: u64) -> HsmResult<()> {
        self.timed("write_counter", || self.inner.write_counter(label, value))
    }
    fn decrypt_many(&self, items: &[UnwrapItem<'_>]) -> Vec<HsmResult<Zeroizing<Vec<u8>>>> {
        let start = Instant::now();
        let r = self.inner.decrypt_many(items);
        // A bad blob is the caller's fault, not the HSM's.
        let hsm_fault = r
            .iter()
            .any(|x| matches!(x, Err(e) if e.class() != ErrorClass::Caller));

        self.metrics
            .hsm("decrypt_many", start.elapsed(), !hsm_fault);
        r
    }
    fn mac_many(&self, key: &HsmKeyId, data: &[&[u8]]) -> HsmResult<Vec<[u8; MAC_LEN]>> {
        self.timed("mac_many", || self.inner.mac_many(key, data))
    }
    fn ensure_signing_key(&self) -> HsmResult<Vec<u8>> {
        self.timed("ensure_signing_key", || self.inner.ensure_signing_key())
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> HsmResult<Vec<u8>> {
        self.timed("sign_digest", || self.inner.sign_digest(digest))
    }
    fn with_token_writes_held(&self, f: &mut dyn FnMut()) {
        self.inner.with_token_writes_held(f)
    }
}
