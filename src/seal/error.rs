//! The seal's errors.

use super::*;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("the daemon is not initialised: run `keywarden operator init`")]
    NotInitialized,
    #[error("the daemon is already initialised (share set {set_id})")]
    AlreadyInitialized { set_id: String },
    #[error("the daemon is sealed: {received} of {threshold} unseal shares received; custodians submit theirs with `keywarden operator unseal`")]
    Sealed { received: usize, threshold: u8 },
    #[error("the daemon is already unsealed")]
    AlreadyUnsealed,
    /// Unsealed, but not open for key operations: loading its registry
    /// (after an unseal or a rekey, or retrying a load that failed) or
    /// sealing.
    #[error("the daemon is {stage}; key operations are refused until it is open (retry shortly)")]
    NotServing { stage: &'static str },
    #[error("{field}: {reason}")]
    InvalidParameter { field: &'static str, reason: String },
    #[error("share: {0}")]
    BadShare(share::ShareError),
    #[error(
        "share: belongs to share set {got}, but this daemon's set is {want}; progress unchanged"
    )]
    WrongSet { got: String, want: String },
    #[error("share: says threshold {got}, but set {set_id} needs {want}; progress unchanged")]
    WrongThreshold { got: u8, want: u8, set_id: String },
    #[error("share: share {index} was already submitted; progress unchanged ({received} of {threshold})")]
    Duplicate {
        index: u8,
        received: usize,
        threshold: u8,
    },
    #[error("share: the submitted shares do not reconstruct the unseal key; progress was reset, submit the shares again")]
    ReconstructionFailed,
    #[error("{field}: the token refused this PIN")]
    PinRejected { field: &'static str },
    #[error("init was not completed: the daemon restarted before the first unseal, so the provisioning PINs it held are gone; the token still has its provisioning PINs: run `keywarden operator init` again")]
    InitIncomplete,
    #[error("accept_restore_window: this daemon was restored from a backup of {backup_time} (Unix time) without the audit trail kept since; destructions and revocations after it may be lost; each custodian of the quorum must accept that window to unseal (keywarden operator unseal --accept-restore-window)")]
    RestoreWindowNotAccepted { backup_time: i64 },
    #[error("no rekey is in progress")]
    NoRekey,
    #[error("a rekey is already in progress (id {id}); cancel it first")]
    RekeyInProgress { id: String },
    #[error("rekey {id} is {phase}: {hint}")]
    WrongRekeyPhase {
        id: String,
        phase: &'static str,
        hint: &'static str,
    },
    /// In a cluster: another node committed a rekey after this one began.
    #[error("another node committed a rekey (share set {set_id}) after this one began: this rekey is void; start again with the new shares")]
    RekeySuperseded { set_id: String },
    #[error("HSM: {0}")]
    Hsm(HsmError),
    #[error("seal storage: {0}")]
    Storage(#[from] store::StoreError),
    /// The OS random generator failed.
    #[error("OS random generator: {0}")]
    Random(String),
    /// Splitting or combining the unseal key failed.
    #[error("Shamir: {0}")]
    Shamir(#[from] super::shamir::ShamirError),
    /// Encrypting a share to a custodian's age key failed.
    #[error("age encryption: {0}")]
    Age(String),
    /// An impossible state (a bug).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The seal metadata was edited, deleted or replaced.
    #[error("seal metadata tampering: {0}")]
    Tampered(String),
}

pub type SealResult<T> = Result<T, SealError>;
