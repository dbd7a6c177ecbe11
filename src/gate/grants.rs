//! Break-glass requests through the gate: the policy decides (the grant
//! is the authorisation), and the request is audited as an alert whether
//! granted or not, with its fields bounded.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{outcome, Caller, Gate, GateError};
use crate::guard::{BreakGlassError, BreakGlassGrant};

impl Gate {
    /// Asks for a time-limited emergency grant of app access to `key`.
    pub async fn break_glass(
        &self,
        caller: &Caller,
        key: &str,
        reason: &str,
        duration: Duration,
    ) -> Result<BreakGlassGrant, GateError> {
        const OP: &str = "BreakGlass";
        self.admit(caller, OP).await?;
        let principal = self.guard.principal_name(&caller.identity);
        let res = self
            .guard
            .break_glass(&caller.identity, key, reason, duration)
            .map_err(|e| match e {
                BreakGlassError::Invalid(e) => GateError::Core(e),
                BreakGlassError::Denied(d) => GateError::Denied(d.0),
            });
        // What reaches the log is bounded: a refused request's fields are
        // summarised by their sizes, an accepted one's were validated.
        let mut e: Map<String, Value> = self.entry(caller, &principal, "admin", OP);
        if res.is_ok() {
            e.insert("key".into(), json!(key));
            e.insert("reason".into(), json!(reason));
        } else {
            e.insert("key".into(), crate::audit::summary(key));
            e.insert("reason".into(), crate::audit::summary(reason));
        }
        e.insert("break_glass".into(), json!(true));
        e.insert("ALERT".into(), json!("BREAK-GLASS REQUEST"));
        e.extend(outcome(&res));
        let counted = match &res {
            Ok(_) => "ok",
            Err(GateError::Denied(_)) => "denied",
            Err(_) => "error",
        };
        self.count(caller, OP, counted);
        self.audit(caller.uid(), vec![e], None).await?;
        res
    }
}
