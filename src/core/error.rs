//! The core's one error enum. It knows nothing of gRPC; `api::status` holds
//! the one table that turns it into a `tonic::Status`.

use crate::hsm::HsmError;
use crate::seal::SealError;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A request field is malformed; `field` names it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// No key has this name.
    #[error("key {name:?} not found")]
    KeyNotFound { name: String },
    /// A blob names a key id the registry does not know.
    #[error("ciphertext_blob: wrapped under key id {key_id}, which this daemon does not know")]
    BlobKeyUnknown { key_id: String },
    /// A blob names a key version the registry does not know.
    #[error(
        "ciphertext_blob: wrapped under version {version} of key {name:?}, which does not exist"
    )]
    BlobVersionUnknown { name: String, version: u32 },
    /// The caller asked for one key and the blob is under another.
    #[error(
        "ciphertext_blob: wrapped under key {actual:?}, not under the requested key {expected:?}"
    )]
    KeyMismatch { expected: String, actual: String },
    /// The AES-GCM tag did not verify.
    #[error("ciphertext_blob: authentication failed: the blob was altered or the encryption_context does not match the one it was made with")]
    DecryptFailed,
    /// The policy does not allow this (the message names the missing grant).
    #[error("{0}")]
    PermissionDenied(crate::policy::Denied),
    /// The registry failed its integrity check (for one key, or all).
    #[error("registry integrity check failed{}: {what}; the key is refused until the registry is restored from a trusted copy", key.as_ref().map(|k| format!(" for key {k:?}")).unwrap_or_default())]
    RegistryTampered { key: Option<String>, what: String },
    /// Crypto-shredded.
    #[error("key {name:?} was destroyed at {at} (Unix time); data keys wrapped under it cannot be recovered")]
    KeyDestroyed { name: String, at: i64 },
    #[error("ciphertext_blob: version {version} of key {name:?} is retired (the minimum decrypt version is {min})")]
    VersionRetired {
        name: String,
        version: u32,
        min: u32,
    },
    #[error(
        "ciphertext_blob: version {version} of key {name:?} is {state}; it never decrypts again"
    )]
    VersionRevoked {
        name: String,
        version: u32,
        state: &'static str,
    },
    #[error(
        "version {version} of key {name:?} reached its encryption limit ({limit}); rotate the key"
    )]
    VersionExhausted {
        name: String,
        version: u32,
        limit: u64,
    },
    /// A legal hold forbids the operation.
    #[error("key {name:?} is under legal hold ({holds}); {operation} is refused until every hold is released")]
    Held {
        name: String,
        holds: String,
        operation: &'static str,
    },
    /// The operation does not fit the key's lifecycle state.
    #[error("{0}")]
    Conflict(String),
    #[error("key {name:?} already exists")]
    AlreadyExists { name: String },
    /// The key's kind does not do this operation (a data key from an hmac
    /// key, a MAC from an aes key). `field` names the request field that
    /// named the key.
    #[error("{field}: key {name:?} is an {kind} key; {operation} needs an {needs} key")]
    WrongKind {
        field: &'static str,
        name: String,
        kind: &'static str,
        needs: &'static str,
        operation: &'static str,
    },
    /// The key exists but its state forbids the operation.
    #[error("key {name:?} is {state}; {operation} is not allowed")]
    KeyUnusable {
        name: String,
        state: String,
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
    Registry(String),
    /// The registry's database cannot be reached (a cluster's PostgreSQL
    /// down or cut off): refused until it is back.
    #[error("registry database unreachable: {0}")]
    RegistryUnavailable(String),
    /// Other nodes kept changing the registry while this one tried to
    /// write: nothing was changed.
    #[error("the registry changed on another node during this change (generation {found}); nothing was changed: retry")]
    RegistryMoved { found: u64 },
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

pub type CoreResult<T> = Result<T, CoreError>;
