//! Per-uid limits on what one local user can make the daemon spend: the
//! context values it may hash with `AuditHash` (a dictionary oracle for
//! patient identifiers, if unbounded), the bytes of audit log its requests
//! may write (the log and its off-host copy are what a flood would drown),
//! and the `WatchKeys` streams it may hold open (each holds memory while
//! its reader sleeps).
//!
//! A refusal is RESOURCE_EXHAUSTED. It is counted in the metrics every
//! time, and written to the audit log once per uid, limit and interval,
//! with the number of refusals since the last such line, so a flood of
//! refused calls does not become a flood of audit lines. The time comes
//! from the injected [`Clock`]; unit tests drive it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::clock::Clock;
use crate::sync::Recover;

/// One limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Context values hashed with `AuditHash`.
    AuditHash,
    /// Bytes of audit log written for a uid's requests.
    AuditBytes,
    /// `WatchKeys` streams open at once.
    Watch,
    /// Backups taken (each is a whole file held until it is sent).
    Backups,
}

impl Limit {
    /// The name used in metrics labels and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::AuditHash => "audit_hash",
            Limit::AuditBytes => "audit_bytes",
            Limit::Watch => "watch_streams",
            Limit::Backups => "backups",
        }
    }
}

/// `[limits]` as written in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    audit_hash_per_minute: Option<u32>,
    #[serde(default)]
    audit_bytes_per_second: Option<u64>,
    #[serde(default)]
    audit_bytes_burst: Option<u64>,
    #[serde(default)]
    watch_streams_per_uid: Option<usize>,
    #[serde(default)]
    backups_per_hour: Option<u32>,
    #[serde(default)]
    refusal_audit_interval_secs: Option<u64>,
}

/// The limits in force (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Context values one uid may hash per minute (the bucket holds one
    /// minute's worth): a person's look-ups, not a scan.
    pub audit_hash_per_minute: u32,
    /// Audit bytes one uid's requests may write per second, sustained...
    pub audit_bytes_per_second: u64,
    /// ...and in a burst above that.
    pub audit_bytes_burst: u64,
    /// `WatchKeys` streams one uid may hold open (a client cache needs one).
    pub watch_streams_per_uid: usize,
    /// Backups one uid may take per hour (the bucket holds an hour's
    /// worth); one is streamed at a time in any case.
    pub backups_per_hour: u32,
    /// How often refusals of one uid under one limit are audited.
    pub refusal_audit_interval: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            audit_hash_per_minute: 120,
            audit_bytes_per_second: 2 << 20,
            audit_bytes_burst: 256 << 20,
            watch_streams_per_uid: 8,
            backups_per_hour: 12,
            refusal_audit_interval: Duration::from_secs(60),
        }
    }
}

/// Why `[limits]` was refused: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{field}: {reason}")]
pub struct LimitsError {
    /// The field, as named in the configuration file.
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: &'static str,
}

impl RawLimits {
    /// Validates the section: missing fields take their defaults; a zero
    /// anywhere, or a burst under 1 MiB, is refused.
    pub fn parse(self) -> Result<LimitsConfig, LimitsError> {
        let d = LimitsConfig::default();
        let positive = |field, v: Option<u64>, default: u64| match v {
            Some(0) => Err(LimitsError {
                field,
                reason: "must be at least 1",
            }),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let cfg = LimitsConfig {
            audit_hash_per_minute: positive(
                "audit_hash_per_minute",
                self.audit_hash_per_minute.map(u64::from),
                u64::from(d.audit_hash_per_minute),
            )? as u32,
            audit_bytes_per_second: positive(
                "audit_bytes_per_second",
                self.audit_bytes_per_second,
                d.audit_bytes_per_second,
            )?,
            audit_bytes_burst: positive(
                "audit_bytes_burst",
                self.audit_bytes_burst,
                d.audit_bytes_burst,
            )?,
            watch_streams_per_uid: positive(
                "watch_streams_per_uid",
                self.watch_streams_per_uid.map(|v| v as u64),
                d.watch_streams_per_uid as u64,
            )? as usize,
            backups_per_hour: positive(
                "backups_per_hour",
                self.backups_per_hour.map(u64::from),
                u64::from(d.backups_per_hour),
            )? as u32,
            refusal_audit_interval: Duration::from_secs(positive(
                "refusal_audit_interval_secs",
                self.refusal_audit_interval_secs,
                d.refusal_audit_interval.as_secs(),
            )?),
        };
        if cfg.audit_bytes_burst < 1 << 20 {
            return Err(LimitsError {
                field: "audit_bytes_burst",
                reason: "must be at least 1 MiB (one large batch's line)",
            });
        }
        Ok(cfg)
    }
}

/// A refusal: what the caller is told, and whether this one is to be
/// audited (with how many went unaudited before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The limit that refused.
    pub limit: Limit,
    /// What the caller is told: the uid and the limit it is over.
    pub message: String,
    /// Audit this refusal now: the first of its interval.
    pub audit: bool,
    /// Refusals of this uid under this limit since the last audited one.
    pub since_last_audited: u64,
}

/// A token bucket; `level` may go below zero for charges made after the
/// fact (audit bytes), which then refuse until repaid.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Duration,
}

#[derive(Debug, Default)]
struct Refusals {
    last_audited: Option<Duration>,
    unaudited: u64,
}

/// The limits, shared by every front end.
pub struct Limits {
    cfg: LimitsConfig,
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<(u32, Limit), Bucket>>,
    watching: Mutex<HashMap<u32, usize>>,
    refusals: Mutex<HashMap<(u32, Limit), Refusals>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Limits {
    /// The limits `cfg` describes, timed by `clock`, with no metrics (see
    /// [`Limits::with_metrics`]).
    pub fn new(cfg: LimitsConfig, clock: Arc<dyn Clock>) -> Self {
        Limits {
            cfg,
            clock,
            buckets: Mutex::new(HashMap::new()),
            watching: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Counts every refusal in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The limits in force.
    pub fn config(&self) -> &LimitsConfig {
        &self.cfg
    }

    /// (capacity, refill per second) of a bucket limit.
    fn shape(&self, limit: Limit) -> (f64, f64) {
        match limit {
            Limit::AuditHash => {
                let m = f64::from(self.cfg.audit_hash_per_minute);
                (m, m / 60.0)
            }
            Limit::AuditBytes => (
                self.cfg.audit_bytes_burst as f64,
                self.cfg.audit_bytes_per_second as f64,
            ),
            Limit::Backups => {
                let h = f64::from(self.cfg.backups_per_hour);
                (h, h / 3600.0)
            }
            Limit::Watch => (0.0, 0.0),
        }
    }

    /// The bucket of (uid, limit), refilled to now; `f` may change it.
    fn with_bucket<T>(&self, uid: u32, limit: Limit, f: impl FnOnce(&mut Bucket, f64) -> T) -> T {
        let (cap, rate) = self.shape(limit);
        let now = self.clock.monotonic();
        let mut all = self.buckets.locked();
        let b = all.entry((uid, limit)).or_insert(Bucket {
            level: cap,
            at: now,
        });
        let elapsed = now.saturating_sub(b.at).as_secs_f64();
        b.level = (b.level + elapsed * rate).min(cap);
        b.at = now;
        f(b, cap)
    }

    /// Takes `n` from the bucket, or refuses with nothing taken.
    pub fn take(&self, uid: u32, limit: Limit, n: u64) -> Result<(), Refusal> {
        let n = n as f64;
        let ok = self.with_bucket(uid, limit, |b, _| {
            if b.level >= n {
                b.level -= n;
                true
            } else {
                false
            }
        });
        if ok {
            return Ok(());
        }
        let message = match limit {
            Limit::AuditHash => format!(
                "uid {uid} has hashed more context values than [limits] audit_hash_per_minute allows ({} a minute); wait and look up fewer values",
                self.cfg.audit_hash_per_minute
            ),
            Limit::Backups => format!(
                "uid {uid} has taken more backups than [limits] backups_per_hour allows ({} an hour)",
                self.cfg.backups_per_hour
            ),
            _ => format!("uid {uid} is over the {} limit", limit.as_str()),
        };
        Err(self.refuse(uid, limit, message))
    }

    /// Refuses if the uid's audit volume is in debt (its earlier requests
    /// wrote more than the burst allowed).
    pub fn check_audit_volume(&self, uid: u32) -> Result<(), Refusal> {
        if self.with_bucket(uid, Limit::AuditBytes, |b, _| b.level >= 0.0) {
            return Ok(());
        }
        let message = format!(
            "uid {uid}'s requests have written more audit log than [limits] audit_bytes_per_second ({} B/s, burst {} B) allows; slow down",
            self.cfg.audit_bytes_per_second, self.cfg.audit_bytes_burst
        );
        Err(self.refuse(uid, Limit::AuditBytes, message))
    }

    /// Charges the bytes a request's audit lines took (after the fact: its
    /// size is known only once written).
    pub fn charge_audit_bytes(&self, uid: u32, bytes: u64) {
        self.with_bucket(uid, Limit::AuditBytes, |b, cap| {
            // The debt is bounded, so a uid is never locked out for longer
            // than one burst takes to refill.
            b.level = (b.level - bytes as f64).max(-cap);
        });
    }

    /// A `WatchKeys` stream for `uid`, held until the returned guard drops.
    pub fn watch(self: &Arc<Self>, uid: u32) -> Result<WatchSlot, Refusal> {
        let mut w = self.watching.locked();
        let n = w.entry(uid).or_default();
        if *n >= self.cfg.watch_streams_per_uid {
            drop(w);
            let message = format!(
                "uid {uid} already holds {} WatchKeys streams ([limits] watch_streams_per_uid); a client needs one",
                self.cfg.watch_streams_per_uid
            );
            return Err(self.refuse(uid, Limit::Watch, message));
        }
        *n += 1;
        Ok(WatchSlot {
            limits: self.clone(),
            uid,
        })
    }

    /// Open `WatchKeys` streams, all uids together.
    pub fn watching(&self) -> usize {
        self.watching.locked().values().sum()
    }

    fn refuse(&self, uid: u32, limit: Limit, message: String) -> Refusal {
        if let Some(m) = &self.metrics {
            m.limit_refused(limit.as_str());
        }
        let now = self.clock.monotonic();
        let mut all = self.refusals.locked();
        let r = all.entry((uid, limit)).or_default();
        let due = r
            .last_audited
            .is_none_or(|t| now.saturating_sub(t) >= self.cfg.refusal_audit_interval);
        let since = r.unaudited;
        if due {
            r.last_audited = Some(now);
            r.unaudited = 0;
        } else {
            r.unaudited += 1;
        }
        Refusal {
            limit,
            message,
            audit: due,
            since_last_audited: since,
        }
    }
}

/// About the length of `m` serialised as one JSON line, without
/// serialising it: what a request's audit line costs its uid.
pub fn approx_json_len(m: &serde_json::Map<String, serde_json::Value>) -> usize {
    fn len(v: &serde_json::Value) -> usize {
        use serde_json::Value;
        match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 20,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => 2 + a.iter().map(|v| len(v) + 1).sum::<usize>(),
            Value::Object(o) => 2 + o.iter().map(|(k, v)| k.len() + 4 + len(v)).sum::<usize>(),
        }
    }
    2 + m.iter().map(|(k, v)| k.len() + 4 + len(v)).sum::<usize>()
}

/// One open `WatchKeys` stream of a uid; dropping it frees the slot.
pub struct WatchSlot {
    limits: Arc<Limits>,
    uid: u32,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut w = self.limits.watching.locked();
        if let Some(n) = w.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limits(cfg: LimitsConfig) -> (Arc<Limits>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(1_800_000_000));
        (Arc::new(Limits::new(cfg, clock.clone())), clock)
    }

    #[test]
    fn audit_hash_allows_a_minute_of_lookups_then_refills() {
        let (l, clock) = limits(LimitsConfig {
            audit_hash_per_minute: 60,
            ..LimitsConfig::default()
        });
        l.take(7, Limit::AuditHash, 50).unwrap();
        // Nothing is taken by a refused request.
        let r = l.take(7, Limit::AuditHash, 11).unwrap_err();
        assert!(r.message.contains("audit_hash_per_minute"), "{}", r.message);
        assert!(r.audit);
        l.take(7, Limit::AuditHash, 10).unwrap();
        // Another uid has its own bucket.
        l.take(8, Limit::AuditHash, 60).unwrap();
        // Refusals within the interval are counted, not audited.
        for _ in 0..3 {
            assert!(!l.take(7, Limit::AuditHash, 1).unwrap_err().audit);
        }
        clock.advance(Duration::from_secs(60));
        let r = l.take(7, Limit::AuditHash, 61).unwrap_err();
        assert!(r.audit);
        assert_eq!(r.since_last_audited, 3);
        l.take(7, Limit::AuditHash, 60).unwrap();
    }

    #[test]
    fn audit_volume_refuses_while_in_debt_and_debt_is_bounded() {
        let (l, clock) = limits(LimitsConfig {
            audit_bytes_per_second: 1 << 20,
            audit_bytes_burst: 4 << 20,
            ..LimitsConfig::default()
        });
        l.check_audit_volume(1).unwrap();
        l.charge_audit_bytes(1, 5 << 20);
        assert!(l.check_audit_volume(1).is_err());
        assert!(l.check_audit_volume(2).is_ok());
        clock.advance(Duration::from_secs(1));
        l.check_audit_volume(1).unwrap();
        // A huge charge costs at most one burst of refill.
        l.charge_audit_bytes(1, u64::MAX / 2);
        clock.advance(Duration::from_secs(3));
        assert!(l.check_audit_volume(1).is_err());
        clock.advance(Duration::from_secs(2));
        l.check_audit_volume(1).unwrap();
    }

    #[test]
    fn watch_slots_are_capped_per_uid_and_come_back() {
        let (l, _) = limits(LimitsConfig {
            watch_streams_per_uid: 2,
            ..LimitsConfig::default()
        });
        let a = l.watch(5).unwrap();
        let _b = l.watch(5).unwrap();
        let r = l.watch(5).err().unwrap();
        assert!(r.message.contains("watch_streams_per_uid"));
        let _other = l.watch(6).unwrap();
        assert_eq!(l.watching(), 3);
        drop(a);
        let _c = l.watch(5).unwrap();
    }

    #[test]
    fn configuration_is_checked_field_by_field() {
        let raw: RawLimits = toml::from_str("audit_hash_per_minute = 0").unwrap();
        assert_eq!(raw.parse().unwrap_err().field, "audit_hash_per_minute");
        let raw: RawLimits = toml::from_str("audit_bytes_burst = 1000").unwrap();
        assert_eq!(raw.parse().unwrap_err().field, "audit_bytes_burst");
        assert!(toml::from_str::<RawLimits>("nope = 1").is_err());
        let raw: RawLimits = toml::from_str("watch_streams_per_uid = 3").unwrap();
        assert_eq!(raw.parse().unwrap().watch_streams_per_uid, 3);
    }

    #[test]
    fn zero_is_refused_for_every_field_and_absent_fields_take_defaults() {
        for field in [
            "audit_hash_per_minute",
            "audit_bytes_per_second",
            "audit_bytes_burst",
            "watch_streams_per_uid",
            "backups_per_hour",
            "refusal_audit_interval_secs",
        ] {
            let raw: RawLimits = toml::from_str(&format!("{field} = 0")).unwrap();
            let e = raw.parse().unwrap_err();
            assert_eq!(e.field, field);
            assert_eq!(e.to_string(), format!("limits.{field}: must be at least 1"));
        }
        let raw: RawLimits = toml::from_str("").unwrap();
        assert_eq!(raw.parse().unwrap(), LimitsConfig::default());
        let raw: RawLimits =
            toml::from_str("refusal_audit_interval_secs = 5\nbackups_per_hour = 1").unwrap();
        let cfg = raw.parse().unwrap();
        assert_eq!(cfg.refusal_audit_interval, Duration::from_secs(5));
        assert_eq!(cfg.backups_per_hour, 1);
        assert_eq!(cfg.audit_hash_per_minute, 120);
    }

    #[test]
    fn audit_bytes_burst_must_be_at_least_one_mib() {
        let raw: RawLimits = toml::from_str("audit_bytes_burst = 1048575").unwrap();
        let e = raw.parse().unwrap_err();
        assert_eq!(e.field, "audit_bytes_burst");
        assert!(e.reason.contains("1 MiB"), "{e}");
        let raw: RawLimits = toml::from_str("audit_bytes_burst = 1048576").unwrap();
        assert_eq!(raw.parse().unwrap().audit_bytes_burst, 1 << 20);
    }

    #[test]
    fn refusals_are_audited_once_per_interval_for_each_uid_and_limit() {
        // A request for more than the bucket holds is always refused.
        let (l, clock) = limits(LimitsConfig {
            audit_hash_per_minute: 1,
            backups_per_hour: 1,
            refusal_audit_interval: Duration::from_secs(60),
            ..LimitsConfig::default()
        });
        let first = l.take(1, Limit::AuditHash, 2).unwrap_err();
        assert!(first.audit);
        assert_eq!(first.since_last_audited, 0);
        assert_eq!(first.limit, Limit::AuditHash);
        clock.advance(Duration::from_secs(59));
        assert!(!l.take(1, Limit::AuditHash, 2).unwrap_err().audit);
        // Another uid, and another limit of the same uid, are not held back.
        assert!(l.take(2, Limit::AuditHash, 2).unwrap_err().audit);
        let b = l.take(1, Limit::Backups, 2).unwrap_err();
        assert!(b.audit);
        assert!(b.message.contains("(1 an hour)"), "{}", b.message);
        // Exactly one interval after the last audited one: audited again,
        // with the one that was not.
        clock.advance(Duration::from_secs(1));
        let again = l.take(1, Limit::AuditHash, 2).unwrap_err();
        assert!(again.audit);
        assert_eq!(again.since_last_audited, 1);
        // ...and the count starts over.
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            l.take(1, Limit::AuditHash, 2)
                .unwrap_err()
                .since_last_audited,
            0
        );
    }

    #[test]
    fn every_refusal_is_counted_in_the_metrics_audited_or_not() {
        let metrics = Arc::new(crate::metrics::Metrics::new(false));
        let clock = Arc::new(ManualClock::at(1_800_000_000));
        let cfg = LimitsConfig {
            audit_hash_per_minute: 2,
            watch_streams_per_uid: 1,
            ..LimitsConfig::default()
        };
        let l = Arc::new(Limits::new(cfg, clock).with_metrics(metrics.clone()));
        l.take(3, Limit::AuditHash, 2).unwrap();
        for _ in 0..3 {
            l.take(3, Limit::AuditHash, 1).unwrap_err();
        }
        let _slot = l.watch(3).unwrap();
        assert!(l.watch(3).is_err());
        let text = metrics.render(&crate::metrics::Snapshot::default());
        assert!(
            text.contains("keywarden_limit_refusals_total{limit=\"audit_hash\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("keywarden_limit_refusals_total{limit=\"watch_streams\"} 1"),
            "{text}"
        );
        assert!(!text.contains("limit=\"backups\""), "{text}");
    }

    #[test]
    fn backups_refill_at_the_hourly_rate_and_a_refusal_takes_nothing() {
        // Two an hour: one comes back every 1800 s.
        let (l, clock) = limits(LimitsConfig {
            backups_per_hour: 2,
            ..LimitsConfig::default()
        });
        assert!(l.take(4, Limit::Backups, 3).is_err());
        l.take(4, Limit::Backups, 2).unwrap();
        assert!(l.take(4, Limit::Backups, 1).is_err());
        clock.advance(Duration::from_secs(1799));
        assert!(l.take(4, Limit::Backups, 1).is_err());
        clock.advance(Duration::from_secs(2));
        l.take(4, Limit::Backups, 1).unwrap();
        assert!(l.take(4, Limit::Backups, 1).is_err());
        // A long wait refills to the capacity, never past it.
        clock.advance(Duration::from_secs(10 * 3600));
        l.take(4, Limit::Backups, 2).unwrap();
        assert!(l.take(4, Limit::Backups, 1).is_err());
    }

    #[test]
    fn audit_volume_may_reach_zero_but_not_go_below_it() {
        let (l, clock) = limits(LimitsConfig {
            audit_bytes_per_second: 1 << 20,
            audit_bytes_burst: 1 << 20,
            ..LimitsConfig::default()
        });
        l.charge_audit_bytes(9, 1 << 20);
        l.check_audit_volume(9).unwrap();
        l.charge_audit_bytes(9, 1);
        let r = l.check_audit_volume(9).unwrap_err();
        assert_eq!(r.limit, Limit::AuditBytes);
        assert!(
            r.message.contains("audit_bytes_per_second"),
            "{}",
            r.message
        );
        // Checking charges nothing: a second of refill repays the byte.
        clock.advance(Duration::from_secs(1));
        l.check_audit_volume(9).unwrap();
        l.check_audit_volume(9).unwrap();
    }

    #[test]
    fn approx_json_len_never_undercounts_unescaped_lines() {
        use serde_json::{json, Map, Value};
        let strings: Map<String, Value> = [("op", "Decrypt"), ("key", "patients"), ("e", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let exact = serde_json::to_string(&strings).unwrap().len();
        // Only the comma after the last pair is counted that is not written.
        assert_eq!(approx_json_len(&strings), exact + 1);
        assert_eq!(approx_json_len(&Map::new()), 2);

        let mixed = json!({
            "max": u64::MAX, "min": i64::MIN, "t": true, "f": false, "n": null,
            "list": [1, "two", [], {}], "nested": {"a": {"b": "c"}},
        });
        let mixed = mixed.as_object().unwrap();
        let exact = serde_json::to_string(mixed).unwrap().len();
        assert!(
            approx_json_len(mixed) >= exact,
            "{} < {exact}",
            approx_json_len(mixed)
        );
    }
}
