//! Where a software token keeps its objects, how a backup copies them and
//! how a restore puts them back. A hardware HSM's token is the vendor's to
//! back up ([`TokenBackup::Vendor`]).

use std::path::{Path, PathBuf};

use crate::hsm::profile::{HsmProfile, TokenBackup};

use super::BackupError;

/// The token's storage, as the module's configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStore {
    /// SoftHSM's token directory.
    Dir(PathBuf),
    /// Kryoptic's SQLite database.
    Sqlite(PathBuf),
    /// The vendor's procedure keeps the token.
    Vendor(String),
}

/// The prefix of token entries in a backup's payload.
pub const ENTRY_PREFIX: &str = "token/";
/// Kryoptic's database, in a backup's payload.
pub const SQLITE_ENTRY: &str = "token/kryoptic.sqlite";

/// The configuration file the module reads: `explicit`, else the
/// environment variable, else the module's default.
fn conf_path(var: &str, default: Option<&str>, explicit: Option<&Path>) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(var).map(PathBuf::from))
        .or_else(|| default.map(PathBuf::from))
}

fn read(path: &Path) -> Result<String, BackupError> {
    std::fs::read_to_string(path)
        .map_err(|e| BackupError::Token(format!("{}: {e}", path.display())))
}

/// Finds the token's storage for `profile`; `conf` overrides the module's
/// configuration file (`SOFTHSM2_CONF` or `KRYOPTIC_CONF`).
pub fn locate(profile: &HsmProfile, conf: Option<&Path>) -> Result<TokenStore, BackupError> {
    match profile.backup.token {
        TokenBackup::Vendor => Ok(TokenStore::Vendor(profile.backup.procedure.clone())),
        TokenBackup::Softhsm2Tokendir => {
            let path = conf_path("SOFTHSM2_CONF", Some("/etc/softhsm/softhsm2.conf"), conf)
                .unwrap_or_default();
            let text = read(&path)?;
            let dir = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or_default())
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == "directories.tokendir")
                .map(|(_, v)| PathBuf::from(v.trim()))
                .ok_or_else(|| {
                    BackupError::Token(format!("{}: no directories.tokendir", path.display()))
                })?;
            Ok(TokenStore::Dir(dir))
        }
        TokenBackup::KryopticSqlite => {
            let path = conf_path("KRYOPTIC_CONF", None, conf).ok_or_else(|| {
                BackupError::Token(
                    "KRYOPTIC_CONF is not set: where is Kryoptic's configuration?".into(),
                )
            })?;
            let v: toml::Table = toml::from_str(&read(&path)?)
                .map_err(|e| BackupError::Token(format!("{}: {e}", path.display())))?;
            let slot = v
                .get("slots")
                .and_then(|s| s.as_array())
                .and_then(|s| {
                    s.iter()
                        .find(|s| s.get("dbtype").and_then(|t| t.as_str()) == Some("sqlite"))
                })
                .ok_or_else(|| {
                    BackupError::Token(format!(
                        "{}: no slot with dbtype = \"sqlite\"",
                        path.display()
                    ))
                })?;
            let db = slot.get("dbargs").and_then(|a| a.as_str()).ok_or_else(|| {
                BackupError::Token(format!("{}: the slot has no dbargs", path.display()))
            })?;
            Ok(TokenStore::Sqlite(PathBuf::from(db)))
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), BackupError> {
    let io = |p: &Path, e: std::io::Error| BackupError::Token(format!("{}: {e}", p.display()));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).map_err(|err| io(&p, err))?;
        if meta.is_dir() {
            walk(root, &p, out)?;
        } else if meta.is_file() {
            let rel = p
                .strip_prefix(root)
                .map_err(|_| {
                    BackupError::Token(format!("{}: outside the token directory", p.display()))
                })?
                .to_str()
                .ok_or_else(|| BackupError::Token(format!("{}: not UTF-8", p.display())))?
                .to_string();
            let data = std::fs::read(&p).map_err(|err| io(&p, err))?;
            out.push((format!("{ENTRY_PREFIX}{rel}"), data));
        }
    }
    Ok(())
}

/// Copies the token's files; the caller holds every lock under which the
/// daemon writes to the token. `scratch` is a private directory for
/// SQLite's online backup.
pub fn snapshot(store: &TokenStore, scratch: &Path) -> Result<Vec<(String, Vec<u8>)>, BackupError> {
    match store {
        TokenStore::Vendor(_) => Ok(Vec::new()),
        TokenStore::Dir(dir) => {
            let mut out = Vec::new();
            walk(dir, dir, &mut out)?;
            if out.is_empty() {
                return Err(BackupError::Token(format!(
                    "{}: no token files",
                    dir.display()
                )));
            }
            Ok(out)
        }
        TokenStore::Sqlite(db) => {
            let copy = scratch.join("kryoptic.sqlite");
            sqlite_backup(db, &copy)?;
            let data = std::fs::read(&copy).map_err(|e| BackupError::Token(e.to_string()));
            let _ = std::fs::remove_file(&copy);
            Ok(vec![(SQLITE_ENTRY.to_string(), data?)])
        }
    }
}

/// SQLite's online backup of `from` into a new file `to`.
pub fn sqlite_backup(from: &Path, to: &Path) -> Result<(), BackupError> {
    let err = |e: rusqlite::Error| BackupError::Token(format!("{}: {e}", from.display()));
    let src =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(err)?;
    src.backup(rusqlite::MAIN_DB, to, None).map_err(err)
}

/// Whether the token's storage holds anything yet.
pub fn is_empty(store: &TokenStore) -> bool {
    match store {
        TokenStore::Vendor(_) => true,
        TokenStore::Dir(d) => std::fs::read_dir(d)
            .map(|mut r| r.next().is_none())
            .unwrap_or(true),
        TokenStore::Sqlite(p) => !p.exists(),
    }
}

/// Refuses a relative path that climbs out of the token directory.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then(|| p.to_path_buf())
}

/// Writes the token entries of a backup into an empty store.
pub fn put_back(store: &TokenStore, entries: &[(&str, &[u8])]) -> Result<usize, BackupError> {
    let io = |p: &Path, e: std::io::Error| BackupError::Token(format!("{}: {e}", p.display()));
    let mut n = 0;
    for (name, data) in entries {
        let target = match store {
            TokenStore::Vendor(_) => continue,
            TokenStore::Sqlite(db) if *name == SQLITE_ENTRY => db.clone(),
            TokenStore::Sqlite(_) => continue,
            TokenStore::Dir(dir) => {
                let rel = name
                    .strip_prefix(ENTRY_PREFIX)
                    .and_then(safe_relative)
                    .ok_or_else(|| {
                        BackupError::Token(format!("backup entry {name:?} is not a token file"))
                    })?;
                dir.join(rel)
            }
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&target, data).map_err(|e| io(&target, e))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_softhsm_directory_and_refuses_escaping_paths() {
        let t = tempfile::tempdir().unwrap();
        let conf = t.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            "# c\ndirectories.tokendir = /x/tokens # mine\nobjectstore.backend = file\n",
        )
        .unwrap();
        let p = HsmProfile::parse(crate::hsm::profile::SOFTHSM2_PROFILE).unwrap();
        assert_eq!(
            locate(&p, Some(&conf)).unwrap(),
            TokenStore::Dir("/x/tokens".into())
        );
        let k = HsmProfile::parse(crate::hsm::profile::KRYOPTIC_PROFILE).unwrap();
        let kconf = t.path().join("kryoptic.conf");
        std::fs::write(
            &kconf,
            "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"/x/token.sql\"\n",
        )
        .unwrap();
        assert_eq!(
            locate(&k, Some(&kconf)).unwrap(),
            TokenStore::Sqlite("/x/token.sql".into())
        );

        let dir = TokenStore::Dir(t.path().join("tokens"));
        assert!(is_empty(&dir));
        for bad in [
            "token/../x",
            "token//etc/passwd",
            "other/x",
            "token/a/../../b",
        ] {
            assert!(put_back(&dir, &[(bad, b"x")]).is_err(), "{bad}");
        }
        assert_eq!(
            put_back(&dir, &[("token/u/token.object", b"x")]).unwrap(),
            1
        );
        assert!(!is_empty(&dir));
        let got = snapshot(&dir, t.path()).unwrap();
        assert_eq!(
            got,
            vec![("token/u/token.object".to_string(), b"x".to_vec())]
        );
    }
}
