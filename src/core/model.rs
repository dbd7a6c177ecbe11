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
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "active",
            VersionState::Deactivated => "deactivated",
            VersionState::Compromised => "compromised",
            VersionState::Destroyed => "destroyed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    pub version: u32,
    pub hsm_id: HsmKeyId,
    pub state: VersionState,
    pub created_at: i64,
    /// Encryptions reserved on disk: a crash loses at most the unused part
    /// of a reservation, which counts as used (the safe direction).
    pub reserved: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub id: String,
    pub reason: String,
    pub placed_by: u32,
    pub placed_by_principal: String,
    pub placed_at: i64,
    pub released_at: Option<i64>,
    pub released_by: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestroyKind {
    /// Destroy after a waiting period.
    Scheduled,
    /// Destroy as soon as approved (never past a legal hold).
    Now,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestStatus {
    /// Waiting for approvals.
    Open,
    /// Approved; a scheduled destruction is waiting out its period.
    Approved,
    Cancelled,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyRequest {
    pub id: String,
    pub kind: DestroyKind,
    pub wait_secs: u64,
    pub requested_by: u32,
    pub created_at: i64,
    /// Distinct uids that approved (the requester first).
    pub approvals: Vec<u32>,
    pub status: RequestStatus,
    pub approved_at: Option<i64>,
    /// The key's state before the destruction was approved.
    pub prior_state: KeyState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: [u8; 16],
    pub name: String,
    pub description: String,
    pub state: KeyState,
    pub created_at: i64,
    pub algorithm: String,
    /// aes (the default, not written, so older records read unchanged) or
    /// hmac; every version has the key's kind.
    #[serde(default, skip_serializing_if = "is_aes")]
    pub kind: KeyKind,
    pub rotation_period_secs: Option<u64>,
    pub next_rotation_at: Option<i64>,
    /// Blobs under older versions are refused (0: none).
    pub min_decrypt_version: u32,
    pub destroy_due_at: Option<i64>,
    /// Set before the first HSM object is removed: from then on the
    /// destruction cannot be cancelled or held, and is finished after a
    /// crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destruction_started_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    /// Oldest first.
    pub versions: Vec<VersionRecord>,
    pub holds: Vec<Hold>,
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

    pub fn version(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn active_holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.iter().filter(|h| h.released_at.is_none())
    }

    pub fn open_request(&self) -> Option<&DestroyRequest> {
        self.requests
            .iter()
            .find(|r| matches!(r.status, RequestStatus::Open | RequestStatus::Approved))
    }
}
