//! Key-change subscriptions through the gate: the app role, the serving
//! gate and the per-uid stream limit at the start, audited; then, for as
//! long as the stream lasts, the same two checks again at every beat.

use std::sync::Arc;

use super::{outcome, Caller, Gate, GateError};
use crate::core::{CoreError, KeyChange, Keywarden};
use crate::guard::Guard;
use crate::seal::SealError;

/// An admitted subscription: what a front end streams from. It holds the
/// uid's stream slot until it is dropped.
pub struct Watcher {
    core: Arc<Keywarden>,
    guard: Arc<Guard>,
    caller: Caller,
    _slot: crate::limits::WatchSlot,
}

impl Watcher {
    /// The key changes the core publishes from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<KeyChange> {
        self.core.watch()
    }

    /// Whether the stream may go on: the daemon still serves keys and
    /// the caller may still use them.
    /// A stream the daemon ends when it stops serving is UNAVAILABLE
    /// (a client reconnects and waits), as the API documents.
    pub fn check(&self) -> Result<(), GateError> {
        if !self.core.is_serving() {
            Err(GateError::Refused {
                code: super::Code::Unavailable,
                message: "the daemon stopped serving keys (sealed)".into(),
            })
        } else if !self.guard.may_use_data_keys(&self.caller.identity) {
            Err(GateError::Denied(
                "this caller may no longer use data keys".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Changes when who may use which key can have changed (a policy
    /// reload, a break-glass grant given or expired).
    pub fn access_epoch(&self) -> (u64, usize) {
        self.guard.access_epoch()
    }
}

impl Gate {
    /// Admits a key-change subscription: the app role, a serving daemon,
    /// and a free stream slot for the uid; audited (a refusal by the
    /// stream limit once per interval, before anything else is written).
    pub async fn watch(&self, caller: &Caller) -> Result<Watcher, GateError> {
        const OP: &str = "WatchKeys";
        let principal = self.guard.principal_name(&caller.identity);
        let mut entry = self.entry(caller, &principal, "app", OP);
        let refused = if !self.guard.may_use_data_keys(&caller.identity) {
            Some(GateError::Denied(format!(
                "uid {} needs the app role to watch key changes",
                caller.uid()
            )))
        } else if !self.core.is_serving() {
            Some(GateError::Core(CoreError::Seal(SealError::Sealed {
                received: 0,
                threshold: 0,
            })))
        } else {
            None
        };
        let r: Result<(), GateError> = refused.map_or(Ok(()), Err);
        let slot = match r {
            Ok(()) => {
                self.admit(caller, OP).await?;
                // A client needs one stream: a uid holding many is refused
                // before its call is audited (the refusals are, once per
                // interval).
                match self.limits.watch(caller.uid()) {
                    Ok(slot) => Ok(slot),
                    Err(refusal) => return Err(self.refused(caller, OP, refusal).await),
                }
            }
            Err(e) => Err(e),
        };
        entry.extend(outcome(&slot));
        let counted = match &slot {
            Ok(_) => "ok",
            Err(GateError::Denied(_)) => "denied",
            Err(_) => "error",
        };
        self.count(caller, OP, counted);
        self.audit(caller.uid(), vec![entry], None).await?;
        Ok(Watcher {
            core: self.core.clone(),
            guard: self.guard.clone(),
            caller: caller.clone(),
            _slot: slot?,
        })
    }
}
