//! The seal: an explicit state machine (uninitialised → sealed → unsealed)
//! over split knowledge. The HSM's user PIN is derived from a 256-bit
//! unseal key that exists only as Shamir shares held by custodians; a quorum
//! of them reopens the token. See `docs/UNSEAL_CEREMONY.md`.

mod error;
pub mod keys;
pub mod offline;
mod plan;
mod progress;
mod rekey;
pub mod shamir;
pub mod share;
pub mod store;
mod unseal;

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

use crate::sync::Recover;
pub use error::{SealError, SealResult};
use plan::{issue_shares, random_set_id, validate_plan, RekeyPlan};
use progress::Progress;
use rekey::Rekey;

/// Where the seal stands, as Status and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No share set yet: init may run.
    Uninitialized,
    /// Not open for key operations: shares are being collected, or, logged
    /// in, the registry is still loading or the daemon is sealing.
    Sealed,
    /// Open for key operations.
    Unsealed,
}

impl Phase {
    /// The phase's name (`uninitialized`, `sealed`, `unsealed`), as Status
    /// reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Uninitialized => "uninitialized",
            Phase::Sealed => "sealed",
            Phase::Unsealed => "unsealed",
        }
    }
}

/// How a key is to be split: N shares, threshold M, optional age
/// recipients and custodian labels (none, or one per share each).
#[derive(Debug, Clone, Copy)]
pub struct ShareSpec<'a> {
    /// N: how many shares to issue.
    pub shares: u32,
    /// M: how many of them unseal.
    pub threshold: u32,
    /// Custodians' age recipients (`age1...`), one per share: each share is
    /// then encrypted to its custodian. Empty: plain share lines.
    pub recipients: &'a [String],
    /// Custodians' labels, one per share; empty: `share-<index>`.
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

/// The new share set a rekey issues once the current shares reach their
/// threshold.
pub struct NewShareSet {
    /// The new set's id (8 hex digits).
    pub set_id: String,
    /// Its shares, one per custodian.
    pub shares: Vec<IssuedShare>,
}

/// A share handed to a custodian: the share line, or an ASCII-armored age
/// file that only the custodian's identity opens.
pub struct IssuedShare {
    /// The custodian's label (`share-<index>` when none was given).
    pub label: String,
    /// The share line, or the armored age file.
    pub share: Zeroizing<String>,
    /// Whether `share` is an age file.
    pub encrypted: bool,
}

struct OldPins {
    user: Pin,
    so: Pin,
}

struct InitPins {
    user: Pin,
    so: Pin,
}

/// Where the seal stands: one enum, under the seal's one lock. What a state
/// needs exists only in that state: shares being collected only while
/// sealed, the keyring and a rekey only while unsealed.
enum State {
    /// No seal file: init may run.
    Uninitialized,
    /// Shares are collected toward the threshold.
    Sealed {
        progress: Option<Progress>,
        /// The provisioning PINs between init and the first unseal.
        init_pins: Option<InitPins>,
    },
    /// Logged in, with the keyring open.
    Unsealed {
        keyring: Keyring,
        rekey: Option<Rekey>,
        serving: Serving,
    },
}

/// Whether an unsealed daemon serves key operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// Just logged in (unseal or rekey): the owner is loading what it needs
    /// (the registry) and calls [`Seal::open_for_keys`].
    Loading,
    /// Open for business.
    Open,
    /// Sealing or shutting down: the final audit checkpoint is written.
    Closing,
}

impl State {
    fn sealed() -> Self {
        State::Sealed {
            progress: None,
            init_pins: None,
        }
    }
}

struct Inner {
    current: Option<SealFile>,
    /// A rekey whose commit was interrupted: the token's PINs may be either
    /// set's; shares of either set are accepted and the one that logs in wins.
    pending: Option<SealFile>,
    state: State,
    /// Evidence that this daemon was initialised although no seal file is
    /// there (it was deleted): init is refused until it is restored.
    missing: Option<String>,
    /// The backup recipient as a quorum last verified it (under the seal
    /// file's MAC) in this process; kept after a seal (it is public), so
    /// a sealed daemon encrypts backups only to a recipient a quorum vouched
    /// for, never to one edited into `seal.json` while it was sealed.
    verified_recipient: Option<String>,
}

impl Inner {
    /// The threshold of the share set(s) this daemon knows.
    fn threshold(&self) -> u8 {
        self.current
            .as_ref()
            .or(self.pending.as_ref())
            .map(|f| f.threshold)
            .unwrap_or(0)
    }

    /// The error a key operation gets in this state (Ok when open).
    fn refusal(&self) -> Option<SealError> {
        match &self.state {
            State::Uninitialized => Some(SealError::NotInitialized),
            State::Sealed { progress, .. } => Some(SealError::Sealed {
                received: progress.as_ref().map(|p| p.shares.len()).unwrap_or(0),
                threshold: self.threshold(),
            }),
            State::Unsealed {
                serving: Serving::Open,
                ..
            } => None,
            // Loading the registry or sealing: not open for business.
            State::Unsealed { serving, .. } => Some(SealError::NotServing {
                stage: match serving {
                    Serving::Closing => "sealing",
                    _ => "unsealed but still loading its key registry",
                },
            }),
        }
    }

    fn phase(&self) -> Phase {
        match &self.state {
            State::Uninitialized => Phase::Uninitialized,
            State::Unsealed {
                serving: Serving::Open,
                ..
            } => Phase::Unsealed,
            State::Sealed { .. } | State::Unsealed { .. } => Phase::Sealed,
        }
    }

    /// The rekey slot; `None` when sealed (a seal ends any rekey).
    fn rekey(&mut self) -> Option<&mut Option<Rekey>> {
        match &mut self.state {
            State::Unsealed { rekey, .. } => Some(rekey),
            _ => None,
        }
    }
}

/// What a backup sees of the seal while no ceremony can run.
pub struct Quiesced<'a> {
    /// The current seal file, if any.
    pub file: Option<&'a store::SealFile>,
    /// A rekey commit is half done (`seal.pending.json`).
    pub rekey_pending: bool,
    /// Whether the daemon is logged in to the token (unsealed, open for keys
    /// or not).
    pub logged_in: bool,
    /// The backup recipient a quorum verified in this process, if any.
    pub verified_recipient: Option<&'a str>,
}

/// Progress reported after a share is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareProgress {
    /// Shares accepted so far.
    pub received: usize,
    /// Shares needed.
    pub threshold: u8,
    /// The set the shares are of.
    pub set_id: String,
    /// The threshold was reached and the step it completes is done.
    pub complete: bool,
}

/// A rekey in progress, as Status shows it.
#[derive(Debug, Clone)]
pub struct RekeyStatus {
    /// The rekey's id.
    pub id: String,
    /// `collecting-old-shares` or `verifying-new-shares`.
    pub phase: &'static str,
    /// Shares accepted in this phase.
    pub received: usize,
    /// Shares this phase needs.
    pub threshold: u8,
    /// The new set's id once issued; empty before.
    pub new_set_id: String,
}

/// The seal's state, as Status shows it.
#[derive(Debug, Clone)]
pub struct SealStatus {
    /// Where the seal stands.
    pub phase: Phase,
    /// The share set's id (the current file's, else the pending one's); empty
    /// when uninitialised.
    pub set_id: String,
    /// N of that set.
    pub shares: u8,
    /// M of that set.
    pub threshold: u8,
    /// Unseal shares received so far (0 unless sealed).
    pub received: usize,
    /// The rekey in progress, if any.
    pub rekey: Option<RekeyStatus>,
    /// A rekey commit was interrupted (`seal.pending.json`): shares of either
    /// set unseal.
    pub interrupted_rekey: bool,
    /// Init issued shares; the first unseal changes the token's PINs.
    pub init_pending: bool,
    /// The seal metadata is missing although the state shows history.
    pub tampered: Option<String>,
}

/// The seal: one state machine under one lock, over the seal files and
/// the token's login. Ceremony events go to its audit sink once the lock is
/// released.
pub struct Seal {
    store: SealStore,
    config: SealConfig,
    inner: Mutex<Inner>,
    /// Where ceremony events go.
    sink: std::sync::Arc<dyn AuditSink>,
    /// Events noted while `inner` is locked, handed to the sink (which
    /// fdatasyncs) only after it is released: every data-key call takes
    /// `inner` too.
    pending: Pending,
    clock: std::sync::Arc<dyn Clock>,
}

impl Seal {
    /// Loads the seal state. The daemon always starts sealed (or
    /// uninitialised).
    pub fn open(store: SealStore, config: SealConfig) -> SealResult<Self> {
        let store::SharedFiles { current, pending } =
            store.load_both().map_err(SealError::Storage)?;
        let found_interrupted = Pending::default();
        if pending.is_some() {
            tracing::warn!("an interrupted rekey commit was found; shares of either set are accepted at unseal");
            found_interrupted.push(Event::new(
                EventKind::RekeyInterruptedFound,
                Outcome::Warning,
                json!({}),
            ));
        }
        let state = if current.is_some() || pending.is_some() {
            State::sealed()
        } else {
            State::Uninitialized
        };
        Ok(Seal {
            store,
            config,
            inner: Mutex::new(Inner {
                current,
                pending,
                state,
                missing: None,
                verified_recipient: None,
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
        let mut inner = self.inner();
        self.refresh(&mut inner)?;
        Self::may_init(&inner)
    }

    /// In a cluster: takes in the seal files as the shared copy has them
    /// now (another node's init, its first unseal, a rekey). Unverified,
    /// as `seal.json` is: a quorum verifies the file it opens, and the
    /// token refuses PINs a rekey replaced. Nothing on one host.
    fn refresh(&self, inner: &mut Inner) -> SealResult<()> {
        let Some(files) = self.store.reload_shared().map_err(SealError::Storage)? else {
            return Ok(());
        };
        if files.current.is_none() && files.pending.is_none() {
            // Not adopted yet (a cluster older than the shared copy): the
            // mirror's files stand until a verified unseal adopts them.
            return Ok(());
        }
        if files.current != inner.current || files.pending != inner.pending {
            tracing::info!("took in the cluster's seal files from the registry database");
        }
        inner.current = files.current;
        inner.pending = files.pending;
        inner.missing = None;
        if matches!(inner.state, State::Uninitialized) {
            inner.state = State::sealed();
        }
        Ok(())
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
        self.inner.locked()
    }

    /// Where the seal stands, as Status shows it: unsealed only when open
    /// for key operations.
    pub fn phase(&self) -> Phase {
        self.inner().phase()
    }

    /// Logged in with the keyring open (open for keys or not).
    pub fn logged_in(&self) -> bool {
        matches!(self.inner().state, State::Unsealed { .. })
    }

    /// Ok when key operations may run; otherwise the error to return.
    pub fn require_unsealed(&self) -> SealResult<()> {
        // Notes no events, so not wrapped in `audited`: the data path calls it.
        match self.inner().refusal() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// After an unseal or a rekey: what the keyring protects is loaded, key
    /// operations may run.
    /// Returns whether it did (false: sealed or closing meanwhile).
    pub fn open_for_keys(&self) -> bool {
        if let State::Unsealed { serving, .. } = &mut self.inner().state {
            if *serving == Serving::Loading {
                *serving = Serving::Open;
                return true;
            }
        }
        false
    }

    /// Logged in, but what the keyring protects is not loaded yet (or its
    /// loading failed and is to be retried).
    pub fn is_loading(&self) -> bool {
        matches!(
            self.inner().state,
            State::Unsealed {
                serving: Serving::Loading,
                ..
            }
        )
    }

    /// Before a seal or shutdown: key operations stop at once while the
    /// final checkpoint is written. Returns whether the daemon was logged in.
    pub fn begin_closing(&self) -> bool {
        match &mut self.inner().state {
            State::Unsealed { serving, .. } => {
                *serving = Serving::Closing;
                true
            }
            _ => false,
        }
    }

    /// Runs `f` with the current seal file while no ceremony can run (a
    /// backup's snapshot: init, unseal and rekey change the seal file and
    /// the token's PINs). `f` also learns whether a rekey commit is pending
    /// and whether the daemon is logged in. Key operations wait meanwhile.
    pub fn quiesced<T>(&self, f: impl FnOnce(Quiesced<'_>) -> T) -> T {
        let inner = self.inner();
        f(Quiesced {
            file: inner.current.as_ref(),
            rekey_pending: inner.pending.is_some(),
            logged_in: matches!(inner.state, State::Unsealed { .. }),
            verified_recipient: inner.verified_recipient.as_deref(),
        })
    }

    /// Runs `f` with the keyring; fails when sealed.
    pub fn with_keyring<T>(&self, f: impl FnOnce(&Keyring) -> T) -> SealResult<T> {
        // Notes no events, so not wrapped in `audited`: the data path calls it.
        let inner = self.inner();
        match &inner.state {
            State::Unsealed { keyring, .. } => Ok(f(keyring)),
            _ => Err(SealError::Sealed {
                received: 0,
                threshold: inner.threshold(),
            }),
        }
    }

    fn expire(&self, inner: &mut Inner) {
        let timeout = self.config.ceremony_timeout;
        let now = self.clock.monotonic();
        match &mut inner.state {
            State::Sealed { progress, .. } => {
                if let Some(p) = progress {
                    if now.saturating_sub(p.started) > timeout {
                        self.note(
                            EventKind::UnsealExpired,
                            Outcome::Reset,
                            json!({"received": p.shares.len(), "timeout_secs": timeout.as_secs()}),
                        );
                        *progress = None;
                    }
                }
            }
            State::Unsealed { rekey, .. } => {
                if let Some(r) = rekey {
                    if now.saturating_sub(r.started()) > timeout {
                        self.note(
                            EventKind::RekeyExpired,
                            Outcome::Cancelled,
                            json!({"rekey_id": r.id()}),
                        );
                        *rekey = None;
                    }
                }
            }
            State::Uninitialized => {}
        }
    }

    /// Where the seal stands, with any ceremony's progress (an expired
    /// ceremony is ended first).
    pub fn status(&self) -> SealStatus {
        self.audited(|| -> SealStatus {
            let mut inner = self.inner();
            self.expire(&mut inner);
            let file = inner.current.as_ref().or(inner.pending.as_ref());
            let (received, rekey) = match &inner.state {
                State::Sealed { progress, .. } => {
                    (progress.as_ref().map(|p| p.shares.len()).unwrap_or(0), None)
                }
                State::Unsealed { rekey, .. } => (0, rekey.as_ref()),
                State::Uninitialized => (0, None),
            };
            let rekey = rekey.map(|r| match r {
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
                phase: inner.phase(),
                set_id: file.map(|f| f.set_id.clone()).unwrap_or_default(),
                shares: file.map(|f| f.shares).unwrap_or(0),
                threshold: file.map(|f| f.threshold).unwrap_or(0),
                received,
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
            self.refresh(&mut inner)?;
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
            let key = UnsealKey::random().map_err(|e| SealError::Random(e.to_string()))?;
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
            // Made here under the new key: its recipient is vouched for.
            inner.verified_recipient = Some(file.backup_recipient.clone());
            inner.current = Some(file);
            inner.state = State::Sealed {
                progress: None,
                init_pins: Some(InitPins {
                    user: provisioning_user_pin,
                    so: provisioning_so_pin,
                }),
            };
            Ok(issued)
        })
    }

    /// Seals: refuse key operations, log out, drop session copies, wipe the
    /// keyring and any ceremony in progress.
    pub fn seal(&self, hsm: &dyn Hsm) -> SealResult<()> {
        self.audited(|| -> SealResult<()> {
            let mut inner = self.inner();
            match &mut inner.state {
                State::Uninitialized => return Err(SealError::NotInitialized),
                State::Sealed { progress, .. } => {
                    *progress = None;
                    return Ok(());
                }
                State::Unsealed { .. } => {}
            }
            // Drops the keyring (zeroized) and any rekey.
            inner.state = State::sealed();
            hsm.logout();
            self.note(EventKind::Seal, Outcome::Ok, json!({}));
            Ok(())
        })
    }
}

#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;
