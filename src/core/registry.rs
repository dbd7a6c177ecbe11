//! The key registry: an embedded SQLite database in the state directory
//! (WAL journal, `synchronous=FULL`), so a committed key survives a crash and
//! a crash mid-write leaves no half-created key.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

use crate::hsm::HsmKeyId;

const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("registry is corrupt: {0}")]
    Corrupt(String),
}

/// A CMK as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: [u8; 16],
    pub name: String,
    pub description: String,
    pub state: String,
    pub created_at: i64,
    pub algorithm: String,
    /// Sorted by version, oldest first.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    pub fn id_text(&self) -> String {
        uuid::Uuid::from_bytes(self.id).to_string()
    }

    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions.iter().rev().find(|v| v.state == "enabled")
    }

    pub fn version(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: u32,
    pub hsm_id: HsmKeyId,
    pub state: String,
    pub created_at: i64,
}

pub struct Registry {
    conn: Mutex<Connection>,
}

impl Registry {
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (
                 k TEXT PRIMARY KEY,
                 v TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS keys (
                 id BLOB PRIMARY KEY CHECK (length(id) = 16),
                 name TEXT NOT NULL UNIQUE,
                 description TEXT NOT NULL,
                 state TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 algorithm TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS key_versions (
                 key_id BLOB NOT NULL REFERENCES keys(id),
                 version INTEGER NOT NULL CHECK (version >= 1),
                 hsm_id BLOB NOT NULL UNIQUE CHECK (length(hsm_id) = 16),
                 state TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 PRIMARY KEY (key_id, version)
             );",
        )?;
        let v: Option<String> = conn
            .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match v {
            None => {
                conn.execute(
                    "INSERT INTO meta (k, v) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(RegistryError::Corrupt(format!(
                    "schema version {v} is not supported (this build knows {SCHEMA_VERSION})"
                )))
            }
        }
        Ok(Registry {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new key and its versions in one transaction.
    pub fn insert_key(&self, key: &KeyRecord) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM keys WHERE name = ?1",
                params![key.name],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Err(RegistryError::AlreadyExists(key.name.clone()));
        }
        tx.execute(
            "INSERT INTO keys (id, name, description, state, created_at, algorithm)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                key.id.as_slice(),
                key.name,
                key.description,
                key.state,
                key.created_at,
                key.algorithm
            ],
        )?;
        for v in &key.versions {
            tx.execute(
                "INSERT INTO key_versions (key_id, version, hsm_id, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    key.id.as_slice(),
                    v.version,
                    v.hsm_id.0.as_slice(),
                    v.state,
                    v.created_at
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn load(
        conn: &Connection,
        where_: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Vec<KeyRecord>, RegistryError> {
        let sql = format!(
            "SELECT id, name, description, state, created_at, algorithm FROM keys {where_} ORDER BY name"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = if where_.is_empty() {
            stmt.query_map([], row_to_key)?
                .collect::<Result<Vec<_>, _>>()?
        } else {
            stmt.query_map([arg], row_to_key)?
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, name, description, state, created_at, algorithm) in rows {
            let id: [u8; 16] = id
                .as_slice()
                .try_into()
                .map_err(|_| RegistryError::Corrupt(format!("key {name:?} has a malformed id")))?;
            let mut vstmt = conn.prepare_cached(
                "SELECT version, hsm_id, state, created_at FROM key_versions
                 WHERE key_id = ?1 ORDER BY version",
            )?;
            let versions = vstmt
                .query_map(params![id.as_slice()], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut vs = Vec::with_capacity(versions.len());
            for (version, hsm_id, state, created_at) in versions {
                let hsm_id: [u8; 16] = hsm_id.as_slice().try_into().map_err(|_| {
                    RegistryError::Corrupt(format!(
                        "key {name:?} v{version} has a malformed HSM id"
                    ))
                })?;
                vs.push(VersionRecord {
                    version,
                    hsm_id: HsmKeyId(hsm_id),
                    state,
                    created_at,
                });
            }
            out.push(KeyRecord {
                id,
                name,
                description,
                state,
                created_at,
                algorithm,
                versions: vs,
            });
        }
        Ok(out)
    }

    pub fn key_by_name(&self, name: &str) -> Result<Option<KeyRecord>, RegistryError> {
        let conn = self.conn();
        Ok(Self::load(&conn, "WHERE name = ?1", &name)?.pop())
    }

    pub fn key_by_id(&self, id: &[u8; 16]) -> Result<Option<KeyRecord>, RegistryError> {
        let conn = self.conn();
        Ok(Self::load(&conn, "WHERE id = ?1", &id.as_slice())?.pop())
    }

    pub fn list(&self) -> Result<Vec<KeyRecord>, RegistryError> {
        let conn = self.conn();
        Self::load(&conn, "", &0)
    }

    pub fn count(&self) -> Result<u32, RegistryError> {
        let conn = self.conn();
        Ok(conn.query_row("SELECT count(*) FROM keys", [], |r| r.get(0))?)
    }
}

type KeyRow = (Vec<u8>, String, String, String, i64, String);

fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, id: u8) -> KeyRecord {
        KeyRecord {
            id: [id; 16],
            name: name.into(),
            description: "d".into(),
            state: "enabled".into(),
            created_at: 1,
            algorithm: "AES_256_GCM".into(),
            versions: vec![VersionRecord {
                version: 1,
                hsm_id: HsmKeyId([id ^ 0xff; 16]),
                state: "enabled".into(),
                created_at: 1,
            }],
        }
    }

    #[test]
    fn insert_lookup_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        reg.insert_key(&rec("a", 1)).unwrap();
        reg.insert_key(&rec("b", 2)).unwrap();
        assert!(matches!(
            reg.insert_key(&rec("a", 3)),
            Err(RegistryError::AlreadyExists(_))
        ));
        assert_eq!(reg.key_by_name("a").unwrap(), Some(rec("a", 1)));
        assert_eq!(
            reg.key_by_id(&[2; 16]).unwrap().map(|k| k.name),
            Some("b".into())
        );
        assert_eq!(reg.key_by_name("zz").unwrap(), None);
        assert_eq!(reg.count().unwrap(), 2);
        assert_eq!(reg.list().unwrap().len(), 2);
        drop(reg);
        // Survives reopening.
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        assert_eq!(reg.count().unwrap(), 2);
    }

    #[test]
    fn failed_insert_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        reg.insert_key(&rec("a", 1)).unwrap();
        // Same HSM id as key "a": the version insert fails after the key row
        // was written, and the transaction must roll the key row back.
        let mut dup = rec("c", 3);
        dup.versions[0].hsm_id = HsmKeyId([1 ^ 0xff; 16]);
        assert!(reg.insert_key(&dup).is_err());
        assert_eq!(reg.key_by_name("c").unwrap(), None);
        assert_eq!(reg.count().unwrap(), 1);
    }
}
