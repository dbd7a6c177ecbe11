//! Locks that outlive a panic. A thread that panicked while holding a lock
//! poisons it; the daemon's locks guard state that every write leaves
//! consistent (or that is rebuilt on the next use), so the next holder
//! takes it as it is rather than failing every later request. One helper
//! for the whole crate.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Taking a lock whether or not it was poisoned.
pub(crate) trait Recover<T: ?Sized> {
    /// The guard for an exclusive lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Recover<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Taking a read-write lock whether or not it was poisoned.
pub(crate) trait RecoverRw<T: ?Sized> {
    /// A shared guard.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// An exclusive guard.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RecoverRw<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
