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
