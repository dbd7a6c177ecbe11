//! Client commands: one file per command group. Each talks to the daemon
//! over its socket and prints text or (`--output json`) stable JSON.

pub mod audit;
pub mod backup;
pub mod datakey;
pub mod envelope;
pub mod key;
pub mod operator;
pub mod status;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail};
use clap::ValueEnum;

use keywarden_client::Client;

/// `println!` for text output: whatever the daemon stored (reasons,
/// descriptions, labels, names) is printed with every control character
/// escaped, so nothing can move the cursor or fake a line on the terminal.
macro_rules! out {
    ($($arg:tt)*) => {
        println!("{}", keywarden::core::validate::escape_lines(&format!($($arg)*)))
    };
}
pub(crate) use out;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Connects with an error that names the socket.
pub async fn client(socket: &Path) -> anyhow::Result<Client> {
    Client::connect(socket).await.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        anyhow!(
            "cannot connect to the daemon at {} ({cause}); is it running? set --socket or KEYWARDEN_SOCKET",
            socket.display()
        )
    })
}

/// A gRPC status as a one-line error: code and message.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

/// Parses repeated `--context k=v` flags.
pub fn parse_context(pairs: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--context {p:?}: expected KEY=VALUE");
        };
        if out.insert(k.to_string(), v.to_string()).is_some() {
            bail!("--context: key {k:?} given twice");
        }
    }
    Ok(out)
}

/// A Unix time for people: RFC 3339 in UTC (JSON output keeps numbers).
pub fn when(secs: i64) -> String {
    if secs <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_flags() {
        let c = parse_context(&["a=1".into(), "b=x=y".into(), "e=".into()]).unwrap();
        assert_eq!(c["a"], "1");
        assert_eq!(c["b"], "x=y");
        assert_eq!(c["e"], "");
        assert!(parse_context(&["novalue".into()]).is_err());
        assert!(parse_context(&["a=1".into(), "a=2".into()]).is_err());
    }
}
