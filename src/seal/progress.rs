//! Shares being collected toward a threshold (unseal and rekey).

use super::*;

/// Shares being collected toward a threshold.
pub(super) struct Progress {
    pub(super) set_id: [u8; 4],
    pub(super) threshold: u8,
    /// When the first share came, on the seal's monotonic clock.
    pub(super) started: Duration,
    pub(super) shares: Vec<ShareBytes>,
}

impl Progress {
    /// Checks a parsed share against this progress (set, threshold,
    /// duplicate) and adds it; every refusal and acceptance is an audit
    /// event (`event`) naming the rekey. Returns (received, threshold).
    pub(super) fn accept(
        &mut self,
        parsed: share::Share,
        event: EventKind,
        rekey_id: &str,
        notes: &Pending,
    ) -> SealResult<(usize, u8)> {
        let set_id = hex::encode(self.set_id);
        let refuse = |reason: &str| {
            notes.push(Event::new(
                event,
                Outcome::Refused,
                json!({"rekey_id": rekey_id, "reason": reason}),
            ));
        };
        if parsed.set_id != self.set_id {
            refuse("other share set");
            return Err(SealError::WrongSet {
                got: hex::encode(parsed.set_id),
                want: set_id,
            });
        }
        if parsed.threshold != self.threshold {
            refuse("threshold mismatch");
            return Err(SealError::WrongThreshold {
                got: parsed.threshold,
                want: self.threshold,
                set_id,
            });
        }
        if self.shares.iter().any(|s| s.index == parsed.bytes.index) {
            refuse("duplicate");
            return Err(SealError::Duplicate {
                index: parsed.bytes.index,
                received: self.shares.len(),
                threshold: self.threshold,
            });
        }
        self.shares.push(parsed.bytes);
        let received = self.shares.len();
        notes.push(Event::new(
            event,
            Outcome::Accepted,
            json!({"rekey_id": rekey_id, "received": received, "threshold": self.threshold}),
        ));
        Ok((received, self.threshold))
    }

    pub(super) fn new(set_id: [u8; 4], threshold: u8, started: Duration) -> Self {
        Progress {
            started,
            set_id,
            threshold,
            shares: Vec::new(),
        }
    }
}
