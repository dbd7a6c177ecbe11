//! The key lifecycle on the in-memory HSM and a manual clock: every key
//! and version state transition, allowed and refused, destruction timing
//! and approvals without sleeping, holds, the data path's refusals, and the
//! events each change records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::model::{DestroyKind, KeyState, RequestStatus, VersionState};
use super::*;
use crate::audit::{EventKind as K, MemoryLog, Outcome as O};
use crate::clock::ManualClock;
use crate::hsm::memory::MemoryHsm;
use crate::seal::{store::SealStore, Seal, SealConfig};

const USER: &str = "provisioning-user-pin";
const SO: &str = "provisioning-so-pin";
const DAY: Duration = Duration::from_secs(86_400);

struct Rig {
    _dir: tempfile::TempDir,
    core: Keywarden,
    clock: Arc<ManualClock>,
    sink: Arc<MemoryLog>,
    hsm: Arc<MemoryHsm>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Arc::new(MemoryHsm::new(USER, SO));
    let clock = Arc::new(ManualClock::at(1_800_000_000));
    let sink = Arc::new(MemoryLog::default());
    let registry = registry::Registry::open(&dir.path().join("registry.db")).unwrap();
    let seal = Seal::open(
        SealStore::new(dir.path()),
        SealConfig {
            ceremony_timeout: Duration::from_secs(900),
            allow_single_share: true,
        },
    )
    .unwrap()
    .with_clock(clock.clone());
    let core = Keywarden::start(hsm.clone(), registry, seal)
        .with_clock(clock.clone())
        .with_audit(sink.clone())
        .with_lifecycle(LifecycleConfig {
            destroy_min_delay: DAY,
            ..LifecycleConfig::default()
        });
    let spec = ShareSpec {
        shares: 1,
        threshold: 1,
        recipients: &[],
        labels: &[],
    };
    let shares = core
        .ceremonies()
        .init(
            spec,
            Pin::from_bytes(USER.as_bytes()).unwrap(),
            Pin::from_bytes(SO.as_bytes()).unwrap(),
        )
        .unwrap();
    assert!(
        core.ceremonies()
            .unseal(&shares[0].share, false)
            .unwrap()
            .complete
    );
    Rig {
        _dir: dir,
        core,
        clock,
        sink,
        hsm,
    }
}

fn admin(uid: u32) -> Actor {
    Actor {
        uid,
        principal: format!("admin-{uid}"),
    }
}

fn open_gate(_: &str, _: &BTreeMap<String, String>) -> Result<bool, crate::policy::Denied> {
    Ok(false)
}

fn generate(core: &Keywarden, key: &str) -> CoreResult<GeneratedKey> {
    let req = GenerateRequest {
        key: key.into(),
        context: HashMap::from([("t".to_string(), "1".to_string())]),
    };
    let mut items = core
        .data()
        .generate_data_keys(vec![req], true, &open_gate)?;
    items.pop().unwrap().result
}

fn state(core: &Keywarden, key: &str) -> KeyState {
    core.keys().describe_key(key).unwrap().state
}

#[test]
fn disable_and_enable_are_idempotent_and_refused_once_destroyed() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    assert!(generate(&r.core, "k").is_ok());
    r.core.keys().disable("k").unwrap();
    assert_eq!(state(&r.core, "k"), KeyState::Suspended);
    assert!(matches!(
        generate(&r.core, "k"),
        Err(CoreError::KeyUnusable { .. })
    ));
    r.core.keys().disable("k").unwrap();
    r.core.keys().enable("k").unwrap();
    r.core.keys().enable("k").unwrap();
    assert_eq!(state(&r.core, "k"), KeyState::Active);
    assert!(generate(&r.core, "k").is_ok());
    let kinds = r.sink.kinds();
    assert!(kinds.contains(&(K::Disable, O::Ok)) && kinds.contains(&(K::Enable, O::Ok)));
    assert!(matches!(
        r.core.keys().disable("missing"),
        Err(CoreError::KeyNotFound { .. })
    ));
    assert!(matches!(
        r.core
            .keys()
            .create_key("k", "", None, crate::hsm::KeyKind::Aes),
        Err(CoreError::AlreadyExists { .. })
    ));
}

#[test]
fn rotation_and_version_revocation() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    let v1 = generate(&r.core, "k").unwrap();
    let rec = r.core.keys().rotate("k", "by hand").unwrap();
    assert_eq!(rec.versions.len(), 2);
    assert_eq!(rec.versions[0].state, VersionState::Deactivated);
    assert_eq!(rec.versions[1].state, VersionState::Active);
    let v2 = generate(&r.core, "k").unwrap();
    assert_eq!((v1.key_version, v2.key_version), (1, 2));
    // An older version is revoked for good.
    let rec = r.core.keys().revoke_version("k", 1).unwrap();
    assert_eq!(rec.versions[0].state, VersionState::Compromised);
    // Revoking the active version rotates first: encryption goes on under
    // a new version, the revoked one never decrypts again.
    let rec = r.core.keys().revoke_version("k", 2).unwrap();
    assert_eq!(rec.versions.len(), 3);
    assert_eq!(rec.versions[1].state, VersionState::Compromised);
    assert_eq!(rec.versions[2].state, VersionState::Active);
    assert_eq!(generate(&r.core, "k").unwrap().key_version, 3);
    assert!(matches!(
        r.core.keys().revoke_version("k", 9),
        Err(CoreError::InvalidArgument {
            field: "version",
            ..
        })
    ));
    assert!(r.sink.kinds().contains(&(K::Rotate, O::Ok)));
    assert!(r.sink.kinds().contains(&(K::RevokeVersion, O::Ok)));
}

#[test]
fn scheduled_destruction_needs_two_admins_and_waits_out_its_period() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    // Below the minimum waiting period: refused.
    assert!(r
        .core
        .keys()
        .request_destroy(
            "k",
            DestroyKind::Scheduled,
            Duration::from_secs(60),
            &admin(1)
        )
        .is_err());
    let (req, rec) = r
        .core
        .keys()
        .request_destroy("k", DestroyKind::Scheduled, 2 * DAY, &admin(1))
        .unwrap();
    assert_eq!(req.status, RequestStatus::Open);
    assert_eq!(
        rec.state,
        KeyState::Active,
        "one admin alone changes nothing"
    );
    // The requester cannot approve twice.
    assert!(r
        .core
        .keys()
        .approve_destroy("k", &req.id, &admin(1))
        .is_err());
    let (req, rec) = r
        .core
        .keys()
        .approve_destroy("k", &req.id, &admin(2))
        .unwrap();
    assert_eq!(req.status, RequestStatus::Approved);
    assert_eq!(rec.state, KeyState::PendingDestruction);
    assert!(matches!(
        generate(&r.core, "k"),
        Err(CoreError::KeyUnusable { .. })
    ));
    // Just before it is due: nothing happens.
    r.clock.advance(2 * DAY - Duration::from_secs(1));
    r.core.keys().tick();
    assert_eq!(state(&r.core, "k"), KeyState::PendingDestruction);
    assert_eq!(r.hsm.list_cmks().unwrap().len(), 1);
    // Due: destroyed, the HSM object gone, never usable again.
    r.clock.advance(Duration::from_secs(2));
    r.core.keys().tick();
    let rec = r.core.keys().describe_key("k").unwrap();
    assert_eq!(rec.state, KeyState::Destroyed);
    assert!(rec.destroyed_at.is_some());
    assert!(r.hsm.list_cmks().unwrap().is_empty());
    assert!(matches!(
        generate(&r.core, "k"),
        Err(CoreError::KeyDestroyed { .. })
    ));
    assert!(r.core.keys().enable("k").is_err());
    assert!(
        matches!(r.core.keys().create_key("k", "", None, crate::hsm::KeyKind::Aes), Err(CoreError::Conflict(m)) if m.contains("tombstone"))
    );
    let kinds = r.sink.kinds();
    for want in [
        (K::DestroyRequested, O::Ok),
        (K::DestroyFullyApproved, O::Ok),
        (K::Destroyed, O::Ok),
    ] {
        assert!(kinds.contains(&want), "{want:?}");
    }
}

#[test]
fn a_destruction_can_be_cancelled_until_it_begins() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    let (req, _) = r
        .core
        .keys()
        .request_destroy("k", DestroyKind::Scheduled, 2 * DAY, &admin(1))
        .unwrap();
    r.core
        .keys()
        .approve_destroy("k", &req.id, &admin(2))
        .unwrap();
    let rec = r.core.keys().cancel_destroy("k", &admin(3)).unwrap();
    assert_eq!(rec.state, KeyState::Active, "back to its state before");
    r.clock.advance(3 * DAY);
    r.core.keys().tick();
    assert_eq!(state(&r.core, "k"), KeyState::Active);
    assert!(
        r.core.keys().cancel_destroy("k", &admin(3)).is_err(),
        "nothing to cancel"
    );
}

#[test]
fn a_legal_hold_refuses_destruction_and_pauses_a_scheduled_one() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    let (hold, _) = r
        .core
        .keys()
        .place_hold("k", "litigation 2026-117", Some("lit-117"), &admin(1))
        .unwrap();
    assert!(matches!(
        r.core
            .keys()
            .request_destroy("k", DestroyKind::Now, Duration::ZERO, &admin(1)),
        Err(CoreError::Held { .. })
    ));
    r.core.keys().release_hold("k", &hold, &admin(1)).unwrap();
    assert!(
        r.core.keys().release_hold("k", &hold, &admin(1)).is_err(),
        "released twice"
    );
    let (req, _) = r
        .core
        .keys()
        .request_destroy("k", DestroyKind::Scheduled, DAY, &admin(1))
        .unwrap();
    r.core
        .keys()
        .approve_destroy("k", &req.id, &admin(2))
        .unwrap();
    r.core
        .keys()
        .place_hold("k", "regulator", Some("reg-9"), &admin(3))
        .unwrap();
    r.clock.advance(2 * DAY);
    r.core.keys().tick();
    assert_ne!(
        state(&r.core, "k"),
        KeyState::Destroyed,
        "a hold must pause the destruction"
    );
    r.core.keys().release_hold("k", "reg-9", &admin(3)).unwrap();
    r.core.keys().tick();
    assert_eq!(state(&r.core, "k"), KeyState::Destroyed);
}

#[test]
fn destroy_now_with_approvals_destroys_at_once_and_sealed_refuses_everything() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    let (req, _) = r
        .core
        .keys()
        .request_destroy("k", DestroyKind::Now, Duration::ZERO, &admin(1))
        .unwrap();
    r.core
        .keys()
        .approve_destroy("k", &req.id, &admin(2))
        .unwrap();
    assert_eq!(state(&r.core, "k"), KeyState::Destroyed);
    r.core
        .keys()
        .create_key("other", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    r.core.ceremonies().seal().unwrap();
    assert!(matches!(
        generate(&r.core, "other"),
        Err(CoreError::Seal(_))
    ));
    assert!(matches!(
        r.core
            .keys()
            .create_key("x", "", None, crate::hsm::KeyKind::Aes),
        Err(CoreError::Seal(_))
    ));
    assert!(matches!(
        r.core.keys().describe_key("other"),
        Err(CoreError::Seal(_))
    ));
}

#[test]
fn key_changes_are_published_for_client_caches_but_not_counter_reservations() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    let mut rx = r.core.watch();
    generate(&r.core, "k").unwrap();
    assert!(
        rx.try_recv().is_err(),
        "a reservation of encryptions is not a key change"
    );
    r.core.keys().disable("k").unwrap();
    match rx.try_recv().unwrap() {
        KeyChange::Changed { name, state, .. } => {
            assert_eq!((name.as_str(), state), ("k", "suspended"))
        }
        other => panic!("{other:?}"),
    }
    r.core.ceremonies().seal().unwrap();
    assert_eq!(rx.try_recv().unwrap(), KeyChange::Reset);
}

// -- small fields and MACs ---------------------------------------------------

fn open_mac_gate(_: &str) -> Result<bool, crate::policy::Denied> {
    Ok(false)
}

fn encrypt_field(core: &Keywarden, key: &str, pt: &[u8], row: &str) -> CoreResult<Encrypted> {
    let req = EncryptRequest {
        key: key.into(),
        plaintext: zeroize::Zeroizing::new(pt.to_vec()),
        context: HashMap::from([("row".to_string(), row.to_string())]),
    };
    core.data()
        .encrypt(vec![req], &open_gate)?
        .pop()
        .unwrap()
        .result
}

fn decrypt_blob(core: &Keywarden, blob: &[u8], row: &str) -> CoreResult<Decrypted> {
    let req = DecryptRequest {
        blob: blob.to_vec(),
        context: HashMap::from([("row".to_string(), row.to_string())]),
        key: None,
    };
    core.data()
        .decrypt(vec![req], &open_gate)?
        .pop()
        .unwrap()
        .result
}

fn mac(core: &Keywarden, key: &str, data: &[u8], version: Option<u32>) -> CoreResult<MacOutput> {
    let req = MacRequest {
        key: key.into(),
        data: zeroize::Zeroizing::new(data.to_vec()),
        version,
        mac: None,
    };
    core.data()
        .macs(vec![req], &open_mac_gate, "GenerateMac")?
        .pop()
        .unwrap()
        .result
}

#[test]
fn encrypt_makes_format_2_blobs_that_decrypt_opens_only_in_their_context() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    for n in [0usize, 1, 100, 4096] {
        let pt = vec![0x61u8; n];
        let e = encrypt_field(&r.core, "k", &pt, "7").unwrap();
        assert_eq!(e.blob.len(), blob::BLOB_V2_MIN + n);
        assert_eq!(&e.blob[..4], b"KW\x02\x01");
        let d = decrypt_blob(&r.core, &e.blob, "7").unwrap();
        assert!(matches!(d.plaintext, Plaintext::Payload(_)));
        assert_eq!(d.plaintext.expose(), &pt[..]);
        assert!(matches!(
            decrypt_blob(&r.core, &e.blob, "8"),
            Err(CoreError::DecryptFailed)
        ));
    }
    // A payload blob relabelled as a data-key blob fails: the formats'
    // AAD labels differ.
    let e = encrypt_field(&r.core, "k", &[1u8; 32], "7").unwrap();
    let mut as_v1 = e.blob.clone();
    as_v1[2] = 1;
    assert!(decrypt_blob(&r.core, &as_v1, "7").is_err());
    assert!(matches!(
        encrypt_field(&r.core, "k", &[0u8; 4097], "7"),
        Err(CoreError::InvalidArgument {
            field: "plaintext",
            ..
        })
    ));
    // Encryptions count against the version like data keys.
    assert!(
        r.core
            .data()
            .encryptions(&r.core.keys().describe_key("k").unwrap().versions[0].hsm_id)
            >= 5
    );
}

#[test]
fn macs_are_per_key_deterministic_and_pinned_versions_stay_usable() {
    let r = rig();
    r.core
        .keys()
        .create_key("h", "", None, crate::hsm::KeyKind::Hmac)
        .unwrap();
    r.core
        .keys()
        .create_key("a", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    assert_eq!(
        r.core.keys().describe_key("h").unwrap().kind,
        crate::hsm::KeyKind::Hmac
    );
    let m1 = mac(&r.core, "h", b"MRN-1", None).unwrap();
    assert_eq!(m1.key_version, 1);
    assert_eq!(m1.mac, mac(&r.core, "h", b"MRN-1", None).unwrap().mac);
    assert_ne!(m1.mac, mac(&r.core, "h", b"MRN-2", None).unwrap().mac);
    // Kinds do not mix, either way; the error names the field.
    assert!(matches!(
        mac(&r.core, "a", b"x", None),
        Err(CoreError::WrongKind { field: "key", .. })
    ));
    assert!(matches!(
        generate(&r.core, "h"),
        Err(CoreError::WrongKind { field: "key", .. })
    ));
    assert!(matches!(
        encrypt_field(&r.core, "h", b"x", "1"),
        Err(CoreError::WrongKind { .. })
    ));
    // After a rotation the newest version MACs differently, and the
    // version an index was built with still answers when named.
    r.core.keys().rotate("h", "test").unwrap();
    let m2 = mac(&r.core, "h", b"MRN-1", None).unwrap();
    assert_eq!(m2.key_version, 2);
    assert_ne!(m2.mac, m1.mac);
    assert_eq!(mac(&r.core, "h", b"MRN-1", Some(1)).unwrap().mac, m1.mac);
    assert!(matches!(
        mac(&r.core, "h", b"MRN-1", Some(9)),
        Err(CoreError::InvalidArgument {
            field: "key_version",
            ..
        })
    ));
    // A revoked version never MACs again.
    r.core.keys().revoke_version("h", 1).unwrap();
    assert!(matches!(
        mac(&r.core, "h", b"MRN-1", Some(1)),
        Err(CoreError::VersionRevoked { .. })
    ));
    // Verification compares in constant time; a wrong MAC is `valid: false`.
    let verify = |m: &[u8]| {
        let req = MacRequest {
            key: "h".into(),
            data: zeroize::Zeroizing::new(b"MRN-1".to_vec()),
            version: None,
            mac: Some(m.to_vec()),
        };
        r.core
            .data()
            .macs(vec![req], &open_mac_gate, "VerifyMac")
            .unwrap()
            .pop()
            .unwrap()
            .result
    };
    assert!(verify(&m2.mac).unwrap().valid);
    let mut bad = m2.mac;
    bad[31] ^= 1;
    assert!(!verify(&bad).unwrap().valid);
    assert!(matches!(
        verify(&bad[..31]),
        Err(CoreError::InvalidArgument { field: "mac", .. })
    ));
}

/// A disable or a revocation that lands while a key operation is in the
/// HSM wins: the operation's answer is refused, not served from the state
/// it started in.
#[test]
fn a_change_that_lands_during_the_hsm_call_wins() {
    let Rig {
        _dir, core, hsm, ..
    } = rig();
    let core = Arc::new(core);
    core.keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    core.keys()
        .create_key("h", "", None, crate::hsm::KeyKind::Hmac)
        .unwrap();
    let blob = generate(&core, "k").unwrap().blob;
    let change = |what: &'static str| -> crate::hsm::memory::CryptoHook {
        let weak = Arc::downgrade(&core);
        let done = std::sync::atomic::AtomicBool::new(false);
        Arc::new(move || {
            if done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let core = weak.upgrade().unwrap();
            match what {
                "disable k" => drop(core.keys().disable("k").unwrap()),
                "revoke h" => {
                    core.keys().rotate("h", "test").unwrap();
                    drop(core.keys().revoke_version("h", 1).unwrap());
                }
                _ => unreachable!(),
            }
        })
    };
    hsm.on_crypto(Some(change("disable k")));
    assert!(matches!(
        generate(&core, "k"),
        Err(CoreError::KeyUnusable { .. })
    ));
    hsm.on_crypto(None);
    core.keys().enable("k").unwrap();
    let unwrap = || {
        let req = DecryptRequest {
            blob: blob.clone(),
            context: HashMap::from([("t".to_string(), "1".to_string())]),
            key: None,
        };
        core.data()
            .decrypt(vec![req], &open_gate)
            .unwrap()
            .pop()
            .unwrap()
            .result
    };
    assert!(unwrap().is_ok(), "the blob opens while nothing changes");
    hsm.on_crypto(Some(change("disable k")));
    assert!(matches!(unwrap(), Err(CoreError::KeyUnusable { .. })));
    hsm.on_crypto(None);
    hsm.on_crypto(Some(change("revoke h")));
    assert!(matches!(
        mac(&core, "h", b"MRN", Some(1)),
        Err(CoreError::VersionRevoked { .. })
    ));
    hsm.on_crypto(None);
}

#[test]
fn a_destruction_that_is_not_due_on_the_record_as_it_is_now_is_not_carried_out() {
    // A scheduler (or a leader of a cluster) that decided from an older
    // view of the key: the destruction was cancelled meanwhile.
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    assert!(matches!(
        r.core.keys().execute_destruction("k"),
        Err(CoreError::Conflict(m)) if m.contains("no destruction is due")
    ));
    assert_eq!(state(&r.core, "k"), KeyState::Active);
    generate(&r.core, "k").unwrap();
}

#[test]
fn a_database_behind_the_hsm_counter_is_refused_even_at_the_applied_generation() {
    let r = rig();
    r.core
        .keys()
        .create_key("k", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    assert!(generate(&r.core, "k").is_ok());
    let Ok(membership::SyncState::Current(g)) = r.core.cluster().sync_state() else {
        panic!("not current after a create");
    };
    // What a database hiding a later commit looks like from a node that
    // applied `g`: the writer advanced the HSM's counter after committing
    // `g + 1`, and the database still answers `g`.
    r.hsm.write_counter(REGISTRY_COUNTER_LABEL, g + 1).unwrap();
    assert!(generate(&r.core, "k").is_ok(), "nothing looked yet");
    r.core.cluster().sync_state().unwrap();
    let refused = generate(&r.core, "k");
    assert!(
        matches!(&refused, Err(CoreError::RegistryTampered { what, .. }) if what.contains("older")),
        "{:?}",
        refused.err().map(|e| e.to_string())
    );
    assert!(r
        .sink
        .kinds()
        .contains(&(K::RegistryTampering, O::Detected)));
}

#[test]
fn every_registry_write_writes_one_ledger_line_first() {
    let r = rig();
    let before = r.sink.lines().len();
    r.core
        .keys()
        .create_key("ledgered", "", None, crate::hsm::KeyKind::Aes)
        .unwrap();
    r.core.keys().disable("ledgered").unwrap();
    r.core.keys().enable("ledgered").unwrap();
    // A refused change writes nothing.
    assert!(r.core.keys().enable("no-such-key").is_err());
    let lines: Vec<_> = r.sink.lines().split_off(before);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let mut last = 0;
    for l in &lines {
        assert_eq!(l["type"], crate::backup::ledger::WRITE);
        assert_eq!(l["key"], "ledgered");
        let g = l["generation"].as_u64().unwrap();
        assert!(g > last, "generations rise: {lines:?}");
        last = g;
    }
    // The log has witnessed the registry's newest generation.
    assert_eq!(
        crate::audit::AuditLog::witnessed_registry_generation(r.sink.as_ref()),
        last
    );
}
