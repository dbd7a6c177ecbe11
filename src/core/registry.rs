//! The key registry: an embedded SQLite database in the state directory
//! (WAL journal, `synchronous=FULL`; one transaction per change), with its
//! integrity protected by a key only the unsealed daemon holds.
//!
//! Each key is one row holding its whole record (versions, counters, holds,
//! destruction requests) and an HMAC over the record and the registry
//! generation at which it was written. A manifest lists every key with its
//! generation and HMAC and is itself HMAC'd with the current generation; the
//! generation is also kept in a counter object inside the HSM, so that an
//! older copy of the whole file (rollback) is caught too. Editing a row,
//! rolling one back, deleting or adding one, or restoring an old file are
//! each detected when the registry is loaded at unseal.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::model::KeyRecord;

const SCHEMA_VERSION: &str = "2";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("registry is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    /// key id (hex) -> (generation, record HMAC hex)
    keys: BTreeMap<String, (u64, String)>,
    /// key id (hex) -> name, so that a deleted row is refused by name.
    #[serde(default)]
    names: BTreeMap<String, String>,
}

/// What a verified load found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Records whose integrity holds.
    pub keys: Vec<KeyRecord>,
    pub generation: u64,
    /// (key name or id, what is wrong): refused until repaired.
    pub tampered: Vec<(String, String)>,
    /// A registry-wide problem: every key is refused.
    pub global: Option<String>,
}

pub struct Registry {
    conn: Mutex<Connection>,
    /// The manifest and generation as last verified or written.
    state: Mutex<(Manifest, u64)>,
}

pub(crate) fn mac(key: &[u8; 32], parts: &[&[u8]]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC
    // would never verify.
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return String::new();
    };
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

pub(crate) fn record_mac(key: &[u8; 32], gen: u64, record_json: &str) -> String {
    mac(
        key,
        &[
            b"keywarden/v1/registry-record",
            &gen.to_be_bytes(),
            record_json.as_bytes(),
        ],
    )
}

fn manifest_mac(key: &[u8; 32], gen: u64, manifest_json: &str) -> String {
    mac(
        key,
        &[
            b"keywarden/v1/registry-manifest",
            &gen.to_be_bytes(),
            manifest_json.as_bytes(),
        ],
    )
}

impl Registry {
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let conn = Connection::open(path)?;
        // Functions with side effects are not callable from the schema
        // (a restore also refuses a database with schema objects of its
        // own: `foreign_schema`).
        conn.pragma_update(None, "trusted_schema", "OFF")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS intents (
                 hsm_id BLOB PRIMARY KEY CHECK (length(hsm_id) = 16),
                 label TEXT NOT NULL,
                 mac TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS key_records (
                 id BLOB PRIMARY KEY CHECK (length(id) = 16),
                 name TEXT NOT NULL UNIQUE,
                 record TEXT NOT NULL,
                 gen INTEGER NOT NULL,
                 mac TEXT NOT NULL
             );",
        )?;
        let v: Option<String> = conn
            .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match v.as_deref() {
            None => {
                conn.execute(
                    "INSERT INTO meta (k, v) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(RegistryError::Corrupt(format!(
                    "schema version {other} is not supported (this build knows {SCHEMA_VERSION})"
                )))
            }
        }
        Ok(Registry {
            conn: Mutex::new(conn),
            state: Mutex::new((Manifest::default(), 0)),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn meta(conn: &Connection, k: &str) -> Result<Option<String>, RegistryError> {
        Ok(conn
            .query_row("SELECT v FROM meta WHERE k = ?1", params![k], |r| r.get(0))
            .optional()?)
    }

    /// Loads and verifies every record. `hsm_generation` is the counter kept
    /// in the HSM (None if the token has none yet).
    pub fn load_verified(
        &self,
        key: &[u8; 32],
        hsm_generation: Option<u64>,
    ) -> Result<Loaded, RegistryError> {
        let conn = self.conn();
        let mut out = Loaded::default();
        let generation: u64 = Self::meta(&conn, "generation")?
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let manifest_json = Self::meta(&conn, "manifest")?;
        let stored_mac = Self::meta(&conn, "manifest_mac")?;
        let mut rows = Vec::new();
        {
            let mut stmt =
                conn.prepare("SELECT id, name, record, gen, mac FROM key_records ORDER BY name")?;
            let it = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?;
            for row in it {
                rows.push(row?);
            }
        }
        let manifest: Manifest = match (&manifest_json, &stored_mac) {
            (None, None) if rows.is_empty() && generation == 0 => Manifest::default(),
            (Some(j), Some(m)) => {
                if manifest_mac(key, generation, j) != *m {
                    out.global = Some(
                        "the registry manifest does not verify: the file was edited or belongs to another seal"
                            .into(),
                    );
                }
                serde_json::from_str(j).unwrap_or_else(|_| {
                    out.global = Some("the registry manifest does not parse".into());
                    Manifest::default()
                })
            }
            _ => {
                out.global = Some("the registry manifest is missing".into());
                Manifest::default()
            }
        };
        match hsm_generation {
            Some(h) if generation < h => {
                out.global = Some(format!(
                    "an older copy of the registry was restored (generation {generation}, the HSM has seen {h})"
                ));
            }
            _ => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for (id, name, record, gen, row_mac) in rows {
            let id_hex = hex::encode(&id);
            seen.insert(id_hex.clone());
            let what = match manifest.keys.get(&id_hex) {
                None => {
                    Some("a registry row the manifest does not list (added by hand)".to_string())
                }
                Some((mgen, mmac)) if *mgen != gen as u64 || *mmac != row_mac => {
                    Some("rolled back or replaced: it does not match the manifest".to_string())
                }
                Some(_) if record_mac(key, gen as u64, &record) != row_mac => {
                    Some("its record was edited: the HMAC does not verify".to_string())
                }
                Some(_) => None,
            };
            if let Some(w) = what {
                out.tampered.push((name, w));
                continue;
            }
            match serde_json::from_str::<KeyRecord>(&record) {
                Ok(r) if r.name == name && hex::encode(r.id) == id_hex => out.keys.push(r),
                _ => out.tampered.push((
                    name,
                    "its record does not parse or does not match its row".into(),
                )),
            }
        }
        for (id_hex, _) in manifest.keys.iter() {
            if !seen.contains(id_hex) {
                out.tampered.push((
                    id_hex.clone(),
                    "listed in the manifest but its row was deleted".into(),
                ));
            }
        }
        out.generation = generation;
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (manifest, generation);
        Ok(out)
    }

    /// Writes one record (new or changed) at a new generation, in one
    /// transaction with the manifest. Returns the new generation.
    pub fn put(
        &self,
        record: &KeyRecord,
        key: &[u8; 32],
        is_new: bool,
    ) -> Result<u64, RegistryError> {
        let mut conn = self.conn();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gen = state.1 + 1;
        let json =
            serde_json::to_string(record).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let rmac = record_mac(key, gen, &json);
        let mut manifest = state.0.clone();
        manifest
            .keys
            .insert(hex::encode(record.id), (gen, rmac.clone()));
        manifest
            .names
            .insert(hex::encode(record.id), record.name.clone());
        let mjson =
            serde_json::to_string(&manifest).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let mmac = manifest_mac(key, gen, &mjson);
        let tx = conn.transaction()?;
        if is_new {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM key_records WHERE name = ?1",
                    params![record.name],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Err(RegistryError::AlreadyExists(record.name.clone()));
            }
            tx.execute(
                "INSERT INTO key_records (id, name, record, gen, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![record.id.as_slice(), record.name, json, gen as i64, rmac],
            )?;
        } else {
            let n = tx.execute(
                "UPDATE key_records SET record = ?2, gen = ?3, mac = ?4 WHERE id = ?1",
                params![record.id.as_slice(), json, gen as i64, rmac],
            )?;
            if n != 1 {
                return Err(RegistryError::Corrupt(format!(
                    "key {:?} has no row to update",
                    record.name
                )));
            }
        }
        for (k, v) in [
            ("generation", gen.to_string()),
            ("manifest", mjson),
            ("manifest_mac", mmac),
        ] {
            tx.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )?;
        }
        tx.commit()?;
        *state = (manifest, gen);
        Ok(gen)
    }

    /// Records, before an HSM object is created, that it is about to be:
    /// reconciliation may destroy such an object if the record of the key
    /// never followed (an interrupted create or rotate), and only such.
    pub fn put_intent(
        &self,
        key: &[u8; 32],
        hsm_id: &[u8; 16],
        label: &str,
    ) -> Result<(), RegistryError> {
        let m = mac(
            key,
            &[b"keywarden/v1/registry-intent", hsm_id, label.as_bytes()],
        );
        self.conn().execute(
            "INSERT OR REPLACE INTO intents (hsm_id, label, mac) VALUES (?1, ?2, ?3)",
            params![hsm_id.as_slice(), label, m],
        )?;
        Ok(())
    }

    pub fn clear_intent(&self, hsm_id: &[u8; 16]) -> Result<(), RegistryError> {
        self.conn().execute(
            "DELETE FROM intents WHERE hsm_id = ?1",
            params![hsm_id.as_slice()],
        )?;
        Ok(())
    }

    /// The HSM ids that have an intent row (verified or not).
    pub fn intent_ids(&self) -> Result<Vec<[u8; 16]>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT hsm_id FROM intents")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids.into_iter().filter_map(|v| v.try_into().ok()).collect())
    }

    /// Whether a verified intent exists for this HSM object.
    pub fn has_intent(
        &self,
        key: &[u8; 32],
        hsm_id: &[u8; 16],
        label: &str,
    ) -> Result<bool, RegistryError> {
        let stored: Option<String> = self
            .conn()
            .query_row(
                "SELECT mac FROM intents WHERE hsm_id = ?1 AND label = ?2",
                params![hsm_id.as_slice(), label],
                |r| r.get(0),
            )
            .optional()?;
        let want = mac(
            key,
            &[b"keywarden/v1/registry-intent", hsm_id, label.as_bytes()],
        );
        Ok(stored.is_some_and(|m| m == want))
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Schema objects this code never makes (triggers, views, other
    /// tables): a registry restored from a backup must have none.
    pub fn foreign_schema(&self) -> Result<Vec<String>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT type, name FROM sqlite_master")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let own = ["meta", "intents", "key_records"];
        let mut out = Vec::new();
        for row in rows {
            let (kind, name) = row?;
            let ours = match kind.as_str() {
                "table" => own.contains(&name.as_str()),
                "index" => name.starts_with("sqlite_autoindex_"),
                _ => false,
            };
            if !ours {
                out.push(format!("{kind} {name}"));
            }
        }
        Ok(out)
    }

    /// A consistent copy of the database at `to` (SQLite's online backup,
    /// not a file copy: the WAL's committed pages are included).
    pub fn snapshot_to(&self, to: &Path) -> Result<(), RegistryError> {
        let conn = self.conn();
        conn.backup(rusqlite::MAIN_DB, to, None)?;
        Ok(())
    }

    /// The generation the file claims, unverified (readable while sealed):
    /// evidence that this daemon was initialised and used.
    pub fn generation_on_disk(&self) -> Result<u64, RegistryError> {
        let conn = self.conn();
        Ok(Self::meta(&conn, "generation")?
            .and_then(|g| g.parse().ok())
            .unwrap_or(0))
    }

    /// Re-authenticates the manifest, as last verified, at a new generation
    /// above every witness: an operator's audited acceptance of a registry
    /// that was found older than the HSM counter or the audit log. Records
    /// and their own MACs are unchanged; a record found tampered stays so.
    pub fn reseal(&self, key: &[u8; 32], generation: u64) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if generation <= state.1 {
            return Err(RegistryError::Corrupt(format!(
                "reseal at generation {generation}, not above {}",
                state.1
            )));
        }
        let mjson =
            serde_json::to_string(&state.0).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let mmac = manifest_mac(key, generation, &mjson);
        let tx = conn.transaction()?;
        for (k, v) in [
            ("generation", generation.to_string()),
            ("manifest", mjson),
            ("manifest_mac", mmac),
        ] {
            tx.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )?;
        }
        tx.commit()?;
        state.1 = generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::*;

    fn rec(name: &str, id: u8) -> KeyRecord {
        KeyRecord::sample(name, id, &[(1, id ^ 0xff, VersionState::Active)])
    }

    const K: [u8; 32] = [7; 32];

    fn sql(path: &Path, q: &str) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(q).unwrap();
    }

    #[test]
    fn round_trip_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        let reg = Registry::open(&p).unwrap();
        assert!(reg.load_verified(&K, None).unwrap().keys.is_empty());
        reg.put(&rec("a", 1), &K, true).unwrap();
        let g = reg.put(&rec("b", 2), &K, true).unwrap();
        assert_eq!(g, 2);
        assert!(matches!(
            reg.put(&rec("a", 3), &K, true),
            Err(RegistryError::AlreadyExists(_))
        ));
        let mut a = rec("a", 1);
        a.state = KeyState::Suspended;
        reg.put(&a, &K, false).unwrap();
        drop(reg);
        let reg = Registry::open(&p).unwrap();
        let l = reg.load_verified(&K, Some(3)).unwrap();
        assert!(l.global.is_none() && l.tampered.is_empty(), "{l:?}");
        assert_eq!(l.keys.len(), 2);
        assert_eq!(l.keys[0].state, KeyState::Suspended);
        assert_eq!(l.generation, 3);
        // Another key (another seal) cannot read it.
        let other = reg.load_verified(&[8; 32], Some(3)).unwrap();
        assert!(other.global.is_some());
    }

    #[test]
    fn edits_rollbacks_deletions_and_restores_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        let reg = Registry::open(&p).unwrap();
        reg.put(&rec("a", 1), &K, true).unwrap();
        reg.put(&rec("b", 2), &K, true).unwrap();
        let old_copy = dir.path().join("old.db");
        drop(reg);
        std::fs::copy(&p, &old_copy).unwrap();
        let reg = Registry::open(&p).unwrap();
        reg.load_verified(&K, Some(2)).unwrap();
        let mut a = rec("a", 1);
        a.state = KeyState::Suspended;
        reg.put(&a, &K, false).unwrap(); // gen 3
        drop(reg);

        // 1. Flip the state in the row by hand.
        let edited = dir.path().join("edited.db");
        std::fs::copy(&p, &edited).unwrap();
        sql(&edited, "UPDATE key_records SET record = replace(record, '\"suspended\"', '\"active\"') WHERE name = 'a';");
        let l = Registry::open(&edited)
            .unwrap()
            .load_verified(&K, Some(3))
            .unwrap();
        assert_eq!(l.tampered.len(), 1, "{l:?}");
        assert!(l.tampered[0].1.contains("edited"));
        assert_eq!(l.keys.len(), 1);

        // 2. Roll one row back to its older (validly MAC'd) content.
        let rolled = dir.path().join("rolled.db");
        std::fs::copy(&p, &rolled).unwrap();
        let old = Connection::open(&old_copy).unwrap();
        let (rec_a, gen_a, mac_a): (String, i64, String) = old
            .query_row(
                "SELECT record, gen, mac FROM key_records WHERE name = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        Connection::open(&rolled)
            .unwrap()
            .execute(
                "UPDATE key_records SET record = ?1, gen = ?2, mac = ?3 WHERE name = 'a'",
                params![rec_a, gen_a, mac_a],
            )
            .unwrap();
        let l = Registry::open(&rolled)
            .unwrap()
            .load_verified(&K, Some(3))
            .unwrap();
        assert!(
            l.tampered
                .iter()
                .any(|(n, w)| n == "a" && w.contains("rolled back")),
            "{l:?}"
        );

        // 3. Delete a row.
        let deleted = dir.path().join("deleted.db");
        std::fs::copy(&p, &deleted).unwrap();
        sql(&deleted, "DELETE FROM key_records WHERE name = 'b';");
        let l = Registry::open(&deleted)
            .unwrap()
            .load_verified(&K, Some(3))
            .unwrap();
        assert!(
            l.tampered.iter().any(|(_, w)| w.contains("deleted")),
            "{l:?}"
        );

        // 4. Restore the older copy of the whole file.
        let l = Registry::open(&old_copy)
            .unwrap()
            .load_verified(&K, Some(3))
            .unwrap();
        assert!(
            l.global.as_deref().unwrap_or("").contains("older copy"),
            "{l:?}"
        );

        // The untouched file verifies.
        let l = Registry::open(&p)
            .unwrap()
            .load_verified(&K, Some(3))
            .unwrap();
        assert!(l.global.is_none() && l.tampered.is_empty(), "{l:?}");
    }
}
