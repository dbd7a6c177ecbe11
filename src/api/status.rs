//! The one table that turns core errors into gRPC statuses. Internals
//! (HSM return values, database errors) are logged here, not sent.

use tonic::{Code, Status};
use tracing::error;

use crate::core::CoreError;
use crate::hsm::ErrorClass;
use crate::seal::store::StoreError;
use crate::seal::SealError;

/// The gRPC code for a core error.
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

/// Metadata key that marks the one status a client may need to tell apart
/// from any other FAILED_PRECONDITION: `sealed` or `uninitialized`.
pub const STATE_METADATA: &str = "keywarden-state";
/// Metadata naming the field an INVALID_ARGUMENT is about.
pub const FIELD_METADATA: &str = "keywarden-field";
/// Metadata carrying the key's (or version's) state on FAILED_PRECONDITION.
pub const KEY_STATE_METADATA: &str = "keywarden-key-state";

/// The request field a caller's error is about, for clients that must not
/// parse messages.
pub(crate) fn field_of(e: &CoreError) -> Option<&'static str> {
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
pub(crate) fn key_state_of(e: &CoreError) -> Option<String> {
    match e {
        CoreError::KeyDestroyed { .. } => Some("destroyed".into()),
        CoreError::VersionRetired { .. } => Some("retired".into()),
        CoreError::VersionRevoked { state, .. } => Some((*state).to_string()),
        CoreError::KeyUnusable { state, .. } => Some(state.clone()),
        CoreError::Held { .. } => Some("held".into()),
        _ => None,
    }
}

/// The message the client sees. Caller errors are described in full; the
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

pub fn to_status(e: CoreError) -> Status {
    let code = code(&e);
    if matches!(code, Code::Internal | Code::Unavailable) {
        error!(error = %e, "request failed");
    }
    let mut status = Status::new(code, message(&e));
    let state = match &e {
        // Not serving yet (or any more) is, to a client, sealed: retry later.
        CoreError::Seal(SealError::Sealed { .. } | SealError::NotServing { .. }) => Some("sealed"),
        CoreError::Seal(SealError::NotInitialized) => Some("uninitialized"),
        _ => None,
    };
    if let Some(v) = state {
        status.metadata_mut().insert(
            STATE_METADATA,
            tonic::metadata::MetadataValue::from_static(v),
        );
    }
    if let Some(f) = field_of(&e) {
        status.metadata_mut().insert(
            FIELD_METADATA,
            tonic::metadata::MetadataValue::from_static(f),
        );
    }
    if let Some(v) = key_state_of(&e).and_then(|v| v.parse().ok()) {
        status.metadata_mut().insert(KEY_STATE_METADATA, v);
    }
    status
}

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Self {
        to_status(e)
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
        let s = to_status(hsm_down);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("DeviceRemoved"));

        let hsm_down = CoreError::from_hsm(HsmError::Unavailable("C_Encrypt failed".into()));
        let s = to_status(hsm_down);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("DeviceRemoved"));

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
            (CoreError::Registry("disk".into()), Code::Internal),
            (
                CoreError::RegistryUnavailable("down".into()),
                Code::Unavailable,
            ),
            (CoreError::NodeNotCurrent("lease".into()), Code::Unavailable),
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
