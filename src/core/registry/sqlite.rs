//! The embedded registry store: one SQLite database in the state directory
//! (WAL journal, `synchronous=FULL`; one transaction per change).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    Commit, RawIntent, RawRow, RawState, RegistryError, RegistryStore, RowKind, SCHEMA_VERSION,
};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
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
     );";

/// The embedded SQLite [`RegistryStore`]: one database file in the state
/// directory, for a daemon on one host.
pub struct SqliteStore {
    conn: Connection,
}

fn meta(conn: &Connection, k: &str) -> Result<Option<String>, RegistryError> {
    Ok(conn
        .query_row("SELECT v FROM meta WHERE k = ?1", params![k], |r| r.get(0))
        .optional()?)
}

fn parse_gen(v: Option<String>) -> u64 {
    v.and_then(|g| g.parse().ok()).unwrap_or(0)
}

fn set_meta(conn: &Connection, k: &str, v: &str) -> Result<(), RegistryError> {
    conn.execute(
        "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        params![k, v],
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens the database at `path`, creating it and its schema if needed
    /// (WAL, full sync, untrusted schema). Fails with
    /// [`RegistryError::Corrupt`] on a schema version this build does not
    /// know.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let conn = Connection::open(path)?;
        // Functions with side effects are not callable from the schema
        // (a restore also refuses a database with schema objects of its
        // own: `foreign_schema`).
        conn.pragma_update(None, "trusted_schema", "OFF")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        match meta(&conn, "schema_version")?.as_deref() {
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
        Ok(SqliteStore { conn })
    }

    /// Writes `raw` as a new SQLite registry at `to` (a backup's copy of
    /// whichever store the daemon uses).
    pub fn write_snapshot(to: &Path, raw: &RawState) -> Result<(), RegistryError> {
        let mut s = SqliteStore::open(to)?;
        let tx = s.conn.transaction()?;
        for r in &raw.rows {
            tx.execute(
                "INSERT INTO key_records (id, name, record, gen, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.id, r.name, r.record, r.gen as i64, r.mac],
            )?;
        }
        for i in &raw.intents {
            tx.execute(
                "INSERT INTO intents (hsm_id, label, mac) VALUES (?1, ?2, ?3)",
                params![i.hsm_id, i.label, i.mac],
            )?;
        }
        set_meta(&tx, "generation", &raw.generation.to_string())?;
        if let Some(m) = &raw.manifest {
            set_meta(&tx, "manifest", m)?;
        }
        if let Some(m) = &raw.manifest_mac {
            set_meta(&tx, "manifest_mac", m)?;
        }
        tx.commit()?;
        // One self-contained file: no WAL beside it.
        s.conn
            .pragma_update(None, "journal_mode", "DELETE")
            .map_err(RegistryError::from)
    }
}

impl RegistryStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn load(&mut self) -> Result<RawState, RegistryError> {
        // One read transaction: the rows and the manifest are of one moment.
        let tx = self.conn.transaction()?;
        let generation = parse_gen(meta(&tx, "generation")?);
        let manifest = meta(&tx, "manifest")?;
        let manifest_mac = meta(&tx, "manifest_mac")?;
        let mut rows = Vec::new();
        {
            let mut stmt =
                tx.prepare("SELECT id, name, record, gen, mac FROM key_records ORDER BY name")?;
            let it = stmt.query_map([], |r| {
                Ok(RawRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    record: r.get(2)?,
                    gen: r.get::<_, i64>(3)? as u64,
                    mac: r.get(4)?,
                })
            })?;
            for row in it {
                rows.push(row?);
            }
        }
        let intents = intents(&tx)?;
        tx.commit()?;
        Ok(RawState {
            generation,
            manifest,
            manifest_mac,
            rows,
            intents,
        })
    }

    fn generation(&mut self) -> Result<u64, RegistryError> {
        Ok(parse_gen(meta(&self.conn, "generation")?))
    }

    fn commit(&mut self, c: &Commit<'_>) -> Result<(), RegistryError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found = parse_gen(meta(&tx, "generation")?);
        if found != c.prev_gen {
            return Err(RegistryError::Stale {
                expected: c.prev_gen,
                found,
            });
        }
        for row in c.rows {
            match row.kind {
                RowKind::New => {
                    let exists: Option<i64> = tx
                        .query_row(
                            "SELECT 1 FROM key_records WHERE name = ?1",
                            params![row.name],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if exists.is_some() {
                        return Err(RegistryError::AlreadyExists(row.name.to_string()));
                    }
                    tx.execute(
                        "INSERT INTO key_records (id, name, record, gen, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![row.id.as_slice(), row.name, row.record, c.gen as i64, row.mac],
                    )?;
                }
                RowKind::Update => {
                    let n = tx.execute(
                        "UPDATE key_records SET record = ?2, gen = ?3, mac = ?4 WHERE id = ?1",
                        params![row.id.as_slice(), row.record, c.gen as i64, row.mac],
                    )?;
                    if n != 1 {
                        return Err(RegistryError::Corrupt(format!(
                            "key {:?} has no row to update",
                            row.name
                        )));
                    }
                }
                RowKind::Replace => {
                    tx.execute(
                        "DELETE FROM key_records WHERE id = ?1",
                        params![row.id.as_slice()],
                    )?;
                    tx.execute(
                        "INSERT INTO key_records (id, name, record, gen, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![row.id.as_slice(), row.name, row.record, c.gen as i64, row.mac],
                    )?;
                }
            }
        }
        set_meta(&tx, "generation", &c.gen.to_string())?;
        set_meta(&tx, "manifest", c.manifest)?;
        set_meta(&tx, "manifest_mac", c.manifest_mac)?;
        tx.commit()?;
        Ok(())
    }

    fn put_intent(&mut self, i: &RawIntent) -> Result<(), RegistryError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO intents (hsm_id, label, mac) VALUES (?1, ?2, ?3)",
            params![i.hsm_id, i.label, i.mac],
        )?;
        Ok(())
    }

    fn clear_intent(&mut self, hsm_id: &[u8; 16]) -> Result<(), RegistryError> {
        self.conn.execute(
            "DELETE FROM intents WHERE hsm_id = ?1",
            params![hsm_id.as_slice()],
        )?;
        Ok(())
    }

    fn intents(&mut self) -> Result<Vec<RawIntent>, RegistryError> {
        intents(&self.conn)
    }

    fn foreign_schema(&mut self) -> Result<Vec<String>, RegistryError> {
        let mut stmt = self.conn.prepare("SELECT type, name FROM sqlite_master")?;
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
}

fn intents(conn: &Connection) -> Result<Vec<RawIntent>, RegistryError> {
    let mut stmt = conn.prepare("SELECT hsm_id, label, mac FROM intents ORDER BY hsm_id")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(RawIntent {
                hsm_id: r.get(0)?,
                label: r.get(1)?,
                mac: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
