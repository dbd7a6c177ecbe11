//! The offline restore: a quorum's shares open a backup, everything in it is
//! verified before anything is written, the state goes into an empty state
//! directory (and the token's files into an empty token store), and the
//! audit trail kept since the backup is replayed so that what was
//! destroyed, revoked, disabled or held after the backup stays so.
//!
//! Order, each step refusing before anything is written when it fails:
//! the header's deployment against the target; an empty target; the shares
//! against the backup's set and check value; the payload (age); the seal
//! file's MAC and keyring; the registry (every record and the manifest,
//! under the keyring's registry key); the trail (chain, checkpoint
//! signatures, the link to the backup's chain head, every ledger line's
//! MAC). Then: files, a login with the set's derived PIN, the replay
//! (destroying the token objects a destruction removed), the generation
//! counter, and a new audit log whose first event records the restore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::format::{self, Header};
use super::ledger;
use super::replay::{check_audit_key, Replay};
use super::token;
use super::trail::{self, Trail};
use super::{BackupError, AUDIT_KEY_ENTRY, REGISTRY_ENTRY, SEAL_ENTRY};
use crate::audit::{Audit, AuditConfig, Event, EventKind, Outcome};
use crate::config::TokenSelector;
use crate::core::model::KeyRecord;
use crate::core::registry::Registry;
use crate::hsm::profile::HsmProfile;
use crate::hsm::Hsm;
use crate::seal::keys::UnsealKey;
use crate::seal::store::{RestoreWindow, SealFile, SealStore};

/// Where the restored state goes.
pub struct Target {
    /// The state directory restored into (an empty one).
    pub state_dir: PathBuf,
    /// The restored deployment's audit log: a new one is started there.
    pub audit: AuditConfig,
    /// The profile of the token restored to.
    pub profile: HsmProfile,
    /// The PKCS#11 module of that token.
    pub module: PathBuf,
    /// Which token of the module.
    pub token: TokenSelector,
    /// The token module's configuration file, when not the environment's
    /// (a dev directory's).
    pub token_conf: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The backup's id: hex SHA-256 of the whole file.
    pub backup: String,
    /// When the backup was taken (Unix seconds).
    pub backup_created_at: i64,
    /// The registry generation the backup holds.
    pub backup_generation: u64,
    /// The registry generation after the replay (also written to the token's
    /// counter).
    pub generation: u64,
    /// Keys in the restored registry.
    pub keys: usize,
    /// Token files put back (0 for a vendor token).
    pub token_files: usize,
    /// The trail replayed: (files, its first seq, its last seq).
    pub trail: Option<(usize, u64, u64)>,
    /// What the replay changed, one line each.
    pub replayed: Vec<String>,
    /// Token objects destroyed because the trail records a destruction.
    pub destroyed_on_token: Vec<String>,
    /// Keys (and versions) whose material the backup cannot bring back:
    /// created after it, by name.
    pub lost: Vec<String>,
    /// Versions the registry names that the token lacks (a hardware HSM
    /// restored from an older backup of its own, or a damaged token).
    pub missing_on_token: Vec<String>,
    /// No trail: custodians must accept the window at unseal.
    pub window: bool,
    /// When the trail's last line was written: nothing after it is known.
    pub trail_ends: Option<String>,
}

pub(super) fn refused(msg: impl Into<String>) -> BackupError {
    BackupError::Refused(msg.into())
}

pub(super) fn io(what: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io(format!("{}: {e}", what.display()))
}

/// The unseal key from a quorum of shares of the backup's set, confirmed
/// against its check value before anything is decrypted.
fn quorum(header: &Header, shares: &[Zeroizing<String>]) -> Result<UnsealKey, BackupError> {
    let d = &header.deployment;
    let check = hex::decode(&d.check).map_err(|_| refused("backup header: check is not hex"))?;
    let spec = crate::seal::offline::SetSpec {
        set_id: set_bytes(&d.set_id)?,
        threshold: d.threshold,
        check: &check,
    };
    crate::seal::offline::quorum(shares, &spec).map_err(|e| refused(e.to_string()))
}

fn set_bytes(set: &str) -> Result<[u8; 4], BackupError> {
    hex::decode(set)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| refused("backup header: set_id is not 8 hex digits"))
}

/// Whether `dir` holds nothing, an empty software token directory inside
/// it aside (the packaged SoftHSM keeps its tokens in the state directory).
fn dir_is_empty(dir: &Path, store: &token::TokenStore) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    entries.filter_map(Result::ok).all(|e| match store {
        token::TokenStore::Dir(t) => e.path() == *t && token::is_empty(store),
        _ => false,
    })
}

/// Restores `file` into `target`. `replay`: the audit trail kept since the
/// backup (oldest file first); empty means none, and the restored seal then
/// asks custodians to accept the window at unseal.
pub fn restore(
    file: &[u8],
    shares: &[Zeroizing<String>],
    target: &Target,
    replay: &[PathBuf],
    now: i64,
) -> Result<Report, BackupError> {
    let (header, _) = format::read_header(file)?;
    // 1. The deployment and the target.
    let store = check_target(&header, target)?;
    // 2. The quorum, then the payload.
    let key = quorum(&header, shares)?;
    let set_id = set_bytes(&header.deployment.set_id)?;
    let identity = key
        .backup_identity(&set_id)
        .ok_or_else(|| BackupError::Io("deriving the backup key".into()))?;
    let (header, entries) = format::open(file, &identity)?;
    let payload = Payload(&entries);
    // 3. The seal file.
    let seal = payload.seal(&header, &key)?;
    let keyring = seal
        .open_keyring(&key)
        .map_err(|e| refused(format!("the backup's seal.json: {e}")))?;
    let rkey: &[u8; 32] = &keyring.registry_key;
    let scratch = prepare_state_dir(&target.state_dir)?;
    // 4. The registry, verified where it will live (removed on refusal).
    let cleanup = |e: BackupError| {
        for f in [REGISTRY_ENTRY, "registry.db-wal", "registry.db-shm"] {
            let _ = std::fs::remove_file(target.state_dir.join(f));
        }
        e
    };
    let (registry, loaded) = payload
        .registry(&target.state_dir, &header, rkey)
        .map_err(cleanup)?;
    // 5. The trail: every ledger line above the backup's generation.
    let trail = match replay {
        [] => None,
        files => {
            let audit_key = payload.get(AUDIT_KEY_ENTRY).ok_or_else(|| {
                cleanup(refused("--replay-audit: the backup holds no audit signing key (taken before the first unseal)"))
            })?;
            Some(trail::read_trail(&header, files, audit_key, scratch.path()).map_err(cleanup)?)
        }
    };
    let after = After::read(trail.as_ref(), rkey, &header).map_err(cleanup)?;
    let audit_dir = check_empty(&store, target, &header, &payload).map_err(cleanup)?;

    // Everything verified: write. A failure from here on empties the
    // target again (both were empty before), so the restore can be re-run.
    let result = Writing {
        file,
        target,
        header: &header,
        payload: &payload,
        store: &store,
        key: &key,
        set_id,
        registry: &registry,
        backed_up: &loaded.keys,
        rkey,
        trail: trail.as_ref(),
        trail_files: replay.len(),
        now,
    }
    .write(seal, after);
    if result.is_err() {
        undo(&target.state_dir, &store);
        if !audit_dir.starts_with(&target.state_dir) {
            undo(&audit_dir, &token::TokenStore::Vendor(String::new()));
        }
    }
    result
}

/// Refuses a backup of another deployment, or a target that is not empty;
/// returns where the token's files go.
fn check_target(header: &Header, target: &Target) -> Result<token::TokenStore, BackupError> {
    let d = &header.deployment;
    match &target.token {
        TokenSelector::Label(l) if *l != d.token_label => {
            return Err(refused(format!(
                "this is a backup of another deployment: its token is labelled {:?}, this configuration selects {l:?}",
                d.token_label
            )))
        }
        TokenSelector::Serial(s) if *s != d.token_serial => {
            return Err(refused(format!(
                "this is a backup of another deployment: its token's serial is {:?}, this configuration selects {s:?}",
                d.token_serial
            )))
        }
        _ => {}
    }
    if target.profile.name != d.profile {
        return Err(refused(format!(
            "the backup was taken on a {} token; this configuration's profile is {}",
            d.profile, target.profile.name
        )));
    }
    let store = token::locate(&target.profile, target.token_conf.as_deref())?;
    if !dir_is_empty(&target.state_dir, &store) {
        return Err(refused(format!(
            "the state directory {} is not empty: a restore goes into an empty one (move the old state aside first)",
            target.state_dir.display()
        )));
    }
    Ok(store)
}

/// Makes the state directory (mode 0700) and a scratch directory in it.
fn prepare_state_dir(dir: &Path) -> Result<tempfile::TempDir, BackupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(dir)
        .map_err(io(dir))
}

/// The opened backup's entries.
struct Payload<'a>(&'a [format::Entry]);

impl Payload<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.data.as_slice())
    }

    /// The seal file, of the header's set, its MAC verified.
    fn seal(&self, header: &Header, key: &UnsealKey) -> Result<SealFile, BackupError> {
        let d = &header.deployment;
        let seal: SealFile = serde_json::from_slice(
            self.get(SEAL_ENTRY)
                .ok_or_else(|| refused("the backup holds no seal.json"))?,
        )
        .map_err(|e| refused(format!("the backup's seal.json: {e}")))?;
        if seal.set_id != d.set_id || seal.check != d.check {
            return Err(refused(
                "the backup's seal.json is of another set than its header",
            ));
        }
        seal.verify(key)
            .map_err(|e| refused(format!("the backup's seal.json: {e}")))?;
        Ok(seal)
    }

    /// The registry, written where it will live and verified there: no
    /// foreign schema, every record and the manifest under `rkey`, at the
    /// header's generation.
    fn registry(
        &self,
        state_dir: &Path,
        header: &Header,
        rkey: &[u8; 32],
    ) -> Result<(Registry, crate::core::registry::Loaded), BackupError> {
        let db_path = state_dir.join(REGISTRY_ENTRY);
        std::fs::write(
            &db_path,
            self.get(REGISTRY_ENTRY)
                .ok_or_else(|| refused("the backup holds no registry"))?,
        )
        .map_err(io(&db_path))?;
        let bad = |e: &dyn std::fmt::Display| refused(format!("the backup's registry: {e}"));
        let registry = Registry::open(&db_path).map_err(|e| bad(&e))?;
        let foreign = registry.foreign_schema().map_err(|e| bad(&e))?;
        if !foreign.is_empty() {
            return Err(refused(format!(
                "the backup's registry has schema objects Keywarden never makes ({}): refused",
                foreign.join(", ")
            )));
        }
        let loaded = registry.load_verified(rkey, None).map_err(|e| bad(&e))?;
        if let Some(g) = &loaded.global {
            return Err(refused(format!(
                "the backup's registry does not verify: {g}"
            )));
        }
        if let Some((k, what)) = loaded.tampered.first() {
            return Err(refused(format!("the backup's registry: key {k}: {what}")));
        }
        if loaded.generation != header.generation {
            return Err(refused(format!(
                "the backup's registry is at generation {}, its header says {}",
                loaded.generation, header.generation
            )));
        }
        Ok((registry, loaded))
    }

    fn token_entries(&self) -> Vec<(&str, &[u8])> {
        self.0
            .iter()
            .filter(|e| e.name.starts_with(token::ENTRY_PREFIX))
            .map(|e| (e.name.as_str(), e.data.as_slice()))
            .collect()
    }
}

/// What the trail says happened after the backup.
struct After {
    /// Each key's newest record, from lines whose MAC verified.
    latest: BTreeMap<[u8; 16], KeyRecord>,
    /// The highest generation the lost host is known to have reached.
    known_generation: u64,
}

impl After {
    fn read(trail: Option<&Trail>, rkey: &[u8; 32], header: &Header) -> Result<Self, BackupError> {
        let lines = trail.map(|t| t.lines.as_slice()).unwrap_or_default();
        let entries = ledger::latest(lines, rkey, header.generation)
            .map_err(|e| refused(format!("--replay-audit: {e}")))?;
        let known_generation = entries
            .values()
            .map(|e| e.generation)
            .max()
            .unwrap_or(header.generation);
        Ok(After {
            latest: entries.into_iter().map(|(id, e)| (id, e.record)).collect(),
            known_generation,
        })
    }
}

/// The token store and the audit log's directory must be empty too (both
/// may lie outside the state directory); returns the log's directory.
fn check_empty(
    store: &token::TokenStore,
    target: &Target,
    header: &Header,
    payload: &Payload<'_>,
) -> Result<PathBuf, BackupError> {
    if !token::is_empty(store) {
        return Err(refused(format!(
            "the token's storage ({store:?}) is not empty: a restore never writes over a live token"
        )));
    }
    let audit_dir = target
        .audit
        .file
        .parent()
        .unwrap_or(&target.state_dir)
        .to_path_buf();
    if !audit_dir.starts_with(&target.state_dir) && !dir_is_empty(&audit_dir, store) {
        return Err(refused(format!(
            "the audit log's directory {} is not empty: a restore starts the restored deployment's log there",
            audit_dir.display()
        )));
    }
    if !header.token_files && !payload.token_entries().is_empty() {
        return Err(refused(
            "the backup's header says it holds no token, but it does",
        ));
    }
    Ok(audit_dir)
}

/// Everything verified, what the writing steps share.
struct Writing<'a> {
    file: &'a [u8],
    target: &'a Target,
    header: &'a Header,
    payload: &'a Payload<'a>,
    store: &'a token::TokenStore,
    key: &'a UnsealKey,
    set_id: [u8; 4],
    registry: &'a Registry,
    backed_up: &'a [KeyRecord],
    rkey: &'a [u8; 32],
    trail: Option<&'a Trail>,
    trail_files: usize,
    now: i64,
}

impl Writing<'_> {
    /// Writes the files and replays the trail on the token (6), writes
    /// the seal file (7) and the restore's own record, the first of the
    /// new log (8).
    fn write(&self, mut seal: SealFile, after: After) -> Result<Report, BackupError> {
        let header = self.header;
        let mut report = Report {
            backup: hex::encode(Sha256::digest(self.file)),
            backup_created_at: header.created_at,
            backup_generation: header.generation,
            trail: self
                .trail
                .map(|t| (self.trail_files, t.first_seq, t.last_seq)),
            trail_ends: self.trail.map(|t| t.last_time.clone()),
            window: self.trail.is_none(),
            ..Report::default()
        };
        report.token_files = token::put_back(self.store, &self.payload.token_entries())?;
        if let Some(k) = self.payload.get(AUDIT_KEY_ENTRY) {
            let dir = self
                .target
                .audit
                .file
                .parent()
                .unwrap_or(&self.target.state_dir);
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let p = dir.join(crate::audit::PUBLIC_KEY_FILE);
            std::fs::write(&p, k).map_err(io(&p))?;
        }
        let audit = self.replay_on_token(after, &mut report)?;
        // 7. The seal file: a restore without the trail asks for acceptance.
        if report.window {
            seal.restore_window = Some(RestoreWindow {
                backup: report.backup.clone(),
                backup_created_at: header.created_at,
                generation: header.generation,
                restored_at: self.now,
            });
        }
        seal.authenticate(self.key)
            .map_err(|e| BackupError::Io(format!("seal.json: {e}")))?;
        SealStore::new(&self.target.state_dir)
            .save(&seal)
            .map_err(|e| BackupError::Io(format!("seal.json: {e}")))?;
        self.record(&audit, &report)?;
        Ok(report)
    }

    /// 6. The token: log in with the set's PIN, prove the audit key, replay.
    fn replay_on_token(&self, after: After, report: &mut Report) -> Result<Audit, BackupError> {
        let d = &self.header.deployment;
        let hsm = crate::hsm::pkcs11::Pkcs11Hsm::connect(
            &self.target.module,
            &self.target.token,
            self.target.profile.clone(),
            1,
        )
        .map_err(|e| refused(format!("the restored token: {e}")))?;
        if self.header.token_files && hsm.token().serial != d.token_serial {
            return Err(refused(format!(
                "the restored token's serial is {:?}, the backup's {:?}",
                hsm.token().serial,
                d.token_serial
            )));
        }
        hsm.login(&self.key.user_pin(&self.set_id)).map_err(|e| {
            refused(format!(
                "the token does not accept the PIN of set {}: {e} (for a hardware HSM, restore the vendor's backup of the token first)",
                d.set_id
            ))
        })?;
        let replay = Replay {
            hsm: &hsm,
            registry: self.registry,
            rkey: self.rkey,
            backed_up: self.backed_up,
            target: self.target,
            header: self.header,
            trail: self.trail,
            known_generation: after.known_generation,
        };
        let result = check_audit_key(&hsm, self.payload.get(AUDIT_KEY_ENTRY))
            .and_then(|()| replay.run(after.latest, report));
        hsm.logout();
        result
    }

    /// 8. The restore's own record opens the new log.
    fn record(&self, audit: &Audit, report: &Report) -> Result<(), BackupError> {
        let header = self.header;
        let detail = json!({
            "backup": report.backup,
            "backup_created_at": header.created_at,
            "backup_generation": header.generation,
            "backup_chain_head": header.chain_head,
            "generation": report.generation,
            "trail": report.trail.map(|(files, first, last)| json!({"files": files, "first_seq": first, "last_seq": last})),
            "replayed": report.replayed,
            "destroyed_on_token": report.destroyed_on_token,
            "lost": report.lost,
            "missing_on_token": report.missing_on_token,
            "window_to_accept": report.window,
            "trail_ends": report.trail_ends,
        });
        audit.note_registry_generation(report.generation);
        audit
            .record(Event::new(EventKind::Restore, Outcome::Ok, detail).fields())
            .map_err(BackupError::Audit)?;
        Ok(())
    }
}

/// Empties what a failed restore wrote: the state directory's contents and
/// the token store's (an empty token directory inside the state directory
/// stays).
fn undo(state_dir: &Path, store: &token::TokenStore) {
    let clear = |dir: &Path, keep: Option<&Path>| {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if Some(p.as_path()) == keep {
                    continue;
                }
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    };
    match store {
        token::TokenStore::Dir(d) => {
            clear(d, None);
            clear(state_dir, Some(d));
        }
        token::TokenStore::Sqlite(db) => {
            let _ = std::fs::remove_file(db);
            clear(state_dir, None);
        }
        token::TokenStore::Vendor(_) => clear(state_dir, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{KeyState, VersionState};
    use std::collections::BTreeSet;

    fn rec(versions: &[(u32, u8, VersionState)]) -> KeyRecord {
        KeyRecord::sample("patients", 1, versions)
    }

    #[test]
    fn versions_made_after_the_backup_are_lost_and_the_backup_state_returns() {
        use VersionState::*;
        let on_token: BTreeSet<[u8; 16]> = [[1; 16], [3; 16]].into();
        let mut lost = Vec::new();
        // Rotated after the backup: v2 is not on the token; it stays as a
        // destroyed version (its number is never reused); v1 is active again.
        let r = ledger::fit_to_token(
            rec(&[(1, 1, Deactivated), (2, 2, Active)]),
            true,
            &on_token,
            &mut lost,
        )
        .unwrap();
        assert_eq!(
            r.versions.iter().map(|v| v.state).collect::<Vec<_>>(),
            vec![Active, Destroyed]
        );
        assert_eq!(
            lost,
            vec!["patients/v2 (made after the backup)".to_string()]
        );
        // A version below the minimum decrypt version never comes back.
        lost.clear();
        let mut retired = rec(&[(1, 1, Deactivated), (2, 2, Active)]);
        retired.min_decrypt_version = 2;
        let r = ledger::fit_to_token(retired, true, &on_token, &mut lost).unwrap();
        assert!(r.current().is_none());
        assert!(
            lost.iter()
                .any(|l| l.contains("no active version survives")),
            "{lost:?}"
        );
        // Nor does a compromised one.
        lost.clear();
        let r = ledger::fit_to_token(
            rec(&[(1, 1, Compromised), (2, 2, Active)]),
            true,
            &on_token,
            &mut lost,
        )
        .unwrap();
        assert!(r.current().is_none());
        // Created after the backup: nothing survives, reported by name.
        lost.clear();
        assert!(
            ledger::fit_to_token(rec(&[(1, 9, Active)]), false, &on_token, &mut lost).is_none()
        );
        assert_eq!(
            lost,
            vec!["patients (created after the backup)".to_string()]
        );
        // Destroyed keys are kept (a tombstone), whether on the token or not.
        lost.clear();
        let mut destroyed = rec(&[(1, 1, Destroyed), (2, 9, Destroyed)]);
        destroyed.state = KeyState::Destroyed;
        let r = ledger::fit_to_token(destroyed, false, &on_token, &mut lost).unwrap();
        assert_eq!(r.versions.len(), 2);
        assert!(lost.is_empty());
    }

    #[test]
    fn an_empty_token_directory_inside_the_state_directory_counts_as_empty() {
        let t = tempfile::tempdir().unwrap();
        let tokens = t.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let store = token::TokenStore::Dir(tokens.clone());
        assert!(dir_is_empty(t.path(), &store));
        std::fs::write(tokens.join("x"), b"x").unwrap();
        assert!(!dir_is_empty(t.path(), &store));
        std::fs::remove_file(tokens.join("x")).unwrap();
        std::fs::write(t.path().join("registry.db"), b"x").unwrap();
        assert!(!dir_is_empty(t.path(), &store));
        undo(t.path(), &store);
        assert!(dir_is_empty(t.path(), &store));
        assert!(tokens.is_dir(), "the token directory itself stays");
    }
}
