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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::format::{self, Header};
use super::ledger;
use super::token;
use super::{BackupError, AUDIT_KEY_ENTRY, REGISTRY_ENTRY, SEAL_ENTRY};
use crate::audit::{Audit, AuditConfig, Event, EventKind, Outcome};
use crate::config::TokenSelector;
use crate::core::model::{KeyRecord, KeyState, VersionState};
use crate::core::registry::Registry;
use crate::hsm::profile::HsmProfile;
use crate::hsm::{Hsm, HsmError, REGISTRY_COUNTER_LABEL};
use crate::seal::keys::UnsealKey;
use crate::seal::store::{RestoreWindow, SealFile, SealStore};

/// Where the restored state goes.
pub struct Target {
    pub state_dir: PathBuf,
    pub audit: AuditConfig,
    pub profile: HsmProfile,
    pub module: PathBuf,
    pub token: TokenSelector,
    /// The token module's configuration file, when not the environment's
    /// (a dev directory's).
    pub token_conf: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub backup: String,
    pub backup_created_at: i64,
    pub backup_generation: u64,
    pub generation: u64,
    pub keys: usize,
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

fn refused(msg: impl Into<String>) -> BackupError {
    BackupError::Refused(msg.into())
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
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

/// An audit line: its seq and its fields.
type AuditLine = (u64, Map<String, Value>);

/// A verified trail: every line, and where it ends.
struct Trail {
    lines: Vec<AuditLine>,
    first_seq: u64,
    last_seq: u64,
    /// Hex SHA-256 of the last line: the restored log continues the chain
    /// from it.
    last_hash: String,
    last_time: String,
}

/// Reads and verifies the trail: the hash chain and every checkpoint
/// signature (under the backup's audit key, which the restore later proves
/// is the token's), read once, so the lines used are the lines verified. It
/// must be linked to the backup: hold the backup's chain head (the same
/// line), or begin with the line right after it (a restored deployment's
/// log continues the chain from there). So a file that ends before the
/// backup, or another deployment's log, is refused.
fn read_trail(
    header: &Header,
    files: &[PathBuf],
    audit_key: &[u8],
    scratch: &Path,
) -> Result<Trail, BackupError> {
    let head = header.chain_head.as_ref().ok_or_else(|| {
        refused(
            "--replay-audit: the backup was taken without an audit log, so no trail can follow it",
        )
    })?;
    let key_path = scratch.join(AUDIT_KEY_ENTRY);
    std::fs::write(&key_path, audit_key).map_err(io(&key_path))?;
    let key = crate::audit::verify::load_public_key(&key_path)
        .map_err(|e| refused(format!("the backup's audit signing key: {e}")))?;
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        texts.push((f.as_path(), std::fs::read_to_string(f).map_err(io(f))?));
    }
    let refs: Vec<(&Path, &str)> = texts.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let report = crate::audit::verify::verify_texts(&refs, &key, true)
        .map_err(|b| refused(format!("--replay-audit: the trail does not verify: {b}")))?;
    let mut trail = Trail {
        lines: Vec::new(),
        first_seq: report.first_seq,
        last_seq: report.last_seq,
        last_hash: String::new(),
        last_time: String::new(),
    };
    let mut linked = false;
    for (_, text) in &refs {
        for line in text.lines() {
            let v: Map<String, Value> = serde_json::from_str(line)
                .map_err(|_| refused("--replay-audit: a line that does not parse"))?;
            let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let hash = hex::encode(Sha256::digest(line.as_bytes()));
            if seq == head.seq {
                if hash != head.hash {
                    return Err(refused(format!(
                        "--replay-audit: line {seq} of the trail is not the backup's chain head (another deployment's log, or an altered one)"
                    )));
                }
                linked = true;
            }
            if trail.lines.is_empty()
                && seq == head.seq.saturating_add(1)
                && v.get("prev").and_then(Value::as_str) == Some(head.hash.as_str())
            {
                linked = true;
            }
            trail.last_hash = hash;
            trail.last_time = v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            trail.lines.push((seq, v));
        }
    }
    if !linked {
        return Err(refused(format!(
            "--replay-audit: the trail (seq {} to {}) is not linked to the backup: it must hold the backup's chain head, seq {}, or start right after it; give the files from before the backup up to now",
            report.first_seq, report.last_seq, head.seq
        )));
    }
    Ok(trail)
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
    let d = &header.deployment;
    // 1. The deployment and the target.
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
    // 2. The quorum, then the payload.
    let key = quorum(&header, shares)?;
    let set_id = set_bytes(&d.set_id)?;
    let identity = key
        .backup_identity(&set_id)
        .ok_or_else(|| BackupError::Io("deriving the backup key".into()))?;
    let (header, entries) = format::open(file, &identity)?;
    let entry = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.data.as_slice())
    };
    // 3. The seal file.
    let mut seal: SealFile = serde_json::from_slice(
        entry(SEAL_ENTRY).ok_or_else(|| refused("the backup holds no seal.json"))?,
    )
    .map_err(|e| refused(format!("the backup's seal.json: {e}")))?;
    if seal.set_id != d.set_id || seal.check != d.check {
        return Err(refused(
            "the backup's seal.json is of another set than its header",
        ));
    }
    seal.verify(&key)
        .map_err(|e| refused(format!("the backup's seal.json: {e}")))?;
    let keyring = seal
        .open_keyring(&key)
        .map_err(|e| refused(format!("the backup's seal.json: {e}")))?;
    let rkey: &[u8; 32] = &keyring.registry_key;

    std::fs::create_dir_all(&target.state_dir).map_err(io(&target.state_dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&target.state_dir))?;
    }
    let scratch = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(&target.state_dir)
        .map_err(io(&target.state_dir))?;
    // 4. The registry, verified where it will live (removed on refusal).
    let db_path = target.state_dir.join(REGISTRY_ENTRY);
    let cleanup = |e: BackupError| {
        for f in [REGISTRY_ENTRY, "registry.db-wal", "registry.db-shm"] {
            let _ = std::fs::remove_file(target.state_dir.join(f));
        }
        e
    };
    std::fs::write(
        &db_path,
        entry(REGISTRY_ENTRY).ok_or_else(|| refused("the backup holds no registry"))?,
    )
    .map_err(io(&db_path))?;
    let registry = Registry::open(&db_path)
        .map_err(|e| cleanup(refused(format!("the backup's registry: {e}"))))?;
    let foreign = registry
        .foreign_schema()
        .map_err(|e| cleanup(refused(format!("the backup's registry: {e}"))))?;
    if !foreign.is_empty() {
        return Err(cleanup(refused(format!(
            "the backup's registry has schema objects Keywarden never makes ({}): refused",
            foreign.join(", ")
        ))));
    }
    let loaded = registry
        .load_verified(rkey, None)
        .map_err(|e| cleanup(refused(format!("the backup's registry: {e}"))))?;
    if let Some(g) = &loaded.global {
        return Err(cleanup(refused(format!(
            "the backup's registry does not verify: {g}"
        ))));
    }
    if let Some((k, what)) = loaded.tampered.first() {
        return Err(cleanup(refused(format!(
            "the backup's registry: key {k}: {what}"
        ))));
    }
    if loaded.generation != header.generation {
        return Err(cleanup(refused(format!(
            "the backup's registry is at generation {}, its header says {}",
            loaded.generation, header.generation
        ))));
    }
    // 5. The trail: every ledger line above the backup's generation.
    let trail = if replay.is_empty() {
        None
    } else {
        let audit_key = entry(AUDIT_KEY_ENTRY).ok_or_else(|| {
            cleanup(refused("--replay-audit: the backup holds no audit signing key (taken before the first unseal)"))
        })?;
        Some(read_trail(&header, replay, audit_key, scratch.path()).map_err(cleanup)?)
    };
    let lines = trail
        .as_ref()
        .map(|t| t.lines.as_slice())
        .unwrap_or_default();
    let entries_after = ledger::latest(lines, rkey, header.generation)
        .map_err(|e| cleanup(refused(format!("--replay-audit: {e}"))))?;
    // The highest generation the lost host is known to have reached, from
    // lines whose MAC verified only.
    let known_generation = entries_after
        .values()
        .map(|e| e.generation)
        .max()
        .unwrap_or(header.generation);
    let latest: BTreeMap<[u8; 16], KeyRecord> = entries_after
        .into_iter()
        .map(|(id, e)| (id, e.record))
        .collect();
    // The token store and the audit log's directory must be empty too
    // (both may lie outside the state directory).
    if !token::is_empty(&store) {
        return Err(cleanup(refused(format!(
            "the token's storage ({store:?}) is not empty: a restore never writes over a live token"
        ))));
    }
    let audit_dir = target
        .audit
        .file
        .parent()
        .unwrap_or(&target.state_dir)
        .to_path_buf();
    if !audit_dir.starts_with(&target.state_dir) && !dir_is_empty(&audit_dir, &store) {
        return Err(cleanup(refused(format!(
            "the audit log's directory {} is not empty: a restore starts the restored deployment's log there",
            audit_dir.display()
        ))));
    }
    if !header.token_files
        && entries
            .iter()
            .any(|e| e.name.starts_with(token::ENTRY_PREFIX))
    {
        return Err(cleanup(refused(
            "the backup's header says it holds no token, but it does",
        )));
    }

    // Everything verified: write. A failure from here on empties the
    // target again (both were empty before), so the restore can be re-run.
    let result = (|| -> Result<Report, BackupError> {
        let mut report = Report {
            backup: hex::encode(Sha256::digest(file)),
            backup_created_at: header.created_at,
            backup_generation: header.generation,
            trail: trail
                .as_ref()
                .map(|t| (replay.len(), t.first_seq, t.last_seq)),
            trail_ends: trail.as_ref().map(|t| t.last_time.clone()),
            window: replay.is_empty(),
            ..Report::default()
        };
        let token_entries: Vec<(&str, &[u8])> = entries
            .iter()
            .filter(|e| e.name.starts_with(token::ENTRY_PREFIX))
            .map(|e| (e.name.as_str(), e.data.as_slice()))
            .collect();
        report.token_files = token::put_back(&store, &token_entries)?;
        if let Some(k) = entry(AUDIT_KEY_ENTRY) {
            let dir = target.audit.file.parent().unwrap_or(&target.state_dir);
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let p = dir.join(crate::audit::PUBLIC_KEY_FILE);
            std::fs::write(&p, k).map_err(io(&p))?;
        }

        // 6. The token: log in with the set's PIN, replay, count.
        let hsm = crate::hsm::pkcs11::Pkcs11Hsm::connect(
            &target.module,
            &target.token,
            target.profile.clone(),
            1,
        )
        .map_err(|e| refused(format!("the restored token: {e}")))?;
        if header.token_files && hsm.token().serial != d.token_serial {
            return Err(refused(format!(
                "the restored token's serial is {:?}, the backup's {:?}",
                hsm.token().serial,
                d.token_serial
            )));
        }
        hsm.login(&key.user_pin(&set_id)).map_err(|e| {
            refused(format!(
                "the token does not accept the PIN of set {}: {e} (for a hardware HSM, restore the vendor's backup of the token first)",
                d.set_id
            ))
        })?;
        let result = check_audit_key(&hsm, entry(AUDIT_KEY_ENTRY)).and_then(|()| {
            replay_onto(
                &hsm,
                &registry,
                rkey,
                &loaded.keys,
                latest,
                target,
                &header,
                trail.as_ref(),
                known_generation,
                &mut report,
            )
        });
        hsm.logout();
        let audit = result?;

        // 7. The seal file: a restore without the trail asks for acceptance.
        if report.window {
            seal.restore_window = Some(RestoreWindow {
                backup: report.backup.clone(),
                backup_created_at: header.created_at,
                generation: header.generation,
                restored_at: now,
            });
        }
        seal.authenticate(&key)
            .map_err(|e| BackupError::Io(format!("seal.json: {e}")))?;
        SealStore::new(&target.state_dir)
            .save(&seal)
            .map_err(|e| BackupError::Io(format!("seal.json: {e}")))?;

        // 8. The restore's own record opens the new log.
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
            .map_err(|e| BackupError::Audit(e.to_string()))?;
        Ok(report)
    })();
    if result.is_err() {
        undo(&target.state_dir, &store);
        if !audit_dir.starts_with(&target.state_dir) {
            undo(&audit_dir, &token::TokenStore::Vendor(String::new()));
        }
    }
    result
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

/// The backup's audit signing key must be the restored token's own: a
/// backup assembled by someone who read `seal.json` could carry another
/// key, under which a trail of their making would verify. The token signs a
/// random challenge with its private key (never made here: a token without
/// one fails), and the signature must verify under the backup's key.
fn check_audit_key(hsm: &dyn Hsm, backed_up: Option<&[u8]>) -> Result<(), BackupError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let Some(text) = backed_up else {
        return Ok(());
    };
    let refuse = || {
        refused("the backup's audit signing key is not the restored token's: the backup was altered or assembled from another deployment")
    };
    let point = hex::decode(String::from_utf8_lossy(text).trim()).map_err(|_| refuse())?;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| refuse())?;
    let mut challenge = [0u8; 32];
    getrandom::fill(&mut challenge)
        .map_err(|e| BackupError::Io(format!("OS random generator: {e}")))?;
    let sig = hsm
        .sign_digest(&challenge)
        .map_err(|e| BackupError::Token(format!("the token's audit signing key: {e}")))?;
    let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|_| refuse())?;
    key.verify_prehash(&challenge, &sig).map_err(|_| refuse())
}

/// How far the restored generation jumps above the highest generation the
/// lost host is known to have reached: above anything it can have reached
/// after the trail ends (or after the backup, without a trail), so that no
/// copy of its registry passes the witnesses afterwards.
const GENERATION_JUMP: u64 = 1 << 32;

/// The replay proper, logged in. Returns the new audit log, which continues
/// the trail's hash chain (or, without one, the backup's chain head), so a
/// later restore can verify the old trail and the new log as one.
#[allow(clippy::too_many_arguments)]
fn replay_onto(
    hsm: &dyn Hsm,
    registry: &Registry,
    rkey: &[u8; 32],
    backed_up: &[KeyRecord],
    latest: BTreeMap<[u8; 16], KeyRecord>,
    target: &Target,
    header: &Header,
    trail: Option<&Trail>,
    known_generation: u64,
    report: &mut Report,
) -> Result<Audit, BackupError> {
    let hsm_err = |what: &str, e: HsmError| BackupError::Token(format!("{what}: {e}"));
    let on_token: BTreeSet<[u8; 16]> = hsm
        .list_cmks()
        .map_err(|e| hsm_err("listing the token's keys", e))?
        .into_iter()
        .map(|o| o.id.0)
        .collect();
    // The restored generation starts far above every generation the lost
    // host is known to have reached (the trail's verified lines, the HSM
    // counter's), since a forwarded trail lags the host: copies of its
    // registry, and ledger lines of the lost history, rank below
    // everything the restored deployment writes.
    let counter = hsm
        .read_counter(REGISTRY_COUNTER_LABEL)
        .map_err(|e| hsm_err("reading the generation counter", e))?
        .unwrap_or(0)
        .min(ledger::MAX_GENERATION);
    let base = known_generation
        .max(counter)
        .max(header.generation)
        .saturating_add(GENERATION_JUMP);
    registry
        .reseal(rkey, base, &[])
        .map_err(|e| BackupError::Io(format!("registry: {e}")))?;
    let resume = match (trail, &header.chain_head) {
        (Some(t), _) => Some((t.last_seq, t.last_hash.clone())),
        (None, Some(h)) => Some((h.seq, h.hash.clone())),
        (None, None) => None,
    };
    let audit = Audit::open_after(target.audit.clone(), resume)
        .map_err(|e| BackupError::Audit(e.to_string()))?;
    // The jump, as a ledger line: a later acknowledgement that reads this
    // log back sees these generations accounted for.
    audit
        .record_ledger(super::fold::reseal(header.generation, base, rkey))
        .map_err(|e| BackupError::Audit(e.to_string()))?;
    audit.note_registry_generation(registry.generation());
    let old: BTreeMap<[u8; 16], &KeyRecord> = backed_up.iter().map(|r| (r.id, r)).collect();
    for (id, rec) in latest {
        let before = old.get(&id).copied();
        let Some(rec) = ledger::fit_to_token(rec, before.is_some(), &on_token, &mut report.lost)
        else {
            continue;
        };
        if before == Some(&rec) {
            continue;
        }
        // Destroyed versions lose their token objects now, before anything
        // could serve them.
        for v in &rec.versions {
            let destroyed = v.state == VersionState::Destroyed || rec.state == KeyState::Destroyed;
            if destroyed && on_token.contains(&v.hsm_id.0) {
                match hsm.destroy_cmk(&v.hsm_id) {
                    Ok(()) | Err(HsmError::ObjectNotFound(_)) => report.destroyed_on_token.push(
                        format!("{}/v{} ({})", rec.name, v.version, v.hsm_id.to_hex()),
                    ),
                    Err(e) => return Err(hsm_err("destroying a destroyed key's object", e)),
                }
            }
        }
        if let Some(what) = ledger::describe_change(before, &rec) {
            report.replayed.push(what);
        }
        let next = registry.generation() + 1;
        audit
            .record_ledger(
                ledger::line(&rec, next, rkey).map_err(|e| BackupError::Io(e.to_string()))?,
            )
            .map_err(|e| BackupError::Audit(e.to_string()))?;
        registry
            .put(&rec, rkey, before.is_none())
            .map_err(|e| BackupError::Io(format!("registry: {e}")))?;
        audit.note_registry_generation(registry.generation());
    }
    // What the registry now names that the token lacks.
    let now = registry
        .load_verified(rkey, None)
        .map_err(|e| BackupError::Io(format!("registry: {e}")))?;
    report.keys = now.keys.len();
    for r in &now.keys {
        for v in &r.versions {
            let usable = !matches!(v.state, VersionState::Destroyed);
            if usable && r.state != KeyState::Destroyed && !on_token.contains(&v.hsm_id.0) {
                report.missing_on_token.push(format!(
                    "{}/v{} ({})",
                    r.name,
                    v.version,
                    v.hsm_id.to_hex()
                ));
            }
        }
    }
    let generation = registry.generation();
    hsm.write_counter(REGISTRY_COUNTER_LABEL, generation)
        .map_err(|e| hsm_err("writing the generation counter", e))?;
    report.generation = generation;
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;

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
