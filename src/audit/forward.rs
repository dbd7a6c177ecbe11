//! Forwarding the audit log to a SIEM, line by line and unchanged.
//!
//! Each line the writer has made durable is offered to a bounded queue;
//! one thread sends it as an RFC 5424 syslog message whose MSG is the line
//! itself (hash-chain fields included, so the SIEM's copy verifies with
//! `keywarden audit verify`), either over TCP with octet counting (RFC
//! 6587) or as one datagram to a local Unix socket (`/dev/log`, or a
//! relay's socket).
//!
//! The local file stays the fail-closed record: offering never blocks the
//! writer, a full queue drops the line (counted), and a SIEM that is slow
//! or gone only delays this thread. A gap in the forwarded copy shows as a
//! broken sequence when it is verified, and the drop counters say how many.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::Recover;
use serde_json::Value;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// RFC 5424 over TCP, octet-counted frames (RFC 6587, section 3.4.1).
    Tcp(SocketAddr),
    /// One RFC 5424 message per datagram on a local Unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp(a) => write!(f, "tcp://{a}"),
            Transport::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// What `[audit.forward]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Where lines are sent.
    pub transport: Transport,
    /// Syslog facility number (0 to 23); `authpriv` (10) by default.
    pub facility: u8,
    /// RFC 5424 HOSTNAME (printable ASCII, at most 255 bytes).
    pub hostname: String,
    /// RFC 5424 APP-NAME (printable ASCII, at most 48 bytes).
    pub app_name: String,
    /// Lines held while the receiver is slow or away; more are dropped.
    pub buffer_lines: usize,
    /// Bytes held, at most (lines can be long: a ledger line holds a whole
    /// key record, and the process's memory is locked).
    pub buffer_bytes: usize,
}

/// The facility names of RFC 5424, section 6.2.1, by number.
pub const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// A facility's number from its name.
pub fn facility(name: &str) -> Option<u8> {
    FACILITIES.iter().position(|f| *f == name).map(|i| i as u8)
}

/// RFC 5424's PRINTUSASCII (33 to 126), cut to `max` bytes; `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

impl ForwardConfig {
    /// The defaults for a transport: facility authpriv, this host's name
    /// (gethostname: the unit's `ProcSubset=pid` hides /proc/sys), APP-NAME
    /// `keywarden`, 10,000 lines and 64 MiB of buffer.
    pub fn new(transport: Transport) -> Self {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        ForwardConfig {
            transport,
            facility: 10,
            hostname: header_field(&hostname, 255),
            app_name: "keywarden".into(),
            buffer_lines: 10_000,
            buffer_bytes: 64 << 20,
        }
    }
}

/// The RFC 5424 message for one audit line: `<PRI>1 TIMESTAMP HOSTNAME
/// APP-NAME PROCID MSGID - MSG`, MSG being the line unchanged. TIMESTAMP is
/// the line's own `time`; MSGID its event, operation or line type; the
/// severity from what the line records ([`super::severity`]: tampering,
/// destruction, break-glass and failed ceremonies above routine calls).
pub fn syslog_message(cfg: &ForwardConfig, procid: u32, line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let text = |k: &str| v.get(k).and_then(Value::as_str);
    let severity = super::severity::of_line(&v).code();
    let pri = u16::from(cfg.facility) * 8 + u16::from(severity);
    let time = text("time").map(|t| header_field(t, 64));
    let msgid = text("event")
        .or(text("op"))
        .or(text("type"))
        .map(|m| header_field(m, 32));
    format!(
        "<{pri}>1 {} {} {} {procid} {} - {line}",
        time.as_deref().unwrap_or("-"),
        header_field(&cfg.hostname, 255),
        header_field(&cfg.app_name, 48),
        msgid.as_deref().unwrap_or("-"),
    )
}

/// The forwarder's counters, as Status and the metrics show them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForwardStatus {
    /// Where lines are sent, as a URL.
    pub target: String,
    /// Whether a connection is up now.
    pub connected: bool,
    /// Lines sent since start.
    pub sent: u64,
    /// Lines dropped: the queue was full, or a datagram was too large.
    pub dropped: u64,
    /// Of those, alert-class lines (warning or above).
    pub dropped_alerts: u64,
    /// Connections that failed or broke.
    pub errors: u64,
    /// Lines waiting to be sent.
    pub queued: u64,
    /// How long the oldest line not yet sent has waited (0 when idle).
    pub lag_seconds: f64,
    /// Why the last connection failed, until a line is sent again.
    pub last_error: Option<String>,
    /// When a line was last dropped (Unix seconds).
    pub last_drop: Option<i64>,
}

#[derive(Default)]
struct Stats {
    connected: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    dropped_alerts: AtomicU64,
    errors: AtomicU64,
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    /// Unix seconds of the last drop; 0: never.
    last_drop: std::sync::atomic::AtomicI64,
    /// When a failure was last written to the daemon's log (at most one a
    /// minute: a receiver that keeps closing must not flood the journal).
    last_warned: Mutex<Option<Instant>>,
    /// When the line being sent was offered; `None` while idle.
    holding_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

struct Pending {
    line: String,
    at: Instant,
}

/// The sending side, owned by the audit writer.
pub struct Forwarder {
    tx: Mutex<Sender<Pending>>,
    stats: Arc<Stats>,
    target: String,
    max_lines: u64,
    max_bytes: u64,
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixDatagram),
}

/// The share of the queue's bounds (numerator, denominator) routine lines
/// may fill; the rest is kept for alert-class lines.
pub const ROUTINE_SHARE: (u64, u64) = (3, 4);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Fresh connections a line may break before it is given up (a receiver
/// that closes on one particular frame must not stop every later line).
const TRIES_PER_LINE: u32 = 3;
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn connect(t: &Transport) -> std::io::Result<Conn> {
    match t {
        Transport::Tcp(addr) => {
            let s = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)?;
            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
            s.set_nodelay(true)?;
            Ok(Conn::Tcp(s))
        }
        Transport::Unix(path) => {
            let s = UnixDatagram::unbound()?;
            s.connect(path)?;
            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
            Ok(Conn::Unix(s))
        }
    }
}

/// What sending one message came to.
enum Sent {
    Ok,
    /// The message can never be sent (a datagram over the socket's limit).
    TooLarge,
    Broken(std::io::Error),
}

fn send(conn: &mut Conn, msg: &str) -> Sent {
    match conn {
        Conn::Tcp(s) => {
            // A receiver that closed while we were idle: find out before
            // writing, or the kernel takes the line and it is lost.
            if let Some(e) = closed(s) {
                return Sent::Broken(e);
            }
            let frame = format!("{} {msg}", msg.len());
            match s.write_all(frame.as_bytes()) {
                Ok(()) => Sent::Ok,
                Err(e) => Sent::Broken(e),
            }
        }
        Conn::Unix(s) => match s.send(msg.as_bytes()) {
            Ok(_) => Sent::Ok,
            Err(e) if e.raw_os_error() == Some(90) => Sent::TooLarge, // EMSGSIZE
            Err(e) => Sent::Broken(e),
        },
    }
}

/// `Some` if the peer has closed the connection (or it failed).
fn closed(s: &TcpStream) -> Option<std::io::Error> {
    if let Err(e) = s.set_nonblocking(true) {
        return Some(e);
    }
    let mut b = [0u8; 1];
    let r = match s.peek(&mut b) {
        Ok(0) => Some(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the receiver closed the connection",
        )),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => Some(e),
    };
    match s.set_nonblocking(false) {
        Ok(()) => r,
        Err(e) => Some(e),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Stats {
    fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.last_drop.store(unix_now(), Ordering::Relaxed);
    }

    fn failed(&self, e: &std::io::Error, what: &str) {
        self.connected.store(false, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        let text = format!("{what}: {e}");
        let mut warned = self.last_warned.locked();
        if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(error = %text, errors = self.errors.load(Ordering::Relaxed), "audit forwarding interrupted; lines are queued, then dropped when the queue is full");
            *warned = Some(Instant::now());
        }
        *self.last_error.locked() = Some(text);
    }
}

/// The `seq` of a line, for a warning about it.
fn seq_of(line: &str) -> Option<u64> {
    serde_json::from_str::<Value>(line).ok()?["seq"].as_u64()
}

fn run(cfg: ForwardConfig, rx: Receiver<Pending>, stats: Arc<Stats>) {
    let procid = std::process::id();
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(100);
    let pause = |backoff: &mut Duration| {
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    };
    while let Ok(p) = rx.recv() {
        // Held before it leaves the queue's count, so that `drain` never
        // sees neither.
        *stats.holding_since.locked() = Some(p.at);
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats
            .queued_bytes
            .fetch_sub(p.line.len() as u64, Ordering::Relaxed);
        let msg = syslog_message(&cfg, procid, &p.line);
        let mut broken = 0u32;
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(&cfg.transport) {
                    Ok(c) => {
                        stats.connected.store(true, Ordering::Relaxed);
                        conn.insert(c)
                    }
                    Err(e) => {
                        stats.failed(&e, "connecting");
                        pause(&mut backoff);
                        continue;
                    }
                },
            };
            match send(c, &msg) {
                Sent::Ok => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    *stats.last_error.locked() = None;
                    backoff = Duration::from_millis(100);
                    break;
                }
                Sent::TooLarge => {
                    stats.dropped(1);
                    tracing::warn!(
                        bytes = msg.len(),
                        seq = seq_of(&p.line),
                        "audit line too large for a datagram; not forwarded"
                    );
                    break;
                }
                Sent::Broken(e) => {
                    // Sent again on a new connection (a frame cut by the
                    // failure is discarded by the receiver), a few times.
                    stats.failed(&e, "sending");
                    conn = None;
                    broken += 1;
                    if broken >= TRIES_PER_LINE {
                        stats.dropped(1);
                        tracing::warn!(
                            seq = seq_of(&p.line),
                            tries = broken,
                            "the receiver broke the connection on this audit line each time; not forwarded"
                        );
                        break;
                    }
                    pause(&mut backoff);
                }
            }
        }
        *stats.holding_since.locked() = None;
    }
}

impl Forwarder {
    /// Starts the sending thread (it connects when the first line comes).
    pub fn start(cfg: ForwardConfig) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let stats = Arc::new(Stats::default());
        let target = cfg.transport.to_string();
        let (max_lines, max_bytes) = (cfg.buffer_lines.max(1) as u64, cfg.buffer_bytes as u64);
        let s = stats.clone();
        std::thread::Builder::new()
            .name("audit-forward".into())
            .spawn(move || run(cfg, rx, s))?;
        Ok(Forwarder {
            tx: Mutex::new(tx),
            stats,
            target,
            max_lines,
            max_bytes,
        })
    }

    /// Offers a durable line; never blocks. Over the queue's bounds (lines
    /// or bytes) it is dropped and counted. Routine lines (below warning)
    /// may fill the queue only to [`ROUTINE_SHARE`] of its bounds: the rest
    /// is kept for alert-class lines (tampering, destruction, break-glass,
    /// failed ceremonies), so a flood of routine calls cannot push them
    /// out of the off-host copy.
    pub fn offer(&self, line: &str, severity: super::severity::Severity) {
        let s = &self.stats;
        let bytes = line.len() as u64;
        let routine = severity > super::severity::Severity::Warning;
        let (max_lines, max_bytes) = if routine {
            (
                self.max_lines * ROUTINE_SHARE.0 / ROUTINE_SHARE.1,
                self.max_bytes * ROUTINE_SHARE.0 / ROUTINE_SHARE.1,
            )
        } else {
            (self.max_lines, self.max_bytes)
        };
        if s.queued.load(Ordering::Relaxed) >= max_lines
            || s.queued_bytes.load(Ordering::Relaxed) + bytes > max_bytes
        {
            s.dropped(1);
            if !routine {
                s.dropped_alerts.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        s.queued.fetch_add(1, Ordering::Relaxed);
        s.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let p = Pending {
            line: line.to_string(),
            at: Instant::now(),
        };
        let sent = self.tx.locked().send(p);
        if sent.is_err() {
            s.queued.fetch_sub(1, Ordering::Relaxed);
            s.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            s.dropped(1);
        }
    }

    /// Waits until every line offered so far is sent (or given up), for at
    /// most `deadline`: at shutdown, so the SIEM gets the last checkpoint.
    /// Returns the lines still waiting.
    pub fn drain(&self, deadline: Duration) -> u64 {
        let end = Instant::now() + deadline;
        loop {
            let busy = self.stats.holding_since.locked().is_some();
            let queued = self.stats.queued.load(Ordering::Relaxed);
            if queued == 0 && !busy {
                return 0;
            }
            if Instant::now() >= end {
                return queued + u64::from(busy);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The counters now.
    pub fn status(&self) -> ForwardStatus {
        let s = &self.stats;
        let since = *s.holding_since.locked();
        let last_drop = s.last_drop.load(Ordering::Relaxed);
        ForwardStatus {
            target: self.target.clone(),
            connected: s.connected.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            dropped_alerts: s.dropped_alerts.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            lag_seconds: since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
            last_error: s.last_error.locked().clone(),
            last_drop: (last_drop > 0).then_some(last_drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::severity::Severity::{Alert, Informational, Warning};
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    fn cfg(t: Transport) -> ForwardConfig {
        let mut c = ForwardConfig::new(t);
        c.hostname = "host-1".into();
        c
    }

    const LINE: &str = r#"{"code":"OK","op":"GenerateDataKey","prev":"ab","seq":7,"time":"2026-12-02T06:00:00.123Z"}"#;

    #[test]
    fn message_is_rfc5424_with_the_line_unchanged() {
        let c = cfg(Transport::Unix("/dev/log".into()));
        let m = syslog_message(&c, 42, LINE);
        assert_eq!(
            m,
            format!("<86>1 2026-12-02T06:00:00.123Z host-1 keywarden 42 GenerateDataKey - {LINE}")
        );
        // A refused request is a notice; a line without fields still frames.
        let refused = LINE.replace(r#""code":"OK""#, r#""code":"PERMISSION_DENIED""#);
        assert!(syslog_message(&c, 1, &refused).starts_with("<85>1 "));
        assert_eq!(
            syslog_message(&c, 1, "not json"),
            "<86>1 - host-1 keywarden 1 - - not json"
        );
    }

    #[test]
    fn header_fields_are_printable_and_bounded() {
        assert_eq!(header_field("a b\nc", 10), "abc");
        assert_eq!(header_field("", 10), "-");
        assert_eq!(header_field(&"x".repeat(100), 48).len(), 48);
        assert_eq!(facility("authpriv"), Some(10));
        assert_eq!(facility("local7"), Some(23));
        assert_eq!(facility("nope"), None);
    }

    /// Waits until `n` lines are counted as sent: the count follows the
    /// write that the receiver may already have read.
    fn wait_sent(f: &Forwarder, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.status().sent < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads one octet-counted frame.
    fn frame(r: &mut impl BufRead) -> String {
        let mut len = Vec::new();
        r.read_until(b' ', &mut len).unwrap();
        let n: usize = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0; n];
        r.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }

    #[test]
    fn tcp_frames_are_octet_counted_and_survive_a_restart_of_the_receiver() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let f = Forwarder::start(cfg(Transport::Tcp(addr))).unwrap();
        f.offer(LINE, Informational);
        f.offer("second", Informational);
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s);
        assert!(frame(&mut r).ends_with(&format!(" - {LINE}")));
        assert!(frame(&mut r).ends_with(" - - second"));
        wait_sent(&f, 2);
        let st = f.status();
        assert!(st.connected);
        assert_eq!((st.sent, st.dropped), (2, 0));
        // The receiver goes away: the forwarder reconnects and goes on.
        drop(r);
        drop(l);
        let l = TcpListener::bind(addr).unwrap();
        for i in 0..50 {
            f.offer(&format!("after-{i}"), Informational);
            std::thread::sleep(Duration::from_millis(20));
            if f.status().errors > 0 {
                break;
            }
        }
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s);
        assert!(frame(&mut r).contains(" - - after-"));
        assert!(f.status().errors >= 1);
    }

    #[test]
    fn a_flood_of_routine_lines_leaves_room_for_alert_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(Transport::Unix(dir.path().join("absent.sock")));
        c.buffer_lines = 8;
        let f = Forwarder::start(c).unwrap();
        for i in 0..100 {
            f.offer(&format!("routine-{i}"), Informational);
        }
        let st = f.status();
        // The thread holds one; routine lines fill three quarters.
        assert!(st.queued <= 6, "{st:?}");
        assert_eq!(st.dropped_alerts, 0);
        f.offer("tampering", Alert);
        f.offer("destroyed", Warning);
        let st = f.status();
        assert_eq!(st.dropped_alerts, 0, "{st:?}");
        assert!(st.queued >= 7, "{st:?}");
        // The whole queue full: even an alert line is dropped, and counted
        // as one.
        for _ in 0..3 {
            f.offer("more", Alert);
        }
        assert!(f.status().dropped_alerts >= 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // Nobody listens: the thread holds one line, the queue holds two.
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(Transport::Unix(dir.path().join("absent.sock")));
        c.buffer_lines = 2;
        let f = Forwarder::start(c).unwrap();
        let start = Instant::now();
        for i in 0..100 {
            f.offer(&format!("line-{i}"), Informational);
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        let st = f.status();
        assert_eq!(st.sent, 0);
        assert!(st.dropped >= 97, "{st:?}");
        assert!(st.queued <= 2, "{st:?}");
        assert!(!st.connected);
    }

    #[test]
    fn unix_datagrams_carry_one_message_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let f = Forwarder::start(cfg(Transport::Unix(path))).unwrap();
        f.offer(LINE, Informational);
        let mut buf = vec![0; 65536];
        let n = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.starts_with("<86>1 ") && got.ends_with(LINE), "{got}");
    }

    #[test]
    fn the_default_hostname_is_the_hosts() {
        let c = ForwardConfig::new(Transport::Unix("/dev/log".into()));
        let h = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(c.hostname, header_field(&h, 255));
        assert_ne!(c.hostname, "-");
    }

    #[test]
    fn a_receiver_that_keeps_closing_is_not_hammered() {
        // It accepts and closes at once, every time.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicU64::new(0));
        let a = accepts.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                a.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        });
        let f = Forwarder::start(cfg(Transport::Tcp(addr))).unwrap();
        // A line every 10 ms for 1.5 s: each finds the last connection
        // closed.
        for i in 0..150 {
            f.offer(&format!("line-{i}"), Informational);
            std::thread::sleep(Duration::from_millis(10));
        }
        // At least 100 ms between a broken connection and the next: about
        // ten a second at most, not thousands.
        let n = accepts.load(Ordering::Relaxed);
        assert!((2..=30).contains(&n), "{n} connections in 1.5 s");
        assert!(f.status().errors >= 1);
    }

    #[test]
    fn a_line_too_large_for_a_datagram_is_dropped_and_the_next_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = cfg(Transport::Unix(path));
        c.buffer_bytes = 1 << 20;
        let f = Forwarder::start(c).unwrap();
        // Larger than any datagram: never sendable.
        f.offer(&"x".repeat(600 * 1024), Informational);
        f.offer("after", Informational);
        let mut buf = vec![0; 65536];
        let n = rx.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .ends_with(" - - after"));
        wait_sent(&f, 1);
        let st = f.status();
        assert_eq!((st.sent, st.dropped), (1, 1), "{st:?}");
        assert!(st.last_drop.is_some());
    }

    #[test]
    fn the_byte_bound_drops_what_would_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(Transport::Unix(dir.path().join("absent.sock")));
        c.buffer_bytes = 10_000;
        let f = Forwarder::start(c).unwrap();
        for _ in 0..10 {
            f.offer(&"y".repeat(4000), Informational);
        }
        let st = f.status();
        // One held by the thread, at most two in the queue.
        assert!(st.dropped >= 7, "{st:?}");
    }

    #[test]
    fn drain_waits_for_the_queue_and_gives_up_at_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let f = Forwarder::start(cfg(Transport::Tcp(l.local_addr().unwrap()))).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            (0..20).map(|_| frame(&mut r)).count()
        });
        for i in 0..20 {
            f.offer(&format!("l{i}"), Informational);
        }
        assert_eq!(f.drain(Duration::from_secs(10)), 0);
        assert_eq!(t.join().unwrap(), 20);

        let dir = tempfile::tempdir().unwrap();
        let g = Forwarder::start(cfg(Transport::Unix(dir.path().join("absent.sock")))).unwrap();
        g.offer("stuck", Informational);
        let start = Instant::now();
        assert_eq!(g.drain(Duration::from_millis(300)), 1);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
