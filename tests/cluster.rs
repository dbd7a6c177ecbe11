//! Several nodes on one shared PostgreSQL registry and one SoftHSM token:
//! a real PostgreSQL server (Debian's, started here in a temporary
//! directory as an unprivileged user, on a Unix socket only), three real
//! daemons, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

/// PostgreSQL, the nodes, and what the tests watch them with.
#[path = "cluster/fixtures.rs"]
mod fixtures;

use std::time::{Duration, Instant};

use common::*;
use fixtures::*;
use keywarden::proto;
use keywarden_client::Client;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_keys_and_no_node_serves_a_key_after_its_revocation_returned() {
    let pg = Postgres::start();
    let nodes = cluster(&pg, &["--destroy-approvals", "1"]).await;
    let mut c1 = nodes[0].client().await;
    let mut c2 = nodes[1].client().await;
    let mut c3 = nodes[2].client().await;

    // A key created on node 1 is usable on node 2 as soon as the create
    // returned; the data key opens on node 3.
    create_key(&mut c1, "records").await;
    let g = generate(&mut c2, "records", &[("patient", "p1")]).await;
    let d = decrypt(&mut c3, &g.ciphertext_blob, &[("patient", "p1")])
        .await
        .unwrap();
    assert_eq!(d.plaintext, g.plaintext);

    // 16 clients over the three nodes for a while: every data key made on
    // one node opens to the same bytes on the next.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let make = nodes[i % 3].socket();
        let open = nodes[(i + 1) % 3].socket();
        tasks.push(tokio::spawn(async move {
            let mut a = Client::connect(&make).await.unwrap();
            let mut b = Client::connect(&open).await.unwrap();
            let until = Instant::now() + Duration::from_secs(2);
            let mut n = 0;
            while Instant::now() < until {
                let tag = format!("c{i}-{n}");
                let g = generate(&mut a, "records", &[("patient", &tag)]).await;
                let d = decrypt(&mut b, &g.ciphertext_blob, &[("patient", &tag)])
                    .await
                    .unwrap();
                assert_eq!(d.plaintext, g.plaintext, "wrong bytes");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total >= 16, "only {total} round trips");
    eprintln!("cluster: {total} cross-node round trips by 16 clients in 2 s");

    // Disable on node 1: nothing started after its return succeeds on 2 or 3.
    let took = no_success_after(&nodes, &g.ciphertext_blob, |mut c| async move {
        c.keys.disable_key(name_req("records")).await.unwrap();
    })
    .await;
    eprintln!("cluster: DisableKey returned after {took:?} with three nodes");
    assert_status(
        decrypt(&mut c2, &g.ciphertext_blob, &[("patient", "p1")]).await,
        Code::FailedPrecondition,
        "suspended",
    );
    // Enabled again on node 1: at once on the others.
    c1.keys.enable_key(name_req("records")).await.unwrap();
    for c in [&mut c2, &mut c3] {
        decrypt(c, &g.ciphertext_blob, &[("patient", "p1")])
            .await
            .unwrap();
    }

    // Revoking the version: the same.
    no_success_after(&nodes, &g.ciphertext_blob, |mut c| async move {
        c.keys.rotate_key(name_req("records")).await.unwrap();
        c.keys
            .revoke_version(proto::RevokeVersionRequest {
                name: "records".into(),
                version: 1,
            })
            .await
            .unwrap();
    })
    .await;

    // Destruction: a data key under the new version, destroyed on node 1.
    let g2 = generate(&mut c3, "records", &[("patient", "p1")]).await;
    no_success_after(&nodes, &g2.ciphertext_blob, |mut c| async move {
        let r = c
            .keys
            .destroy_now(name_req("records"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.key.map(|k| k.state).as_deref(), Some("destroyed"));
    })
    .await;
    for c in [&mut c2, &mut c3] {
        assert_eq!(describe(c, "records").await.state, "destroyed");
    }
    // The name stays a tombstone on every node.
    let r = c2
        .keys
        .create_key(proto::CreateKeyRequest {
            name: "records".into(),
            description: String::new(),
            rotation_period_secs: 0,
            kind: String::new(),
        })
        .await;
    assert!(r.is_err(), "a destroyed key's name was reused");

    // Each node's own signed log, every line naming its node; verified
    // together, and queried as one timeline.
    let logs: Vec<_> = nodes.iter().map(Daemon::audit_dir).collect();
    let text = audit_verify(&logs, &["--allow-unsigned-tail"])
        .assert_ok()
        .stdout;
    for n in ["n1", "n2", "n3"] {
        assert!(text.contains(&format!("OK: node {n} ")), "{text}");
    }
    let dirs = audit_dirs(&nodes);
    let mut args = vec!["--output", "json", "audit", "query", "--key", "records"];
    args.extend(dirs.iter().map(String::as_str));
    let out = nodes[0].cli(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not merged by time");
    let on = |node: &str, op: &str| {
        entries
            .iter()
            .any(|e| e["node"] == node && e["op"] == op && e["code"] == "OK")
    };
    assert!(
        on("n1", "DisableKey") && on("n1", "CreateKey"),
        "{entries:?}"
    );
    assert!(
        on("n2", "GenerateDataKey") && on("n3", "Decrypt"),
        "{entries:?}"
    );
    assert!(
        entries.iter().all(|e| e["node"].is_string()),
        "a line without its node"
    );
}

async fn gdk(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: key.into(),
            encryption_context: Default::default(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_or_an_old_snapshot_in_postgresql_is_refused_on_every_node() {
    let pg = Postgres::start();
    let nodes = cluster(&pg, &["--destroy-approvals", "1"]).await;
    let mut c1 = nodes[0].client().await;
    create_key(&mut c1, "a").await;
    create_key(&mut c1, "b").await;
    let gb = generate(&mut c1, "b", &[]).await;
    c1.keys.destroy_now(name_req("a")).await.unwrap();

    // A row edited by hand to bring the destroyed key back.
    pg.psql(
        "UPDATE key_records SET record = replace(record, '\"state\":\"destroyed\"', '\"state\":\"active\"') WHERE name = 'a'",
    );
    assert!(pg
        .psql("SELECT record FROM key_records WHERE name = 'a'")
        .contains("\"state\":\"active\""));
    // Any later change makes the other nodes load the registry again:
    // they find the edit. Node 1, which wrote it, kept its verified copy
    // (the key stays destroyed there) and finds it at its next load.
    create_key(&mut c1, "c").await;
    assert_status(
        gdk(&mut c1, "a").await,
        Code::FailedPrecondition,
        "destroyed",
    );
    for d in &nodes[1..] {
        let mut c = d.client().await;
        assert_status(
            gdk(&mut c, "a").await,
            Code::DataLoss,
            "its record was edited",
        );
        decrypt(&mut c, &gb.ciphertext_blob, &[]).await.unwrap();
    }

    // A row deleted.
    pg.psql("DELETE FROM key_records WHERE name = 'b'");
    create_key(&mut c1, "d").await;
    for d in &nodes[1..] {
        let mut c = d.client().await;
        assert_status(gdk(&mut c, "b").await, Code::DataLoss, "deleted");
    }

    // An old copy of the whole database put back (pg_dump / pg_restore).
    let dump = pg.sockets().join("old.dump");
    dump_registry(&pg, &dump);
    create_key(&mut c1, "e").await;
    restore_registry(&pg, &dump);
    for d in &nodes {
        let mut c = d.client().await;
        let s = wait_for(
            "the node to refuse the old snapshot",
            Duration::from_secs(10),
            async || match c.keys.list_keys(proto::ListKeysRequest {}).await {
                Err(s) if s.code() == Code::DataLoss => Ok(s),
                other => Err(format!("{:?}", other.map(|r| r.into_inner().keys.len()))),
            },
        )
        .await;
        assert!(s.message().contains("older copy"), "{}", s.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_or_a_frozen_node_stops_serving_and_service_comes_back() {
    let pg = Postgres::start();
    let mut nodes = cluster(&pg, &[]).await;
    let mut c1 = nodes[0].client().await;
    create_key(&mut c1, "k").await;
    let g = generate(&mut c1, "k", &[]).await;

    // PostgreSQL stopped: within a lease (3 s) every node refuses,
    // UNAVAILABLE. Each is asked until it refuses.
    pg.down();
    for d in &nodes {
        let mut c = d.client().await;
        let refused = wait_for(
            "the node to refuse once its lease ran out (database down)",
            Duration::from_secs(10),
            async || match decrypt(&mut c, &g.ciphertext_blob, &[]).await {
                Ok(_) => Err("it still serves".into()),
                Err(s) => Ok(s),
            },
        )
        .await;
        assert_status(Err::<(), _>(refused), Code::Unavailable, "cannot confirm");
    }
    // Back: every node serves again by itself.
    pg.up();
    for d in &nodes {
        wait_serving(d).await;
        let mut c = d.client().await;
        decrypt(&mut c, &g.ciphertext_blob, &[]).await.unwrap();
    }

    // Node 3 frozen (SIGSTOP): a disable on node 1 still returns, after
    // node 3's lease ran out; node 3, thawed, refuses the key.
    let pid3 = nix::unistd::Pid::from_raw(nodes[2].serve_pid().unwrap());
    nix::sys::signal::kill(pid3, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    c1.keys.disable_key(name_req("k")).await.unwrap();
    let took = t0.elapsed();
    // Node 3's last lease ends 2.5 to 3 s after it froze (less if its
    // renewals lagged on a busy machine): the disable waited for it; it
    // cannot know node 3 will not serve before then.
    assert!(
        took >= Duration::from_secs(1),
        "returned before node 3's lease could end: {took:?}"
    );
    eprintln!("cluster: DisableKey with one node frozen returned after {took:?}");
    nix::sys::signal::kill(pid3, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut c3 = nodes[2].client().await;
    let r = decrypt(&mut c3, &g.ciphertext_blob, &[]).await;
    assert!(
        matches!(
            r.as_ref().map_err(|s| s.code()),
            Err(Code::Unavailable | Code::FailedPrecondition)
        ),
        "the thawed node served a disabled key"
    );
    c1.keys.enable_key(name_req("k")).await.unwrap();
    wait_serving(&nodes[2]).await;
    decrypt(&mut c3, &g.ciphertext_blob, &[]).await.unwrap();

    // Node 2 killed (-9): the others keep serving; restarted, it comes
    // back sealed and serves once unsealed.
    let pid2 = nix::unistd::Pid::from_raw(nodes[1].serve_pid().unwrap());
    nix::sys::signal::kill(pid2, nix::sys::signal::Signal::SIGKILL).unwrap();
    for i in [0, 2] {
        let mut c = nodes[i].client().await;
        decrypt(&mut c, &g.ciphertext_blob, &[]).await.unwrap();
    }
    nodes[1].restart().await;
    wait_serving(&nodes[1]).await;
    let mut c2 = nodes[1].client().await;
    decrypt(&mut c2, &g.ciphertext_blob, &[]).await.unwrap();
}

/// Someone who can write the database hides a disable from one node: the
/// node is frozen while the disable commits and returns, and before it
/// wakes the database is put back to the snapshot it had applied, so the
/// database grants it a lease at that generation. The HSM's counter, which
/// the writer advanced after its commit, contradicts the database, and the
/// node refuses the key (as the other nodes refuse the old snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_hiding_a_disable_from_a_node_cannot_keep_it_serving() {
    let pg = Postgres::start();
    let nodes = cluster(&pg, &[]).await;
    let mut c1 = nodes[0].client().await;
    create_key(&mut c1, "k").await;
    let g = generate(&mut c1, "k", &[]).await;
    let mut c3 = nodes[2].client().await;
    wait_serving(&nodes[2]).await;
    decrypt(&mut c3, &g.ciphertext_blob, &[]).await.unwrap();
    let snapshot = pg.sockets().join("before-disable.dump");
    dump_registry(&pg, &snapshot);

    let pid3 = nix::unistd::Pid::from_raw(nodes[2].serve_pid().unwrap());
    nix::sys::signal::kill(pid3, nix::sys::signal::Signal::SIGSTOP).unwrap();
    c1.keys.disable_key(name_req("k")).await.unwrap();
    restore_registry(&pg, &snapshot);
    assert!(pg
        .psql("SELECT record FROM key_records WHERE name = 'k'")
        .contains("\"state\":\"active\""));
    nix::sys::signal::kill(pid3, nix::sys::signal::Signal::SIGCONT).unwrap();

    // Node 3 wakes with its lease run out, renews at the generation the
    // database shows, and must still never serve the key: watched for 6 s
    // (the time is the point: a node that served would do so in it).
    let until = Instant::now() + Duration::from_secs(6);
    let mut last = None;
    while Instant::now() < until {
        match decrypt(&mut c3, &g.ciphertext_blob, &[]).await {
            Ok(_) => panic!("node 3 served a key whose disable had returned"),
            Err(s) => last = Some(s),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.unwrap();
    assert_eq!(last.code(), Code::DataLoss, "{}", last.message());
    assert!(last.message().contains("older copy"), "{}", last.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_destruction_survives_the_leader_and_is_done_once() {
    let pg = Postgres::start();
    let mut nodes = cluster(
        &pg,
        &[
            "--destroy-min-delay",
            "2s",
            "--destroy-approvals",
            "1",
            "--tick",
            "1s",
        ],
    )
    .await;
    let mut c1 = nodes[0].client().await;
    create_key(&mut c1, "k").await;
    let g = generate(&mut c1, "k", &[]).await;
    // The leader runs scheduled work; find it.
    let leader = wait_for(
        "a node to log that it leads",
        Duration::from_secs(20),
        async || {
            (0..3)
                .find(|&i| nodes[i].log().contains("this node is the cluster's leader"))
                .ok_or_else(String::new)
        },
    )
    .await;
    let mut cl = nodes[leader].client().await;
    cl.keys
        .schedule_destroy(proto::ScheduleDestroyRequest {
            name: "k".into(),
            after_secs: 2,
        })
        .await
        .unwrap();
    // The leader dies before the destruction is due.
    let pid = nix::unistd::Pid::from_raw(nodes[leader].serve_pid().unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut c = nodes[others[0]].client().await;
    wait_key(
        &mut c,
        "k",
        20,
        "no other node took over the destruction",
        |k| k.state == "destroyed",
    )
    .await;
    for &i in &others {
        let mut c = nodes[i].client().await;
        assert_eq!(describe(&mut c, "k").await.state, "destroyed");
        assert_status(
            decrypt(&mut c, &g.ciphertext_blob, &[]).await,
            Code::FailedPrecondition,
            "destroyed",
        );
    }
    // The token objects are gone, and the destruction was recorded once,
    // by the node that took over.
    let out = nodes[others[0]].pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    let labels = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !labels.contains("keywarden:k/"),
        "{labels}"
    );
    let dirs = audit_dirs(&nodes);
    let mut args = vec!["--output", "json", "audit", "query", "--op", "destroyed"];
    args.extend(dirs.iter().map(String::as_str));
    let out = nodes[others[0]].cli(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let done = v["entries"].as_array().unwrap();
    assert_eq!(done.len(), 1, "destroyed {} times: {done:?}", done.len());
    assert_ne!(done[0]["node"], format!("n{}", leader + 1));
    // The old leader, restarted and unsealed, finds the key destroyed.
    nodes[leader].restart().await;
    wait_serving(&nodes[leader]).await;
    let mut c = nodes[leader].client().await;
    assert_eq!(describe(&mut c, "k").await.state, "destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_on_two_nodes_at_once_lose_nothing_and_a_duplicate_node_id_is_refused() {
    let pg = Postgres::start();
    let nodes = cluster(&pg, &[]).await;
    let mut c1 = nodes[0].client().await;
    create_key(&mut c1, "shared").await;
    // Nodes 1 and 2 create keys and rotate one shared key at the same
    // time: every write that lost the race is taken in and made again.
    let mut tasks = Vec::new();
    for (i, d) in nodes[..2].iter().enumerate() {
        let socket = d.socket();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&socket).await.unwrap();
            for n in 0..6 {
                create_key(&mut c, &format!("k{i}-{n}")).await;
                c.keys.rotate_key(name_req("shared")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for d in &nodes {
        let mut c = d.client().await;
        let keys = c
            .keys
            .list_keys(proto::ListKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        assert_eq!(
            keys.len(),
            13,
            "{:?}",
            keys.iter().map(|k| &k.name).collect::<Vec<_>>()
        );
        let shared = describe(&mut c, "shared").await;
        assert_eq!(shared.versions.len(), 13, "a rotation was lost");
        assert_eq!(shared.current_version, 13);
    }

    // A fourth daemon given node 2's id (a cloned host, say) never gets a
    // lease while node 2 is live, so no change is ever confirmed for it.
    let url = pg.url();
    let dir = nodes[0].dir.display().to_string();
    let mut twin = Daemon::builder()
        .args(&["--registry-url", &url, "--node-id", "n2", "--join", &dir])
        .sealed()
        .start()
        .await;
    twin.dev_share = nodes[0].dev_share.clone();
    let mut c = twin.client().await;
    twin.unseal_dev(&mut c).await;
    twin.wait_phase("unsealed").await;
    // It is refused at its first renewal, and served nothing before.
    let refused = wait_for(
        "the twin's first renewal to be refused",
        Duration::from_secs(20),
        async || match c.keys.list_keys(proto::ListKeysRequest {}).await {
            Ok(_) => panic!("a second daemon with node 2's id was served"),
            Err(s) if s.message().contains("is live as node") => Ok(s),
            Err(s) => Err(s.message().to_string()),
        },
    )
    .await;
    assert_status(
        Err::<(), _>(refused),
        Code::Unavailable,
        "is live as node \"n2\"",
    );
    // Node 2 itself still serves.
    let mut c2 = nodes[1].client().await;
    c2.keys.list_keys(proto::ListKeysRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_on_one_node_reaches_every_node_through_the_registry() {
    let pg = Postgres::start();
    // Nodes 2 and 3 joined without a copy of node 1's seal.json: they
    // took the cluster's seal from the database.
    let mut nodes = cluster(&pg, &[]).await;
    let old_set = seal_status(&nodes[0]).await.set_id;
    assert_eq!(seal_rows(&pg).trim(), format!("current {old_set} n1"));
    let mut c1 = nodes[0].client().await;
    create_key(&mut c1, "k").await;
    let g = generate(&mut c1, "k", &[]).await;
    let before = std::fs::read_to_string(nodes[0].seal_file()).unwrap();

    // A rekey on node 1 (dev mode: one share).
    let old = nodes[0].dev_share.clone().unwrap();
    c1.operator
        .rekey_start(proto::RekeyStartRequest {
            shares: 1,
            threshold: 1,
            recipients: vec![],
            labels: vec![],
        })
        .await
        .unwrap();
    let issued = c1
        .operator
        .rekey_submit(proto::RekeyShareRequest { share: old.clone() })
        .await
        .unwrap()
        .into_inner();
    let new = issued.new_shares[0].share.clone();
    let v = c1
        .operator
        .rekey_verify(proto::RekeyShareRequest { share: new.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(v.committed);
    let new_set = issued.new_set_id;
    assert_eq!(seal_rows(&pg).trim(), format!("current {new_set} n1"));
    wait_serving(&nodes[0]).await;

    // Node 2, sealed, knows only the new set; the old share is refused
    // without a login attempt, the new one opens it.
    let mut c2 = nodes[1].client().await;
    c2.operator.seal(proto::SealRequest {}).await.unwrap();
    assert_status(
        c2.operator
            .unseal(proto::UnsealRequest {
                share: old.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &format!("this daemon's set is {new_set}"),
    );
    c2.operator
        .unseal(proto::UnsealRequest {
            share: new.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    nodes[1].wait_phase("unsealed").await;
    wait_serving(&nodes[1]).await;
    decrypt(&mut c2, &g.ciphertext_blob, &[]).await.unwrap();
    // Its seal.json mirrors the cluster's (for offline tools).
    let mirror = std::fs::read_to_string(nodes[1].seal_file()).unwrap();
    assert!(mirror.contains(&new_set), "{mirror}");

    // Node 3 restarted: it comes up sealed on the new set.
    nodes[2].dev_share = Some(new.clone());
    nodes[2].restart_sealed().await;
    assert_eq!(seal_status(&nodes[2]).await.set_id, new_set);
    let mut c3 = nodes[2].client().await;
    nodes[2].unseal_dev(&mut c3).await;
    nodes[2].wait_phase("unsealed").await;
    wait_serving(&nodes[2]).await;
    decrypt(&mut c3, &g.ciphertext_blob, &[]).await.unwrap();

    // A rollback of the seal row to the retired set: the old share
    // verifies that file but the token has the new PINs; no node opens.
    pg.psql(&format!(
        "UPDATE seal_files SET set_id = '{old_set}', body = '{}' WHERE slot = 'current'",
        before.replace('\'', "''")
    ));
    let mut c3 = nodes[2].client().await;
    c3.operator.seal(proto::SealRequest {}).await.unwrap();
    let r = c3
        .operator
        .unseal(proto::UnsealRequest {
            share: old.clone(),
            ..Default::default()
        })
        .await;
    assert!(r.is_err(), "the retired set opened a node");
    assert!(
        nodes[2].log().contains("the token refused the user PIN"),
        "refused for another reason: {}",
        nodes[2].log()
    );
    assert_eq!(seal_status(&nodes[2]).await.phase, "sealed");
    // Node 1, still open, serves on (its login stands).
    decrypt(&mut c1, &g.ciphertext_blob, &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_over_tcp_is_tls_verified_against_its_ca_and_name() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_ca(dir, "registry-ca");
    make_ca(dir, "other-ca");
    make_server_cert(dir, "registry-ca");
    let pg = Postgres::start_tls(&dir.join("server.pem"), &dir.join("server.key"));
    let url = pg.tcp_url("localhost");
    let ca = dir.join("registry-ca.pem").display().to_string();

    // The right CA and the name on the certificate: the node serves, and
    // the server sees every one of its connections over TLS.
    let d = Daemon::builder()
        .args(&[
            "--registry-url",
            &url,
            "--registry-ca-file",
            &ca,
            "--node-id",
            "tls1",
        ])
        .start()
        .await;
    wait_serving(&d).await;
    let mut c = d.client().await;
    create_key(&mut c, "over-tls").await;
    let g = generate(&mut c, "over-tls", &[("patient", "p1")]).await;
    let back = decrypt(&mut c, &g.ciphertext_blob, &[("patient", "p1")])
        .await
        .unwrap();
    assert_eq!(back.plaintext, g.plaintext);
    let seen = pg.psql(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'keywarden'",
    );
    let (tls, plain) = seen.trim().split_once('|').unwrap();
    assert!(
        tls.parse::<u32>().unwrap() >= 1,
        "no TLS connection: {seen}"
    );
    assert_eq!(plain, "0", "a connection without TLS: {seen}");
    let rows = pg.psql("SELECT count(*) FROM key_records WHERE name = 'over-tls'");
    assert_eq!(rows.trim(), "1");

    // A certificate from a CA the node does not trust: refused at start.
    let other = dir.join("other-ca.pem").display().to_string();
    let err = dev_refused(&[
        "--registry-url",
        &url,
        "--registry-ca-file",
        &other,
        "--node-id",
        "tls2",
    ]);
    assert!(err.contains("certificate verify failed"), "{err}");

    // The right CA but a name the certificate does not carry (the server
    // reached as 127.0.0.1): refused.
    let by_ip = pg.tcp_url("127.0.0.1");
    let err = dev_refused(&[
        "--registry-url",
        &by_ip,
        "--registry-ca-file",
        &ca,
        "--node-id",
        "tls3",
    ]);
    assert!(err.contains("certificate verify failed"), "{err}");

    // No CA given for a host off this machine, or sslmode=require without
    // one: refused before any connection, naming the setting.
    let err = dev_refused(&[
        "--registry-url",
        "host=db.example.org user=kw",
        "--node-id",
        "tls4",
    ]);
    assert!(err.contains("registry.ca_file"), "{err}");
    let err = dev_refused(&[
        "--registry-url",
        &format!("{url} sslmode=require"),
        "--node-id",
        "tls5",
    ]);
    assert!(err.contains("registry.ca_file"), "{err}");
}
