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
//! destroyed. One admin may accept when the log vouches for the whole gap:
//! its chain verifies under the HSM's signing key, and a verified line
//! accounts for every generation from the registry's own up to the highest
//! a witness has seen (the HSM counter must exist), so no line was cut
//! ([`crate::backup::fold`]). Otherwise some history is unknown, and
//! accepting needs as many distinct admins as a destruction, since what it
//! accepts may undo a destruction. Approvals count for one plan: if what
//! would be accepted changes between two admins' calls, counting starts
//! again.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use tracing::warn;

use sha2::{Digest, Sha256};

use super::registry::RowKind;
use super::{reg_err, Actor, CoreError, CoreResult, Keywarden};
use crate::audit::{EventKind, Outcome};
use crate::backup::fold::{self, Fold};
use crate::backup::ledger;
use crate::core::model::{KeyRecord, KeyState, VersionState};
use crate::hsm::REGISTRY_COUNTER_LABEL;
use crate::sync::{Recover, RecoverRw};

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
    /// Distinct admins needed: one when the log vouches for the whole gap,
    /// otherwise as many as a destruction needs.
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
    records: Vec<(KeyRecord, RowKind)>,
    replayed: Vec<String>,
    lost: Vec<String>,
    /// The highest generation a verified ledger line carries.
    ledger_max: u64,
    unverified: Option<String>,
}

impl Plan {
    /// What two admins' calls must agree on to count together.
    fn digest(&self, what: &str, registry: u64, counter: u64, audited: u64) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"keywarden/v1/acknowledgement-plan\0");
        h.update(what.as_bytes());
        for n in [registry, counter, audited, self.ledger_max] {
            h.update(n.to_be_bytes());
        }
        h.update(self.unverified.as_deref().unwrap_or("").as_bytes());
        for (r, kind) in &self.records {
            h.update([*kind as u8]);
            h.update(serde_json::to_string(r).unwrap_or_default().as_bytes());
        }
        h.finalize().into()
    }
}

impl Keywarden {
    /// The rollback the table holds, which an acknowledgement may accept;
    /// refused if the registry itself does not verify, or if there is none.
    fn rollback_to_acknowledge(&self) -> CoreResult<(String, super::witness::Rollback)> {
        let t = self.table();
        match (&t.global, &t.rollback) {
            (Some(g), Some(r)) => Ok((g.clone(), r.clone())),
            (Some(g), None) => Err(CoreError::Conflict(format!(
                "the registry itself does not verify ({g}); this cannot be acknowledged: restore a good copy"
            ))),
            (None, _) => Err(CoreError::Conflict(
                "no registry rollback or audit-log loss to acknowledge".into(),
            )),
        }
    }

    /// Counts `uid`'s approval of the plan digested as `digest` (a new plan
    /// starts the count again); returns the approvals so far.
    fn approve(&self, digest: [u8; 32], uid: u32) -> usize {
        let mut t = self.table.write_locked();
        if t.acknowledged.as_ref().is_none_or(|(d, _)| *d != digest) {
            t.acknowledged = Some((digest, Default::default()));
        }
        match &mut t.acknowledged {
            Some((_, uids)) => {
                uids.insert(uid);
                uids.len()
            }
            None => 1,
        }
    }

    /// An admin's audited acceptance of a registry that a witness found
    /// older than it should be. See the module documentation.
    pub fn acknowledge_tampering(&self, actor: &Actor) -> CoreResult<Acknowledgement> {
        self.unsealed()?;
        let w = self.writes.locked();
        let (what, rollback) = self.rollback_to_acknowledge()?;
        let key = self.records().registry_key()?;
        // No generation comes near MAX_GENERATION: a counter claiming more
        // is held to it (the arithmetic stays far from overflow).
        let counter = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(CoreError::from_hsm)?
            .map(|c| c.min(ledger::MAX_GENERATION));
        let audited = self
            .audit
            .witnessed_registry_generation()
            .min(ledger::MAX_GENERATION);
        let plan = self.plan_replay(&key, counter, audited)?;
        let counter = counter.unwrap_or(0);
        let needed = if plan.unverified.is_some() {
            self.lifecycle.destroy_approvals.max(1)
        } else {
            1
        };
        // Approvals count for this plan only: what would be accepted (the
        // rollback, the records, why the log cannot vouch) hashed.
        let digest = plan.digest(&what, self.registry.generation(), counter, audited);
        let approvals = self.approve(digest, actor.uid);
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
        let from = self.registry.generation();
        let generation = from
            .max(counter)
            .max(audited)
            .max(plan.ledger_max)
            .saturating_add(1);
        self.destroy_replayed_objects(&plan.records)?;
        // The ledger first (what a later restore or acknowledgement reads
        // back: the jump, then each record), then the registry in one
        // transaction: a crash in between leaves the rollback detected,
        // never half accepted.
        let mut seqs = Vec::new();
        {
            let a = &self.audit;
            a.record_ledger(fold::reseal(from, generation, &key))
                .map_err(|e| CoreError::AuditUnavailable(e.to_string()))?;
            for (r, _) in &plan.records {
                let seq = a
                    .record_ledger(ledger::line(r, generation, &key)?)
                    .map_err(|e| CoreError::AuditUnavailable(e.to_string()))?;
                seqs.push((r.name.clone(), seq));
            }
        }
        let refs: Vec<(&KeyRecord, RowKind)> = plan.records.iter().map(|(r, k)| (r, *k)).collect();
        if let Err(e) = self.registry.reseal(&key, generation, &refs) {
            for (name, seq) in &seqs {
                let _ = self
                    .audit
                    .record(ledger::failed(name, generation, *seq, &key));
            }
            return Err(reg_err(e));
        }
        // Fail closed: without the counter the next load would refuse again.
        self.hsm
            .write_counter(REGISTRY_COUNTER_LABEL, generation)
            .map_err(CoreError::from_hsm)?;
        self.audit.note_registry_generation(generation);
        self.event(
            EventKind::RegistryTampering,
            Outcome::Acknowledged,
            json!({"ALERT": "REGISTRY ROLLBACK ACCEPTED", "what": what, "kind": format!("{rollback:?}"),
                   "new_generation": generation, "by_uid": actor.uid, "by": actor.principal,
                   "approvals": approvals, "unverified": plan.unverified,
                   "replayed": plan.replayed, "lost": plan.lost}),
        );
        drop(w);
        self.records().load_table()?;
        if let Err(e) = self.reconcile() {
            warn!(error = %e, "reconciliation failed");
        }
        ack.complete = true;
        Ok(ack)
    }

    /// Reads the log back and decides, key by key, which ledger record is
    /// newer than the registry's (by the generation each was written at).
    fn plan_replay(&self, key: &[u8; 32], counter: Option<u64>, audited: u64) -> CoreResult<Plan> {
        let loaded = self.registry.load_verified(key, None).map_err(reg_err)?;
        let mut unverified: Vec<String> = Vec::new();
        if self.membership.is_some() {
            unverified.push(
                "a cluster node's log holds only its own writes, not the other nodes'".into(),
            );
        }
        if counter.is_none() {
            unverified.push(
                "the HSM holds no registry generation counter: nothing off the disk says how far the registry had come".into(),
            );
        }
        let mut fold = Fold::new(key, loaded.generation);
        match self.audit.files() {
            None => {
                unverified.push("the audit log is not kept in files: nothing to read back".into())
            }
            Some(files) => {
                let files = files.map_err(|e| CoreError::AuditUnavailable(e.to_string()))?;
                self.read_log(&files, &mut fold, &mut unverified)?
            }
        }
        let witness = counter.unwrap_or(0).max(audited);
        if let Some(g) = fold.first_gap(witness) {
            unverified.push(format!(
                "the audit log accounts for no write at registry generation {g} (this registry is at {}, the witnesses have seen {witness}): a line was cut, or the log does not reach back that far",
                loaded.generation
            ));
        }
        let ledger_max = fold.max_generation();
        let on_token: BTreeSet<[u8; 16]> = self
            .hsm
            .list_cmks()
            .map_err(CoreError::from_hsm)?
            .into_iter()
            .map(|o| o.id.0)
            .collect();
        let current: BTreeMap<[u8; 16], &KeyRecord> =
            loaded.keys.iter().map(|r| (r.id, r)).collect();
        let mut plan = Plan {
            records: Vec::new(),
            replayed: Vec::new(),
            lost: Vec::new(),
            ledger_max,
            unverified: None,
        };
        for (id, entry) in fold.into_latest() {
            // Where the manifest lists the key, the generation its row was
            // written at; a row that failed its MAC or was deleted is
            // written over if the ledger knows better.
            let listed = self.registry.record_generation(&id);
            let before = current.get(&id).copied();
            if listed.is_some_and(|g| entry.generation <= g) {
                continue;
            }
            if before == Some(&entry.record) {
                continue;
            }
            let (kind, known) = match (before, listed) {
                (Some(_), _) => (RowKind::Update, true),
                (None, Some(_)) => (RowKind::Replace, true),
                (None, None) => (RowKind::New, false),
            };
            let Some(rec) = ledger::fit_to_token(entry.record, known, &on_token, &mut plan.lost)
            else {
                continue;
            };
            if before == Some(&rec) {
                continue;
            }
            let what = match (before, listed) {
                (None, Some(_)) => Some(format!(
                    "{}: its row failed its integrity check; the audit log's record ({}) was written over it",
                    rec.name,
                    rec.state.as_str()
                )),
                _ => ledger::describe_change(before, &rec),
            };
            plan.replayed.extend(what);
            plan.records.push((rec, kind));
        }
        if !unverified.is_empty() {
            plan.unverified = Some(unverified.join("; "));
        }
        Ok(plan)
    }

    /// Reads the log twice (void lines, then writes and reseals) into
    /// `fold`, the chain verified under the HSM's signing key each time; the
    /// second pass stops at the last line the first one read.
    fn read_log(
        &self,
        files: &[std::path::PathBuf],
        fold: &mut Fold<'_>,
        unverified: &mut Vec<String>,
    ) -> CoreResult<()> {
        use crate::audit::scan;
        let point = self.hsm.ensure_signing_key().map_err(CoreError::from_hsm)?;
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .map_err(|e| CoreError::Internal(format!("the HSM's audit signing key: {e}")))?;
        let unreadable = |e: &dyn std::fmt::Display| CoreError::AuditUnavailable(e.to_string());
        let first = scan::scan(files, &vk, None, fold::is_ledger, |seq, l| {
            fold.first_pass(seq, l)
        })
        .map_err(|e| unreadable(&e))?;
        if let Err(b) = &first.chain {
            unverified.push(format!("the audit log does not verify ({b})"));
        }
        scan::scan(files, &vk, first.last_seq, fold::is_ledger, |seq, l| {
            fold.second_pass(seq, l)
        })
        .map_err(|e| unreadable(&e))?;
        if let Some(e) = fold.refused.first() {
            unverified.push(format!(
                "{} ledger line(s) do not verify, the first: {e}",
                fold.refused_count
            ));
        }
        Ok(())
    }

    /// A destroyed key's or version's object that a copied-back software
    /// token brought back is destroyed before anything could serve it.
    fn destroy_replayed_objects(&self, records: &[(KeyRecord, RowKind)]) -> CoreResult<()> {
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
