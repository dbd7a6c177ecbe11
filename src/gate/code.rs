//! The canonical outcome codes, and the one table from core errors to
//! them. A code says what kind of refusal a caller got, in no protocol's
//! words: each front end maps it to its own (gRPC status, HTTP status,
//! KMIP result reason) in one table of its own, and the audit log records
//! it by name. What the caller is told ([`message`]) is decided here too,
//! once: the daemon's own failures are summarised and logged, never sent.

use crate::core::CoreError;
use crate::hsm::ErrorClass;
use crate::seal::store::StoreError;
use crate::seal::SealError;

/// What kind of answer a call got. The names are gRPC's canonical codes
/// (the audit log has always recorded them), but nothing here is gRPC's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// Done.
    Ok,
    /// The caller gave up.
    Cancelled,
    /// A code no table names (never produced by the gate).
    Unknown,
    /// A request field is wrong; the error names it.
    InvalidArgument,
    /// The call ran past its deadline.
    DeadlineExceeded,
    /// No such key (or version, or blob key).
    NotFound,
    /// A key of that name exists (or a share was given twice).
    AlreadyExists,
    /// The policy does not allow it.
    PermissionDenied,
    /// A limit refused it (per uid, or a version's encryptions).
    ResourceExhausted,
    /// Not in this state: sealed, disabled, held, destroyed...
    FailedPrecondition,
    /// Another writer came first; retrying may succeed.
    Aborted,
    /// Out of range (unused by the core today).
    OutOfRange,
    /// Not served by this daemon.
    Unimplemented,
    /// The daemon failed; the cause is logged, not sent.
    Internal,
    /// Retry later: the HSM, the registry or the audit log is unavailable.
    Unavailable,
    /// Stored state failed its integrity check (tampering, rollback).
    DataLoss,
    /// No identity (unused: the transport always vouches for one).
    Unauthenticated,
}

impl Code {
    /// Every code, in gRPC's numbering order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The name the audit log records (`"OK"` for success, as it always
    /// has; the others in CamelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "Cancelled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }

    /// A failure of the daemon rather than of the request: logged with
    /// its cause where it happens.
    pub fn is_daemon_failure(self) -> bool {
        matches!(self, Code::Internal | Code::Unavailable)
    }
}

/// The serving state a refusal is about, for clients that must tell
/// "retry after unsealing" from any other failed precondition.
pub fn state_of(e: &CoreError) -> Option<&'static str> {
    match e {
        // Not serving yet (or any more) is, to a client, sealed: retry later.
        CoreError::Seal(SealError::Sealed { .. } | SealError::NotServing { .. }) => Some("sealed"),
        CoreError::Seal(SealError::NotInitialized) => Some("uninitialized"),
        _ => None,
    }
}

/// The canonical code for a core error: the one table every front end
/// starts from.
pub fn code(e: &CoreError) -> Code {
    match e {
        CoreError::InvalidArgument { .. } => Code::InvalidArgument,
        CoreError::DecryptFailed => Code::InvalidArgument,
        CoreError::KeyMismatch { .. } => Code::InvalidArgument,
        CoreError::WrongKind { .. } => Code::InvalidArgument,
        CoreError::KeyNotFound { .. } => Code::NotFound,
        CoreError::BlobKeyUnknown { .. } => Code::NotFound,
        CoreError::BlobVersionUnknown { .. } => Code::NotFound,
        CoreError::AlreadyExists { .. } => Code::AlreadyExists,
        CoreError::RegistryTampered { .. } => Code::DataLoss,
        CoreError::KeyDestroyed { .. }
        | CoreError::VersionRetired { .. }
        | CoreError::VersionRevoked { .. }
        | CoreError::Held { .. }
        | CoreError::Conflict(_) => Code::FailedPrecondition,
        CoreError::VersionExhausted { .. } => Code::ResourceExhausted,
        CoreError::PermissionDenied(_) => Code::PermissionDenied,
        CoreError::KeyUnusable { .. } => Code::FailedPrecondition,
        CoreError::HsmRejectedInput(_) => Code::InvalidArgument,
        CoreError::Seal(s) => seal_code(s),
        CoreError::HsmUnavailable(_) => Code::Unavailable,
        CoreError::HsmFailed(_) => Code::Internal,
        CoreError::Registry(_) => Code::Internal,
        CoreError::RegistryUnavailable(_) | CoreError::NodeNotCurrent(_) => Code::Unavailable,
        CoreError::RegistryMoved { .. } => Code::Aborted,
        CoreError::AuditUnavailable(_) => Code::Unavailable,
        CoreError::Backup(b) => {
            use crate::backup::BackupError as B;
            match b {
                B::Uninitialized | B::NoRecipient | B::RecipientUnverified | B::RekeyPending => {
                    Code::FailedPrecondition
                }
                B::RecipientChanged => Code::DataLoss,
                B::Audit(_) => Code::Unavailable,
                B::Refused(_) => Code::InvalidArgument,
                _ => Code::Internal,
            }
        }
        CoreError::Internal(_) => Code::Internal,
    }
}

fn seal_code(e: &SealError) -> Code {
    match e {
        SealError::NotInitialized
        | SealError::AlreadyInitialized { .. }
        | SealError::Sealed { .. }
        | SealError::NotServing { .. }
        | SealError::AlreadyUnsealed
        | SealError::NoRekey
        | SealError::InitIncomplete
        | SealError::RestoreWindowNotAccepted { .. }
        | SealError::RekeyInProgress { .. }
        | SealError::RekeySuperseded { .. }
        | SealError::WrongRekeyPhase { .. } => Code::FailedPrecondition,
        SealError::Storage(StoreError::SharedUnreachable(_)) => Code::Unavailable,
        SealError::Storage(StoreError::SharedBusy(_)) => Code::Aborted,
        SealError::InvalidParameter { .. }
        | SealError::BadShare(_)
        | SealError::WrongSet { .. }
        | SealError::WrongThreshold { .. }
        | SealError::ReconstructionFailed
        | SealError::PinRejected { .. } => Code::InvalidArgument,
        SealError::Duplicate { .. } => Code::AlreadyExists,
        SealError::Hsm(h) => match h.class() {
            ErrorClass::Transient => Code::Unavailable,
            _ => Code::Internal,
        },
        SealError::Storage(_)
        | SealError::Random(_)
        | SealError::Shamir(_)
        | SealError::Age(_)
        | SealError::Internal(_) => Code::Internal,
        SealError::Tampered(_) => Code::DataLoss,
    }
}

/// The request field a caller's error is about, for clients that must not
/// parse messages.
pub fn field_of(e: &CoreError) -> Option<&'static str> {
    match e {
        CoreError::InvalidArgument { field, .. } | CoreError::WrongKind { field, .. } => {
            Some(field)
        }
        CoreError::DecryptFailed
        | CoreError::KeyMismatch { .. }
        | CoreError::BlobKeyUnknown { .. }
        | CoreError::BlobVersionUnknown { .. }
        | CoreError::HsmRejectedInput(_) => Some("ciphertext_blob"),
        _ => None,
    }
}

/// The lifecycle state a FAILED_PRECONDITION is about.
pub fn key_state_of(e: &CoreError) -> Option<String> {
    match e {
        CoreError::KeyDestroyed { .. } => Some("destroyed".into()),
        CoreError::VersionRetired { .. } => Some("retired".into()),
        CoreError::VersionRevoked { state, .. } => Some((*state).to_string()),
        CoreError::KeyUnusable { state, .. } => Some(state.clone()),
        CoreError::Held { .. } => Some("held".into()),
        _ => None,
    }
}

/// The message the client sees. Identity errors are described in full; the
/// daemon's own failures are summarised and the detail is logged.
pub fn message(e: &CoreError) -> String {
    match e {
        CoreError::HsmUnavailable(_) => "HSM unavailable; retry later".into(),
        CoreError::HsmFailed(_) => "HSM operation failed".into(),
        CoreError::Seal(SealError::Hsm(_)) => "HSM operation failed during the ceremony".into(),
        CoreError::Seal(SealError::Storage(
            e @ (StoreError::SharedUnreachable(_) | StoreError::SharedBusy(_)),
        )) => format!("{e}; retry later"),
        CoreError::Seal(SealError::Storage(_)) => "seal storage failure".into(),
        CoreError::Seal(
            SealError::Random(_)
            | SealError::Shamir(_)
            | SealError::Age(_)
            | SealError::Internal(_),
        ) => "internal error during the ceremony".into(),
        CoreError::Registry(_) => "key registry failure".into(),
        CoreError::RegistryUnavailable(_) => {
            "key registry database unreachable; retry later".into()
        }
        CoreError::AuditUnavailable(_) => {
            "audit log unavailable: the key change was not made; retry later".into()
        }
        CoreError::Internal(_) => "internal error".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::{ErrorClass, HsmError};

    #[test]
    fn table_is_explicit_and_hides_internals() {
        let hsm_down = CoreError::from_hsm(HsmError::Pkcs11 {
            function: "C_Encrypt".into(),
            rv: "DeviceRemoved".into(),
            class: ErrorClass::Transient,
            lost: true,
        });
        assert_eq!(code(&hsm_down), Code::Unavailable);
        assert!(!message(&hsm_down).contains("DeviceRemoved"));

        let hsm_down = CoreError::from_hsm(HsmError::Unavailable("C_Encrypt failed".into()));
        assert_eq!(code(&hsm_down), Code::Unavailable);
        assert!(!message(&hsm_down).contains("DeviceRemoved"));

        let bad_tag = CoreError::from_hsm(HsmError::AuthenticationFailed);
        assert_eq!(code(&bad_tag), Code::InvalidArgument);
        assert!(message(&bad_tag).contains("encryption_context"));

        let fault = CoreError::from_hsm(HsmError::Pkcs11 {
            function: "C_Decrypt".into(),
            rv: "GeneralError".into(),
            class: ErrorClass::Permanent,
            lost: false,
        });
        assert_eq!(code(&fault), Code::Internal);

        let cases = [
            (
                CoreError::invalid("key", "must not be empty"),
                Code::InvalidArgument,
            ),
            (CoreError::KeyNotFound { name: "x".into() }, Code::NotFound),
            (
                CoreError::AlreadyExists { name: "x".into() },
                Code::AlreadyExists,
            ),
            (
                CoreError::KeyUnusable {
                    name: "x".into(),
                    state: "disabled".into(),
                    operation: "Decrypt",
                },
                Code::FailedPrecondition,
            ),
            (
                CoreError::Registry(std::sync::Arc::new(
                    crate::core::registry::RegistryError::Corrupt("disk".into()),
                )),
                Code::Internal,
            ),
            (
                CoreError::RegistryUnavailable(std::sync::Arc::new(
                    crate::core::registry::RegistryError::Unreachable {
                        why: "down".into(),
                        source: None,
                    },
                )),
                Code::Unavailable,
            ),
            (
                CoreError::NodeNotCurrent(crate::core::membership::NotCurrent {
                    why: "lease".into(),
                }),
                Code::Unavailable,
            ),
            (CoreError::RegistryMoved { found: 3 }, Code::Aborted),
        ];
        for (e, c) in cases {
            assert_eq!(code(&e), c, "{e}");
        }
        assert_eq!(
            message(&CoreError::invalid("key", "must not be empty")),
            "key: must not be empty"
        );
    }
}
