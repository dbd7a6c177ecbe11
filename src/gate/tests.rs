//! The gate driven by a fake front end over the in-memory HSM, a real
//! audit log file in a temporary directory and a real policy file: what a
//! new front end gets without writing anything but translation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::*;
use crate::audit::{Audit, AuditConfig, MemoryLog};
use crate::clock::ManualClock;
use crate::core::registry::Registry;
use crate::core::{GenerateRequest, LifecycleConfig};
use crate::guard::PolicySource;
use crate::hsm::memory::MemoryHsm;
use crate::hsm::KeyKind;
use crate::limits::LimitsConfig;
use crate::seal::{store::SealStore, Seal, SealConfig, ShareSpec};
use crate::secret::Pin;

const USER: &str = "gate-user-pin";
const SO: &str = "gate-so-pin";
const APP: u32 = 1000;
const ADMIN: u32 = 1001;
const STRANGER: u32 = 2000;
const POLICY: &str = r#"
[[principal]]
name = "ehr"
uids = [1000]
roles = ["app"]
keys = ["patients"]

[[principal]]
name = "ops"
uids = [1001]
roles = ["admin", "custodian"]
"#;

/// A front end that speaks nothing: it only builds callers and
/// translates its one request shape to a [`DataCall`].
struct FakeFront;

impl FakeFront {
    const FRONT: Front = Front::named("fake");

    fn caller(uid: u32) -> Caller {
        Caller::new(
            Identity {
                uid,
                gid: uid,
                pid: 1,
                groups: vec![uid],
                exe: "/usr/bin/fake-front".into(),
            },
            Self::FRONT,
        )
    }

    /// "Give me a data key under `key`", translated.
    async fn generate(
        gate: &Gate,
        uid: u32,
        key: &str,
    ) -> Result<Vec<CoreResult<crate::core::GeneratedKey>>, GateError> {
        let requests = vec![GenerateRequest {
            key: key.to_string(),
            context: HashMap::from([("record".to_string(), "42".to_string())]),
        }];
        let call = DataCall {
            op: "GenerateDataKey",
            usage: Use::DataKeys,
            items: 1,
            details: |_: &Keywarden| vec![Map::new()],
            requests,
            run: |c: &Keywarden, reqs, guard: &Guard, id: &Identity| {
                let check = move |key: &str, ctx: &BTreeMap<String, String>| {
                    guard.data_key_check(id, key, ctx)
                };
                c.data().generate_data_keys(reqs, true, &check)
            },
        };
        gate.data_path(&Self::caller(uid), call).await
    }
}

use crate::core::CoreResult;

/// The refusal of a call that must not have been served (no `Debug` on a
/// generated key: it holds plaintext).
fn refused<T>(r: Result<T, GateError>) -> GateError {
    match r {
        Err(e) => e,
        Ok(_) => panic!("served"),
    }
}

struct Rig {
    dir: tempfile::TempDir,
    gate: Gate,
    metrics: Arc<Metrics>,
}

fn rig(limits: LimitsConfig) -> Rig {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_800_000_000));
    let hsm = Arc::new(MemoryHsm::new(USER, SO));
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let seal = Seal::open(
        SealStore::new(dir.path()),
        SealConfig {
            ceremony_timeout: Duration::from_secs(900),
            allow_single_share: true,
        },
    )
    .unwrap()
    .with_clock(clock.clone());
    let core = Keywarden::start(hsm, registry, seal)
        .with_clock(clock.clone())
        .with_audit(Arc::new(MemoryLog::default()))
        .with_lifecycle(LifecycleConfig::default());
    let spec = ShareSpec {
        shares: 1,
        threshold: 1,
        recipients: &[],
        labels: &[],
    };
    let shares = core
        .ceremonies()
        .init(
            spec,
            Pin::from_bytes(USER.as_bytes()).unwrap(),
            Pin::from_bytes(SO.as_bytes()).unwrap(),
        )
        .unwrap();
    assert!(
        core.ceremonies()
            .unseal(&shares[0].share, false)
            .unwrap()
            .complete
    );
    core.keys()
        .create_key("patients", "", None, KeyKind::Aes)
        .unwrap();
    let core = Arc::new(core);

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let audit = Audit::open(AuditConfig {
        file: dir.path().join("audit.log"),
        checkpoint_every: 1000,
        max_file_bytes: 1 << 20,
        forward: None,
        node: None,
    })
    .unwrap();
    let guard =
        Arc::new(Guard::new(PolicySource::File(policy), audit, false, clock.clone()).unwrap());
    let metrics = Arc::new(Metrics::new(false));
    let limits = Arc::new(Limits::new(limits, clock).with_metrics(metrics.clone()));
    let workers = Arc::new(workers::Workers::start(core.clone(), 1).unwrap());
    let gate = Gate::new(core, guard, limits, metrics.clone(), workers);
    Rig { dir, gate, metrics }
}

impl Rig {
    /// The request lines of the real audit log, as written.
    fn requests(&self) -> Vec<Map<String, Value>> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Map<String, Value>>(l).ok())
            .filter(|m| m.get("type").and_then(Value::as_str) == Some("request"))
            .collect()
    }

    fn last_request(&self) -> Map<String, Value> {
        self.requests().pop().expect("a request line")
    }

    fn calls(&self, op: &'static str, outcome: &'static str) -> u64 {
        self.metrics.gate_calls("fake", op, outcome)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_the_role_is_refused_audited_and_counted() {
    let rig = rig(LimitsConfig::default());
    let err = refused(FakeFront::generate(&rig.gate, STRANGER, "patients").await);
    assert!(matches!(err, GateError::Denied(_)), "{err}");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("app role"), "{}", err.message());
    let line = rig.last_request();
    assert_eq!(line["op"], "GenerateDataKey");
    assert_eq!(line["outcome"], "denied");
    assert_eq!(line["code"], "PermissionDenied");
    assert_eq!(line["front"], "fake");
    assert_eq!(line["caller"]["uid"], STRANGER);
    assert_eq!(rig.calls("GenerateDataKey", "denied"), 1);
    assert_eq!(rig.calls("GenerateDataKey", "ok"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_call_is_served_only_after_its_line_is_written() {
    let rig = rig(LimitsConfig::default());
    let out = FakeFront::generate(&rig.gate, APP, "patients")
        .await
        .unwrap();
    let generated = out.into_iter().next().unwrap().unwrap();
    assert_eq!(generated.key, "patients");
    assert!(generated.plaintext.is_some());
    let line = rig.last_request();
    assert_eq!(line["op"], "GenerateDataKey");
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["code"], "OK");
    assert_eq!(line["key"], "patients");
    assert_eq!(line["principal"], "ehr");
    assert_eq!(line["role"], "app");
    assert_eq!(line["front"], "fake");
    assert_eq!(rig.calls("GenerateDataKey", "ok"), 1);

    // A key the caller may not use is an item error, audited as such.
    let out = FakeFront::generate(&rig.gate, APP, "no-such-key")
        .await
        .unwrap();
    assert!(out[0].is_err());
    assert_eq!(rig.last_request()["outcome"], "error");
    assert_eq!(rig.calls("GenerateDataKey", "error"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_audit_volume_is_refused_before_any_work() {
    let rig = rig(LimitsConfig {
        audit_bytes_per_second: 1,
        audit_bytes_burst: 1,
        ..LimitsConfig::default()
    });
    // The first call is served and charged; its line overdraws the bucket.
    FakeFront::generate(&rig.gate, APP, "patients")
        .await
        .unwrap();
    let served = rig.requests().len();
    let err = refused(FakeFront::generate(&rig.gate, APP, "patients").await);
    assert!(
        matches!(
            err,
            GateError::Limited {
                limit: Limit::AuditBytes,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(rig.calls("GenerateDataKey", "limited"), 1);
    // The refusal is audited once per interval, as a limited line.
    let lines = rig.requests();
    assert_eq!(lines.len(), served + 1);
    assert_eq!(lines[served]["outcome"], "limited");
    assert_eq!(lines[served]["limit"], "audit_bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrative_calls_reach_the_core_only_with_an_authorized_call() {
    let rig = rig(LimitsConfig::default());
    let app = FakeFront::caller(APP);
    let err = match rig
        .gate
        .authorize(&app, "CreateKey", Action::KeyAdmin)
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("an app may not create keys"),
    };
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(rig.last_request()["outcome"], "denied");

    let admin = FakeFront::caller(ADMIN);
    let call = rig
        .gate
        .authorize(&admin, "CreateKey", Action::KeyAdmin)
        .await
        .unwrap();
    assert_eq!(call.principal(), "ops");
    let res = rig
        .gate
        .run(&call, |c| {
            c.keys().create_key("images", "", None, KeyKind::Aes)
        })
        .await
        .unwrap()
        .map_err(GateError::from);
    let mut extra = Map::new();
    extra.insert("key".into(), Value::from("images"));
    rig.gate.finish(&call, extra, res).await.unwrap();
    let line = rig.last_request();
    assert_eq!(line["op"], "CreateKey");
    assert_eq!(line["key"], "images");
    assert_eq!(line["outcome"], "ok");
    assert_eq!(rig.calls("CreateKey", "ok"), 1);
    assert_eq!(rig.calls("CreateKey", "denied"), 1);

    // Sealed, the core refuses the data path: one line, FAILED_PRECONDITION.
    let seal = rig
        .gate
        .authorize(&admin, "Seal", Action::Seal)
        .await
        .unwrap();
    rig.gate
        .run(&seal, |c| c.ceremonies().seal())
        .await
        .unwrap()
        .unwrap();
    let err = refused(FakeFront::generate(&rig.gate, APP, "patients").await);
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        code::state_of(match &err {
            GateError::Core(e) => e,
            other => panic!("{other}"),
        }),
        Some("sealed")
    );
    assert_eq!(rig.last_request()["code"], "FailedPrecondition");
}
