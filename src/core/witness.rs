//! Rollback detection: the registry's generation against the witnesses that
//! were not stored with it.
//!
//! Two witnesses record how far the registry has come: the counter object
//! in the HSM (written after every registry change) and the audit log (every
//! line carries the highest generation the daemon knew). A registry behind
//! either is an older copy; a registry with history and no counter means the
//! counter was deleted or the token replaced; a registry with history and a
//! log that never saw a generation means the log was deleted or replaced.
//! A registry *ahead* of a witness is normal after a crash between the
//! registry commit and the witness update, and is caught up.
//!
//! What this cannot catch: a consistent rollback of the registry, the token
//! and the audit log together (all three in one state directory with a
//! software token). Only a witness off the host (a forwarded copy of the
//! audit trail) or a hardware HSM's counter, which the attacker cannot copy
//! back, stops that.

/// What a witness says about the registry being loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// The registry has history but the HSM holds no generation counter.
    CounterMissing {
        /// The registry's generation.
        registry: u64,
    },
    /// The HSM counter has seen a later generation.
    OlderThanCounter {
        /// The registry's generation.
        registry: u64,
        /// The generation the HSM counter holds.
        counter: u64,
    },
    /// The audit log has recorded a later generation.
    OlderThanAudit {
        /// The registry's generation.
        registry: u64,
        /// The highest generation the audit log recorded.
        audit: u64,
    },
    /// The registry has history the audit log never recorded.
    AuditHasNoHistory {
        /// The registry's generation.
        registry: u64,
    },
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rollback::CounterMissing { registry } => write!(
                f,
                "the HSM's registry generation counter is missing although the registry is at generation {registry}: the counter object was deleted or the token replaced"
            ),
            Rollback::OlderThanCounter { registry, counter } => write!(
                f,
                "an older copy of the registry was restored (generation {registry}, the HSM has seen {counter})"
            ),
            Rollback::OlderThanAudit { registry, audit } => write!(
                f,
                "an older copy of the registry was restored (generation {registry}, the audit log has recorded {audit})"
            ),
            Rollback::AuditHasNoHistory { registry } => write!(
                f,
                "the audit log holds no record of the registry's history (generation {registry}): the log was deleted or replaced"
            ),
        }
    }
}

/// Checks a registry generation against the HSM counter (None: no counter
/// object) and the audit log's record (None: no audit log attached).
pub fn check(registry: u64, counter: Option<u64>, audit: Option<u64>) -> Option<Rollback> {
    match counter {
        None if registry > 0 => return Some(Rollback::CounterMissing { registry }),
        Some(c) if registry < c => {
            return Some(Rollback::OlderThanCounter {
                registry,
                counter: c,
            })
        }
        _ => {}
    }
    match audit {
        Some(a) if registry < a => Some(Rollback::OlderThanAudit { registry, audit: a }),
        Some(0) if registry > 0 => Some(Rollback::AuditHasNoHistory { registry }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Rollback::*;
        type Case = (u64, Option<u64>, Option<u64>, Option<Rollback>);
        let cases: &[Case] = &[
            // A fresh install: nothing anywhere.
            (0, None, Some(0), None),
            (0, Some(0), Some(0), None),
            // In step, or the registry ahead after a crash.
            (7, Some(7), Some(7), None),
            (8, Some(7), Some(7), None),
            (8, Some(7), None, None),
            // The counter deleted (SoftHSM's .object file removed).
            (7, None, Some(7), Some(CounterMissing { registry: 7 })),
            (7, None, None, Some(CounterMissing { registry: 7 })),
            // An older registry with the current counter.
            (
                5,
                Some(7),
                Some(7),
                Some(OlderThanCounter {
                    registry: 5,
                    counter: 7,
                }),
            ),
            // An older registry with an older counter file copied back too.
            (
                5,
                Some(5),
                Some(7),
                Some(OlderThanAudit {
                    registry: 5,
                    audit: 7,
                }),
            ),
            // The audit log deleted: a new chain with no history.
            (7, Some(7), Some(0), Some(AuditHasNoHistory { registry: 7 })),
            // An emptied registry against a live counter.
            (
                0,
                Some(3),
                Some(3),
                Some(OlderThanCounter {
                    registry: 0,
                    counter: 3,
                }),
            ),
        ];
        for (reg, counter, audit, want) in cases {
            assert_eq!(
                &check(*reg, *counter, *audit),
                want,
                "{reg} {counter:?} {audit:?}"
            );
        }
    }
}
