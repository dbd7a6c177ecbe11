//! The unseal ceremony end to end: a real SoftHSM token, the real daemon,
//! shares submitted over the real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use keywarden::seal::{shamir::ShareBytes, share};
use tonic::Code;

async fn init(d: &Daemon, n: u32, m: u32, recipients: Vec<String>) -> proto::InitResponse {
    let mut c = d.client().await;
    c.operator
        .init(proto::InitRequest {
            shares: n,
            threshold: m,
            recipients,
            labels: (1..=n).map(|i| format!("custodian-{i}")).collect(),
            user_pin: std::fs::read(d.dir.join("user.pin")).unwrap(),
            so_pin: std::fs::read(d.dir.join("so.pin")).unwrap(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn submit(d: &Daemon, share: &str) -> Result<proto::UnsealResponse, tonic::Status> {
    let mut c = d.client().await;
    c.operator
        .unseal(proto::UnsealRequest {
            share: share.to_string(),
            reset: false,
            accept_restore_window: false,
        })
        .await
        .map(|r| r.into_inner())
}

async fn seal_status(d: &Daemon) -> proto::SealStatus {
    let mut c = d.client().await;
    c.operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .seal
        .unwrap()
}

/// A well-formed share line (valid checksum) with chosen fields.
fn forged(set_id: [u8; 4], index: u8, threshold: u8) -> String {
    let mut v = [0u8; 32];
    getrandom::fill(&mut v).unwrap();
    share::format(
        &set_id,
        threshold,
        &ShareBytes {
            index,
            value: zeroize::Zeroizing::new(v),
        },
    )
    .to_string()
}

fn set_id_bytes(hex_id: &str) -> [u8; 4] {
    hex::decode(hex_id).unwrap().try_into().unwrap()
}

fn assert_sealed_refusal(r: Result<impl Sized, tonic::Status>) {
    let s = r.err().expect("a sealed daemon must refuse");
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(s.message().contains("sealed"), "{}", s.message());
    assert_eq!(
        s.metadata()
            .get("keywarden-state")
            .and_then(|v| v.to_str().ok()),
        Some("sealed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_five_ceremony_restart_unseal_and_seal() {
    let mut d = Daemon::builder().ceremony().start().await;
    // Uninitialised: key operations are refused with their own state.
    let mut c = d.client().await;
    let r = c.keys.list_keys(proto::ListKeysRequest {}).await;
    let s = r.expect_err("uninitialised daemon must refuse");
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("not initialised"), "{}", s.message());

    let out = init(&d, 5, 3, vec![]).await;
    assert_eq!(out.shares.len(), 5);
    assert_eq!(out.threshold, 3);
    let shares: Vec<String> = out.shares.iter().map(|s| s.share.clone()).collect();
    assert_eq!(out.shares[0].label, "custodian-1");
    assert!(shares.iter().all(|s| s.starts_with("KWS1-")));
    assert_eq!(seal_status(&d).await.phase, "sealed");

    for (i, s) in shares.iter().take(3).enumerate() {
        let r = submit(&d, s).await.unwrap();
        assert_eq!(r.received as usize, i + 1);
        assert_eq!(r.sealed, i < 2);
    }
    assert_eq!(seal_status(&d).await.phase, "unsealed");
    // Once the first unseal completed init, init is refused.
    let again = c
        .operator
        .init(proto::InitRequest {
            shares: 3,
            threshold: 2,
            recipients: vec![],
            labels: vec![],
            user_pin: b"1234".to_vec(),
            so_pin: b"1234".to_vec(),
        })
        .await;
    assert_status(again, Code::FailedPrecondition, "already initialised");
    create_key(&mut c, "records").await;
    let g = generate(&mut c, "records", &[("tenant", "t1")]).await;

    // Restart: sealed, and data-key calls get the sealed status.
    drop(c);
    d.restart_sealed().await;
    let mut c = d.client().await;
    assert_sealed_refusal(
        c.datakeys
            .generate_data_key(proto::GenerateDataKeyRequest {
                key: "records".into(),
                encryption_context: ctx(&[]),
            })
            .await,
    );
    assert_sealed_refusal(decrypt(&mut c, &g.ciphertext_blob, &[("tenant", "t1")]).await);
    let st = seal_status(&d).await;
    assert_eq!(
        (st.received, st.threshold, st.set_id.as_str()),
        (0, 3, out.set_id.as_str())
    );

    // Two shares: still sealed. The third: unsealed, and the old blob opens.
    assert!(submit(&d, &shares[4]).await.unwrap().sealed);
    assert!(submit(&d, &shares[1]).await.unwrap().sealed);
    let st = seal_status(&d).await;
    assert_eq!((st.phase.as_str(), st.received), ("sealed", 2));
    assert_sealed_refusal(decrypt(&mut c, &g.ciphertext_blob, &[("tenant", "t1")]).await);
    let r = submit(&d, &shares[3]).await.unwrap();
    assert!(!r.sealed);
    let back = decrypt(&mut c, &g.ciphertext_blob, &[("tenant", "t1")])
        .await
        .unwrap();
    assert_eq!(back.plaintext, g.plaintext);

    // Seal: refused again; unseal again with another subset.
    c.operator.seal(proto::SealRequest {}).await.unwrap();
    assert_sealed_refusal(decrypt(&mut c, &g.ciphertext_blob, &[("tenant", "t1")]).await);
    for s in [&shares[0], &shares[2], &shares[4]] {
        submit(&d, s).await.unwrap();
    }
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[("tenant", "t1")])
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shares_each_get_their_own_error_and_change_nothing() {
    let mut d = Daemon::builder().ceremony().start().await;
    let out = init(&d, 5, 3, vec![]).await;
    let shares: Vec<String> = out.shares.iter().map(|s| s.share.clone()).collect();
    let set = set_id_bytes(&out.set_id);
    for s in &shares[..3] {
        submit(&d, s).await.unwrap();
    }
    d.restart_sealed().await;

    submit(&d, &shares[0]).await.unwrap();

    // Duplicate.
    assert_status(
        submit(&d, &shares[0]).await,
        Code::AlreadyExists,
        "share 1 was already submitted; progress unchanged (1 of 3)",
    );
    // Another set.
    let other = forged([0xde, 0xad, 0xbe, 0xef], 2, 3);
    assert_status(
        submit(&d, &other).await,
        Code::InvalidArgument,
        "belongs to share set deadbeef",
    );
    // One typo: a changed hex digit in the share bytes.
    let mut typo: Vec<char> = shares[1].chars().collect();
    let pos = 25;
    typo[pos] = if typo[pos] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    assert_status(
        submit(&d, &typo).await,
        Code::InvalidArgument,
        "checksum mismatch",
    );
    // Garbage.
    assert_status(
        submit(&d, "hello").await,
        Code::InvalidArgument,
        "not a Keywarden share",
    );
    // Wrong threshold in an otherwise well-formed share of this set.
    assert_status(
        submit(&d, &forged(set, 4, 2)).await,
        Code::InvalidArgument,
        "threshold 2",
    );
    // None of that changed the progress.
    assert_eq!(seal_status(&d).await.received, 1);

    // A wrong share at the threshold: reported without naming it, progress reset.
    submit(&d, &shares[1]).await.unwrap();
    let r = submit(&d, &forged(set, 5, 3)).await;
    assert_status(
        r,
        Code::InvalidArgument,
        "do not reconstruct the unseal key; progress was reset",
    );
    let st = seal_status(&d).await;
    assert_eq!((st.phase.as_str(), st.received), ("sealed", 0));

    // Reset works too.
    submit(&d, &shares[2]).await.unwrap();
    let mut c = d.client().await;
    c.operator
        .unseal(proto::UnsealRequest {
            share: String::new(),
            reset: true,
            accept_restore_window: false,
        })
        .await
        .unwrap();
    assert_eq!(seal_status(&d).await.received, 0);

    // The right shares still unseal.
    for s in &shares[2..5] {
        submit(&d, s).await.unwrap();
    }
    assert_eq!(seal_status(&d).await.phase, "unsealed");
    assert_status(
        submit(&d, &shares[0]).await,
        Code::FailedPrecondition,
        "already unsealed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_two_of_three_with_verification() {
    let mut d = Daemon::builder().ceremony().start().await;
    let out = init(&d, 3, 2, vec![]).await;
    let old: Vec<String> = out.shares.iter().map(|s| s.share.clone()).collect();
    for s in &old[..2] {
        submit(&d, s).await.unwrap();
    }
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let g = generate(&mut c, "k", &[]).await;

    let start = c
        .operator
        .rekey_start(proto::RekeyStartRequest {
            shares: 3,
            threshold: 2,
            recipients: vec![],
            labels: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(start.current_threshold, 2);
    // Verify before the old quorum is refused.
    let early = c
        .operator
        .rekey_verify(proto::RekeyShareRequest {
            share: old[0].clone(),
        })
        .await;
    assert_status(early, Code::FailedPrecondition, "collecting current shares");

    let r1 = c
        .operator
        .rekey_submit(proto::RekeyShareRequest {
            share: old[2].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r1.complete && r1.new_shares.is_empty());
    let r2 = c
        .operator
        .rekey_submit(proto::RekeyShareRequest {
            share: old[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r2.complete);
    assert_eq!(r2.new_shares.len(), 3);
    let new: Vec<String> = r2.new_shares.iter().map(|s| s.share.clone()).collect();
    assert_ne!(r2.new_set_id, out.set_id);

    // Until verified, nothing changed: the old set is still in force.
    assert_eq!(seal_status(&d).await.set_id, out.set_id);
    let v1 = c
        .operator
        .rekey_verify(proto::RekeyShareRequest {
            share: new[1].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v1.committed);
    // An old share is not a new share.
    let wrong = c
        .operator
        .rekey_verify(proto::RekeyShareRequest {
            share: old[1].clone(),
        })
        .await;
    assert_status(wrong, Code::InvalidArgument, "belongs to share set");
    let v2 = c
        .operator
        .rekey_verify(proto::RekeyShareRequest {
            share: new[2].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v2.committed);
    assert_eq!(seal_status(&d).await.set_id, r2.new_set_id);
    // Still serving after the commit.
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[]).await.is_ok());
    // And backing up, to the new set's recipient (a backup after a rekey
    // is what the runbook asks for).
    let dir = tempfile::tempdir().unwrap();
    let out = d.cli(
        &[
            "--output",
            "json",
            "operator",
            "backup",
            "--out",
            &dir.path().join("b.kwb").display().to_string(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["set_id"], r2.new_set_id.as_str(), "{info}");

    // After a restart the old shares are refused and the new ones unseal.
    drop(c);
    d.restart_sealed().await;
    assert_status(
        submit(&d, &old[0]).await,
        Code::InvalidArgument,
        "belongs to share set",
    );
    submit(&d, &new[0]).await.unwrap();
    assert!(!submit(&d, &new[2]).await.unwrap().sealed);
    let mut c = d.client().await;
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[]).await.is_ok());
    // The old provisioning-derived PIN path: the old set's PIN is dead too.
    let pin_old = {
        // derive-pin refuses old shares against the new seal file.
        let out = d.cli(
            &[
                "operator",
                "derive-pin",
                "--seal-file",
                &d.seal_file().display().to_string(),
            ],
            Some(&old[..2].join("\n")),
        );
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(pin_old.contains("belongs to set"), "{pin_old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_encrypted_shares_open_with_the_age_tool_and_unseal() {
    let d = Daemon::builder().ceremony().start().await;
    let mut identities = Vec::new();
    let mut recipients = Vec::new();
    for i in 0..3 {
        let path = d.dir.join(format!("custodian-{i}.key"));
        let out = std::process::Command::new("age-keygen")
            .arg("-o")
            .arg(&path)
            .output()
            .expect("age-keygen (Debian package age) is installed");
        assert!(out.status.success());
        let text = std::fs::read_to_string(&path).unwrap();
        let public = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .to_string();
        recipients.push(public);
        identities.push(path);
    }
    let out = init(&d, 3, 2, recipients).await;
    for s in &out.shares {
        assert!(s.encrypted);
        assert!(
            s.share.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
            "{}",
            s.share
        );
        assert!(!s.share.contains("KWS1"));
    }
    for (s, id) in out.shares.iter().zip(&identities).take(2) {
        let enc = d.dir.join("share.age");
        std::fs::write(&enc, &s.share).unwrap();
        let dec = std::process::Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(id)
            .arg(&enc)
            .output()
            .unwrap();
        assert!(
            dec.status.success(),
            "{}",
            String::from_utf8_lossy(&dec.stderr)
        );
        let line = String::from_utf8(dec.stdout).unwrap();
        assert!(line.starts_with("KWS1-"));
        // Through the CLI, from stdin, as a custodian would pipe it.
        let r = d.cli(&["operator", "unseal", "--output", "json"], Some(&line));
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert_eq!(seal_status(&d).await.phase, "unsealed");
    // A custodian's identity does not open another custodian's share.
    let enc = d.dir.join("share0.age");
    std::fs::write(&enc, &out.shares[0].share).unwrap();
    let wrong = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identities[1])
        .arg(&enc)
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

fn grep_tree(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            let lower = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
            if lower.contains(&needle.to_ascii_lowercase()) {
                hits.push(p);
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pin_or_share_on_disk_in_logs_or_ps_and_provisioning_pins_are_dead() {
    let d = Daemon::builder().ceremony().start().await;
    let prov_user = std::fs::read_to_string(d.dir.join("user.pin"))
        .unwrap()
        .trim()
        .to_string();
    let prov_so = std::fs::read_to_string(d.dir.join("so.pin"))
        .unwrap()
        .trim()
        .to_string();
    // Through the CLI, as an operator runs it.
    let out = d.cli(
        &[
            "operator",
            "init",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--output",
            "json",
            "--pin-file",
            &d.dir.join("user.pin").display().to_string(),
            "--so-pin-file",
            &d.dir.join("so.pin").display().to_string(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shares: Vec<String> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["share"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 3);
    for s in &shares[..2] {
        let r = d.cli(&["operator", "unseal"], Some(s));
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let user_pin = d.derive_pin(&[&shares[0], &shares[1]], false);
    let so_pin = d.derive_pin(&[&shares[1], &shares[2]], true);
    assert_ne!(user_pin, prov_user);

    // Nothing under the dev directory (state, config, token files, the
    // daemon's log) holds a share, a share's bytes or a derived PIN.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_ascii_lowercase();
    let mut needles: Vec<String> = vec![user_pin.clone(), so_pin.clone()];
    for s in &shares {
        needles.push(s.clone());
        // The share bytes alone (8 groups of 8 hex).
        let groups: Vec<&str> = s.split('-').collect();
        needles.push(groups[4..12].join("-"));
        needles.push(groups[4..12].concat());
    }
    for n in &needles {
        assert!(
            grep_tree(&d.dir, n).is_empty(),
            "secret found in {:?}",
            grep_tree(&d.dir, n)
        );
        assert!(!ps.contains(&n.to_ascii_lowercase()), "secret in ps output");
    }

    // The provisioning PINs no longer log in; the derived ones do.
    let denied = d.pkcs11_tool_with(&["--login", "--pin", &prov_user], &["--list-objects"]);
    assert!(
        !denied.status.success(),
        "provisioning user PIN still works"
    );
    let denied_so = d.pkcs11_tool_with(
        &[
            "--session-rw",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            &prov_so,
        ],
        &["--list-objects"],
    );
    assert!(
        !denied_so.status.success(),
        "provisioning SO PIN still works"
    );
    let ok = d.pkcs11_tool_with(&["--login", "--pin", &user_pin], &["--list-objects"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok_so = d.pkcs11_tool_with(
        &[
            "--session-rw",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            &so_pin,
        ],
        &["--list-objects"],
    );
    assert!(
        ok_so.status.success(),
        "{}",
        String::from_utf8_lossy(&ok_so.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_init_shares_never_lock_the_token() {
    let mut d = Daemon::builder().ceremony().start().await;
    // Init, then the shares are "lost" (the daemon restarts before anyone
    // unseals). The token still has its provisioning PINs.
    let lost = init(&d, 3, 2, vec![]).await;
    assert!(seal_status(&d).await.init_pending);
    d.restart_sealed().await;
    let r1 = submit(&d, &lost.shares[0].share).await.unwrap();
    assert!(r1.sealed);
    let r = submit(&d, &lost.shares[1].share).await;
    assert_status(r, Code::FailedPrecondition, "init was not completed");
    // The provisioning PINs still work, so init simply runs again.
    let out = init(&d, 3, 2, vec![]).await;
    assert_ne!(out.set_id, lost.set_id);
    submit(&d, &out.shares[2].share).await.unwrap();
    assert!(!submit(&d, &out.shares[0].share).await.unwrap().sealed);
    let st = seal_status(&d).await;
    assert!(!st.init_pending);
    // Once init is complete it cannot be repeated.
    let mut c = d.client().await;
    let again = c
        .operator
        .init(proto::InitRequest {
            shares: 3,
            threshold: 2,
            recipients: vec![],
            labels: vec![],
            user_pin: std::fs::read(d.dir.join("user.pin")).unwrap(),
            so_pin: std::fs::read(d.dir.join("so.pin")).unwrap(),
        })
        .await;
    assert_status(again, Code::FailedPrecondition, "already initialised");
}
