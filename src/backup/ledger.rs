//! The ledger: every registry write is first recorded in the audit log as a
//! `registry_write` line carrying the whole record (metadata only: names,
//! states, `CKA_ID`s, holds; never key material) with the MAC the registry
//! gives it. A restore replays the lines written after its backup, so what
//! was destroyed, revoked, disabled or held since stays so. The MAC is the
//! registry's own (HMAC-SHA256 under the keyring's registry key, with the
//! generation), so a line cannot be forged without a quorum.

use serde_json::{json, Map, Value};

use crate::core::model::KeyRecord;
use crate::core::{CoreError, CoreResult};

/// The `type` of a ledger line.
pub const WRITE: &str = "registry_write";
/// The `type` of the line that voids a ledger line whose commit failed.
pub const FAILED: &str = "registry_write_failed";

/// The ledger line for `record` about to be written at `generation`.
pub fn line(record: &KeyRecord, generation: u64, key: &[u8; 32]) -> CoreResult<Map<String, Value>> {
    let json = serde_json::to_string(record).map_err(|e| CoreError::Internal(e.to_string()))?;
    let mac = crate::core::registry::record_mac(key, generation, &json);
    let mut m = Map::new();
    m.insert("type".into(), json!(WRITE));
    m.insert("key".into(), json!(record.name));
    m.insert("key_id".into(), json!(record.id_text()));
    m.insert("generation".into(), json!(generation));
    m.insert("record".into(), json!(json));
    m.insert("mac".into(), json!(mac));
    Ok(m)
}

/// The line that voids the ledger line of `generation` (its commit failed).
pub fn failed(name: &str, generation: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!(FAILED));
    m.insert("key".into(), json!(name));
    m.insert("generation".into(), json!(generation));
    m
}

/// A verified ledger entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub generation: u64,
    pub record: KeyRecord,
}

/// Why a ledger line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("audit seq {seq}: a registry_write line without {field}")]
    Missing { seq: u64, field: &'static str },
    #[error("audit seq {seq}: the record of a registry_write line does not parse: {reason}")]
    Unparsable { seq: u64, reason: String },
    #[error("audit seq {seq}: a registry_write line whose MAC does not verify under this deployment's registry key (forged, or of another deployment)")]
    Mac { seq: u64 },
}

/// Reads the ledger entries from audit lines (already chain-verified), in
/// order: lines voided by a later `registry_write_failed` are dropped, and
/// every kept line's MAC must verify under `key`.
pub fn entries(
    lines: &[(u64, Map<String, Value>)],
    key: &[u8; 32],
) -> Result<Vec<Entry>, LedgerError> {
    use subtle::ConstantTimeEq;
    let voided: std::collections::BTreeSet<u64> = lines
        .iter()
        .filter(|(_, l)| l.get("type").and_then(Value::as_str) == Some(FAILED))
        .filter_map(|(_, l)| l.get("generation").and_then(Value::as_u64))
        .collect();
    let mut out = Vec::new();
    for (seq, l) in lines {
        if l.get("type").and_then(Value::as_str) != Some(WRITE) {
            continue;
        }
        let seq = *seq;
        let generation =
            l.get("generation")
                .and_then(Value::as_u64)
                .ok_or(LedgerError::Missing {
                    seq,
                    field: "generation",
                })?;
        if voided.contains(&generation) {
            continue;
        }
        let json = l
            .get("record")
            .and_then(Value::as_str)
            .ok_or(LedgerError::Missing {
                seq,
                field: "record",
            })?;
        let mac = l
            .get("mac")
            .and_then(Value::as_str)
            .ok_or(LedgerError::Missing { seq, field: "mac" })?;
        let want = crate::core::registry::record_mac(key, generation, json);
        if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
            return Err(LedgerError::Mac { seq });
        }
        let record: KeyRecord =
            serde_json::from_str(json).map_err(|e| LedgerError::Unparsable {
                seq,
                reason: e.to_string(),
            })?;
        out.push(Entry {
            seq,
            generation,
            record,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{KeyState, VersionState};

    fn rec(name: &str) -> KeyRecord {
        KeyRecord::sample(name, 7, &[(1, 1, VersionState::Active)])
    }

    #[test]
    fn lines_verify_and_forgeries_and_voided_writes_are_refused() {
        let key = [9u8; 32];
        let mut destroyed = rec("patients");
        destroyed.state = KeyState::Destroyed;
        let lines = vec![
            (10, line(&rec("patients"), 5, &key).unwrap()),
            (11, line(&destroyed, 6, &key).unwrap()),
            (12, failed("patients", 6)),
        ];
        let got = entries(&lines, &key).unwrap();
        assert_eq!(got.len(), 1, "the write voided by its failure is dropped");
        assert_eq!((got[0].seq, got[0].generation), (10, 5));
        assert_eq!(got[0].record.state, KeyState::Active);

        // Another key (another deployment, or no quorum) cannot make a line.
        let err = entries(&lines, &[8u8; 32]).unwrap_err();
        assert_eq!(err, LedgerError::Mac { seq: 10 });

        // An edited record (a destroyed key made active again) is refused.
        let mut edited = line(&destroyed, 7, &key).unwrap();
        edited.insert(
            "record".into(),
            json!(serde_json::to_string(&rec("patients")).unwrap()),
        );
        assert_eq!(
            entries(&[(20, edited)], &key).unwrap_err(),
            LedgerError::Mac { seq: 20 }
        );
        let mut no_mac = line(&destroyed, 7, &key).unwrap();
        no_mac.remove("mac");
        assert!(matches!(
            entries(&[(21, no_mac)], &key).unwrap_err(),
            LedgerError::Missing { field: "mac", .. }
        ));
    }
}
