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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::forward::{ForwardConfig, Transport};

    fn parse(toml_text: &str) -> Result<ForwardConfig, ConfigError> {
        toml::from_str::<RawForward>(toml_text).unwrap().parse()
    }

    /// The message of a refusal; it must name `field`.
    fn refused(toml_text: &str, field: &str) -> String {
        match parse(toml_text) {
            Err(ConfigError::Invalid(m)) => {
                assert!(
                    m.starts_with(&format!("audit.forward.{field}:")),
                    "{toml_text}: {m}"
                );
                m
            }
            Err(e) => panic!("{toml_text}: {e}"),
            Ok(c) => panic!("{toml_text}: accepted {c:?}"),
        }
    }

    const TCP: &str = "transport = \"tcp\"\naddress = \"127.0.0.1:6514\"\n";

    #[test]
    fn transports_and_addresses_are_checked() {
        let c = parse(TCP).unwrap();
        assert_eq!(
            c.transport,
            Transport::Tcp("127.0.0.1:6514".parse().unwrap())
        );
        assert_eq!(
            parse("transport = \"tcp\"\naddress = \"[::1]:514\"")
                .unwrap()
                .transport,
            Transport::Tcp("[::1]:514".parse().unwrap())
        );
        // Off the host only when allowed.
        refused(
            "transport = \"tcp\"\naddress = \"10.0.0.5:6514\"",
            "address",
        );
        assert!(parse(
            "transport = \"tcp\"\naddress = \"10.0.0.5:6514\"\nallow_non_loopback = true"
        )
        .is_ok());
        refused(
            "transport = \"tcp\"\naddress = \"localhost:514\"",
            "address",
        );
        refused("transport = \"tcp\"\naddress = \"127.0.0.1\"", "address");
        let c = parse("transport = \"unix\"\naddress = \"/dev/log\"").unwrap();
        assert_eq!(c.transport, Transport::Unix("/dev/log".into()));
        let m = refused(
            "transport = \"unix\"\naddress = \"run/relay.sock\"",
            "address",
        );
        assert!(m.contains("not an absolute socket path"), "{m}");
        let m = refused(
            "transport = \"udp\"\naddress = \"127.0.0.1:514\"",
            "transport",
        );
        assert!(m.contains("\"udp\""), "{m}");
        // Both are required, and nothing unknown is accepted.
        assert!(toml::from_str::<RawForward>("transport = \"tcp\"").is_err());
        assert!(toml::from_str::<RawForward>(&format!("{TCP}port = 1")).is_err());
    }

    #[test]
    fn facility_names_map_to_their_rfc5424_numbers() {
        assert_eq!(parse(TCP).unwrap().facility, 10);
        for (name, n) in [
            ("kern", 0),
            ("auth", 4),
            ("authpriv", 10),
            ("local0", 16),
            ("local7", 23),
        ] {
            let c = parse(&format!("{TCP}facility = \"{name}\"")).unwrap();
            assert_eq!(c.facility, n, "{name}");
        }
        for bad in ["local8", "", "security", "16"] {
            refused(&format!("{TCP}facility = \"{bad}\""), "facility");
        }
    }

    #[test]
    fn hostname_and_app_name_are_printable_ascii_within_their_limits() {
        let with = |k: &str, v: &str| format!("{TCP}{k} = {v:?}");
        assert_eq!(
            parse(&with("hostname", &"h".repeat(255)))
                .unwrap()
                .hostname
                .len(),
            255
        );
        assert_eq!(
            parse(&with("app_name", &"a".repeat(48)))
                .unwrap()
                .app_name
                .len(),
            48
        );
        assert_eq!(
            parse(&with("app_name", "kw-prod")).unwrap().app_name,
            "kw-prod"
        );
        assert_eq!(parse(TCP).unwrap().app_name, "keywarden");
        for (field, max) in [("hostname", 255), ("app_name", 48)] {
            let too_long = "x".repeat(max + 1);
            for bad in ["", "two words", "tab\there", "hôte", too_long.as_str()] {
                let m = refused(&with(field, bad), field);
                assert!(m.contains(&format!("1 to {max} printable")), "{m}");
            }
        }
    }

    #[test]
    fn buffer_bounds_are_inclusive_and_absent_ones_take_defaults() {
        let c = parse(TCP).unwrap();
        assert_eq!((c.buffer_lines, c.buffer_bytes), (10_000, 64 << 20));
        for n in [1, 1_000_000] {
            assert_eq!(
                parse(&format!("{TCP}buffer_lines = {n}"))
                    .unwrap()
                    .buffer_lines,
                n
            );
        }
        for n in [0, 1_000_001] {
            refused(&format!("{TCP}buffer_lines = {n}"), "buffer_lines");
        }
        for n in [4096, 1 << 30] {
            assert_eq!(
                parse(&format!("{TCP}buffer_bytes = {n}"))
                    .unwrap()
                    .buffer_bytes,
                n
            );
        }
        for n in [0, 4095, (1 << 30) + 1] {
            refused(&format!("{TCP}buffer_bytes = {n}"), "buffer_bytes");
        }
        // Negative numbers do not fit a usize: refused when read.
        assert!(toml::from_str::<RawForward>(&format!("{TCP}buffer_lines = -1")).is_err());
    }
}
