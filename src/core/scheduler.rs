//! The lifecycle scheduler's work, run every `[lifecycle] tick_secs` (in
//! a cluster, on the leader only): rotations and destructions that are due.

use tracing::warn;

use std::sync::Arc;

use super::model::{KeyRecord, KeyState};
use super::Keys;

impl Keys<'_> {
    /// The scheduler's work: rotations that are due (by period or by
    /// encryption count) and destructions that are due (unless held).
    pub fn tick(&self) {
        if self.seal.is_loading() {
            // Logged in, but the registry did not load: try again.
            self.ceremonies().retry_login();
            return;
        }
        if self.seal.phase() != crate::seal::Phase::Unsealed {
            return;
        }
        // In a cluster one node, the leader, runs the scheduled work.
        if self.membership.as_ref().is_some_and(|m| !m.is_leader()) {
            return;
        }
        let keys: Vec<Arc<KeyRecord>> = self.table().by_name.values().cloned().collect();
        let t = self.now();
        for k in keys {
            match k.state {
                KeyState::Active => {
                    let by_period = k.next_rotation_at.is_some_and(|n| n <= t);
                    let by_count = k.current().is_some_and(|v| {
                        // In a cluster every node counts only its own
                        // blocks: the record's reservations bound them all.
                        // (Less one block: the newest may be unused yet.)
                        let mut n = self.data().encryptions(&v.hsm_id);
                        if self.membership.is_some() {
                            n = n.max(v.reserved.saturating_sub(self.lifecycle.reserve_block));
                        }
                        n >= self.lifecycle.rotate_after_encryptions
                    });
                    if by_period || by_count {
                        let reason = if by_period {
                            "rotation period"
                        } else {
                            "encryption count"
                        };
                        if let Err(e) = self.rotate(&k.name, reason) {
                            warn!(key = %k.name, error = %e, "automatic rotation failed");
                        }
                    }
                }
                KeyState::PendingDestruction => {
                    let due = k.destroy_due_at.is_some_and(|d| d <= t);
                    let begun = k.destruction_started_at.is_some();
                    if begun || (due && k.active_holds().next().is_none()) {
                        if let Err(e) = self.execute_destruction(&k.name) {
                            warn!(key = %k.name, error = %e, "scheduled destruction failed; retrying at the next tick");
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
