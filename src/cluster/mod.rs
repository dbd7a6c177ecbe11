//! A node of a cluster: several daemons on one shared PostgreSQL registry
//! and one HSM. The design and its failure modes are in docs/CLUSTER.md;
//! in short:
//!
//! - **Leases.** A node serves key operations only while it holds a
//!   current lease. Its one background thread renews the lease every
//!   `lease / 6`, and the database grants the renewal only if the node has
//!   applied the registry's current generation (one conditional upsert
//!   into `nodes`). The node counts its lease from the moment it *sent*
//!   the renewal, less a margin, so it stops serving before the database
//!   considers the lease over.
//! - **Changes.** A commit notifies `keywarden_registry`; each node's
//!   thread listens, takes the change in (verified as at unseal) and
//!   renews, which records what it applied. A lost notification costs one
//!   renewal period: the renewal itself compares generations.
//! - **Revocation before return.** After a change, the writer waits until
//!   every other node with a current lease has applied it, or until every
//!   lease granted before the commit has run out (at most `lease` after
//!   it). Either way no node can serve the old state when the admin's call
//!   returns; nothing is added to a data-key call but two reads of an
//!   atomic.
//! - **The leader** holds a session advisory lock on the thread's
//!   connection and runs the scheduled work (rotations, destructions);
//!   the lock goes with the connection when the node dies.

pub mod seal;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::core::registry::postgres::{close_off_runtime, pg_err, CHANGES_CHANNEL};
use crate::core::{Keywarden, Membership, SyncState};
use crate::sync::Recover;

/// The advisory lock the leader holds.
const LEADER_LOCK: i64 = 0x6b77_0002;

/// One node's membership.
pub struct Node {
    cfg: ClusterConfig,
    /// The base of `deadline_ns`.
    epoch: Instant,
    /// Nanoseconds after `epoch` until which this node may serve (0: not).
    deadline_ns: AtomicU64,
    leader: AtomicBool,
    /// Why the node is not serving (shown in errors).
    why: Mutex<String>,
    /// The connection the writer's wait queries on.
    control: Mutex<Option<postgres::Client>>,
    stop: AtomicBool,
    /// This process's random id: a second daemon configured with the same
    /// `node_id` is refused a lease instead of sharing this one's row.
    instance: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.control.locked().take() {
            close_off_runtime(c);
        }
    }
}

impl Node {
    /// A node of the cluster `cfg` describes, not yet serving (no lease) and
    /// with nothing running: [`Node::start`] joins it.
    pub fn new(cfg: ClusterConfig) -> Arc<Self> {
        Arc::new(Node {
            cfg,
            epoch: Instant::now(),
            deadline_ns: AtomicU64::new(0),
            leader: AtomicBool::new(false),
            why: Mutex::new("it has not yet joined the cluster (no lease)".into()),
            control: Mutex::new(None),
            stop: AtomicBool::new(false),
            instance: {
                let mut b = [0u8; 16];
                // Without the OS generator, the pid and the start time
                // still tell two processes apart.
                if getrandom::fill(&mut b).is_err() {
                    b[..4].copy_from_slice(&std::process::id().to_be_bytes());
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or_default();
                    b[4..12].copy_from_slice(&t.to_be_bytes());
                }
                hex::encode(b)
            },
        })
    }

    /// This node's configured `node_id` (its row in `nodes`).
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    fn lease(&self) -> Duration {
        self.cfg.lease
    }

    /// The part of a lease the node gives up, against the two clocks
    /// running at slightly different rates and the time a renewal takes
    /// to reach the database.
    fn margin(&self) -> Duration {
        self.lease() / 5
    }

    fn renew_every(&self) -> Duration {
        self.lease() / 6
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn not_serving(&self, why: impl Into<String>) {
        self.deadline_ns.store(0, Ordering::Release);
        *self.why.locked() = why.into();
    }

    /// Whether this node holds a current lease.
    pub fn has_lease(&self) -> bool {
        self.check_serving().is_ok()
    }

    /// Starts the node's thread: listen, take changes in, renew the lease,
    /// try for leadership. It ends when [`Node::shutdown`] is called or the
    /// core is gone.
    pub fn start(
        self: &Arc<Self>,
        core: Weak<Keywarden>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("kw-cluster".into())
            .spawn(move || me.run(core))
    }

    /// Stops the thread at its next wake-up and gives up the lease.
    /// Call it off the async runtime: it closes a database connection.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.not_serving("the daemon is stopping");
        if let Some(c) = self.control.locked().take() {
            close_off_runtime(c);
        }
    }

    fn run(self: Arc<Self>, core: Weak<Keywarden>) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.load(Ordering::Acquire) {
            let mut client = match self.cfg.target.connect() {
                Ok(c) => c,
                Err(e) => {
                    self.leader.store(false, Ordering::Release);
                    *self.why.locked() = format!("the registry database is unreachable ({e})");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.renew_every());
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            if let Err(e) = client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")) {
                warn!(error = %e, "LISTEN failed");
                std::thread::sleep(self.renew_every());
                continue;
            }
            info!(node = %self.cfg.node_id, "connected to the cluster's registry");
            // Notifications sent while not listening are lost: the first
            // round compares generations anyway.
            let outcome = self.session(&mut client, &core);
            self.leader.store(false, Ordering::Release);
            match outcome {
                Session::Stopped => {
                    let _ = client.execute(
                        "DELETE FROM nodes WHERE node_id = $1 AND instance = $2",
                        &[&self.cfg.node_id, &self.instance],
                    );
                    return;
                }
                Session::Lost(why) => {
                    warn!(node = %self.cfg.node_id, error = %why, "lost the registry connection; serving stops when the lease runs out");
                    *self.why.locked() = format!("the registry database is unreachable ({why})");
                }
            }
        }
    }

    /// One connection's life: rounds of take-in-and-renew, woken by a
    /// notification or the renewal period.
    fn session(&self, client: &mut postgres::Client, core: &Weak<Keywarden>) -> Session {
        let mut sealed_row_cleared = false;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Session::Stopped;
            }
            let Some(core) = core.upgrade() else {
                return Session::Stopped;
            };
            let wait = match core.cluster().sync_state() {
                Ok(SyncState::Current(gen)) => {
                    sealed_row_cleared = false;
                    match self.renew(client, gen) {
                        Ok(Renewal::Granted) => self.renew_every(),
                        Ok(Renewal::Behind) => Duration::from_millis(20),
                        // Not ours to take: look again at the renewal pace.
                        Ok(Renewal::Twin) => self.renew_every(),
                        Err(e) => return Session::Lost(e.into()),
                    }
                }
                Ok(SyncState::Behind) => Duration::from_millis(20),
                Ok(SyncState::Sealed) => {
                    self.not_serving("sealed");
                    if self.leader.swap(false, Ordering::AcqRel) {
                        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK]);
                    }
                    if !sealed_row_cleared {
                        // A sealed node serves nothing: no one waits for it.
                        if let Err(e) = client.execute(
                            "DELETE FROM nodes WHERE node_id = $1 AND instance = $2",
                            &[&self.cfg.node_id, &self.instance],
                        ) {
                            return Session::Lost(e.into());
                        }
                        sealed_row_cleared = true;
                    }
                    Duration::from_millis(100)
                }
                Err(e) => {
                    // Tampering found, the HSM away: not current, no
                    // renewal; the lease runs out.
                    *self.why.locked() =
                        format!("it could not take in the registry's changes ({e})");
                    if client.is_closed() {
                        return Session::Lost(e.into());
                    }
                    Duration::from_millis(200)
                }
            };
            drop(core);
            if !self.has_lease() && self.leader.swap(false, Ordering::AcqRel) {
                // A leader that cannot serve lets another node lead.
                if let Err(e) = client.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK]) {
                    return Session::Lost(e.into());
                }
                info!(node = %self.cfg.node_id, "no longer the leader (no current lease)");
            }
            // Wait for a change or the next round.
            let mut n = client.notifications();
            let woke = n.timeout_iter(wait).next().map(|_| ());
            if let Err(e) = woke {
                return Session::Lost(e.into());
            }
            // Several commits may have notified: one round covers them.
            let mut more = n.iter();
            while let Ok(Some(_)) = more.next() {}
        }
    }

    /// Renews the lease if the database agrees this node is current.
    fn renew(
        &self,
        client: &mut postgres::Client,
        gen: u64,
    ) -> Result<Renewal, crate::core::registry::RegistryError> {
        let gen_i = i64::try_from(gen).unwrap_or(i64::MAX);
        let secs = self.lease().as_secs_f64();
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let pid = std::process::id() as i32;
        let sent = Instant::now();
        // FOR SHARE: the renewal queues behind a writer's FOR UPDATE and
        // then reads the generation it committed, so a renewal in flight
        // during a commit either sees the new generation (and is refused)
        // or commits before the writer looks at the leases.
        let n = client
            .execute(
                "INSERT INTO nodes (node_id, lease_until, applied_gen, host, pid, instance)
                 SELECT $1, now() + make_interval(secs => $2), $3, $4, $5, $6
                  WHERE $3 >= (SELECT v::bigint FROM meta WHERE k = 'generation' FOR SHARE)
                 ON CONFLICT (node_id) DO UPDATE
                   SET lease_until = excluded.lease_until, applied_gen = excluded.applied_gen,
                       host = excluded.host, pid = excluded.pid, instance = excluded.instance
                   WHERE nodes.instance = excluded.instance OR nodes.lease_until < now()",
                &[
                    &self.cfg.node_id,
                    &secs,
                    &gen_i,
                    &host,
                    &pid,
                    &self.instance,
                ],
            )
            .map_err(pg_err)?;
        if n != 1 {
            let twin = client
                .query_opt(
                    "SELECT host, pid FROM nodes
                      WHERE node_id = $1 AND instance <> $2 AND lease_until > now()",
                    &[&self.cfg.node_id, &self.instance],
                )
                .map_err(pg_err)?;
            if let Some(r) = twin {
                let (h, p): (String, i32) = (
                    r.try_get(0).unwrap_or_default(),
                    r.try_get(1).unwrap_or_default(),
                );
                let why = format!(
                    "another daemon (pid {p} on {h:?}) is live as node {:?}: give each node its own registry.node_id",
                    self.cfg.node_id
                );
                warn!(node = %self.cfg.node_id, "{why}");
                *self.why.locked() = why;
                return Ok(Renewal::Twin);
            }
            return Ok(Renewal::Behind);
        }
        let until = sent + self.lease() - self.margin();
        self.deadline_ns
            .store(self.since_epoch(until), Ordering::Release);
        if !self.leader.load(Ordering::Acquire) {
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .map_err(pg_err)?
                .try_get(0)
                .unwrap_or(false);
            if got {
                info!(node = %self.cfg.node_id, "this node is the cluster's leader (scheduled work runs here)");
                self.leader.store(true, Ordering::Release);
            }
        }
        Ok(Renewal::Granted)
    }

    /// Whether every other node with a current lease has applied `gen`.
    fn others_applied(&self, gen: u64) -> Result<bool, crate::core::registry::RegistryError> {
        let mut c = self.control.locked();
        if c.as_ref().is_none_or(|c| c.is_closed()) {
            *c = Some(self.cfg.target.connect()?);
        }
        let Some(client) = c.as_mut() else {
            return Ok(false);
        };
        crate::core::registry::postgres::clear_tls_errors();
        let gen_i = i64::try_from(gen).unwrap_or(i64::MAX);
        let behind: i64 = client
            .query_one(
                "SELECT count(*) FROM nodes
                  WHERE instance <> $1 AND lease_until > now() AND applied_gen < $2",
                &[&self.instance, &gen_i],
            )
            .map_err(pg_err)?
            .try_get(0)
            .unwrap_or(i64::MAX);
        Ok(behind == 0)
    }
}

/// What a renewal came to.
enum Renewal {
    Granted,
    /// The database is past this node's generation: catch up first.
    Behind,
    /// Another live daemon holds this node id.
    Twin,
}

enum Session {
    Stopped,
    Lost(Lost),
}

/// Why a node's session with the registry's database ended (its lease
/// then runs out), with the cause.
#[derive(Debug, thiserror::Error)]
enum Lost {
    /// A statement on the session failed.
    #[error(transparent)]
    Database(#[from] postgres::Error),
    /// The lease could not be renewed.
    #[error(transparent)]
    Registry(#[from] crate::core::registry::RegistryError),
    /// The core could not take in the registry's changes, and the
    /// connection is closed.
    #[error(transparent)]
    Core(#[from] crate::core::CoreError),
}

impl Membership for Node {
    fn check_serving(&self) -> Result<(), crate::core::membership::NotCurrent> {
        let d = self.deadline_ns.load(Ordering::Acquire);
        if d != 0 && self.since_epoch(Instant::now()) < d {
            return Ok(());
        }
        Err(crate::core::membership::NotCurrent {
            why: self.why.locked().clone(),
        })
    }

    fn wait_applied(&self, gen: u64) {
        // Every lease granted before the commit ends within `lease` of it.
        let bound = Instant::now() + self.lease() + self.margin();
        let mut pause = Duration::from_millis(1);
        loop {
            match self.others_applied(gen) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "cannot see the other nodes; waiting out their leases");
                    *self.control.locked() = None;
                }
            }
            let now = Instant::now();
            if now >= bound {
                warn!(
                    generation = gen,
                    "some node did not confirm a change; its lease has run out"
                );
                return;
            }
            std::thread::sleep(pause.min(bound - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire) && self.has_lease()
    }
}
