//! The client's one error type: what the daemon answered, typed from its
//! status code and metadata (never from its message text), and what the
//! envelope layer found wrong with a message.

use tonic::{Code, Status};

/// Metadata the daemon sets on FAILED_PRECONDITION when it is `sealed` or
/// `uninitialized`.
pub const STATE_METADATA: &str = keywarden_proto::metadata::STATE;
/// Metadata naming the request field an INVALID_ARGUMENT is about.
pub const FIELD_METADATA: &str = keywarden_proto::metadata::FIELD;
/// Metadata carrying the key's lifecycle state on FAILED_PRECONDITION
/// (`suspended`, `pending_destruction`, `destroyed`, `revoked`, ...).
pub const KEY_STATE_METADATA: &str = keywarden_proto::metadata::KEY_STATE;

/// Everything a client call can fail with. `message` is the daemon's
/// text, for people; programs match the variant and its typed fields.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be reached or the connection broke.
    #[error("cannot reach the Keywarden daemon: {0}")]
    Connect(String),
    /// The daemon is sealed: custodians must unseal it first. Retryable
    /// once it is unsealed.
    #[error("the daemon is sealed: {message}")]
    Sealed { message: String },
    /// The daemon was never initialised.
    #[error("the daemon is not initialised: {message}")]
    Uninitialized { message: String },
    /// No such key (or the blob names a key this daemon does not know).
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The policy does not allow this caller this operation.
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    /// A request field is wrong; `field` names it when the daemon did.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        field: Option<String>,
        message: String,
    },
    /// The key's state forbids the operation (disabled, revoked, pending
    /// destruction, destroyed, held...).
    #[error("failed precondition{}: {message}", key_state.as_ref().map(|s| format!(" (key is {s})")).unwrap_or_default())]
    FailedPrecondition {
        key_state: Option<String>,
        message: String,
    },
    /// The daemon or its HSM is temporarily unavailable: retry later.
    #[error("unavailable: {message}")]
    Unavailable { message: String },
    /// A limit was reached (a key version's encryption limit, a rate).
    #[error("resource exhausted: {message}")]
    ResourceExhausted { message: String },
    /// The name is taken.
    #[error("already exists: {message}")]
    AlreadyExists { message: String },
    /// The daemon found its own state tampered with or rolled back.
    #[error("data loss: {message}")]
    DataLoss { message: String },
    /// Any other status.
    #[error("{code:?}: {message}")]
    Rpc { code: Code, message: String },
    /// The envelope message is malformed, altered, truncated or not for
    /// this context (see [`MessageError`]).
    #[error(transparent)]
    Message(#[from] MessageError),
    /// Reading the input or writing the output failed.
    #[error("I/O: {0}")]
    Io(std::io::Error),
    /// A caller's argument to the SDK itself is wrong.
    #[error("{field}: {reason}")]
    Usage { field: &'static str, reason: String },
}

/// What is wrong with an envelope message. The record API releases
/// nothing unless every check passed; the stream and range APIs release
/// segments as they verify, so their output must be discarded on an error.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not a Keywarden envelope message at all.
    #[error("not a Keywarden envelope message (bad magic bytes)")]
    BadMagic,
    /// A header field has a value this implementation does not accept.
    #[error("header field {field}: {reason}")]
    Header { field: &'static str, reason: String },
    /// The message ends before its header does.
    #[error("the message ends inside its header ({field})")]
    TruncatedHeader { field: &'static str },
    /// The data key did not reproduce the header's key commitment: the
    /// header was altered, the context differs, or the recipients do not
    /// all wrap the same data key.
    #[error("key commitment mismatch: the header was altered, the encryption context differs, or the message was built to open differently for different keys")]
    Commitment,
    /// A segment failed authentication.
    #[error("segment {index} failed authentication: the message was altered, reordered or truncated; discard any output already written")]
    Segment { index: u64 },
    /// The message ends without its final (short) segment.
    #[error("the message is truncated after segment {segments}: no final segment; discard any output already written")]
    Truncated { segments: u64 },
    /// The message would exceed the format's segment limit.
    #[error("the message exceeds the format's limit of 2^38 segments")]
    TooLong,
    /// None of the recipients could be opened; each one's error is listed.
    #[error("no recipient of the message could be opened: {}", .0.join("; "))]
    NoRecipient(Vec<String>),
    /// The key derivation refused its input (a data key of the wrong
    /// length; not expected with a daemon's 32-byte keys).
    #[error("the data key could not be expanded into message keys")]
    KeyDerivation,
    /// A byte range outside the plaintext.
    #[error("range: offset {offset} is past the end of the plaintext ({length} bytes)")]
    Range { offset: u64, length: u64 },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Connect(_) | Error::Sealed { .. }
        )
    }

    /// The typed form of a status the daemon answered.
    pub fn from_status(s: &Status) -> Self {
        let message = s.message().to_string();
        let meta = |k: &str| {
            s.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match s.code() {
            Code::FailedPrecondition => match meta(STATE_METADATA).as_deref() {
                Some("sealed") => Error::Sealed { message },
                Some("uninitialized") => Error::Uninitialized { message },
                _ => Error::FailedPrecondition {
                    key_state: meta(KEY_STATE_METADATA),
                    message,
                },
            },
            Code::NotFound => Error::NotFound { message },
            Code::PermissionDenied => Error::PermissionDenied { message },
            Code::InvalidArgument => Error::InvalidArgument {
                field: meta(FIELD_METADATA),
                message,
            },
            Code::Unavailable if meta(STATE_METADATA).as_deref() == Some("sealed") => {
                Error::Sealed { message }
            }
            Code::Unavailable => Error::Unavailable { message },
            Code::ResourceExhausted => Error::ResourceExhausted { message },
            Code::AlreadyExists => Error::AlreadyExists { message },
            Code::DataLoss => Error::DataLoss { message },
            code => Error::Rpc { code, message },
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::from_status(&s)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Connect(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn with(code: Code, k: &'static str, v: &'static str) -> Status {
        let mut s = Status::new(code, "m");
        s.metadata_mut().insert(k, MetadataValue::from_static(v));
        s
    }

    #[test]
    fn statuses_are_typed_from_codes_and_metadata() {
        assert!(matches!(
            Error::from(with(Code::FailedPrecondition, STATE_METADATA, "sealed")),
            Error::Sealed { .. }
        ));
        assert!(matches!(
            Error::from(with(
                Code::FailedPrecondition,
                STATE_METADATA,
                "uninitialized"
            )),
            Error::Uninitialized { .. }
        ));
        match Error::from(with(
            Code::FailedPrecondition,
            KEY_STATE_METADATA,
            "suspended",
        )) {
            Error::FailedPrecondition { key_state, .. } => {
                assert_eq!(key_state.as_deref(), Some("suspended"))
            }
            other => panic!("{other:?}"),
        }
        match Error::from(with(Code::InvalidArgument, FIELD_METADATA, "key")) {
            Error::InvalidArgument { field, .. } => assert_eq!(field.as_deref(), Some("key")),
            other => panic!("{other:?}"),
        }
        let e = Error::from(Status::unavailable("HSM unavailable"));
        assert!(e.is_retryable());
        assert!(!Error::from(Status::not_found("x")).is_retryable());
        assert!(matches!(
            Error::from(Status::resource_exhausted("x")),
            Error::ResourceExhausted { .. }
        ));
    }
}
