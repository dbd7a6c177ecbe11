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
    /// The daemon started (its version in the detail).
    DaemonStart,
    /// The daemon stopped gracefully.
    DaemonStop,
    /// A request whose protobuf message did not decode.
    MalformedRequest,
    /// A connection was closed over a connection limit (at most one
    /// line per uid every 10 s).
    ConnectionRefused,
    /// The HSM was lost while unsealed; reconnecting.
    HsmLost,
    /// The HSM came back after a loss.
    HsmRecovered,
    /// The policy file was reloaded, or the new one refused.
    PolicyReload,
    /// A break-glass grant was made.
    BreakGlass,
    /// An operator acknowledged a registry rollback (accepted once enough
    /// have).
    TamperingAcknowledged,
    /// Registry tampering was found, or its acknowledgement recorded.
    RegistryTampering,
    /// Reconciliation with the token repaired something (an orphan CMK
    /// object of an interrupted create or rotate destroyed).
    ReconcileRepair,
    /// A key rotated (by an admin or on schedule).
    Rotate,
    /// A key's rotation period or minimum decrypt version changed.
    KeyUpdate,
    /// A key version was marked compromised: it never decrypts again.
    RevokeVersion,
    /// A key was disabled.
    Disable,
    /// A key was enabled again.
    Enable,
    /// A key's destruction was requested.
    DestroyRequested,
    /// One approval of a requested destruction.
    DestroyApproved,
    /// A requested destruction has all its approvals: it is scheduled.
    DestroyFullyApproved,
    /// A requested destruction was cancelled.
    DestroyCancelled,
    /// A key's versions were destroyed on the token (crypto-shredded).
    Destroyed,
    /// A legal hold was placed on a key (a scheduled destruction pauses).
    HoldPlaced,
    /// A legal hold was released.
    HoldReleased,
    /// Init: the share set issued, or the init refused.
    Init,
    /// Init completed at the first unseal (the token's PINs changed), or
    /// failed.
    InitCommit,
    /// The unseal that completes a quorum: logged in, or failed.
    Unseal,
    /// An unseal share accepted or refused.
    UnsealShare,
    /// An operator discarded the unseal shares received.
    UnsealReset,
    /// An unseal in progress timed out; its shares were discarded.
    UnsealExpired,
    /// Unseal progress was reset: shares of the other set arrived during
    /// an interrupted rekey.
    UnsealProgressReset,
    /// The daemon was sealed.
    Seal,
    /// The seal file failed its integrity checks.
    SealTampering,
    /// A rekey began.
    RekeyStart,
    /// A share of the current set submitted to a rekey.
    RekeyShare,
    /// A rekey's new shares were issued.
    RekeySharesIssued,
    /// The new shares submitted to verify a rekey did not rebuild its new
    /// key.
    RekeyVerify,
    /// A new share submitted to verify a rekey.
    RekeyVerifyShare,
    /// A rekey's commit: the new set in force, failed, or committed with
    /// the daemon left sealed (the new set's file still pending).
    RekeyCommit,
    /// A rekey was cancelled.
    RekeyCancel,
    /// A rekey in progress timed out and was cancelled.
    RekeyExpired,
    /// At start, `seal.pending.json` was found: a rekey commit was
    /// interrupted.
    RekeyInterruptedFound,
    /// A custodian accepted a restore's window (what happened after the
    /// backup's trail ends), or the unseal that completed it.
    RestoreWindowAccepted,
    /// A backup was taken (durable before the file is handed out).
    Backup,
    /// A restore: the first event of the restored deployment's log.
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
    /// Done.
    Ok,
    /// Refused: nothing changed.
    Refused,
    /// Attempted, and failed.
    Failed,
    /// A fault of the daemon's surroundings (the HSM lost).
    Error,
    /// Tampering detected.
    Detected,
    /// Something needs an operator's attention.
    Warning,
    /// Cancelled (a rekey that timed out).
    Cancelled,
    /// A break-glass grant made.
    Granted,
    /// A share (or a restore window) accepted.
    Accepted,
    /// Progress discarded.
    Reset,
    /// A share set issued.
    SharesIssued,
    /// Tampering acknowledged by an operator.
    Acknowledged,
    /// An orphan CMK object destroyed.
    OrphanDestroyed,
    /// A rekey committed on the token, but its new seal file could not be
    /// put in place: the daemon is sealed and the next unseal takes either
    /// set.
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
    /// What happened.
    pub kind: EventKind,
    /// How it ended.
    pub outcome: Outcome,
    /// The detail object (ids, names, counts; never secrets).
    pub detail: Value,
}

impl Event {
    /// An event of `kind` that ended in `outcome`, with `detail`.
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
    /// Records an event; returns once it is durable or its failure has been
    /// logged (see the module's contract).
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
    /// Queues an event, tagged with the calling thread.
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
