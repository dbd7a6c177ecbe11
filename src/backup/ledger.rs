//! The ledger: every registry write is first recorded in the audit log as a
//! `registry_write` line carrying the whole record (metadata only: names,
//! states, `CKA_ID`s, holds; never key material) with the MAC the registry
//! gives it. A restore replays the lines written after its backup, so what
//! was destroyed, revoked, disabled or held since stays so. The MAC is the
//! registry's own (HMAC-SHA256 under the keyring's registry key, with the
//! generation), so a line cannot be forged without a quorum.

use serde_json::{json, Map, Value};

use std::collections::BTreeSet;

use crate::core::model::{KeyRecord, KeyState, VersionState};
use crate::core::{CoreError, CoreResult};

/// The `type` of a ledger line.
pub const WRITE: &str = "registry_write";
/// The `type` of the line that voids a ledger line whose commit failed.
pub const FAILED: &str = "registry_write_failed";
/// No genuine generation comes near this; a line claiming more is refused
/// (the arithmetic on generations stays far from overflow).
pub const MAX_GENERATION: u64 = 1 << 62;

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

/// The MAC of a void line: it names the ledger line by its seq, so it can
/// void that line and no other, and only the registry key can make it.
fn failed_mac(key: &[u8; 32], ledger_seq: u64, generation: u64) -> String {
    crate::core::registry::mac(
        key,
        &[
            b"keywarden/v1/registry-write-failed",
            &ledger_seq.to_be_bytes(),
            &generation.to_be_bytes(),
        ],
    )
}

/// The line that voids the ledger line at audit seq `ledger_seq` (its
/// commit failed, so its generation was not used).
pub fn failed(name: &str, generation: u64, ledger_seq: u64, key: &[u8; 32]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!(FAILED));
    m.insert("key".into(), json!(name));
    m.insert("generation".into(), json!(generation));
    m.insert("ledger_seq".into(), json!(ledger_seq));
    m.insert("mac".into(), json!(failed_mac(key, ledger_seq, generation)));
    m
}

/// A verified ledger entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The line's audit sequence number.
    pub seq: u64,
    /// The registry generation the write reached.
    pub generation: u64,
    /// The key's record as written.
    pub record: KeyRecord,
}

/// Why a ledger line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A field the line's type needs is missing or unusable.
    #[error("audit seq {seq}: a {kind} line without {field}")]
    Missing {
        /// The line's audit sequence number.
        seq: u64,
        /// The line's type.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A `registry_write` line's record does not parse.
    #[error("audit seq {seq}: the record of a registry_write line does not parse: {reason}")]
    Unparsable {
        /// The line's audit sequence number.
        seq: u64,
        /// The parser's message.
        reason: String,
    },
    /// The line's MAC does not verify under the registry key: forged, or of
    /// another deployment.
    #[error("audit seq {seq}: a {kind} line whose MAC does not verify under this deployment's registry key (forged, or of another deployment)")]
    Mac {
        /// The line's audit sequence number.
        seq: u64,
        /// The line's type.
        kind: &'static str,
    },
}

fn field<'a>(
    l: &'a Map<String, Value>,
    seq: u64,
    kind: &'static str,
    name: &'static str,
) -> Result<&'a Value, LedgerError> {
    l.get(name).ok_or(LedgerError::Missing {
        seq,
        kind,
        field: name,
    })
}

/// The state the ledger gives each key: of every verified `registry_write`
/// line above generation `above` (the backup's) and not voided, the one of
/// the highest generation per key. Chosen by generation, not by position,
/// so a genuine older line appended again later cannot win. Every line's
/// MAC must verify under `key`, void lines' included.
pub fn latest(
    lines: &[(u64, Map<String, Value>)],
    key: &[u8; 32],
    above: u64,
) -> Result<std::collections::BTreeMap<[u8; 16], Entry>, LedgerError> {
    use subtle::ConstantTimeEq;
    let same = |a: &str, b: &str| bool::from(a.as_bytes().ct_eq(b.as_bytes()));
    // A void line names the seq and the generation of the line it voids:
    // it voids that line only if both match.
    let mut voided = std::collections::BTreeSet::new();
    for (seq, l) in lines {
        if l.get("type").and_then(Value::as_str) != Some(FAILED) {
            continue;
        }
        let num = |name| {
            field(l, *seq, FAILED, name)?
                .as_u64()
                .ok_or(LedgerError::Missing {
                    seq: *seq,
                    kind: FAILED,
                    field: name,
                })
        };
        let (target, generation) = (num("ledger_seq")?, num("generation")?);
        let mac = field(l, *seq, FAILED, "mac")?.as_str().unwrap_or_default();
        if !same(&failed_mac(key, target, generation), mac) {
            return Err(LedgerError::Mac {
                seq: *seq,
                kind: FAILED,
            });
        }
        voided.insert((target, generation));
    }
    let mut out: std::collections::BTreeMap<[u8; 16], Entry> = Default::default();
    for (seq, l) in lines {
        if l.get("type").and_then(Value::as_str) != Some(WRITE) {
            continue;
        }
        let seq = *seq;
        let missing = |name| LedgerError::Missing {
            seq,
            kind: WRITE,
            field: name,
        };
        let generation = field(l, seq, WRITE, "generation")?
            .as_u64()
            .filter(|g| *g <= MAX_GENERATION)
            .ok_or(missing("generation"))?;
        let json = field(l, seq, WRITE, "record")?
            .as_str()
            .ok_or(missing("record"))?;
        let mac = field(l, seq, WRITE, "mac")?
            .as_str()
            .ok_or(missing("mac"))?;
        let want = crate::core::registry::record_mac(key, generation, json);
        if !same(&want, mac) {
            return Err(LedgerError::Mac { seq, kind: WRITE });
        }
        if generation <= above || voided.contains(&(seq, generation)) {
            continue;
        }
        let record: KeyRecord =
            serde_json::from_str(json).map_err(|e| LedgerError::Unparsable {
                seq,
                reason: e.to_string(),
            })?;
        // A generation is used again only after a write that did not
        // commit: on a tie, the later line is the one that did.
        let newer = out
            .get(&record.id)
            .is_none_or(|e| generation >= e.generation);
        if newer {
            out.insert(
                record.id,
                Entry {
                    seq,
                    generation,
                    record,
                },
            );
        }
    }
    Ok(out)
}

/// What the replay makes of a ledger record, given the token's objects: a
/// version whose object the token lacks (made after the backup) is lost:
/// it is kept as destroyed, so its number is never reused, and reported; if
/// that leaves no active version, the newest deactivated one the key still
/// decrypts with becomes active again. A key made after the backup of which
/// nothing survives is not restored (`None`), only reported.
pub(crate) fn fit_to_token(
    mut r: KeyRecord,
    in_backup: bool,
    on_token: &BTreeSet<[u8; 16]>,
    lost: &mut Vec<String>,
) -> Option<KeyRecord> {
    let name = r.name.clone();
    let mut gone = Vec::new();
    for v in r.versions.iter_mut() {
        if v.state != VersionState::Destroyed && !on_token.contains(&v.hsm_id.0) {
            v.state = VersionState::Destroyed;
            gone.push(v.version);
        }
    }
    let alive = r.state != KeyState::Destroyed;
    if !in_backup
        && alive
        && r.versions
            .iter()
            .all(|v| v.state == VersionState::Destroyed)
    {
        lost.push(format!("{name} (created after the backup)"));
        return None;
    }
    for v in gone {
        lost.push(format!("{name}/v{v} (made after the backup)"));
    }
    if alive && r.current().is_none() {
        let min = r.min_decrypt_version;
        if let Some(v) = r
            .versions
            .iter_mut()
            .rev()
            .find(|v| v.state == VersionState::Deactivated && v.version >= min)
        {
            v.state = VersionState::Active;
        }
    }
    if alive && r.current().is_none() {
        lost.push(format!(
            "{name}: no active version survives; rotate it before it makes data keys again"
        ));
    }
    Some(r)
}

/// What changed between `old` (None: the key was not there) and `new`,
/// in words, or None if nothing an operator would care about did.
pub(crate) fn describe_change(old: Option<&KeyRecord>, new: &KeyRecord) -> Option<String> {
    let Some(old) = old else {
        return Some(format!(
            "{}: created after the backup ({})",
            new.name,
            new.state.as_str()
        ));
    };
    let mut what = Vec::new();
    if old.state != new.state {
        what.push(format!("{} -> {}", old.state.as_str(), new.state.as_str()));
    }
    for v in &new.versions {
        match old.version(v.version) {
            Some(o) if o.state != v.state => what.push(format!(
                "v{} {} -> {}",
                v.version,
                o.state.as_str(),
                v.state.as_str()
            )),
            None => what.push(format!("v{} added ({})", v.version, v.state.as_str())),
            _ => {}
        }
    }
    if old.min_decrypt_version != new.min_decrypt_version {
        what.push(format!("min decrypt version {}", new.min_decrypt_version));
    }
    let holds = |r: &KeyRecord| {
        r.active_holds()
            .map(|h| h.id.clone())
            .collect::<BTreeSet<_>>()
    };
    let (ho, hn) = (holds(old), holds(new));
    for h in hn.difference(&ho) {
        what.push(format!("hold {h} placed"));
    }
    for h in ho.difference(&hn) {
        what.push(format!("hold {h} released"));
    }
    if what.is_empty()
        && old
            .versions
            .iter()
            .map(|v| v.reserved)
            .ne(new.versions.iter().map(|v| v.reserved))
    {
        what.push("encryption reservations".into());
    }
    (!what.is_empty()).then(|| format!("{}: {}", new.name, what.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{KeyState, VersionState};

    fn rec(name: &str) -> KeyRecord {
        KeyRecord::sample(name, 7, &[(1, 1, VersionState::Active)])
    }

    #[test]
    fn the_highest_verified_generation_wins_and_void_lines_name_one_line() {
        let key = [9u8; 32];
        let mut destroyed = rec("patients");
        destroyed.state = KeyState::Destroyed;
        let id = rec("patients").id;
        let lines = vec![
            (10, line(&rec("patients"), 5, &key).unwrap()),
            // A write at 6 that failed: its void line names seq 11 only.
            (11, line(&rec("patients"), 6, &key).unwrap()),
            (12, failed("patients", 6, 11, &key)),
            // The next real write reuses generation 6 and stands.
            (13, line(&destroyed, 6, &key).unwrap()),
            // A genuine older line appended again after it cannot win.
            (14, line(&rec("patients"), 5, &key).unwrap()),
        ];
        let got = latest(&lines, &key, 0).unwrap();
        assert_eq!((got[&id].seq, got[&id].generation), (13, 6));
        assert_eq!(got[&id].record.state, KeyState::Destroyed);
        // What the backup already holds is not replayed.
        assert!(latest(&lines, &key, 6).unwrap().is_empty());

        // Another key (another deployment, or no quorum) cannot make a line,
        // nor a void line.
        let err = latest(&lines, &[8u8; 32], 0).unwrap_err();
        assert_eq!(
            err,
            LedgerError::Mac {
                seq: 12,
                kind: FAILED
            }
        );
        let forged_void = vec![
            (13, line(&destroyed, 6, &key).unwrap()),
            (14, failed("patients", 6, 13, &[8u8; 32])),
        ];
        assert_eq!(
            latest(&forged_void, &key, 0).unwrap_err(),
            LedgerError::Mac {
                seq: 14,
                kind: FAILED
            }
        );

        // An edited record (a destroyed key made active again) is refused.
        let mut edited = line(&destroyed, 7, &key).unwrap();
        edited.insert(
            "record".into(),
            json!(serde_json::to_string(&rec("patients")).unwrap()),
        );
        assert_eq!(
            latest(&[(20, edited)], &key, 0).unwrap_err(),
            LedgerError::Mac {
                seq: 20,
                kind: WRITE
            }
        );
        let mut no_mac = line(&destroyed, 7, &key).unwrap();
        no_mac.remove("mac");
        assert!(matches!(
            latest(&[(21, no_mac)], &key, 0).unwrap_err(),
            LedgerError::Missing { field: "mac", .. }
        ));
    }
}
