//! The front ends: each translates one protocol to the gate and the core
//! and back, and decides nothing (see [`crate::gate`]). gRPC, Keywarden's
//! own API, is the first; the next plugs in beside it.

pub mod grpc;
