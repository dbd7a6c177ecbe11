//! The key lifecycle: creation, rotation (by hand, by period, by count),
//! version retirement and revocation, suspension, legal holds, and
//! destruction under dual control. States and transitions are documented in
//! `docs/KEY_LIFECYCLE.md`.

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::model::{
    DestroyKind, DestroyRequest, Hold, KeyRecord, KeyState, RequestStatus, VersionRecord,
    VersionState,
};
use super::{validate, CoreError, CoreResult};
use crate::audit::{EventKind, Outcome};
use crate::hsm::HsmError;
use crate::hsm::KeyKind;
use crate::sync::Recover;

/// Who asks: the caller's uid (approvals count distinct uids) and the
/// principal the policy names.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The caller's uid, as its transport vouched for it.
    pub uid: u32,
    /// The policy principal the caller was recognised as.
    pub principal: String,
}

/// The limits and waiting periods of the key lifecycle (`[lifecycle]` in
/// the config; the defaults are the production values).
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Shortest waiting period of a scheduled destruction.
    pub destroy_min_delay: Duration,
    /// Longest waiting period.
    pub destroy_max_delay: Duration,
    /// Distinct approvers a destruction needs (the requester counts).
    pub destroy_approvals: usize,
    /// Rotate a version automatically once it made this many encryptions.
    pub rotate_after_encryptions: u64,
    /// Never make more encryptions than this under one version (random
    /// 96-bit GCM nonces: at most 2^32 per key).
    pub hard_limit_encryptions: u64,
    /// Encryptions reserved on disk at a time.
    pub reserve_block: u64,
    /// Shortest automatic rotation period (a minute; a second in dev mode).
    pub min_rotation_period: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            destroy_min_delay: Duration::from_secs(7 * 86_400),
            destroy_max_delay: Duration::from_secs(365 * 86_400),
            destroy_approvals: 2,
            rotate_after_encryptions: 1 << 30,
            hard_limit_encryptions: 1 << 32,
            reserve_block: 10_000,
            min_rotation_period: Duration::from_secs(60),
        }
    }
}

fn holds_text(r: &KeyRecord) -> String {
    r.active_holds()
        .map(|h| format!("{}: {}", h.id, h.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    format!("{prefix}-{}", hex::encode(b))
}

fn not_destroyed(r: &KeyRecord) -> CoreResult<()> {
    if r.state == KeyState::Destroyed {
        return Err(CoreError::KeyDestroyed {
            name: r.name.clone(),
            at: r.destroyed_at.unwrap_or(0),
        });
    }
    Ok(())
}

impl super::Keys<'_> {
    /// Creates a CMK: generate in the HSM, record, and destroy the HSM
    /// object again if recording fails.
    pub fn create_key(
        &self,
        name: &str,
        description: &str,
        rotation_period: Option<Duration>,
        kind: KeyKind,
    ) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        validate::description(description)?;
        if let Some(p) = rotation_period {
            validate::rotation_period(p, self.lifecycle.min_rotation_period)?;
        }
        match self.records().record(name) {
            Ok(r) if r.state == KeyState::Destroyed => {
                return Err(CoreError::Conflict(format!(
                    "{name:?} is the tombstone of a key destroyed at {} (Unix time); a destroyed key's name is never reused, so nothing can be mistaken for it: choose another name",
                    r.destroyed_at.unwrap_or_default()
                )))
            }
            Ok(_) => return Err(CoreError::AlreadyExists { name: name.into() }),
            Err(CoreError::KeyNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let _w = self.writes.locked();
        self.cluster().catch_up()?;
        let hsm_id = self.new_hsm_version(name, 1, kind)?;
        let created_at = self.now();
        let record = KeyRecord {
            id: *uuid::Uuid::new_v4().as_bytes(),
            name: name.to_string(),
            description: description.to_string(),
            state: KeyState::Active,
            created_at,
            algorithm: kind.algorithm().into(),
            kind,
            rotation_period_secs: rotation_period.map(|p| p.as_secs()),
            next_rotation_at: rotation_period.map(|p| created_at + p.as_secs() as i64),
            min_decrypt_version: 0,
            destroy_due_at: None,
            destruction_started_at: None,
            destroyed_at: None,
            versions: vec![VersionRecord {
                version: 1,
                hsm_id,
                state: VersionState::Active,
                created_at,
                reserved: 0,
            }],
            holds: vec![],
            requests: vec![],
        };
        let (stored, confirm) = match self.records().store_new(record) {
            Ok(r) => r,
            // The commit may have landed: the object stays (with its
            // intent), as drift for an operator, never destroyed under a
            // record that names it.
            Err(e @ CoreError::RegistryUnavailable(_)) => return Err(e),
            Err(e) => {
                if let Err(de) = self.hsm.destroy_cmk(&hsm_id) {
                    warn!(key = %name, id = %hsm_id, error = %de, "could not roll back the HSM object after a failed registry write; it shows as drift at the next unseal");
                }
                return Err(e);
            }
        };
        self.intent_done(&hsm_id);
        if let Err(e) = self.hsm.activate(&hsm_id) {
            warn!(key = %name, error = %e, "no session copy for the new CMK; the token object is used");
        }
        drop(_w);
        self.records().confirm(confirm);
        info!(key = %name, key_id = %stored.id_text(), "created CMK");
        Ok((*stored).clone())
    }

    /// A new version becomes active; older ones decrypt only.
    pub fn rotate(&self, name: &str, reason: &str) -> CoreResult<KeyRecord> {
        self.rotate_inner(name, reason, false)
    }

    fn rotate_inner(
        &self,
        name: &str,
        reason: &str,
        allow_suspended: bool,
    ) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        let _w = self.writes.locked();
        let mut tries = 0;
        let (stored, confirm, version, hsm_id) = loop {
            self.cluster().catch_up()?;
            let mut rec = (*self.records().record(name)?).clone();
            not_destroyed(&rec)?;
            let ok = rec.state == KeyState::Active
                || (allow_suspended && rec.state == KeyState::Suspended);
            if !ok {
                return Err(CoreError::KeyUnusable {
                    name: rec.name.clone(),
                    state: rec.state.as_str().into(),
                    operation: "rotation",
                });
            }
            let version = rec.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            let hsm_id = self.new_hsm_version(name, version, rec.kind)?;
            for v in rec.versions.iter_mut() {
                if v.state == VersionState::Active {
                    v.state = VersionState::Deactivated;
                }
            }
            let t = self.now();
            rec.versions.push(VersionRecord {
                version,
                hsm_id,
                state: VersionState::Active,
                created_at: t,
                reserved: 0,
            });
            if let Some(p) = rec.rotation_period_secs {
                rec.next_rotation_at = Some(t + p as i64);
            }
            match self.records().store(rec, false) {
                Ok((stored, confirm)) => break (stored, confirm, version, hsm_id),
                Err(e @ CoreError::RegistryUnavailable(_)) => return Err(e),
                Err(CoreError::RegistryMoved { .. }) if tries < super::WRITE_TRIES => {
                    // Another node changed the key (perhaps rotated it):
                    // this version number may be taken. Undo, take the
                    // change in, and rotate what is there now.
                    tries += 1;
                    // The intent stays if the object could not be destroyed.
                    if self.hsm.destroy_cmk(&hsm_id).is_ok() {
                        self.intent_done(&hsm_id);
                    }
                }
                Err(e) => {
                    if self.hsm.destroy_cmk(&hsm_id).is_ok() {
                        self.intent_done(&hsm_id);
                    }
                    return Err(e);
                }
            }
        };
        self.intent_done(&hsm_id);
        if let Err(e) = self.hsm.activate(&hsm_id) {
            warn!(key = %name, error = %e, "no session copy for the new version");
        }
        drop(_w);
        self.records().confirm(confirm);
        self.event(
            EventKind::Rotate,
            Outcome::Ok,
            json!({"key": name, "version": version, "reason": reason}),
        );
        Ok((*stored).clone())
    }

    /// Changes the rotation period and/or the minimum decrypt version.
    pub fn update_key(
        &self,
        name: &str,
        rotation_period: Option<Option<Duration>>,
        min_decrypt_version: Option<u32>,
    ) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        if let Some(Some(p)) = rotation_period {
            validate::rotation_period(p, self.lifecycle.min_rotation_period)?;
        }
        let (_, r) = self.records().update(name, |r| {
            not_destroyed(r)?;
            if let Some(p) = rotation_period {
                r.rotation_period_secs = p.map(|d| d.as_secs());
                r.next_rotation_at = p.map(|d| self.now() + d.as_secs() as i64);
            }
            if let Some(m) = min_decrypt_version {
                let newest = r.current().map(|v| v.version).unwrap_or(0);
                if m > newest {
                    return Err(CoreError::invalid(
                        "min_decrypt_version",
                        format!("{m} is above the newest active version ({newest})"),
                    ));
                }
                r.min_decrypt_version = m;
            }
            Ok(())
        })?;
        self.event(EventKind::KeyUpdate, Outcome::Ok,
            json!({"key": name, "rotation_period_secs": r.rotation_period_secs, "min_decrypt_version": r.min_decrypt_version}),
        );
        Ok((*r).clone())
    }

    /// Marks one version compromised: it never decrypts again. If it was
    /// the active version, the key rotates first.
    pub fn revoke_version(&self, name: &str, version: u32) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        let rec = self.records().record(name)?;
        not_destroyed(&rec)?;
        let v = rec.version(version).ok_or_else(|| {
            CoreError::invalid("version", format!("key {name:?} has no version {version}"))
        })?;
        if v.state == VersionState::Active {
            self.rotate_inner(name, "the active version was revoked", true)?;
        }
        let (hsm_id, r) = self.records().update(name, |r| {
            let v = r
                .versions
                .iter_mut()
                .find(|v| v.version == version)
                .ok_or_else(|| CoreError::Internal("version vanished".into()))?;
            if v.state == VersionState::Destroyed {
                return Err(CoreError::Conflict(format!(
                    "version {version} of key {name:?} is already destroyed"
                )));
            }
            v.state = VersionState::Compromised;
            Ok(v.hsm_id)
        })?;
        let _ = hsm_id;
        self.event(
            EventKind::RevokeVersion,
            Outcome::Ok,
            json!({"key": name, "version": version}),
        );
        Ok((*r).clone())
    }

    /// Suspends a key: the very next request is refused.
    pub fn disable(&self, name: &str) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        let (_, r) = self.records().update(name, |r| {
            not_destroyed(r)?;
            match r.state {
                KeyState::Active => {
                    r.state = KeyState::Suspended;
                    Ok(())
                }
                KeyState::Suspended => Ok(()),
                other => Err(CoreError::Conflict(format!(
                    "key {name:?} is {}; disable applies to active keys",
                    other.as_str()
                ))),
            }
        })?;
        self.event(EventKind::Disable, Outcome::Ok, json!({"key": name}));
        Ok((*r).clone())
    }

    /// Makes a suspended key active again (an active one stays so);
    /// refused for a key pending destruction or destroyed. Returns the
    /// record as written.
    pub fn enable(&self, name: &str) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        let (_, r) = self.records().update(name, |r| {
            not_destroyed(r)?;
            match r.state {
                KeyState::Suspended | KeyState::Active => {
                    r.state = KeyState::Active;
                    Ok(())
                }
                other => Err(CoreError::Conflict(format!(
                    "key {name:?} is {}; cancel the destruction first (keywarden key cancel-destroy)",
                    other.as_str()
                ))),
            }
        })?;
        self.event(EventKind::Enable, Outcome::Ok, json!({"key": name}));
        Ok((*r).clone())
    }

    /// Opens a destruction request; the requester's approval counts. With
    /// enough approvals a scheduled destruction starts its waiting period
    /// (the key is suspended) and an immediate one happens at once.
    pub fn request_destroy(
        &self,
        name: &str,
        kind: DestroyKind,
        wait: Duration,
        actor: &Actor,
    ) -> CoreResult<(DestroyRequest, KeyRecord)> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        if kind == DestroyKind::Scheduled {
            let (min, max) = (
                self.lifecycle.destroy_min_delay,
                self.lifecycle.destroy_max_delay,
            );
            if wait < min || wait > max {
                return Err(CoreError::invalid(
                    "after_secs",
                    format!(
                        "the waiting period must be between {} and {} seconds",
                        min.as_secs(),
                        max.as_secs()
                    ),
                ));
            }
        }
        let needed = self.lifecycle.destroy_approvals.max(1);
        let (req, _) = self.records().update(name, |r| {
            not_destroyed(r)?;
            if r.active_holds().next().is_some() {
                return Err(CoreError::Held {
                    name: r.name.clone(),
                    holds: holds_text(r),
                    operation: "destruction",
                });
            }
            if let Some(open) = r.open_request() {
                return Err(CoreError::Conflict(format!(
                    "key {name:?} already has destruction request {} ({:?}); approve or cancel it",
                    open.id, open.status
                )));
            }
            let req = DestroyRequest {
                id: random_id("destroy"),
                kind,
                wait_secs: wait.as_secs(),
                requested_by: actor.uid,
                created_at: self.now(),
                approvals: vec![actor.uid],
                status: RequestStatus::Open,
                approved_at: None,
                prior_state: r.state,
            };
            r.requests.push(req.clone());
            Ok(req)
        })?;
        self.event(EventKind::DestroyRequested, Outcome::Ok,
            json!({"key": name, "request_id": req.id, "kind": kind, "wait_secs": req.wait_secs, "by_uid": actor.uid, "by": actor.principal, "approvals_needed": needed}),
        );
        if needed <= 1 {
            return self.complete_approval(name, &req.id);
        }
        let rec = (*self.records().record(name)?).clone();
        Ok((req, rec))
    }

    /// A second (third...) distinct admin approves a destruction request.
    pub fn approve_destroy(
        &self,
        name: &str,
        request_id: &str,
        actor: &Actor,
    ) -> CoreResult<(DestroyRequest, KeyRecord)> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        let needed = self.lifecycle.destroy_approvals.max(1);
        let (count, _) = self.records().update(name, |r| {
            not_destroyed(r)?;
            let req = r
                .requests
                .iter_mut()
                .find(|q| q.id == request_id)
                .ok_or_else(|| {
                    CoreError::invalid("request_id", format!("key {name:?} has no request {request_id:?}"))
                })?;
            if req.status != RequestStatus::Open {
                return Err(CoreError::Conflict(format!(
                    "request {request_id} is {:?}, not open",
                    req.status
                )));
            }
            if req.approvals.contains(&actor.uid) {
                return Err(CoreError::Conflict(format!(
                    "uid {} already approved request {request_id}; a second, different admin must approve",
                    actor.uid
                )));
            }
            req.approvals.push(actor.uid);
            let count = req.approvals.len();
            if count >= needed && r.active_holds().next().is_some() {
                // Refused as a whole: the approval is not recorded.
                return Err(CoreError::Held {
                    name: r.name.clone(),
                    holds: holds_text(r),
                    operation: "destruction",
                });
            }
            Ok(count)
        })?;
        self.event(EventKind::DestroyApproved, Outcome::Ok,
            json!({"key": name, "request_id": request_id, "by_uid": actor.uid, "by": actor.principal, "approvals": count, "approvals_needed": needed}),
        );
        if count >= needed {
            return self.complete_approval(name, request_id);
        }
        let rec = (*self.records().record(name)?).clone();
        let req = rec
            .requests
            .iter()
            .find(|q| q.id == request_id)
            .cloned()
            .ok_or_else(|| CoreError::Internal("request vanished".into()))?;
        Ok((req, rec))
    }

    fn complete_approval(
        &self,
        name: &str,
        request_id: &str,
    ) -> CoreResult<(DestroyRequest, KeyRecord)> {
        let (kind, _) = self.records().update(name, |r| {
            not_destroyed(r)?;
            if r.active_holds().next().is_some() {
                return Err(CoreError::Held {
                    name: r.name.clone(),
                    holds: holds_text(r),
                    operation: "destruction",
                });
            }
            let t = self.now();
            let prior = r.state;
            let needed = self.lifecycle.destroy_approvals.max(1);
            let req = r
                .requests
                .iter_mut()
                .find(|q| q.id == request_id)
                .ok_or_else(|| CoreError::Internal("request vanished".into()))?;
            // On the record as it is now: a request cancelled meanwhile (on
            // this node or another, while the approval's write was being
            // confirmed) is not revived.
            if req.status != RequestStatus::Open || req.approvals.len() < needed {
                return Err(CoreError::Conflict(format!(
                    "request {request_id} is {:?} with {} of {needed} approvals: not carried out",
                    req.status,
                    req.approvals.len()
                )));
            }
            req.status = RequestStatus::Approved;
            req.approved_at = Some(t);
            req.prior_state = prior;
            let (kind, wait) = (req.kind, req.wait_secs);
            // Both kinds refuse every operation from this write on; an
            // immediate one is due now, so a crash before it finishes
            // leaves a key the next tick destroys, never an active one.
            r.state = KeyState::PendingDestruction;
            r.destroy_due_at = Some(match kind {
                DestroyKind::Scheduled => t + wait as i64,
                DestroyKind::Now => t,
            });
            Ok(kind)
        })?;
        self.event(
            EventKind::DestroyFullyApproved,
            Outcome::Ok,
            json!({"key": name, "request_id": request_id, "kind": kind}),
        );
        if kind == DestroyKind::Now {
            self.execute_destruction(name)?;
        }
        let rec = (*self.records().record(name)?).clone();
        let req = rec
            .requests
            .iter()
            .find(|q| q.id == request_id)
            .cloned()
            .ok_or_else(|| CoreError::Internal("request vanished".into()))?;
        Ok((req, rec))
    }

    /// Cancels an open or approved (waiting) destruction.
    pub fn cancel_destroy(&self, name: &str, actor: &Actor) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        let (id, r) = self.records().update(name, |r| {
            not_destroyed(r)?;
            let req = r
                .requests
                .iter_mut()
                .find(|q| matches!(q.status, RequestStatus::Open | RequestStatus::Approved))
                .ok_or_else(|| {
                    CoreError::Conflict(format!("key {name:?} has no destruction to cancel"))
                })?;
            let was_approved = req.status == RequestStatus::Approved;
            if r.destruction_started_at.is_some() || (was_approved && req.kind == DestroyKind::Now)
            {
                return Err(CoreError::Conflict(format!(
                    "the destruction of key {name:?} has begun and cannot be cancelled"
                )));
            }
            req.status = RequestStatus::Cancelled;
            let (id, prior) = (req.id.clone(), req.prior_state);
            if was_approved && r.state == KeyState::PendingDestruction {
                r.state = prior;
                r.destroy_due_at = None;
            }
            Ok(id)
        })?;
        self.event(
            EventKind::DestroyCancelled,
            Outcome::Ok,
            json!({"key": name, "request_id": id, "by_uid": actor.uid, "by": actor.principal}),
        );
        Ok((*r).clone())
    }

    /// Destroys every version's HSM objects (token objects and session
    /// copies) and keeps a tombstone. Done if it is done already.
    pub(crate) fn execute_destruction(&self, name: &str) -> CoreResult<()> {
        // Marked first, in the same write that checks the holds: once any
        // object may be gone, nothing can cancel, hold or revive the key.
        let t0 = self.now();
        let marked = self.records().update(name, |r| {
            // Never back to pending: another node may have finished.
            not_destroyed(r)?;
            if r.destruction_started_at.is_none() {
                // On the record as it is now, not as the caller saw it: a
                // destruction cancelled meanwhile (on this node or another)
                // is not carried out.
                let due = r.destroy_due_at.is_some_and(|d| d <= t0);
                if r.state != KeyState::PendingDestruction || !due {
                    return Err(CoreError::Conflict(format!(
                        "key {:?}: no destruction is due (cancelled or not yet approved)",
                        r.name
                    )));
                }
                if r.active_holds().next().is_some() {
                    return Err(CoreError::Held {
                        name: r.name.clone(),
                        holds: holds_text(r),
                        operation: "destruction",
                    });
                }
                r.destruction_started_at = Some(t0);
            }
            r.state = KeyState::PendingDestruction;
            Ok(())
        });
        let rec = match marked {
            Err(CoreError::KeyDestroyed { .. }) => return Ok(()),
            other => other?.1,
        };
        for v in &rec.versions {
            if v.state == VersionState::Destroyed {
                continue;
            }
            match self.hsm.destroy_cmk(&v.hsm_id) {
                Ok(()) | Err(HsmError::ObjectNotFound(_)) => {}
                Err(e) => {
                    // Record what is done; the next tick retries the rest.
                    warn!(key = %name, version = v.version, error = %e, "destroying a CMK version failed");
                    return Err(CoreError::from_hsm(e));
                }
            }
        }
        let t = self.now();
        let finished = self.records().update(name, |r| {
            not_destroyed(r)?;
            for v in r.versions.iter_mut() {
                v.state = VersionState::Destroyed;
            }
            r.state = KeyState::Destroyed;
            r.destroyed_at = Some(t);
            r.destroy_due_at = None;
            for q in r.requests.iter_mut() {
                if q.status == RequestStatus::Approved {
                    q.status = RequestStatus::Done;
                }
            }
            Ok(())
        });
        match finished {
            // Finished by another node (a leader that took over).
            Err(CoreError::KeyDestroyed { .. }) => return Ok(()),
            other => other?,
        };
        self.event(
            EventKind::Destroyed,
            Outcome::Ok,
            json!({"key": name, "versions": rec.versions.len(), "at": t}),
        );
        info!(key = %name, "CMK destroyed (crypto-shredded)");
        Ok(())
    }

    /// Places a legal hold; a scheduled destruction pauses while any stands.
    pub fn place_hold(
        &self,
        name: &str,
        reason: &str,
        id: Option<&str>,
        actor: &Actor,
    ) -> CoreResult<(String, KeyRecord)> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        validate::reason("reason", reason)?;
        if let Some(i) = id {
            validate::hold_id(i)?;
        }
        let (hid, r) = self.records().update(name, |r| {
            not_destroyed(r)?;
            if r.destruction_started_at.is_some() {
                return Err(CoreError::Conflict(format!(
                    "the destruction of key {name:?} has begun; a hold can no longer stop it"
                )));
            }
            let hid = id.map(str::to_string).unwrap_or_else(|| random_id("hold"));
            if r.active_holds().any(|h| h.id == hid) {
                return Err(CoreError::AlreadyExists {
                    name: format!("{name}/hold {hid}"),
                });
            }
            r.holds.push(Hold {
                id: hid.clone(),
                reason: reason.to_string(),
                placed_by: actor.uid,
                placed_by_principal: actor.principal.clone(),
                placed_at: self.now(),
                released_at: None,
                released_by: None,
            });
            Ok(hid)
        })?;
        self.event(EventKind::HoldPlaced, Outcome::Ok,
            json!({"key": name, "hold_id": hid, "reason": reason, "by_uid": actor.uid, "by": actor.principal}),
        );
        Ok((hid, (*r).clone()))
    }

    /// Releases the active hold `hold_id`, recording who and when; the
    /// hold stays on the record. Returns the record as written.
    pub fn release_hold(&self, name: &str, hold_id: &str, actor: &Actor) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        let (_, r) = self.records().update(name, |r| {
            let h = r
                .holds
                .iter_mut()
                .find(|h| h.id == hold_id && h.released_at.is_none())
                .ok_or_else(|| {
                    CoreError::invalid(
                        "hold_id",
                        format!("key {name:?} has no active hold {hold_id:?}"),
                    )
                })?;
            h.released_at = Some(self.now());
            h.released_by = Some(actor.uid);
            Ok(())
        })?;
        self.event(
            EventKind::HoldReleased,
            Outcome::Ok,
            json!({"key": name, "hold_id": hold_id, "by_uid": actor.uid, "by": actor.principal}),
        );
        Ok((*r).clone())
    }
}

impl super::Keys<'_> {
    /// Every key in the registry, destroyed ones included, sorted by name.
    /// Refused while the registry as a whole fails its integrity check; keys
    /// that fail it alone are left out.
    pub fn list_keys(&self) -> CoreResult<Vec<KeyRecord>> {
        self.unsealed()?;
        let t = self.table();
        if let Some(g) = &t.global {
            return Err(CoreError::RegistryTampered {
                key: None,
                what: g.clone(),
            });
        }
        let mut v: Vec<KeyRecord> = t.by_name.values().map(|r| (**r).clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// One key's record. Fails with [`CoreError::KeyNotFound`], or
    /// [`CoreError::RegistryTampered`] if its record (or the registry)
    /// fails the integrity check.
    pub fn describe_key(&self, name: &str) -> CoreResult<KeyRecord> {
        self.unsealed()?;
        validate::key_name("name", name)?;
        Ok((*self.records().record(name)?).clone())
    }
}
