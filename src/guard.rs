//! Who is calling and may they: the policy in force, break-glass grants, and
//! the audit entries that record every decision. No gRPC types here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::audit::{Audit, AuditSink, EventKind, Outcome};
use crate::clock::Clock;
use crate::core::{validate, CoreError};
use crate::policy::{Action, Denied, Grant, Identity, Policy, PolicyError};
use crate::sync::{Recover, RecoverRw};

/// Longest break-glass grant.
pub const MAX_BREAK_GLASS: Duration = Duration::from_secs(24 * 3600);

/// A time-limited emergency grant of app access to one key.
#[derive(Debug, Clone)]
pub struct BreakGlassGrant {
    /// The uid the grant is for (the caller who asked for it).
    pub uid: u32,
    /// The policy principal the caller was recognised as.
    pub principal: String,
    /// The one key it grants app access to.
    pub key: String,
    /// Why, as the caller gave it (audited).
    pub reason: String,
    /// When it was granted (the injected clock, whole seconds).
    pub granted: SystemTime,
    /// When it expires: from then on it grants nothing.
    pub expires: SystemTime,
}

/// Where the policy comes from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A policy file, read at start-up and on every reload.
    File(PathBuf),
    /// Dev mode: every local user, every role.
    OpenDev,
}

/// Why the guard could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The policy file was refused.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The policy in force and the break-glass grants: decides whether an
/// identity may do an action, and audits reloads and grants.
pub struct Guard {
    policy: RwLock<Arc<Policy>>,
    source: PolicySource,
    /// The audit log decisions and requests are written to.
    pub audit: Audit,
    break_glass: Mutex<Vec<BreakGlassGrant>>,
    /// Benchmark mode (dev only): requests are answered without auditing.
    pub audit_disabled: bool,
    /// Bumped when who may use which key can have changed (a policy
    /// reload, a break-glass grant): client caches are told to reset.
    epoch: std::sync::atomic::AtomicU64,
    /// Where break-glass grants read the time (the core's clock).
    clock: Arc<dyn Clock>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Guard {
    /// Loads the policy from `source`; a policy file that is refused fails the
    /// start. `audit_disabled` is for benchmarks in dev mode only.
    pub fn new(
        source: PolicySource,
        audit: Audit,
        audit_disabled: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, GuardError> {
        let policy = match &source {
            PolicySource::File(p) => Policy::load(p)?,
            PolicySource::OpenDev => Policy::open_dev(),
        };
        Ok(Guard {
            policy: RwLock::new(Arc::new(policy)),
            source,
            audit,
            break_glass: Mutex::new(Vec::new()),
            audit_disabled,
            epoch: std::sync::atomic::AtomicU64::new(0),
            clock,
        })
    }

    /// The injected clock's time (whole seconds).
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(self.clock.now_secs()).unwrap_or(0))
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.read_locked().clone()
    }

    fn event(&self, kind: EventKind, outcome: Outcome, detail: Value) {
        self.audit.record_event(kind, outcome, detail);
    }

    /// Where the policy is read from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// Reloads the policy file. An invalid policy is refused and the old
    /// one stays in force.
    pub fn reload(&self) -> Result<(), GuardError> {
        let r = match &self.source {
            PolicySource::File(p) => Policy::load(p),
            PolicySource::OpenDev => Ok(Policy::open_dev()),
        };
        match r {
            Ok(p) => {
                *self.policy.write_locked() = Arc::new(p);
                self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                self.event(EventKind::PolicyReload, Outcome::Ok, json!({}));
                Ok(())
            }
            Err(e) => {
                self.event(
                    EventKind::PolicyReload,
                    Outcome::Refused,
                    json!({"reason": e.to_string()}),
                );
                Err(e.into())
            }
        }
    }

    /// What the policy allows `c` to do with `action` (break-glass grants are
    /// not consulted: see the per-item checks).
    pub fn authorize(&self, c: &Identity, action: &Action<'_>) -> Result<Grant, Denied> {
        self.policy().authorize(c, action)
    }

    /// The policy principal `c` is recognised as; empty if none.
    pub fn principal_name(&self, c: &Identity) -> String {
        self.policy().principal_name(c).unwrap_or_default()
    }

    /// Whether the caller could use any data key at all: a principal with
    /// the app role, or an unexpired break-glass grant.
    pub fn may_use_data_keys(&self, c: &Identity) -> bool {
        self.policy().has_app_role(c) || self.has_grant(c, None)
    }

    /// Whether `c` may make MACs at all (the mac role, or a break-glass
    /// grant): callers with neither are refused before any work.
    pub fn may_use_macs(&self, c: &Identity) -> bool {
        self.policy().has_role(c, crate::policy::Role::Mac) || self.has_grant(c, None)
    }

    /// The per-item check for MAC operations: the policy's mac role on the
    /// key, or else an unexpired break-glass grant for it (`Ok(true)`).
    pub fn mac_check(&self, c: &Identity, key: &str) -> Result<bool, Denied> {
        match self.policy().authorize(c, &Action::Mac { key }) {
            Ok(_) => Ok(false),
            Err(_) if self.has_grant(c, Some(key)) => Ok(true),
            Err(denied) => Err(denied),
        }
    }

    /// An unexpired break-glass grant of `c` (for `key`, or for any).
    fn has_grant(&self, c: &Identity, key: Option<&str>) -> bool {
        let now = self.now();
        self.break_glass
            .locked()
            .iter()
            .any(|g| g.uid == c.uid && g.expires > now && key.is_none_or(|k| g.key == k))
    }

    /// The per-item check for data-key operations: the policy, or else an
    /// unexpired break-glass grant (reported as `Ok(true)`).
    pub fn data_key_check(
        &self,
        c: &Identity,
        key: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<bool, Denied> {
        match self
            .policy()
            .authorize(c, &Action::DataKey { key, context })
        {
            Ok(_) => Ok(false),
            Err(_) if self.has_grant(c, Some(key)) => Ok(true),
            Err(denied) => Err(denied),
        }
    }

    /// Grants the caller emergency app access to `key`, where the policy
    /// permits it.
    pub fn break_glass(
        &self,
        c: &Identity,
        key: &str,
        reason: &str,
        duration: Duration,
    ) -> Result<BreakGlassGrant, BreakGlassError> {
        // Limits first (cheap, bounded), then the policy.
        validate::key_name("name", key).map_err(BreakGlassError::Invalid)?;
        validate::reason("reason", reason).map_err(BreakGlassError::Invalid)?;
        if duration.is_zero() || duration > MAX_BREAK_GLASS {
            return Err(BreakGlassError::Invalid(CoreError::invalid(
                "duration",
                "must be between 1 second and 24 hours",
            )));
        }
        let grant = self
            .authorize(c, &Action::BreakGlass { key })
            .map_err(BreakGlassError::Denied)?;
        let now = self.now();
        let g = BreakGlassGrant {
            uid: c.uid,
            principal: grant.principal,
            key: key.to_string(),
            reason: reason.to_string(),
            granted: now,
            expires: now + duration,
        };
        let mut grants = self.break_glass.locked();
        grants.retain(|x| x.expires > now);
        grants.push(g.clone());
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.event(
            EventKind::BreakGlass,
            Outcome::Granted,
            json!({
                "ALERT": "BREAK-GLASS ACCESS GRANTED",
                "uid": g.uid, "principal": g.principal, "key": g.key,
                "reason": g.reason, "expires": secs(g.expires),
            }),
        );
        Ok(g)
    }

    /// Changes whenever what callers may do can have changed: the policy
    /// was reloaded, a grant was made, or one expired (the count of
    /// unexpired grants).
    pub fn access_epoch(&self) -> (u64, usize) {
        let grants = self.active_break_glass().len();
        (
            self.epoch.load(std::sync::atomic::Ordering::Acquire),
            grants,
        )
    }

    /// Unexpired break-glass grants.
    pub fn active_break_glass(&self) -> Vec<BreakGlassGrant> {
        let now = self.now();
        let mut grants = self.break_glass.locked();
        grants.retain(|g| g.expires > now);
        grants.clone()
    }
}

/// Why a break-glass request was refused.
#[derive(Debug)]
pub enum BreakGlassError {
    /// A field is over its limits or malformed.
    Invalid(CoreError),
    /// The policy grants no break-glass for this key.
    Denied(Denied),
}

/// The common fields of a request's audit entry.
pub fn entry(c: &Identity, principal: &str, role: &str, op: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!("request"));
    m.insert(
        "caller".into(),
        json!({"uid": c.uid, "gid": c.gid, "pid": c.pid, "exe": c.exe}),
    );
    m.insert("principal".into(), json!(principal));
    m.insert("role".into(), json!(role));
    m.insert("op".into(), json!(op));
    m
}

/// A break-glass grant as JSON, its times in Unix seconds (what the
/// BreakGlass answer and Status report).
pub fn break_glass_json(g: &BreakGlassGrant) -> Value {
    json!({
        "uid": g.uid, "principal": g.principal, "key": g.key, "reason": g.reason,
        "granted_at": secs(g.granted), "expires_at": secs(g.expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditConfig;
    use crate::clock::ManualClock;

    const POLICY: &str = r#"
[[principal]]
name = "ops"
uids = [4321]
roles = ["admin"]
break_glass = true
break_glass_keys = ["patients"]
"#;

    #[test]
    fn break_glass_grant_expires_with_the_clock() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).expect("write the policy");
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600");
        let audit = Audit::open(AuditConfig {
            file: dir.path().join("audit.log"),
            checkpoint_every: 1000,
            max_file_bytes: 1 << 20,
            forward: None,
            node: None,
        })
        .expect("open the audit log");
        let clock = Arc::new(ManualClock::at(1_700_000_000));
        let guard = Guard::new(PolicySource::File(policy), audit, false, clock.clone())
            .expect("the policy loads");
        let ops = Identity {
            uid: 4321,
            gid: 4321,
            pid: 1,
            groups: vec![4321],
            exe: "/usr/bin/keywarden".into(),
        };
        let ctx = BTreeMap::new();
        // An admin is not an app: no data keys without a grant.
        assert!(guard.data_key_check(&ops, "patients", &ctx).is_err());
        assert!(!guard.may_use_data_keys(&ops));

        let g = guard
            .break_glass(&ops, "patients", "incident 42", Duration::from_secs(60))
            .expect("the policy allows break-glass on patients");
        assert_eq!(secs(g.granted), 1_700_000_000);
        assert_eq!(secs(g.expires), 1_700_000_060);
        assert_eq!(
            guard.data_key_check(&ops, "patients", &ctx).ok(),
            Some(true)
        );
        assert!(guard.data_key_check(&ops, "other", &ctx).is_err());
        assert!(guard.may_use_data_keys(&ops));
        let (epoch, active) = guard.access_epoch();
        assert_eq!(active, 1);

        clock.advance(Duration::from_secs(59));
        assert_eq!(
            guard.data_key_check(&ops, "patients", &ctx).ok(),
            Some(true)
        );
        assert_eq!(guard.active_break_glass().len(), 1);

        // At its end the grant is gone, without anyone sleeping.
        clock.advance(Duration::from_secs(1));
        assert!(guard.data_key_check(&ops, "patients", &ctx).is_err());
        assert!(!guard.may_use_data_keys(&ops));
        assert!(guard.active_break_glass().is_empty());
        assert_ne!(guard.access_epoch(), (epoch, active));
    }
}
