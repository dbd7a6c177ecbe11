//! The one gate every front end passes on its way to the core.
//!
//! A front end (gRPC today; HTTP, KMIP and pins next) does two things:
//! it says who is calling, as a [`Caller`] built from what its transport
//! vouches for (the kernel's peer credentials on a Unix socket), and it
//! translates its protocol's requests into core operations and the
//! answers back, through one table of its own from [`Code`] to its status
//! codes. Everything else is decided here, the same way for every front
//! end:
//!
//! - **limits**: a uid that has written more audit log than its share is
//!   refused before any work ([`Gate::admit`]), and the per-uid rates
//!   ([`Gate::take`], shares, backups, watch streams) are counted here;
//! - **authorisation**: the policy (or a break-glass grant) allows the
//!   action, or the call is refused, audited and counted
//!   ([`Gate::authorize`]; the data path per item, [`Gate::data_path`]);
//! - **the core**: reached only with a [`Call`] the gate issued
//!   ([`Gate::run`]) or through the data path; the core itself refuses
//!   every key operation while it is not serving (sealed, HSM lost, not
//!   the current node), so no front end can serve one;
//! - **audit**: one line per call, durably written before the answer
//!   leaves ([`Gate::finish`]); a call whose line cannot be written fails
//!   as unavailable, whatever it did;
//! - **metrics**: every decision counted by front end, operation and
//!   outcome (`keywarden_gate_calls_total`).
//!
//! A front end may not: read or write the registry, the seal or the HSM
//! other than through a [`Call`]; decide who may do what; write audit
//! lines of its own; or keep state that outlives a request, except what
//! its transport needs (connections, streams).

use crate::sync::Recover;

pub mod code;
mod data;
mod grants;
mod watch;
pub mod workers;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::audit::AuditError;
use crate::core::{Actor, CoreError, Keywarden};
use crate::guard::{self, Guard};
use crate::limits::{Limit, Limits, Refusal};
use crate::metrics::Metrics;
use crate::policy::{Action, Identity};

pub use code::Code;
pub use data::{DataCall, Use};
pub use watch::Watcher;

/// The front end a call came through, as the audit log and the metrics
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Front(&'static str);

impl Front {
    /// Keywarden's own gRPC API on the Unix socket.
    pub const GRPC: Front = Front("grpc");

    /// A front end by name (lower case, a constant: it labels metrics).
    pub const fn named(name: &'static str) -> Front {
        Front(name)
    }

    /// The name the audit log and the metrics use.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// Who is calling, and through which front end: what every front end
/// hands the gate. The identity is what the transport vouches for (the
/// kernel's peer credentials, read when the connection was accepted),
/// never what the request claims.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The calling process: uid, gid, groups, executable.
    pub identity: Identity,
    /// The front end the call came through.
    pub front: Front,
}

impl Caller {
    /// A caller through `front` with the identity its transport vouches for.
    pub fn new(identity: Identity, front: Front) -> Self {
        Caller { identity, front }
    }

    /// The calling uid.
    pub fn uid(&self) -> u32 {
        self.identity.uid
    }
}

/// An identified, authorized call: issued by [`Gate::authorize`] only,
/// and the one way to reach the core ([`Gate::run`]).
pub struct Call {
    caller: Caller,
    principal: String,
    role: &'static str,
    op: &'static str,
    started: Instant,
}

impl Call {
    /// Who is calling.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The policy's principal the caller was recognised as.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The role the policy granted for this call.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// The operation's name, as the audit log records it.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The caller as the core records an administrative change.
    pub fn actor(&self) -> Actor {
        Actor {
            uid: self.caller.uid(),
            principal: self.principal.clone(),
        }
    }
}

/// Why the gate refused or failed a call, before a front end translates
/// it ([`Answer`] gives its code and message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The policy does not allow it; the message names the missing grant.
    #[error("{0}")]
    Denied(String),
    /// A per-uid limit refused it.
    #[error("{message}")]
    Limited {
        /// Which limit.
        limit: Limit,
        /// What the caller is told (the limit and when to retry).
        message: String,
    },
    /// The call's audit line could not be written: nothing is answered.
    #[error("{0}; key operations are refused until the audit log can be written")]
    AuditUnwritable(#[source] AuditError),
    /// The core refused or failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The request is not one the gate can run (a front end's own
    /// refusal, named by its code).
    #[error("{message}")]
    Refused {
        /// The canonical code.
        code: Code,
        /// What the caller is told.
        message: String,
    },
    /// The task running the call failed (a panic in the core).
    #[error("internal error")]
    TaskFailed(#[source] tokio::task::JoinError),
    /// A data-path call's worker dropped it without an answer (a panic).
    #[error("internal error")]
    WorkerFailed,
    /// The daemon is stopping: no new work is taken.
    #[error("the daemon is stopping")]
    Stopping,
}

/// What a front end answered, as the gate audits and counts it.
pub trait Answer {
    /// The canonical code of the answer.
    fn code(&self) -> Code;
    /// What the caller was told.
    fn message(&self) -> String;
}

impl Answer for GateError {
    fn code(&self) -> Code {
        match self {
            GateError::Denied(_) => Code::PermissionDenied,
            GateError::Limited { .. } => Code::ResourceExhausted,
            GateError::AuditUnwritable(_) => Code::Unavailable,
            GateError::Core(e) => code::code(e),
            GateError::Refused { code, .. } => *code,
            GateError::TaskFailed(_) | GateError::WorkerFailed => Code::Internal,
            GateError::Stopping => Code::Unavailable,
        }
    }

    fn message(&self) -> String {
        match self {
            GateError::Core(e) => code::message(e),
            other => other.to_string(),
        }
    }
}

/// The audit fields `outcome`, `code` (and `message`) of an answer.
pub fn outcome<T, E: Answer>(r: &Result<T, E>) -> Map<String, Value> {
    let mut m = Map::new();
    match r {
        Ok(_) => {
            m.insert("outcome".into(), json!("ok"));
            m.insert("code".into(), json!(Code::Ok.as_str()));
        }
        Err(e) => {
            m.insert("outcome".into(), json!("error"));
            m.insert("code".into(), json!(e.code().as_str()));
            m.insert("message".into(), json!(e.message()));
        }
    }
    m
}

/// Share submissions (unseal and rekey) one uid may make per
/// [`SHARE_WINDOW`]: a custodian needs one; a flood of forged shares
/// (each resetting progress) is cut off.
pub const SHARES_PER_WINDOW: u32 = 30;
/// The window [`SHARES_PER_WINDOW`] counts in.
pub const SHARE_WINDOW: Duration = Duration::from_secs(60);

/// The gate: what every front end shares.
pub struct Gate {
    core: Arc<Keywarden>,
    guard: Arc<Guard>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    workers: Arc<workers::Workers<Keywarden>>,
    /// Share submissions per uid in the current window.
    shares: Mutex<HashMap<u32, (Instant, u32)>>,
    /// One backup at a time, held from its taking to its last chunk sent:
    /// each holds a whole file in memory.
    backups: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    /// A gate over `core`, deciding with `guard` (policy, audit) and
    /// `limits`, counting in `metrics`; the data path runs on `workers`.
    pub fn new(
        core: Arc<Keywarden>,
        guard: Arc<Guard>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        workers: Arc<workers::Workers<Keywarden>>,
    ) -> Self {
        Gate {
            core,
            guard,
            limits,
            metrics,
            workers,
            shares: Mutex::new(HashMap::new()),
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The policy and audit state, for Status (read only).
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The per-uid limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What the daemon counts and measures.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The data path's workers (stopped at shutdown).
    pub fn workers(&self) -> &Arc<workers::Workers<Keywarden>> {
        &self.workers
    }

    fn count(&self, caller: &Caller, op: &'static str, outcome: &'static str) {
        self.metrics.gate_call(caller.front.as_str(), op, outcome);
    }

    /// The audit line every call starts from.
    fn entry(&self, caller: &Caller, principal: &str, role: &str, op: &str) -> Map<String, Value> {
        let mut e = guard::entry(&caller.identity, principal, role, op);
        e.insert("front".into(), json!(caller.front.as_str()));
        e
    }

    /// Writes audit entries and waits until they are durable; the bytes
    /// are charged to `uid`'s audit volume ([`crate::limits`]).
    pub(crate) async fn audit(
        &self,
        uid: u32,
        entries: Vec<Map<String, Value>>,
        promise: Option<crate::audit::Promise>,
    ) -> Result<(), GateError> {
        if self.guard.audit_disabled {
            return Ok(());
        }
        let bytes: usize = entries.iter().map(crate::limits::approx_json_len).sum();
        self.limits.charge_audit_bytes(uid, bytes as u64);
        let mut waits = Vec::with_capacity(entries.len());
        let mut promise = promise;
        for e in entries {
            // The promise goes with the call's first line (a data-path
            // call writes one): the writer releases it when it takes it.
            let p = promise.take();
            waits.push(
                self.guard
                    .audit
                    .queue_async(e, p)
                    .map_err(GateError::AuditUnwritable)?,
            );
        }
        for w in waits {
            w.await.map_err(GateError::AuditUnwritable)?;
        }
        Ok(())
    }

    /// Refuses a caller whose requests have written more audit log than
    /// its limit allows, before any work.
    pub async fn admit(&self, caller: &Caller, op: &'static str) -> Result<(), GateError> {
        match self.limits.check_audit_volume(caller.uid()) {
            Ok(()) => Ok(()),
            Err(r) => Err(self.refused(caller, op, r).await),
        }
    }

    /// Counts `n` against one of `call`'s per-uid rates.
    pub async fn take(&self, call: &Call, limit: Limit, n: u64) -> Result<(), GateError> {
        match self.limits.take(call.caller.uid(), limit, n) {
            Ok(()) => Ok(()),
            Err(r) => Err(self.refused(&call.caller, call.op, r).await),
        }
    }

    /// A refusal by a limit: counted always, audited once per uid, limit
    /// and interval (with how many were refused since), so a flood of
    /// refused calls is not a flood of audit lines.
    pub(crate) async fn refused(&self, caller: &Caller, op: &'static str, r: Refusal) -> GateError {
        self.count(caller, op, "limited");
        let err = GateError::Limited {
            limit: r.limit,
            message: r.message,
        };
        if r.audit {
            let mut e = self.entry(caller, "", "none", op);
            e.insert("outcome".into(), json!("limited"));
            e.insert("code".into(), json!(Code::ResourceExhausted.as_str()));
            e.insert("message".into(), json!(err.to_string()));
            e.insert("limit".into(), json!(r.limit.as_str()));
            e.insert(
                "refused_since_last_line".into(),
                json!(r.since_last_audited),
            );
            if r.limit == Limit::AuditHash {
                e.insert("ALERT".into(), json!("AUDIT HASH RATE EXCEEDED"));
            }
            // The refusal stands even if it cannot be audited.
            let _ = self.audit(caller.uid(), vec![e], None).await;
        }
        err
    }

    /// Identifies and authorizes a call. A refusal is audited, counted
    /// and answered with [`GateError::Denied`] naming the missing grant.
    pub async fn authorize(
        &self,
        caller: &Caller,
        op: &'static str,
        action: Action<'_>,
    ) -> Result<Call, GateError> {
        self.admit(caller, op).await?;
        match self.guard.authorize(&caller.identity, &action) {
            Ok(g) => Ok(Call {
                caller: caller.clone(),
                principal: g.principal,
                role: g.role,
                op,
                started: Instant::now(),
            }),
            Err(denied) => {
                self.count(caller, op, "denied");
                let mut e = self.entry(caller, "", "none", op);
                e.insert("outcome".into(), json!("denied"));
                e.insert("code".into(), json!(Code::PermissionDenied.as_str()));
                e.insert("message".into(), json!(denied.0));
                if let Action::BreakGlass { key } = &action {
                    e.insert("key".into(), json!(key));
                }
                // The refusal stands even if it cannot be audited.
                let _ = self.audit(caller.uid(), vec![e], None).await;
                Err(GateError::Denied(denied.0))
            }
        }
    }

    /// Runs `f` on the core off the async runtime, for an authorized call.
    pub async fn run<T, F>(&self, _call: &Call, f: F) -> Result<T, GateError>
    where
        T: Send + 'static,
        F: FnOnce(&Keywarden) -> T + Send + 'static,
    {
        let core = Arc::clone(&self.core);
        tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "core task failed");
                GateError::TaskFailed(e)
            })
    }

    /// Audits the outcome of an authorized call (with `extra` fields),
    /// counts it, then returns it. A call whose line cannot be written
    /// fails, whatever it did.
    pub async fn finish<T, E>(
        &self,
        call: &Call,
        extra: Map<String, Value>,
        result: Result<T, E>,
    ) -> Result<T, E>
    where
        E: Answer + From<GateError>,
    {
        let mut e = self.entry(&call.caller, &call.principal, call.role, call.op);
        e.extend(extra);
        e.extend(outcome(&result));
        self.count(
            &call.caller,
            call.op,
            if result.is_ok() { "ok" } else { "error" },
        );
        self.audit(call.caller.uid(), vec![e], None).await?;
        result
    }

    /// [`Gate::finish`] for a call that is not a key operation (Status,
    /// Metrics): answered even when the log cannot be written, so that
    /// Status can say why key operations are refused.
    pub async fn finish_best_effort<T, E: Answer>(
        &self,
        call: &Call,
        result: Result<T, E>,
    ) -> Result<T, E> {
        let mut e = self.entry(&call.caller, &call.principal, call.role, call.op);
        e.extend(outcome(&result));
        self.count(
            &call.caller,
            call.op,
            if result.is_ok() { "ok" } else { "error" },
        );
        if let Err(err) = self.audit(call.caller.uid(), vec![e], None).await {
            tracing::warn!(error = %err, op = call.op, "request not audited");
        }
        result
    }

    /// Reloads the policy file for an authorized call; an invalid policy
    /// is refused and the one in force stays.
    pub fn reload_policy(&self, _call: &Call) -> Result<(), crate::guard::GuardError> {
        self.guard.reload()
    }

    /// How long an authorized call has been running.
    pub fn elapsed(&self, call: &Call) -> Duration {
        call.started.elapsed()
    }

    /// Counts one share submission by `call`'s uid; refuses past
    /// [`SHARES_PER_WINDOW`].
    pub fn share_rate(&self, call: &Call) -> Result<(), GateError> {
        let now = Instant::now();
        let mut m = self.shares.locked();
        m.retain(|_, (start, _)| now.duration_since(*start) < SHARE_WINDOW);
        let uid = call.caller.uid();
        let e = m.entry(uid).or_insert((now, 0));
        if e.1 >= SHARES_PER_WINDOW {
            let wait = SHARE_WINDOW.saturating_sub(now.duration_since(e.0));
            return Err(GateError::Refused {
                code: Code::ResourceExhausted,
                message: format!(
                    "share: uid {uid} submitted {SHARES_PER_WINDOW} shares in {} s; retry in {} s",
                    SHARE_WINDOW.as_secs(),
                    wait.as_secs().max(1)
                ),
            });
        }
        e.1 += 1;
        Ok(())
    }

    /// The one backup slot, if no other backup is being taken or
    /// streamed; held by the stream until its last chunk is taken.
    pub fn backup_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.backups.clone().try_acquire_owned().ok()
    }

    /// Renders the metrics page: what was recorded, and the state now.
    pub fn metrics_page(&self) -> crate::metrics::http::Render {
        let (core, guard, metrics, per_key) = (
            self.core.clone(),
            self.guard.clone(),
            self.metrics.clone(),
            self.metrics.per_key,
        );
        Arc::new(move || {
            let mut snap = core.metrics_snapshot(per_key);
            snap.break_glass_grants = guard.active_break_glass().len() as u64;
            metrics.render(&snap)
        })
    }
}
