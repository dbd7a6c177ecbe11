//! Daemon configuration: TOML read into strict raw structs
//! (`deny_unknown_fields`), then validated into [`Config`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hsm::profile::HsmProfile;

mod cluster;
mod forward;
mod sections;
pub use cluster::ClusterConfig;
use cluster::RawRegistry;
use forward::RawForward;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    hsm: RawHsm,
    #[serde(default)]
    seal: Option<RawSeal>,
    #[serde(default)]
    policy: Option<RawPolicyRef>,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    lifecycle: Option<RawLifecycle>,
    #[serde(default)]
    dev: Option<RawDev>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    registry: Option<RawRegistry>,
    #[serde(default)]
    limits: Option<crate::limits::RawLimits>,
}

/// `[metrics]`: the Prometheus endpoint, off unless `listen` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    listen: Option<String>,
    /// Key names in labels (they can be sensitive).
    #[serde(default)]
    per_key: bool,
    #[serde(default)]
    allow_non_loopback: bool,
    /// A file holding the bearer token `/metrics` requires.
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
}

/// What `[metrics]` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; `None`: nowhere (the socket's `keywarden
    /// metrics` still answers).
    pub listen: Option<std::net::SocketAddr>,
    /// Key names in labels of per-version series (they can be sensitive; with
    /// `listen`, only behind a bearer token).
    pub per_key: bool,
    /// `/metrics` answers only requests bearing the token in this file.
    pub bearer_token_file: Option<PathBuf>,
}

/// `[dev]`: written by `keywarden dev` only. It alone unlocks what a
/// production daemon must never do (a threshold of 1, the open policy, a
/// world-accessible socket, the audit off, short destruction delays), and
/// `keywarden serve` refuses it unless started with `--dev`, which only
/// `keywarden dev` passes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDev {
    enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    #[serde(default)]
    destroy_min_delay_secs: Option<u64>,
    #[serde(default)]
    destroy_approvals: Option<usize>,
    #[serde(default)]
    rotate_after_encryptions: Option<u64>,
    #[serde(default)]
    hard_limit_encryptions: Option<u64>,
    #[serde(default)]
    tick_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyRef {
    #[serde(default)]
    file: Option<PathBuf>,
    /// Dev mode only: every local user has every role.
    #[serde(default)]
    open_dev: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    checkpoint_every: Option<u64>,
    #[serde(default)]
    max_file_bytes: Option<u64>,
    /// Benchmarks only (dev mode): answer without auditing. Flagged in
    /// Status and refused outside dev mode.
    #[serde(default)]
    benchmark_disable: bool,
    #[serde(default)]
    forward: Option<RawForward>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeal {
    #[serde(default)]
    ceremony_timeout_secs: Option<u64>,
    #[serde(default)]
    allow_single_share: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    socket: PathBuf,
    state_dir: PathBuf,
    #[serde(default)]
    socket_mode: Option<u32>,
    #[serde(default)]
    allow_root: bool,
    /// Dev mode only: allow a socket mode that lets every local user
    /// connect (the policy still decides what they may do).
    #[serde(default)]
    allow_world_socket: bool,
    /// Group that owns the socket (membership grants access).
    #[serde(default)]
    socket_group: Option<String>,
    /// Open connections one uid may hold (default 64).
    #[serde(default)]
    max_connections_per_uid: Option<usize>,
    /// Open connections in all (default 1024).
    #[serde(default)]
    max_connections: Option<usize>,
    /// Seconds a new connection may send nothing (default 10).
    #[serde(default)]
    handshake_timeout_secs: Option<u64>,
    /// Seconds a connection may be silent before it is closed (default 120).
    #[serde(default)]
    idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    profile: PathBuf,
    #[serde(default)]
    module: Option<PathBuf>,
    #[serde(default)]
    token_label: Option<String>,
    #[serde(default)]
    token_serial: Option<String>,
    #[serde(default)]
    pool_size: Option<u32>,
}

/// How the token is chosen: never by slot number, which changes across
/// re-plugs and SoftHSM restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose label is this (`hsm.token_label`).
    Label(String),
    /// The token whose serial number is this (`hsm.token_serial`).
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label {l:?}"),
            TokenSelector::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Unix socket the gRPC API is served on (unless systemd passes one).
    pub socket: PathBuf,
    /// The group the socket is given (membership grants access); `None`: the
    /// group it was created with.
    pub socket_group: Option<String>,
    /// The socket's permission bits (default 0660; bits for other users only
    /// in dev mode).
    pub socket_mode: u32,
    /// How many connections are accepted and how long they may stay silent.
    pub connections: crate::server::conn::ConnLimits,
    /// The daemon's own directory: its lock, the seal files, the SQLite
    /// registry and, by default, the audit log.
    pub state_dir: PathBuf,
    /// Running as root is allowed (development only).
    pub allow_root: bool,
    /// The HSM profile `hsm.profile` names: what the token can do and how.
    pub profile: HsmProfile,
    /// The PKCS#11 module to load (`hsm.module`, or the first of the
    /// profile's paths that exists).
    pub module: PathBuf,
    /// Which token of the module to use.
    pub token: TokenSelector,
    /// HSM sessions to keep open: `hsm.pool_size` (default twice the cores),
    /// at most the profile's `max_sessions`.
    pub pool_size: usize,
    /// An unseal or rekey in progress expires after this long.
    pub ceremony_timeout: std::time::Duration,
    /// A threshold of 1 is allowed (dev mode only).
    pub allow_single_share: bool,
    /// Dev mode (`[dev] enabled = true`): shown in Status and every log
    /// line; the only switch for the development-only settings.
    pub dev: bool,
    /// Where the policy is read from.
    pub policy: crate::guard::PolicySource,
    /// `[audit]`: the log's file, checkpoints, rotation and forwarding.
    pub audit: crate::audit::AuditConfig,
    /// Benchmark mode: requests are not audited (dev only).
    pub audit_disabled: bool,
    /// `[lifecycle]`: encryption limits, rotation, destruction delays and
    /// approvals.
    pub lifecycle: crate::core::LifecycleConfig,
    /// How often the scheduler looks for due rotations and destructions.
    pub tick: std::time::Duration,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Set when the registry is a shared PostgreSQL database.
    pub cluster: Option<ClusterConfig>,
    /// `[limits]`: what one uid may make the daemon spend.
    pub limits: crate::limits::LimitsConfig,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it failed with.
        source: std::io::Error,
    },
    /// The config file is not TOML, or not the configuration's fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is refused; the message names the field and why.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The config file could be changed by someone other than root or the
    /// daemon's user (or its metadata could not be read).
    #[error("invalid configuration: {0}")]
    Untrusted(crate::policy::PolicyError),
    /// The HSM profile the config names was refused.
    #[error("invalid configuration: hsm.profile: {0}")]
    Profile(crate::hsm::profile::ProfileError),
    /// The `[registry]` PostgreSQL target was refused.
    #[error("invalid configuration: {0}")]
    Registry(#[from] crate::core::registry::postgres::TargetError),
    /// A `[dev]` config given to a daemon not started by `keywarden dev`.
    #[error("{path}: this is a development configuration ([dev] enabled = true); `keywarden serve` runs it only when started by `keywarden dev`")]
    DevConfig {
        /// The config file.
        path: PathBuf,
    },
}

impl Config {
    /// Reads, parses and validates a config file (and the HSM profile it names).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_for(path, false)
    }

    /// As [`load`](Self::load); a `[dev]` configuration is accepted only
    /// when `dev_allowed` (the hidden `serve --dev` that `keywarden dev`
    /// passes).
    pub fn load_for(path: &Path, dev_allowed: bool) -> Result<Self, ConfigError> {
        let c = Self::load_any(path)?;
        if c.dev && !dev_allowed {
            return Err(ConfigError::DevConfig {
                path: path.to_path_buf(),
            });
        }
        Ok(c)
    }

    fn load_any(path: &Path) -> Result<Self, ConfigError> {
        crate::policy::check_trusted_file(path).map_err(ConfigError::Untrusted)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base)
    }

    /// Parses and validates config text; relative paths resolve against
    /// `base` (used by the fuzz target).
    pub fn parse_str(text: &str, base: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(text, &base.join("keywarden.toml"), base)
    }

    fn from_toml(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let dev = raw.dev.as_ref().is_some_and(|d| d.enabled);
        let server = sections::server(&raw.server, dev, &resolve)?;
        let token = sections::token(&raw.hsm)?;
        let seal = sections::seal(raw.seal, dev)?;
        let policy = sections::policy(raw.policy, dev, &resolve)?;
        let (mut audit, audit_disabled) =
            sections::audit(raw.audit, dev, &server.state_dir, &resolve)?;
        let (lifecycle, tick) = sections::lifecycle(raw.lifecycle.unwrap_or_default(), dev)?;
        let (profile, module, pool_size) = sections::hsm(&raw.hsm, &resolve)?;
        let metrics = sections::metrics(raw.metrics.unwrap_or_default(), &resolve)?;
        let cluster = raw.registry.unwrap_or_default().parse(&resolve)?;
        audit.node = cluster.as_ref().map(|c| c.node_id.clone());
        let limits = raw
            .limits
            .unwrap_or_default()
            .parse()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Config {
            socket: server.socket,
            socket_group: raw.server.socket_group,
            socket_mode: server.socket_mode,
            connections: server.connections,
            state_dir: server.state_dir,
            allow_root: raw.server.allow_root,
            profile,
            module,
            token,
            pool_size,
            ceremony_timeout: seal.0,
            allow_single_share: seal.1,
            dev,
            policy,
            audit,
            audit_disabled,
            lifecycle,
            tick,
            metrics,
            cluster,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_profile(dir: &Path) -> PathBuf {
        let module = dir.join("libfake.so");
        std::fs::write(&module, b"").ok();
        let p = dir.join("p.toml");
        std::fs::write(
            &p,
            format!(
                "name = \"t\"\nmodule_paths = [{:?}]\nsession_key_copies = false\nmax_sessions = 4\ngcm_tag_failure_codes = []\n",
                module
            ),
        )
        .ok();
        p
    }

    fn parse(dir: &Path, hsm_extra: &str, server_extra: &str) -> Result<Config, ConfigError> {
        let profile = write_profile(dir);
        let text = format!(
            "[server]\nsocket = \"s.sock\"\nstate_dir = \"state\"\n{server_extra}\n[hsm]\nprofile = {profile:?}\n{hsm_extra}\n[policy]\nfile = \"policy.toml\"\n"
        );
        Config::from_toml(&text, &dir.join("c.toml"), dir)
    }

    #[test]
    fn valid_config_resolves_relative_paths_and_caps_pool() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(dir.path(), "token_label = \"kw\"\npool_size = 100", "").unwrap();
        assert_eq!(c.socket, dir.path().join("s.sock"));
        assert_eq!(c.ceremony_timeout.as_secs(), 900);
        assert!(!c.allow_single_share);
        assert_eq!(c.token, TokenSelector::Label("kw".into()));
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.socket_mode, 0o660);
    }

    /// Only `[dev] enabled = true` unlocks the development settings, each
    /// of them refused without it; `serve` without `--dev` refuses a
    /// `[dev]` file.
    #[test]
    fn dev_settings_need_the_dev_section() {
        let dir = tempfile::tempdir().unwrap();
        let profile = write_profile(dir.path());
        let base = format!(
            "[server]\nsocket = \"s.sock\"\nstate_dir = \"state\"\nSERVER\n[hsm]\nprofile = {profile:?}\ntoken_label = \"kw\"\nREST\n"
        );
        let policy = "[policy]\nfile = \"policy.toml\"\n";
        let cases = [
            (
                "",
                "[seal]\nallow_single_share = true\n",
                "seal.allow_single_share",
            ),
            ("", "[policy]\nopen_dev = true\n", "policy.open_dev"),
            (
                "allow_world_socket = true\nsocket_mode = 0o666",
                "",
                "allow_world_socket",
            ),
            (
                "",
                "[audit]\nbenchmark_disable = true\n",
                "audit.benchmark_disable",
            ),
            (
                "",
                "[lifecycle]\ndestroy_min_delay_secs = 2\n",
                "destroy_min_delay_secs",
            ),
        ];
        for (server, rest, field) in cases {
            let with_policy = if rest.contains("[policy]") {
                rest.to_string()
            } else {
                format!("{rest}{policy}")
            };
            let text = base.replace("SERVER", server).replace("REST", &with_policy);
            let e = Config::from_toml(&text, &dir.path().join("c.toml"), dir.path()).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
            let dev = format!("{text}[dev]\nenabled = true\n");
            let c = Config::from_toml(&dev, &dir.path().join("c.toml"), dir.path()).unwrap();
            assert!(c.dev, "{field}");
        }
        // The file as `keywarden dev` writes it: refused by a plain serve.
        let path = dir.path().join("dev.toml");
        std::fs::write(
            &path,
            format!(
                "{}[dev]\nenabled = true\n",
                base.replace("SERVER", "").replace("REST", policy)
            ),
        )
        .unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::DevConfig { .. }), "{e}");
        assert!(Config::load_for(&path, true).unwrap().dev);
        // `[dev] enabled = false` is a production file.
        let off = format!(
            "{}[dev]\nenabled = false\n",
            base.replace("SERVER", "").replace(
                "REST",
                "[seal]\nallow_single_share = true\n[policy]\nfile = \"p\"\n"
            )
        );
        assert!(Config::from_toml(&off, &dir.path().join("c.toml"), dir.path()).is_err());
    }

    #[test]
    fn the_registry_section_makes_a_cluster_node_and_refuses_what_it_cannot_honour() {
        let dir = tempfile::tempdir().unwrap();
        let with = |registry: &str| {
            parse(
                dir.path(),
                &format!("token_label = \"kw\"\n[registry]\n{registry}"),
                "",
            )
        };
        let c =
            with("url = \"host=/run/postgresql dbname=kw user=kw\"\nnode_id = \"app-1\"").unwrap();
        let cl = c.cluster.expect("a cluster node");
        assert_eq!(cl.node_id, "app-1");
        assert_eq!(cl.lease.as_secs(), 3);
        assert!(parse(dir.path(), "token_label = \"kw\"", "")
            .unwrap()
            .cluster
            .is_none());
        let refused = [
            ("url = \"postgresql://kw:secret@db/kw\"", "password_file"),
            (
                "url = \"postgresql://db/kw?sslmode=require\"",
                "sslmode=require",
            ),
            ("url = \"dbname=kw\"", "names no host"),
            ("url = \"host=db.example.org user=kw\"", "registry.ca_file"),
            ("url = \"host=10.1.2.3 user=kw\"", "off this machine"),
            (
                "url = \"host=/run/postgresql\"\nca_file = \"ca.pem\"",
                "Unix socket",
            ),
            (
                "url = \"host=localhost\"\nca_file = \"none.pem\"",
                "none.pem",
            ),
            (
                "url = \"host=/run/postgresql\"\nnode_id = \"a b\"",
                "registry.node_id",
            ),
            (
                "url = \"host=/run/postgresql\"\nlease_secs = 0",
                "registry.lease_secs",
            ),
            ("node_id = \"a\"", "need registry.url"),
        ];
        for (text, needle) in refused {
            match with(text) {
                Err(e @ (ConfigError::Invalid(_) | ConfigError::Registry(_))) => {
                    let m = e.to_string();
                    assert!(m.contains(needle), "{text}: {m}")
                }
                Err(e) => panic!("{text}: {e}"),
                Ok(_) => panic!("{text}: accepted"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = parse(dir.path(), "token_label = \"kw\"\npin = \"1234\"", "").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn token_must_be_named_and_no_pin_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let e = parse(dir.path(), "", "").unwrap_err();
        assert!(e.to_string().contains("token_label"), "{e}");
        // PINs are derived from the unseal key; a PIN file is not a field.
        let e = parse(dir.path(), "token_label = \"kw\"\npin_file = \"p\"", "").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = parse(dir.path(), "token_label = \"kw\"\ntoken_serial = \"1\"", "").unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn world_accessible_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = parse(dir.path(), "token_label = \"kw\"", "socket_mode = 0o666").unwrap_err();
        assert!(e.to_string().contains("socket_mode"), "{e}");
    }
}
