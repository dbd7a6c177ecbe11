//! The seal's errors.

use super::*;

/// Why a seal operation was refused or failed; typed, so that callers map
/// each variant to a status, never the text.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No share set yet: init first.
    #[error("the daemon is not initialised: run `keywarden operator init`")]
    NotInitialized,
    /// Init on a daemon that has a share set.
    #[error("the daemon is already initialised (share set {set_id})")]
    AlreadyInitialized {
        /// The set in force.
        set_id: String,
    },
    /// Sealed: key operations wait for an unseal.
    #[error("the daemon is sealed: {received} of {threshold} unseal shares received; custodians submit theirs with `keywarden operator unseal`")]
    Sealed {
        /// Unseal shares received so far.
        received: usize,
        /// Shares needed.
        threshold: u8,
    },
    /// An unseal share submitted while unsealed.
    #[error("the daemon is already unsealed")]
    AlreadyUnsealed,
    /// Unsealed, but not open for key operations: loading its registry
    /// (after an unseal or a rekey, or retrying a load that failed) or
    /// sealing.
    #[error("the daemon is {stage}; key operations are refused until it is open (retry shortly)")]
    NotServing {
        /// What it is doing: `sealing`, or still loading its key registry.
        stage: &'static str,
    },
    /// A request's parameter is refused.
    #[error("{field}: {reason}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The share does not parse or its checksum fails.
    #[error("share: {0}")]
    BadShare(share::ShareError),
    /// The share is of another share set; progress is unchanged.
    #[error(
        "share: belongs to share set {got}, but this daemon's set is {want}; progress unchanged"
    )]
    WrongSet {
        /// The share's set.
        got: String,
        /// The set it must be of.
        want: String,
    },
    /// The share names another threshold than its set's; progress is
    /// unchanged.
    #[error("share: says threshold {got}, but set {set_id} needs {want}; progress unchanged")]
    WrongThreshold {
        /// The share's threshold.
        got: u8,
        /// The set's.
        want: u8,
        /// The set.
        set_id: String,
    },
    /// This share was already submitted; progress is unchanged.
    #[error("share: share {index} was already submitted; progress unchanged ({received} of {threshold})")]
    Duplicate {
        /// The share's index.
        index: u8,
        /// Shares received so far.
        received: usize,
        /// Shares needed.
        threshold: u8,
    },
    /// A quorum of shares did not rebuild the unseal key (its check value
    /// does not match); progress was reset.
    #[error("share: the submitted shares do not reconstruct the unseal key; progress was reset, submit the shares again")]
    ReconstructionFailed,
    /// The token refused a provisioning PIN given to init.
    #[error("{field}: the token refused this PIN")]
    PinRejected {
        /// Which PIN (`user_pin` or `so_pin`).
        field: &'static str,
    },
    /// The daemon restarted between init and the first unseal: the
    /// provisioning PINs are gone; init must run again.
    #[error("init was not completed: the daemon restarted before the first unseal, so the provisioning PINs it held are gone; the token still has its provisioning PINs: run `keywarden operator init` again")]
    InitIncomplete,
    /// A restored daemon without the audit trail since its backup: each
    /// custodian of the quorum must accept that window to unseal.
    #[error("accept_restore_window: this daemon was restored from a backup of {backup_time} (Unix time) without the audit trail kept since; destructions and revocations after it may be lost; each custodian of the quorum must accept that window to unseal (keywarden operator unseal --accept-restore-window)")]
    RestoreWindowNotAccepted {
        /// When the backup was taken (Unix seconds).
        backup_time: i64,
    },
    /// A rekey step while no rekey is in progress.
    #[error("no rekey is in progress")]
    NoRekey,
    /// A rekey is already in progress.
    #[error("a rekey is already in progress (id {id}); cancel it first")]
    RekeyInProgress {
        /// Its id.
        id: String,
    },
    /// A rekey step the rekey's current phase does not take.
    #[error("rekey {id} is {phase}: {hint}")]
    WrongRekeyPhase {
        /// The rekey's id.
        id: String,
        /// The phase it is in.
        phase: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// In a cluster: another node committed a rekey after this one began.
    #[error("another node committed a rekey (share set {set_id}) after this one began: this rekey is void; start again with the new shares")]
    RekeySuperseded {
        /// The share set the other node committed.
        set_id: String,
    },
    /// The HSM failed or refused.
    #[error("HSM: {0}")]
    Hsm(HsmError),
    /// The seal files could not be read or written, or were refused.
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

/// The result of a seal operation.
pub type SealResult<T> = Result<T, SealError>;
