//! The exposition text: histogram buckets, label escaping, the gate's
//! and the audit writer's counters, and the seal state gauge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[test]
fn histograms_are_cumulative_and_labels_escaped() {
    let m = Metrics::new(true);
    m.request("GenerateDataKey", "OK", Duration::from_micros(800));
    m.request("GenerateDataKey", "OK", Duration::from_millis(3));
    m.request("Decrypt", "INVALID_ARGUMENT", Duration::from_millis(1));
    m.hsm("wrap_new_keys", Duration::from_micros(300), true);
    m.hsm("decrypt_many", Duration::from_micros(300), false);
    m.audit_commit(3, Duration::from_millis(2), true);
    let snap = Snapshot {
        seal_phase: "unsealed",
        keys: [(("active".into(), "aes".into()), 2)].into(),
        encryptions: vec![("pat\"ients".into(), 1, 5, 10, 20)],
        ..Default::default()
    };
    let t = m.render(&snap);
    assert!(
        t.contains("keywarden_requests_total{method=\"GenerateDataKey\",code=\"OK\"} 2"),
        "{t}"
    );
    assert!(
        t.contains(
            "keywarden_request_duration_seconds_bucket{method=\"GenerateDataKey\",le=\"0.001\"} 1"
        ),
        "{t}"
    );
    assert!(
        t.contains(
            "keywarden_request_duration_seconds_bucket{method=\"GenerateDataKey\",le=\"0.005\"} 2"
        ),
        "{t}"
    );
    assert!(
        t.contains("keywarden_request_duration_seconds_count{method=\"GenerateDataKey\"} 2"),
        "{t}"
    );
    assert!(
        t.contains("keywarden_hsm_operation_errors_total{operation=\"decrypt_many\"} 1"),
        "{t}"
    );
    assert!(t.contains("keywarden_audit_lines_total 3"), "{t}");
    assert!(
        t.contains("keywarden_seal_state{state=\"unsealed\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("keywarden_keys{state=\"active\",kind=\"aes\"} 2"),
        "{t}"
    );
    assert!(t.contains("key=\"pat\\\"ients\""), "{t}");
    assert!(!Metrics::new(false)
        .render(&snap)
        .contains("keywarden_key_version_encryptions{"));
}

/// The value of the one sample line that starts with `series` (its
/// name and labels).
fn sample(t: &str, series: &str) -> f64 {
    let mut found = t
        .lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
    let v = found
        .next()
        .unwrap_or_else(|| panic!("no {series} in\n{t}"));
    assert!(found.next().is_none(), "{series} twice");
    v.parse().unwrap()
}

#[test]
fn bucket_bounds_are_inclusive_and_overflow_counts_only_in_inf() {
    let m = Metrics::new(false);
    for d in [
        Duration::from_micros(50),
        Duration::from_micros(51),
        Duration::from_secs(10),
        Duration::from_secs(11),
    ] {
        m.hsm("sign", d, true);
    }
    let t = m.render(&Snapshot::default());
    let b = |le: &str| {
        sample(
            &t,
            &format!(
                "keywarden_hsm_operation_duration_seconds_bucket{{operation=\"sign\",le=\"{le}\"}}"
            ),
        )
    };
    assert_eq!(b("0.00005"), 1.0);
    assert_eq!(b("0.0001"), 2.0);
    assert_eq!(b("2.5"), 2.0);
    assert_eq!(b("10"), 3.0);
    assert_eq!(b("+Inf"), 4.0);
    let op = "{operation=\"sign\"}";
    assert_eq!(
        sample(
            &t,
            &format!("keywarden_hsm_operation_duration_seconds_count{op}")
        ),
        4.0
    );
    let sum = sample(
        &t,
        &format!("keywarden_hsm_operation_duration_seconds_sum{op}"),
    );
    assert!((sum - 21.000101).abs() < 1e-9, "{sum}");
    // Successful operations add no error series.
    assert!(!t.contains("keywarden_hsm_operation_errors_total{"), "{t}");
    // An unobserved histogram renders every bucket at zero.
    assert_eq!(
        sample(
            &t,
            "keywarden_audit_write_duration_seconds_bucket{le=\"0.00005\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(&t, "keywarden_audit_write_duration_seconds_count"),
        0.0
    );
}

#[test]
fn the_exposition_is_one_sample_per_line_each_of_a_declared_family() {
    let m = Metrics::new(true);
    m.request(
        "evil\\\"}\nkeywarden_hsm_up 1",
        "OK",
        Duration::from_millis(1),
    );
    m.hsm("unwrap", Duration::from_millis(1), false);
    m.limit_refused("audit_hash");
    m.gate_call("grpc", "Encrypt", "ok");
    let snap = Snapshot {
        seal_phase: "sealed",
        keys: [(("active".into(), "hmac".into()), 1)].into(),
        encryptions: vec![("a\nb".into(), 2, 1, 2, 3)],
        forward: Some(crate::audit::forward::ForwardStatus {
            lag_seconds: 1.23456,
            ..Default::default()
        }),
        audit_disk: Some(crate::audit::DiskSpace { free: 1, size: 2 }),
        ..Default::default()
    };
    let t = m.render(&snap);
    let mut types = BTreeMap::new();
    for line in t.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{line:?}: no TYPE before it");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line:?}");
    }
    // The raw label could not break out: escaped where it is written.
    assert!(
        t.contains(r#"method="evil\\\"}\nkeywarden_hsm_up 1",code="OK"} 1"#),
        "{t}"
    );
    assert_eq!(t.matches("\nkeywarden_hsm_up ").count(), 1);
    assert!(
        t.contains(r#"keywarden_key_version_encryptions{key="a\nb",version="2"} 1"#),
        "{t}"
    );
    assert!(
        t.contains("keywarden_audit_forward_lag_seconds 1.235\n"),
        "{t}"
    );
    assert!(t.contains("keywarden_audit_disk_free_bytes 1\n"), "{t}");
}

#[test]
fn gate_calls_are_counted_per_front_operation_and_outcome() {
    let m = Metrics::new(false);
    for _ in 0..2 {
        m.gate_call("grpc", "Encrypt", "ok");
    }
    m.gate_call("grpc", "Encrypt", "denied");
    m.gate_call("rest", "Encrypt", "ok");
    assert_eq!(m.gate_calls("grpc", "Encrypt", "ok"), 2);
    assert_eq!(m.gate_calls("grpc", "Encrypt", "denied"), 1);
    assert_eq!(m.gate_calls("rest", "Encrypt", "ok"), 1);
    assert_eq!(m.gate_calls("rest", "Encrypt", "denied"), 0);
    assert_eq!(m.gate_calls("grpc", "Decrypt", "ok"), 0);
    let t = m.render(&Snapshot::default());
    let line = |f: &str, o: &str| {
        sample(
            &t,
            &format!("keywarden_gate_calls_total{{front=\"{f}\",op=\"Encrypt\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(line("grpc", "ok"), 2.0);
    assert_eq!(line("grpc", "denied"), 1.0);
    assert_eq!(line("rest", "ok"), 1.0);
}

#[test]
fn queue_depth_never_shows_negative_and_failed_commits_write_no_lines() {
    let m = Metrics::new(false);
    m.audit_queued(2);
    m.audit_queued(-5);
    let t = m.render(&Snapshot::default());
    assert_eq!(sample(&t, "keywarden_audit_queue_depth"), 0.0);
    m.audit_queued(4);
    m.audit_commit(10, Duration::from_millis(1), false);
    m.audit_waited([Duration::from_micros(10), Duration::from_secs(20)].into_iter());
    let t = m.render(&Snapshot::default());
    assert_eq!(sample(&t, "keywarden_audit_queue_depth"), 1.0);
    assert_eq!(sample(&t, "keywarden_audit_lines_total"), 0.0);
    assert_eq!(sample(&t, "keywarden_audit_write_failures_total"), 1.0);
    assert_eq!(
        sample(&t, "keywarden_audit_write_duration_seconds_count"),
        0.0
    );
    assert_eq!(sample(&t, "keywarden_audit_queue_wait_seconds_count"), 2.0);
    assert_eq!(
        sample(&t, "keywarden_audit_queue_wait_seconds_bucket{le=\"10\"}"),
        1.0
    );
    // Without a forwarder or a readable disk, those series are absent.
    assert!(!t.contains("keywarden_audit_forward_"), "{t}");
    assert!(!t.contains("keywarden_audit_disk_"), "{t}");
}

#[test]
fn seal_state_marks_exactly_one_phase_and_code_names_match_grpc() {
    for phase in ["uninitialized", "sealed", "unsealed", "bogus"] {
        let t = Metrics::new(false).render(&Snapshot {
            seal_phase: phase,
            ..Default::default()
        });
        for s in ["uninitialized", "sealed", "unsealed"] {
            let want = if s == phase { 1.0 } else { 0.0 };
            assert_eq!(
                sample(&t, &format!("keywarden_seal_state{{state=\"{s}\"}}")),
                want
            );
        }
    }
    // The names are tonic's codes in SCREAMING_SNAKE_CASE.
    for i in -1..=17 {
        let mut want = String::new();
        for (j, c) in format!("{:?}", tonic::Code::from_i32(i))
            .chars()
            .enumerate()
        {
            if c.is_ascii_uppercase() && j > 0 {
                want.push('_');
            }
            want.push(c.to_ascii_uppercase());
        }
        assert_eq!(code_name(i), want, "{i}");
    }
}
