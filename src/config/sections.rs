//! One function per section of `keywarden.toml`: each validates its raw
//! table and returns what the daemon uses, or the one error that names
//! the setting at fault. Settings that only a development daemon may use
//! are refused here unless `[dev] enabled = true`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ConfigError, MetricsConfig, RawAudit, RawForward, RawHsm, RawLifecycle, RawMetrics,
    RawPolicyRef, RawSeal, RawServer, TokenSelector,
};
use crate::guard::PolicySource;
use crate::hsm::profile::HsmProfile;

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// `[server]` as the daemon uses it.
pub(super) struct Server {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub connections: crate::server::conn::ConnLimits,
    pub state_dir: PathBuf,
}

/// `[server]`: the socket, its mode, the connection limits.
pub(super) fn server(
    raw: &RawServer,
    dev: bool,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Server, ConfigError> {
    if raw.allow_world_socket && !dev {
        return Err(invalid(
            "server.allow_world_socket is allowed in dev mode only ([dev] enabled = true)",
        ));
    }
    let socket_mode = raw.socket_mode.unwrap_or(0o660);
    if socket_mode & 0o007 != 0 && !raw.allow_world_socket {
        return Err(invalid(format!(
            "server.socket_mode {socket_mode:o} gives access to every user; use 0660 or stricter"
        )));
    }
    let d = crate::server::conn::ConnLimits::default();
    let connections = crate::server::conn::ConnLimits {
        per_uid: raw.max_connections_per_uid.unwrap_or(d.per_uid),
        total: raw.max_connections.unwrap_or(d.total),
        handshake: raw
            .handshake_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(d.handshake),
        idle: raw
            .idle_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(d.idle),
    };
    if connections.per_uid == 0
        || connections.total < connections.per_uid
        || connections.total > 65_536
        || connections.handshake.is_zero()
        || connections.idle < connections.handshake
    {
        return Err(invalid(
            "server: max_connections_per_uid must be at least 1 and at most max_connections (at most 65536); handshake_timeout_secs at least 1 and at most idle_timeout_secs",
        ));
    }
    if socket_mode & !0o777 != 0 {
        return Err(invalid(format!(
            "server.socket_mode {socket_mode:o} is not a permission mode"
        )));
    }
    let socket = resolve(&raw.socket);
    if socket.as_os_str().len() > 100 {
        return Err(invalid(format!(
            "server.socket path is too long for a Unix socket ({} bytes, at most 100)",
            socket.as_os_str().len()
        )));
    }
    Ok(Server {
        socket,
        socket_mode,
        connections,
        state_dir: resolve(&raw.state_dir),
    })
}

/// `[hsm]` token: by label or serial, never by slot number.
pub(super) fn token(raw: &RawHsm) -> Result<TokenSelector, ConfigError> {
    match (&raw.token_label, &raw.token_serial) {
        (Some(l), None) if !l.trim().is_empty() => Ok(TokenSelector::Label(l.clone())),
        (None, Some(s)) if !s.trim().is_empty() => Ok(TokenSelector::Serial(s.clone())),
        (Some(_), Some(_)) => Err(invalid(
            "set one of hsm.token_label and hsm.token_serial, not both",
        )),
        _ => Err(invalid(
            "hsm.token_label or hsm.token_serial is required (slot numbers are not accepted)",
        )),
    }
}

/// `[seal]`: the ceremony timeout, and whether one share may unseal
/// (development only).
pub(super) fn seal(raw: Option<RawSeal>, dev: bool) -> Result<(Duration, bool), ConfigError> {
    let seal = raw.unwrap_or(RawSeal {
        ceremony_timeout_secs: None,
        allow_single_share: false,
    });
    let timeout = seal.ceremony_timeout_secs.unwrap_or(900);
    if !(10..=86_400).contains(&timeout) {
        return Err(invalid(format!(
            "seal.ceremony_timeout_secs {timeout} must be between 10 and 86400"
        )));
    }
    if seal.allow_single_share && !dev {
        return Err(invalid(
            "seal.allow_single_share is allowed in dev mode only ([dev] enabled = true)",
        ));
    }
    Ok((Duration::from_secs(timeout), seal.allow_single_share))
}

/// `[policy]`: a file, or (development only) every local user.
pub(super) fn policy(
    raw: Option<RawPolicyRef>,
    dev: bool,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<PolicySource, ConfigError> {
    let policy = match raw {
        Some(RawPolicyRef {
            file: Some(f),
            open_dev: false,
        }) => PolicySource::File(resolve(&f)),
        Some(RawPolicyRef {
            file: None,
            open_dev: true,
        }) => PolicySource::OpenDev,
        Some(RawPolicyRef {
            file: Some(_),
            open_dev: true,
        }) => {
            return Err(invalid(
                "set one of policy.file and policy.open_dev, not both",
            ))
        }
        _ => {
            return Err(invalid(
                "policy.file is required: without a policy every call would be denied",
            ))
        }
    };
    if matches!(policy, PolicySource::OpenDev) && !dev {
        return Err(invalid(
            "policy.open_dev is allowed in dev mode only ([dev] enabled = true)",
        ));
    }
    Ok(policy)
}

/// `[audit]`: the log file (under the state directory unless set), its
/// checkpoints and rotation, forwarding, and (development only) no log.
pub(super) fn audit(
    raw: Option<RawAudit>,
    dev: bool,
    state_dir: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(crate::audit::AuditConfig, bool), ConfigError> {
    let audit = raw.unwrap_or(RawAudit {
        file: None,
        checkpoint_every: None,
        max_file_bytes: None,
        benchmark_disable: false,
        forward: None,
    });
    if audit.benchmark_disable && !dev {
        return Err(invalid(
            "audit.benchmark_disable is allowed in dev mode only ([dev] enabled = true)",
        ));
    }
    let config = crate::audit::AuditConfig {
        file: audit
            .file
            .map(|f| resolve(&f))
            .unwrap_or_else(|| state_dir.join("audit").join("audit.log")),
        checkpoint_every: audit.checkpoint_every.unwrap_or(1000).max(1),
        max_file_bytes: audit.max_file_bytes.unwrap_or(64 << 20).max(4096),
        forward: audit.forward.map(RawForward::parse).transpose()?,
        // Set by the caller for a cluster node.
        node: None,
    };
    Ok((config, audit.benchmark_disable))
}

/// `[lifecycle]`: destruction delay and approvals, encryption limits, the
/// scheduler's tick.
pub(super) fn lifecycle(
    lc: RawLifecycle,
    dev: bool,
) -> Result<(crate::core::LifecycleConfig, Duration), ConfigError> {
    let mut lifecycle = crate::core::LifecycleConfig::default();
    if let Some(s) = lc.destroy_min_delay_secs {
        if s < 1 || (s < 86_400 && !dev) {
            return Err(invalid(
                "lifecycle.destroy_min_delay_secs below a day is allowed in dev mode only",
            ));
        }
        if s > 365 * 86_400 {
            return Err(invalid(
                "lifecycle.destroy_min_delay_secs cannot exceed the 365-day maximum",
            ));
        }
        lifecycle.destroy_min_delay = Duration::from_secs(s);
    }
    if let Some(n) = lc.destroy_approvals {
        if n == 0 || n > 16 {
            return Err(invalid(
                "lifecycle.destroy_approvals must be between 1 and 16",
            ));
        }
        lifecycle.destroy_approvals = n;
    }
    let hard = lc.hard_limit_encryptions.unwrap_or(1 << 32);
    if hard == 0 || hard > 1 << 32 {
        return Err(invalid(
            "lifecycle.hard_limit_encryptions must be between 1 and 2^32",
        ));
    }
    lifecycle.hard_limit_encryptions = hard;
    lifecycle.rotate_after_encryptions = lc.rotate_after_encryptions.unwrap_or(1 << 30).min(hard);
    lifecycle.reserve_block = lifecycle.reserve_block.min(hard).max(1);
    if dev {
        lifecycle.min_rotation_period = Duration::from_secs(1);
    }
    let tick = Duration::from_secs(lc.tick_secs.unwrap_or(5).clamp(1, 3600));
    Ok((lifecycle, tick))
}

/// `[hsm]`: the profile, the module it finds (or the one named), and the
/// session pool (twice the cores unless set, at most the profile's).
pub(super) fn hsm(
    raw: &RawHsm,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(HsmProfile, PathBuf, usize), ConfigError> {
    let profile = HsmProfile::load(&resolve(&raw.profile)).map_err(ConfigError::Profile)?;
    let module = match &raw.module {
        Some(m) => resolve(m),
        None => profile.find_module().ok_or_else(|| {
            invalid(format!(
                "no PKCS#11 module of profile {:?} exists on this host (tried {:?}); set hsm.module",
                profile.name, profile.module_paths
            ))
        })?,
    };
    if !module.is_file() {
        return Err(invalid(format!(
            "hsm.module {} does not exist",
            module.display()
        )));
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let wanted = raw.pool_size.map(|n| n as usize).unwrap_or(cores * 2);
    if wanted == 0 {
        return Err(invalid("hsm.pool_size must be at least 1"));
    }
    let pool_size = wanted.min(profile.max_sessions as usize).max(1);
    Ok((profile, module, pool_size))
}

/// `[metrics]`: the loopback port, per-key series (only behind a token),
/// the token file.
pub(super) fn metrics(
    raw: RawMetrics,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<MetricsConfig, ConfigError> {
    let metrics = MetricsConfig {
        listen: match &raw.listen {
            Some(l) => Some(
                crate::metrics::http::parse_listen(l, raw.allow_non_loopback)
                    .map_err(|e| invalid(e.to_string()))?,
            ),
            None => None,
        },
        per_key: raw.per_key,
        bearer_token_file: raw.bearer_token_file.as_deref().map(resolve),
    };
    if metrics.per_key && metrics.listen.is_some() && metrics.bearer_token_file.is_none() {
        return Err(invalid(
            "metrics.per_key: key names would be readable by every local user at metrics.listen; set metrics.bearer_token_file too (or read them with `keywarden metrics`, which needs a role)",
        ));
    }
    Ok(metrics)
}
