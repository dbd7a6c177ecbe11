//! The gRPC front end: Keywarden's own API on the Unix socket. Thin
//! handlers: protobuf in, the caller from the connection's peer
//! credentials, the gate and the core's types, protobuf out. Who may do
//! what, the limits, the audit line and the metrics are the gate's
//! ([`crate::gate`]); the codes are spelt in gRPC by the one table in
//! [`status`].

pub mod datakey;
pub mod keys;
pub mod mac;
pub mod operator;
mod report;
mod server;
pub mod status;

pub use server::serve;

use std::sync::Arc;

use serde_json::{Map, Value};
use tonic::{Request, Status};

use crate::core::Keywarden;
use crate::gate::{Call, Caller, Front, Gate};
use crate::policy::Action;

/// What every gRPC service shares.
#[derive(Clone)]
pub struct Ctx {
    /// The gate every call passes.
    pub gate: Arc<Gate>,
    /// Open and refused connections (Status shows them).
    pub connections: Arc<crate::server::conn::Tracker>,
    /// Started by `keywarden dev` with a `[dev]` configuration.
    pub dev_mode: bool,
    /// Counts and times every RPC by method and code (the transport's own
    /// series, beside the gate's).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The caller's identity: SO_PEERCRED, the groups and the executable of
/// the process that opened the connection, read when it was accepted.
pub(crate) fn caller_of<T>(req: &Request<T>) -> Result<Caller, Status> {
    let peer = req
        .extensions()
        .get::<crate::server::conn::Peer>()
        .ok_or_else(|| Status::permission_denied("no peer credentials on this connection"))?;
    Ok(Caller::new(
        crate::policy::Identity::clone(&peer.0),
        Front::GRPC,
    ))
}

impl Ctx {
    /// Identifies and authorizes a call through the gate.
    pub(crate) async fn authorize<T>(
        &self,
        req: &Request<T>,
        op: &'static str,
        action: Action<'_>,
    ) -> Result<Call, Status> {
        let caller = caller_of(req)?;
        Ok(self.gate.authorize(&caller, op, action).await?)
    }

    /// Runs `f` on the core for an authorized call.
    pub(crate) async fn run<T, F>(&self, call: &Call, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Keywarden) -> T + Send + 'static,
    {
        Ok(self.gate.run(call, f).await?)
    }

    /// Audits the outcome of an authorized call, then returns it.
    pub(crate) async fn finish<T>(
        &self,
        call: &Call,
        extra: Map<String, Value>,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        self.gate.finish(call, extra, result).await
    }

    /// Audits the outcome of a call that is not a key operation (Status):
    /// answered even when the log cannot be written.
    pub(crate) async fn finish_best_effort<T>(
        &self,
        call: &Call,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        self.gate.finish_best_effort(call, result).await
    }
}
