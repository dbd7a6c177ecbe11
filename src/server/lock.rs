//! One daemon per state directory and audit log.
//!
//! An exclusive `flock` on `keywarden.lock` in the state directory, and on
//! `.keywarden.lock` beside the audit log, is taken before anything else is
//! opened or written: a second daemon started with the same configuration
//! (or one sharing either directory) writes nothing and says which process
//! holds the lock. The kernel releases the lock when the holder exits, even
//! on SIGKILL, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("another daemon (pid {holder}) already uses {path}; stop it first")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid the holder wrote into it (`unknown` if none).
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("locking {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Held for the daemon's lifetime; dropping it releases the lock.
pub struct DirLock {
    _lock: Flock<File>,
    /// The lock file.
    pub path: PathBuf,
}

impl DirLock {
    /// Takes the lock file `name` in `dir`, without waiting.
    pub fn take(dir: &Path, name: &str) -> Result<DirLock, LockError> {
        let path = dir.join(name);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path,
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err((_, e)) => return Err(io(std::io::Error::from(e))),
        };
        // Only the holder writes its pid, after it holds the lock.
        lock.set_len(0).map_err(io)?;
        lock.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(&mut *lock, "{}", std::process::id()).map_err(io)?;
        lock.sync_data().map_err(io)?;
        Ok(DirLock { _lock: lock, path })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::take(dir.path(), "keywarden.lock").unwrap();
        match DirLock::take(dir.path(), "keywarden.lock") {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, std::process::id().to_string())
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a second lock was granted"),
        }
        drop(first);
        DirLock::take(dir.path(), "keywarden.lock").unwrap();
    }
}
