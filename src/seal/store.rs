//! What the seal keeps on disk (`seal.json` in the state directory): the
//! share set's id, N and M, the check value and the sealed keyring. Nothing
//! in it opens the HSM without a quorum of shares.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::UnsealKey;

/// What can go wrong with the seal files. Typed: callers pick a status by
/// variant, never by text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file is not valid seal JSON.
    #[error("{path}: not a seal file: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A field does not decode.
    #[error("seal file: malformed {field}")]
    Malformed {
        /// The field.
        field: &'static str,
    },
    /// The keyring does not open under the reconstructed key.
    #[error("seal file: the keyring does not open (altered file?)")]
    KeyringSealed,
    /// A format this build does not accept.
    #[error("seal.json is format {found} (this build writes and accepts only format {SEAL_FORMAT}, which is authenticated)")]
    Format {
        /// The file's format.
        found: u32,
    },
    /// The MAC does not verify: the file was edited.
    #[error("seal.json does not verify under the reconstructed unseal key: it was edited by hand; restore it from a backup")]
    Mac,
    /// The OS random generator failed.
    #[error("OS random generator: {0}")]
    Random(String),
    /// A cipher or MAC refused its input (not expected).
    #[error("seal file cryptography failed: {0}")]
    Crypto(&'static str),
    /// The cluster's shared copy (in the registry database) could not be
    /// reached: retry once the database is back.
    #[error("the cluster's seal in the registry database is unreachable: {0}")]
    SharedUnreachable(String),
    /// The shared copy refused the write (another node holds the ceremony
    /// lock, or is committing another rekey).
    #[error("the cluster's seal: {0}")]
    SharedBusy(String),
    /// The shared copy is not what a seal file can be (an altered table).
    #[error("the cluster's seal in the registry database: {0}")]
    SharedCorrupt(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

const KEYRING_AAD: &[u8] = b"keywarden.v1.keyring";
const KEYRING_LEN: usize = 64;
const SEAL_MAC_DOMAIN: &[u8] = b"keywarden/v1/seal-file";
/// The seal file format: 2 adds `mac`, which format 1 did not have.
pub const SEAL_FORMAT: u32 = 2;

/// Secrets the daemon needs after unseal, kept sealed under a key derived
/// from the unseal key. No `Debug`, `Clone` or `Serialize`; wiped on drop.
pub struct Keyring {
    /// Authenticates the registry's key states (used by the lifecycle work).
    pub registry_key: Zeroizing<[u8; 32]>,
    /// Keys the HMAC of encryption-context values in the audit log.
    pub audit_key: Zeroizing<[u8; 32]>,
}

impl Keyring {
    /// A fresh keyring from the OS random generator.
    pub fn random() -> Result<Self, StoreError> {
        let mut r = Zeroizing::new([0u8; 32]);
        let mut a = Zeroizing::new([0u8; 32]);
        getrandom::fill(r.as_mut()).map_err(|e| StoreError::Random(e.to_string()))?;
        getrandom::fill(a.as_mut()).map_err(|e| StoreError::Random(e.to_string()))?;
        Ok(Keyring {
            registry_key: r,
            audit_key: a,
        })
    }

    fn to_bytes(&self) -> Zeroizing<[u8; KEYRING_LEN]> {
        let mut out = Zeroizing::new([0u8; KEYRING_LEN]);
        out[..32].copy_from_slice(&self.registry_key[..]);
        out[32..].copy_from_slice(&self.audit_key[..]);
        out
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != KEYRING_LEN {
            return None;
        }
        let mut r = Zeroizing::new([0u8; 32]);
        let mut a = Zeroizing::new([0u8; 32]);
        r.copy_from_slice(&b[..32]);
        a.copy_from_slice(&b[32..]);
        Some(Keyring {
            registry_key: r,
            audit_key: a,
        })
    }
}

/// A seal file (`seal.json`, or `seal.pending.json` during a rekey
/// commit). Nothing in it is secret: the keyring is sealed under a key
/// derived from the unseal key, and `mac` covers every other field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SealFile {
    /// The file's format ([`SEAL_FORMAT`]).
    pub format: u32,
    /// 8 hex digits.
    pub set_id: String,
    /// N: shares in the set.
    pub shares: u8,
    /// M: shares that unseal.
    pub threshold: u8,
    /// Hex of the check value.
    pub check: String,
    /// Hex of the 12-byte nonce followed by the AES-256-GCM ciphertext and tag.
    pub keyring: String,
    /// When the set was made (Unix seconds).
    pub created_at: i64,
    /// Init issued the shares but the token still has its provisioning
    /// PINs: they change at the first unseal, once a quorum of the new
    /// shares has proved to work.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_init: bool,
    /// The age X25519 recipient (`age1...`) that backups are encrypted to:
    /// the public half of a key derived from the unseal key. Empty in files
    /// written before backups existed; the next unseal adds it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_recipient: String,
    /// This state was restored from a backup without the audit trail kept
    /// since: unsealing it needs a quorum that accepts the window in which
    /// later revocations may be lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_window: Option<RestoreWindow>,
    /// Hex of an HMAC-SHA256 over every other field, under a key derived
    /// from the unseal key: an edit (`pending_init`, the threshold, the set)
    /// is caught as soon as a quorum has reconstructed the key.
    #[serde(default)]
    pub mac: String,
}

/// The window a restore without the audit trail may have lost: from the
/// backup's creation until the restore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoreWindow {
    /// The backup's id (hex of the SHA-256 of the whole file).
    pub backup: String,
    /// When the backup was taken (Unix time).
    pub backup_created_at: i64,
    /// The registry generation it holds.
    pub generation: u64,
    /// When it was restored (Unix time).
    pub restored_at: i64,
}

impl SealFile {
    /// A file for the set `set_id` of `key`: its check value, `keyring`
    /// sealed under `key`, the backup recipient, and the MAC.
    pub fn new(
        key: &UnsealKey,
        set_id: [u8; 4],
        shares: u8,
        threshold: u8,
        keyring: &Keyring,
        created_at: i64,
    ) -> Result<Self, StoreError> {
        let mut sealed = Self {
            format: SEAL_FORMAT,
            set_id: hex::encode(set_id),
            shares,
            threshold,
            check: hex::encode(key.check_value(&set_id)),
            keyring: String::new(),
            created_at,
            pending_init: false,
            backup_recipient: key
                .backup_recipient(&set_id)
                .ok_or(StoreError::Crypto("deriving the backup recipient"))?,
            restore_window: None,
            mac: String::new(),
        };
        sealed.keyring = hex::encode(seal_keyring(key, &set_id, keyring)?);
        sealed.authenticate(key)?;
        Ok(sealed)
    }

    fn compute_mac(&self, key: &UnsealKey) -> Result<[u8; 32], StoreError> {
        use hmac::{Hmac, Mac};
        let set_id = self.set_id()?;
        let k = key.seal_mac_key(&set_id);
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&k[..])
            .map_err(|_| StoreError::Crypto("HMAC key"))?;
        let fields: [&[u8]; 9] = [
            SEAL_MAC_DOMAIN,
            &self.format.to_be_bytes(),
            self.set_id.as_bytes(),
            &[self.shares],
            &[self.threshold],
            self.check.as_bytes(),
            self.keyring.as_bytes(),
            &self.created_at.to_be_bytes(),
            &[u8::from(self.pending_init)],
        ];
        for f in fields {
            m.update(&(f.len() as u64).to_be_bytes());
            m.update(f);
        }
        // Later fields are covered only when present, so that files written
        // before them still verify; removing one changes the MAC.
        if !self.backup_recipient.is_empty() {
            m.update(b"backup_recipient");
            m.update(&(self.backup_recipient.len() as u64).to_be_bytes());
            m.update(self.backup_recipient.as_bytes());
        }
        if let Some(w) = &self.restore_window {
            let text =
                serde_json::to_string(w).map_err(|_| StoreError::Crypto("restore window"))?;
            m.update(b"restore_window");
            m.update(&(text.len() as u64).to_be_bytes());
            m.update(text.as_bytes());
        }
        Ok(m.finalize().into_bytes().into())
    }

    /// Recomputes the MAC after a change (the key is at hand only during a
    /// ceremony).
    pub fn authenticate(&mut self, key: &UnsealKey) -> Result<(), StoreError> {
        self.mac = hex::encode(self.compute_mac(key)?);
        Ok(())
    }

    /// Checks the MAC with a key already confirmed by the check value.
    pub fn verify(&self, key: &UnsealKey) -> Result<(), StoreError> {
        use subtle::ConstantTimeEq;
        if self.format != SEAL_FORMAT {
            return Err(StoreError::Format { found: self.format });
        }
        let want = self.compute_mac(key)?;
        let got = hex::decode(&self.mac).unwrap_or_default();
        if bool::from(want.as_slice().ct_eq(&got)) {
            Ok(())
        } else {
            Err(StoreError::Mac)
        }
    }

    /// The set id's 4 bytes.
    pub fn set_id(&self) -> Result<[u8; 4], StoreError> {
        hex::decode(&self.set_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(StoreError::Malformed { field: "set_id" })
    }

    /// The check value's bytes.
    pub fn check(&self) -> Result<Vec<u8>, StoreError> {
        hex::decode(&self.check).map_err(|_| StoreError::Malformed { field: "check" })
    }

    /// Opens the keyring with a key already confirmed by the check value.
    pub fn open_keyring(&self, key: &UnsealKey) -> Result<Keyring, StoreError> {
        let set_id = self.set_id()?;
        let raw =
            hex::decode(&self.keyring).map_err(|_| StoreError::Malformed { field: "keyring" })?;
        if raw.len() < 12 {
            return Err(StoreError::Malformed { field: "keyring" });
        }
        let k = key.keyring_key(&set_id);
        let cipher =
            Aes256Gcm::new_from_slice(&k[..]).map_err(|_| StoreError::Crypto("AES key"))?;
        let aad = [KEYRING_AAD, &set_id].concat();
        let pt = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&raw[..12]),
                    Payload {
                        msg: &raw[12..],
                        aad: &aad,
                    },
                )
                .map_err(|_| StoreError::KeyringSealed)?,
        );
        Keyring::from_bytes(&pt).ok_or(StoreError::Malformed { field: "keyring" })
    }
}

fn seal_keyring(
    key: &UnsealKey,
    set_id: &[u8; 4],
    keyring: &Keyring,
) -> Result<Vec<u8>, StoreError> {
    let k = key.keyring_key(set_id);
    let cipher = Aes256Gcm::new_from_slice(&k[..]).map_err(|_| StoreError::Crypto("AES key"))?;
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| StoreError::Random(e.to_string()))?;
    let aad = [KEYRING_AAD, set_id].concat();
    let pt = keyring.to_bytes();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &pt[..],
                aad: &aad,
            },
        )
        .map_err(|_| StoreError::Crypto("sealing the keyring"))?;
    Ok([nonce.as_slice(), &ct].concat())
}

/// The authoritative copy of the seal files when several nodes share one
/// token (a cluster): each node's `seal.json` is then only a mirror of it,
/// so a rekey on one node reaches every other node's next unseal.
///
/// Nothing in it needs protecting from a reader (as with `seal.json`: no
/// secret without a quorum of shares). A writer can only deny service: a
/// file it forges or rolls back either fails its MAC under the
/// reconstructed key, or yields PINs the token refuses (a rekey changed
/// them), so no node opens on it. The token's PINs are the anchor.
pub trait SharedSeal: Send + Sync {
    /// The current and pending files, as stored.
    fn load(&self) -> Result<SharedFiles, StoreError>;
    /// Writes the current file (init, its commit, a settled field).
    fn save_current(&self, file: &SealFile) -> Result<(), StoreError>;
    /// Writes a rekey's pending file; refused while another set's is there
    /// (another node's commit, or one interrupted: an unseal settles it).
    fn save_pending(&self, file: &SealFile) -> Result<(), StoreError>;
    /// Makes the pending file of `set_id` current, in one transaction.
    fn promote_pending(&self, set_id: &str) -> Result<(), StoreError>;
    /// Drops the pending file of `set_id` (another set's stays).
    fn discard_pending(&self, set_id: &str) -> Result<(), StoreError>;
    /// The cluster's ceremony lock, held until the guard drops: a rekey's
    /// commit (pending file, PIN change, promotion) and an unseal's
    /// settling of a pending file never interleave across nodes.
    fn lock(&self) -> Result<Box<dyn Send>, StoreError>;
}

/// What [`SharedSeal::load`] finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedFiles {
    /// `seal.json`'s counterpart.
    pub current: Option<SealFile>,
    /// `seal.pending.json`'s counterpart (a rekey commit in progress).
    pub pending: Option<SealFile>,
}

/// The seal files in a state directory, and in a cluster the shared copy
/// they mirror.
pub struct SealStore {
    dir: PathBuf,
    shared: Option<std::sync::Arc<dyn SharedSeal>>,
}

impl SealStore {
    /// The seal files in `dir`, on one host (see [`SealStore::with_shared`]).
    pub fn new(dir: &Path) -> Self {
        SealStore {
            dir: dir.to_path_buf(),
            shared: None,
        }
    }

    /// Keeps the authoritative copy in `shared`; `dir` holds a mirror.
    pub fn with_shared(mut self, shared: std::sync::Arc<dyn SharedSeal>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether the files are shared by a cluster.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The shared copy, mirrored into the state directory where it differs
    /// (so offline tools read what the cluster uses). `None` without one.
    /// A shared copy with no files yet (a cluster that predates it) leaves
    /// the mirror alone: the next verified unseal adopts it.
    pub fn reload_shared(&self) -> Result<Option<SharedFiles>, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let files = shared.load()?;
        if files.current.is_some() || files.pending.is_some() {
            self.mirror(&files);
        }
        Ok(Some(files))
    }

    /// Best effort: the mirror is not what the node trusts.
    fn mirror(&self, files: &SharedFiles) {
        let local = SharedFiles {
            current: Self::load_path(&self.current_path()).ok().flatten(),
            pending: Self::load_path(&self.pending_path()).ok().flatten(),
        };
        if &local == files {
            return;
        }
        let wrote = match &files.current {
            Some(f) => self.write_atomic(&self.current_path(), f),
            None => Ok(()),
        }
        .and_then(|()| match &files.pending {
            Some(f) => self.write_atomic(&self.pending_path(), f),
            None => self.discard_local_pending(),
        });
        if let Err(e) = wrote {
            tracing::warn!(error = %e, "could not mirror the cluster's seal into the state directory");
        }
    }

    /// After a verified unseal: a cluster's shared copy that has no file
    /// yet (it predates the shared copy) takes this one.
    pub fn adopt(&self, file: &SealFile) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let files = shared.load()?;
        if files.current.is_none() && files.pending.is_none() {
            tracing::info!(set_id = %file.set_id, "the cluster's seal is now kept in the registry database");
            shared.save_current(file)?;
        }
        Ok(())
    }

    /// The cluster's ceremony lock (nothing to lock on one host).
    pub fn lock(&self) -> Result<Option<Box<dyn Send>>, StoreError> {
        self.shared.as_ref().map(|s| s.lock()).transpose()
    }

    /// `seal.json` in the state directory.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join("seal.json")
    }

    /// A rekey being committed: written before the token PINs change.
    pub fn pending_path(&self) -> PathBuf {
        self.dir.join("seal.pending.json")
    }

    fn load_path(path: &Path) -> Result<Option<SealFile>, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| StoreError::Parse {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// The current and pending files: the shared copy where there is one
    /// (and it holds any), else the state directory's.
    pub fn load_both(&self) -> Result<SharedFiles, StoreError> {
        if let Some(files) = self.reload_shared()? {
            if files.current.is_some() || files.pending.is_some() {
                return Ok(files);
            }
        }
        Ok(SharedFiles {
            current: self.load()?,
            pending: self.load_pending()?,
        })
    }

    /// `seal.json` from the state directory; `None` if there is none.
    pub fn load(&self) -> Result<Option<SealFile>, StoreError> {
        Self::load_path(&self.current_path())
    }

    /// `seal.pending.json` from the state directory; `None` if there is none.
    pub fn load_pending(&self) -> Result<Option<SealFile>, StoreError> {
        Self::load_path(&self.pending_path())
    }

    fn write_atomic(&self, path: &Path, file: &SealFile) -> Result<(), StoreError> {
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(file).map_err(|e| StoreError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(io(path))
    }

    /// Writes the current file: to the shared copy first (a node that
    /// fails there has changed nothing the cluster sees), then the mirror.
    pub fn save(&self, file: &SealFile) -> Result<(), StoreError> {
        if let Some(shared) = &self.shared {
            shared.save_current(file)?;
        }
        self.write_atomic(&self.current_path(), file)
    }

    /// Writes the pending file (before a rekey changes the token's PINs): to
    /// the shared copy first, then the state directory.
    pub fn save_pending(&self, file: &SealFile) -> Result<(), StoreError> {
        if let Some(shared) = &self.shared {
            shared.save_pending(file)?;
        }
        self.write_atomic(&self.pending_path(), file)
    }

    /// Makes the pending file (of `set_id`) current.
    pub fn promote_pending(&self, set_id: &str) -> Result<(), StoreError> {
        if let Some(shared) = &self.shared {
            shared.promote_pending(set_id)?;
            // The mirror follows; the shared copy is what counts.
            if let Ok(Some(f)) = self.load_pending() {
                if f.set_id == set_id {
                    let _ = self.write_atomic(&self.current_path(), &f);
                }
            }
            return self.discard_local_pending();
        }
        let path = self.current_path();
        std::fs::rename(self.pending_path(), &path)
            .and_then(|_| std::fs::File::open(&self.dir)?.sync_all())
            .map_err(io(&path))
    }

    /// Drops the pending file (of `set_id`).
    pub fn discard_pending(&self, set_id: &str) -> Result<(), StoreError> {
        if let Some(shared) = &self.shared {
            shared.discard_pending(set_id)?;
        }
        self.discard_local_pending()
    }

    fn discard_local_pending(&self) -> Result<(), StoreError> {
        let path = self.pending_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Deletes `seal.json` from the state directory (not the shared copy).
    pub fn remove(&self) -> Result<(), StoreError> {
        let path = self.current_path();
        std::fs::remove_file(&path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_opens_only_with_the_right_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SealStore::new(dir.path());
        assert!(store.load().unwrap().is_none());
        let key = UnsealKey::random().unwrap();
        let ring = Keyring::random().unwrap();
        let f = SealFile::new(&key, [1, 2, 3, 4], 5, 3, &ring, 10).unwrap();
        store.save(&f).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back, f);
        let opened = back.open_keyring(&key).unwrap();
        assert_eq!(*opened.registry_key, *ring.registry_key);
        assert_eq!(*opened.audit_key, *ring.audit_key);
        assert!(back.open_keyring(&UnsealKey::random().unwrap()).is_err());
        let mut tampered = back.clone();
        tampered.set_id = "01020305".into();
        assert!(tampered.open_keyring(&key).is_err());
        // The file holds no key material in the clear.
        let text = std::fs::read_to_string(store.current_path()).unwrap();
        assert!(!text.contains(&hex::encode(key.expose())));
        assert!(!text.contains(&hex::encode(&ring.registry_key[..])));
    }

    #[test]
    fn every_field_is_authenticated() {
        let key = UnsealKey::random().unwrap();
        let ring = Keyring::random().unwrap();
        let f = SealFile::new(&key, [1, 2, 3, 4], 5, 3, &ring, 10).unwrap();
        f.verify(&key).unwrap();
        assert!(f.verify(&UnsealKey::random().unwrap()).is_err());
        let edits: Vec<fn(&mut SealFile)> = vec![
            |f| f.pending_init = true,
            |f| f.threshold = 2,
            |f| f.shares = 4,
            |f| f.created_at = 11,
            |f| f.check = "00".repeat(32),
            |f| f.keyring.push('0'),
            |f| f.mac = String::new(),
            |f| f.format = 1,
        ];
        for (i, edit) in edits.into_iter().enumerate() {
            let mut t = f.clone();
            edit(&mut t);
            assert!(t.verify(&key).is_err(), "edit {i} was not caught");
        }
        let mut changed = f.clone();
        changed.pending_init = true;
        changed.authenticate(&key).unwrap();
        changed.verify(&key).unwrap();
    }
}
