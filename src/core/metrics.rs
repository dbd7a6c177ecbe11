//! What a metrics scrape reads from the core: the seal's phase, keys by
//! state and kind, encryption counts against their limits, subscribers.

use super::*;
use crate::metrics::Snapshot;

impl Keywarden {
    /// The state part of a scrape. With `per_key`, one series per key
    /// version (key names in labels); otherwise only the highest share of
    /// the hard limit any version has used.
    pub fn metrics_snapshot(&self, per_key: bool) -> Snapshot {
        let phase = self.seal.phase();
        // The table's lock is not held while the counters are read: a
        // reservation takes the counters, then writes the table.
        let (records, tampering): (Vec<Arc<KeyRecord>>, u64) = {
            let t = self.table();
            (
                t.by_name.values().cloned().collect(),
                t.tampered.len() as u64 + u64::from(t.global.is_some()),
            )
        };
        let mut snap = Snapshot {
            seal_phase: match phase {
                crate::seal::Phase::Uninitialized => "uninitialized",
                crate::seal::Phase::Sealed => "sealed",
                crate::seal::Phase::Unsealed => "unsealed",
            },
            hsm_up: self.hsm.health().is_ok(),
            hsm_lost: self.hsm.lost().is_some(),
            audit_up: self.audit.health().is_ok(),
            forward: self.audit.forward_status(),
            audit_disk: self.audit.disk_space(),
            watch_subscribers: self.changes.receiver_count() as u64,
            registry_generation: self.registry.generation(),
            tampering: tampering + u64::from(self.seal.status().tampered.is_some()),
            ..Snapshot::default()
        };
        let limit = self.lifecycle.hard_limit_encryptions.max(1);
        for r in &records {
            *snap
                .keys
                .entry((r.state.as_str().to_string(), r.kind.as_str().to_string()))
                .or_default() += 1;
            for v in &r.versions {
                if !matches!(v.state, VersionState::Active | VersionState::Deactivated) {
                    continue;
                }
                let used = self.data().encryptions(&v.hsm_id);
                // Only the version that encrypts can reach its limit; a
                // deactivated one only decrypts (the alert asks to rotate,
                // and must stop once rotated).
                let share = used as f64 / limit as f64;
                if v.state == VersionState::Active && share > snap.max_encryption_fraction {
                    snap.max_encryption_fraction = share;
                }
                if per_key {
                    snap.encryptions.push((
                        r.name.clone(),
                        v.version,
                        used,
                        self.lifecycle.rotate_after_encryptions,
                        self.lifecycle.hard_limit_encryptions,
                    ));
                }
            }
        }
        snap.encryptions.sort();
        snap
    }
}
