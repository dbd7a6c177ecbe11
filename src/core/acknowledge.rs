//! Accepting a registry older than its witnesses (a restore from a disk
//! snapshot, a lost audit log, a replaced token) without undoing what the
//! log recorded.
//!
//! Every registry write was first written to the audit log as a ledger
//! line carrying the whole record under the registry's MAC
//! ([`crate::backup::ledger`]). Accepting an older registry therefore takes
//! back, for each key, the newest record the log proves: what was
//! destroyed, revoked, disabled or held since the copy was made stays so,
//! and a destroyed version's object left on a copied-back software token is
//! destroyed. One admin may accept when the log vouches for the whole gap
//! (its chain verifies under the HSM's signing key, it reaches back to the
//! registry's generation and forward to the HSM counter's). Otherwise some
//! history is unknown, and accepting needs as many distinct admins as a
//! destruction, since what it accepts may undo a destruction.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use tracing::warn;

use super::{lock, reg_err, Actor, CoreError, CoreResult, Keywarden};
use crate::audit::{EventKind, Outcome};
use crate::backup::ledger;
use crate::core::model::{KeyRecord, KeyState, VersionState};
use crate::hsm::REGISTRY_COUNTER_LABEL;

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    /// The rollback being accepted, as detected.
    pub what: String,
    /// Whether the registry was accepted (false: more admins must
    /// acknowledge).
    pub complete: bool,
    /// Distinct admins who have acknowledged this rollback so far.
    pub approvals: usize,
    pub approvals_needed: usize,
    /// Why the log cannot vouch for the whole gap (None: it can, and one
    /// admin suffices).
    pub unverified: Option<String>,
    /// Each key and version whose state the ledger took back.
    pub replayed: Vec<String>,
    /// What the ledger names that the token no longer holds.
    pub lost: Vec<String>,
}

/// The ledger's records to write back, and what they change.
struct Plan {
    records: Vec<(KeyRecord, bool)>,
    replayed: Vec<String>,
    lost: Vec<String>,
    /// The highest generation a verified ledger line carries.
    ledger_max: u64,
    unverified: Option<String>,
}

impl Keywarden {
    /// An admin's audited acceptance of a registry that a witness found
    /// older than it should be. See the module documentation.
    pub fn acknowledge_tampering(&self, actor: &Actor) -> CoreResult<Acknowledgement> {
        self.unsealed()?;
        let w = lock(&self.writes);
        let (what, rollback) = {
            let t = self.table();
            match (&t.global, &t.rollback) {
                (Some(g), Some(r)) => (g.clone(), r.clone()),
                (Some(g), None) => {
                    return Err(CoreError::Conflict(format!(
                        "the registry itself does not verify ({g}); this cannot be acknowledged: restore a good copy"
                    )))
                }
                (None, _) => {
                    return Err(CoreError::Conflict(
                        "no registry rollback or audit-log loss to acknowledge".into(),
                    ))
                }
            }
        };
        let key = self.registry_key()?;
        let counter = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(CoreError::from_hsm)?
            .unwrap_or(0);
        let audited = self
            .audit
            .as_ref()
            .map(|a| a.witnessed_registry_generation())
            .unwrap_or(0);
        let plan = self.plan_replay(&key, counter)?;
        let needed = if plan.unverified.is_some() {
            self.lifecycle.destroy_approvals.max(1)
        } else {
            1
        };
        let approvals = {
            let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
            t.acknowledged_by.insert(actor.uid);
            t.acknowledged_by.len()
        };
        let mut ack = Acknowledgement {
            what: what.clone(),
            complete: approvals >= needed,
            approvals,
            approvals_needed: needed,
            unverified: plan.unverified.clone(),
            replayed: plan.replayed.clone(),
            lost: plan.lost.clone(),
        };
        if !ack.complete {
            self.event(
                EventKind::RegistryTampering,
                Outcome::Acknowledged,
                json!({"ALERT": "REGISTRY ROLLBACK ACKNOWLEDGED, NOT YET ACCEPTED", "what": what,
                       "by_uid": actor.uid, "by": actor.principal, "approvals": approvals,
                       "approvals_needed": needed, "unverified": plan.unverified,
                       "would_replay": plan.replayed}),
            );
            return Ok(ack);
        }
        let generation = self
            .registry
            .generation()
            .max(counter)
            .max(audited)
            .max(plan.ledger_max)
            .saturating_add(1);
        self.destroy_replayed_objects(&plan.records)?;
        // The ledger first (what a later restore replays), then the
        // registry in one transaction: a crash in between leaves the
        // rollback detected, never half accepted.
        let mut seqs = Vec::new();
        if let Some(a) = &self.audit {
            for (r, _) in &plan.records {
                let seq = a
                    .record_ledger(ledger::line(r, generation, &key)?)
                    .map_err(|e| CoreError::AuditUnavailable(e.to_string()))?;
                seqs.push((r.name.clone(), seq));
            }
        }
        let refs: Vec<(&KeyRecord, bool)> = plan.records.iter().map(|(r, n)| (r, *n)).collect();
        if let Err(e) = self.registry.reseal(&key, generation, &refs) {
            if let Some(a) = &self.audit {
                for (name, seq) in &seqs {
                    let _ = a.record(ledger::failed(name, generation, *seq, &key));
                }
            }
            return Err(reg_err(e));
        }
        // Fail closed: without the counter the next load would refuse again.
        self.hsm
            .write_counter(REGISTRY_COUNTER_LABEL, generation)
            .map_err(CoreError::from_hsm)?;
        if let Some(a) = &self.audit {
            a.note_registry_generation(generation);
        }
        self.event(
            EventKind::RegistryTampering,
            Outcome::Acknowledged,
            json!({"ALERT": "REGISTRY ROLLBACK ACCEPTED", "what": what, "kind": format!("{rollback:?}"),
                   "new_generation": generation, "by_uid": actor.uid, "by": actor.principal,
                   "approvals": approvals, "unverified": plan.unverified,
                   "replayed": plan.replayed, "lost": plan.lost}),
        );
        drop(w);
        self.load_table()?;
        if let Err(e) = self.reconcile() {
            warn!(error = %e, "reconciliation failed");
        }
        ack.complete = true;
        Ok(ack)
    }

    /// Reads the log back and decides, key by key, which ledger record is
    /// newer than the registry's (by the generation each was written at).
    fn plan_replay(&self, key: &[u8; 32], counter: u64) -> CoreResult<Plan> {
        let loaded = self.registry.load_verified(key, None).map_err(reg_err)?;
        let mut unverified: Vec<String> = Vec::new();
        if self.membership.is_some() {
            unverified.push(
                "a cluster node's log holds only its own writes, not the other nodes'".into(),
            );
        }
        let lines = match &self.audit {
            None => {
                unverified.push("no audit log is attached".into());
                Vec::new()
            }
            Some(audit) => {
                let point = self.hsm.ensure_signing_key().map_err(CoreError::from_hsm)?;
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|e| {
                    CoreError::Internal(format!("the HSM's audit signing key: {e}"))
                })?;
                let scan = audit
                    .scan_ledger(&vk)
                    .map_err(|e| CoreError::AuditUnavailable(e.to_string()))?;
                if let Err(b) = &scan.chain {
                    unverified.push(format!("the audit log does not verify ({b})"));
                }
                if !scan.from_genesis && scan.first_generation > loaded.generation {
                    unverified.push(format!(
                        "the oldest audit file on disk begins at registry generation {}, after this registry's {}: earlier files were removed",
                        scan.first_generation, loaded.generation
                    ));
                }
                let (good, bad) = ledger::partition_verified(scan.lines, key);
                if let Some(e) = bad.first() {
                    unverified.push(format!(
                        "{} ledger line(s) do not verify, the first: {e}",
                        bad.len()
                    ));
                }
                good
            }
        };
        let latest = ledger::latest(&lines, key, 0)
            .map_err(|e| CoreError::Internal(format!("a verified ledger line: {e}")))?;
        let ledger_max = latest.values().map(|e| e.generation).max().unwrap_or(0);
        let reached = ledger_max.max(loaded.generation);
        if counter > reached {
            unverified.push(format!(
                "the HSM counter has seen generation {counter}, the newest write the log proves is {reached}"
            ));
        }
        let on_token: BTreeSet<[u8; 16]> = self
            .hsm
            .list_cmks()
            .map_err(CoreError::from_hsm)?
            .into_iter()
            .map(|o| o.id.0)
            .collect();
        let tampered: BTreeSet<&str> = loaded.tampered.iter().map(|(n, _)| n.as_str()).collect();
        let current: BTreeMap<[u8; 16], &KeyRecord> =
            loaded.keys.iter().map(|r| (r.id, r)).collect();
        let mut plan = Plan {
            records: Vec::new(),
            replayed: Vec::new(),
            lost: Vec::new(),
            ledger_max,
            unverified: None,
        };
        for (id, entry) in latest {
            if tampered.contains(entry.record.name.as_str()) {
                // Its row fails its own MAC: it stays refused either way.
                continue;
            }
            let before = current.get(&id).copied();
            if let Some(b) = before {
                let written_at = self.registry.record_generation(&id).unwrap_or(0);
                if entry.generation <= written_at || entry.record == *b {
                    continue;
                }
            }
            let Some(rec) =
                ledger::fit_to_token(entry.record, before.is_some(), &on_token, &mut plan.lost)
            else {
                continue;
            };
            if before == Some(&rec) {
                continue;
            }
            if let Some(what) = ledger::describe_change(before, &rec) {
                plan.replayed.push(what);
            }
            plan.records.push((rec, before.is_none()));
        }
        if !unverified.is_empty() {
            plan.unverified = Some(unverified.join("; "));
        }
        Ok(plan)
    }

    /// A destroyed key's or version's object that a copied-back software
    /// token brought back is destroyed before anything could serve it.
    fn destroy_replayed_objects(&self, records: &[(KeyRecord, bool)]) -> CoreResult<()> {
        for (r, _) in records {
            for v in &r.versions {
                if v.state == VersionState::Destroyed || r.state == KeyState::Destroyed {
                    match self.hsm.destroy_cmk(&v.hsm_id) {
                        Ok(()) | Err(crate::hsm::HsmError::ObjectNotFound(_)) => {}
                        Err(e) => return Err(CoreError::from_hsm(e)),
                    }
                }
            }
        }
        Ok(())
    }
}
