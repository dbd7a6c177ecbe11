//! The `/metrics` endpoint: plain HTTP/1.1 on a loopback address, one
//! request per connection, GET only. Nothing else is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What renders the page at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

const MAX_REQUEST: usize = 8 * 1024;

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, render)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body, kind) = match (method, path) {
        ("GET", "/metrics") => {
            let render = render.clone();
            let body = tokio::task::spawn_blocking(move || render())
                .await
                .unwrap_or_default();
            ("200 OK", body, "text/plain; version=0.0.4; charset=utf-8")
        }
        ("GET", _) => (
            "404 Not Found",
            "only /metrics is served\n".to_string(),
            "text/plain",
        ),
        _ => (
            "405 Method Not Allowed",
            "GET only\n".to_string(),
            "text/plain",
        ),
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
}
