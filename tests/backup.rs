//! Backup and restore end to end: the real daemon (dev mode on a real
//! software token), `keywarden operator backup` and `restore` as an
//! operator runs them, and a restored daemon unsealed with the original
//! shares. Runs on SoftHSM, and on Kryoptic through scripts/kryoptic.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use keywarden::proto;

/// The restore CLI, with a share on stdin.
fn restore(dir: &Path, backup: &Path, share: &str, trail: &[PathBuf]) -> std::process::Output {
    let mut args: Vec<String> = vec![
        "operator".into(),
        "restore".into(),
        "--from".into(),
        backup.display().to_string(),
        "--dir".into(),
        dir.display().to_string(),
    ];
    args.extend(token_module_args());
    if !trail.is_empty() {
        args.push("--replay-audit".into());
        args.extend(trail.iter().map(|p| p.display().to_string()));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cli(&refs, Some(&format!("{share}\n")))
}

fn run_cli(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    run_bin(args, stdin, None)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn backup(d: &Daemon, to: &Path) {
    let out = d.cli(
        &["operator", "backup", "--out", &to.display().to_string()],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
}

async fn unseal(d: &Daemon, share: &str, accept: bool) -> Result<(), tonic::Status> {
    let mut c = d.client().await;
    c.operator
        .unseal(proto::UnsealRequest {
            share: share.into(),
            reset: false,
            accept_restore_window: accept,
        })
        .await
        .map(|_| ())
}

async fn opens(c: &mut keywarden_client::Client, blob: &[u8], plaintext: &[u8]) {
    let r = decrypt(c, blob, &[("case", "1")]).await.unwrap();
    assert_eq!(r.plaintext, plaintext);
}

/// The host is lost (its daemon stopped), its audit log copied off it; the
/// backup is restored with that trail into a new directory under `work`,
/// and the restored daemon unsealed with the original share.
async fn lose_and_restore(d: &mut Daemon, work: &Path, file: &Path, share: &str) -> Daemon {
    d.stop();
    let trail = copy_trail(d, &work.join("offsite"));
    let target = work.join("restored");
    let o = restore(&target, file, share, &trail);
    assert!(o.status.success(), "{}", text(&o));
    let r = Daemon::builder().at(&target).start().await;
    unseal(&r, share, false).await.unwrap();
    r.wait_phase("unsealed").await;
    r
}

fn copy_trail(d: &Daemon, to: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(to).unwrap();
    d.audit_files()
        .iter()
        .map(|f| {
            let dest = to.join(f.file_name().unwrap());
            std::fs::copy(f, &dest).unwrap();
            dest
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_with_the_trail_keeps_what_happened_after_the_backup() {
    let mut d = Daemon::builder()
        .args(&["--destroy-approvals", "1"])
        .start()
        .await;
    let share = d.dev_share.clone().unwrap();
    let mut c = d.client().await;
    for k in ["patients", "imaging", "retired", "revoked", "held"] {
        create_key(&mut c, k).await;
    }
    let case = [("case", "1")];
    let mut blobs = std::collections::BTreeMap::new();
    for k in ["patients", "imaging", "retired", "revoked", "held"] {
        let g = generate(&mut c, k, &case).await;
        blobs.insert(k, (g.ciphertext_blob, g.plaintext));
    }
    // A second version of "revoked", so revoking v1 leaves it usable.
    c.keys.rotate_key(name_req("revoked")).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b.kwb");
    backup(&d, &file);

    // After the backup: each kind of change the replay must keep.
    c.keys.destroy_now(name_req("retired")).await.unwrap();
    assert_eq!(describe(&mut c, "retired").await.state, "destroyed");
    c.keys.disable_key(name_req("imaging")).await.unwrap();
    c.keys
        .revoke_version(proto::RevokeVersionRequest {
            name: "revoked".into(),
            version: 1,
        })
        .await
        .unwrap();
    c.keys
        .place_hold(proto::PlaceHoldRequest {
            name: "held".into(),
            reason: "litigation 2026-114".into(),
            hold_id: String::new(),
        })
        .await
        .unwrap();
    create_key(&mut c, "after-backup").await;
    let late = generate(&mut c, "after-backup", &case).await;
    drop(c);
    let listed = String::from_utf8_lossy(
        &d.pkcs11_tool(&["--list-objects", "--type", "secrkey"])
            .stdout,
    )
    .into_owned();
    assert!(!listed.contains("keywarden:retired/v1"), "{listed}");

    // The host is lost; the trail survives off it.
    d.stop();
    let trail = copy_trail(&d, &work.path().join("offsite"));
    std::fs::remove_dir_all(d.dir.join("state")).unwrap();
    std::fs::remove_dir_all(d.dir.join("tokens")).unwrap();

    let target = work.path().join("restored");
    let o = restore(&target, &file, &share, &trail);
    let report = text(&o);
    assert!(o.status.success(), "{report}");
    assert!(
        report.contains("LOST: after-backup (created after the backup)"),
        "{report}"
    );
    assert!(report.contains("retired: active -> destroyed"), "{report}");
    assert!(
        report.contains("destroyed on the token (destroyed after the backup): retired/v1"),
        "{report}"
    );

    let mut r = Daemon::builder().at(&target).start().await;
    r.dev_share = Some(share.clone());
    assert_eq!(r.phase().await, "sealed");
    unseal(&r, &share, false).await.unwrap();
    r.wait_phase("unsealed").await;
    let mut c = r.client().await;
    let (blob, pt) = &blobs["patients"];
    opens(&mut c, blob, pt).await;
    let (blob, pt) = &blobs["held"];
    opens(&mut c, blob, pt).await;
    assert_status(
        decrypt(&mut c, &blobs["retired"].0, &case).await,
        tonic::Code::FailedPrecondition,
        "destroyed",
    );
    assert_status(
        decrypt(&mut c, &blobs["imaging"].0, &case).await,
        tonic::Code::FailedPrecondition,
        "suspended",
    );
    assert_status(
        decrypt(&mut c, &blobs["revoked"].0, &case).await,
        tonic::Code::FailedPrecondition,
        "compromised",
    );
    assert_status(
        decrypt(&mut c, &late.ciphertext_blob, &case).await,
        tonic::Code::NotFound,
        "",
    );
    let held = describe(&mut c, "held").await;
    assert_eq!(held.holds.len(), 1, "{held:?}");
    assert_status(
        c.keys.destroy_now(name_req("held")).await,
        tonic::Code::FailedPrecondition,
        "hold",
    );
    // The destroyed key's object is gone from the restored token too (it
    // was in the backup's copy of the token), and the others are there.
    let listed = String::from_utf8_lossy(
        &r.pkcs11_tool(&["--list-objects", "--type", "secrkey"])
            .stdout,
    )
    .into_owned();
    assert!(!listed.contains("keywarden:retired/v1"), "{listed}");
    assert!(listed.contains("keywarden:patients/v1"), "{listed}");
    // The restore opened the new audit log, linked to the backup's head.
    let log = std::fs::read_to_string(r.audit_dir().join("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"restore\""), "{log}");
    assert!(log.contains("backup_chain_head"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_without_the_trail_serves_only_once_custodians_accept_the_window() {
    let mut d = Daemon::builder()
        .args(&["--destroy-approvals", "1"])
        .start()
        .await;
    let share = d.dev_share.clone().unwrap();
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    create_key(&mut c, "shredded").await;
    let case = [("case", "1")];
    let g = generate(&mut c, "shredded", &case).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b.kwb");
    backup(&d, &file);
    c.keys.destroy_now(name_req("shredded")).await.unwrap();
    drop(c);
    d.stop();

    let target = work.path().join("restored");
    let o = restore(&target, &file, &share, &[]);
    let report = text(&o);
    assert!(o.status.success(), "{report}");
    assert!(report.contains("NO audit trail replayed"), "{report}");

    let r = Daemon::builder().at(&target).start().await;
    let err = unseal(&r, &share, false).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("accept_restore_window"),
        "{}",
        err.message()
    );
    assert_eq!(r.phase().await, "sealed");
    // Accepted: it serves what the backup holds (the key destroyed after the
    // backup is back: that is the window the custodians accepted).
    unseal(&r, &share, true).await.unwrap();
    r.wait_phase("unsealed").await;
    let mut c = r.client().await;
    opens(&mut c, &g.ciphertext_blob, &g.plaintext).await;
    let log = std::fs::read_to_string(r.audit_dir().join("audit.log")).unwrap();
    assert!(
        log.contains("\"event\":\"restore_window_accepted\""),
        "{log}"
    );
    // Accepted once: the next unseal needs no acceptance.
    drop(c);
    let mut r = r;
    r.dev_share = Some(share.clone());
    r.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_foreign_and_misplaced_restores_are_refused_and_write_nothing() {
    let a = Daemon::builder().start().await;
    let b = Daemon::builder().start().await;
    let (sa, sb) = (a.dev_share.clone().unwrap(), b.dev_share.clone().unwrap());
    let mut c = a.client().await;
    create_key(&mut c, "patients").await;
    drop(c);
    let work = tempfile::tempdir().unwrap();
    let (fa, fb) = (work.path().join("a.kwb"), work.path().join("b.kwb"));
    backup(&a, &fa);
    backup(&b, &fb);
    let trail_a = a.audit_files();
    let trail_b = b.audit_files();
    let good = std::fs::read(&fa).unwrap();
    let target = work.path().join("t");
    let refused = |o: std::process::Output, needle: &str| {
        let t = text(&o);
        assert!(!o.status.success(), "accepted: {t}");
        assert!(t.contains(needle), "{needle:?} not in {t}");
        let state = target.join("state");
        let empty = std::fs::read_dir(&state)
            .map(|mut r| r.next().is_none())
            .unwrap_or(true);
        assert!(empty, "a refused restore wrote into {}", state.display());
    };

    // Every byte region altered: magic, version, header length, header,
    // age header, payload, the last byte.
    let (_, start) = keywarden::backup::format::read_header(&good).unwrap();
    for at in [0, 4, 7, 40, start + 30, start + 400, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        let f = work.path().join(format!("bad-{at}.kwb"));
        std::fs::write(&f, &bad).unwrap();
        let o = restore(&target, &f, &sa, &[]);
        assert!(
            !o.status.success(),
            "byte {at} altered was accepted: {}",
            text(&o)
        );
        let state = target.join("state");
        assert!(std::fs::read_dir(&state)
            .map(|mut r| r.next().is_none())
            .unwrap_or(true));
    }
    // Another deployment's backup with these shares, and these shares with
    // another deployment's backup.
    refused(restore(&target, &fb, &sa, &[]), "shares of another set");
    refused(restore(&target, &fa, &sb, &[]), "shares of another set");
    // A share of the right set that does not reconstruct the key.
    let mut wrong = sa.clone();
    let flip = wrong.len() - 12;
    let ch = if &wrong[flip..flip + 1] == "0" {
        "1"
    } else {
        "0"
    };
    wrong.replace_range(flip..flip + 1, ch);
    let o = restore(&target, &fa, &wrong, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    // Another deployment's audit trail: it does not link to the backup.
    refused(restore(&target, &fa, &sa, &trail_b), "--replay-audit");
    // A trail that was edited: its chain breaks.
    let edited = work.path().join("edited.log");
    let log = std::fs::read_to_string(&trail_a[trail_a.len() - 1]).unwrap();
    std::fs::write(
        &edited,
        log.replacen("\"outcome\":\"ok\"", "\"outcome\":\"OK\"", 1),
    )
    .unwrap();
    refused(
        restore(&target, &fa, &sa, &[edited]),
        "the trail does not verify",
    );
    // A trail that ends before the backup (an old file given by mistake):
    // it verifies, but is not linked to the backup.
    let early = work.path().join("early.log");
    let first: String = std::fs::read_to_string(&trail_a[0])
        .unwrap()
        .split_inclusive('\n')
        .take(3)
        .collect();
    std::fs::write(&early, first).unwrap();
    refused(
        restore(&target, &fa, &sa, &[early]),
        "not linked to the backup",
    );
    // A state directory that is not empty.
    std::fs::create_dir_all(target.join("state")).unwrap();
    std::fs::write(target.join("state").join("notes.txt"), "x").unwrap();
    let o = restore(&target, &fa, &sa, &[]);
    assert!(text(&o).contains("is not empty"), "{}", text(&o));
    assert!(!o.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_data_key_returned_before_it_began() {
    let mut d = Daemon::builder().start().await;
    let share = d.dev_share.clone().unwrap();
    let mut c = d.client().await;
    for i in 0..4 {
        create_key(&mut c, &format!("k{i}")).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let before = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let socket = d.socket();
        let (stop, before, made) = (stop.clone(), before.clone(), made.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = keywarden_client::Client::connect(&socket).await.unwrap();
            let mut kept = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let g = generate(&mut c, &format!("k{}", t % 4), &[("case", "1")]).await;
                made.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                // Only answers that arrived before the backup was asked for.
                if before.load(std::sync::atomic::Ordering::Acquire) {
                    kept.push((g.ciphertext_blob, g.plaintext));
                }
            }
            kept
        }));
    }
    let made = || made.load(std::sync::atomic::Ordering::Acquire);
    let under_load = std::time::Duration::from_secs(30);
    wait_until(
        "the 16 clients to make 64 data keys",
        under_load,
        async || made() >= 64,
    )
    .await;
    before.store(false, std::sync::atomic::Ordering::Release);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b.kwb");
    let socket = d.socket().display().to_string();
    let f = file.display().to_string();
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["operator", "backup", "--out", &f])
            .env("KEYWARDEN_SOCKET", socket)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The load goes on after the backup returned.
    let after = made() + 16;
    wait_until(
        "16 more data keys after the backup",
        under_load,
        async || made() >= after,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut kept = Vec::new();
    for t in tasks {
        kept.extend(t.await.unwrap());
    }
    assert!(
        kept.len() > 16,
        "the load made only {} data keys",
        kept.len()
    );
    drop(c);
    let r = lose_and_restore(&mut d, work.path(), &file, &share).await;
    let mut c = r.client().await;
    for (blob, pt) in &kept {
        opens(&mut c, blob, pt).await;
    }
    eprintln!(
        "{} data keys made under load before the backup all open",
        kept.len()
    );
}

#[test]
fn the_restore_drill_passes_and_reports_rpo_and_rto() {
    let mut args = vec![
        "drill".to_string(),
        "restore".into(),
        "--data-keys".into(),
        "100".into(),
    ];
    if test_token() == "kryoptic" {
        args.extend(["--token".into(), "kryoptic".into()]);
    }
    args.extend(token_module_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_cli(&refs, None);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("drill restore: PASSED"), "{t}");
    assert!(
        t.contains("data keys recorded before the backup that open: 300 of 300"),
        "{t}"
    );
    assert!(
        t.contains("RPO, key material:") && t.contains("RTO:"),
        "{t}"
    );
    println!("{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_daemon_backs_up_and_its_backup_restores() {
    let mut d = Daemon::builder().start().await;
    let share = d.dev_share.clone().unwrap();
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    let g = generate(&mut c, "patients", &[("case", "1")]).await;
    c.operator.seal(proto::SealRequest {}).await.unwrap();
    drop(c);
    d.wait_phase("sealed").await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b.kwb");
    let out = d.cli(
        &[
            "--output",
            "json",
            "operator",
            "backup",
            "--out",
            &file.display().to_string(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["sealed"], true, "{info}");
    // Restarted, it has not seen a quorum: seal.json's recipient is
    // unverified, and it makes no backup.
    d.restart_sealed().await;
    let refused = d.cli(
        &[
            "operator",
            "backup",
            "--out",
            &work.path().join("x.kwb").display().to_string(),
        ],
        None,
    );
    assert!(!refused.status.success());
    assert!(text(&refused).contains("unseal once"), "{}", text(&refused));
    let r = lose_and_restore(&mut d, work.path(), &file, &share).await;
    let mut c = r.client().await;
    opens(&mut c, &g.ciphertext_blob, &g.plaintext).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_loss_after_a_restore_keeps_what_the_restored_host_destroyed() {
    let mut d = Daemon::builder()
        .args(&["--destroy-approvals", "1"])
        .start()
        .await;
    let share = d.dev_share.clone().unwrap();
    let mut c = d.client().await;
    create_key(&mut c, "patients").await;
    create_key(&mut c, "shredded-later").await;
    let case = [("case", "1")];
    let kept = generate(&mut c, "patients", &case).await;
    let doomed = generate(&mut c, "shredded-later", &case).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b1.kwb");
    backup(&d, &file);
    // Some history on the first host after the backup, then a copy of its
    // registry as it stood (a filesystem snapshot someone kept).
    c.keys.disable_key(name_req("patients")).await.unwrap();
    c.keys.enable_key(name_req("patients")).await.unwrap();
    drop(c);
    d.stop();
    let old_registry = std::fs::read(d.registry_path()).unwrap();
    let first_trail = copy_trail(&d, &work.path().join("offsite-1"));

    // First restore; on the restored host, a key is destroyed.
    let host2 = work.path().join("host2");
    let o = restore(&host2, &file, &share, &first_trail);
    assert!(o.status.success(), "{}", text(&o));
    // The restored host runs with dual control relaxed like the first.
    let mut r = Daemon::builder()
        .at(&host2)
        .args(&["--destroy-approvals", "1"])
        .start()
        .await;
    r.dev_share = Some(share.clone());
    unseal(&r, &share, false).await.unwrap();
    r.wait_phase("unsealed").await;
    let mut c = r.client().await;
    c.keys
        .destroy_now(name_req("shredded-later"))
        .await
        .unwrap();
    drop(c);

    // An old copy of the first host's registry is refused by the restored
    // host: its generation is below what the restore started from.
    r.stop();
    let live = std::fs::read(r.registry_path()).unwrap();
    std::fs::write(r.registry_path(), &old_registry).unwrap();
    for side in ["registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(r.dir.join("state").join(side));
    }
    r.restart_sealed().await;
    unseal(&r, &share, false).await.unwrap();
    r.wait_phase("unsealed").await;
    let mut c = r.client().await;
    assert_status(
        decrypt(&mut c, &kept.ciphertext_blob, &case).await,
        tonic::Code::DataLoss,
        "older copy",
    );
    drop(c);
    r.stop();
    std::fs::write(r.registry_path(), &live).unwrap();
    for side in ["registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(r.dir.join("state").join(side));
    }

    // The second host is lost too. The first backup, with both trails (the
    // first host's and the restored host's, which continues its chain),
    // keeps the key the second host destroyed destroyed.
    let mut trail = first_trail.clone();
    trail.extend(copy_trail(&r, &work.path().join("offsite-2")));
    let host3 = work.path().join("host3");
    let o = restore(&host3, &file, &share, &trail);
    let report = text(&o);
    assert!(o.status.success(), "{report}");
    assert!(
        report.contains("shredded-later: active -> destroyed"),
        "{report}"
    );
    let r3 = Daemon::builder().at(&host3).start().await;
    unseal(&r3, &share, false).await.unwrap();
    r3.wait_phase("unsealed").await;
    let mut c = r3.client().await;
    opens(&mut c, &kept.ciphertext_blob, &kept.plaintext).await;
    assert_status(
        decrypt(&mut c, &doomed.ciphertext_blob, &case).await,
        tonic::Code::FailedPrecondition,
        "destroyed",
    );
}

/// Backups are bounded: each is a whole file in memory until the
/// transport has it, so one uid may take a few an hour (and one is
/// streamed at a time); a refusal names the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_per_uid_are_bounded() {
    let d = Daemon::builder()
        .args(&["--limit", "backups_per_hour=2"])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    // Two taken and never read: still held by their streams.
    let _a = c
        .operator
        .backup(proto::BackupRequest {})
        .await
        .unwrap()
        .into_inner();
    let _b = c
        .operator
        .backup(proto::BackupRequest {})
        .await
        .unwrap()
        .into_inner();
    let r = c.operator.backup(proto::BackupRequest {}).await;
    assert_status(r, tonic::Code::ResourceExhausted, "backups_per_hour");
    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    assert!(
        log.contains("\"limit\":\"backups\""),
        "the refusal is audited"
    );
}
