//! `[registry]`: a node of a cluster on a shared PostgreSQL registry.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// `[registry]`: where the key registry lives. Without `url`, the embedded
/// SQLite database in the state directory (one host); with it, a
/// PostgreSQL database that every node of a cluster shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    #[serde(default)]
    url: Option<String>,
    /// A file holding the database password (mode 0600 or 0400).
    #[serde(default)]
    password_file: Option<PathBuf>,
    /// The CA certificates (PEM) that signed the database server's
    /// certificate: every connection is then TLS, checked against these
    /// alone and the host's name. Needed for a host off this machine.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// This node's name in the cluster (default: the host name).
    #[serde(default)]
    node_id: Option<String>,
    /// Seconds a node's lease lasts (default 3): the longest an admin's
    /// change waits for a node that stopped answering.
    #[serde(default)]
    lease_secs: Option<u64>,
}

/// A cluster node's settings (`[registry] url` set).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The shared PostgreSQL registry (`registry.url` and its TLS and
    /// password settings).
    pub target: crate::core::registry::postgres::PgTarget,
    /// This node's name in the cluster (default: the host name).
    pub node_id: String,
    /// How long a lease lasts (`lease_secs`, default 3 s): the longest an
    /// admin's change waits for a node that stopped answering.
    pub lease: std::time::Duration,
}

impl RawRegistry {
    /// The node's settings, or None without `url` (one host, SQLite).
    /// `resolve` makes relative paths absolute as the rest of the file.
    pub(super) fn parse(
        self,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        Ok(match self {
            RawRegistry {
                url: None,
                password_file: None,
                ca_file: None,
                node_id: None,
                lease_secs: None,
            } => None,
            RawRegistry { url: None, .. } => {
                return Err(ConfigError::Invalid(
                    "registry: password_file, ca_file, node_id and lease_secs need registry.url"
                        .into(),
                ))
            }
            RawRegistry {
                url: Some(url),
                password_file,
                ca_file,
                node_id,
                lease_secs,
            } => Some(cluster_config(
                &url,
                password_file.as_deref().map(resolve),
                ca_file.as_deref().map(resolve).as_deref(),
                node_id,
                lease_secs,
            )?),
        })
    }
}

/// Reads the password (a file, or the systemd credential
/// `registry-password`) and checks the node's settings.
fn cluster_config(
    url: &str,
    password_file: Option<PathBuf>,
    ca_file: Option<&Path>,
    node_id: Option<String>,
    lease_secs: Option<u64>,
) -> Result<ClusterConfig, ConfigError> {
    let password_file = password_file.or_else(|| {
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| PathBuf::from(d).join("registry-password"))
            .filter(|p| p.exists())
    });
    let password = match password_file {
        None => None,
        Some(p) => {
            let pin = crate::secret::Pin::from_file(&p)
                .map_err(|e| ConfigError::Invalid(format!("registry.password_file: {e}")))?;
            Some(zeroize::Zeroizing::new(pin.expose_text().to_string()))
        }
    };
    let target = crate::core::registry::postgres::PgTarget::parse(url, password, ca_file)?;
    let node_id = match node_id {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
    };
    let ok = !node_id.is_empty()
        && node_id.len() <= 64
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(ConfigError::Invalid(format!(
            "registry.node_id: {node_id:?}: 1 to 64 of A-Z a-z 0-9 - _ ."
        )));
    }
    let lease = lease_secs.unwrap_or(3);
    if !(1..=60).contains(&lease) {
        return Err(ConfigError::Invalid(
            "registry.lease_secs: between 1 and 60".into(),
        ));
    }
    Ok(ClusterConfig {
        target,
        node_id,
        lease: std::time::Duration::from_secs(lease),
    })
}
