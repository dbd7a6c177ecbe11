//! PKCS#11 return values sorted into the HSM layer's error classes: the
//! caller's fault, transient (the token or session went away), permanent.

use super::*;

/// Classifies a PKCS#11 return value.
pub(super) fn classify(rv: RvError) -> ErrorClass {
    match rv {
        RvError::DeviceRemoved
        | RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::SessionCount
        | RvError::CryptokiNotInitialized
        | RvError::UserNotLoggedIn
        | RvError::FunctionFailed => ErrorClass::Transient,
        RvError::ArgumentsBad
        | RvError::DataInvalid
        | RvError::DataLenRange
        | RvError::EncryptedDataInvalid
        | RvError::EncryptedDataLenRange
        | RvError::PinIncorrect
        | RvError::PinLenRange => ErrorClass::Caller,
        _ => ErrorClass::Permanent,
    }
}

/// Return values that mean the token, the module or our sessions are gone,
/// so that only reconnecting helps.
pub(super) const LOSS: &[RvError] = &[
    RvError::DeviceRemoved,
    RvError::DeviceError,
    RvError::TokenNotPresent,
    RvError::TokenNotRecognized,
    RvError::SessionHandleInvalid,
    RvError::SessionClosed,
    RvError::CryptokiNotInitialized,
    RvError::UserNotLoggedIn,
];

pub(super) fn ck(e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, function) => HsmError::Pkcs11 {
            function: format!("C_{function:?}"),
            rv: format!("{rv:?}"),
            class: classify(rv),
            lost: LOSS.contains(&rv),
        },
        CkError::LibraryLoading(e) => HsmError::Module(e.to_string()),
        other => HsmError::Unexpected(other.to_string()),
    }
}

/// Whether `e` is the PKCS#11 failure `rv` (its `rv` field holds the
/// return value's name, as [`ck`] writes it).
pub(super) fn is_rv(e: &HsmError, rv: RvError) -> bool {
    matches!(e, HsmError::Pkcs11 { rv: name, .. } if *name == format!("{rv:?}"))
}

pub(super) fn pin_err(e: CkError, role: &'static str) -> HsmError {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _) => {
            HsmError::PinIncorrect { role }
        }
        other => ck(other),
    }
}
