//! A smoke run of `keywarden bench` (a fraction of a second per figure), so
//! the benchmark cannot rot. Its figures are not asserted: speed is measured
//! by the benchmark itself, never by timed tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn bench_smoke_run_reports_every_figure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args([
            "bench",
            "--seconds",
            "0.2",
            "--warmup",
            "0.05",
            "--output",
            "json",
        ])
        .env_remove("KEYWARDEN_SOCKET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["hsm_raw"].as_f64().unwrap() > 0.0);
    let e = &v["envelope"];
    for k in [
        "stream_encrypt_mib_s",
        "stream_decrypt_mib_s",
        "raw_gcm_encrypt_mib_s",
        "raw_gcm_decrypt_mib_s",
        "encrypt_pipe_mib_s",
    ] {
        assert!(e[k].as_f64().unwrap() > 0.0, "{k}: {e}");
    }
    assert!(e["encrypt_pipe_peak_rss_kib"].as_u64().unwrap() > 0, "{e}");
    // The cache's call counts are counted from the audit log: one
    // GenerateDataKey per record without it, far fewer with it.
    let records = e["cache"]["records"].as_u64().unwrap();
    assert_eq!(
        e["cache"]["without_cache"]["daemon_calls"]
            .as_u64()
            .unwrap(),
        records,
        "{e}"
    );
    assert!(
        e["cache"]["with_cache"]["daemon_calls"].as_u64().unwrap() < records / 100 + 2,
        "{e}"
    );
    for k in [
        "rpc_noop_c1",
        "rpc_noop_c16",
        "generate_c1",
        "generate_c16",
        "decrypt_c1",
        "decrypt_c16",
        "reencrypt_c1",
        "reencrypt_c16",
        "batch64_keys",
    ] {
        assert!(v[k]["per_sec"].as_f64().unwrap() > 0.0, "{k}: {}", v[k]);
        assert_eq!(v[k]["errors"], 0, "{k}: {}", v[k]);
        assert!(v[k]["p50_us"].as_u64().unwrap() <= v[k]["p99_us"].as_u64().unwrap());
        // The daemon's CPU per call is read from /proc (10 ms ticks, so a
        // short window may read 0, never less or missing).
        assert!(
            v[k]["daemon_cpu_us_per_call"].as_f64().unwrap() >= 0.0,
            "{k}: {}",
            v[k]
        );
    }
    // The audit writer's split, from the daemon's metrics page: the
    // commits that the GenerateDataKey figures made, at least one line each.
    for c in ["c1", "c16"] {
        let a = &v[format!("audit_writer_generate_{c}")];
        assert!(a["commits"].as_f64().unwrap() > 0.0, "{c}: {a}");
        assert!(a["lines_per_commit"].as_f64().unwrap() >= 1.0, "{c}: {a}");
        assert!(a["commit_us"].as_f64().unwrap() > 0.0, "{c}: {a}");
        assert!(a["queue_wait_us"].as_f64().unwrap() >= 0.0, "{c}: {a}");
    }
    // Sixteen clients give the writer lines to gather into one commit;
    // one client never does (one line a commit, apart from checkpoints).
    let lines = |c: &str| {
        v[format!("audit_writer_generate_{c}")]["lines_per_commit"]
            .as_f64()
            .unwrap()
    };
    assert!(
        lines("c16") > lines("c1"),
        "{} vs {}",
        lines("c16"),
        lines("c1")
    );
    assert!(v["gdk_vs_limit_audit_off"].as_f64().unwrap() > 0.0);
    assert!(v["audit_off"]["generate_c16"]["per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["daemon_peak_rss_kib"].as_u64().unwrap() > 0);
    assert!(v["gdk_vs_limit"].as_f64().unwrap() > 0.0);
    assert!(v["batch_vs_hsm"].as_f64().unwrap() > 0.0);
}
