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
//!
//! The HTTP is hyper's `http1` server, one per connection, set to the
//! limits: no keep-alive, a head of at most 8 KiB (`max_buf_size`; a
//! longer one is answered 431), 1 s to send it (`header_read_timeout`),
//! and a client that half-closes after its request still answered. The
//! slots, the eviction, the checks and the page cache are this file's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::Recover;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

/// What renders the page at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The request line and headers, at most (hyper's read buffer; 8 KiB is
/// also the smallest hyper accepts).
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

const PLAIN: &str = "text/plain; charset=utf-8";
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How the endpoint answers.
pub struct Endpoint {
    render: Render,
    /// `Authorization: Bearer <token>` required when set.
    token: Option<Zeroizing<String>>,
    page: Mutex<Option<(Instant, Bytes)>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Connections still waiting for their request, oldest first: each
    /// closes when told to (to make room for a new one).
    readers: Mutex<std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>>,
    next_reader: std::sync::atomic::AtomicU64,
    /// How every connection is spoken to.
    http: http1::Builder,
}

impl Endpoint {
    /// An endpoint serving what `render` returns; with `token`, only to
    /// requests that bear it.
    pub fn new(render: Render, token: Option<Zeroizing<String>>) -> Arc<Self> {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            // One request per connection: closed once answered.
            .keep_alive(false)
            .max_buf_size(MAX_REQUEST)
            // From the connection's start (hyper arms it at its first read).
            .header_read_timeout(REQUEST_DEADLINE)
            // A client that shuts its side down after the request (`nc -N`)
            // is still answered, as before hyper.
            .half_close(true);
        Arc::new(Endpoint {
            render,
            token,
            page: Mutex::new(None),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            readers: Mutex::new(std::collections::BTreeMap::new()),
            next_reader: std::sync::atomic::AtomicU64::new(0),
            http,
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
    async fn page(self: &Arc<Self>) -> Option<Bytes> {
        if let Some((at, p)) = &*self.page.locked() {
            if at.elapsed() < FRESH {
                return Some(p.clone());
            }
        }
        let render = self.render.clone();
        let page = Bytes::from(tokio::task::spawn_blocking(move || render()).await.ok()?);
        *self.page.locked() = Some((Instant::now(), page.clone()));
        Some(page)
    }

    /// Whether `req` bears the token (compared in constant time), or none
    /// is required.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(t) = &self.token else {
            return true;
        };
        use subtle::ConstantTimeEq;
        let got = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        bool::from(got.ct_eq(t.as_bytes()))
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
            answer(stream, endpoint).await;
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

/// One connection, from its slot to its close: listed among the readers
/// (and so the first to give way) until its request has arrived.
async fn answer(stream: TcpStream, endpoint: Arc<Endpoint>) {
    let id = endpoint
        .next_reader
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (close, closed) = tokio::sync::oneshot::channel();
    endpoint.readers.locked().insert(id, close);
    let service = {
        let endpoint = endpoint.clone();
        hyper::service::service_fn(move |req| {
            // The request is in: being answered, it no longer gives way.
            // (Taken under the lock an eviction takes too: either this
            // connection is evicted first or never.)
            endpoint.readers.locked().remove(&id);
            respond(endpoint.clone(), req)
        })
    };
    let conn = endpoint
        .http
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // Answered, timed out, refused or gone: closed either way.
        _ = conn => {}
        // Evicted: a newer connection needs the slot. (`Err`: the request
        // arrived and dropped the sender, which disables this branch.)
        Ok(()) = closed => {}
    }
    endpoint.readers.locked().remove(&id);
}

fn reply(status: StatusCode, kind: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn respond(
    endpoint: Arc<Endpoint>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text =
        |status, body: &'static str| Ok(reply(status, PLAIN, Bytes::from_static(body.as_bytes())));
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(loopback_host) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "Host must name the loopback\n",
        );
    }
    if !endpoint.authorized(&req) {
        return text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    // The origin form only (`/metrics`, any query): an absolute URI names
    // a host of its own, unchecked, and is not served.
    if req.uri().authority().is_some() || req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "only /metrics is served\n");
    }
    match endpoint.page().await {
        Some(p) => Ok(reply(StatusCode::OK, EXPOSITION, p)),
        // A failed render is an error, never an empty page a scraper would
        // take for "all is well".
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n"),
    }
}

/// Why a listen address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// The text is not `address:port`.
    #[error("metrics.listen: {0:?} is not an address with a port (e.g. 127.0.0.1:9464)")]
    NotAnAddress(String),
    /// A non-loopback address without `allow_non_loopback`.
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    /// `req` sent raw (then the write side shut when `half_close`): the
    /// whole answer, empty if the connection closed unanswered.
    async fn raw(addr: SocketAddr, req: &[u8], half_close: bool) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        if s.write_all(req).await.is_ok() {
            if half_close {
                s.shutdown().await.unwrap();
            }
            let _ = s.read_to_end(&mut out).await;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn started(render: Render) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Endpoint::new(render, None)));
        addr
    }

    #[tokio::test]
    async fn get_of_metrics_only_and_one_request_a_connection() {
        let addr = started(Arc::new(|| "x 1\n".to_string())).await;
        let status = |r: &str| r.lines().next().unwrap_or("").to_string();
        let host = "Host: 127.0.0.1\r\n";
        // Two requests on one connection: one answer, then closed.
        let r = raw(
            addr,
            format!("GET /metrics HTTP/1.1\r\n{host}\r\nGET /metrics HTTP/1.1\r\n{host}\r\n")
                .as_bytes(),
            false,
        )
        .await;
        assert_eq!(r.matches("HTTP/1.1").count(), 1, "{r}");
        let lower = r.to_ascii_lowercase();
        assert!(lower.contains("connection: close\r\n"), "{r}");
        assert!(lower.contains("content-length: 4\r\n"), "{r}");
        assert!(
            lower.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\nx 1\n"), "{r}");
        for (req, want) in [
            ("GET /metrics?x=1 HTTP/1.1", "HTTP/1.1 200 OK"),
            ("GET /metrics HTTP/1.0", "HTTP/1.0 200 OK"),
            ("GET /other HTTP/1.1", "HTTP/1.1 404 Not Found"),
            (
                "GET http://127.0.0.1/metrics HTTP/1.1",
                "HTTP/1.1 404 Not Found",
            ),
            ("POST /metrics HTTP/1.1", "HTTP/1.1 405 Method Not Allowed"),
            ("HEAD /metrics HTTP/1.1", "HTTP/1.1 405 Method Not Allowed"),
        ] {
            let r = raw(addr, format!("{req}\r\n{host}\r\n").as_bytes(), false).await;
            assert_eq!(status(&r), want, "{req}");
        }
        let r = raw(addr, b"GET /metrics HTTP/1.1\r\n\r\n", false).await;
        assert_eq!(status(&r), "HTTP/1.1 421 Misdirected Request");
        assert!(r.ends_with("Host must name the loopback\n"), "{r}");
        // A client that shuts its side down after the request is answered.
        let r = raw(
            addr,
            format!("GET /metrics HTTP/1.1\r\n{host}\r\n").as_bytes(),
            true,
        )
        .await;
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        // A head past the bound is refused, never served.
        let big = format!(
            "GET /metrics HTTP/1.1\r\n{host}X-Pad: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST)
        );
        let r = raw(addr, big.as_bytes(), false).await;
        assert!(!r.contains(" 200 "), "{r}");
        // Garbage is refused too.
        let r = raw(addr, b"\x01\x02 nonsense\r\n\r\n", false).await;
        assert!(!r.contains(" 200 "), "{r}");
    }

    #[tokio::test]
    async fn a_failed_render_is_a_500() {
        let addr = started(Arc::new(|| panic!("render failed on purpose"))).await;
        let r = raw(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
            false,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 500 Internal Server Error"), "{r}");
        assert!(r.ends_with("rendering failed\n"), "{r}");
    }

    #[tokio::test]
    async fn the_request_must_arrive_within_the_deadline() {
        let addr = started(Arc::new(|| "x 1\n".to_string())).await;
        for partial in [&b""[..], b"GET /metrics HTTP/1.1\r\nHost: local"] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(partial).await.unwrap();
            let at = Instant::now();
            let mut out = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            assert!(read.is_ok(), "still open after 5 s");
            let waited = at.elapsed();
            assert!(
                waited >= REQUEST_DEADLINE - Duration::from_millis(100)
                    && waited < REQUEST_DEADLINE * 3,
                "closed after {waited:?}"
            );
            assert!(!String::from_utf8_lossy(&out).contains(" 200 "));
        }
    }

    /// A scrape being answered keeps its slot however many idle
    /// connections arrive meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_being_answered_is_not_evicted() {
        let addr = started(Arc::new(|| {
            std::thread::sleep(Duration::from_millis(700));
            "x 1\n".to_string()
        }))
        .await;
        let scrape = tokio::spawn(raw(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
            false,
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut idle = Vec::new();
        for _ in 0..3 * MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let r = scrape.await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        drop(idle);
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
