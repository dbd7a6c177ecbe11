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
    /// event (`event`) carrying `tag` (the rekey's id, or the unseal's share
    /// set). Returns (received, threshold).
    pub(super) fn accept(
        &mut self,
        parsed: share::Share,
        event: EventKind,
        tag: (&'static str, &str),
        notes: &Pending,
    ) -> SealResult<(usize, u8)> {
        let set_id = hex::encode(self.set_id);
        let index = parsed.bytes.index;
        let refuse = |reason: &str| {
            notes.push(Event::new(
                event,
                Outcome::Refused,
                json!({tag.0: tag.1, "reason": reason, "index": index}),
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
            json!({tag.0: tag.1, "received": received, "threshold": self.threshold}),
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
