//! Backup and restore that keep destroyed keys destroyed
//! (docs/DISASTER_RECOVERY.md).
//!
//! - [`format`](mod@format): the backup file (a clear header, then an age file
//!   encrypted to an X25519 key derived from the unseal key);
//! - [`token`]: where a software token keeps its objects;
//! - [`ledger`]: the `registry_write` lines of the audit log that a restore
//!   replays;
//! - [`restore`]: the offline restore into an empty state directory.
//!
//! The daemon's side (the consistent snapshot) is `Keywarden::backup` in
//! `src/core/backup.rs`.

pub mod fold;
pub mod format;
pub mod ledger;
mod replay;
pub mod restore;
pub mod token;
mod trail;

/// Names of the payload's entries other than the token's files.
pub const REGISTRY_ENTRY: &str = "registry.db";
/// The seal file (`seal.json`) as it was when the backup was taken.
pub const SEAL_ENTRY: &str = "seal.json";
/// The audit-signing public key, when it was published.
pub const AUDIT_KEY_ENTRY: &str = "audit-signing.pub";
/// What the token must hold: every CMK version the registry names.
pub const MANIFEST_ENTRY: &str = "token-manifest.json";

/// Why a backup could not be taken or restored. Typed: the API maps each
/// variant to a status, never the text.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Nothing to back up yet.
    #[error("the daemon is not initialised: there is nothing to back up yet")]
    Uninitialized,
    /// `seal.json` predates backups and has no recipient yet.
    #[error(
        "seal.json has no backup recipient yet (it predates backups): unseal once, then back up"
    )]
    NoRecipient,
    /// No quorum has verified `seal.json` since the daemon started.
    #[error("no quorum has unsealed this daemon since it started, so the backup recipient in seal.json is unverified: unseal once, then back up (sealed or not)")]
    RecipientUnverified,
    /// `seal.json`'s recipient is not the one a quorum verified.
    #[error("seal.json's backup recipient is not the one the last unseal verified: the file was edited; no backup is made")]
    RecipientChanged,
    /// A rekey commit is half done.
    #[error("a rekey commit is pending (seal.pending.json): finish it with an unseal first")]
    RekeyPending,
    /// The token's storage could not be found or read.
    #[error("token: {0}")]
    Token(String),
    /// The registry, the seal files or the scratch directory.
    #[error("{0}")]
    Io(String),
    /// The backup file was refused.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// The audit log could not give its head or record the backup.
    #[error("audit log unavailable: {0}")]
    Audit(#[source] crate::audit::AuditError),
    /// A restore was refused; the message names what and why.
    #[error("{0}")]
    Refused(String),
}
