//! The opt-in data-key cache, bounded by age, messages and bytes, and
//! emptied by the daemon's key changes.
//!
//! A cached key must not outlive its CMK's revocation. A background task
//! holds a `WatchKeys` stream open; the daemon sends every change of a key
//! (disabled, a version revoked, destruction scheduled or done, rotated)
//! before the admin's call returns, and a heartbeat every 250 ms. The
//! cache serves only while it has heard from the daemon within the last
//! [`LIVENESS`]: a broken or silent stream empties it and every call goes
//! to the daemon until the stream is back. A key change invalidates every
//! lease of that key (each key id has a generation; a lease remembers the
//! one it was fetched at), so a stream being decrypted with it stops at its
//! next batch of segments (at most 256 KiB later). A key fetched while a
//! change arrives is not cached (a ticket taken before the fetch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use keywarden_proto as proto;
use keywarden_proto::data_key_service_client::DataKeyServiceClient;
use tonic::transport::Channel;

use crate::client::DataKey;
use crate::error::Error;

/// How recently the daemon must have been heard from for the cache to
/// serve (the daemon sends a heartbeat every 250 ms).
pub const LIVENESS: Duration = Duration::from_millis(750);

/// The cache's bounds. Each entry is one data key reused for at most
/// `max_age`, `max_messages` messages and `max_bytes` bytes of plaintext.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// How long one data key is reused.
    pub max_age: Duration,
    /// How many messages one data key encrypts or decrypts.
    pub max_messages: u64,
    /// How many plaintext bytes one data key encrypts.
    pub max_bytes: u64,
    /// How many distinct (key, context) entries are held.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    /// Conservative: one minute, 1,000 messages, 64 MiB, 1,000 entries.
    fn default() -> Self {
        CacheConfig {
            max_age: Duration::from_secs(60),
            max_messages: 1_000,
            max_bytes: 64 << 20,
            max_entries: 1_000,
        }
    }
}

/// What the cache has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Operations served from the cache.
    pub hits: u64,
    /// Operations that went to the daemon.
    pub misses: u64,
    /// Entries dropped because the daemon reported a key change.
    pub revoked: u64,
    /// Whether the cache is serving now (the daemon was heard recently).
    pub live: bool,
}

/// A data key handed out by the cache. It stays valid until a key it
/// involves changes or the cache loses the daemon, whatever happens to the
/// entry it came from (retired at its limits, replaced, evicted).
pub(crate) struct Lease {
    pub key: Arc<DataKey>,
    pub blobs: Arc<Vec<Vec<u8>>>,
    /// (key id, its generation when the key was fetched).
    stamps: Vec<(String, u64)>,
    epoch: u64,
    cache: Weak<Cache>,
}

impl Lease {
    /// False once a key it involves changed or the cache lost the daemon.
    pub fn valid(&self) -> bool {
        match self.cache.upgrade() {
            Some(c) => {
                let s = c.lock();
                c.is_live(&s)
                    && s.epoch == self.epoch
                    && self.stamps.iter().all(|(id, g)| s.generation(id) == *g)
            }
            // The client is gone: nothing is being served any more.
            None => false,
        }
    }
}

/// A data key just fetched for encryption: the key, its blob under each
/// key asked for, and those keys' ids.
pub(crate) struct Fetched {
    pub key: DataKey,
    pub blobs: Vec<Vec<u8>>,
    pub key_ids: Vec<String>,
}

/// Taken before a daemon call that fetches a key for the cache: if any key
/// changes (or the stream drops) before the answer is stored, it is not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    changes: u64,
}

struct Entry {
    key: Arc<DataKey>,
    blobs: Arc<Vec<Vec<u8>>>,
    stamps: Vec<(String, u64)>,
    epoch: u64,
    created: Instant,
    messages: u64,
    bytes: u64,
}

/// Encrypt entries are keyed by the CMK names and the encoded context;
/// decrypt entries by the wrapped blob and the encoded context.
type EncKey = (Vec<String>, Vec<u8>);
type DecKey = (Vec<u8>, Vec<u8>);

#[derive(Default)]
struct State {
    heard: Option<Instant>,
    /// Bumped when everything must be forgotten (reset, stream lost).
    epoch: u64,
    /// Bumped by every change, reset or loss: a fetch that overlaps one is
    /// not stored.
    changes: u64,
    /// Per key id, bumped by each of its changes.
    generations: HashMap<String, u64>,
    enc: HashMap<EncKey, Entry>,
    dec: HashMap<DecKey, Entry>,
}

impl State {
    fn generation(&self, key_id: &str) -> u64 {
        self.generations.get(key_id).copied().unwrap_or(0)
    }

    fn forget_all(&mut self) -> u64 {
        let n = (self.enc.len() + self.dec.len()) as u64;
        self.enc.clear();
        self.dec.clear();
        self.epoch += 1;
        self.changes += 1;
        n
    }

    /// Drops every entry that involves `key_id` and invalidates its leases;
    /// returns how many entries went.
    fn drop_key(&mut self, key_id: &str) -> u64 {
        *self.generations.entry(key_id.to_string()).or_insert(0) += 1;
        self.changes += 1;
        let before = self.enc.len() + self.dec.len();
        let hit = |e: &Entry| e.stamps.iter().any(|(k, _)| k == key_id);
        self.enc.retain(|_, e| !hit(e));
        self.dec.retain(|_, e| !hit(e));
        (before - self.enc.len() - self.dec.len()) as u64
    }

    fn stamps(&self, key_ids: &[String]) -> Vec<(String, u64)> {
        key_ids
            .iter()
            .map(|k| (k.clone(), self.generation(k)))
            .collect()
    }
}

/// The cache shared by every clone of a `Client`.
pub(crate) struct Cache {
    config: CacheConfig,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    revoked: AtomicU64,
}

impl Cache {
    pub(crate) fn start(
        config: CacheConfig,
        stub: DataKeyServiceClient<Channel>,
    ) -> Result<Arc<Cache>, Error> {
        if config.max_messages == 0 || config.max_entries == 0 || config.max_age.is_zero() {
            return Err(Error::Usage {
                field: "CacheConfig",
                reason: "max_age, max_messages and max_entries must be above zero".into(),
            });
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::Usage {
            field: "Client::with_cache",
            reason: "must be called inside a Tokio runtime".into(),
        })?;
        let cache = Arc::new(Cache::new(config));
        handle.spawn(watch(Arc::downgrade(&cache), stub));
        Ok(cache)
    }

    fn new(config: CacheConfig) -> Cache {
        Cache {
            config,
            state: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_live(&self, s: &State) -> bool {
        s.heard.is_some_and(|t| t.elapsed() < LIVENESS)
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let live = self.is_live(&self.lock());
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
            live,
        }
    }

    fn lease(self: &Arc<Self>, e: &Entry) -> Lease {
        Lease {
            key: e.key.clone(),
            blobs: e.blobs.clone(),
            stamps: e.stamps.clone(),
            epoch: e.epoch,
            cache: Arc::downgrade(self),
        }
    }

    /// To take before fetching a key that will be offered to the cache.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket {
            changes: self.lock().changes,
        }
    }

    fn miss(&self) -> Option<Lease> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A cached data key for encrypting `bytes` more bytes under `keys`
    /// with this context, counted against the entry's limits. An entry at
    /// its limits is retired (no new leases; leases already out stay valid).
    pub(crate) fn take_encrypt(
        self: &Arc<Self>,
        keys: &[&str],
        ctx: &[u8],
        bytes: u64,
    ) -> Option<Lease> {
        let mut s = self.lock();
        if !self.is_live(&s) {
            s.forget_all();
            drop(s);
            return self.miss();
        }
        let k: EncKey = (keys.iter().map(|k| k.to_string()).collect(), ctx.to_vec());
        let cfg = self.config;
        let usable = s.enc.get(&k).is_some_and(|e| {
            e.created.elapsed() < cfg.max_age
                && e.messages < cfg.max_messages
                && e.bytes.saturating_add(bytes) <= cfg.max_bytes
        });
        if !usable {
            s.enc.remove(&k);
            drop(s);
            return self.miss();
        }
        let lease = {
            let e = s.enc.get_mut(&k)?;
            e.messages += 1;
            e.bytes += bytes;
            self.lease(e)
        };
        drop(s);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(lease)
    }

    /// Offers a freshly fetched data key for encryption (already used for
    /// one message of `bytes`). Stored, and leased, only if the cache is
    /// live and no key changed since `ticket`; otherwise `Err` gives the
    /// key back for this one message, uncached.
    pub(crate) fn put_encrypt(
        self: &Arc<Self>,
        ticket: Ticket,
        keys: &[&str],
        ctx: &[u8],
        bytes: u64,
        fetched: Fetched,
    ) -> Result<Lease, (DataKey, Vec<Vec<u8>>)> {
        let Fetched {
            key,
            blobs,
            key_ids,
        } = fetched;
        let mut s = self.lock();
        if !self.is_live(&s) || s.changes != ticket.changes || bytes > self.config.max_bytes {
            return Err((key, blobs));
        }
        let e = Entry {
            key: Arc::new(key),
            blobs: Arc::new(blobs),
            stamps: s.stamps(&key_ids),
            epoch: s.epoch,
            created: Instant::now(),
            messages: 1,
            bytes,
        };
        let lease = self.lease(&e);
        self.make_room(&mut s);
        s.enc.insert(
            (keys.iter().map(|k| k.to_string()).collect(), ctx.to_vec()),
            e,
        );
        Ok(lease)
    }

    /// A cached unwrap of `blob` under this context.
    pub(crate) fn take_decrypt(self: &Arc<Self>, blob: &[u8], ctx: &[u8]) -> Option<Lease> {
        let mut s = self.lock();
        if !self.is_live(&s) {
            s.forget_all();
            drop(s);
            return self.miss();
        }
        let k: DecKey = (blob.to_vec(), ctx.to_vec());
        let cfg = self.config;
        let usable = s
            .dec
            .get(&k)
            .is_some_and(|e| e.created.elapsed() < cfg.max_age && e.messages < cfg.max_messages);
        if !usable {
            s.dec.remove(&k);
            drop(s);
            return self.miss();
        }
        let lease = {
            let e = s.dec.get_mut(&k)?;
            e.messages += 1;
            self.lease(e)
        };
        drop(s);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(lease)
    }

    /// Offers a fresh unwrap; as [`put_encrypt`](Self::put_encrypt).
    pub(crate) fn put_decrypt(
        self: &Arc<Self>,
        ticket: Ticket,
        blob: &[u8],
        ctx: &[u8],
        key: DataKey,
        key_id: String,
    ) -> Result<Lease, DataKey> {
        let mut s = self.lock();
        if !self.is_live(&s) || s.changes != ticket.changes {
            return Err(key);
        }
        let e = Entry {
            key: Arc::new(key),
            blobs: Arc::new(Vec::new()),
            stamps: s.stamps(&[key_id]),
            epoch: s.epoch,
            created: Instant::now(),
            messages: 1,
            bytes: 0,
        };
        let lease = self.lease(&e);
        self.make_room(&mut s);
        s.dec.insert((blob.to_vec(), ctx.to_vec()), e);
        Ok(lease)
    }

    /// Keeps the entry count under the bound: expired entries go first,
    /// then the oldest. (Leases out stay valid: eviction is not revocation.)
    fn make_room(&self, s: &mut State) {
        let max_age = self.config.max_age;
        if s.enc.len() + s.dec.len() < self.config.max_entries {
            return;
        }
        s.enc.retain(|_, e| e.created.elapsed() < max_age);
        s.dec.retain(|_, e| e.created.elapsed() < max_age);
        while s.enc.len() + s.dec.len() >= self.config.max_entries {
            let oldest_enc = s
                .enc
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, e)| (k.clone(), e.created));
            let oldest_dec = s
                .dec
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, e)| (k.clone(), e.created));
            match (oldest_enc, oldest_dec) {
                (Some((k, a)), Some((_, b))) if a <= b => {
                    s.enc.remove(&k);
                }
                (_, Some((k, _))) => {
                    s.dec.remove(&k);
                }
                (Some((k, _)), None) => {
                    s.enc.remove(&k);
                }
                (None, None) => break,
            }
        }
    }

    fn heard(&self) {
        self.lock().heard = Some(Instant::now());
    }

    fn lost(&self) {
        let mut s = self.lock();
        s.heard = None;
        s.forget_all();
    }

    fn key_changed(&self, key_id: &str) {
        let mut s = self.lock();
        let n = s.drop_key(key_id);
        s.heard = Some(Instant::now());
        drop(s);
        self.revoked.fetch_add(n, Ordering::Relaxed);
    }

    fn reset(&self) {
        let mut s = self.lock();
        let n = s.forget_all();
        s.heard = Some(Instant::now());
        drop(s);
        self.revoked.fetch_add(n, Ordering::Relaxed);
    }
}

/// Follows the daemon's key changes for as long as the cache exists.
async fn watch(cache: Weak<Cache>, stub: DataKeyServiceClient<Channel>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let mut c = stub.clone();
        match c.watch_keys(proto::WatchKeysRequest {}).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                // Changes made while no stream was open reached nobody: the
                // first event of each stream forgets everything, so a key
                // fetched meanwhile (its ticket older) is not stored.
                let mut first = true;
                loop {
                    // A daemon that goes silent is as good as gone.
                    let next = tokio::time::timeout(LIVENESS, stream.message()).await;
                    let Some(cache) = cache.upgrade() else { return };
                    match next {
                        Ok(Ok(Some(ev))) => {
                            pause = Duration::from_millis(100);
                            if std::mem::take(&mut first) {
                                cache.reset();
                            }
                            match proto::key_event::Kind::try_from(ev.kind) {
                                Ok(proto::key_event::Kind::Heartbeat) => cache.heard(),
                                Ok(proto::key_event::Kind::Changed) => {
                                    cache.key_changed(&ev.key_id)
                                }
                                // A reset, or a kind this client does not
                                // know: forget everything.
                                _ => cache.reset(),
                            }
                        }
                        _ => {
                            cache.lost();
                            break;
                        }
                    }
                }
            }
            Err(_) => {
                let Some(cache) = cache.upgrade() else { return };
                cache.lost();
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        if cache.strong_count() == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(cfg: CacheConfig) -> Arc<Cache> {
        Arc::new(Cache::new(cfg))
    }

    fn key() -> DataKey {
        let mut v = vec![9u8; 32];
        DataKey::take(&mut v).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn put_e(c: &Arc<Cache>, k: &str, ctx: &[u8], bytes: u64, id: &str) -> Option<Lease> {
        let t = c.ticket();
        c.put_encrypt(
            t,
            &[k],
            ctx,
            bytes,
            Fetched {
                key: key(),
                blobs: vec![vec![1]],
                key_ids: vec![id.into()],
            },
        )
        .ok()
    }

    fn put_d(c: &Arc<Cache>, blob: &[u8], id: &str) -> Option<Lease> {
        let t = c.ticket();
        c.put_decrypt(t, blob, b"ctx", key(), id.into()).ok()
    }

    #[test]
    fn limits_bound_reuse() {
        let c = cache(CacheConfig {
            max_age: Duration::from_secs(60),
            max_messages: 3,
            max_bytes: 100,
            max_entries: 10,
        });
        c.heard();
        assert!(c.take_encrypt(&["k"], b"ctx", 10).is_none());
        let first = put_e(&c, "k", b"ctx", 10, "id").unwrap_or_else(|| unreachable!());
        assert!(c.take_encrypt(&["k"], b"ctx", 10).is_some());
        assert!(c.take_encrypt(&["k"], b"ctx", 10).is_some());
        // Third message reached: the entry is retired, its leases are not.
        assert!(c.take_encrypt(&["k"], b"ctx", 10).is_none());
        assert!(first.valid());
        assert!(put_e(&c, "k", b"ctx", 60, "id").is_some());
        // 60 + 50 > 100 bytes.
        assert!(c.take_encrypt(&["k"], b"ctx", 50).is_none());
        // Another context is another entry.
        assert!(c.take_encrypt(&["k"], b"other", 1).is_none());
    }

    #[test]
    fn age_bounds_reuse() {
        let c = cache(CacheConfig {
            max_age: Duration::from_millis(50),
            ..CacheConfig::default()
        });
        c.heard();
        assert!(put_d(&c, b"blob", "id").is_some());
        assert!(c.take_decrypt(b"blob", b"ctx").is_some());
        std::thread::sleep(Duration::from_millis(60));
        c.heard();
        assert!(c.take_decrypt(b"blob", b"ctx").is_none());
    }

    #[test]
    fn a_key_change_revokes_entries_and_every_lease_of_that_key() {
        let c = cache(CacheConfig::default());
        c.heard();
        let lease = put_d(&c, b"blob", "id-a").unwrap_or_else(|| unreachable!());
        // A second fetch of the same blob replaces the entry: the first
        // lease must still be revoked by a change.
        let replaced = put_d(&c, b"blob", "id-a").unwrap_or_else(|| unreachable!());
        assert!(put_e(&c, "b", b"ctx", 1, "id-b").is_some());
        assert!(lease.valid() && replaced.valid());
        c.key_changed("id-a");
        assert!(!lease.valid() && !replaced.valid());
        assert!(c.take_decrypt(b"blob", b"ctx").is_none());
        assert!(c.take_encrypt(&["b"], b"ctx", 1).is_some());
        assert_eq!(c.stats().revoked, 1);
    }

    #[test]
    fn a_fetch_that_overlaps_a_change_is_not_cached() {
        let c = cache(CacheConfig::default());
        c.heard();
        let t = c.ticket();
        // The admin disables a key while the fetch is in flight.
        c.key_changed("id-a");
        assert!(c
            .put_decrypt(t, b"blob", b"ctx", key(), "id-a".into())
            .is_err());
        assert!(c.take_decrypt(b"blob", b"ctx").is_none());
        let t = c.ticket();
        c.reset();
        assert!(c
            .put_encrypt(
                t,
                &["k"],
                b"ctx",
                1,
                Fetched {
                    key: key(),
                    blobs: vec![],
                    key_ids: vec!["id-k".into()],
                },
            )
            .is_err());
    }

    #[test]
    fn nothing_is_served_without_the_daemon() {
        let c = cache(CacheConfig::default());
        // Never heard from the daemon: not even stored.
        assert!(put_d(&c, b"blob", "id").is_none());
        c.heard();
        assert!(c.take_decrypt(b"blob", b"ctx").is_none());
        let lease = put_d(&c, b"blob", "id").unwrap_or_else(|| unreachable!());
        assert!(c.take_decrypt(b"blob", b"ctx").is_some());
        c.lost();
        assert!(!lease.valid());
        assert!(c.take_decrypt(b"blob", b"ctx").is_none());
        assert!(!c.stats().live);
        // Back: the old lease stays invalid (a new epoch).
        c.heard();
        assert!(!lease.valid());
    }

    #[test]
    fn entries_are_bounded_and_eviction_is_not_revocation() {
        let c = cache(CacheConfig {
            max_entries: 2,
            ..CacheConfig::default()
        });
        c.heard();
        let first = put_d(&c, b"a", "id").unwrap_or_else(|| unreachable!());
        for b in [b"b", b"c"] {
            assert!(put_d(&c, b, "id").is_some());
        }
        {
            let s = c.lock();
            assert_eq!(s.dec.len(), 2);
            assert!(!s.dec.contains_key(&(b"a".to_vec(), b"ctx".to_vec())));
        }
        assert!(first.valid());
        c.key_changed("id");
        assert!(!first.valid());
    }
}
