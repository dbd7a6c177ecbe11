//! Keywarden: a key-management daemon that fronts a PKCS#11 HSM and serves
//! envelope-encryption data keys on a local Unix socket.
//!
//! The request path follows the folders: `server` (start-up, the
//! composition root) → `front` (one module per protocol; gRPC today: a
//! translation, nothing decided) → `gate` (identity, policy, limits, the
//! audit line, metrics: what every front end passes) → `core` (envelope
//! encryption, the key lifecycle, the registry) → `hsm` (a small trait;
//! PKCS#11 behind it).
//!
//! This crate is the daemon's library. Applications depend on
//! `keywarden-client` (and its `keywarden-proto`), not on this crate. What
//! it exports is for the `keywarden` binary (`src/bin/keywarden`: the CLI,
//! dev mode, bench, none of it in this library), the end-to-end tests and
//! the fuzz targets. The front ends are private: they are reached through
//! `server::serve`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Modules whose public items are not all documented yet carry
// `#[allow(missing_docs)]`; the lint holds for everything else.

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
