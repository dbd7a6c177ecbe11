//! What Status reports, and the audit log's form of a context.

use super::*;
use crate::sync::RecoverRw;

/// Differences between the registry and the token found at unseal.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    /// Versions the registry records that the token lacks
    /// (`NAME/vN (id)`): they cannot be used.
    pub missing_on_token: Vec<String>,
    /// Keywarden objects on the token the registry does not record and
    /// that were left alone (`label (id)`).
    pub orphaned_on_token: Vec<String>,
    /// What reconciliation repaired (orphans destroyed).
    pub repaired: Vec<String>,
}

/// What Status reports: the daemon, the HSM, the seal and the registry,
/// as the core sees them now.
pub struct Status {
    /// The daemon's version ([`crate::VERSION`]).
    pub version: &'static str,
    /// The HSM's health check: `Ok` or why it failed.
    pub hsm_health: Result<(), crate::hsm::HsmError>,
    /// The selected token.
    pub token: TokenDescription,
    /// The HSM profile in use.
    pub profile: String,
    /// Whether session copies of CMK versions are in use.
    pub session_copies: bool,
    /// The number of HSM worker sessions.
    pub pool_size: usize,
    /// Keys in the verified table, destroyed ones included (tampered ones
    /// are in `tampering`).
    pub key_count: u32,
    /// What the last reconciliation found.
    pub drift: Drift,
    /// When the daemon started, in Unix seconds.
    pub started_at: i64,
    /// The seal's state.
    pub seal: SealStatus,
    /// Integrity problems, each (what failed: a key's name, `registry` or
    /// `seal`; what is wrong).
    pub tampering: Vec<(String, String)>,
    /// Keys that need a person soon.
    pub attention: Vec<KeyAttention>,
}

/// Why a key needs attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionReason {
    /// The active version has made at least `rotate_after_encryptions`
    /// encryptions: rotate before the hard limit refuses them.
    EncryptionLimit {
        /// Encryptions counted under the version.
        used: u64,
        /// The limit past which they are refused.
        hard_limit: u64,
    },
    /// A scheduled destruction runs at this time (unless held or cancelled).
    DestructionDue {
        /// When, in Unix seconds.
        at: i64,
    },
}

/// A key that needs a person soon, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttention {
    /// The key.
    pub key: String,
    /// The version concerned; 0 when it is the whole key (a destruction).
    pub version: u32,
    /// Why.
    pub reason: AttentionReason,
}

impl Keywarden {
    /// Where the seal stands: unsealed only when open for key operations.
    pub fn phase(&self) -> crate::seal::Phase {
        self.seal.phase()
    }
    /// Everything Status reports, read now. Never fails: an unhealthy HSM
    /// is reported in `hsm_health`.
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
