//! The core's one error enum. It knows nothing of gRPC; `api::status` holds
//! the one table that turns it into a `tonic::Status`.

use crate::hsm::HsmError;
use crate::seal::SealError;

/// Why a core operation was refused or failed. Variants carry what the
/// caller may be told; `gate::code` maps each to a canonical code.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A request field is malformed; `field` names it.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, as the protocol spells it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No key has this name.
    #[error("key {name:?} not found")]
    KeyNotFound {
        /// The name asked for.
        name: String,
    },
    /// A blob names a key id the registry does not know.
    #[error("ciphertext_blob: wrapped under key id {key_id}, which this daemon does not know")]
    BlobKeyUnknown {
        /// The key id read from the blob.
        key_id: String,
    },
    /// A blob names a key version the registry does not know.
    #[error(
        "ciphertext_blob: wrapped under version {version} of key {name:?}, which does not exist"
    )]
    BlobVersionUnknown {
        /// The key the blob's key id resolved to.
        name: String,
        /// The version read from the blob.
        version: u32,
    },
    /// The caller asked for one key and the blob is under another.
    #[error(
        "ciphertext_blob: wrapped under key {actual:?}, not under the requested key {expected:?}"
    )]
    KeyMismatch {
        /// The key the request named.
        expected: String,
        /// The key the blob is wrapped under.
        actual: String,
    },
    /// The AES-GCM tag did not verify.
    #[error("ciphertext_blob: authentication failed: the blob was altered or the encryption_context does not match the one it was made with")]
    DecryptFailed,
    /// The policy does not allow this (the message names the missing grant).
    #[error("{0}")]
    PermissionDenied(crate::policy::Denied),
    /// The registry failed its integrity check (for one key, or all).
    #[error("registry integrity check failed{}: {what}; the key is refused until the registry is restored from a trusted copy", key.as_ref().map(|k| format!(" for key {k:?}")).unwrap_or_default())]
    RegistryTampered {
        /// The key whose record failed; `None` when the whole registry did.
        key: Option<String>,
        /// What failed to verify.
        what: String,
    },
    /// The key was destroyed (crypto-shredded): nothing wrapped under it
    /// can be recovered.
    #[error("key {name:?} was destroyed at {at} (Unix time); data keys wrapped under it cannot be recovered")]
    KeyDestroyed {
        /// The key.
        name: String,
        /// When it was destroyed, in Unix seconds (0 if not recorded).
        at: i64,
    },
    /// The blob's version is below the key's minimum decrypt version.
    #[error("ciphertext_blob: version {version} of key {name:?} is retired (the minimum decrypt version is {min})")]
    VersionRetired {
        /// The key.
        name: String,
        /// The version the blob is wrapped under.
        version: u32,
        /// The key's minimum decrypt version.
        min: u32,
    },
    /// The version was revoked (compromised or destroyed) and never
    /// decrypts or verifies again.
    #[error(
        "ciphertext_blob: version {version} of key {name:?} is {state}; it never decrypts again"
    )]
    VersionRevoked {
        /// The key.
        name: String,
        /// The revoked version.
        version: u32,
        /// Its state: `compromised` or `destroyed`.
        state: &'static str,
    },
    /// The key's current version has used up its encryptions (the hard
    /// limit): only a rotation lets the key encrypt again.
    #[error(
        "version {version} of key {name:?} reached its encryption limit ({limit}); rotate the key"
    )]
    VersionExhausted {
        /// The key.
        name: String,
        /// The exhausted version.
        version: u32,
        /// The hard limit of encryptions per version.
        limit: u64,
    },
    /// A legal hold forbids the operation.
    #[error("key {name:?} is under legal hold ({holds}); {operation} is refused until every hold is released")]
    Held {
        /// The key.
        name: String,
        /// The active holds, `id: reason`, separated by `; `.
        holds: String,
        /// What was refused (for example `destruction`).
        operation: &'static str,
    },
    /// The operation does not fit the key's lifecycle state.
    #[error("{0}")]
    Conflict(String),
    /// A key by this name already exists.
    #[error("key {name:?} already exists")]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// The key's kind does not do this operation (a data key from an hmac
    /// key, a MAC from an aes key). `field` names the request field that
    /// named the key.
    #[error("{field}: key {name:?} is an {kind} key; {operation} needs an {needs} key")]
    WrongKind {
        /// The request field that named the key.
        field: &'static str,
        /// The key.
        name: String,
        /// The key's kind (`aes`, `hmac`).
        kind: &'static str,
        /// The kind the operation needs.
        needs: &'static str,
        /// The operation refused.
        operation: &'static str,
    },
    /// The key exists but its state forbids the operation.
    #[error("key {name:?} is {state}; {operation} is not allowed")]
    KeyUnusable {
        /// The key.
        name: String,
        /// Its state as the caller is told (`suspended`, `without an active
        /// version`...).
        state: String,
        /// The operation refused.
        operation: &'static str,
    },
    /// The HSM cannot be reached or failed transiently.
    #[error("HSM unavailable: {0}")]
    HsmUnavailable(HsmError),
    /// The HSM refused the caller's input (for example a ciphertext of the
    /// wrong length).
    #[error("ciphertext_blob: the HSM rejected the input ({0})")]
    HsmRejectedInput(HsmError),
    /// The seal refused (sealed, not initialised, a ceremony error).
    #[error("{0}")]
    Seal(SealError),
    /// The HSM failed in a way that is not the caller's fault.
    #[error("HSM failure: {0}")]
    HsmFailed(HsmError),
    /// Registry failure.
    #[error("registry failure: {0}")]
    Registry(#[source] std::sync::Arc<super::registry::RegistryError>),
    /// The registry's database cannot be reached (a cluster's PostgreSQL
    /// down or cut off): refused until it is back.
    #[error("{0}")]
    RegistryUnavailable(#[source] std::sync::Arc<super::registry::RegistryError>),
    /// Other nodes kept changing the registry while this one tried to
    /// write: nothing was changed.
    #[error("the registry changed on another node during this change (generation {found}); nothing was changed: retry")]
    RegistryMoved {
        /// The registry's generation found at the last try.
        found: u64,
    },
    /// This node cannot confirm it has every key change made on the other
    /// nodes (its cluster lease is not current), so it serves nothing.
    #[error("this node is not serving: {0}")]
    NodeNotCurrent(#[source] super::membership::NotCurrent),
    /// A backup could not be taken.
    #[error("backup: {0}")]
    Backup(crate::backup::BackupError),
    /// The audit log cannot record a registry change, so the change is not
    /// made (the log is the ledger a restore replays).
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoreError {
    /// An [`CoreError::InvalidArgument`] for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Maps an HSM error, keeping the distinction between a bad blob (the
    /// caller's fault), a transient fault and a permanent one.
    pub fn from_hsm(e: HsmError) -> Self {
        use crate::hsm::ErrorClass;
        match e {
            HsmError::AuthenticationFailed => CoreError::DecryptFailed,
            e => match e.class() {
                ErrorClass::Transient => CoreError::HsmUnavailable(e),
                ErrorClass::Caller => CoreError::HsmRejectedInput(e),
                ErrorClass::Permanent => CoreError::HsmFailed(e),
            },
        }
    }
}

impl From<SealError> for CoreError {
    fn from(e: SealError) -> Self {
        CoreError::Seal(e)
    }
}

/// A core operation's result.
pub type CoreResult<T> = Result<T, CoreError>;
