//! Keywarden's gRPC API, package `keywarden.v1`: the generated protobuf
//! types and service stubs, shared by the daemon and by client
//! applications (through `keywarden-client`). The `.proto` files are in
//! `proto/keywarden/v1/`; they are compiled without `protoc`.
//!
//! Messages that carry a plaintext data key, a PIN or a share implement no
//! `Debug`. Their byte fields are plain `Vec<u8>`: code that holds one must
//! move the secret into a zeroizing type at once (the client crate does).
#![forbid(unsafe_code)]

pub mod codec;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("keywarden.v1");
}

pub use generated::*;

/// Encoded file descriptor set, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keywarden_descriptor");

/// The response metadata keys the daemon sets on an error, defined once
/// (the list is `proto/keywarden/v1/metadata.txt`; the Python client's
/// constants are generated from it).
pub mod metadata {
    /// On FAILED_PRECONDITION: `sealed` or `uninitialized`, the one state a
    /// client must tell apart from any other refusal (retry after unsealing).
    pub const STATE: &str = "keywarden-state";
    /// On INVALID_ARGUMENT: the request field the error is about.
    pub const FIELD: &str = "keywarden-field";
    /// On FAILED_PRECONDITION: the key's or version's lifecycle state
    /// (`suspended`, `pending_destruction`, `destroyed`, `revoked`, ...).
    pub const KEY_STATE: &str = "keywarden-key-state";

    /// Every key, by the name the list gives it.
    pub const ALL: [(&str, &str); 3] =
        [("STATE", STATE), ("FIELD", FIELD), ("KEY_STATE", KEY_STATE)];

    /// The list the constants are defined by.
    pub const LIST: &str = include_str!("../proto/keywarden/v1/metadata.txt");

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_constants_are_the_list() {
            let listed: Vec<(&str, &str)> = super::LIST
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| l.split_once(' '))
                .collect();
            assert_eq!(listed, super::ALL.to_vec());
        }
    }
}
