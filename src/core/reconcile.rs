//! Reconciliation at unseal: the registry against the token's objects,
//! creation intents finished or undone, orphans destroyed.

use super::*;
use crate::sync::{Recover, RecoverRw};

impl Keywarden {
    /// Compares the registry with the token; activates every usable version
    /// that is present; destroys orphans (Keywarden objects the registry
    /// never recorded: an interrupted create or rotate, which never wrapped
    /// anything); records what it found and what it repaired.
    pub fn reconcile(&self) -> CoreResult<Drift> {
        let _w = self.writes.locked();
        let on_token = self.hsm.list_cmks().map_err(CoreError::from_hsm)?;
        let keys: Vec<Arc<KeyRecord>> = self.table().by_name.values().cloned().collect();
        let mut known: HashMap<HsmKeyId, String> = HashMap::new();
        let mut drift = Drift::default();
        let present: std::collections::HashSet<HsmKeyId> = on_token.iter().map(|o| o.id).collect();
        for k in &keys {
            for v in &k.versions {
                let what = format!("{}/v{} ({})", k.name, v.version, v.hsm_id);
                known.insert(v.hsm_id, what.clone());
                // Destroyed versions, and versions of a key whose destruction
                // was interrupted (the next tick finishes it), may be gone.
                if v.state == VersionState::Destroyed || k.state == KeyState::PendingDestruction {
                    continue;
                }
                if !present.contains(&v.hsm_id) {
                    warn!(key = %k.name, version = v.version, "CMK version recorded in the registry is missing from the token");
                    drift.missing_on_token.push(what);
                } else if matches!(v.state, VersionState::Active | VersionState::Deactivated) {
                    if let Err(e) = self.hsm.activate(&v.hsm_id) {
                        warn!(key = %k.name, version = v.version, error = %e, "could not activate CMK version");
                    }
                }
            }
        }
        let registry_ok = self.table().global.is_none();
        let reg_key = self.records().registry_key().ok();
        // Intents whose object was recorded after all (a crash between the
        // record and clearing the intent) are done.
        for id in self.registry.intent_ids().unwrap_or_default() {
            if known.contains_key(&HsmKeyId(id)) {
                self.intent_done(&HsmKeyId(id));
            }
        }
        for o in &on_token {
            if known.contains_key(&o.id) {
                continue;
            }
            {
                // Only an object with a verified creation intent (an
                // interrupted create or rotate that never wrapped anything)
                // is destroyed, and only with a verified registry. Anything
                // else is reported, never touched: it may be a real key
                // (a registry restored from an older copy, a deleted row).
                // In a cluster the object may be another node's create in
                // progress: reported, never destroyed.
                let shared = self.membership.as_ref().is_some_and(|m| m.shared_token());
                let intended = !shared
                    && reg_key.as_ref().is_some_and(|k| {
                        self.registry
                            .has_intent(k, &o.id.0, &o.label)
                            .unwrap_or(false)
                    });
                if registry_ok && self.table().tampered.is_empty() && intended {
                    match self.hsm.destroy_cmk(&o.id) {
                        Ok(()) => {
                            warn!(label = %o.label, id = %o.id, "destroyed an orphan CMK object (an interrupted create or rotate)");
                            self.event(
                                EventKind::ReconcileRepair,
                                Outcome::OrphanDestroyed,
                                serde_json::json!({"label": o.label, "id": o.id.to_hex()}),
                            );
                            drift
                                .repaired
                                .push(format!("destroyed orphan {} ({})", o.label, o.id));
                            self.intent_done(&o.id);
                            continue;
                        }
                        Err(e) => {
                            warn!(label = %o.label, error = %e, "could not destroy an orphan")
                        }
                    }
                }
                warn!(label = %o.label, id = %o.id, "Keywarden object on the token is not in the registry");
                drift
                    .orphaned_on_token
                    .push(format!("{} ({})", o.label, o.id));
            }
        }
        info!(
            keys = keys.len(),
            token_objects = on_token.len(),
            missing = drift.missing_on_token.len(),
            orphaned = drift.orphaned_on_token.len(),
            "reconciled registry with token"
        );
        *self.drift.write_locked() = drift.clone();
        Ok(drift)
    }
    /// Lists drift-relevant token objects and creates a new CMK version in
    /// the HSM (label `keywarden:NAME/vN`), returning its id.
    pub(crate) fn new_hsm_version(
        &self,
        name: &str,
        version: u32,
        kind: crate::hsm::KeyKind,
    ) -> CoreResult<HsmKeyId> {
        let mut hsm_id = [0u8; 16];
        self.hsm.random(&mut hsm_id).map_err(CoreError::from_hsm)?;
        let hsm_id = HsmKeyId(hsm_id);
        let label = format!("{LABEL_PREFIX}{name}/v{version}");
        // Intent first: a crash after the object exists but before its
        // record is written leaves an orphan that reconciliation may destroy.
        let key = self.records().registry_key()?;
        self.registry
            .put_intent(&key, &hsm_id.0, &label)
            .map_err(reg_err)?;
        self.hsm
            .generate_cmk(&hsm_id, &label, kind)
            .map_err(CoreError::from_hsm)?;
        Ok(hsm_id)
    }
    /// The record now names the object: the intent is done.
    pub(crate) fn intent_done(&self, hsm_id: &HsmKeyId) {
        if let Err(e) = self.registry.clear_intent(&hsm_id.0) {
            warn!(error = %e, "could not clear a creation intent");
        }
    }
}
