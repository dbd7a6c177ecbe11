//! Per-uid limits against the real daemon: the AuditHash look-up rate (a
//! dictionary oracle for patient identifiers when unbounded), the
//! WatchKeys streams one uid may hold, and the audit volume one uid's
//! requests may write. Each refusal is RESOURCE_EXHAUSTED naming the
//! setting, counted in the metrics, and audited once per interval.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use keywarden::proto;
use tonic::Code;

fn audit_lines(d: &Daemon) -> Vec<serde_json::Value> {
    d.audit_files()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

async fn metrics(c: &mut keywarden_client::Client) -> String {
    c.operator
        .metrics(proto::MetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .text
}

fn refusals(m: &str, limit: &str) -> u64 {
    let prefix = format!("keywarden_limit_refusals_total{{limit=\"{limit}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
}

fn pairs(n: usize, from: usize) -> std::collections::HashMap<String, String> {
    (0..n)
        .map(|i| (format!("k{i}"), format!("{}", from + i)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_hash_is_rate_limited_per_uid_and_alerts_once_per_interval() {
    let d = Daemon::builder()
        .args(&[
            "--limit",
            "audit_hash_per_minute=100",
            "--limit",
            "refusal_audit_interval_secs=3600",
        ])
        .start()
        .await;
    let mut c = d.client().await;
    let ok = c
        .operator
        .audit_hash(proto::AuditHashRequest {
            context: pairs(64, 0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.hashes.len(), 64);
    // A scan of an identifier space: refused, and nothing hashed.
    for i in 1..4 {
        let r = c
            .operator
            .audit_hash(proto::AuditHashRequest {
                context: pairs(64, i * 64),
            })
            .await;
        assert_status(r, Code::ResourceExhausted, "audit_hash_per_minute");
    }
    // A small look-up still fits what is left.
    c.operator
        .audit_hash(proto::AuditHashRequest {
            context: pairs(30, 1000),
        })
        .await
        .unwrap();
    let m = metrics(&mut c).await;
    assert_eq!(refusals(&m, "audit_hash"), 3);
    // The audit log's room is watched (before a full disk stops serving).
    assert!(m.contains("keywarden_audit_disk_free_bytes "), "{m}");
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.audit_disk_size_bytes > 0 && s.audit_disk_free_bytes <= s.audit_disk_size_bytes);
    let lines = audit_lines(&d);
    let lookups: Vec<_> = lines
        .iter()
        .filter(|v| v["op"] == "AuditHash" && v["code"] == "OK")
        .collect();
    assert_eq!(lookups.len(), 2);
    assert_eq!(lookups[0]["values"], 64, "each lookup's count");
    let limited: Vec<_> = lines
        .iter()
        .filter(|v| v["limit"] == "audit_hash")
        .collect();
    assert_eq!(limited.len(), 1, "three refusals, one line: {limited:?}");
    assert_eq!(limited[0]["ALERT"], "AUDIT HASH RATE EXCEEDED");
    assert_eq!(limited[0]["code"], "ResourceExhausted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_capped_per_uid_and_a_closed_one_frees_its_slot() {
    let d = Daemon::builder()
        .args(&["--limit", "watch_streams_per_uid=2"])
        .start()
        .await;
    let mut c = d.client().await;
    let mut a = c
        .datakeys
        .watch_keys(proto::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let _b = c
        .datakeys
        .watch_keys(proto::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(a.message().await.unwrap().is_some(), "a stream that serves");
    for _ in 0..5 {
        // Another connection of the same uid does not escape the cap.
        let mut other = d.client().await;
        let r = other.datakeys.watch_keys(proto::WatchKeysRequest {}).await;
        assert_status(r, Code::ResourceExhausted, "watch_streams_per_uid");
    }
    assert_eq!(refusals(&metrics(&mut c).await, "watch_streams"), 5);
    let limited = audit_lines(&d)
        .into_iter()
        .filter(|v| v["limit"] == "watch_streams")
        .count();
    assert_eq!(limited, 1, "five refusals, one audit line");
    // Closing a stream frees its slot once the daemon notices (at its
    // next heartbeat).
    drop(a);
    wait_for(
        "the closed stream's slot to come back",
        Duration::from_secs(20),
        async || match c.datakeys.watch_keys(proto::WatchKeysRequest {}).await {
            Ok(_) => Ok(()),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                Err(s.message().to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_that_floods_the_audit_log_is_refused_until_it_slows_down() {
    let d = Daemon::builder()
        .args(&[
            "--limit",
            "audit_bytes_per_second=1",
            "--limit",
            "audit_bytes_burst=1048576",
        ])
        .start()
        .await;
    let mut c = d.client().await;
    create_key(&mut c, "k").await;
    let batch = || proto::BatchGenerateDataKeyRequest {
        requests: (0..512)
            .map(|i| proto::GenerateDataKeyRequest {
                key: "k".into(),
                encryption_context: ctx(&[("row", &i.to_string())]),
            })
            .collect(),
        without_plaintext: true,
    };
    let mut served = 0;
    let refused = loop {
        match c.datakeys.batch_generate_data_key(batch()).await {
            Ok(_) => served += 1,
            Err(s) => break s,
        }
        assert!(served < 100, "never limited");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("audit_bytes_per_second"),
        "{refused:?}"
    );
    assert!(served >= 2, "the burst let {served} batches through");
    // Everything of this uid is refused now, Status included, while it
    // is in debt; the refusal is audited once.
    let r = c.operator.status(proto::StatusRequest {}).await;
    assert_status(r, Code::ResourceExhausted, "audit_bytes_per_second");
    let limited = audit_lines(&d)
        .into_iter()
        .filter(|v| v["limit"] == "audit_bytes")
        .count();
    assert_eq!(limited, 1);
    // Another local user is not affected.
    ensure_user("kwtest-app");
    let out = d.cli_as("kwtest-app", &["status"], None);
    assert!(out.status.success(), "{out:?}");
}
