//! The HSM behind a small trait. Its signatures carry no `cryptoki` types, so
//! the core reads as key management, not as PKCS#11. The one real
//! implementation is [`pkcs11::Pkcs11Hsm`].

#[cfg(any(test, feature = "test-util"))]
pub mod contract;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod metered;
pub mod pkcs11;
pub mod profile;

use std::fmt;

use zeroize::Zeroizing;

use crate::secret::{DataKey, Pin};

/// Length of the AES-GCM IV used for wrapping (96 bits).
pub const IV_LEN: usize = 12;
/// Length of the AES-GCM tag (128 bits).
pub const TAG_LEN: usize = 16;
/// Length of an HMAC-SHA256 output.
pub const MAC_LEN: usize = 32;

/// What a CMK is for, fixed at creation for every version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// AES-256: data keys (wrapped with AES-GCM) and Encrypt/Decrypt.
    #[default]
    Aes,
    /// HMAC-SHA256 (a 256-bit generic secret): GenerateMac/VerifyMac only.
    Hmac,
}

impl KeyKind {
    /// The kind's name (`aes`, `hmac`), as requests, key metadata and
    /// the registry spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Aes => "aes",
            KeyKind::Hmac => "hmac",
        }
    }

    /// The kind a request names; empty means the default, aes.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "aes" => Some(KeyKind::Aes),
            "hmac" => Some(KeyKind::Hmac),
            _ => None,
        }
    }

    /// The algorithm shown in key metadata.
    pub fn algorithm(self) -> &'static str {
        match self {
            KeyKind::Aes => "AES_256_GCM",
            KeyKind::Hmac => "HMAC_SHA_256",
        }
    }
}

/// The HSM-side identifier of one CMK version (its `CKA_ID`): 16 random
/// bytes, not secret.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct HsmKeyId(pub [u8; 16]);

impl HsmKeyId {
    /// The id as 32 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for HsmKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HsmKeyId({})", self.to_hex())
    }
}

impl fmt::Display for HsmKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What the token says about itself.
#[derive(Debug, Clone, Default)]
pub struct TokenDescription {
    /// CKA_LABEL of the token.
    pub label: String,
    /// Its serial number.
    pub serial: String,
    /// Its manufacturer's id.
    pub manufacturer: String,
    /// Its model.
    pub model: String,
}

/// A Keywarden CMK object found on the token.
#[derive(Debug, Clone)]
pub struct HsmObjectInfo {
    /// Its CKA_ID.
    pub id: HsmKeyId,
    /// Its CKA_LABEL (starts with [`LABEL_PREFIX`]).
    pub label: String,
}

/// Security-relevant attributes of a CMK object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAttributes {
    /// CKA_TOKEN: a token object, not a session one.
    pub token: bool,
    /// CKA_SENSITIVE: the value cannot be read in the clear.
    pub sensitive: bool,
    /// CKA_ALWAYS_SENSITIVE: it has been sensitive since it was made.
    pub always_sensitive: bool,
    /// CKA_EXTRACTABLE: it can be wrapped out of the token.
    pub extractable: bool,
    /// CKA_NEVER_EXTRACTABLE: it has never been extractable.
    pub never_extractable: bool,
    /// CKA_ENCRYPT.
    pub encrypt: bool,
    /// CKA_DECRYPT.
    pub decrypt: bool,
    /// CKA_WRAP.
    pub wrap: bool,
    /// CKA_UNWRAP.
    pub unwrap: bool,
    /// CKA_SIGN.
    pub sign: bool,
    /// CKA_VERIFY.
    pub verify: bool,
}

/// A fresh data key and its wrapped form.
pub struct WrappedKey {
    /// The data key in the clear.
    pub plaintext: DataKey,
    /// The IV the token chose.
    pub iv: [u8; IV_LEN],
    /// AES-GCM ciphertext followed by the tag.
    pub ciphertext: Vec<u8>,
}

/// One item of [`Hsm::unwrap_many`].
pub struct UnwrapItem<'a> {
    /// The CMK version it was wrapped under.
    pub key: HsmKeyId,
    /// Its IV.
    pub iv: [u8; IV_LEN],
    /// The additional data it was sealed with.
    pub aad: &'a [u8],
    /// The AES-GCM ciphertext followed by the tag.
    pub ciphertext: &'a [u8],
}

/// How an HSM error should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The token or session went away; retrying after recovery may work.
    Transient,
    /// The HSM refused for a reason that will not change by retrying.
    Permanent,
    /// The caller's input was wrong (for example a bad GCM tag).
    Caller,
}

/// An HSM error. PKCS#11 failures keep the `C_` function and return value.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// A PKCS#11 call failed.
    #[error("{function} failed: {rv}")]
    Pkcs11 {
        /// The function, as `C_<name>`.
        function: String,
        /// The return value's name, as `cryptoki` spells it (e.g. `GeneralError`).
        rv: String,
        /// How to treat it.
        class: ErrorClass,
        /// The token, the module or the session is gone: only
        /// reconnecting helps.
        lost: bool,
    },
    /// The HSM was lost and is not back yet.
    #[error("HSM unreachable ({0}); reconnecting")]
    Unavailable(String),
    /// The AES-GCM tag did not verify: wrong AAD or altered ciphertext.
    #[error("authentication tag check failed")]
    AuthenticationFailed,
    /// No CMK object with this id is on the token.
    #[error("CMK object {0} not found on the token")]
    ObjectNotFound(HsmKeyId),
    /// No single token matches the selector (none, or several); the message
    /// says which.
    #[error("token not found: {0}")]
    TokenNotFound(String),
    /// The PKCS#11 module could not be loaded.
    #[error("cannot load PKCS#11 module: {0}")]
    Module(String),
    /// The token answered with what it should not (a wrong length, a missing
    /// attribute), or the PKCS#11 layer failed other than with a return value.
    #[error("HSM returned unexpected data: {0}")]
    Unexpected(String),
    /// The token refused a PIN (`role` is "user" or "so").
    #[error("the token refused the {role} PIN")]
    PinIncorrect {
        /// Which PIN: "user" or "so".
        role: &'static str,
    },
    /// The daemon is not logged in to the token (sealed).
    #[error("not logged in to the token")]
    NotLoggedIn,
    /// No worker session became free in time (the token may be gone).
    #[error("no HSM session became available within {0} s")]
    PoolExhausted(u64),
}

impl HsmError {
    /// How the error should be treated (whether a retry can help, and whose
    /// fault it is).
    pub fn class(&self) -> ErrorClass {
        match self {
            HsmError::Pkcs11 { class, .. } => *class,
            HsmError::AuthenticationFailed => ErrorClass::Caller,
            HsmError::TokenNotFound(_)
            | HsmError::Module(_)
            | HsmError::NotLoggedIn
            | HsmError::PoolExhausted(_)
            | HsmError::Unavailable(_) => ErrorClass::Transient,
            HsmError::PinIncorrect { .. } => ErrorClass::Caller,
            HsmError::ObjectNotFound(_) | HsmError::Unexpected(_) => ErrorClass::Permanent,
        }
    }
}

impl HsmError {
    /// Whether this error means the token or our sessions are gone.
    pub fn is_loss(&self) -> bool {
        matches!(self, HsmError::Pkcs11 { lost: true, .. })
    }
}

/// The result of an HSM operation.
pub type HsmResult<T> = Result<T, HsmError>;

/// The HSM as key management sees it. All methods block; callers run them
/// off the async runtime.
pub trait Hsm: Send + Sync {
    /// The selected token.
    fn token(&self) -> &TokenDescription;
    /// Whether session copies of CMK versions are in use.
    fn session_copies(&self) -> bool;
    /// Number of worker sessions.
    fn pool_size(&self) -> usize;
    /// Profile name.
    fn profile_name(&self) -> &str;
    /// A cheap call that proves the token answers.
    fn health(&self) -> HsmResult<()>;
    /// Why the HSM is unreachable while unsealed, if it is: key operations
    /// then fail with [`HsmError::Unavailable`] until [`Hsm::recover`]
    /// succeeds.
    fn lost(&self) -> Option<String>;
    /// One attempt to reconnect: re-initialise the module if needed, find
    /// the same token, log in again, rebuild the pool and the session
    /// copies. `Ok(true)` when the HSM is back; `Ok(false)` when nothing
    /// was lost.
    fn recover(&self) -> HsmResult<bool>;
    /// Before a login on a token that other processes share (a cluster):
    /// re-reads what they may have changed, the PINs above all (SoftHSM
    /// keeps a token's PINs per process until C_Initialize). Only while
    /// logged out; a no-op for a token that keeps no such state.
    fn reload_token(&self) -> HsmResult<()> {
        Ok(())
    }
    /// Logs in as the user, opens the worker pool. `UserAlreadyLoggedIn` is
    /// success.
    fn login(&self, pin: &Pin) -> HsmResult<()>;
    /// Logs out, drops session copies, closes every session.
    fn logout(&self);
    /// Whether a user login is in force ([`Hsm::login`] succeeded, no logout
    /// since).
    fn is_logged_in(&self) -> bool;
    /// Checks that both PINs log in (not logged in; nothing changes).
    fn verify_pins(&self, user: &Pin, so: &Pin) -> HsmResult<()>;
    /// Changes the user PIN and the SO PIN (not logged in). If the SO change
    /// fails, the user PIN is changed back.
    fn change_pins(
        &self,
        user_old: &Pin,
        user_new: &Pin,
        so_old: &Pin,
        so_new: &Pin,
    ) -> HsmResult<()>;
    /// Random bytes from the token's RNG.
    fn random(&self, buf: &mut [u8]) -> HsmResult<()>;
    /// Generates a CMK version inside the token: a token object, sensitive,
    /// never extractable; AES-256 for encrypt/decrypt only, or a 256-bit
    /// generic secret for HMAC sign/verify only.
    fn generate_cmk(&self, id: &HsmKeyId, label: &str, kind: KeyKind) -> HsmResult<()>;
    /// Makes the version usable (a session copy where the profile allows).
    fn activate(&self, id: &HsmKeyId) -> HsmResult<()>;
    /// Destroys the token object (and any session copy).
    fn destroy_cmk(&self, id: &HsmKeyId) -> HsmResult<()>;
    /// Every Keywarden CMK object on the token.
    fn list_cmks(&self) -> HsmResult<Vec<HsmObjectInfo>>;
    /// The security attributes of a CMK's token object.
    fn key_attributes(&self, id: &HsmKeyId) -> HsmResult<KeyAttributes>;
    /// For each AAD, a fresh data key wrapped with AES-GCM under `key`.
    fn wrap_new_keys(&self, key: &HsmKeyId, aads: &[&[u8]]) -> HsmResult<Vec<WrappedKey>>;
    /// AES-GCM under `key` of each (AAD, plaintext) item, each with a fresh
    /// IV from the token: an existing data key (rewrap) or a small payload
    /// (Encrypt). Returns (IV, ciphertext||tag) per item.
    fn encrypt_many(
        &self,
        key: &HsmKeyId,
        items: &[(&[u8], &[u8])],
    ) -> HsmResult<Vec<([u8; IV_LEN], Vec<u8>)>>;
    /// Reads a monotonic counter kept in a token data object.
    fn read_counter(&self, label: &str) -> HsmResult<Option<u64>>;
    /// Writes that counter (creating the object if needed). It only moves
    /// up: a value at or below the stored one changes nothing.
    fn write_counter(&self, label: &str, value: u64) -> HsmResult<()>;
    /// Opens each AES-GCM item independently.
    fn decrypt_many(&self, items: &[UnwrapItem<'_>]) -> Vec<HsmResult<Zeroizing<Vec<u8>>>>;
    /// Unwraps each item independently: [`Hsm::decrypt_many`] of data keys.
    fn unwrap_many(&self, items: &[UnwrapItem<'_>]) -> Vec<HsmResult<DataKey>> {
        self.decrypt_many(items)
            .into_iter()
            .map(|r| {
                r.and_then(|pt| {
                    DataKey::from_slice(&pt).ok_or_else(|| {
                        HsmError::Unexpected(format!("unwrapped key is {} bytes", pt.len()))
                    })
                })
            })
            .collect()
    }
    /// HMAC-SHA256 under the hmac CMK version `key` of each input.
    fn mac_many(&self, key: &HsmKeyId, data: &[&[u8]]) -> HsmResult<Vec<[u8; MAC_LEN]>>;
    /// Finds or creates the audit-signing key pair (ECDSA P-256, private
    /// half sensitive and never extractable); returns the public point
    /// (SEC1, uncompressed).
    fn ensure_signing_key(&self) -> HsmResult<Vec<u8>>;
    /// Signs a SHA-256 digest with the audit key; returns r||s.
    fn sign_digest(&self, digest: &[u8; 32]) -> HsmResult<Vec<u8>>;
    /// Runs `f` while nothing writes a token object through this handle
    /// (a backup copying a software token's files).
    fn with_token_writes_held(&self, f: &mut dyn FnMut());
}

/// CKA_LABEL of the registry generation counter.
pub const REGISTRY_COUNTER_LABEL: &str = "keywarden-registry-generation";

/// CKA_LABEL of the audit-signing key pair.
pub const AUDIT_KEY_LABEL: &str = "keywarden-audit-signing";

/// Prefix of the CKA_LABEL of every CMK object Keywarden creates.
pub const LABEL_PREFIX: &str = "keywarden:";
