//! Prometheus metrics: what the daemon counts and measures while it runs,
//! rendered in the text exposition format (version 0.0.4).
//!
//! One `Metrics` is made at start-up and handed to what records into it
//! (the request layer, the metered HSM, the audit writer, the recovery
//! task); gauges that describe state (seal, keys, grants) are read from the
//! core when a scrape asks. Served on loopback by [`http`] when
//! `[metrics] listen` is set, and over the socket by `keywarden metrics`.
//! Key names appear in labels only with `[metrics] per_key = true`.

pub mod http;
pub mod layer;

use crate::sync::Recover;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A cumulative histogram of durations.
#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: Vec<u64>,
    sum_seconds: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        let s = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(c) = self.counts.get_mut(slot) {
            *c += 1;
        }
        self.sum_seconds += s;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            acc += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum_seconds);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// A series' HELP and TYPE lines.
fn help(o: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(o, "# HELP {name} {text}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// One unlabelled series: its HELP and TYPE lines and its value.
fn scalar(o: &mut String, name: &str, kind: &str, text: &str, value: impl std::fmt::Display) {
    let _ = writeln!(o, "# HELP {name} {text}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    let _ = writeln!(o, "{name} {value}");
}

/// A label value, escaped for the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gRPC code names, by number.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// What a scrape reads from the daemon's state at that moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `uninitialized`, `sealed` or `unsealed`.
    pub seal_phase: &'static str,
    /// The HSM answers its health probe.
    pub hsm_up: bool,
    /// The HSM is lost and the daemon is reconnecting.
    pub hsm_lost: bool,
    /// The audit log can be written.
    pub audit_up: bool,
    /// (state, kind) -> keys.
    pub keys: BTreeMap<(String, String), u64>,
    /// Per key version (with `per_key`): (key, version) -> (encryptions,
    /// rotate-after limit, hard limit).
    pub encryptions: Vec<(String, u32, u64, u64, u64)>,
    /// Without `per_key`: the highest share of its hard limit any active
    /// version has used (0 to 1).
    pub max_encryption_fraction: f64,
    /// Break-glass grants in force.
    pub break_glass_grants: u64,
    /// `WatchKeys` streams (client caches) listening for key changes.
    pub watch_subscribers: u64,
    /// The registry's generation (every key change advances it).
    pub registry_generation: u64,
    /// Integrity problems found at the last load: tampered registry records,
    /// the registry as a whole, and the seal.
    pub tampering: u64,
    /// The audit forwarder's counters, if lines are forwarded.
    pub forward: Option<crate::audit::forward::ForwardStatus>,
    /// The audit log's filesystem, if it can be read.
    pub audit_disk: Option<crate::audit::DiskSpace>,
}

/// Everything the daemon records.
#[derive(Default)]
pub struct Metrics {
    /// (method, code) -> calls.
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    request_seconds: Mutex<BTreeMap<String, Histogram>>,
    hsm_seconds: Mutex<BTreeMap<&'static str, Histogram>>,
    hsm_errors: Mutex<BTreeMap<&'static str, u64>>,
    hsm_recoveries: AtomicU64,
    hsm_losses: AtomicU64,
    audit_write_seconds: Mutex<Histogram>,
    audit_wait_seconds: Mutex<Histogram>,
    audit_lines: AtomicU64,
    audit_failures: AtomicU64,
    audit_queue: AtomicI64,
    /// Refusals by a per-uid limit, by limit.
    limit_refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Calls the gate decided, by front end, operation and outcome.
    gate_calls: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    /// Label keys by name in per-version series.
    pub per_key: bool,
}

impl Metrics {
    /// Nothing recorded yet; `per_key` as [`Metrics::per_key`].
    pub fn new(per_key: bool) -> Self {
        Metrics {
            per_key,
            ..Default::default()
        }
    }

    /// One answered RPC: its method (the gRPC path's last part, or
    /// `unknown`), its code, how long it took.
    pub fn request(&self, method: &str, code: &'static str, took: Duration) {
        let mut r = self.requests.locked();
        *r.entry((method.to_string(), code)).or_default() += 1;
        drop(r);
        self.request_seconds
            .locked()
            .entry(method.to_string())
            .or_default()
            .observe(took);
    }

    /// One HSM operation.
    pub fn hsm(&self, op: &'static str, took: Duration, ok: bool) {
        self.hsm_seconds
            .locked()
            .entry(op)
            .or_default()
            .observe(took);
        if !ok {
            *self.hsm_errors.locked().entry(op).or_default() += 1;
        }
    }

    /// The HSM was found lost (`keywarden_hsm_losses_total`).
    pub fn hsm_lost(&self) {
        self.hsm_losses.fetch_add(1, Ordering::Relaxed);
    }

    /// The HSM came back after a loss (`keywarden_hsm_recoveries_total`).
    pub fn hsm_recovered(&self) {
        self.hsm_recoveries.fetch_add(1, Ordering::Relaxed);
    }

    /// One group commit of the audit writer: `lines` written and
    /// fdatasync'd in `took`, or failed.
    pub fn audit_commit(&self, lines: usize, took: Duration, ok: bool) {
        if ok {
            self.audit_lines.fetch_add(lines as u64, Ordering::Relaxed);
            self.audit_write_seconds.locked().observe(took);
        } else {
            self.audit_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How long audit lines waited for the writer to take them (the
    /// hand-off, apart from the commit itself), one observation per line.
    pub fn audit_waited(&self, waits: impl Iterator<Item = Duration>) {
        let mut h = self.audit_wait_seconds.locked();
        waits.for_each(|w| h.observe(w));
    }

    /// One request refused by a per-uid limit ([`crate::limits`]).
    pub fn limit_refused(&self, limit: &'static str) {
        *self.limit_refusals.locked().entry(limit).or_default() += 1;
    }

    /// One call the gate decided: through which front end, which
    /// operation, and its outcome (`ok`, `error`, `partial`, `denied`,
    /// `limited`). Every label is a constant: no caller adds series.
    pub fn gate_call(&self, front: &'static str, op: &'static str, outcome: &'static str) {
        *self
            .gate_calls
            .locked()
            .entry((front, op, outcome))
            .or_default() += 1;
    }

    /// How many calls the gate counted for `(front, op, outcome)`.
    pub fn gate_calls(&self, front: &'static str, op: &'static str, outcome: &'static str) -> u64 {
        self.gate_calls
            .locked()
            .get(&(front, op, outcome))
            .copied()
            .unwrap_or(0)
    }

    /// Jobs waiting for the audit writer: +1 when queued, -1 when taken.
    pub fn audit_queued(&self, delta: i64) {
        self.audit_queue.fetch_add(delta, Ordering::Relaxed);
    }

    /// The exposition text: what was recorded, and `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut o = String::with_capacity(16 * 1024);
        self.render_requests(&mut o);
        self.render_hsm_operations(&mut o);
        self.render_decisions(&mut o);
        self.render_hsm_state(&mut o, snap);
        self.render_audit(&mut o, snap);
        self.render_state(&mut o, snap);
        o
    }

    /// RPCs by method and code, and their durations.
    fn render_requests(&self, o: &mut String) {
        help(
            o,
            "keywarden_requests_total",
            "counter",
            "RPCs answered, by method and gRPC code.",
        );
        for ((m, c), n) in self.requests.locked().iter() {
            let _ = writeln!(
                o,
                "keywarden_requests_total{{method=\"{}\",code=\"{c}\"}} {n}",
                escape(m)
            );
        }
        help(
            o,
            "keywarden_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its answer, by method.",
        );
        for (m, h) in self.request_seconds.locked().iter() {
            h.render(
                o,
                "keywarden_request_duration_seconds",
                &format!("method=\"{}\"", escape(m)),
            );
        }
    }

    /// HSM operations: durations and errors.
    fn render_hsm_operations(&self, o: &mut String) {
        help(
            o,
            "keywarden_hsm_operation_duration_seconds",
            "histogram",
            "Time of each HSM operation (one PKCS#11 call or a batch of them), by operation.",
        );
        for (op, h) in self.hsm_seconds.locked().iter() {
            h.render(
                o,
                "keywarden_hsm_operation_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
        help(
            o,
            "keywarden_hsm_operation_errors_total",
            "counter",
            "HSM operations that failed, by operation.",
        );
        for (op, n) in self.hsm_errors.locked().iter() {
            let _ = writeln!(
                o,
                "keywarden_hsm_operation_errors_total{{operation=\"{op}\"}} {n}"
            );
        }
    }

    /// Refusals by a per-uid limit, and every call the gate decided.
    fn render_decisions(&self, o: &mut String) {
        help(
            o,
            "keywarden_limit_refusals_total",
            "counter",
            "Requests refused by a per-uid limit ([limits]), by limit.",
        );
        for (limit, n) in self.limit_refusals.locked().iter() {
            let _ = writeln!(o, "keywarden_limit_refusals_total{{limit=\"{limit}\"}} {n}");
        }
        help(
            o,
            "keywarden_gate_calls_total",
            "counter",
            "Calls decided by the gate every front end passes, by front end, operation and outcome.",
        );
        for ((front, op, outcome), n) in self.gate_calls.locked().iter() {
            let _ = writeln!(
                o,
                "keywarden_gate_calls_total{{front=\"{front}\",op=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }

    /// The HSM: up, lost, losses and recoveries.
    fn render_hsm_state(&self, o: &mut String, snap: &Snapshot) {
        scalar(
            o,
            "keywarden_hsm_up",
            "gauge",
            "1 when the HSM answers its health probe.",
            u8::from(snap.hsm_up),
        );
        scalar(
            o,
            "keywarden_hsm_lost",
            "gauge",
            "1 while the HSM is lost and the daemon reconnects.",
            u8::from(snap.hsm_lost),
        );
        scalar(
            o,
            "keywarden_hsm_losses_total",
            "counter",
            "Times the HSM was lost (the token removed, the module or sessions gone).",
            self.hsm_losses.load(Ordering::Relaxed),
        );
        scalar(
            o,
            "keywarden_hsm_recoveries_total",
            "counter",
            "Times the daemon reconnected to a lost HSM and logged in again.",
            self.hsm_recoveries.load(Ordering::Relaxed),
        );
    }

    /// The audit log: commits, waits, lines, failures, the queue, health, disk and forwarding.
    fn render_audit(&self, o: &mut String, snap: &Snapshot) {
        help(
            o,
            "keywarden_audit_write_duration_seconds",
            "histogram",
            "Time of one audit group commit: write and fdatasync.",
        );
        self.audit_write_seconds
            .locked()
            .render(o, "keywarden_audit_write_duration_seconds", "");
        help(
            o,
            "keywarden_audit_queue_wait_seconds",
            "histogram",
            "Time an audit line waited for the writer to take it (before its commit).",
        );
        self.audit_wait_seconds
            .locked()
            .render(o, "keywarden_audit_queue_wait_seconds", "");
        scalar(
            o,
            "keywarden_audit_lines_total",
            "counter",
            "Audit lines written durably.",
            self.audit_lines.load(Ordering::Relaxed),
        );
        scalar(
            o,
            "keywarden_audit_write_failures_total",
            "counter",
            "Audit group commits that failed (key operations are refused meanwhile).",
            self.audit_failures.load(Ordering::Relaxed),
        );
        scalar(
            o,
            "keywarden_audit_queue_depth",
            "gauge",
            "Audit jobs waiting for the writer.",
            self.audit_queue.load(Ordering::Relaxed).max(0),
        );
        scalar(
            o,
            "keywarden_audit_up",
            "gauge",
            "1 when the audit log can be written.",
            u8::from(snap.audit_up),
        );
        if let Some(d) = &snap.audit_disk {
            scalar(
                o,
                "keywarden_audit_disk_free_bytes",
                "gauge",
                "Bytes the daemon may still write on the audit log's filesystem.",
                d.free,
            );
            scalar(
                o,
                "keywarden_audit_disk_size_bytes",
                "gauge",
                "Size of the audit log's filesystem.",
                d.size,
            );
        }
        if let Some(f) = &snap.forward {
            scalar(
                o,
                "keywarden_audit_forward_dropped_alert_lines_total",
                "counter",
                "Alert-class audit lines (warning or above) not forwarded: the queue was full of them.",
                f.dropped_alerts,
            );
            scalar(
                o,
                "keywarden_audit_forward_connected",
                "gauge",
                "1 while the audit forwarder is connected to its receiver.",
                u8::from(f.connected),
            );
            scalar(
                o,
                "keywarden_audit_forward_sent_total",
                "counter",
                "Audit lines forwarded.",
                f.sent,
            );
            scalar(
                o,
                "keywarden_audit_forward_dropped_total",
                "counter",
                "Audit lines not forwarded (queue full, or too large for a datagram); the local log has them.",
                f.dropped,
            );
            scalar(
                o,
                "keywarden_audit_forward_errors_total",
                "counter",
                "Connections to the audit receiver that failed or broke.",
                f.errors,
            );
            scalar(
                o,
                "keywarden_audit_forward_queue_lines",
                "gauge",
                "Audit lines waiting to be forwarded.",
                f.queued,
            );
            scalar(
                o,
                "keywarden_audit_forward_lag_seconds",
                "gauge",
                "How long the oldest audit line not yet forwarded has waited.",
                format!("{:.3}", f.lag_seconds),
            );
        }
    }

    /// The seal, the keys, the registry, encryption counts, grants and subscribers.
    fn render_state(&self, o: &mut String, snap: &Snapshot) {
        help(
            o,
            "keywarden_seal_state",
            "gauge",
            "1 for the seal's current state.",
        );
        for s in ["uninitialized", "sealed", "unsealed"] {
            let _ = writeln!(
                o,
                "keywarden_seal_state{{state=\"{s}\"}} {}",
                u8::from(snap.seal_phase == s)
            );
        }
        help(
            o,
            "keywarden_keys",
            "gauge",
            "Customer-managed keys, by state and kind (while unsealed).",
        );
        for ((state, kind), n) in &snap.keys {
            let _ = writeln!(o, "keywarden_keys{{state=\"{state}\",kind=\"{kind}\"}} {n}");
        }
        scalar(
            o,
            "keywarden_registry_generation",
            "gauge",
            "The registry's generation (every key change advances it).",
            snap.registry_generation,
        );
        scalar(
            o,
            "keywarden_registry_tampering",
            "gauge",
            "Registry or seal integrity problems found at the last load.",
            snap.tampering,
        );
        if self.per_key {
            help(
                o,
                "keywarden_key_version_encryptions",
                "gauge",
                "Encryptions by an active or deactivated key version.",
            );
            for (k, v, n, _, _) in &snap.encryptions {
                let _ = writeln!(
                    o,
                    "keywarden_key_version_encryptions{{key=\"{}\",version=\"{v}\"}} {n}",
                    escape(k)
                );
            }
            help(
                o,
                "keywarden_key_version_encryptions_rotate_after",
                "gauge",
                "The encryption count at which the version is rotated.",
            );
            for (k, v, _, r, _) in &snap.encryptions {
                let _ = writeln!(o, "keywarden_key_version_encryptions_rotate_after{{key=\"{}\",version=\"{v}\"}} {r}", escape(k));
            }
            help(
                o,
                "keywarden_key_version_encryptions_limit",
                "gauge",
                "The encryption count a version never passes.",
            );
            for (k, v, _, _, l) in &snap.encryptions {
                let _ = writeln!(
                    o,
                    "keywarden_key_version_encryptions_limit{{key=\"{}\",version=\"{v}\"}} {l}",
                    escape(k)
                );
            }
        }
        scalar(
            o,
            "keywarden_key_encryptions_limit_ratio_max",
            "gauge",
            "The highest share of its hard encryption limit any version has used (0 to 1).",
            snap.max_encryption_fraction,
        );
        scalar(
            o,
            "keywarden_break_glass_grants",
            "gauge",
            "Break-glass grants in force.",
            snap.break_glass_grants,
        );
        scalar(
            o,
            "keywarden_watch_subscribers",
            "gauge",
            "WatchKeys streams (client caches) listening for key changes.",
            snap.watch_subscribers,
        );
    }
}

#[cfg(test)]
mod tests;
