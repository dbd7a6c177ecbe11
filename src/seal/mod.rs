//! The seal: an explicit state machine (uninitialised → sealed → unsealed)
//! over split knowledge. The HSM's user PIN is derived from a 256-bit
//! unseal key that exists only as Shamir shares held by custodians; a quorum
//! of them reopens the token. See `docs/UNSEAL_CEREMONY.md`.

pub mod keys;
pub mod shamir;
pub mod share;
pub mod store;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

use serde_json::json;
use zeroize::Zeroizing;

use crate::audit::{event::Pending, AuditSink, Event, EventKind, NullSink, Outcome};
use crate::hsm::{Hsm, HsmError};
use crate::secret::Pin;
use keys::UnsealKey;
use shamir::ShareBytes;
use store::{Keyring, SealFile, SealStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Uninitialized,
    Sealed,
    Unsealed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Uninitialized => "uninitialized",
            Phase::Sealed => "sealed",
            Phase::Unsealed => "unsealed",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("the daemon is not initialised: run `keywarden operator init`")]
    NotInitialized,
    #[error("the daemon is already initialised (share set {set_id})")]
    AlreadyInitialized { set_id: String },
    #[error("the daemon is sealed: {received} of {threshold} unseal shares received; custodians submit theirs with `keywarden operator unseal`")]
    Sealed { received: usize, threshold: u8 },
    #[error("the daemon is already unsealed")]
    AlreadyUnsealed,
    #[error("{field}: {reason}")]
    InvalidParameter { field: &'static str, reason: String },
    #[error("share: {0}")]
    BadShare(share::ShareError),
    #[error(
        "share: belongs to share set {got}, but this daemon's set is {want}; progress unchanged"
    )]
    WrongSet { got: String, want: String },
    #[error("share: says threshold {got}, but set {set_id} needs {want}; progress unchanged")]
    WrongThreshold { got: u8, want: u8, set_id: String },
    #[error("share: share {index} was already submitted; progress unchanged ({received} of {threshold})")]
    Duplicate {
        index: u8,
        received: usize,
        threshold: u8,
    },
    #[error("share: the submitted shares do not reconstruct the unseal key; progress was reset, submit the shares again")]
    ReconstructionFailed,
    #[error("{field}: the token refused this PIN")]
    PinRejected { field: &'static str },
    #[error("init was not completed: the daemon restarted before the first unseal, so the provisioning PINs it held are gone; the token still has its provisioning PINs: run `keywarden operator init` again")]
    InitIncomplete,
    #[error("no rekey is in progress")]
    NoRekey,
    #[error("a rekey is already in progress (id {id}); cancel it first")]
    RekeyInProgress { id: String },
    #[error("rekey {id} is {phase}: {hint}")]
    WrongRekeyPhase {
        id: String,
        phase: &'static str,
        hint: &'static str,
    },
    #[error("HSM: {0}")]
    Hsm(HsmError),
    #[error("seal storage: {0}")]
    Storage(#[from] store::StoreError),
    /// The OS random generator failed.
    #[error("OS random generator: {0}")]
    Random(String),
    /// Splitting or combining the unseal key failed.
    #[error("Shamir: {0}")]
    Shamir(String),
    /// Encrypting a share to a custodian's age key failed.
    #[error("age encryption: {0}")]
    Age(String),
    /// An impossible state (a bug).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The seal metadata was edited, deleted or replaced.
    #[error("seal metadata tampering: {0}")]
    Tampered(String),
}

pub type SealResult<T> = Result<T, SealError>;

/// How a key is to be split: N shares, threshold M, optional age
/// recipients and custodian labels (none, or one per share each).
#[derive(Debug, Clone, Copy)]
pub struct ShareSpec<'a> {
    pub shares: u32,
    pub threshold: u32,
    pub recipients: &'a [String],
    pub labels: &'a [String],
}

/// Parameters of the seal.
#[derive(Debug, Clone)]
pub struct SealConfig {
    /// An unseal (or rekey) in progress expires after this long.
    pub ceremony_timeout: Duration,
    /// Threshold 1 is allowed (dev mode only).
    pub allow_single_share: bool,
}

/// A share handed to a custodian: the share line, or an ASCII-armored age
/// file that only the custodian's identity opens.
/// The new share set a rekey issues once the current shares reach their
/// threshold.
pub struct NewShareSet {
    pub set_id: String,
    pub shares: Vec<IssuedShare>,
}

pub struct IssuedShare {
    pub label: String,
    pub share: Zeroizing<String>,
    pub encrypted: bool,
}

/// Shares being collected toward a threshold.
struct Progress {
    set_id: [u8; 4],
    threshold: u8,
    /// When the first share came, on the seal's monotonic clock.
    started: Duration,
    shares: Vec<ShareBytes>,
}

impl Progress {
    /// Checks a parsed share against this progress (set, threshold,
    /// duplicate) and adds it; every refusal and acceptance is an audit
    /// event (`event`) naming the rekey. Returns (received, threshold).
    fn accept(
        &mut self,
        parsed: share::Share,
        event: EventKind,
        rekey_id: &str,
        notes: &Pending,
    ) -> SealResult<(usize, u8)> {
        let set_id = hex::encode(self.set_id);
        let refuse = |reason: &str| {
            notes.push(Event::new(
                event,
                Outcome::Refused,
                json!({"rekey_id": rekey_id, "reason": reason}),
            ));
        };
        if parsed.set_id != self.set_id {
            refuse("other share set");
            return Err(SealError::WrongSet {
                got: hex::encode(parsed.set_id),
                want: set_id,
            });
        }
        if parsed.threshold != self.threshold {
            refuse("threshold mismatch");
            return Err(SealError::WrongThreshold {
                got: parsed.threshold,
                want: self.threshold,
                set_id,
            });
        }
        if self.shares.iter().any(|s| s.index == parsed.bytes.index) {
            refuse("duplicate");
            return Err(SealError::Duplicate {
                index: parsed.bytes.index,
                received: self.shares.len(),
                threshold: self.threshold,
            });
        }
        self.shares.push(parsed.bytes);
        let received = self.shares.len();
        notes.push(Event::new(
            event,
            Outcome::Accepted,
            json!({"rekey_id": rekey_id, "received": received, "threshold": self.threshold}),
        ));
        Ok((received, self.threshold))
    }

    fn new(set_id: [u8; 4], threshold: u8, started: Duration) -> Self {
        Progress {
            started,
            set_id,
            threshold,
            shares: Vec::new(),
        }
    }
}

struct RekeyPlan {
    shares: u8,
    threshold: u8,
    recipients: Vec<age::x25519::Recipient>,
    labels: Vec<String>,
}

enum Rekey {
    /// Waiting for a quorum of the current shares.
    CollectingOld {
        id: String,
        plan: RekeyPlan,
        progress: Progress,
    },
    /// New shares were issued; waiting for a quorum of them back.
    Verifying {
        id: String,
        new_key: UnsealKey,
        new_set: [u8; 4],
        shares: u8,
        progress: Progress,
        /// The current PINs, derived when the old quorum was reached; needed
        /// to change them at commit.
        old_user: Pin,
        old_so: Pin,
    },
}

impl Rekey {
    fn id(&self) -> &str {
        match self {
            Rekey::CollectingOld { id, .. } | Rekey::Verifying { id, .. } => id,
        }
    }

    fn started(&self) -> Duration {
        match self {
            Rekey::CollectingOld { progress, .. } | Rekey::Verifying { progress, .. } => {
                progress.started
            }
        }
    }
}

struct OldPins {
    user: Pin,
    so: Pin,
}

struct InitPins {
    user: Pin,
    so: Pin,
}

struct Inner {
    /// The provisioning PINs between init and the first unseal.
    init_pins: Option<InitPins>,
    current: Option<SealFile>,
    /// A rekey whose commit was interrupted: the token's PINs may be either
    /// set's; shares of either set are accepted and the one that logs in wins.
    pending: Option<SealFile>,
    progress: Option<Progress>,
    keyring: Option<Keyring>,
    rekey: Option<Rekey>,
    /// Evidence that this daemon was initialised although no seal file is
    /// there (it was deleted): init is refused until it is restored.
    missing: Option<String>,
}

/// Progress reported after a share is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareProgress {
    pub received: usize,
    pub threshold: u8,
    pub set_id: String,
    pub complete: bool,
}

#[derive(Debug, Clone)]
pub struct RekeyStatus {
    pub id: String,
    pub phase: &'static str,
    pub received: usize,
    pub threshold: u8,
    pub new_set_id: String,
}

#[derive(Debug, Clone)]
pub struct SealStatus {
    pub phase: Phase,
    pub set_id: String,
    pub shares: u8,
    pub threshold: u8,
    pub received: usize,
    pub rekey: Option<RekeyStatus>,
    pub interrupted_rekey: bool,
    /// Init issued shares; the first unseal changes the token's PINs.
    pub init_pending: bool,
    /// The seal metadata is missing although the state shows history.
    pub tampered: Option<String>,
}

pub struct Seal {
    store: SealStore,
    config: SealConfig,
    phase: AtomicU8,
    inner: Mutex<Inner>,
    /// Where ceremony events go.
    sink: std::sync::Arc<dyn AuditSink>,
    /// Events noted while `inner` is locked, handed to the sink (which
    /// fdatasyncs) only after it is released: every data-key call takes
    /// `inner` too.
    pending: Pending,
    clock: std::sync::Arc<dyn Clock>,
}

fn random_set_id() -> SealResult<[u8; 4]> {
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(id)
}

fn validate_plan(spec: ShareSpec<'_>, allow_single: bool) -> SealResult<RekeyPlan> {
    let ShareSpec {
        shares,
        threshold,
        recipients,
        labels,
    } = spec;
    let invalid = |field, reason: String| SealError::InvalidParameter { field, reason };
    if !(1..=255).contains(&shares) {
        return Err(invalid(
            "shares",
            format!("{shares} is not between 1 and 255"),
        ));
    }
    if threshold > shares {
        return Err(invalid(
            "threshold",
            format!("{threshold} is larger than the number of shares ({shares})"),
        ));
    }
    if threshold < 2 && !(allow_single && threshold == 1) {
        return Err(invalid(
            "threshold",
            format!("{threshold} is below 2 (a threshold of 1 is allowed only in dev mode)"),
        ));
    }
    if !recipients.is_empty() && recipients.len() != shares as usize {
        return Err(invalid(
            "recipients",
            format!(
                "{} given; give none or one per share ({shares})",
                recipients.len()
            ),
        ));
    }
    if !labels.is_empty() && labels.len() != shares as usize {
        return Err(invalid(
            "labels",
            format!(
                "{} given; give none or one per share ({shares})",
                labels.len()
            ),
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if l.is_empty() || l.len() > 64 || l.chars().any(crate::core::validate::unprintable) {
            return Err(invalid(
                "labels",
                format!("label {} must be 1 to 64 printable characters", i + 1),
            ));
        }
    }
    let mut parsed = Vec::with_capacity(recipients.len());
    for (i, r) in recipients.iter().enumerate() {
        let rec: age::x25519::Recipient = r.trim().parse().map_err(|e| {
            invalid(
                "recipients",
                format!("recipient {} is not an age X25519 public key: {e}", i + 1),
            )
        })?;
        parsed.push(rec);
    }
    Ok(RekeyPlan {
        shares: shares as u8,
        threshold: threshold as u8,
        recipients: parsed,
        labels: labels.to_vec(),
    })
}

fn issue_shares(
    key: &UnsealKey,
    set_id: &[u8; 4],
    plan: &RekeyPlan,
) -> SealResult<Vec<IssuedShare>> {
    let raw = shamir::split(key, plan.threshold, plan.shares).map_err(SealError::Shamir)?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let line = share::format(set_id, plan.threshold, s);
        let label = plan
            .labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("share-{}", s.index));
        let issued = match plan.recipients.get(i) {
            Some(rec) => {
                let armored = age::encrypt_and_armor(rec, &share_text(&line))
                    .map_err(|e| SealError::Age(e.to_string()))?;
                IssuedShare {
                    label,
                    share: Zeroizing::new(armored),
                    encrypted: true,
                }
            }
            None => IssuedShare {
                label,
                share: line,
                encrypted: false,
            },
        };
        out.push(issued);
    }
    Ok(out)
}

impl Seal {
    /// Loads the seal state. The daemon always starts sealed (or
    /// uninitialised).
    pub fn open(store: SealStore, config: SealConfig) -> SealResult<Self> {
        let current = store.load().map_err(SealError::Storage)?;
        let pending = store.load_pending().map_err(SealError::Storage)?;
        let found_interrupted = Pending::default();
        if pending.is_some() {
            tracing::warn!("an interrupted rekey commit was found; shares of either set are accepted at unseal");
            found_interrupted.push(Event::new(
                EventKind::RekeyInterruptedFound,
                Outcome::Warning,
                json!({}),
            ));
        }
        let phase = if current.is_some() || pending.is_some() {
            Phase::Sealed
        } else {
            Phase::Uninitialized
        };
        Ok(Seal {
            store,
            config,
            phase: AtomicU8::new(phase as u8),
            inner: Mutex::new(Inner {
                init_pins: None,
                current,
                pending,
                progress: None,
                keyring: None,
                rekey: None,
                missing: None,
            }),
            sink: std::sync::Arc::new(NullSink),
            pending: found_interrupted,
            clock: std::sync::Arc::new(SystemClock::default()),
        })
    }

    /// Whether init may run now: never initialised, or initialised but not
    /// yet committed by a first unseal. (Checked before any request field,
    /// so an initialised daemon says so rather than complaining of empty
    /// PINs.)
    pub fn check_init_allowed(&self) -> SealResult<()> {
        Self::may_init(&self.inner())
    }

    fn may_init(inner: &Inner) -> SealResult<()> {
        if let Some(what) = &inner.missing {
            return Err(SealError::Tampered(what.clone()));
        }
        if let Some(f) = inner.current.as_ref().or(inner.pending.as_ref()) {
            if !f.pending_init {
                return Err(SealError::AlreadyInitialized {
                    set_id: f.set_id.clone(),
                });
            }
        }
        Ok(())
    }

    /// Reads time from `clock` (unit tests drive it).
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sends ceremony events to `sink` (events noted while opening are
    /// delivered now).
    pub fn with_audit_sink(mut self, sink: std::sync::Arc<dyn AuditSink>) -> Self {
        self.set_audit_sink(sink);
        self
    }

    /// As [`with_audit_sink`](Self::with_audit_sink), in place.
    pub fn set_audit_sink(&mut self, sink: std::sync::Arc<dyn AuditSink>) {
        self.sink = sink;
        self.pending.flush_all(self.sink.as_ref());
    }

    /// As [`with_clock`](Self::with_clock), in place.
    pub fn set_clock(&mut self, clock: std::sync::Arc<dyn Clock>) {
        self.clock = clock;
    }

    fn note(&self, kind: EventKind, outcome: Outcome, detail: serde_json::Value) {
        self.pending.push(Event::new(kind, outcome, detail));
    }

    /// Hands queued events to the sink. Called by every public method
    /// after its `inner` guard is dropped.
    fn flush(&self) {
        self.pending.flush(self.sink.as_ref());
    }

    /// Runs `f` (which may lock `inner`), then delivers its events.
    fn audited<T>(&self, f: impl FnOnce() -> T) -> T {
        let r = f();
        self.flush();
        r
    }

    /// Tells the seal that the state directory shows this daemon was
    /// initialised (`evidence` says how, e.g. the registry's generation).
    /// With no seal file that is tampering, not a fresh install: init would
    /// spend token login attempts on PINs that changed long ago.
    pub fn expect_initialized(&self, evidence: &str) {
        self.audited(|| -> () {
            let mut inner = self.inner();
            if inner.current.is_none() && inner.pending.is_none() {
                let what = format!(
                    "seal.json is missing although {evidence}: it was deleted; restore it from a backup (init is refused)"
                );
                tracing::error!("{what}");
                self.note(EventKind::SealTampering, Outcome::Detected, json!({ "what": what }));
                inner.missing = Some(what);
            }
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            2 => Phase::Unsealed,
            1 => Phase::Sealed,
            _ => Phase::Uninitialized,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// Ok when key operations may run; otherwise the error to return.
    pub fn require_unsealed(&self) -> SealResult<()> {
        self.audited(|| -> SealResult<()> {
            match self.phase() {
                Phase::Unsealed => Ok(()),
                Phase::Uninitialized => Err(SealError::NotInitialized),
                Phase::Sealed => {
                    let inner = self.inner();
                    let threshold = inner
                        .current
                        .as_ref()
                        .or(inner.pending.as_ref())
                        .map(|f| f.threshold)
                        .unwrap_or(0);
                    let received = inner.progress.as_ref().map(|p| p.shares.len()).unwrap_or(0);
                    Err(SealError::Sealed {
                        received,
                        threshold,
                    })
                }
            }
        })
    }

    /// Runs `f` with the keyring; fails when sealed.
    pub fn with_keyring<T>(&self, f: impl FnOnce(&Keyring) -> T) -> SealResult<T> {
        self.audited(|| -> SealResult<T> {
            let inner = self.inner();
            match &inner.keyring {
                Some(k) => Ok(f(k)),
                None => Err(SealError::Sealed {
                    received: 0,
                    threshold: inner.current.as_ref().map(|c| c.threshold).unwrap_or(0),
                }),
            }
        })
    }

    fn expire(&self, inner: &mut Inner) {
        let timeout = self.config.ceremony_timeout;
        if let Some(p) = &inner.progress {
            if self.clock.monotonic().saturating_sub(p.started) > timeout {
                self.note(
                    EventKind::UnsealExpired,
                    Outcome::Reset,
                    json!({"received": p.shares.len(), "timeout_secs": timeout.as_secs()}),
                );
                inner.progress = None;
            }
        }
        if let Some(r) = &inner.rekey {
            if self.clock.monotonic().saturating_sub(r.started()) > timeout {
                self.note(
                    EventKind::RekeyExpired,
                    Outcome::Cancelled,
                    json!({"rekey_id": r.id()}),
                );
                inner.rekey = None;
            }
        }
    }

    pub fn status(&self) -> SealStatus {
        self.audited(|| -> SealStatus {
            let mut inner = self.inner();
            self.expire(&mut inner);
            let file = inner.current.as_ref().or(inner.pending.as_ref());
            let rekey = inner.rekey.as_ref().map(|r| match r {
                Rekey::CollectingOld { id, progress, .. } => RekeyStatus {
                    id: id.clone(),
                    phase: "collecting-old-shares",
                    received: progress.shares.len(),
                    threshold: progress.threshold,
                    new_set_id: String::new(),
                },
                Rekey::Verifying {
                    id,
                    progress,
                    new_set,
                    ..
                } => RekeyStatus {
                    id: id.clone(),
                    phase: "verifying-new-shares",
                    received: progress.shares.len(),
                    threshold: progress.threshold,
                    new_set_id: hex::encode(new_set),
                },
            });
            SealStatus {
                phase: self.phase(),
                set_id: file.map(|f| f.set_id.clone()).unwrap_or_default(),
                shares: file.map(|f| f.shares).unwrap_or(0),
                threshold: file.map(|f| f.threshold).unwrap_or(0),
                received: inner.progress.as_ref().map(|p| p.shares.len()).unwrap_or(0),
                rekey,
                interrupted_rekey: inner.pending.is_some(),
                init_pending: file.is_some_and(|f| f.pending_init),
                tampered: inner.missing.clone(),
            }
        })
    }

    /// The init ceremony: a fresh unseal key, split into shares. The token
    /// keeps its provisioning PINs (checked now, held in memory) until the
    /// first unseal proves that a quorum of the new shares works; only then
    /// are the user and SO PINs changed to PINs derived from the key. Shares
    /// lost on the way (a killed client, a crash) therefore never lock the
    /// token: init can simply run again.
    pub fn init(
        &self,
        hsm: &dyn Hsm,
        spec: ShareSpec<'_>,
        provisioning_user_pin: Pin,
        provisioning_so_pin: Pin,
    ) -> SealResult<Vec<IssuedShare>> {
        self.audited(|| -> SealResult<Vec<IssuedShare>> {
            let mut inner = self.inner();
            Self::may_init(&inner)?;
            let plan = validate_plan(spec, self.config.allow_single_share)?;
            if let Err(e) = hsm.verify_pins(&provisioning_user_pin, &provisioning_so_pin) {
                self.note(
                    EventKind::Init,
                    Outcome::Refused,
                    json!({"reason": e.to_string()}),
                );
                return Err(match e {
                    HsmError::PinIncorrect { role: "user" } => {
                        SealError::PinRejected { field: "user_pin" }
                    }
                    HsmError::PinIncorrect { .. } => SealError::PinRejected { field: "so_pin" },
                    other => SealError::Hsm(other),
                });
            }
            let key = UnsealKey::random().map_err(SealError::Random)?;
            let set_id = random_set_id()?;
            let keyring = Keyring::random().map_err(SealError::Storage)?;
            let mut file = SealFile::new(
                &key,
                set_id,
                plan.shares,
                plan.threshold,
                &keyring,
                self.clock.now_secs(),
            )
            .map_err(SealError::Storage)?;
            file.pending_init = true;
            file.authenticate(&key).map_err(SealError::Storage)?;
            let issued = issue_shares(&key, &set_id, &plan)?;
            self.store.save(&file).map_err(SealError::Storage)?;
            self.note(
                EventKind::Init,
                Outcome::SharesIssued,
                json!({
                    "set_id": file.set_id,
                    "shares": plan.shares,
                    "threshold": plan.threshold,
                    "encrypted_to_recipients": !plan.recipients.is_empty(),
                    "labels": plan.labels,
                }),
            );
            inner.current = Some(file);
            inner.progress = None;
            inner.init_pins = Some(InitPins {
                user: provisioning_user_pin,
                so: provisioning_so_pin,
            });
            self.set_phase(Phase::Sealed);
            Ok(issued)
        })
    }

    /// Submits one share toward unseal. At the threshold: reconstruct,
    /// confirm with the check value, derive the PIN, log in, open the
    /// keyring. Returns the progress; `complete` means unsealed.
    pub fn submit_unseal_share(&self, hsm: &dyn Hsm, text: &str) -> SealResult<ShareProgress> {
        self.audited(|| -> SealResult<ShareProgress> {
            let mut inner = self.inner();
            match self.phase() {
                Phase::Uninitialized => return Err(SealError::NotInitialized),
                Phase::Unsealed => return Err(SealError::AlreadyUnsealed),
                Phase::Sealed => {}
            }
            self.expire(&mut inner);
            let parsed = share::parse(text).map_err(|e| {
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": e.to_string()}),
                );
                SealError::BadShare(e)
            })?;
            let got = hex::encode(parsed.set_id);
            let mut file = [inner.current.as_ref(), inner.pending.as_ref()]
                .into_iter()
                .flatten()
                .find(|f| f.set_id == got)
                .cloned();
            let Some(mut file) = file.take() else {
                let want = inner
                    .current
                    .as_ref()
                    .map(|f| f.set_id.clone())
                    .unwrap_or_default();
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": "other share set", "share_set": got}),
                );
                return Err(SealError::WrongSet { got, want });
            };
            if parsed.threshold != file.threshold {
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": "threshold mismatch", "index": parsed.bytes.index}),
                );
                return Err(SealError::WrongThreshold {
                    got: parsed.threshold,
                    want: file.threshold,
                    set_id: file.set_id.clone(),
                });
            }
            let progress = match &mut inner.progress {
                Some(p) if p.set_id == parsed.set_id => p,
                slot => {
                    if let Some(old) = slot.as_ref() {
                        // Shares of the other set (interrupted rekey) start over.
                        self.note(
                            EventKind::UnsealProgressReset,
                            Outcome::Reset,
                            json!({"received": old.shares.len()}),
                        );
                    }
                    slot.insert(Progress::new(
                        parsed.set_id,
                        file.threshold,
                        self.clock.monotonic(),
                    ))
                }
            };
            if progress
                .shares
                .iter()
                .any(|s| s.index == parsed.bytes.index)
            {
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": "duplicate", "index": parsed.bytes.index}),
                );
                return Err(SealError::Duplicate {
                    index: parsed.bytes.index,
                    received: progress.shares.len(),
                    threshold: progress.threshold,
                });
            }
            progress.shares.push(parsed.bytes);
            let received = progress.shares.len();
            let threshold = progress.threshold;
            self.note(
                EventKind::UnsealShare,
                Outcome::Accepted,
                json!({"set_id": file.set_id, "received": received, "threshold": threshold}),
            );
            if received < threshold as usize {
                return Ok(ShareProgress {
                    received,
                    threshold,
                    set_id: file.set_id,
                    complete: false,
                });
            }

            // Threshold reached: whatever happens next, the shares are dropped.
            let Some(progress) = inner.progress.take() else {
                return Err(SealError::Internal("progress vanished"));
            };
            let set_id = progress.set_id;
            let refs: Vec<&ShareBytes> = progress.shares.iter().collect();
            let key = shamir::combine(&refs).map_err(SealError::Shamir)?;
            drop(refs);
            drop(progress);
            let check = file.check().map_err(SealError::Storage)?;
            if !key.matches(&set_id, &check) {
                self.note(
                    EventKind::Unseal,
                    Outcome::Failed,
                    json!({"reason": "check value mismatch", "set_id": file.set_id}),
                );
                return Err(SealError::ReconstructionFailed);
            }
            // The key is confirmed: now the metadata around it must verify
            // before anything in it (pending_init above all) is acted on.
            if let Err(why) = file.verify(&key) {
                self.note(
                    EventKind::SealTampering,
                    Outcome::Detected,
                    json!({"what": why.to_string(), "set_id": file.set_id}),
                );
                return Err(SealError::Tampered(why.to_string()));
            }
            let keyring = file.open_keyring(&key).map_err(SealError::Storage)?;
            if file.pending_init {
                // The first quorum proved the shares work: now, and only now,
                // the provisioning PINs give way to the derived ones.
                let Some(pins) = inner.init_pins.take() else {
                    self.note(
                        EventKind::InitCommit,
                        Outcome::Failed,
                        json!({"reason": "provisioning PINs gone (restart)"}),
                    );
                    return Err(SealError::InitIncomplete);
                };
                if let Err(e) = hsm.change_pins(
                    &pins.user,
                    &key.user_pin(&set_id),
                    &pins.so,
                    &key.so_pin(&set_id),
                ) {
                    self.note(
                        EventKind::InitCommit,
                        Outcome::Failed,
                        json!({"reason": e.to_string()}),
                    );
                    inner.init_pins = Some(pins);
                    return Err(SealError::Hsm(e));
                }
                drop(pins);
                file.pending_init = false;
                file.authenticate(&key).map_err(SealError::Storage)?;
                self.store.save(&file).map_err(SealError::Storage)?;
                inner.current = Some(file.clone());
                self.note(
                    EventKind::InitCommit,
                    Outcome::Ok,
                    json!({"set_id": file.set_id}),
                );
            }
            if let Err(e) = hsm.login(&key.user_pin(&set_id)) {
                self.note(
                    EventKind::Unseal,
                    Outcome::Failed,
                    json!({"reason": e.to_string()}),
                );
                return Err(SealError::Hsm(e));
            }
            drop(key);
            // An interrupted rekey is settled by whichever set logged in.
            let is_pending = inner.pending.as_ref().map(|p| p.set_id == file.set_id) == Some(true);
            if is_pending {
                self.store.promote_pending().map_err(SealError::Storage)?;
                inner.current = inner.pending.take();
            } else if inner.pending.is_some() {
                self.store.discard_pending().map_err(SealError::Storage)?;
                inner.pending = None;
            }
            inner.keyring = Some(keyring);
            self.set_phase(Phase::Unsealed);
            self.note(
                EventKind::Unseal,
                Outcome::Ok,
                json!({"set_id": file.set_id}),
            );
            Ok(ShareProgress {
                received,
                threshold,
                set_id: file.set_id,
                complete: true,
            })
        })
    }

    /// Forgets the shares received so far.
    pub fn reset_unseal(&self) -> SealResult<usize> {
        self.audited(|| -> SealResult<usize> {
            let mut inner = self.inner();
            let n = inner.progress.take().map(|p| p.shares.len()).unwrap_or(0);
            self.note(EventKind::UnsealReset, Outcome::Ok, json!({"discarded": n}));
            Ok(n)
        })
    }

    /// Seals: refuse key operations, log out, drop session copies, wipe the
    /// keyring and any ceremony in progress.
    pub fn seal(&self, hsm: &dyn Hsm) -> SealResult<()> {
        self.audited(|| -> SealResult<()> {
            let mut inner = self.inner();
            match self.phase() {
                Phase::Uninitialized => return Err(SealError::NotInitialized),
                Phase::Sealed => {
                    inner.progress = None;
                    return Ok(());
                }
                Phase::Unsealed => {}
            }
            self.set_phase(Phase::Sealed);
            inner.keyring = None;
            inner.rekey = None;
            inner.progress = None;
            hsm.logout();
            self.note(EventKind::Seal, Outcome::Ok, json!({}));
            Ok(())
        })
    }

    /// Starts a rekey; it needs a quorum of the current shares.
    pub fn rekey_start(&self, spec: ShareSpec<'_>) -> SealResult<(String, u8)> {
        self.audited(|| -> SealResult<(String, u8)> {
            // Before taking `inner`: require_unsealed takes it too (it
            // used to be called with `inner` held, which deadlocked a
            // rekey started on a sealed daemon).
            if self.phase() != Phase::Unsealed {
                return Err(self
                    .require_unsealed()
                    .err()
                    .unwrap_or(SealError::AlreadyUnsealed));
            }
            let mut inner = self.inner();
            self.expire(&mut inner);
            if let Some(r) = &inner.rekey {
                return Err(SealError::RekeyInProgress {
                    id: r.id().to_string(),
                });
            }
            let plan = validate_plan(spec, self.config.allow_single_share)?;
            let Some(current) = inner.current.as_ref() else {
                return Err(SealError::NotInitialized);
            };
            let set_id = current.set_id().map_err(SealError::Storage)?;
            let old_threshold = current.threshold;
            let id = hex::encode(random_set_id()?);
            self.note(
                EventKind::RekeyStart,
                Outcome::Ok,
                json!({"rekey_id": id, "shares": plan.shares, "threshold": plan.threshold}),
            );
            inner.rekey = Some(Rekey::CollectingOld {
                id: id.clone(),
                plan,
                progress: Progress::new(set_id, old_threshold, self.clock.monotonic()),
            });
            Ok((id, old_threshold))
        })
    }

    pub fn rekey_cancel(&self) -> SealResult<()> {
        self.audited(|| -> SealResult<()> {
            let mut inner = self.inner();
            match inner.rekey.take() {
                Some(r) => {
                    self.note(
                        EventKind::RekeyCancel,
                        Outcome::Ok,
                        json!({"rekey_id": r.id()}),
                    );
                    Ok(())
                }
                None => Err(SealError::NoRekey),
            }
        })
    }

    /// Submits a current share to a rekey. At the old threshold the new
    /// shares are issued (returned) and the rekey waits for verification.
    pub fn rekey_submit(&self, text: &str) -> SealResult<(ShareProgress, Option<NewShareSet>)> {
        self.audited(|| -> SealResult<(ShareProgress, Option<NewShareSet>)> {
            let mut inner = self.inner();
            self.expire(&mut inner);
            let current = inner.current.clone().ok_or(SealError::NotInitialized)?;
            let (id, progress) = match &mut inner.rekey {
                None => return Err(SealError::NoRekey),
                Some(Rekey::Verifying { id, .. }) => {
                    return Err(SealError::WrongRekeyPhase {
                        id: id.clone(),
                        phase: "verifying new shares",
                        hint: "submit the NEW shares with `keywarden operator rekey --verify`",
                    })
                }
                Some(Rekey::CollectingOld { id, progress, .. }) => (id.clone(), progress),
            };
            let parsed = share::parse(text).map_err(SealError::BadShare)?;
            let (received, threshold) = progress.accept(parsed, EventKind::RekeyShare, &id, &self.pending)?;
            if received < threshold as usize {
                return Ok((
                    ShareProgress {
                        received,
                        threshold,
                        set_id: current.set_id,
                        complete: false,
                    },
                    None,
                ));
            }
            let Some(Rekey::CollectingOld { plan, progress, .. }) = inner.rekey.take() else {
                return Err(SealError::NoRekey);
            };
            let refs: Vec<&ShareBytes> = progress.shares.iter().collect();
            let old_key = shamir::combine(&refs).map_err(SealError::Shamir)?;
            drop(refs);
            let check = current.check().map_err(SealError::Storage)?;
            if !old_key.matches(&progress.set_id, &check) {
                self.note(EventKind::RekeyShare, Outcome::Failed,
                    json!({"rekey_id": id, "reason": "check value mismatch"}),
                );
                // Progress resets; the rekey itself stays open.
                inner.rekey = Some(Rekey::CollectingOld {
                    id,
                    progress: Progress::new(progress.set_id, progress.threshold, self.clock.monotonic()),
                    plan,
                });
                return Err(SealError::ReconstructionFailed);
            }
            let old_user = old_key.user_pin(&progress.set_id);
            let old_so = old_key.so_pin(&progress.set_id);
            drop(old_key);
            let new_key = UnsealKey::random().map_err(SealError::Random)?;
            let new_set = random_set_id()?;
            let issued = issue_shares(&new_key, &new_set, &plan)?;
            self.note(EventKind::RekeySharesIssued, Outcome::Ok,
                json!({"rekey_id": id, "new_set_id": hex::encode(new_set), "shares": plan.shares, "threshold": plan.threshold}),
            );
            inner.rekey = Some(Rekey::Verifying {
                id,
                new_key,
                new_set,
                shares: plan.shares,
                progress: Progress::new(new_set, plan.threshold, self.clock.monotonic()),
                old_user,
                old_so,
            });
            Ok((
                ShareProgress {
                    received,
                    threshold,
                    set_id: current.set_id,
                    complete: true,
                },
                Some(NewShareSet {
                    set_id: hex::encode(new_set),
                    shares: issued,
                }),
            ))
        })
    }

    /// Submits a NEW share back for verification. At the new threshold the
    /// rekey commits: the token PINs change and the old shares die.
    pub fn rekey_verify(&self, hsm: &dyn Hsm, text: &str) -> SealResult<ShareProgress> {
        self.audited(|| -> SealResult<ShareProgress> {
            let mut inner = self.inner();
            self.expire(&mut inner);
            let (id, new_set, progress) = match &mut inner.rekey {
                None => return Err(SealError::NoRekey),
                Some(Rekey::CollectingOld { id, .. }) => {
                    return Err(SealError::WrongRekeyPhase {
                        id: id.clone(),
                        phase: "collecting current shares",
                        hint: "submit the CURRENT shares with `keywarden operator rekey --submit`",
                    })
                }
                Some(Rekey::Verifying {
                    id,
                    new_set,
                    progress,
                    ..
                }) => (id.clone(), *new_set, progress),
            };
            let parsed = share::parse(text).map_err(SealError::BadShare)?;
            let (received, threshold) =
                progress.accept(parsed, EventKind::RekeyVerifyShare, &id, &self.pending)?;
            if received < threshold as usize {
                return Ok(ShareProgress {
                    received,
                    threshold,
                    set_id: hex::encode(new_set),
                    complete: false,
                });
            }
            let Some(Rekey::Verifying {
                new_key,
                shares,
                progress,
                old_user,
                old_so,
                ..
            }) = inner.rekey.take()
            else {
                return Err(SealError::NoRekey);
            };
            let refs: Vec<&ShareBytes> = progress.shares.iter().collect();
            let rebuilt = shamir::combine(&refs).map_err(SealError::Shamir)?;
            drop(refs);
            if !rebuilt.matches(&new_set, &new_key.check_value(&new_set)) {
                self.note(
                    EventKind::RekeyVerify,
                    Outcome::Failed,
                    json!({"rekey_id": id}),
                );
                inner.rekey = Some(Rekey::Verifying {
                    id,
                    new_key,
                    new_set,
                    shares,
                    progress: Progress::new(new_set, threshold, self.clock.monotonic()),
                    old_user,
                    old_so,
                });
                return Err(SealError::ReconstructionFailed);
            }
            drop(rebuilt);
            let old = OldPins {
                user: old_user,
                so: old_so,
            };
            self.commit_rekey(
                hsm, &mut inner, &id, &old, &new_key, new_set, shares, threshold,
            )?;
            Ok(ShareProgress {
                received,
                threshold,
                set_id: hex::encode(new_set),
                complete: true,
            })
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_rekey(
        &self,
        hsm: &dyn Hsm,
        inner: &mut Inner,
        id: &str,
        old: &OldPins,
        new_key: &UnsealKey,
        new_set: [u8; 4],
        shares: u8,
        threshold: u8,
    ) -> SealResult<()> {
        let current = inner.current.clone().ok_or(SealError::NotInitialized)?;
        let keyring = inner.keyring.as_ref().ok_or(SealError::Sealed {
            received: 0,
            threshold: current.threshold,
        })?;
        let file = SealFile::new(
            new_key,
            new_set,
            shares,
            threshold,
            keyring,
            self.clock.now_secs(),
        )
        .map_err(SealError::Storage)?;
        self.store.save_pending(&file).map_err(SealError::Storage)?;
        hsm.logout();
        let changed = hsm.change_pins(
            &old.user,
            &new_key.user_pin(&new_set),
            &old.so,
            &new_key.so_pin(&new_set),
        );
        if let Err(e) = changed {
            let _ = self.store.discard_pending();
            let relogin = hsm.login(&old.user);
            self.note(
                EventKind::RekeyCommit,
                Outcome::Failed,
                json!({"rekey_id": id, "reason": e.to_string()}),
            );
            if relogin.is_err() {
                self.set_phase(Phase::Sealed);
                inner.keyring = None;
            }
            return Err(SealError::Hsm(e));
        }
        self.store.promote_pending().map_err(SealError::Storage)?;
        inner.current = Some(file);
        if let Err(e) = hsm.login(&new_key.user_pin(&new_set)) {
            self.set_phase(Phase::Sealed);
            inner.keyring = None;
            self.note(
                EventKind::RekeyCommit,
                Outcome::CommittedButSealed,
                json!({"rekey_id": id, "reason": e.to_string()}),
            );
            return Err(SealError::Hsm(e));
        }
        self.note(EventKind::RekeyCommit, Outcome::Ok,
            json!({"rekey_id": id, "new_set_id": hex::encode(new_set), "old_set_id": current.set_id}),
        );
        Ok(())
    }
}

/// A share line and its newline in zeroizing memory, for age to encrypt.
fn share_text(line: &str) -> Zeroizing<Vec<u8>> {
    let mut text = Zeroizing::new(Vec::with_capacity(line.len() + 1));
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    text
}

#[cfg(test)]
mod tests;
