//! Connections on the socket: a cap per uid and in all, a handshake and
//! idle timeout, and accept errors logged with backoff.
//!
//! Without these, a local user in no principal who opens connections and
//! sends nothing exhausts the daemon's descriptors: nobody else is served
//! and the accept loop spins on EMFILE. Now each uid may hold at most
//! `per_uid` connections (the next is closed at once, counted in Status and
//! audited, at most one line per uid every 10 s), a connection that sends
//! nothing within `handshake` or is silent for `idle` is closed, and an
//! accept error waits (10 ms, doubling to 1 s) instead of spinning.

use std::collections::HashMap;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::sync::Recover;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Sleep;
use tonic::transport::server::Connected;
use tracing::warn;

/// Connection limits (`[server]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections one uid may hold open (`max_connections_per_uid`).
    pub per_uid: usize,
    /// Connections open in all (`max_connections`).
    pub total: usize,
    /// How long a new connection may send nothing before it is closed.
    pub handshake: Duration,
    /// How long a connection may be silent before it is closed.
    pub idle: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            per_uid: 64,
            total: 1024,
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(120),
        }
    }
}

/// Open connections per uid; shared with Status.
pub struct Tracker {
    limits: ConnLimits,
    open: Mutex<HashMap<u32, usize>>,
    total: AtomicUsize,
    refused: AtomicU64,
    timed_out: AtomicU64,
    alerted: Mutex<HashMap<u32, Instant>>,
    sink: Arc<dyn crate::audit::AuditSink>,
}

/// What Status shows.
pub struct ConnStats {
    /// Connections open now.
    pub open: usize,
    /// Connections refused over a limit since start.
    pub refused: u64,
    /// Connections closed for silence (handshake or idle) since start.
    pub timed_out: u64,
    /// The limits in force.
    pub limits: ConnLimits,
}

impl Tracker {
    /// A tracker with nothing open; refusals are audited to `sink`.
    pub fn new(limits: ConnLimits, sink: Arc<dyn crate::audit::AuditSink>) -> Arc<Self> {
        Arc::new(Tracker {
            sink,
            limits,
            open: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            alerted: Mutex::new(HashMap::new()),
        })
    }

    /// The counts now, for Status.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            open: self.total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            limits: self.limits,
        }
    }

    /// A slot for a new connection from `uid`, or None (over a limit).
    fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, &'static str> {
        let mut open = self.open.locked();
        if self.total.load(Ordering::Relaxed) >= self.limits.total {
            return Err("the daemon's connection limit");
        }
        let n = open.entry(uid).or_insert(0);
        if *n >= self.limits.per_uid {
            return Err("the per-uid connection limit");
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            tracker: self.clone(),
            uid,
        })
    }

    fn refuse(&self, uid: u32, why: &str) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut alerted = self.alerted.locked();
        let now = Instant::now();
        if alerted
            .get(&uid)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10))
        {
            return;
        }
        alerted.insert(uid, now);
        drop(alerted);
        warn!(uid, reason = why, refused_total = n, "connection refused");
        self.sink.record_event(
            crate::audit::EventKind::ConnectionRefused,
            crate::audit::Outcome::Refused,
            serde_json::json!({"uid": uid, "reason": why, "refused_total": n,
                "per_uid": self.limits.per_uid, "total": self.limits.total}),
        );
    }
}

/// Held by a connection; gives its place back on drop.
struct Slot {
    tracker: Arc<Tracker>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.tracker.open.locked();
        if let Some(n) = open.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
        self.tracker.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who is at the other end of a connection, as of its connect: the kernel's
/// peer credentials (SO_PEERCRED describes the process that called
/// connect) and, read once at accept, that process's groups and executable.
/// Every request on the connection carries it (tonic's connect info).
///
/// Reading /proc again for every call would add nothing: a descriptor can
/// be handed to any other process (inheritance, SCM_RIGHTS), whose calls
/// the connecting pid's /proc entry does not describe, and after the
/// connecting process exits its pid may name an unrelated process. What
/// the connection can prove is who opened it, and that is what is kept.
#[derive(Debug, Clone)]
pub struct Peer(pub Arc<crate::policy::Identity>);

/// An admitted connection with a deadline that any byte read or written
/// moves forward (the first by `handshake`, later ones by `idle`).
pub struct Conn {
    inner: UnixStream,
    peer: Peer,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    seen_bytes: bool,
    slot: Slot,
}

impl Conn {
    fn touch(&mut self) {
        self.seen_bytes = true;
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.slot.tracker.timed_out.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn timed_out(seen: bool) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        if seen {
            "connection idle"
        } else {
            "no handshake"
        },
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.expired(cx) {
                    let seen = self.seen_bytes;
                    Poll::Ready(Err(timed_out(seen)))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) && self.seen_bytes {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

/// Accepts connections, admits them under the limits and hands them on.
pub fn incoming(
    listener: UnixListener,
    tracker: Arc<Tracker>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        let mut last_log: Option<Instant> = None;
        loop {
            let stream = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => return,
            };
            let stream = match stream {
                Ok((s, _)) => {
                    backoff = Duration::from_millis(10);
                    s
                }
                Err(e) => {
                    // EMFILE and friends: wait, do not spin.
                    if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                        last_log = Some(Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let cred = match stream.peer_cred() {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "no peer credentials; connection closed");
                    continue;
                }
            };
            let uid = cred.uid();
            let slot = match tracker.admit(uid) {
                Ok(s) => s,
                Err(why) => {
                    tracker.refuse(uid, why);
                    continue;
                }
            };
            let limits = tracker.limits;
            // A peer without a pid (another pid namespace) has only its
            // primary group and no executable.
            let peer = Peer(Arc::new(crate::policy::Identity::from_peer(
                uid,
                cred.gid(),
                cred.pid(),
            )));
            let conn = Conn {
                inner: stream,
                peer,
                deadline: Box::pin(tokio::time::sleep(limits.handshake)),
                idle: limits.idle,
                seen_bytes: false,
                slot,
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn per_uid_and_total_caps_hold_and_slots_come_back() {
        let sink = Arc::new(crate::audit::MemoryLog::default());
        let t = Tracker::new(
            ConnLimits {
                per_uid: 2,
                total: 3,
                ..ConnLimits::default()
            },
            sink.clone(),
        );
        let a1 = t.admit(1).unwrap();
        let _a2 = t.admit(1).unwrap();
        assert!(t.admit(1).is_err(), "third from uid 1");
        let _b1 = t.admit(2).unwrap();
        assert!(t.admit(3).is_err(), "over the total");
        drop(a1);
        assert_eq!(t.stats().open, 2);
        let _a3 = t.admit(1).unwrap();
        // A refusal (as the accept loop reports it) is counted and audited,
        // once per uid per alert interval.
        t.refuse(1, "the per-uid connection limit");
        t.refuse(1, "the per-uid connection limit");
        assert_eq!(t.stats().refused, 2);
        assert_eq!(sink.kinds().len(), 1);
        assert!(sink.kinds().iter().all(|k| *k
            == (
                crate::audit::EventKind::ConnectionRefused,
                crate::audit::Outcome::Refused
            )));
        assert!(!sink.kinds().is_empty());
    }
}
