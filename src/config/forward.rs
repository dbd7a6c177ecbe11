//! `[audit.forward]`: where every durable audit line is also sent.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// `[audit.forward]`: every durable audit line also goes to a SIEM.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    /// `tcp` (RFC 5424, octet counting) or `unix` (a datagram socket).
    transport: String,
    /// `IP:PORT` for tcp (loopback unless allowed), a socket path for unix.
    address: String,
    #[serde(default)]
    allow_non_loopback: bool,
    #[serde(default)]
    facility: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    app_name: Option<String>,
    #[serde(default)]
    buffer_lines: Option<usize>,
    #[serde(default)]
    buffer_bytes: Option<usize>,
}

impl RawForward {
    pub(super) fn parse(self) -> Result<crate::audit::forward::ForwardConfig, ConfigError> {
        use crate::audit::forward::{facility, ForwardConfig, Transport};
        let transport = match self.transport.as_str() {
            "tcp" => Transport::Tcp(
                crate::metrics::http::parse_listen(&self.address, self.allow_non_loopback)
                    .map_err(|e| ConfigError::Invalid(format!("audit.forward.address: {e}")))?,
            ),
            "unix" => {
                let p = PathBuf::from(&self.address);
                if !p.is_absolute() {
                    return Err(ConfigError::Invalid(format!(
                        "audit.forward.address: {:?} is not an absolute socket path",
                        self.address
                    )));
                }
                Transport::Unix(p)
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "audit.forward.transport: {other:?}; expected \"tcp\" or \"unix\""
                )))
            }
        };
        let mut c = ForwardConfig::new(transport);
        if let Some(f) = &self.facility {
            c.facility = facility(f).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "audit.forward.facility: {f:?} is not a syslog facility name (authpriv, local0 ... local7, ...)"
                ))
            })?;
        }
        let printable = |field: &str, v: &str, max: usize| {
            if v.is_empty() || v.len() > max || !v.chars().all(|c| c.is_ascii_graphic()) {
                Err(ConfigError::Invalid(format!(
                    "audit.forward.{field}: 1 to {max} printable ASCII characters without spaces"
                )))
            } else {
                Ok(v.to_string())
            }
        };
        if let Some(h) = &self.hostname {
            c.hostname = printable("hostname", h, 255)?;
        }
        if let Some(a) = &self.app_name {
            c.app_name = printable("app_name", a, 48)?;
        }
        if let Some(n) = self.buffer_lines {
            if !(1..=1_000_000).contains(&n) {
                return Err(ConfigError::Invalid(
                    "audit.forward.buffer_lines: 1 to 1000000".into(),
                ));
            }
            c.buffer_lines = n;
        }
        if let Some(n) = self.buffer_bytes {
            if !(4096..=1 << 30).contains(&n) {
                return Err(ConfigError::Invalid(
                    "audit.forward.buffer_bytes: 4096 to 1073741824".into(),
                ));
            }
            c.buffer_bytes = n;
        }
        Ok(c)
    }
}
