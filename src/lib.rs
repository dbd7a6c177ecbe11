//! Keywarden: a key-management daemon that fronts a PKCS#11 HSM and serves
//! envelope-encryption data keys over gRPC on a local Unix socket.
//!
//! The request path follows the folders: `server` (socket, start-up) →
//! `api` (thin gRPC handlers, the one error table) → `core` (envelope
//! encryption, key registry) → `hsm` (a small trait; PKCS#11 behind it).
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod dev;
pub mod guard;
pub mod hsm;
pub mod policy;
pub mod seal;
pub mod secret;
pub mod server;

/// Generated protobuf and gRPC code for `keywarden.v1` (the
/// `keywarden-proto` crate).
pub use keywarden_proto as proto;

/// The daemon's version, reported by Status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
