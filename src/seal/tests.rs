//! The seal's state machine on the in-memory HSM and a manual clock: every
//! transition and refusal, with the audit events each one records, and no
//! sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::audit::{EventKind as K, MemoryLog, Outcome as O};
use crate::clock::ManualClock;
use crate::hsm::memory::MemoryHsm;

const USER: &str = "provisioning-user-pin";
const SO: &str = "provisioning-so-pin";
const TIMEOUT: Duration = Duration::from_secs(900);

struct Rig {
    _dir: tempfile::TempDir,
    hsm: MemoryHsm,
    seal: Seal,
    sink: Arc<MemoryLog>,
    clock: Arc<ManualClock>,
}

fn rig(allow_single_share: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(MemoryLog::default());
    let clock = Arc::new(ManualClock::at(1_800_000_000));
    let seal = Seal::open(
        SealStore::new(dir.path()),
        SealConfig {
            ceremony_timeout: TIMEOUT,
            allow_single_share,
        },
    )
    .unwrap()
    .with_audit_sink(sink.clone())
    .with_clock(clock.clone());
    Rig {
        _dir: dir,
        hsm: MemoryHsm::new(USER, SO),
        seal,
        sink,
        clock,
    }
}

pub(super) fn pin(s: &str) -> Pin {
    Pin::from_bytes(s.as_bytes()).unwrap()
}

pub(super) fn spec(shares: u32, threshold: u32) -> ShareSpec<'static> {
    ShareSpec {
        shares,
        threshold,
        recipients: &[],
        labels: &[],
    }
}

/// Init 2 of 3; returns the share lines.
fn init(r: &Rig) -> Vec<String> {
    r.seal
        .init(&r.hsm, spec(3, 2), pin(USER), pin(SO))
        .unwrap()
        .iter()
        .map(|s| s.share.to_string())
        .collect()
}

/// Unseals with `shares`, then opens for keys as the core does once the
/// registry is loaded.
fn unseal(r: &Rig, shares: &[String]) {
    for s in shares {
        r.seal.submit_unseal_share(&r.hsm, s).unwrap();
    }
    assert!(r.seal.logged_in());
    r.seal.open_for_keys();
    assert_eq!(r.seal.phase(), Phase::Unsealed);
}

#[test]
fn init_then_unseal_with_a_quorum() {
    let r = rig(false);
    assert_eq!(r.seal.phase(), Phase::Uninitialized);
    assert!(matches!(
        r.seal.require_unsealed(),
        Err(SealError::NotInitialized)
    ));
    let shares = init(&r);
    assert_eq!(shares.len(), 3);
    assert_eq!(r.seal.phase(), Phase::Sealed);
    assert!(r.seal.status().init_pending);

    let p = r.seal.submit_unseal_share(&r.hsm, &shares[0]).unwrap();
    assert_eq!((p.received, p.threshold, p.complete), (1, 2, false));
    assert!(matches!(
        r.seal.require_unsealed(),
        Err(SealError::Sealed {
            received: 1,
            threshold: 2
        })
    ));
    // The same share twice is refused and changes nothing.
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, &shares[0]),
        Err(SealError::Duplicate { .. })
    ));
    assert_eq!(r.seal.status().received, 1);
    let p = r.seal.submit_unseal_share(&r.hsm, &shares[2]).unwrap();
    assert!(p.complete);
    // Logged in, but not open for keys until the owner has loaded what the
    // keyring protects: Status still says sealed, key operations refused.
    assert!(r.seal.logged_in());
    assert_eq!(r.seal.phase(), Phase::Sealed);
    assert!(matches!(
        r.seal.require_unsealed(),
        Err(SealError::NotServing { .. })
    ));
    assert!(r.seal.with_keyring(|_| ()).is_ok());
    r.seal.open_for_keys();
    assert_eq!(r.seal.phase(), Phase::Unsealed);
    assert!(r.seal.require_unsealed().is_ok());
    assert!(!r.seal.status().init_pending);
    // The token's PINs were changed away from the provisioning ones.
    assert!(r.hsm.verify_pins(&pin(USER), &pin(SO)).is_err());
    assert!(r.seal.with_keyring(|_| ()).is_ok());
    let kinds = r.sink.kinds();
    for want in [
        (K::Init, O::SharesIssued),
        (K::UnsealShare, O::Accepted),
        (K::UnsealShare, O::Refused),
        (K::InitCommit, O::Ok),
        (K::Unseal, O::Ok),
    ] {
        assert!(kinds.contains(&want), "{want:?} not in {kinds:?}");
    }
    // Unsealed: another share is refused.
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, &shares[1]),
        Err(SealError::AlreadyUnsealed)
    ));
}

#[test]
fn init_is_refused_when_it_cannot_or_must_not_happen() {
    let r = rig(false);
    // Threshold 1 outside dev mode, threshold above the count, no shares.
    for (n, t) in [(1, 1), (3, 1), (2, 3), (0, 0)] {
        assert!(
            matches!(
                r.seal.init(&r.hsm, spec(n, t), pin(USER), pin(SO)),
                Err(SealError::InvalidParameter { .. })
            ),
            "{n} of {t}"
        );
    }
    // Wrong provisioning PINs: refused, nothing written.
    assert!(r
        .seal
        .init(&r.hsm, spec(3, 2), pin("wrong"), pin(SO))
        .is_err());
    assert_eq!(r.seal.phase(), Phase::Uninitialized);
    // Until the first unseal commits it, init may simply run again (the
    // token still has its provisioning PINs); the earlier shares are void.
    let first = init(&r);
    let shares = init(&r);
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, &first[0]),
        Err(SealError::WrongSet { .. })
    ));
    unseal(&r, &shares[..2]);
    assert!(matches!(
        r.seal.init(&r.hsm, spec(3, 2), pin(USER), pin(SO)),
        Err(SealError::AlreadyInitialized { .. })
    ));
    let single = rig(true);
    assert!(single
        .seal
        .init(&single.hsm, spec(1, 1), pin(USER), pin(SO))
        .is_ok());
}

#[test]
fn bad_and_foreign_shares_are_refused() {
    let r = rig(false);
    let shares = init(&r);
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, "not a share"),
        Err(SealError::BadShare(_))
    ));
    // A share of another set (another daemon's init).
    let other = rig(false);
    let foreign = init(&other);
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, &foreign[0]),
        Err(SealError::WrongSet { .. })
    ));
    assert_eq!(r.seal.status().received, 0);
    unseal(&r, &shares[..2]);
}

#[test]
fn an_unseal_in_progress_expires_on_the_clock() {
    let r = rig(false);
    let shares = init(&r);
    r.seal.submit_unseal_share(&r.hsm, &shares[0]).unwrap();
    r.clock.advance(TIMEOUT - Duration::from_secs(1));
    assert_eq!(r.seal.status().received, 1);
    r.clock.advance(Duration::from_secs(2));
    assert_eq!(
        r.seal.status().received,
        0,
        "the first share should have expired"
    );
    assert!(r.sink.kinds().contains(&(K::UnsealExpired, O::Reset)));
    // The quorum must be gathered again from the start.
    let p = r.seal.submit_unseal_share(&r.hsm, &shares[1]).unwrap();
    assert_eq!(p.received, 1);
    // An explicit reset discards what was received.
    assert_eq!(r.seal.reset_unseal().unwrap(), 1);
    assert_eq!(r.seal.status().received, 0);
}

#[test]
fn seal_closes_and_a_quorum_opens_again() {
    let r = rig(false);
    let shares = init(&r);
    unseal(&r, &shares[..2]);
    // Closing (the final checkpoint): key operations stop at once, a share
    // is still refused as the daemon is logged in.
    assert!(r.seal.begin_closing());
    assert!(r.seal.require_unsealed().is_err());
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, &shares[0]),
        Err(SealError::AlreadyUnsealed)
    ));
    r.seal.seal(&r.hsm).unwrap();
    assert_eq!(r.seal.phase(), Phase::Sealed);
    assert!(!r.seal.begin_closing());
    assert!(!r.hsm.is_logged_in());
    assert!(matches!(
        r.seal.with_keyring(|_| ()),
        Err(SealError::Sealed { .. })
    ));
    assert!(r.sink.kinds().contains(&(K::Seal, O::Ok)));
    unseal(&r, &shares[1..]);
}

#[test]
fn rekey_issues_a_new_set_that_is_verified_before_it_replaces_the_old() {
    let r = rig(false);
    let old = init(&r);
    unseal(&r, &old[..2]);
    // Only while unsealed, one at a time.
    let (id, need) = r.seal.rekey_start(spec(5, 3)).unwrap();
    assert_eq!(need, 2);
    assert!(matches!(
        r.seal.rekey_start(spec(5, 3)),
        Err(SealError::RekeyInProgress { .. })
    ));
    let (p, none) = r.seal.rekey_submit(&old[0]).unwrap();
    assert_eq!(p.received, 1);
    assert!(none.is_none());
    let (_, set) = r.seal.rekey_submit(&old[1]).unwrap();
    let new: Vec<String> = set
        .unwrap()
        .shares
        .iter()
        .map(|s| s.share.to_string())
        .collect();
    assert_eq!(new.len(), 5);
    // Not committed until three new shares verify; an old share is not one.
    assert!(r.seal.rekey_verify(&r.hsm, &old[2]).is_err());
    for s in &new[..2] {
        assert!(!r.seal.rekey_verify(&r.hsm, s).unwrap().complete);
    }
    assert!(r.seal.rekey_verify(&r.hsm, &new[4]).unwrap().complete);
    assert!(r.sink.kinds().contains(&(K::RekeyCommit, O::Ok)), "{id}");
    // The renewed login must be loaded again before keys are served.
    assert!(r.seal.require_unsealed().is_err());
    r.seal.open_for_keys();
    assert!(r.seal.require_unsealed().is_ok());
    // After a seal, only the new set opens it.
    r.seal.seal(&r.hsm).unwrap();
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, &old[0]),
        Err(SealError::WrongSet { .. })
    ));
    unseal(&r, &new[1..4]);
}

#[test]
fn a_rekey_can_be_cancelled_and_expires() {
    let r = rig(false);
    let old = init(&r);
    assert!(
        r.seal.rekey_start(spec(3, 2)).is_err(),
        "a sealed daemon cannot rekey"
    );
    unseal(&r, &old[..2]);
    r.seal.rekey_start(spec(3, 2)).unwrap();
    r.seal.rekey_cancel().unwrap();
    assert!(matches!(r.seal.rekey_cancel(), Err(SealError::NoRekey)));
    assert!(matches!(
        r.seal.rekey_submit(&old[0]),
        Err(SealError::NoRekey)
    ));
    r.seal.rekey_start(spec(3, 2)).unwrap();
    r.seal.rekey_submit(&old[0]).unwrap();
    r.clock.advance(TIMEOUT + Duration::from_secs(1));
    assert!(r.seal.status().rekey.is_none());
    assert!(r.sink.kinds().contains(&(K::RekeyExpired, O::Cancelled)));
    // The old set still works.
    r.seal.seal(&r.hsm).unwrap();
    unseal(&r, &old[1..]);
}

#[test]
fn an_init_commit_cut_short_after_the_pin_change_is_finished_by_the_next_quorum() {
    let r = rig(false);
    let shares = init(&r);
    // The seal file cannot be written: the PINs change, the commit fails
    // (as a crash between the two would leave it).
    let blocker = r._dir.path().join("seal.tmp");
    std::fs::create_dir(&blocker).unwrap();
    r.seal.submit_unseal_share(&r.hsm, &shares[0]).unwrap();
    assert!(matches!(
        r.seal.submit_unseal_share(&r.hsm, &shares[1]),
        Err(SealError::Storage(_))
    ));
    assert!(
        r.hsm.verify_pins(&pin(USER), &pin(SO)).is_err(),
        "the PINs changed"
    );
    assert!(!r.hsm.is_logged_in(), "a failed commit leaves no login");
    assert!(r.seal.status().init_pending);
    // The provisioning PINs are gone, but the derived ones work: the next
    // quorum finishes the commit instead of asking for an init that could
    // only spend the token's PIN attempts.
    std::fs::remove_dir(&blocker).unwrap();
    unseal(&r, &shares[1..]);
    assert!(!r.seal.status().init_pending);
    assert!(r.sink.kinds().contains(&(K::InitCommit, O::Ok)));
}

#[test]
fn a_rekey_cannot_reopen_a_daemon_that_is_closing() {
    let r = rig(false);
    let old = init(&r);
    unseal(&r, &old[..2]);
    r.seal.rekey_start(spec(3, 2)).unwrap();
    r.seal.rekey_submit(&old[0]).unwrap();
    assert!(r.seal.begin_closing());
    assert!(
        matches!(
            r.seal.rekey_submit(&old[1]),
            Err(SealError::NotServing { stage: "sealing" })
        ),
        "no rekey step while closing"
    );
    assert!(!r.seal.open_for_keys(), "closing stays closing");
    assert!(r.seal.require_unsealed().is_err());
}
