//! Keywarden: a key-management daemon that fronts a PKCS#11 HSM and serves
//! envelope-encryption data keys over gRPC on a local Unix socket.
//!
//! The request path follows the folders: `server` (socket, start-up) →
//! `api` (thin gRPC handlers, the one error table) → `core` (envelope
//! encryption, key registry) → `hsm` (a small trait; PKCS#11 behind it).
//!
//! This crate is the daemon. Applications depend on `keywarden-client`
//! (and its `keywarden-proto`), not on this crate. What it exports is for
//! the `keywarden` binary, the end-to-end tests and the fuzz targets:
//! the daemon's parts (`server`, `core`, `seal`, `hsm`, `audit`, `policy`,
//! `config`, `secret`, `clock`, `guard`). The gRPC handlers are private; the binary's own modules (`cli`, `dev`, `bench`)
//! are public only because the binary is a separate crate, and are hidden
//! from the documentation: they are not an API.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
mod front;
pub mod gate;
pub mod guard;
pub mod hsm;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod seal;
pub mod secret;
pub mod server;
mod sync;

/// Generated protobuf and gRPC code for `keywarden.v1` (the
/// `keywarden-proto` crate).
pub use keywarden_proto as proto;

/// The daemon's version, reported by Status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
