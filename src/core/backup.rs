//! The daemon's side of a backup: one consistent snapshot of the registry
//! (SQLite's online backup), the seal file, the audit chain's head and the
//! software token's files, taken while no key change and no ceremony can
//! run, encrypted to the deployment's backup recipient.

use crate::sync::Recover;
use std::path::Path;

use serde_json::json;

use super::{CoreError, CoreResult, Keywarden};
use crate::audit::{EventKind, Outcome};
use crate::backup::format::{self, ChainHead, Deployment, Entry, Header};
use crate::backup::token::{self, TokenStore};
use crate::backup::{BackupError, AUDIT_KEY_ENTRY, MANIFEST_ENTRY, REGISTRY_ENTRY, SEAL_ENTRY};

/// A backup taken: the file's bytes and its header.
pub struct Taken {
    /// The clear header written at the start of the file.
    pub header: Header,
    /// The whole backup file.
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`: the backup's id.
    pub id: String,
}

impl Keywarden {
    /// Takes a backup. `state_dir` gets a private scratch directory for
    /// the SQLite copies.
    pub fn backup(&self, store: &TokenStore, state_dir: &Path) -> CoreResult<Taken> {
        let scratch = tempfile::Builder::new()
            .prefix(".backup-")
            .tempdir_in(state_dir)
            .map_err(|e| CoreError::Backup(BackupError::Io(format!("scratch directory: {e}"))))?;
        // Key changes first, then ceremonies (the order every writer takes).
        let _w = self.writes.locked();
        let snap = self.seal.quiesced(|q| {
            let file = q.file.ok_or(BackupError::Uninitialized)?;
            let logged_in = q.logged_in;
            if q.rekey_pending {
                return Err(BackupError::RekeyPending);
            }
            if file.backup_recipient.is_empty() {
                return Err(BackupError::NoRecipient);
            }
            // Only to a recipient a quorum verified in this process: a
            // sealed daemon reads seal.json unverified.
            match q.verified_recipient {
                None => return Err(BackupError::RecipientUnverified),
                Some(r) if r != file.backup_recipient => return Err(BackupError::RecipientChanged),
                Some(_) => {}
            }
            let head = self.audit.head().map_err(BackupError::Audit)?;
            let db = scratch.path().join(REGISTRY_ENTRY);
            self.registry
                .snapshot_to(&db)
                .map_err(|e| BackupError::Io(format!("registry snapshot: {e}")))?;
            let registry = std::fs::read(&db).map_err(|e| BackupError::Io(e.to_string()))?;
            let seal =
                serde_json::to_vec_pretty(file).map_err(|e| BackupError::Io(e.to_string()))?;
            // Token objects are written outside these locks too (the
            // steps of a destruction, the audit key, the counter): hold the
            // HSM's own token-write lock while its files are copied.
            let mut tokens = Ok(Vec::new());
            self.hsm
                .with_token_writes_held(&mut || tokens = token::snapshot(store, scratch.path()));
            let tokens = tokens?;
            Ok((file.clone(), head, registry, seal, tokens, logged_in))
        });
        let (file, head, registry, seal, tokens, logged_in) = snap.map_err(CoreError::Backup)?;
        let generation = self.registry.generation_on_disk().map_err(super::reg_err)?;
        // What the token must hold: every version the registry names.
        let manifest = self.token_manifest(logged_in);
        drop(_w);

        let desc = self.hsm.token();
        let header = Header {
            created_at: self.now(),
            generation,
            deployment: Deployment {
                set_id: file.set_id.clone(),
                threshold: file.threshold,
                shares: file.shares,
                check: file.check.clone(),
                token_label: desc.label.clone(),
                token_serial: desc.serial.clone(),
                profile: self.hsm.profile_name().to_string(),
            },
            chain_head: head.map(|(seq, hash)| ChainHead { seq, hash }),
            sealed: !logged_in,
            token_files: !matches!(store, TokenStore::Vendor(_)),
            daemon_version: crate::VERSION.to_string(),
        };
        let mut entries = vec![
            Entry {
                name: SEAL_ENTRY.into(),
                data: seal,
            },
            Entry {
                name: REGISTRY_ENTRY.into(),
                data: registry,
            },
            Entry {
                name: MANIFEST_ENTRY.into(),
                data: manifest,
            },
        ];
        let key_file = self.audit.public_key_path();
        if let Some(k) = key_file.and_then(|p| std::fs::read(p).ok()) {
            entries.push(Entry {
                name: AUDIT_KEY_ENTRY.into(),
                data: k,
            });
        }
        entries.extend(tokens.into_iter().map(|(name, data)| Entry { name, data }));
        let bytes = format::seal(&header, &entries, &file.backup_recipient)
            .map_err(|e| CoreError::Backup(e.into()))?;
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let detail = json!({
            "backup": id,
            "bytes": bytes.len(),
            "generation": generation,
            "chain_head": header.chain_head,
            "sealed": header.sealed,
            "token_files": header.token_files,
        });
        // Durable before the file is handed out: a backup nobody can see in
        // the log is not made.
        self.audit
            .record(crate::audit::Event::new(EventKind::Backup, Outcome::Ok, detail).fields())
            .map_err(|e| CoreError::Backup(BackupError::Audit(e)))?;
        Ok(Taken { header, bytes, id })
    }

    /// The registry's versions as the token must hold them (JSON): a
    /// restore onto a hardware HSM checks the vendor-restored token by it.
    /// `loaded`: the registry is in memory (unsealed); a sealed daemon's
    /// manifest is empty and says so.
    fn token_manifest(&self, loaded: bool) -> Vec<u8> {
        let t = self.table();
        let mut keys: Vec<_> = t
            .by_name
            .values()
            .map(|r| {
                json!({
                    "name": r.name,
                    "key_id": r.id_text(),
                    "kind": r.kind.as_str(),
                    "versions": r.versions.iter().map(|v| json!({
                        "version": v.version,
                        "cka_id": v.hsm_id.to_hex(),
                        "state": v.state.as_str(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        keys.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let desc = self.hsm.token();
        serde_json::to_vec_pretty(&json!({
            "token_label": desc.label,
            "token_serial": desc.serial,
            "registry_loaded": loaded && t.global.is_none(),
            "keys": keys,
        }))
        .unwrap_or_default()
    }
}
