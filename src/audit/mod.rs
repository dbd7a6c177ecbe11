//! Security events in one place. Today each event is one structured log
//! line (target `keywarden::audit`); the audit-log issue turns this into the
//! hash-chained, fsynced file. Events never carry share, key or PIN bytes.

use serde_json::Value;

/// Records an event: what happened, its outcome, and non-secret detail.
pub fn event(kind: &'static str, outcome: &str, detail: Value) {
    tracing::info!(target: "keywarden::audit", event = kind, outcome, detail = %detail);
}
