//! The core's view of a cluster: several nodes sharing one registry. The
//! core asks three things of it ([`Membership`]); `crate::cluster`
//! answers them over PostgreSQL. On a single host there is none and
//! nothing here runs.
//!
//! What the core does for a cluster is here too: taking in the changes
//! other nodes made ([`Cluster::refresh`](super::Cluster::refresh)), and, after a change of its
//! own, waiting until no node can still serve the state it replaced.

use super::*;
use crate::sync::{Recover, RecoverRw};

/// Where a node's table stands against the shared registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Sealed (or not loaded): holds no lease, serves nothing.
    Sealed,
    /// The table holds this generation, the database's.
    Current(u64),
    /// Behind the database: not yet caught up.
    Behind,
}

/// The database's registry generation as a node sees it.
struct Generations {
    database: u64,
    /// The HSM's counter is ahead of `database`.
    ahead: bool,
}

/// What the core needs of the cluster it is a node of.
pub trait Membership: Send + Sync {
    /// Whether this node may serve key operations now: it has a current
    /// lease, which it only gets while it has applied every committed
    /// change. `Err` says why not.
    fn check_serving(&self) -> Result<(), NotCurrent>;
    /// After this node committed generation `gen`: returns once every other
    /// node holding a lease has applied it, or once every lease granted
    /// before the commit has run out. Never fails: the second bound holds
    /// whatever happens to the database or the other nodes.
    fn wait_applied(&self, gen: u64);
    /// Whether this node runs the cluster's scheduled work (rotations,
    /// destructions) now.
    fn is_leader(&self) -> bool;
    /// Whether objects on the token may belong to another node's create in
    /// progress (reconciliation then destroys no orphan).
    fn shared_token(&self) -> bool {
        true
    }
}

/// Why a node may not serve: it cannot confirm it has applied every key
/// change made on the other nodes (its lease is not current), and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("it cannot confirm it has every key change made on the other nodes: {why}")]
pub struct NotCurrent {
    /// What the node last failed at (the database unreachable, a change it
    /// has not applied, another daemon holding its id...).
    pub why: String,
}

impl Keywarden {
    /// Makes this core a node of a cluster.
    pub fn with_membership(mut self, m: Arc<dyn Membership>) -> Self {
        self.membership = Some(m);
        self
    }
}

impl super::Cluster<'_> {
    /// Whether this is a node of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.membership.is_some()
    }

    pub(super) fn set_applied(&self, gen: u64) {
        self.applied
            .store(gen, std::sync::atomic::Ordering::Release);
    }

    /// Where this node stands against the database, without waiting for a
    /// change in progress on this node: the lease is renewed only when
    /// the table holds the generation the database is at.
    pub fn sync_state(&self) -> CoreResult<SyncState> {
        if self.seal.require_unsealed().is_err() {
            return Ok(SyncState::Sealed);
        }
        let seen = self.counter_ahead_of_database()?;
        let disk = seen.database;
        let applied = self.applied.load(std::sync::atomic::Ordering::Acquire);
        if applied == disk && !seen.ahead {
            return Ok(SyncState::Current(disk));
        }
        // A change of this node's own holds `writes` until its table is
        // updated: look again soon rather than wait behind it.
        let Ok(_w) = self.writes.try_lock() else {
            return Ok(SyncState::Behind);
        };
        match self.refresh_locked()? {
            None => Ok(SyncState::Sealed),
            Some(g) if g == disk => Ok(SyncState::Current(g)),
            // Later than what we compared with: the next look renews.
            Some(_) => Ok(SyncState::Behind),
        }
    }

    /// Takes in what other nodes changed: loads the registry again if the
    /// database is past this node's generation, verifies it exactly as at
    /// unseal, and replaces the records that changed (the encryption
    /// counters of this node's reservations are kept). Returns the
    /// generation now applied, or `None` while sealed.
    pub fn refresh(&self) -> CoreResult<Option<u64>> {
        let _w = self.writes.locked();
        self.refresh_locked()
    }

    /// Before a change that makes an HSM object (create, rotate), which a
    /// refused write would waste: take in other nodes' changes first. The
    /// caller holds `writes`. Nothing on a single host.
    pub(super) fn catch_up(&self) -> CoreResult<()> {
        if self.membership.is_some() {
            self.refresh_locked()?;
        }
        Ok(())
    }

    /// The database's generation, and whether the HSM's counter is ahead
    /// of it. The counter is read first: a writer advances it only after
    /// its commit, so an honest database read after it is never behind.
    /// One that is hides a committed change (someone who can write it put
    /// an old snapshot back) or was rolled back. A node at the generation
    /// the database shows would otherwise renew its lease on the
    /// database's word and go on serving what a revocation replaced;
    /// instead it loads the registry, and the witness check refuses it as
    /// an older copy. No counter object is no evidence: a token shared by
    /// several processes can briefly show none while a writer replaces it
    /// (the missing-counter check is made at each unseal).
    fn counter_ahead_of_database(&self) -> CoreResult<Generations> {
        let hsm = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(CoreError::from_hsm)?;
        let database = self.registry.generation_on_disk().map_err(reg_err)?;
        Ok(Generations {
            database,
            ahead: hsm.is_some_and(|h| h > database),
        })
    }

    /// [`refresh`](Self::refresh) for a caller that holds `writes`.
    pub(super) fn refresh_locked(&self) -> CoreResult<Option<u64>> {
        if self.seal.require_unsealed().is_err() {
            return Ok(None);
        }
        let mine = self.applied.load(std::sync::atomic::Ordering::Acquire);
        let seen = self.counter_ahead_of_database()?;
        if seen.database == mine && !seen.ahead {
            return Ok(Some(mine));
        }
        let (hsm_gen, mut loaded) = self.records().load_verified()?;
        // A rollback (the database behind the HSM's counter) is refused
        // here as at unseal. A counter not found is not: another node
        // replaces the counter object as it writes it, and a token shared
        // by several processes (SoftHSM) can briefly show none. The
        // missing-counter check is made at each unseal.
        if loaded.global.is_none() && hsm_gen.is_some() {
            if let Some(r) = witness::check(loaded.generation, hsm_gen, None) {
                loaded.global = Some(r.to_string());
            }
        }
        self.audit.note_registry_generation(loaded.generation);
        // The encryption counters are left alone: this node's own blocks
        // stay its own, and a version it has not counted under starts its
        // first block above every other node's (see `count_encryptions`).
        // (A reservation calls this holding the counters.)
        let mut t = self.table.write_locked();
        let mut changed = Vec::new();
        let mut by_name = HashMap::new();
        let mut by_id = HashMap::new();
        for r in loaded.keys {
            let old = t.by_name.get(&r.name);
            if old.is_none_or(|o| access_view(o) != access_view(&r)) {
                changed.push((
                    r.name.clone(),
                    r.id_text(),
                    r.state.as_str(),
                    r.versions.clone(),
                ));
            }
            by_id.insert(r.id, r.name.clone());
            by_name.insert(r.name.clone(), Arc::new(r));
        }
        let mut tampered = BTreeMap::new();
        for (k, what) in loaded.tampered {
            if !t.tampered.contains_key(&k) {
                self.event(
                    EventKind::RegistryTampering,
                    Outcome::Detected,
                    serde_json::json!({"key": k, "what": what}),
                );
            }
            tampered.insert(k, what);
        }
        if loaded.global.is_some() && loaded.global != t.global {
            self.event(
                EventKind::RegistryTampering,
                Outcome::Detected,
                serde_json::json!({"key": null, "what": loaded.global}),
            );
        }
        let gone: Vec<String> = t
            .by_name
            .keys()
            .filter(|n| !by_name.contains_key(*n))
            .cloned()
            .collect();
        t.by_name = by_name;
        t.by_id = by_id;
        t.tampered = tampered;
        t.global = loaded.global;
        drop(t);
        self.set_applied(loaded.generation);
        // Session copies of versions another node destroyed go too.
        for (_, _, _, versions) in &changed {
            for v in versions
                .iter()
                .filter(|v| v.state == VersionState::Destroyed)
            {
                match self.hsm.destroy_cmk(&v.hsm_id) {
                    Ok(()) | Err(crate::hsm::HsmError::ObjectNotFound(_)) => {}
                    Err(e) => {
                        warn!(id = %v.hsm_id, error = %e, "could not drop a destroyed version's objects")
                    }
                }
            }
        }
        for (name, key_id, state, _) in changed {
            let _ = self.changes.send(KeyChange::Changed {
                name,
                key_id,
                state,
            });
        }
        if !gone.is_empty() {
            let _ = self.changes.send(KeyChange::Reset);
        }
        Ok(Some(loaded.generation))
    }
}
