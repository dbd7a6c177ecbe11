//! The replay of a restore, on the restored token once logged in: the
//! token proves the backup's audit key is its own, the registry's
//! generation jumps above anything the lost host reached, and every change
//! the trail records after the backup is applied (destroyed versions lose
//! their token objects first).

use std::collections::{BTreeMap, BTreeSet};

use super::format::Header;
use super::ledger;
use super::restore::{refused, Report, Target};
use super::trail::Trail;
use super::BackupError;
use crate::audit::Audit;
use crate::core::model::{KeyRecord, KeyState, VersionState};
use crate::core::registry::Registry;
use crate::hsm::{Hsm, HsmError, REGISTRY_COUNTER_LABEL};

/// The backup's audit signing key must be the restored token's own: a
/// backup assembled by someone who read `seal.json` could carry another
/// key, under which a trail of their making would verify. The token signs a
/// random challenge with its private key (never made here: a token without
/// one fails), and the signature must verify under the backup's key.
pub(super) fn check_audit_key(hsm: &dyn Hsm, backed_up: Option<&[u8]>) -> Result<(), BackupError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let Some(text) = backed_up else {
        return Ok(());
    };
    let refuse = || {
        refused("the backup's audit signing key is not the restored token's: the backup was altered or assembled from another deployment")
    };
    let point = hex::decode(String::from_utf8_lossy(text).trim()).map_err(|_| refuse())?;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| refuse())?;
    let mut challenge = [0u8; 32];
    getrandom::fill(&mut challenge)
        .map_err(|e| BackupError::Io(format!("OS random generator: {e}")))?;
    let sig = hsm
        .sign_digest(&challenge)
        .map_err(|e| BackupError::Token(format!("the token's audit signing key: {e}")))?;
    let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|_| refuse())?;
    key.verify_prehash(&challenge, &sig).map_err(|_| refuse())
}

/// How far the restored generation jumps above the highest generation the
/// lost host is known to have reached: above anything it can have reached
/// after the trail ends (or after the backup, without a trail), so that no
/// copy of its registry passes the witnesses afterwards.
const GENERATION_JUMP: u64 = 1 << 32;

/// What the replay works on: the logged-in token, the restored registry
/// and its key, the records as backed up, and what the trail says.
pub(super) struct Replay<'a> {
    pub hsm: &'a dyn Hsm,
    pub registry: &'a Registry,
    pub rkey: &'a [u8; 32],
    /// The records as the backup holds them.
    pub backed_up: &'a [KeyRecord],
    pub target: &'a Target,
    pub header: &'a Header,
    pub trail: Option<&'a Trail>,
    /// The highest generation the lost host is known to have reached.
    pub known_generation: u64,
}

fn hsm_err(what: &str, e: HsmError) -> BackupError {
    BackupError::Token(format!("{what}: {e}"))
}

impl Replay<'_> {
    /// The replay proper, logged in: `latest` (each key's newest record
    /// after the backup) applied over the backup's. Returns the new audit
    /// log, which continues the trail's hash chain (or, without one, the
    /// backup's chain head), so a later restore can verify the old trail
    /// and the new log as one.
    pub fn run(
        &self,
        latest: BTreeMap<[u8; 16], KeyRecord>,
        report: &mut Report,
    ) -> Result<Audit, BackupError> {
        let on_token: BTreeSet<[u8; 16]> = self
            .hsm
            .list_cmks()
            .map_err(|e| hsm_err("listing the token's keys", e))?
            .into_iter()
            .map(|o| o.id.0)
            .collect();
        let audit = self.open_log()?;
        let old: BTreeMap<[u8; 16], &KeyRecord> =
            self.backed_up.iter().map(|r| (r.id, r)).collect();
        for (id, rec) in latest {
            let before = old.get(&id).copied();
            let Some(rec) =
                ledger::fit_to_token(rec, before.is_some(), &on_token, &mut report.lost)
            else {
                continue;
            };
            if before != Some(&rec) {
                self.apply(&audit, before, rec, &on_token, report)?;
            }
        }
        self.missing(&on_token, report)?;
        let generation = self.registry.generation();
        self.hsm
            .write_counter(REGISTRY_COUNTER_LABEL, generation)
            .map_err(|e| hsm_err("writing the generation counter", e))?;
        report.generation = generation;
        Ok(audit)
    }

    /// Jumps the registry's generation and opens the new log after the
    /// trail (or the backup's chain head), with the jump as its first
    /// ledger line.
    fn open_log(&self) -> Result<Audit, BackupError> {
        // The restored generation starts far above every generation the
        // lost host is known to have reached (the trail's verified lines,
        // the HSM counter's), since a forwarded trail lags the host:
        // copies of its registry, and ledger lines of the lost history,
        // rank below everything the restored deployment writes.
        let counter = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(|e| hsm_err("reading the generation counter", e))?
            .unwrap_or(0)
            .min(ledger::MAX_GENERATION);
        let base = self
            .known_generation
            .max(counter)
            .max(self.header.generation)
            .saturating_add(GENERATION_JUMP);
        self.registry
            .reseal(self.rkey, base, &[])
            .map_err(|e| BackupError::Io(format!("registry: {e}")))?;
        let resume = match (self.trail, &self.header.chain_head) {
            (Some(t), _) => Some((t.last_seq, t.last_hash.clone())),
            (None, Some(h)) => Some((h.seq, h.hash.clone())),
            (None, None) => None,
        };
        let audit =
            Audit::open_after(self.target.audit.clone(), resume).map_err(BackupError::Audit)?;
        // The jump, as a ledger line: a later acknowledgement that reads
        // this log back sees these generations accounted for.
        audit
            .record_ledger(super::fold::reseal(self.header.generation, base, self.rkey))
            .map_err(BackupError::Audit)?;
        audit.note_registry_generation(self.registry.generation());
        Ok(audit)
    }

    /// Writes one key's newer record: its destroyed versions' objects go
    /// first, then its ledger line, then the record.
    fn apply(
        &self,
        audit: &Audit,
        before: Option<&KeyRecord>,
        rec: KeyRecord,
        on_token: &BTreeSet<[u8; 16]>,
        report: &mut Report,
    ) -> Result<(), BackupError> {
        // Destroyed versions lose their token objects now, before anything
        // could serve them.
        for v in &rec.versions {
            let destroyed = v.state == VersionState::Destroyed || rec.state == KeyState::Destroyed;
            if destroyed && on_token.contains(&v.hsm_id.0) {
                match self.hsm.destroy_cmk(&v.hsm_id) {
                    Ok(()) | Err(HsmError::ObjectNotFound(_)) => report.destroyed_on_token.push(
                        format!("{}/v{} ({})", rec.name, v.version, v.hsm_id.to_hex()),
                    ),
                    Err(e) => return Err(hsm_err("destroying a destroyed key's object", e)),
                }
            }
        }
        if let Some(what) = ledger::describe_change(before, &rec) {
            report.replayed.push(what);
        }
        let next = self.registry.generation() + 1;
        audit
            .record_ledger(
                ledger::line(&rec, next, self.rkey).map_err(|e| BackupError::Io(e.to_string()))?,
            )
            .map_err(BackupError::Audit)?;
        self.registry
            .put(&rec, self.rkey, before.is_none())
            .map_err(|e| BackupError::Io(format!("registry: {e}")))?;
        audit.note_registry_generation(self.registry.generation());
        Ok(())
    }

    /// Reports what the registry now names that the token lacks.
    fn missing(
        &self,
        on_token: &BTreeSet<[u8; 16]>,
        report: &mut Report,
    ) -> Result<(), BackupError> {
        let now = self
            .registry
            .load_verified(self.rkey, None)
            .map_err(|e| BackupError::Io(format!("registry: {e}")))?;
        report.keys = now.keys.len();
        for r in &now.keys {
            for v in &r.versions {
                let usable = !matches!(v.state, VersionState::Destroyed);
                if usable && r.state != KeyState::Destroyed && !on_token.contains(&v.hsm_id.0) {
                    report.missing_on_token.push(format!(
                        "{}/v{} ({})",
                        r.name,
                        v.version,
                        v.hsm_id.to_hex()
                    ));
                }
            }
        }
        Ok(())
    }
}
