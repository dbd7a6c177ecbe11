//! Keys as the registry records them, with their lifecycle states modelled
//! on NIST SP 800-57 Part 1 (see `docs/KEY_LIFECYCLE.md`).

use serde::{Deserialize, Serialize};

use crate::hsm::{HsmKeyId, KeyKind};

fn is_aes(k: &KeyKind) -> bool {
    *k == KeyKind::Aes
}

/// The state of a key as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Encrypts with its newest active version; decrypts.
    Active,
    /// Disabled by an admin: nothing encrypts or decrypts; reversible.
    Suspended,
    /// An approved destruction is waiting out its period: suspended.
    PendingDestruction,
    /// Every version's HSM objects are gone; only the tombstone remains.
    Destroyed,
}

impl KeyState {
    /// The state as the API, the audit log and the metrics spell it
    /// (kebab-case, as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Suspended => "suspended",
            KeyState::PendingDestruction => "pending-destruction",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// The state of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionState {
    /// The newest version: encrypts and decrypts.
    Active,
    /// Superseded by a rotation: decrypts only (unless below the key's
    /// minimum decrypt version).
    Deactivated,
    /// Revoked: never decrypts again.
    Compromised,
    /// Its HSM object is destroyed.
    Destroyed,
}

impl VersionState {
    /// The state as the API, the audit log and errors spell it (kebab-case,
    /// as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "active",
            VersionState::Deactivated => "deactivated",
            VersionState::Compromised => "compromised",
            VersionState::Destroyed => "destroyed",
        }
    }
}

/// One version of a key: one HSM object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// The version number, from 1, as blobs carry it.
    pub version: u32,
    /// The HSM object's `CKA_ID`.
    pub hsm_id: HsmKeyId,
    /// Where the version is in its lifecycle.
    pub state: VersionState,
    /// When it was created, in Unix seconds.
    pub created_at: i64,
    /// Encryptions reserved on disk, a running total for the version: a crash loses at most the unused part
    /// of a reservation, which counts as used (the safe direction).
    pub reserved: u64,
}

/// A legal hold on a key: while any is active, the key cannot be
/// destroyed. Released holds stay on the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// The hold's id: the caller's, or `hold-` and 12 random hex digits.
    pub id: String,
    /// Why the key is held, as the placer gave it.
    pub reason: String,
    /// The uid that placed it.
    pub placed_by: u32,
    /// The policy principal that placed it.
    pub placed_by_principal: String,
    /// When it was placed, in Unix seconds.
    pub placed_at: i64,
    /// When it was released, in Unix seconds; `None` while it holds.
    pub released_at: Option<i64>,
    /// The uid that released it; `None` while it holds.
    pub released_by: Option<u32>,
}

/// When an approved destruction is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestroyKind {
    /// Destroy after a waiting period.
    Scheduled,
    /// Destroy as soon as approved (never past a legal hold).
    Now,
}

/// Where a destruction request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestStatus {
    /// Waiting for approvals.
    Open,
    /// Approved; a scheduled destruction is waiting out its period.
    Approved,
    /// Cancelled before the destruction began (an approved one puts the
    /// key back in its prior state).
    Cancelled,
    /// The key was destroyed.
    Done,
}

/// A request to destroy a key, which takes the configured number of
/// distinct approvals before it is carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyRequest {
    /// The request's id: `destroy-` and 12 random hex digits.
    pub id: String,
    /// Scheduled or immediate.
    pub kind: DestroyKind,
    /// For a scheduled destruction, the wait from full approval to
    /// destruction, in seconds.
    pub wait_secs: u64,
    /// The uid that asked.
    pub requested_by: u32,
    /// When it was asked, in Unix seconds.
    pub created_at: i64,
    /// Distinct uids that approved (the requester first).
    pub approvals: Vec<u32>,
    /// Where the request is.
    pub status: RequestStatus,
    /// When the last approval needed came, in Unix seconds; `None` until
    /// then.
    pub approved_at: Option<i64>,
    /// The key's state before the destruction was approved.
    pub prior_state: KeyState,
}

/// A key as the registry records it: its versions, holds and destruction
/// requests. The registry MACs every record; blobs name the key by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// The key id (a random UUID's bytes), written into every blob.
    pub id: [u8; 16],
    /// The key's name, unique in the registry.
    pub name: String,
    /// Free text from its creator.
    pub description: String,
    /// The key's state as a whole.
    pub state: KeyState,
    /// When it was created, in Unix seconds.
    pub created_at: i64,
    /// The algorithm's name (for example `AES_256_GCM`), from its kind.
    pub algorithm: String,
    /// aes (the default, not written, so older records read unchanged) or
    /// hmac; every version has the key's kind.
    #[serde(default, skip_serializing_if = "is_aes")]
    pub kind: KeyKind,
    /// The automatic rotation period, in seconds; `None`: rotated only on
    /// request.
    pub rotation_period_secs: Option<u64>,
    /// When the scheduler rotates it next, in Unix seconds; `None` without
    /// a rotation period.
    pub next_rotation_at: Option<i64>,
    /// Blobs under older versions are refused (0: none).
    pub min_decrypt_version: u32,
    /// When an approved destruction is carried out, in Unix seconds;
    /// `None` when none is approved.
    pub destroy_due_at: Option<i64>,
    /// Set before the first HSM object is removed: from then on the
    /// destruction cannot be cancelled or held, and is finished after a
    /// crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destruction_started_at: Option<i64>,
    /// When the destruction finished, in Unix seconds; `None` until then.
    pub destroyed_at: Option<i64>,
    /// Oldest first.
    pub versions: Vec<VersionRecord>,
    /// Every hold placed, released ones included.
    pub holds: Vec<Hold>,
    /// Every destruction request, closed ones included.
    pub requests: Vec<DestroyRequest>,
}

impl KeyRecord {
    /// An active AES key record for unit tests: key id `[id; 16]`, and the
    /// given (version, `CKA_ID` byte, state) versions.
    #[cfg(test)]
    pub(crate) fn sample(name: &str, id: u8, versions: &[(u32, u8, VersionState)]) -> Self {
        KeyRecord {
            id: [id; 16],
            name: name.into(),
            description: "d".into(),
            state: KeyState::Active,
            created_at: 1,
            algorithm: "AES_256_GCM".into(),
            kind: crate::hsm::KeyKind::Aes,
            rotation_period_secs: None,
            next_rotation_at: None,
            min_decrypt_version: 0,
            destroy_due_at: None,
            destruction_started_at: None,
            destroyed_at: None,
            versions: versions
                .iter()
                .map(|(version, hsm, state)| VersionRecord {
                    version: *version,
                    hsm_id: HsmKeyId([*hsm; 16]),
                    state: *state,
                    created_at: 1,
                    reserved: 0,
                })
                .collect(),
            holds: vec![],
            requests: vec![],
        }
    }

    /// The key id as a hyphenated UUID.
    pub fn id_text(&self) -> String {
        uuid::Uuid::from_bytes(self.id).to_string()
    }

    /// The version new data keys use.
    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Active)
    }

    /// The record of `version`, whatever its state; `None` if it never
    /// existed.
    pub fn version(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The holds not yet released.
    pub fn active_holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.iter().filter(|h| h.released_at.is_none())
    }

    /// The destruction request still in progress (open or approved), if
    /// any; there is at most one.
    pub fn open_request(&self) -> Option<&DestroyRequest> {
        self.requests
            .iter()
            .find(|r| matches!(r.status, RequestStatus::Open | RequestStatus::Approved))
    }
}
