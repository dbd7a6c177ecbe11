//! The gRPC front end's one table: the gate's canonical codes to gRPC
//! status codes, and the metadata a client reads instead of parsing
//! messages. What a code is and what the caller is told are the gate's
//! ([`crate::gate::code`]); this file only spells them in gRPC.

use tonic::Status;
use tracing::error;

use crate::core::CoreError;
use crate::gate::code::{self, Code};
use crate::gate::{Answer, GateError};

pub use keywarden_proto::metadata::{
    FIELD as FIELD_METADATA, KEY_STATE as KEY_STATE_METADATA, STATE as STATE_METADATA,
};

/// The gRPC status code for a canonical code (one to one: the canonical
/// codes are gRPC's names).
pub fn grpc_code(c: Code) -> tonic::Code {
    match c {
        Code::Ok => tonic::Code::Ok,
        Code::Cancelled => tonic::Code::Cancelled,
        Code::Unknown => tonic::Code::Unknown,
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Code::NotFound => tonic::Code::NotFound,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::Aborted => tonic::Code::Aborted,
        Code::OutOfRange => tonic::Code::OutOfRange,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::Internal => tonic::Code::Internal,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::DataLoss => tonic::Code::DataLoss,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
    }
}

/// The canonical code of a gRPC status (the inverse of [`grpc_code`]).
pub fn canonical(c: tonic::Code) -> Code {
    Code::ALL
        .into_iter()
        .find(|k| grpc_code(*k) == c)
        .unwrap_or(Code::Unknown)
}

/// A core error as a gRPC status, with its metadata.
pub fn to_status(e: CoreError) -> Status {
    let c = code::code(&e);
    if c.is_daemon_failure() {
        error!(error = %e, "request failed");
    }
    let mut status = Status::new(grpc_code(c), code::message(&e));
    if let Some(v) = code::state_of(&e) {
        status.metadata_mut().insert(
            STATE_METADATA,
            tonic::metadata::MetadataValue::from_static(v),
        );
    }
    if let Some(f) = code::field_of(&e) {
        status.metadata_mut().insert(
            FIELD_METADATA,
            tonic::metadata::MetadataValue::from_static(f),
        );
    }
    if let Some(v) = code::key_state_of(&e).and_then(|v| v.parse().ok()) {
        status.metadata_mut().insert(KEY_STATE_METADATA, v);
    }
    status
}

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Self {
        to_status(e)
    }
}

impl From<GateError> for Status {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Core(e) => to_status(e),
            other => Status::new(grpc_code(other.code()), other.message()),
        }
    }
}

/// A gRPC answer as the gate audits it.
impl Answer for Status {
    fn code(&self) -> Code {
        canonical(Status::code(self))
    }

    fn message(&self) -> String {
        Status::message(self).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::{ErrorClass, HsmError};

    #[test]
    fn every_code_maps_both_ways_and_internals_stay_hidden() {
        for c in Code::ALL {
            assert_eq!(canonical(grpc_code(c)), c);
        }
        let hsm_down = CoreError::from_hsm(HsmError::Pkcs11 {
            function: "C_Encrypt".into(),
            rv: "DeviceRemoved".into(),
            class: ErrorClass::Transient,
            lost: true,
        });
        let s = to_status(hsm_down);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(!s.message().contains("DeviceRemoved"));
        let sealed = to_status(CoreError::Seal(crate::seal::SealError::Sealed {
            received: 0,
            threshold: 0,
        }));
        assert_eq!(sealed.metadata().get(STATE_METADATA).unwrap(), "sealed");
        let bad = to_status(CoreError::invalid("key", "must not be empty"));
        assert_eq!(bad.metadata().get(FIELD_METADATA).unwrap(), "key");
    }
}
