//! Thin gRPC handlers: protobuf in, domain types to the core, protobuf out.
//! Every call is identified by the kernel's peer credentials, authorized by
//! the policy, and audited before it is answered. Errors go through the one
//! table in [`status`].

mod audited;
pub mod datakey;
pub mod keys;
pub mod mac;
pub mod operator;
pub mod status;
pub mod workers;

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tonic::{Request, Status};

use crate::core::Keywarden;
use crate::guard::{self, Guard};
use crate::policy::{Action, Caller};

/// What every service shares.
#[derive(Clone)]
pub struct Ctx {
    pub core: Arc<Keywarden>,
    pub guard: Arc<Guard>,
    /// Open and refused connections (Status shows them).
    pub connections: Arc<crate::server::conn::Tracker>,
    /// Started by `keywarden dev` with a `[dev]` configuration.
    pub dev_mode: bool,
    /// What the daemon counts and measures (Prometheus).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `[metrics] per_key`: key names in labels.
    pub per_key_metrics: bool,
    /// The data path's worker threads (micro-batching).
    pub workers: Arc<workers::Workers<Keywarden>>,
    /// What one uid may make the daemon spend (`[limits]`).
    pub limits: Arc<crate::limits::Limits>,
}

/// An identified, authorized call.
pub(crate) struct Call {
    pub caller: Caller,
    pub principal: String,
    pub role: &'static str,
    pub op: &'static str,
}

/// Runs a blocking core call off the async runtime.
pub(crate) async fn blocking<T, F>(core: &Arc<Keywarden>, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&Keywarden) -> T + Send + 'static,
{
    let core = Arc::clone(core);
    tokio::task::spawn_blocking(move || f(&core))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "core task failed");
            Status::internal("internal error")
        })
}

/// The caller's identity: SO_PEERCRED, the groups and the executable of
/// the process that opened the connection, read when it was accepted.
pub(crate) fn caller_of<T>(req: &Request<T>) -> Result<Caller, Status> {
    let peer = req
        .extensions()
        .get::<crate::server::conn::Peer>()
        .ok_or_else(|| Status::permission_denied("no peer credentials on this connection"))?;
    Ok(Caller::clone(&peer.0))
}

/// The audit `outcome` and `code` fields for a result.
pub(crate) fn outcome<T>(r: &Result<T, Status>) -> Map<String, Value> {
    let mut m = Map::new();
    match r {
        Ok(_) => {
            m.insert("outcome".into(), json!("ok"));
            m.insert("code".into(), json!("OK"));
        }
        Err(s) => {
            m.insert("outcome".into(), json!("error"));
            m.insert("code".into(), json!(format!("{:?}", s.code())));
            m.insert("message".into(), json!(s.message()));
        }
    }
    m
}

impl Ctx {
    /// Renders the metrics page: what was recorded, and the state now.
    pub fn metrics_page(&self) -> crate::metrics::http::Render {
        let (core, guard, metrics, per_key) = (
            self.core.clone(),
            self.guard.clone(),
            self.metrics.clone(),
            self.per_key_metrics,
        );
        Arc::new(move || {
            let mut snap = core.metrics_snapshot(per_key);
            snap.break_glass_grants = guard.active_break_glass().len() as u64;
            metrics.render(&snap)
        })
    }

    /// Writes audit entries and waits until they are durable. If they
    /// cannot be written the call fails with UNAVAILABLE.
    pub(crate) async fn audit(
        &self,
        uid: u32,
        entries: Vec<Map<String, Value>>,
    ) -> Result<(), Status> {
        self.audit_promised(uid, entries, None).await
    }

    /// [`Ctx::audit`] for a call that promised its line when it started:
    /// the promise travels with the line and is released when the writer
    /// takes it.
    /// The bytes written are charged to `uid`'s audit volume
    /// ([`crate::limits`]).
    pub(crate) async fn audit_promised(
        &self,
        uid: u32,
        entries: Vec<Map<String, Value>>,
        promise: Option<crate::audit::Promise>,
    ) -> Result<(), Status> {
        if self.guard.audit_disabled {
            return Ok(());
        }
        let bytes: usize = entries.iter().map(crate::limits::approx_json_len).sum();
        self.limits.charge_audit_bytes(uid, bytes as u64);
        let unwritable = |e: crate::audit::AuditError| {
            Status::unavailable(format!(
                "{e}; key operations are refused until the audit log can be written"
            ))
        };
        let mut waits = Vec::with_capacity(entries.len());
        let mut promise = promise;
        for e in entries {
            // The promise goes with the call's first line (a data-path
            // call writes one): the writer releases it when it takes it.
            let p = promise.take();
            waits.push(self.guard.audit.queue_async(e, p).map_err(unwritable)?);
        }
        for w in waits {
            w.await.map_err(unwritable)?;
        }
        Ok(())
    }

    /// Identifies and authorizes a call. A refusal is audited and answered
    /// with PERMISSION_DENIED naming the missing grant.
    pub(crate) async fn authorize<T>(
        &self,
        req: &Request<T>,
        op: &'static str,
        action: Action<'_>,
    ) -> Result<Call, Status> {
        let caller = caller_of(req)?;
        self.admit(&caller, op).await?;
        match self.guard.authorize(&caller, &action) {
            Ok(g) => Ok(Call {
                caller,
                principal: g.principal,
                role: g.role,
                op,
            }),
            Err(denied) => {
                let mut e = guard::entry(&caller, "", "none", op);
                e.insert("outcome".into(), json!("denied"));
                e.insert("code".into(), json!("PermissionDenied"));
                e.insert("message".into(), json!(denied.0));
                if let Action::BreakGlass { key } = &action {
                    e.insert("key".into(), json!(key));
                }
                // The refusal stands even if it cannot be audited.
                let _ = self.audit(caller.uid, vec![e]).await;
                Err(Status::permission_denied(denied.0))
            }
        }
    }

    /// Audits the outcome of a call that is not a key operation (Status):
    /// it is answered even when the log cannot be written, so that Status
    /// can say why key operations are refused.
    pub(crate) async fn finish_best_effort<T>(
        &self,
        call: &Call,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let mut e = guard::entry(&call.caller, &call.principal, call.role, call.op);
        e.extend(outcome(&result));
        if let Err(err) = self.audit(call.caller.uid, vec![e]).await {
            tracing::warn!(error = %err.message(), op = call.op, "request not audited");
        }
        result
    }

    /// Audits the outcome of an authorized call, then returns it.
    pub(crate) async fn finish<T>(
        &self,
        call: &Call,
        extra: Map<String, Value>,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let mut e = guard::entry(&call.caller, &call.principal, call.role, call.op);
        e.extend(extra);
        e.extend(outcome(&result));
        self.audit(call.caller.uid, vec![e]).await?;
        result
    }

    /// Refuses a caller whose requests have written more audit log than
    /// its limit allows, before any work (RESOURCE_EXHAUSTED).
    pub(crate) async fn admit(&self, caller: &Caller, op: &'static str) -> Result<(), Status> {
        match self.limits.check_audit_volume(caller.uid) {
            Ok(()) => Ok(()),
            Err(r) => Err(self.refused(caller, op, r).await),
        }
    }

    /// A refusal by a limit: counted always, audited once per uid, limit
    /// and interval (with how many were refused since), so a flood of
    /// refused calls is not a flood of audit lines.
    pub(crate) async fn refused(
        &self,
        caller: &Caller,
        op: &'static str,
        r: crate::limits::Refusal,
    ) -> Status {
        let status = Status::resource_exhausted(r.message);
        if r.audit {
            let mut e = guard::entry(caller, "", "none", op);
            e.insert("outcome".into(), json!("limited"));
            e.insert("code".into(), json!("ResourceExhausted"));
            e.insert("message".into(), json!(status.message()));
            e.insert("limit".into(), json!(r.limit.as_str()));
            e.insert(
                "refused_since_last_line".into(),
                json!(r.since_last_audited),
            );
            if r.limit == crate::limits::Limit::AuditHash {
                e.insert("ALERT".into(), json!("AUDIT HASH RATE EXCEEDED"));
            }
            // The refusal stands even if it cannot be audited.
            let _ = self.audit(caller.uid, vec![e]).await;
        }
        status
    }
}
