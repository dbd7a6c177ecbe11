//! End-to-end tests of the data-key and key services: the real daemon binary
//! on a fresh SoftHSM token, a real Unix socket and a real gRPC client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::proto;
use tonic::Code;

const BLOB_LEN: usize = 84;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_and_without_plaintext() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    let meta = create_key(&mut c, "patients").await;
    assert_eq!(meta.current_version, 1);
    assert_eq!(meta.algorithm, "AES_256_GCM");

    let context = [("tenant", "clinic-1"), ("record", "mri/2026/0042")];
    let g = generate(&mut c, "patients", &context).await;
    assert_eq!(g.plaintext.len(), 32);
    assert_eq!(g.ciphertext_blob.len(), BLOB_LEN);
    assert_eq!(g.key, "patients");
    assert_eq!(g.key_id, meta.key_id);
    assert_eq!(g.key_version, 1);
    // Context order does not matter.
    let reordered = [("record", "mri/2026/0042"), ("tenant", "clinic-1")];
    let back = decrypt(&mut c, &g.ciphertext_blob, &reordered)
        .await
        .unwrap();
    assert_eq!(back.plaintext, g.plaintext);
    assert_eq!(back.key, "patients");
    assert_eq!(back.key_version, 1);

    // Two data keys are never the same, nor their blobs.
    let g2 = generate(&mut c, "patients", &context).await;
    assert_ne!(g2.plaintext, g.plaintext);
    assert_ne!(g2.ciphertext_blob, g.ciphertext_blob);

    let np = c
        .datakeys
        .generate_data_key_without_plaintext(proto::GenerateDataKeyRequest {
            key: "patients".into(),
            encryption_context: ctx(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(np.plaintext.is_empty());
    let back = decrypt(&mut c, &np.ciphertext_blob, &[]).await.unwrap();
    assert_eq!(back.plaintext.len(), 32);

    // Decrypt may name the expected key; a different key is refused.
    create_key(&mut c, "images").await;
    let wrong_key = c
        .datakeys
        .decrypt(proto::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob.clone(),
            encryption_context: ctx(&context),
            key: "images".into(),
        })
        .await;
    assert_status(
        wrong_key,
        Code::InvalidArgument,
        "not under the requested key \"images\"",
    );
    let right_key = c
        .datakeys
        .decrypt(proto::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob.clone(),
            encryption_context: ctx(&context),
            key: "patients".into(),
        })
        .await
        .unwrap();
    assert_eq!(right_key.into_inner().plaintext, g.plaintext);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_context_is_refused() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let g = generate(&mut c, "k", &[("tenant", "a")]).await;
    for bad in [
        vec![],
        vec![("tenant", "b")],
        vec![("tenant", "a"), ("extra", "x")],
        vec![("Tenant", "a")],
        vec![("tenant", "a ")],
    ] {
        let r = decrypt(&mut c, &g.ciphertext_blob, &bad).await;
        assert_status(
            r,
            Code::InvalidArgument,
            "encryption_context does not match",
        );
    }
    // The right context still works afterwards.
    assert!(decrypt(&mut c, &g.ciphertext_blob, &[("tenant", "a")])
        .await
        .is_ok());
    assert_serving(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bit_flip_is_detected() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let context = [("tenant", "a")];
    let g = generate(&mut c, "k", &context).await;
    let blob = g.ciphertext_blob;
    for pos in 0..blob.len() {
        let mut bad = blob.clone();
        bad[pos] ^= 0x01;
        let r = decrypt(&mut c, &bad, &context).await;
        let s = r.err().expect("a flipped bit must never decrypt");
        let expected = match pos {
            0..=1 => (Code::InvalidArgument, "bad magic"),
            2 => (Code::InvalidArgument, "unsupported format version"),
            3 => (Code::InvalidArgument, "unknown algorithm"),
            4..=19 => (Code::NotFound, "which this daemon does not know"),
            20..=23 => (Code::NotFound, "does not exist"),
            _ => (Code::InvalidArgument, "authentication failed"),
        };
        assert_eq!(s.code(), expected.0, "byte {pos}: {}", s.message());
        assert!(
            s.message().contains(expected.1),
            "byte {pos}: {}",
            s.message()
        );
        assert!(
            s.message().starts_with("ciphertext_blob"),
            "byte {pos}: {}",
            s.message()
        );
    }
    assert!(decrypt(&mut c, &blob, &context).await.is_ok());
    assert_serving(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_garbage_and_oversized_blobs() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let g = generate(&mut c, "k", &[]).await;
    let blob = g.ciphertext_blob;
    assert_status(
        decrypt(&mut c, &[], &[]).await,
        Code::InvalidArgument,
        "ciphertext_blob: is empty",
    );
    assert_status(
        decrypt(&mut c, &blob[..2], &[]).await,
        Code::InvalidArgument,
        "truncated",
    );
    assert_status(
        decrypt(&mut c, &blob[..40], &[]).await,
        Code::InvalidArgument,
        "truncated: 40 bytes, expected 84",
    );
    assert_status(
        decrypt(&mut c, &blob[..83], &[]).await,
        Code::InvalidArgument,
        "truncated",
    );
    let mut long = blob.clone();
    long.extend_from_slice(b"xx");
    assert_status(
        decrypt(&mut c, &long, &[]).await,
        Code::InvalidArgument,
        "trailing bytes",
    );
    assert_status(
        decrypt(
            &mut c,
            b"this is not a blob at all, just some text bytes",
            &[],
        )
        .await,
        Code::InvalidArgument,
        "bad magic",
    );
    assert_status(
        decrypt(&mut c, &vec![0u8; 5000], &[]).await,
        Code::InvalidArgument,
        "at most 4148",
    );
    // A well-formed header naming a key this daemon never had.
    let mut foreign = blob.clone();
    foreign[4..20].copy_from_slice(&[0x42; 16]);
    assert_status(
        decrypt(&mut c, &foreign, &[]).await,
        Code::NotFound,
        "does not know",
    );
    assert_serving(&mut c).await;
    assert!(decrypt(&mut c, &blob, &[]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_unknown_keys_and_oversized_inputs() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;

    let gdk = |key: &str, context: std::collections::HashMap<String, String>| {
        proto::GenerateDataKeyRequest {
            key: key.into(),
            encryption_context: context,
        }
    };
    assert_status(
        c.datakeys.generate_data_key(gdk("", ctx(&[]))).await,
        Code::InvalidArgument,
        "key: must not be empty",
    );
    assert_status(
        c.datakeys.generate_data_key(gdk("nope", ctx(&[]))).await,
        Code::NotFound,
        "key \"nope\" not found",
    );
    assert_status(
        c.datakeys
            .generate_data_key(gdk("bad name!", ctx(&[])))
            .await,
        Code::InvalidArgument,
        "key: contains ' '",
    );
    assert_status(
        c.datakeys
            .generate_data_key(gdk(&"a".repeat(1000), ctx(&[])))
            .await,
        Code::InvalidArgument,
        "key: is 1000 bytes long",
    );
    // A 100 KiB context value (within the transport's 256 KiB).
    let big = "v".repeat(100 << 10);
    assert_status(
        c.datakeys
            .generate_data_key(gdk("k", ctx(&[("tenant", &big)])))
            .await,
        Code::InvalidArgument,
        "encryption_context: the value of \"tenant\" is 102400 bytes long",
    );
    // A context with too many pairs.
    let many: std::collections::HashMap<String, String> =
        (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_status(
        c.datakeys.generate_data_key(gdk("k", many)).await,
        Code::InvalidArgument,
        "encryption_context: has 100 pairs",
    );
    // A request larger than the transport accepts at all (8 MiB).
    let huge = "v".repeat(8 << 20);
    let r = c
        .datakeys
        .generate_data_key(gdk("k", ctx(&[("x", &huge)])))
        .await;
    let s = r.err().expect("an 8 MiB request must be refused");
    assert!(
        matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{:?}: {}",
        s.code(),
        s.message()
    );

    // Admin API.
    let create = |name: &str| proto::CreateKeyRequest {
        name: name.into(),
        description: String::new(),
        rotation_period_secs: 0,
        kind: String::new(),
    };
    assert_status(
        c.keys.create_key(create("")).await,
        Code::InvalidArgument,
        "name: must not be empty",
    );
    assert_status(
        c.keys.create_key(create("k")).await,
        Code::AlreadyExists,
        "key \"k\" already exists",
    );
    assert_status(
        c.keys
            .create_key(proto::CreateKeyRequest {
                name: "d".into(),
                description: "x".repeat(5000),
                rotation_period_secs: 0,
                kind: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "description: is 5000 bytes long",
    );
    assert_status(
        c.keys
            .describe_key(proto::DescribeKeyRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "key \"nope\" not found",
    );
    // Nothing was created by the refused calls.
    let list = c
        .keys
        .list_keys(proto::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.keys
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        vec!["k"]
    );
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.key_count, 1);
    assert_serving(&mut c).await;
    generate(&mut c, "k", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_succeed_and_fail_per_item() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "a").await;
    create_key(&mut c, "b").await;
    let mut requests: Vec<proto::GenerateDataKeyRequest> = (0..64)
        .map(|i| proto::GenerateDataKeyRequest {
            key: if i % 2 == 0 { "a" } else { "b" }.into(),
            encryption_context: ctx(&[("n", &i.to_string())]),
        })
        .collect();
    requests.push(proto::GenerateDataKeyRequest {
        key: "missing".into(),
        encryption_context: ctx(&[]),
    });
    requests.push(proto::GenerateDataKeyRequest {
        key: String::new(),
        encryption_context: ctx(&[]),
    });
    let r = c
        .datakeys
        .batch_generate_data_key(proto::BatchGenerateDataKeyRequest {
            requests,
            without_plaintext: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 66);
    use proto::batch_decrypt_result::Result as D;
    use proto::batch_generate_data_key_result::Result as G;
    let mut generated = Vec::new();
    for (i, item) in r.results.iter().enumerate().take(64) {
        match item.result.as_ref().unwrap() {
            G::Ok(g) => {
                assert_eq!(g.key, if i % 2 == 0 { "a" } else { "b" });
                assert_eq!(g.plaintext.len(), 32);
                generated.push(g.clone());
            }
            G::Error(e) => panic!("item {i} failed: {e:?}"),
        }
    }
    match r.results[64].result.as_ref().unwrap() {
        G::Error(e) => {
            assert_eq!(e.code, Code::NotFound as i32);
            assert!(e.message.contains("missing"));
        }
        G::Ok(_) => panic!("unknown key must fail"),
    }
    match r.results[65].result.as_ref().unwrap() {
        G::Error(e) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.contains("key: must not be empty"));
        }
        G::Ok(_) => panic!("empty key name must fail"),
    }

    // Batch decrypt: all 64 back, plus one with the wrong context and one garbage.
    let mut dreqs: Vec<proto::DecryptRequest> = generated
        .iter()
        .enumerate()
        .map(|(i, g)| proto::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob.clone(),
            encryption_context: ctx(&[("n", &i.to_string())]),
            key: String::new(),
        })
        .collect();
    dreqs.push(proto::DecryptRequest {
        ciphertext_blob: generated[0].ciphertext_blob.clone(),
        encryption_context: ctx(&[("n", "999")]),
        key: String::new(),
    });
    dreqs.push(proto::DecryptRequest {
        ciphertext_blob: b"garbage".to_vec(),
        encryption_context: ctx(&[]),
        key: String::new(),
    });
    let r = c
        .datakeys
        .batch_decrypt(proto::BatchDecryptRequest { requests: dreqs })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 66);
    for (i, item) in r.results.iter().enumerate().take(64) {
        match item.result.as_ref().unwrap() {
            D::Ok(p) => assert_eq!(p.plaintext, generated[i].plaintext, "item {i}"),
            D::Error(e) => panic!("item {i} failed: {e:?}"),
        }
    }
    for (i, needle) in [(64, "authentication failed"), (65, "bad magic")] {
        match r.results[i].result.as_ref().unwrap() {
            D::Error(e) => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert!(e.message.contains(needle), "{}", e.message);
            }
            D::Ok(_) => panic!("item {i} must fail"),
        }
    }

    // Batch limits.
    assert_status(
        c.datakeys
            .batch_generate_data_key(proto::BatchGenerateDataKeyRequest {
                requests: vec![],
                without_plaintext: true,
            })
            .await,
        Code::InvalidArgument,
        "requests: must not be empty",
    );
    let too_many = (0..1025)
        .map(|_| proto::GenerateDataKeyRequest {
            key: "a".into(),
            encryption_context: ctx(&[]),
        })
        .collect();
    assert_status(
        c.datakeys
            .batch_generate_data_key(proto::BatchGenerateDataKeyRequest {
                requests: too_many,
                without_plaintext: true,
            })
            .await,
        Code::InvalidArgument,
        "requests: has 1025 items",
    );
    // without_plaintext batches return no plaintext.
    let r = c
        .datakeys
        .batch_generate_data_key(proto::BatchGenerateDataKeyRequest {
            requests: vec![proto::GenerateDataKeyRequest {
                key: "a".into(),
                encryption_context: ctx(&[]),
            }],
            without_plaintext: true,
        })
        .await
        .unwrap()
        .into_inner();
    match r.results[0].result.as_ref().unwrap() {
        G::Ok(g) => assert!(g.plaintext.is_empty()),
        G::Error(e) => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_correct_answers() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut c = d.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let tag = format!("{t}-{i}");
                let g = generate(&mut c, "k", &[("tag", &tag)]).await;
                let back = decrypt(&mut c, &g.ciphertext_blob, &[("tag", &tag)])
                    .await
                    .unwrap();
                assert_eq!(back.plaintext, g.plaintext);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmk_on_token_is_sensitive_and_never_extractable() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "clinic-backups").await;
    let out = d.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Secret Key Object; AES length 32"), "{text}");
    assert!(
        text.contains("label:      keywarden:clinic-backups/v1"),
        "{text}"
    );
    let access = text
        .lines()
        .find(|l| l.trim_start().starts_with("Access:"))
        .unwrap_or_else(|| panic!("no Access line: {text}"));
    for want in [
        "sensitive",
        "always sensitive",
        "never extractable",
        "local",
    ] {
        assert!(access.contains(want), "{access}");
    }
    assert!(
        !access.contains(" extractable,") || access.contains("never extractable"),
        "{access}"
    );
    let usage = text
        .lines()
        .find(|l| l.trim_start().starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no Usage line: {text}"));
    assert_eq!(usage.trim(), "Usage:      encrypt, decrypt");
    // Reading the key value must fail.
    let read = d.pkcs11_tool(&[
        "--read-object",
        "--type",
        "secrkey",
        "--label",
        "keywarden:clinic-backups/v1",
    ]);
    assert!(!read.status.success(), "key value was readable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_keys_and_reports_drift() {
    let mut d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "kept").await;
    create_key(&mut c, "lost").await;
    let g = generate(&mut c, "kept", &[("t", "1")]).await;
    let g_lost = generate(&mut c, "lost", &[]).await;
    drop(c);
    d.stop();

    // Someone deletes a CMK behind the daemon's back.
    let del = d.pkcs11_tool(&[
        "--delete-object",
        "--type",
        "secrkey",
        "--label",
        "keywarden:lost/v1",
    ]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );

    d.restart().await;
    let mut c = d.client().await;
    let back = decrypt(&mut c, &g.ciphertext_blob, &[("t", "1")])
        .await
        .unwrap();
    assert_eq!(back.plaintext, g.plaintext);
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let drift = s.drift.unwrap();
    assert_eq!(drift.missing_on_token.len(), 1, "{drift:?}");
    assert!(
        drift.missing_on_token[0].starts_with("lost/v1"),
        "{drift:?}"
    );
    assert!(drift.orphaned_on_token.is_empty(), "{drift:?}");
    // The lost key fails as an HSM-side failure, not as a bad blob.
    let r = decrypt(&mut c, &g_lost.ciphertext_blob, &[]).await;
    let s = r.err().expect("a deleted CMK cannot decrypt");
    assert_eq!(s.code(), Code::Internal, "{}", s.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_socket_is_open_and_status_and_reflection_answer() {
    let d = Daemon::builder().start().await;
    // Dev mode opens the socket to every local user; the policy decides
    // (a configured daemon defaults to 0660 and refuses world access).
    assert_eq!(path_mode(&d.socket()), 0o666);
    let mut c = d.client().await;
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    let t = s.token.unwrap();
    assert_eq!(t.label, "keywarden-dev");
    assert_eq!(t.profile, test_token());
    assert!(t.session_key_copies);
    assert!(t.session_pool_size >= 1);
    assert!(!t.serial.is_empty());

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let ch = keywarden_client::channel(&d.socket()).await.unwrap();
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "keywarden.v1.DataKeyService",
        "keywarden.v1.KeyService",
        "keywarden.v1.OperatorService",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}

/// Encrypt and MACs through the Rust client on the real daemon: fields
/// round-trip under their context only, MACs are per key and verify, kinds
/// do not mix, and the audit log records a MAC's data length, never the
/// data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_and_macs_are_served_and_audited_without_their_data() {
    let d = Daemon::builder().start().await;
    let mut c = d.client().await;
    create_key(&mut c, "fields").await;
    let hmac = c
        .keys
        .create_key(proto::CreateKeyRequest {
            name: "index".into(),
            description: String::new(),
            rotation_period_secs: 0,
            kind: "hmac".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(
        (hmac.kind.as_str(), hmac.algorithm.as_str()),
        ("hmac", "HMAC_SHA_256")
    );
    let ctx: keywarden_client::Context = [("row".to_string(), "7".to_string())].into();
    let other: keywarden_client::Context = [("row".to_string(), "8".to_string())].into();

    let blob = c.encrypt_field("fields", b"MRN-777", &ctx).await.unwrap();
    assert_eq!(&blob[..4], b"KW\x02\x01");
    assert_eq!(&c.decrypt_field(&blob, &ctx).await.unwrap()[..], b"MRN-777");
    assert!(matches!(
        c.decrypt_field(&blob, &other).await,
        Err(keywarden_client::Error::InvalidArgument { .. })
    ));

    let secret = b"MRN-SECRET-4242";
    let m = c.mac("index", secret, None).await.unwrap();
    assert_eq!(m.key_version, 1);
    assert!(c.verify_mac("index", secret, &m.mac, None).await.unwrap());
    assert!(!c.verify_mac("index", b"MRN-1", &m.mac, None).await.unwrap());
    match c.mac("fields", secret, None).await {
        Err(keywarden_client::Error::InvalidArgument { field, .. }) => {
            assert_eq!(field.as_deref(), Some("key"))
        }
        Err(e) => panic!("expected INVALID_ARGUMENT, got {e}"),
        Ok(_) => panic!("an aes key made a MAC"),
    }

    let log = std::fs::read_to_string(d.audit_dir().join("audit.log")).unwrap();
    let mac_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"GenerateMac\""))
        .collect();
    assert!(!mac_lines.is_empty(), "no GenerateMac line");
    assert!(mac_lines
        .iter()
        .any(|l| l.contains(&format!("\"data_len\":{}", secret.len()))));
    assert!(
        !log.contains("MRN-SECRET-4242"),
        "the MACed value reached the audit log"
    );
    assert!(
        !log.contains("MRN-777"),
        "an Encrypt payload reached the audit log"
    );
}
