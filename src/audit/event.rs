//! Typed audit events and the sink they go to.
//!
//! The parts that audit (seal, core, guard, server) are handed an
//! [`AuditSink`]; none of them reaches for a global. Every event kind and
//! outcome is an enum here, turned into the log's JSON in one place
//! ([`Event::fields`]).
//!
//! The contract of a sink:
//! - [`AuditSink::event`] returns once the event is durable, or once its
//!   failure has been logged: events are best effort, the request that
//!   caused them is audited fail-closed by the API layer;
//! - it never blocks on another lock of the caller: callers that hold a
//!   lock of their own (the seal) queue events and hand them over after
//!   releasing it;
//! - events never carry key material, shares, PINs, plaintext or context
//!   values.

use std::sync::Mutex;

use crate::sync::Recover;
use serde_json::{json, Map, Value};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    DaemonStart,
    DaemonStop,
    MalformedRequest,
    ConnectionRefused,
    HsmLost,
    HsmRecovered,
    PolicyReload,
    BreakGlass,
    TamperingAcknowledged,
    RegistryTampering,
    ReconcileRepair,
    Rotate,
    KeyUpdate,
    RevokeVersion,
    Disable,
    Enable,
    DestroyRequested,
    DestroyApproved,
    DestroyFullyApproved,
    DestroyCancelled,
    Destroyed,
    HoldPlaced,
    HoldReleased,
    Init,
    InitCommit,
    Unseal,
    UnsealShare,
    UnsealReset,
    UnsealExpired,
    UnsealProgressReset,
    Seal,
    SealTampering,
    RekeyStart,
    RekeyShare,
    RekeySharesIssued,
    RekeyVerify,
    RekeyVerifyShare,
    RekeyCommit,
    RekeyCancel,
    RekeyExpired,
    RekeyInterruptedFound,
    RestoreWindowAccepted,
    Backup,
    Restore,
}

impl EventKind {
    /// Every kind, for reading a log line's `event` back.
    pub const ALL: &'static [EventKind] = &[
        EventKind::DaemonStart,
        EventKind::DaemonStop,
        EventKind::MalformedRequest,
        EventKind::ConnectionRefused,
        EventKind::HsmLost,
        EventKind::HsmRecovered,
        EventKind::PolicyReload,
        EventKind::BreakGlass,
        EventKind::TamperingAcknowledged,
        EventKind::RegistryTampering,
        EventKind::ReconcileRepair,
        EventKind::Rotate,
        EventKind::KeyUpdate,
        EventKind::RevokeVersion,
        EventKind::Disable,
        EventKind::Enable,
        EventKind::DestroyRequested,
        EventKind::DestroyApproved,
        EventKind::DestroyFullyApproved,
        EventKind::DestroyCancelled,
        EventKind::Destroyed,
        EventKind::HoldPlaced,
        EventKind::HoldReleased,
        EventKind::Init,
        EventKind::InitCommit,
        EventKind::Unseal,
        EventKind::UnsealShare,
        EventKind::UnsealReset,
        EventKind::UnsealExpired,
        EventKind::UnsealProgressReset,
        EventKind::Seal,
        EventKind::SealTampering,
        EventKind::RekeyStart,
        EventKind::RekeyShare,
        EventKind::RekeySharesIssued,
        EventKind::RekeyVerify,
        EventKind::RekeyVerifyShare,
        EventKind::RekeyCommit,
        EventKind::RekeyCancel,
        EventKind::RekeyExpired,
        EventKind::RekeyInterruptedFound,
        EventKind::RestoreWindowAccepted,
        EventKind::Backup,
        EventKind::Restore,
    ];

    /// The kind a log line names (None: not one of ours).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// The `event` field in the log.
    pub fn as_str(self) -> &'static str {
        use EventKind::*;
        match self {
            DaemonStart => "daemon_start",
            DaemonStop => "daemon_stop",
            MalformedRequest => "malformed_request",
            ConnectionRefused => "connection_refused",
            HsmLost => "hsm_lost",
            HsmRecovered => "hsm_recovered",
            PolicyReload => "policy_reload",
            BreakGlass => "break_glass",
            TamperingAcknowledged => "tampering_acknowledged",
            RegistryTampering => "registry_tampering",
            ReconcileRepair => "reconcile_repair",
            Rotate => "rotate",
            KeyUpdate => "key_update",
            RevokeVersion => "revoke_version",
            Disable => "disable",
            Enable => "enable",
            DestroyRequested => "destroy_requested",
            DestroyApproved => "destroy_approved",
            DestroyFullyApproved => "destroy_fully_approved",
            DestroyCancelled => "destroy_cancelled",
            Destroyed => "destroyed",
            HoldPlaced => "hold_placed",
            HoldReleased => "hold_released",
            Init => "init",
            InitCommit => "init_commit",
            Unseal => "unseal",
            UnsealShare => "unseal_share",
            UnsealReset => "unseal_reset",
            UnsealExpired => "unseal_expired",
            UnsealProgressReset => "unseal_progress_reset",
            Seal => "seal",
            SealTampering => "seal_tampering",
            RekeyStart => "rekey_start",
            RekeyShare => "rekey_share",
            RekeySharesIssued => "rekey_shares_issued",
            RekeyVerify => "rekey_verify",
            RekeyVerifyShare => "rekey_verify_share",
            RekeyCommit => "rekey_commit",
            RekeyCancel => "rekey_cancel",
            RekeyExpired => "rekey_expired",
            RekeyInterruptedFound => "rekey_interrupted_found",
            RestoreWindowAccepted => "restore_window_accepted",
            Backup => "backup",
            Restore => "restore",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    Ok,
    Refused,
    Failed,
    Error,
    Detected,
    Warning,
    Cancelled,
    Granted,
    Accepted,
    Reset,
    SharesIssued,
    Acknowledged,
    OrphanDestroyed,
    CommittedButSealed,
}

impl Outcome {
    /// Every outcome, for reading a log line's `outcome` back.
    pub const ALL: &'static [Outcome] = &[
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Failed,
        Outcome::Error,
        Outcome::Detected,
        Outcome::Warning,
        Outcome::Cancelled,
        Outcome::Granted,
        Outcome::Accepted,
        Outcome::Reset,
        Outcome::SharesIssued,
        Outcome::Acknowledged,
        Outcome::OrphanDestroyed,
        Outcome::CommittedButSealed,
    ];

    /// The outcome a log line names (None: not one of ours).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|o| o.as_str() == s)
    }

    /// The `outcome` field in the log.
    pub fn as_str(self) -> &'static str {
        use Outcome::*;
        match self {
            Ok => "ok",
            Refused => "refused",
            Failed => "failed",
            Error => "error",
            Detected => "detected",
            Warning => "warning",
            Cancelled => "cancelled",
            Granted => "granted",
            Accepted => "accepted",
            Reset => "reset",
            SharesIssued => "shares_issued",
            Acknowledged => "acknowledged",
            OrphanDestroyed => "orphan_destroyed",
            CommittedButSealed => "committed_but_sealed",
        }
    }
}

/// One audit event: a kind, an outcome and detail fields (which name
/// keys, ids and counts, never secrets or context values).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub outcome: Outcome,
    pub detail: Value,
}

impl Event {
    pub fn new(kind: EventKind, outcome: Outcome, detail: Value) -> Self {
        Event {
            kind,
            outcome,
            detail,
        }
    }

    /// The log line's fields (the writer adds `seq`, `time`, `prev`).
    pub fn fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), json!("event"));
        m.insert("event".into(), json!(self.kind.as_str()));
        m.insert("outcome".into(), json!(self.outcome.as_str()));
        m.insert("detail".into(), self.detail.clone());
        m
    }
}

/// Where audit events go (see the module's contract).
pub trait AuditSink: Send + Sync {
    fn event(&self, e: Event);

    /// Shorthand for `event(Event::new(kind, outcome, detail))`.
    fn record_event(&self, kind: EventKind, outcome: Outcome, detail: Value) {
        self.event(Event::new(kind, outcome, detail));
    }
}

/// Drops every event (benchmarks without an audit log).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl AuditSink for NullSink {
    fn event(&self, _e: Event) {}
}

/// Events queued by a part that must not write while it holds its own
/// lock; [`Pending::flush`] hands them to the sink once the lock is gone.
/// Each event is tagged with the thread that noted it and each flush
/// delivers only its own thread's: a call returns once its own events are
/// durable, in the order it noted them, and a data-key call never pays for
/// a ceremony's writes.
#[derive(Default)]
pub struct Pending {
    queue: Mutex<Vec<(std::thread::ThreadId, Event)>>,
}

impl Pending {
    pub fn push(&self, e: Event) {
        self.queue.locked().push((std::thread::current().id(), e));
    }

    /// Delivers the events this thread noted (none for events queued
    /// before a sink existed: [`Pending::flush_all`] takes those).
    pub fn flush(&self, sink: &dyn AuditSink) {
        let me = std::thread::current().id();
        let mine: Vec<Event> = {
            let mut q = self.queue.locked();
            if q.is_empty() {
                return;
            }
            let (mine, others): (Vec<_>, Vec<_>) = q.drain(..).partition(|(t, _)| *t == me);
            *q = others;
            mine.into_iter().map(|(_, e)| e).collect()
        };
        for e in mine {
            sink.event(e);
        }
    }

    /// Delivers everything queued, whoever noted it.
    pub fn flush_all(&self, sink: &dyn AuditSink) {
        let all = std::mem::take(&mut *self.queue.locked());
        for (_, e) in all {
            sink.event(e);
        }
    }
}
