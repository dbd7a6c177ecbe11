//! The `/metrics` endpoint: plain HTTP/1.1 on a loopback address, one
//! request per connection, GET only. Nothing else is served.
//!
//! It is reachable by every local user (TCP has no peer credentials to
//! check), so it is bounded like the gRPC socket: a few connections at a
//! time, a short deadline for the request, one render a second shared by
//! every scrape, a `Host` that must name the loopback (no DNS rebinding),
//! and, with `[metrics] bearer_token_file`, a token in `Authorization`.
//!
//! A local user who holds connections open without sending a request
//! cannot starve the scraper: when every slot is taken, the connection
//! that has waited longest without sending its request gives way to the
//! new one. A scraper sends its request as soon as it connects, so only a
//! flood of tens of thousands of connections a second could still push it
//! out; where local users are not trusted at all, a firewall rule on the
//! port (`iptables -m owner --uid-owner prometheus`) closes that too
//! (docs/OPERATIONS.md).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::Recover;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

/// What renders the page at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; past it the oldest one still waiting for
/// its request is closed to make room.
const MAX_CONNECTIONS: usize = 32;
/// Time for a client to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(1);
/// How long a new connection waits for the slot an evicted one frees.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// A page younger than this is served again rather than rendered.
const FRESH: Duration = Duration::from_secs(1);

/// How the endpoint answers.
pub struct Endpoint {
    render: Render,
    /// `Authorization: Bearer <token>` required when set.
    token: Option<Zeroizing<String>>,
    page: Mutex<Option<(Instant, Arc<String>)>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Connections still waiting for their request, oldest first: each
    /// closes when told to (to make room for a new one).
    readers: Mutex<std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>>,
    next_reader: std::sync::atomic::AtomicU64,
}

impl Endpoint {
    pub fn new(render: Render, token: Option<Zeroizing<String>>) -> Arc<Self> {
        Arc::new(Endpoint {
            render,
            token,
            page: Mutex::new(None),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            readers: Mutex::new(std::collections::BTreeMap::new()),
            next_reader: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A slot for a new connection: a free one, or the one of the
    /// connection that has waited longest without sending its request.
    /// None if every slot is busy answering.
    async fn slot(self: &Arc<Self>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let oldest = self.readers.locked().pop_first();
        let (_, close) = oldest?;
        let _ = close.send(());
        tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// The page, rendered at most once a second; `None` if rendering failed.
    async fn page(self: &Arc<Self>) -> Option<Arc<String>> {
        if let Some((at, p)) = &*self.page.locked() {
            if at.elapsed() < FRESH {
                return Some(p.clone());
            }
        }
        let render = self.render.clone();
        let page = Arc::new(tokio::task::spawn_blocking(move || render()).await.ok()?);
        *self.page.locked() = Some((Instant::now(), page.clone()));
        Some(page)
    }
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Full of connections being answered: closed unanswered.
        let Some(permit) = endpoint.slot().await else {
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = answer(stream, endpoint).await;
        });
    }
}

/// Whether a `Host` header names the loopback (an IP literal or localhost,
/// with or without a port).
fn loopback_host(host: &str) -> bool {
    let h = host.trim();
    let name = match h.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => h.rsplit_once(':').map_or(h, |(n, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                h
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

async fn answer(mut stream: TcpStream, endpoint: Arc<Endpoint>) -> std::io::Result<()> {
    let id = endpoint
        .next_reader
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (close, closed) = tokio::sync::oneshot::channel();
    endpoint.readers.locked().insert(id, close);
    let read = tokio::select! {
        r = tokio::time::timeout(REQUEST_DEADLINE, read_request(&mut stream)) => r.ok().flatten(),
        // Evicted: a newer connection needs the slot.
        _ = closed => None,
    };
    endpoint.readers.locked().remove(&id);
    let Some(head) = read else {
        return Ok(());
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let authorized = match &endpoint.token {
        None => true,
        Some(t) => {
            use subtle::ConstantTimeEq;
            let got = header(&head, "authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            bool::from(got.as_bytes().ct_eq(t.as_bytes()))
        }
    };
    let plain = "text/plain; charset=utf-8";
    let (status, body, kind): (&str, Arc<String>, &str) =
        if !header(&head, "host").is_some_and(loopback_host) {
            (
                "421 Misdirected Request",
                Arc::new("Host must name the loopback\n".into()),
                plain,
            )
        } else if !authorized {
            (
                "401 Unauthorized",
                Arc::new("a bearer token is required\n".into()),
                plain,
            )
        } else {
            match (method, path) {
                ("GET", "/metrics") => match endpoint.page().await {
                    Some(p) => ("200 OK", p, "text/plain; version=0.0.4; charset=utf-8"),
                    // A failed render is an error, never an empty page a
                    // scraper would take for "all is well".
                    None => (
                        "500 Internal Server Error",
                        Arc::new("rendering failed\n".into()),
                        plain,
                    ),
                },
                ("GET", _) => (
                    "404 Not Found",
                    Arc::new("only /metrics is served\n".into()),
                    plain,
                ),
                _ => (
                    "405 Method Not Allowed",
                    Arc::new("GET only\n".into()),
                    plain,
                ),
            }
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Why a listen address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("metrics.listen: {0:?} is not an address with a port (e.g. 127.0.0.1:9464)")]
    NotAnAddress(String),
    #[error("metrics.listen: {0} is not a loopback address; the metrics page reveals key states and traffic to whoever reaches it (set metrics.allow_non_loopback = true to serve it there anyway)")]
    NotLoopback(SocketAddr),
}

/// Parses `[metrics] listen`: loopback only unless allowed.
pub fn parse_listen(text: &str, allow_non_loopback: bool) -> Result<SocketAddr, ListenError> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| ListenError::NotAnAddress(text.to_string()))?;
    if !addr.ip().is_loopback() && !allow_non_loopback {
        return Err(ListenError::NotLoopback(addr));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        assert!(parse_listen("127.0.0.1:9464", false).is_ok());
        assert!(parse_listen("[::1]:9464", false).is_ok());
        assert!(matches!(
            parse_listen("0.0.0.0:9464", false),
            Err(ListenError::NotLoopback(_))
        ));
        assert!(parse_listen("0.0.0.0:9464", true).is_ok());
        assert!(matches!(
            parse_listen("localhost", false),
            Err(ListenError::NotAnAddress(_))
        ));
    }

    async fn get(addr: SocketAddr, host: &str, auth: Option<&str>) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        // A connection closed unanswered reads as an empty status line.
        let mut out = String::new();
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n");
        if s.write_all(req.as_bytes()).await.is_ok() {
            let _ = s.read_to_string(&mut out).await;
        }
        out.lines().next().unwrap_or("").to_string()
    }

    #[tokio::test]
    async fn the_token_and_the_host_are_required_and_renders_are_shared() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let renders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = renders.clone();
        let render: Render = Arc::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            "x 1\n".to_string()
        });
        let endpoint = Endpoint::new(render, Some(Zeroizing::new("s3cret".into())));
        tokio::spawn(serve(listener, endpoint));
        let host = addr.to_string();
        assert_eq!(get(addr, &host, None).await, "HTTP/1.1 401 Unauthorized");
        assert_eq!(
            get(addr, &host, Some("wrong")).await,
            "HTTP/1.1 401 Unauthorized"
        );
        assert_eq!(
            get(addr, "evil.example", Some("s3cret")).await,
            "HTTP/1.1 421 Misdirected Request"
        );
        assert_eq!(get(addr, &host, Some("s3cret")).await, "HTTP/1.1 200 OK");
        assert_eq!(
            get(addr, "localhost", Some("s3cret")).await,
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            renders.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "two scrapes within a second share one render"
        );
    }

    /// A local user holding every slot with connections that never send a
    /// request: each scrape still gets its page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_starve_the_scraper() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let render: Render = Arc::new(|| "x 1\n".to_string());
        tokio::spawn(serve(listener, Endpoint::new(render, None)));
        // The attacker: far more idle connections than slots, reopened as
        // they are closed, for as long as the scrapes run (bounded).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let attacker = tokio::spawn(async move {
            let mut held = Vec::new();
            let mut opened = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && opened < 20_000 {
                if let Ok(s) = TcpStream::connect(addr).await {
                    held.push(s);
                    opened += 1;
                }
                if held.len() > 4 * MAX_CONNECTIONS {
                    held.remove(0);
                }
                tokio::task::yield_now().await;
            }
            opened
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let host = addr.to_string();
        let mut served = 0;
        for _ in 0..15 {
            if get(addr, &host, None).await == "HTTP/1.1 200 OK" {
                served += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let opened = attacker.await.unwrap();
        assert!(
            opened > MAX_CONNECTIONS as u32,
            "the attack opened {opened}"
        );
        assert_eq!(served, 15, "scrapes served under the attack");
    }

    #[test]
    fn hosts_must_name_the_loopback() {
        for ok in [
            "127.0.0.1:9464",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9464",
            "127.0.0.1",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:9464",
            "10.0.0.1:9464",
            "localhost.evil.example",
            "[2001:db8::1]:1",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
