//! The key registry, with its integrity protected by a key only the
//! unsealed daemon holds. Where the rows live is a [`RegistryStore`]: an
//! embedded SQLite database in the state directory ([`sqlite`], one host)
//! or a PostgreSQL database that several nodes share ([`postgres`]). The
//! protection is the same on both, because it is computed here and the
//! stores only keep bytes:
//!
//! Each key is one row holding its whole record (versions, counters, holds,
//! destruction requests) and an HMAC over the record and the registry
//! generation at which it was written. A manifest lists every key with its
//! generation and HMAC and is itself HMAC'd with the current generation; the
//! generation is also kept in a counter object inside the HSM, so that an
//! older copy of the whole database (rollback) is caught too. Editing a row,
//! rolling one back, deleting or adding one, or restoring an old copy are
//! each detected when the registry is loaded (at unseal, and on every node
//! of a cluster each time another node changes it).
//!
//! A write names the generation it builds on, and the store refuses it
//! ([`RegistryError::Stale`]) if the database has moved on: another node
//! wrote first. The writer then reloads and tries again, so no node ever
//! overwrites a change it has not seen.

pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::model::KeyRecord;
use crate::sync::Recover;

/// The schema version both stores write (the SQLite `meta` row; the
/// PostgreSQL migrations table counts its own steps).
pub(crate) const SCHEMA_VERSION: &str = "2";

/// Why the registry or its store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A new record's name is taken; the name.
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    /// An SQLite statement failed.
    #[error("registry database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL statement failed (the server answered).
    #[error("registry database: {code}: {message}")]
    Postgres {
        /// The SQLSTATE code.
        code: String,
        /// The server's message.
        message: String,
        /// The driver's error.
        #[source]
        source: ::postgres::Error,
    },
    /// The PostgreSQL server cannot be reached (down, restarting, the
    /// network): key operations are refused until it is back.
    #[error("registry database unreachable: {why}")]
    Unreachable {
        /// What failed, with its causes.
        why: String,
        /// The driver's error, if one said so.
        #[source]
        source: Option<::postgres::Error>,
    },
    /// Another node changed the registry since this one last loaded it.
    #[error("the registry is at generation {found}, this node wrote on top of {expected}")]
    Stale {
        /// The generation the write built on.
        expected: u64,
        /// The generation the store is at.
        found: u64,
    },
    /// The stored bytes or the registry's state forbid the operation (a
    /// manifest that does not verify, a generation at its maximum, a
    /// malformed row).
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

/// One key's row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    /// The key id (16 bytes, unchecked here).
    pub id: Vec<u8>,
    /// The key's name.
    pub name: String,
    /// The [`KeyRecord`] as JSON.
    pub record: String,
    /// The generation it was written at.
    pub gen: u64,
    /// The record's HMAC-SHA256 over its generation and JSON, hex.
    pub mac: String,
}

/// One intent row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawIntent {
    /// The `CKA_ID` of the HSM object about to be created (16 bytes,
    /// unchecked here).
    pub hsm_id: Vec<u8>,
    /// Its label (`keywarden:NAME/vN`).
    pub label: String,
    /// The HMAC-SHA256 over the id and label, hex.
    pub mac: String,
}

/// Everything a store holds, read in one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawState {
    /// The generation the store claims (0 for a new store).
    pub generation: u64,
    /// The manifest as JSON; `None` before the first write.
    pub manifest: Option<String>,
    /// The manifest's HMAC at `generation`, hex; `None` before the first
    /// write.
    pub manifest_mac: Option<String>,
    /// Ordered by name.
    pub rows: Vec<RawRow>,
    /// Every intent row.
    pub intents: Vec<RawIntent>,
}

/// One write: the manifest at a new generation and the records written
/// at it (one for a change, none for a plain reseal, several when an
/// acknowledged rollback takes the ledger's records back). Applied only if
/// the store is still at `prev_gen`.
#[derive(Debug)]
pub struct Commit<'a> {
    /// The generation the write builds on.
    pub prev_gen: u64,
    /// The generation it writes (above `prev_gen`).
    pub gen: u64,
    /// The records written at `gen`.
    pub rows: &'a [RowWrite<'a>],
    /// The new manifest, as JSON.
    pub manifest: &'a str,
    /// The manifest's HMAC at `gen`, hex.
    pub manifest_mac: &'a str,
}

/// One record in a [`Commit`].
#[derive(Debug)]
pub struct RowWrite<'a> {
    /// The key id.
    pub id: &'a [u8; 16],
    /// The key's name.
    pub name: &'a str,
    /// The [`KeyRecord`] as JSON.
    pub record: &'a str,
    /// The record's HMAC at the commit's generation, hex.
    pub mac: &'a str,
    /// How the row is written.
    pub kind: RowKind,
}

/// How a row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// A new key: refused if its name is taken.
    New,
    /// An existing row: refused if it is missing.
    Update,
    /// The row as given, whatever is there now (an acknowledged rollback
    /// writing the audit log's record over a row that failed its MAC or
    /// was deleted).
    Replace,
}

/// Where the registry's rows live. Stores keep bytes and enforce only the
/// generation check of [`Commit`]; every integrity decision is made by
/// [`Registry`], the same for all of them.
pub trait RegistryStore: Send {
    /// `"sqlite"` or `"postgresql"`.
    fn kind(&self) -> &'static str;
    /// The whole registry in one snapshot.
    fn load(&mut self) -> Result<RawState, RegistryError>;
    /// The generation the store claims (unverified; readable while sealed).
    fn generation(&mut self) -> Result<u64, RegistryError>;
    /// Applies a commit in one transaction, or refuses it with
    /// [`RegistryError::Stale`] (another writer came first) or
    /// [`RegistryError::AlreadyExists`] (a new record's name is taken).
    fn commit(&mut self, c: &Commit<'_>) -> Result<(), RegistryError>;
    /// Stores an intent row (replacing one for the same HSM id).
    fn put_intent(&mut self, i: &RawIntent) -> Result<(), RegistryError>;
    /// Removes the intent row for `hsm_id`, if there is one.
    fn clear_intent(&mut self, hsm_id: &[u8; 16]) -> Result<(), RegistryError>;
    /// Every intent row (verified or not).
    fn intents(&mut self) -> Result<Vec<RawIntent>, RegistryError>;
    /// Schema objects this code never makes (triggers, views, other
    /// tables).
    fn foreign_schema(&mut self) -> Result<Vec<String>, RegistryError>;
    /// Lets go of any connection (at shutdown, off the async runtime).
    fn close(&mut self) {}
}

/// What a verified load found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Records whose integrity holds.
    pub keys: Vec<KeyRecord>,
    /// The generation the store claims, checked against the HSM counter.
    pub generation: u64,
    /// (key name or id, what is wrong): refused until repaired.
    pub tampered: Vec<(String, String)>,
    /// A registry-wide problem: every key is refused.
    pub global: Option<String>,
}

/// The registry: a [`RegistryStore`] with the integrity checks over it,
/// and the manifest and generation this process last verified or wrote.
pub struct Registry {
    store: Mutex<Box<dyn RegistryStore>>,
    /// The manifest and generation as last verified or written.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    manifest: Manifest,
    generation: u64,
    /// The last load found the manifest itself wrong: nothing is written
    /// on top of it (a write would authenticate what an attacker put
    /// there).
    unverified: Option<String>,
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

fn intent_mac(key: &[u8; 32], hsm_id: &[u8; 16], label: &str) -> String {
    mac(
        key,
        &[b"keywarden/v1/registry-intent", hsm_id, label.as_bytes()],
    )
}

impl Registry {
    /// The embedded SQLite registry at `path` (one host).
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        Ok(Self::with_store(Box::new(sqlite::SqliteStore::open(path)?)))
    }

    /// A registry over `store` (nothing is read until
    /// [`Registry::load_verified`]).
    pub fn with_store(store: Box<dyn RegistryStore>) -> Self {
        Registry {
            store: Mutex::new(store),
            state: Mutex::new(State::default()),
        }
    }

    fn store(&self) -> MutexGuard<'_, Box<dyn RegistryStore>> {
        self.store.locked()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// The store's kind: `"sqlite"` or `"postgresql"`.
    pub fn kind(&self) -> &'static str {
        self.store().kind()
    }

    /// Closes the store's connection, if it has one. Called at shutdown
    /// from a blocking thread: a database client must not be dropped on
    /// the async runtime.
    pub fn close(&self) {
        self.store().close();
    }

    /// Loads and verifies every record. `hsm_generation` is the counter kept
    /// in the HSM (None if the token has none yet).
    pub fn load_verified(
        &self,
        key: &[u8; 32],
        hsm_generation: Option<u64>,
    ) -> Result<Loaded, RegistryError> {
        let raw = self.store().load()?;
        let (out, manifest) = verify(key, hsm_generation, raw);
        *self.state() = State {
            manifest,
            generation: out.generation,
            unverified: out.global.clone(),
        };
        Ok(out)
    }

    /// Writes one record (new or changed) at a new generation, in one
    /// transaction with the manifest. Returns the new generation, or
    /// [`RegistryError::Stale`] if another node wrote since this one last
    /// loaded: reload and try again.
    pub fn put(
        &self,
        record: &KeyRecord,
        key: &[u8; 32],
        is_new: bool,
    ) -> Result<u64, RegistryError> {
        let mut store = self.store();
        let mut state = self.state();
        if let Some(why) = &state.unverified {
            return Err(RegistryError::Corrupt(format!(
                "no write on top of a registry that does not verify ({why})"
            )));
        }
        let prev = state.generation;
        let gen = prev
            .checked_add(1)
            .ok_or_else(|| RegistryError::Corrupt("the generation is at its maximum".into()))?;
        let json =
            serde_json::to_string(record).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let rmac = record_mac(key, gen, &json);
        let mut manifest = state.manifest.clone();
        manifest
            .keys
            .insert(hex::encode(record.id), (gen, rmac.clone()));
        manifest
            .names
            .insert(hex::encode(record.id), record.name.clone());
        let mjson =
            serde_json::to_string(&manifest).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let mmac = manifest_mac(key, gen, &mjson);
        store.commit(&Commit {
            prev_gen: prev,
            gen,
            rows: &[RowWrite {
                id: &record.id,
                name: &record.name,
                record: &json,
                mac: &rmac,
                kind: if is_new {
                    RowKind::New
                } else {
                    RowKind::Update
                },
            }],
            manifest: &mjson,
            manifest_mac: &mmac,
        })?;
        state.manifest = manifest;
        state.generation = gen;
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
        self.store().put_intent(&RawIntent {
            hsm_id: hsm_id.to_vec(),
            label: label.to_string(),
            mac: intent_mac(key, hsm_id, label),
        })
    }

    /// Removes the intent for `hsm_id`, once the record names the object.
    pub fn clear_intent(&self, hsm_id: &[u8; 16]) -> Result<(), RegistryError> {
        self.store().clear_intent(hsm_id)
    }

    /// The HSM ids that have an intent row (verified or not).
    pub fn intent_ids(&self) -> Result<Vec<[u8; 16]>, RegistryError> {
        let rows = self.store().intents()?;
        Ok(rows
            .into_iter()
            .filter_map(|i| i.hsm_id.try_into().ok())
            .collect())
    }

    /// Whether a verified intent exists for this HSM object.
    pub fn has_intent(
        &self,
        key: &[u8; 32],
        hsm_id: &[u8; 16],
        label: &str,
    ) -> Result<bool, RegistryError> {
        let want = intent_mac(key, hsm_id, label);
        Ok(self
            .store()
            .intents()?
            .iter()
            .any(|i| i.hsm_id == hsm_id.as_slice() && i.label == label && i.mac == want))
    }

    /// The generation as last loaded or written by this process.
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Schema objects this code never makes (triggers, views, other
    /// tables): a registry restored from a backup must have none.
    pub fn foreign_schema(&self) -> Result<Vec<String>, RegistryError> {
        self.store().foreign_schema()
    }

    /// A consistent copy of the registry at `to`, as an SQLite database
    /// (whatever the store: a backup's registry is always one file).
    pub fn snapshot_to(&self, to: &Path) -> Result<(), RegistryError> {
        let raw = self.store().load()?;
        sqlite::SqliteStore::write_snapshot(to, &raw)
    }

    /// The generation the store claims, unverified (readable while sealed):
    /// evidence that this daemon was initialised and used.
    pub fn generation_on_disk(&self) -> Result<u64, RegistryError> {
        self.store().generation()
    }

    /// The generation at which a verified record was last written (from
    /// the manifest as last loaded or written).
    pub fn record_generation(&self, id: &[u8; 16]) -> Option<u64> {
        self.state()
            .manifest
            .keys
            .get(&hex::encode(id))
            .map(|(g, _)| *g)
    }

    /// Re-authenticates the manifest, as last verified, at a new generation
    /// above every witness: an operator's audited acceptance of a registry
    /// that was found older than the HSM counter or the audit log. The
    /// `records` given are written at that generation, as their
    /// [`RowKind`] says, in the same transaction; every other
    /// record and its own MAC is unchanged, and a record found tampered
    /// stays so.
    pub fn reseal(
        &self,
        key: &[u8; 32],
        generation: u64,
        records: &[(&KeyRecord, RowKind)],
    ) -> Result<(), RegistryError> {
        let mut store = self.store();
        let mut state = self.state();
        if let Some(why) = &state.unverified {
            return Err(RegistryError::Corrupt(format!(
                "no reseal of a registry that does not verify ({why})"
            )));
        }
        if generation <= state.generation {
            return Err(RegistryError::Corrupt(format!(
                "reseal at generation {generation}, not above {}",
                state.generation
            )));
        }
        let mut manifest = state.manifest.clone();
        let mut texts = Vec::with_capacity(records.len());
        for (r, _) in records {
            let json =
                serde_json::to_string(r).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            let mac = record_mac(key, generation, &json);
            manifest
                .keys
                .insert(hex::encode(r.id), (generation, mac.clone()));
            manifest.names.insert(hex::encode(r.id), r.name.clone());
            texts.push((json, mac));
        }
        let rows: Vec<RowWrite<'_>> = records
            .iter()
            .zip(&texts)
            .map(|((r, kind), (json, mac))| RowWrite {
                id: &r.id,
                name: &r.name,
                record: json,
                mac,
                kind: *kind,
            })
            .collect();
        let mjson =
            serde_json::to_string(&manifest).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let mmac = manifest_mac(key, generation, &mjson);
        store.commit(&Commit {
            prev_gen: state.generation,
            gen: generation,
            rows: &rows,
            manifest: &mjson,
            manifest_mac: &mmac,
        })?;
        state.manifest = manifest;
        state.generation = generation;
        Ok(())
    }
}

/// Every integrity check of a load, on the bytes a store returned.
fn verify(key: &[u8; 32], hsm_generation: Option<u64>, raw: RawState) -> (Loaded, Manifest) {
    let mut out = Loaded::default();
    let generation = raw.generation;
    let manifest: Manifest = match (&raw.manifest, &raw.manifest_mac) {
        (None, None) if raw.rows.is_empty() && generation == 0 => Manifest::default(),
        (Some(j), Some(m)) => {
            if manifest_mac(key, generation, j) != *m {
                out.global = Some(
                    "the registry manifest does not verify: the database was edited or belongs to another seal"
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
    for RawRow {
        id,
        name,
        record,
        gen,
        mac: row_mac,
    } in raw.rows
    {
        let id_hex = hex::encode(&id);
        seen.insert(id_hex.clone());
        let what = match manifest.keys.get(&id_hex) {
            None => Some("a registry row the manifest does not list (added by hand)".to_string()),
            Some((mgen, mmac)) if *mgen != gen || *mmac != row_mac => {
                Some("rolled back or replaced: it does not match the manifest".to_string())
            }
            Some(_) if record_mac(key, gen, &record) != row_mac => {
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
    for id_hex in manifest.keys.keys() {
        if !seen.contains(id_hex) {
            let who = manifest.names.get(id_hex).unwrap_or(id_hex).clone();
            out.tampered
                .push((who, "listed in the manifest but its row was deleted".into()));
        }
    }
    out.generation = generation;
    (out, manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::*;
    use rusqlite::{params, Connection};

    fn rec(name: &str, id: u8) -> KeyRecord {
        KeyRecord::sample(name, id, &[(1, id ^ 0xff, VersionState::Active)])
    }

    const K: [u8; 32] = [7; 32];

    fn sql(path: &Path, q: &str) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(q).unwrap();
    }

    #[test]
    fn a_write_on_top_of_a_generation_another_writer_moved_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        let a = Registry::open(&p).unwrap();
        let b = Registry::open(&p).unwrap();
        a.load_verified(&K, None).unwrap();
        b.load_verified(&K, None).unwrap();
        a.put(&rec("a", 1), &K, true).unwrap();
        // B has not seen A's write: refused, nothing changed.
        assert!(matches!(
            b.put(&rec("b", 2), &K, true),
            Err(RegistryError::Stale {
                expected: 0,
                found: 1
            })
        ));
        assert_eq!(b.generation_on_disk().unwrap(), 1);
        // Having taken it in, B writes on top of it, and both verify.
        assert_eq!(b.load_verified(&K, None).unwrap().keys.len(), 1);
        assert_eq!(b.put(&rec("b", 2), &K, true).unwrap(), 2);
        let l = a.load_verified(&K, Some(2)).unwrap();
        assert!(l.global.is_none() && l.tampered.is_empty(), "{l:?}");
        assert_eq!(l.keys.len(), 2);
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
