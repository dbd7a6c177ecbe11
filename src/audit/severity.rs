//! The syslog severity (RFC 5424, section 6.2.1) of an audit line, from
//! what the line records, so that a SIEM's alerting sees tampering,
//! destruction, break-glass use and failed ceremonies above the routine
//! traffic of data-key calls.
//!
//! | severity | lines |
//! |---|---|
//! | alert (1) | tampering detected (registry, seal file) |
//! | error (3) | the HSM lost |
//! | warning (4) | any line marked `ALERT` (break-glass, tampering acknowledgements, accepted rollbacks); destruction requested, approved or carried out; a restore or a restore window accepted; a failed or refused ceremony step (init, unseal, rekey) |
//! | notice (5) | any other refused or failed request or event |
//! | informational (6) | everything else |

use serde_json::Value;

use super::event::{EventKind, Outcome};

/// RFC 5424 severities the forwarder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Severity {
    /// Tampering detected.
    Alert = 1,
    /// The HSM lost.
    Error = 3,
    /// Break-glass, destruction, restores, failed ceremony steps and every
    /// line marked `ALERT`.
    Warning = 4,
    /// Any other refused or failed request or event.
    Notice = 5,
    /// Everything else.
    Informational = 6,
}

impl Severity {
    /// The RFC 5424 severity number (the `PRI`'s low three bits).
    pub fn code(self) -> u8 {
        self as u8
    }
}

fn failed(o: Outcome) -> bool {
    matches!(
        o,
        Outcome::Refused | Outcome::Failed | Outcome::Error | Outcome::Detected | Outcome::Warning
    )
}

/// The severity of an event of `kind` with `outcome`.
pub fn of_event(kind: EventKind, outcome: Outcome) -> Severity {
    use EventKind::*;
    match kind {
        RegistryTampering | SealTampering if outcome == Outcome::Detected => Severity::Alert,
        RegistryTampering
        | SealTampering
        | TamperingAcknowledged
        | BreakGlass
        | Restore
        | RestoreWindowAccepted
        | DestroyRequested
        | DestroyApproved
        | DestroyFullyApproved
        | Destroyed => Severity::Warning,
        HsmLost => Severity::Error,
        Init
        | InitCommit
        | Unseal
        | UnsealShare
        | UnsealExpired
        | RekeyStart
        | RekeyShare
        | RekeyVerify
        | RekeyVerifyShare
        | RekeyCommit
        | RekeyExpired
        | RekeyInterruptedFound
            if failed(outcome) =>
        {
            Severity::Warning
        }
        _ if failed(outcome) => Severity::Notice,
        _ => Severity::Informational,
    }
}

/// The severity of one audit line (a request line with `op` and `code`, an
/// event line with `event` and `outcome`, or the log's own lines).
pub fn of_line(v: &Value) -> Severity {
    of(|k| v.get(k))
}

/// [`of_line`] on the fields before they are written (the writer's view).
pub fn of_fields(m: &serde_json::Map<String, Value>) -> Severity {
    of(|k| m.get(k))
}

fn of<'a>(get: impl Fn(&str) -> Option<&'a Value>) -> Severity {
    let text = |k: &str| get(k).and_then(Value::as_str);
    let marked = get("ALERT").is_some() || get("detail").and_then(|d| d.get("ALERT")).is_some();
    let base = match (text("code"), text("event"), text("outcome")) {
        (Some(code), _, _) if code != "OK" => Severity::Notice,
        (Some(_), _, _) => Severity::Informational,
        (None, Some(e), Some(o)) => match (EventKind::parse(e), Outcome::parse(o)) {
            (Some(k), Some(o)) => of_event(k, o),
            // Another version's kind: judged by its outcome's word alone.
            _ if o != "ok" => Severity::Notice,
            _ => Severity::Informational,
        },
        _ => Severity::Informational,
    };
    if marked {
        base.min(Severity::Warning)
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alert_classes_rise_above_routine_lines() {
        let cases = [
            (
                json!({"op": "GenerateDataKey", "code": "OK"}),
                Severity::Informational,
            ),
            (
                json!({"op": "Decrypt", "code": "PERMISSION_DENIED"}),
                Severity::Notice,
            ),
            (
                json!({"op": "AcknowledgeTampering", "code": "OK", "ALERT": "TAMPERING ACKNOWLEDGEMENT"}),
                Severity::Warning,
            ),
            (
                json!({"type": "event", "event": "tampering_acknowledged", "outcome": "ok", "detail": {"ALERT": "REGISTRY ROLLBACK ACCEPTED"}}),
                Severity::Warning,
            ),
            (
                json!({"type": "event", "event": "break_glass", "outcome": "granted", "detail": {}}),
                Severity::Warning,
            ),
            (
                json!({"type": "event", "event": "registry_tampering", "outcome": "detected", "detail": {}}),
                Severity::Alert,
            ),
            (
                json!({"type": "event", "event": "registry_tampering", "outcome": "acknowledged", "detail": {}}),
                Severity::Warning,
            ),
            (
                json!({"type": "event", "event": "destroyed", "outcome": "ok", "detail": {}}),
                Severity::Warning,
            ),
            (
                json!({"type": "event", "event": "unseal", "outcome": "failed", "detail": {}}),
                Severity::Warning,
            ),
            (
                json!({"type": "event", "event": "unseal", "outcome": "ok", "detail": {}}),
                Severity::Informational,
            ),
            (
                json!({"type": "event", "event": "hsm_lost", "outcome": "error", "detail": {}}),
                Severity::Error,
            ),
            (
                json!({"type": "event", "event": "connection_refused", "outcome": "refused", "detail": {}}),
                Severity::Notice,
            ),
            (json!({"type": "checkpoint"}), Severity::Informational),
        ];
        for (line, want) in cases {
            assert_eq!(of_line(&line), want, "{line}");
            assert_eq!(of_fields(line.as_object().unwrap()), want, "{line}");
        }
        // Every kind and outcome a line can name is read back.
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
        }
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
        }
    }

    /// Kinds the table puts at warning whatever their outcome (apart from
    /// tampering detected, which is an alert).
    const ALWAYS_WARNING: &[EventKind] = &[
        EventKind::RegistryTampering,
        EventKind::SealTampering,
        EventKind::TamperingAcknowledged,
        EventKind::BreakGlass,
        EventKind::Restore,
        EventKind::RestoreWindowAccepted,
        EventKind::DestroyRequested,
        EventKind::DestroyApproved,
        EventKind::DestroyFullyApproved,
        EventKind::Destroyed,
    ];

    #[test]
    fn successful_events_are_routine_unless_the_table_lists_them() {
        for &k in EventKind::ALL {
            let want = if ALWAYS_WARNING.contains(&k) {
                Severity::Warning
            } else if k == EventKind::HsmLost {
                Severity::Error
            } else {
                Severity::Informational
            };
            assert_eq!(of_event(k, Outcome::Ok), want, "{}", k.as_str());
            // The line form agrees with the event form.
            let line = json!({"type": "event", "event": k.as_str(), "outcome": "ok"});
            assert_eq!(of_line(&line), want, "{}", k.as_str());
        }
        // Tampering is an alert only when detected.
        for k in [EventKind::RegistryTampering, EventKind::SealTampering] {
            assert_eq!(of_event(k, Outcome::Detected), Severity::Alert);
            assert_eq!(of_event(k, Outcome::Acknowledged), Severity::Warning);
        }
    }

    #[test]
    fn failed_ceremony_steps_are_warnings_other_failures_notices() {
        use EventKind::*;
        let ceremony = [
            Init,
            InitCommit,
            Unseal,
            UnsealShare,
            UnsealExpired,
            RekeyStart,
            RekeyShare,
            RekeyVerify,
            RekeyVerifyShare,
            RekeyCommit,
            RekeyExpired,
        ];
        for k in ceremony {
            for o in [Outcome::Refused, Outcome::Failed, Outcome::Error] {
                assert_eq!(
                    of_event(k, o),
                    Severity::Warning,
                    "{} {}",
                    k.as_str(),
                    o.as_str()
                );
            }
            assert_eq!(of_event(k, Outcome::Ok), Severity::Informational);
        }
        for k in [Rotate, Disable, MalformedRequest, Backup, PolicyReload] {
            for o in [
                Outcome::Refused,
                Outcome::Failed,
                Outcome::Error,
                Outcome::Detected,
            ] {
                assert_eq!(
                    of_event(k, o),
                    Severity::Notice,
                    "{} {}",
                    k.as_str(),
                    o.as_str()
                );
            }
            for o in [Outcome::Ok, Outcome::Granted, Outcome::Accepted] {
                assert_eq!(of_event(k, o), Severity::Informational);
            }
        }
    }

    #[test]
    fn an_alert_mark_raises_to_warning_but_never_lowers() {
        let cases = [
            // Already above warning: the mark does not lower it.
            (
                json!({"event": "hsm_lost", "outcome": "error", "ALERT": "x"}),
                Severity::Error,
            ),
            (
                json!({"event": "seal_tampering", "outcome": "detected", "detail": {"ALERT": "x"}}),
                Severity::Alert,
            ),
            // Routine or notice: raised.
            (
                json!({"event": "rotate", "outcome": "ok", "detail": {"ALERT": "x"}}),
                Severity::Warning,
            ),
            (
                json!({"op": "Decrypt", "code": "INTERNAL", "ALERT": "x"}),
                Severity::Warning,
            ),
            // A detail that is not an object carries no mark.
            (
                json!({"event": "rotate", "outcome": "ok", "detail": "ALERT"}),
                Severity::Informational,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(of_line(&line), want, "{line}");
            assert_eq!(of_fields(line.as_object().unwrap()), want, "{line}");
        }
        // RFC 5424 numbers, and lower means more severe.
        let all = [
            Severity::Alert,
            Severity::Error,
            Severity::Warning,
            Severity::Notice,
            Severity::Informational,
        ];
        assert_eq!(all.map(Severity::code), [1, 3, 4, 5, 6]);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn unknown_events_and_odd_lines_are_judged_by_what_can_be_read() {
        let cases = [
            // Another version's kind: its outcome word decides.
            (
                json!({"event": "future_thing", "outcome": "ok"}),
                Severity::Informational,
            ),
            (
                json!({"event": "future_thing", "outcome": "refused"}),
                Severity::Notice,
            ),
            (
                json!({"event": "future_thing", "outcome": "exploded"}),
                Severity::Notice,
            ),
            // An event without an outcome, or fields of the wrong type.
            (json!({"event": "unseal"}), Severity::Informational),
            (
                json!({"event": 7, "outcome": "failed"}),
                Severity::Informational,
            ),
            // Request lines: any code but OK is a notice.
            (
                json!({"op": "Encrypt", "code": "RESOURCE_EXHAUSTED"}),
                Severity::Notice,
            ),
            (
                json!({"op": "Encrypt", "code": "OK"}),
                Severity::Informational,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(of_line(&line), want, "{line}");
        }
        // Not an object at all: routine, and no panic.
        for v in [json!(null), json!("text"), json!([1, 2]), json!(3)] {
            assert_eq!(of_line(&v), Severity::Informational, "{v}");
        }
    }
}
