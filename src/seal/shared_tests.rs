//! The seal of a cluster: several nodes (here, several `Seal`s on one
//! in-memory HSM) whose seal files live in one shared copy. One share set
//! for all; a rekey on one reaches the others; a rolled-back or forged
//! shared copy opens no node; a database that is down or a ceremony lock
//! held elsewhere changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::store::{SharedFiles, SharedSeal, StoreError};
use super::tests::{pin, spec};
use super::*;
use crate::audit::MemoryLog;
use crate::hsm::memory::MemoryHsm;

const USER: &str = "provisioning-user-pin";
const SO: &str = "provisioning-so-pin";

/// The shared copy, in memory, with a switch for "the database is down"
/// and the ceremony lock as a flag (held: refused, as a lock wait that
/// timed out is).
#[derive(Default)]
struct MemShared {
    files: Mutex<SharedFiles>,
    down: AtomicBool,
    locked: Arc<AtomicBool>,
}

struct Held(Arc<AtomicBool>);
impl Drop for Held {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl MemShared {
    fn up(&self) -> Result<std::sync::MutexGuard<'_, SharedFiles>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::SharedUnreachable("down for the test".into()));
        }
        Ok(self.files.lock().unwrap())
    }
    fn snapshot(&self) -> SharedFiles {
        self.files.lock().unwrap().clone()
    }
    fn current_set(&self) -> String {
        self.snapshot().current.unwrap().set_id
    }
}

impl SharedSeal for MemShared {
    fn load(&self) -> Result<SharedFiles, StoreError> {
        Ok(self.up()?.clone())
    }
    fn save_current(&self, file: &SealFile) -> Result<(), StoreError> {
        self.up()?.current = Some(file.clone());
        Ok(())
    }
    fn save_pending(&self, file: &SealFile) -> Result<(), StoreError> {
        let mut f = self.up()?;
        if f.pending.as_ref().is_some_and(|p| p.set_id != file.set_id) {
            return Err(StoreError::SharedBusy("another set is pending".into()));
        }
        f.pending = Some(file.clone());
        Ok(())
    }
    fn promote_pending(&self, set_id: &str) -> Result<(), StoreError> {
        let mut f = self.up()?;
        match f.pending.take() {
            Some(p) if p.set_id == set_id => {
                f.current = Some(p);
                Ok(())
            }
            other => {
                f.pending = other;
                Err(StoreError::SharedBusy("not pending".into()))
            }
        }
    }
    fn discard_pending(&self, set_id: &str) -> Result<(), StoreError> {
        let mut f = self.up()?;
        if f.pending.as_ref().is_some_and(|p| p.set_id == set_id) {
            f.pending = None;
        }
        Ok(())
    }
    fn lock(&self) -> Result<Box<dyn Send>, StoreError> {
        drop(self.up()?);
        if self.locked.swap(true, Ordering::SeqCst) {
            return Err(StoreError::SharedBusy("lock held by another node".into()));
        }
        Ok(Box::new(Held(self.locked.clone())))
    }
}

struct Node {
    dir: tempfile::TempDir,
    seal: Seal,
}

fn node(shared: &Arc<MemShared>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let seal = Seal::open(
        SealStore::new(dir.path()).with_shared(shared.clone()),
        SealConfig {
            ceremony_timeout: Duration::from_secs(900),
            allow_single_share: false,
        },
    )
    .unwrap()
    .with_audit_sink(Arc::new(MemoryLog::default()));
    Node { dir, seal }
}

fn lines(issued: &[IssuedShare]) -> Vec<String> {
    issued.iter().map(|s| s.share.to_string()).collect()
}

fn unseal(n: &Node, hsm: &MemoryHsm, shares: &[String]) {
    for s in shares {
        n.seal.submit_unseal_share(hsm, s).unwrap();
    }
    assert!(n.seal.logged_in());
    assert!(n.seal.open_for_keys());
}

/// Rekeys an unsealed node from `old` to a new 3-of-2 set; returns it.
fn rekey(n: &Node, hsm: &MemoryHsm, old: &[String]) -> Vec<String> {
    n.seal.rekey_start(spec(3, 2)).unwrap();
    n.seal.rekey_submit(&old[0]).unwrap();
    let (_, set) = n.seal.rekey_submit(&old[1]).unwrap();
    let new = lines(&set.unwrap().shares);
    n.seal.rekey_verify(hsm, &new[0]).unwrap();
    assert!(n.seal.rekey_verify(hsm, &new[1]).unwrap().complete);
    n.seal.open_for_keys();
    new
}

#[test]
fn one_share_set_for_the_cluster_and_a_rekey_on_one_node_reaches_the_others() {
    let hsm = MemoryHsm::new(USER, SO);
    let shared = Arc::new(MemShared::default());
    let (a, b) = (node(&shared), node(&shared));
    assert_eq!(b.seal.status().phase, Phase::Uninitialized);
    let old = lines(&a.seal.init(&hsm, spec(3, 2), pin(USER), pin(SO)).unwrap());
    // B started before the init (Status reads no database: it says
    // uninitialised until a ceremony call takes the set in).
    assert_eq!(b.seal.status().phase, Phase::Uninitialized);
    unseal(&a, &hsm, &old[..2]);
    assert!(
        matches!(
            b.seal.check_init_allowed(),
            Err(SealError::AlreadyInitialized { .. })
        ),
        "committed on A: init is refused on B"
    );
    assert_eq!(b.seal.status().phase, Phase::Sealed);
    assert_eq!(b.seal.status().set_id, shared.current_set());
    unseal(&b, &hsm, &old[1..]);

    let new = rekey(&a, &hsm, &old);
    assert_eq!(shared.current_set(), a.seal.status().set_id);
    assert!(shared.snapshot().pending.is_none());
    // B is still open (its login stands); sealed, only the new set opens it.
    b.seal.seal(&hsm).unwrap();
    assert!(matches!(
        b.seal.submit_unseal_share(&hsm, &old[0]),
        Err(SealError::WrongSet { .. })
    ));
    unseal(&b, &hsm, &new[1..]);
    // B's seal.json mirrors the cluster's.
    let mirror = SealStore::new(b.dir.path()).load().unwrap().unwrap();
    assert_eq!(mirror.set_id, shared.current_set());
    // A node that joins with an empty state directory needs no copy.
    let c = node(&shared);
    assert_eq!(c.seal.status().set_id, shared.current_set());
    b.seal.seal(&hsm).unwrap();
    unseal(&c, &hsm, &new[..2]);
}

#[test]
fn a_rolled_back_or_forged_shared_seal_opens_no_node() {
    let hsm = MemoryHsm::new(USER, SO);
    let shared = Arc::new(MemShared::default());
    let a = node(&shared);
    let old = lines(&a.seal.init(&hsm, spec(3, 2), pin(USER), pin(SO)).unwrap());
    unseal(&a, &hsm, &old[..2]);
    let before = shared.snapshot();
    let new = rekey(&a, &hsm, &old);
    a.seal.seal(&hsm).unwrap();

    // Rolled back to the set a rekey retired: its shares verify the file,
    // but the token has the new PINs and refuses the old one.
    *shared.files.lock().unwrap() = before;
    let b = node(&shared);
    b.seal.submit_unseal_share(&hsm, &old[0]).unwrap();
    assert!(matches!(
        b.seal.submit_unseal_share(&hsm, &old[1]),
        Err(SealError::Hsm(HsmError::PinIncorrect { .. }))
    ));
    assert!(!b.seal.logged_in() && !hsm.is_logged_in());
    // ... and the custodians' real set is refused until it is restored:
    // denial of service is all a database writer can do.
    assert!(matches!(
        b.seal.submit_unseal_share(&hsm, &new[0]),
        Err(SealError::WrongSet { .. })
    ));

    // A file of a writer's own making (its own key, its own shares): the
    // MAC holds, the token refuses the PIN.
    let key = UnsealKey::random().unwrap();
    let set = [9, 9, 9, 9];
    let forged = SealFile::new(&key, set, 1, 1, &Keyring::random().unwrap(), 1).unwrap();
    shared.files.lock().unwrap().current = Some(forged);
    let plan = validate_plan(spec(1, 1), true).unwrap();
    let mine = lines(&issue_shares(&key, &set, &plan).unwrap());
    let c = node(&shared);
    assert!(matches!(
        c.seal.submit_unseal_share(&hsm, &mine[0]),
        Err(SealError::Hsm(HsmError::PinIncorrect { .. }))
    ));
    assert!(!c.seal.logged_in() && !hsm.is_logged_in());
}

#[test]
fn a_database_that_is_down_or_a_lock_held_elsewhere_changes_nothing() {
    let hsm = MemoryHsm::new(USER, SO);
    let shared = Arc::new(MemShared::default());
    let a = node(&shared);
    let old = lines(&a.seal.init(&hsm, spec(3, 2), pin(USER), pin(SO)).unwrap());
    unseal(&a, &hsm, &old[..2]);
    let b = node(&shared);

    shared.down.store(true, Ordering::SeqCst);
    assert!(matches!(
        b.seal.submit_unseal_share(&hsm, &old[0]),
        Err(SealError::Storage(StoreError::SharedUnreachable(_)))
    ));
    assert_eq!(b.seal.status().received, 0, "the share was not taken");
    shared.down.store(false, Ordering::SeqCst);

    // Another node's ceremony holds the lock at the threshold: the last
    // share is handed back, the first kept; once free, it completes.
    b.seal.submit_unseal_share(&hsm, &old[0]).unwrap();
    shared.locked.store(true, Ordering::SeqCst);
    assert!(matches!(
        b.seal.submit_unseal_share(&hsm, &old[1]),
        Err(SealError::Storage(StoreError::SharedBusy(_)))
    ));
    assert_eq!(b.seal.status().received, 1);
    assert!(!b.seal.logged_in());
    // A rekey's commit on A waits for the same lock: refused before the
    // token's PINs change, so the old set still opens every node.
    a.seal.rekey_start(spec(3, 2)).unwrap();
    a.seal.rekey_submit(&old[0]).unwrap();
    let (_, set) = a.seal.rekey_submit(&old[1]).unwrap();
    let new = lines(&set.unwrap().shares);
    a.seal.rekey_verify(&hsm, &new[0]).unwrap();
    assert!(matches!(
        a.seal.rekey_verify(&hsm, &new[1]),
        Err(SealError::Storage(StoreError::SharedBusy(_)))
    ));
    assert!(shared.snapshot().pending.is_none());
    shared.locked.store(false, Ordering::SeqCst);
    assert!(b.seal.submit_unseal_share(&hsm, &old[1]).unwrap().complete);
    assert_eq!(shared.current_set(), hex::encode(set_of(&old[0])));
}

#[test]
fn a_rekey_another_node_committed_first_is_void() {
    let hsm = MemoryHsm::new(USER, SO);
    let shared = Arc::new(MemShared::default());
    let (a, b) = (node(&shared), node(&shared));
    let old = lines(&a.seal.init(&hsm, spec(3, 2), pin(USER), pin(SO)).unwrap());
    unseal(&a, &hsm, &old[..2]);
    unseal(&b, &hsm, &old[1..]);
    // B gathers a rekey, A commits one first.
    b.seal.rekey_start(spec(3, 2)).unwrap();
    b.seal.rekey_submit(&old[0]).unwrap();
    let (_, set) = b.seal.rekey_submit(&old[2]).unwrap();
    let b_new = lines(&set.unwrap().shares);
    let a_new = rekey(&a, &hsm, &old);
    b.seal.rekey_verify(&hsm, &b_new[0]).unwrap();
    assert!(matches!(
        b.seal.rekey_verify(&hsm, &b_new[1]),
        Err(SealError::RekeySuperseded { .. })
    ));
    // Nothing of B's is left: A's set is the cluster's and opens B.
    assert!(shared.snapshot().pending.is_none());
    assert_eq!(shared.current_set(), hex::encode(set_of(&a_new[0])));
    b.seal.seal(&hsm).unwrap();
    unseal(&b, &hsm, &a_new[..2]);
}

/// The share set a share line belongs to.
fn set_of(line: &str) -> [u8; 4] {
    share::parse(line).unwrap().set_id
}
