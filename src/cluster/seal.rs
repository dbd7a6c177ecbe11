//! The cluster's seal files in the shared registry database (table
//! `seal_files`): one share set for every node, so that a rekey on one node
//! reaches every other node's next unseal. What may be trusted in it, and
//! why a writer of the database cannot open a node with it, is in
//! [`SharedSeal`]'s contract and docs/CLUSTER.md ("The seal").

use std::sync::Mutex;

use postgres::error::SqlState;
use postgres::Client;

use crate::core::registry::postgres::{clear_tls_errors, close_off_runtime, pg_err, PgTarget};
use crate::core::registry::RegistryError;
use crate::seal::store::{SealFile, SharedFiles, SharedSeal, StoreError};
use crate::sync::Recover;

/// The advisory lock ceremonies that touch the token's PINs take.
const CEREMONY_LOCK: i64 = 0x6b77_0003;
/// How long a ceremony waits for another node's before giving up.
const LOCK_WAIT: &str = "15s";

const CURRENT: &str = "current";
const PENDING: &str = "pending";

/// [`SharedSeal`] on PostgreSQL.
pub struct PgSeal {
    target: PgTarget,
    node_id: String,
    client: Mutex<Option<Client>>,
}

impl Drop for PgSeal {
    fn drop(&mut self) {
        if let Some(c) = self.slot().take() {
            close_off_runtime(c);
        }
    }
}

fn shared_err(e: RegistryError) -> StoreError {
    match e {
        RegistryError::Unreachable { why, .. } => StoreError::SharedUnreachable(why),
        other => StoreError::SharedCorrupt(other.to_string()),
    }
}

fn pg(e: postgres::Error) -> StoreError {
    shared_err(pg_err(e))
}

fn body(file: &SealFile) -> Result<String, StoreError> {
    serde_json::to_string_pretty(file).map_err(|e| StoreError::SharedCorrupt(e.to_string()))
}

impl PgSeal {
    /// The seal files in `target`'s database; `node_id` is recorded as the
    /// writer of each file this node stores. No connection is made until the
    /// first use.
    pub fn new(target: PgTarget, node_id: &str) -> Self {
        PgSeal {
            target,
            node_id: node_id.to_string(),
            client: Mutex::new(None),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.client.locked()
    }

    /// Runs `f` on the connection (made again if it was lost).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.slot();
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            if let Some(old) = slot.take() {
                close_off_runtime(old);
            }
            *slot = Some(self.target.connect().map_err(shared_err)?);
        }
        let Some(c) = slot.as_mut() else {
            return Err(StoreError::SharedUnreachable("no connection".into()));
        };
        clear_tls_errors();
        let out = f(c);
        if matches!(out, Err(StoreError::SharedUnreachable(_))) {
            if let Some(old) = slot.take() {
                close_off_runtime(old);
            }
        }
        out
    }

    fn upsert(
        c: &mut impl postgres::GenericClient,
        slot: &str,
        file_body: &str,
        set_id: &str,
        node: &str,
    ) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO seal_files (slot, set_id, body, written_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (slot) DO UPDATE SET set_id = excluded.set_id, body = excluded.body,
                 written_by = excluded.written_by, written_at = now()",
            &[&slot, &set_id, &file_body, &node],
        )
        .map_err(pg)?;
        Ok(())
    }
}

/// Parses a stored file; a body whose set is not its row's is an edit.
fn parse(slot: &str, set_id: &str, text: &str) -> Result<SealFile, StoreError> {
    let file: SealFile = serde_json::from_str(text)
        .map_err(|e| StoreError::SharedCorrupt(format!("the {slot} seal file: {e}")))?;
    if file.set_id != set_id {
        return Err(StoreError::SharedCorrupt(format!(
            "the {slot} seal file is of share set {} but its row says {set_id}",
            file.set_id
        )));
    }
    Ok(file)
}

/// The ceremony lock: a session advisory lock on a connection of its own,
/// released when the guard drops (or when this process dies with it).
struct CeremonyLock(Option<Client>);

impl Drop for CeremonyLock {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&CEREMONY_LOCK]);
            close_off_runtime(c);
        }
    }
}

impl SharedSeal for PgSeal {
    fn load(&self) -> Result<SharedFiles, StoreError> {
        self.with(|c| {
            let rows = c
                .query("SELECT slot, set_id, body FROM seal_files", &[])
                .map_err(pg)?;
            let mut files = SharedFiles::default();
            for r in rows {
                let get = |i| -> Result<String, StoreError> {
                    r.try_get(i)
                        .map_err(|e| StoreError::SharedCorrupt(format!("seal_files: {e}")))
                };
                let (slot, set_id, text) = (get(0)?, get(1)?, get(2)?);
                let file = parse(&slot, &set_id, &text)?;
                match slot.as_str() {
                    CURRENT => files.current = Some(file),
                    PENDING => files.pending = Some(file),
                    other => {
                        return Err(StoreError::SharedCorrupt(format!(
                            "seal_files has a row {other:?}"
                        )))
                    }
                }
            }
            Ok(files)
        })
    }

    fn save_current(&self, file: &SealFile) -> Result<(), StoreError> {
        let text = body(file)?;
        self.with(|c| Self::upsert(c, CURRENT, &text, &file.set_id, &self.node_id))
    }

    fn save_pending(&self, file: &SealFile) -> Result<(), StoreError> {
        let text = body(file)?;
        self.with(|c| {
            let n = c
                .execute(
                    "INSERT INTO seal_files (slot, set_id, body, written_by) VALUES ('pending', $1, $2, $3)
                     ON CONFLICT (slot) DO UPDATE SET body = excluded.body,
                         written_by = excluded.written_by, written_at = now()
                     WHERE seal_files.set_id = excluded.set_id",
                    &[&file.set_id, &text, &self.node_id],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::SharedBusy(
                    "another share set's rekey is pending (a commit that was interrupted): unseal any node once to settle it, then rekey".into(),
                ));
            }
            Ok(())
        })
    }

    fn promote_pending(&self, set_id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(pg)?;
            let row = tx
                .query_opt(
                    "SELECT set_id, body FROM seal_files WHERE slot = 'pending' FOR UPDATE",
                    &[],
                )
                .map_err(pg)?;
            let Some(row) = row else {
                return Err(StoreError::SharedBusy(format!(
                    "the pending seal file of share set {set_id} is gone"
                )));
            };
            let (found, text): (String, String) = (
                row.try_get(0)
                    .map_err(|e| StoreError::SharedCorrupt(e.to_string()))?,
                row.try_get(1)
                    .map_err(|e| StoreError::SharedCorrupt(e.to_string()))?,
            );
            if found != set_id {
                return Err(StoreError::SharedBusy(format!(
                    "the pending seal file is of share set {found}, not {set_id}"
                )));
            }
            parse(PENDING, &found, &text)?;
            Self::upsert(&mut tx, CURRENT, &text, set_id, &self.node_id)?;
            tx.execute("DELETE FROM seal_files WHERE slot = 'pending'", &[])
                .map_err(pg)?;
            tx.commit().map_err(pg)
        })
    }

    fn discard_pending(&self, set_id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM seal_files WHERE slot = 'pending' AND set_id = $1",
                &[&set_id],
            )
            .map_err(pg)?;
            Ok(())
        })
    }

    fn lock(&self) -> Result<Box<dyn Send>, StoreError> {
        let mut c = self.target.connect().map_err(shared_err)?;
        let taken = c
            .batch_execute(&format!("SET lock_timeout = '{LOCK_WAIT}'"))
            .and_then(|()| c.execute("SELECT pg_advisory_lock($1)", &[&CEREMONY_LOCK]));
        match taken {
            Ok(_) => Ok(Box::new(CeremonyLock(Some(c)))),
            Err(e) => {
                let err = if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                    StoreError::SharedBusy(format!(
                        "another node's ceremony (an unseal or a rekey commit) held the cluster's ceremony lock for {LOCK_WAIT}; retry"
                    ))
                } else {
                    pg(e)
                };
                close_off_runtime(c);
                Err(err)
            }
        }
    }
}
