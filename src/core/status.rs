//! What Status reports, and the audit log's form of a context.

use super::*;
use crate::sync::RecoverRw;

/// Differences between the registry and the token found at unseal.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    pub missing_on_token: Vec<String>,
    pub orphaned_on_token: Vec<String>,
    /// What reconciliation repaired (orphans destroyed).
    pub repaired: Vec<String>,
}

pub struct Status {
    pub version: &'static str,
    pub hsm_health: Result<(), crate::hsm::HsmError>,
    pub token: TokenDescription,
    pub profile: String,
    pub session_copies: bool,
    pub pool_size: usize,
    pub key_count: u32,
    pub drift: Drift,
    pub started_at: i64,
    pub seal: SealStatus,
    /// Registry integrity problems: (key or "registry", what).
    pub tampering: Vec<(String, String)>,
    /// Keys that need a person soon.
    pub attention: Vec<KeyAttention>,
}

/// Why a key needs attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionReason {
    /// The active version has made at least `rotate_after_encryptions`
    /// encryptions: rotate before the hard limit refuses them.
    EncryptionLimit { used: u64, hard_limit: u64 },
    /// A scheduled destruction runs at this time (unless held or cancelled).
    DestructionDue { at: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttention {
    pub key: String,
    pub version: u32,
    pub reason: AttentionReason,
}

impl Keywarden {
    pub fn phase(&self) -> crate::seal::Phase {
        self.seal.phase()
    }
    pub fn status(&self) -> Status {
        let hsm_health = self.hsm.health();
        let t = self.table();
        let mut tampering: Vec<(String, String)> = t
            .tampered
            .iter()
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        if let Some(g) = &t.global {
            tampering.insert(0, ("registry".into(), g.clone()));
        }
        let records: Vec<Arc<KeyRecord>> = t.by_name.values().cloned().collect();
        let key_count = t.by_name.len() as u32;
        // The table's lock is released before the counters are read (a
        // reservation takes the counters, then writes the table).
        drop(t);
        let seal = self.seal.status();
        if let Some(what) = &seal.tampered {
            tampering.insert(0, ("seal".into(), what.clone()));
        }
        let attention = self.attention(&records);
        Status {
            version: crate::VERSION,
            hsm_health,
            token: self.hsm.token().clone(),
            profile: self.hsm.profile_name().to_string(),
            session_copies: self.hsm.session_copies(),
            pool_size: self.hsm.pool_size(),
            key_count,
            drift: self.drift.read_locked().clone(),
            started_at: self.started_at,
            // Unsealed only once open for keys (the seal's state says so).
            seal,
            tampering,
            attention,
        }
    }

    /// Keys near their encryption limit, and destructions scheduled.
    fn attention(&self, records: &[Arc<KeyRecord>]) -> Vec<KeyAttention> {
        let mut out = Vec::new();
        for r in records {
            if let Some(at) = r.destroy_due_at {
                // A hold pauses the destruction: not due while it stands.
                if r.state != KeyState::Destroyed && r.active_holds().next().is_none() {
                    out.push(KeyAttention {
                        key: r.name.clone(),
                        version: 0,
                        reason: AttentionReason::DestructionDue { at },
                    });
                }
            }
            for v in &r.versions {
                if v.state != VersionState::Active {
                    continue;
                }
                let used = self.data().encryptions(&v.hsm_id);
                if used >= self.lifecycle.rotate_after_encryptions {
                    out.push(KeyAttention {
                        key: r.name.clone(),
                        version: v.version,
                        reason: AttentionReason::EncryptionLimit {
                            used,
                            hard_limit: self.lifecycle.hard_limit_encryptions,
                        },
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key).then(a.version.cmp(&b.version)));
        out
    }
    /// The encryption context for the audit log: each value replaced by
    /// HMAC-SHA256 under the keyring's audit key (first 16 bytes, hex), so
    /// equal values correlate but never appear. Sealed: values omitted.
    /// The audit layer holds the key (set at unseal), so this takes no seal
    /// lock on the data path.
    pub fn context_digest(
        &self,
        context: &HashMap<String, String>,
    ) -> serde_json::Map<String, serde_json::Value> {
        self.audit.context_digest(context)
    }
}
