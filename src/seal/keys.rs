//! The unseal key and what is derived from it (HKDF-SHA256, one label per
//! purpose): the token's user PIN, its SO PIN, a check value and the key that
//! seals the keyring.

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::secret::{Pin, RandomError};

/// Length of the unseal key in bytes (256 bits).
pub const UNSEAL_KEY_LEN: usize = 32;

const LABEL_USER_PIN: &[u8] = b"keywarden/v1/token-user-pin";
const LABEL_SO_PIN: &[u8] = b"keywarden/v1/token-so-pin";
const LABEL_CHECK: &[u8] = b"keywarden/v1/check-value";
const LABEL_KEYRING: &[u8] = b"keywarden/v1/keyring-key";
const LABEL_SEAL_MAC: &[u8] = b"keywarden/v1/seal-file-mac";
const LABEL_BACKUP: &[u8] = b"keywarden/v1/backup-x25519";

/// The 256-bit unseal key. Exists in memory only while a ceremony needs it.
/// Boxed, so moving it moves a pointer and leaves no copy of the key on
/// the stack; filled in place.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct UnsealKey(Box<[u8; UNSEAL_KEY_LEN]>);

impl UnsealKey {
    /// A fresh key from the OS random generator.
    pub fn random() -> Result<Self, RandomError> {
        let mut key = UnsealKey(Box::new([0u8; UNSEAL_KEY_LEN]));
        getrandom::fill(&mut key.0[..]).map_err(RandomError)?;
        Ok(key)
    }

    /// A key from exactly 32 bytes (a Shamir combination); `None` for any
    /// other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != UNSEAL_KEY_LEN {
            return None;
        }
        let mut key = UnsealKey(Box::new([0u8; UNSEAL_KEY_LEN]));
        key.0.copy_from_slice(bytes);
        Some(key)
    }

    /// The key's bytes: for the Shamir split only.
    pub(crate) fn expose(&self) -> &[u8; UNSEAL_KEY_LEN] {
        &self.0
    }

    fn derive(&self, label: &[u8], set_id: &[u8; 4]) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(set_id), &self.0[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 8160; expand cannot fail.
        let _ = hk.expand(label, out.as_mut());
        out
    }

    fn derive_pin(&self, label: &[u8], set_id: &[u8; 4]) -> Pin {
        let raw = self.derive(label, set_id);
        // 128 bits as 32 hex digits: within every token's PIN length limits.
        let hex = Zeroizing::new(hex::encode(&raw[..16]));
        Pin::from_text(&hex)
    }

    /// The token user PIN for this share set.
    pub fn user_pin(&self, set_id: &[u8; 4]) -> Pin {
        self.derive_pin(LABEL_USER_PIN, set_id)
    }

    /// The token SO PIN for this share set.
    pub fn so_pin(&self, set_id: &[u8; 4]) -> Pin {
        self.derive_pin(LABEL_SO_PIN, set_id)
    }

    /// A value that confirms a reconstructed key without revealing it: the
    /// SHA-256 of an HKDF output under its own label.
    pub fn check_value(&self, set_id: &[u8; 4]) -> [u8; 32] {
        let raw = self.derive(LABEL_CHECK, set_id);
        Sha256::digest(&raw[..]).into()
    }

    /// Whether this key's check value for `set_id` is `check` (compared in
    /// constant time).
    pub fn matches(&self, set_id: &[u8; 4], check: &[u8]) -> bool {
        self.check_value(set_id).ct_eq(check).into()
    }

    /// The HMAC-SHA256 key that authenticates the seal file's metadata.
    pub fn seal_mac_key(&self, set_id: &[u8; 4]) -> Zeroizing<[u8; 32]> {
        self.derive(LABEL_SEAL_MAC, set_id)
    }

    /// The X25519 identity that backups are encrypted to (age's native
    /// recipient type). Its public half is kept in `seal.json`, so a sealed
    /// daemon can still encrypt a backup; only a quorum can open one.
    /// `None` only if bech32 refused to encode 32 bytes (not expected).
    pub fn backup_identity(&self, set_id: &[u8; 4]) -> Option<age::x25519::Identity> {
        let raw = self.derive(LABEL_BACKUP, set_id);
        let hrp = bech32::Hrp::parse_unchecked("AGE-SECRET-KEY-");
        let lower = Zeroizing::new(bech32::encode::<bech32::Bech32>(hrp, &raw[..]).ok()?);
        let text = Zeroizing::new(lower.to_uppercase());
        text.parse().ok()
    }

    /// The public half of [`Self::backup_identity`], as `age1...` text.
    pub fn backup_recipient(&self, set_id: &[u8; 4]) -> Option<String> {
        Some(self.backup_identity(set_id)?.to_public().to_string())
    }

    /// The AES-256-GCM key that seals the keyring.
    pub fn keyring_key(&self, set_id: &[u8; 4]) -> Zeroizing<[u8; 32]> {
        self.derive(LABEL_KEYRING, set_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_distinct_and_bound_to_the_set() {
        let k = UnsealKey(Box::new([7u8; 32]));
        let set = [1, 2, 3, 4];
        let other = [1, 2, 3, 5];
        assert_ne!(k.check_value(&set), k.check_value(&other));
        assert!(k.matches(&set, &k.check_value(&set)));
        assert!(!k.matches(&other, &k.check_value(&set)));
        assert!(!UnsealKey(Box::new([8u8; 32])).matches(&set, &k.check_value(&set)));
        assert_ne!(*k.keyring_key(&set), *k.keyring_key(&other));
        let (u, s) = (k.user_pin(&set), k.so_pin(&set));
        assert_eq!(u.expose_for_test().len(), 32);
        assert_ne!(u.expose_for_test(), s.expose_for_test());
        assert_eq!(u.expose_for_test(), k.user_pin(&set).expose_for_test());
        let r = k.backup_recipient(&set).unwrap();
        assert!(r.starts_with("age1"), "{r}");
        assert_eq!(Some(&r), k.backup_recipient(&set).as_ref());
        assert_ne!(Some(&r), k.backup_recipient(&other).as_ref());
        assert_eq!(k.backup_identity(&set).unwrap().to_public().to_string(), r);
    }
}
