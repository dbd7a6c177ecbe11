//! The Keywarden client SDK: what an application links against to use the
//! daemon, without the daemon's dependencies.
//!
//! - [`Client`]: a connection to the daemon's Unix socket
//!   ([`Client::connect`], [`Client::from_env`] reads `KEYWARDEN_SOCKET`),
//!   data keys ([`Client::generate_data_key`], [`Client::decrypt_data_key`],
//!   [`Client::reencrypt`] and their batch forms) returned in zeroizing
//!   types, typed errors ([`Error`]), retries of UNAVAILABLE.
//! - Envelope encryption in one call: [`Client::encrypt`] and
//!   [`Client::decrypt`] for records and fields, [`Client::encrypt_stream`]
//!   and [`Client::decrypt_stream`] for files and pipes in constant memory,
//!   [`Client::decrypt_range`] for a byte range of a file. A message may be
//!   wrapped under up to eight CMKs and opens with any one of them. The
//!   format ([`format`], `docs/FORMAT.md`) follows C2SP's
//!   chunked-encryption with key commitment.
//! - Small fields encrypted by the daemon ([`Client::encrypt_field`],
//!   [`Client::decrypt_field`]) and MACs under `hmac` keys ([`Client::mac`],
//!   [`Client::verify_mac`]).
//! - An opt-in data-key cache ([`Client::with_cache`], [`CacheConfig`])
//!   bounded by age, messages and bytes, that drops a key within a second
//!   of its CMK being disabled, revoked or destroyed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keywarden_client::Error> {
//! use keywarden_client::{Client, Context};
//! let client = Client::from_env().await?;
//! let ctx = Context::from([("patient".to_string(), "p-1001".to_string())]);
//! let sealed = client.encrypt(&["clinic"], &ctx, b"allergy: penicillin").await?;
//! let opened = client.decrypt(&ctx, &sealed).await?;
//! assert_eq!(&opened[..], b"allergy: penicillin");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod cache;
mod client;
pub mod envelope;
pub mod error;
mod fields;
pub mod format;

pub use cache::{CacheConfig, CacheStats};
pub use client::{
    channel, Client, DataKey, DecryptedDataKey, GeneratedDataKey, RetryPolicy, Rewrapped,
    WrappedDataKey, DEFAULT_SOCKET, SOCKET_ENV,
};
pub use envelope::{inspect, Inspection};
pub use error::{Error, MessageError};
pub use fields::Mac;
pub use format::Context;
/// The generated gRPC types, for calls the typed API does not cover.
pub use keywarden_proto as proto;
