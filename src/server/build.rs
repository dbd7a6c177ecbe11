//! The daemon's parts, built one step at a time in the order start-up
//! needs them: locks, the metrics port, the HSM, the audit log, the
//! policy, the core (registry and seal), the cluster thread, the gate and
//! its workers, the background work, and the socket. [`super::serve`]
//! composes them; each step says what it needs and returns what it made.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::UnixListener;
use tracing::info;
use zeroize::Zeroizing;

use super::lock::DirLock;
use crate::audit::Audit;
use crate::clock::Clock;
use crate::cluster::Node;
use crate::config::Config;
use crate::core::registry::Registry;
use crate::core::Keywarden;
use crate::gate::Gate;
use crate::guard::Guard;
use crate::hsm::pkcs11::Pkcs11Hsm;
use crate::hsm::Hsm;
use crate::metrics::Metrics;
use crate::seal::{store::SealStore, Seal, SealConfig};

/// The directory locks, held until the daemon stops: one daemon per
/// state directory and audit log (a second one would fork the chain).
pub struct Locks {
    _state: DirLock,
    _audit: DirLock,
}

/// Takes both locks, before anything is opened or written.
pub fn take_locks(config: &Config) -> anyhow::Result<Locks> {
    let state = DirLock::take(&config.state_dir, "keywarden.lock")?;
    let audit_dir = config
        .audit
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    std::fs::create_dir_all(&audit_dir)
        .with_context(|| format!("creating audit directory {}", audit_dir.display()))?;
    let audit = DirLock::take(&audit_dir, ".keywarden-audit.lock")?;
    Ok(Locks {
        _state: state,
        _audit: audit,
    })
}

/// The metrics port and its token, bound and read first: a port in use or
/// an unreadable token stops start-up before anything is opened.
pub struct MetricsPort {
    listener: Option<tokio::net::TcpListener>,
    token: Option<Zeroizing<String>>,
}

impl MetricsPort {
    /// Binds `[metrics] listen` and reads `bearer_token_file`, if set.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let listener = match config.metrics.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("metrics.listen {addr}"))?,
            ),
            None => None,
        };
        let token = match &config.metrics.bearer_token_file {
            Some(path) => {
                let text =
                    Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
                        format!("metrics.bearer_token_file {}", path.display())
                    })?);
                let token = Zeroizing::new(text.trim().to_string());
                if token.is_empty() {
                    bail!("metrics.bearer_token_file {}: empty", path.display());
                }
                Some(token)
            }
            None => None,
        };
        Ok(MetricsPort { listener, token })
    }

    /// Serves `/metrics` from the gate's page, if a port was bound.
    pub fn serve(self, gate: &Gate, config: &Config) {
        if let Some(listener) = self.listener {
            let endpoint = crate::metrics::http::Endpoint::new(gate.metrics_page(), self.token);
            tokio::spawn(crate::metrics::http::serve(listener, endpoint));
            info!(listen = ?config.metrics.listen, "serving Prometheus metrics at /metrics");
        }
    }
}

/// Opens the HSM token, every operation metered.
pub async fn open_hsm(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Arc<dyn Hsm>> {
    let c = config.clone();
    let hsm = tokio::task::spawn_blocking(move || {
        Pkcs11Hsm::connect(&c.module, &c.token, c.profile.clone(), c.pool_size)
    })
    .await?
    .with_context(|| format!("opening HSM token ({})", config.token))?;
    let hsm: Arc<dyn Hsm> = Arc::new(crate::hsm::metered::Metered::new(
        Arc::new(hsm),
        metrics.clone(),
    ));
    info!(
        token = %hsm.token().label,
        serial = %hsm.token().serial,
        profile = hsm.profile_name(),
        pool = hsm.pool_size(),
        session_copies = hsm.session_copies(),
        "HSM token found"
    );
    Ok(hsm)
}

/// Opens the audit log, its commits measured.
pub fn open_audit(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Audit> {
    let audit = Audit::open(config.audit.clone())
        .map_err(|e| anyhow::anyhow!("audit log {}: {e}", config.audit.file.display()))?;
    audit.set_metrics(metrics.clone());
    Ok(audit)
}

/// Loads the policy; its decisions are audited to `audit`.
pub fn open_guard(
    config: &Config,
    audit: &Audit,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Arc<Guard>> {
    let guard = Guard::new(
        config.policy.clone(),
        audit.clone(),
        config.audit_disabled,
        clock.clone(),
    )
    .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    Ok(Arc::new(guard))
}

/// The key registry: SQLite in the state directory, or the cluster's
/// PostgreSQL.
fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    Ok(match &config.cluster {
        None => {
            let path = config.state_dir.join("registry.db");
            Registry::open(&path).with_context(|| format!("opening registry {}", path.display()))?
        }
        Some(c) => Registry::with_store(Box::new(
            crate::core::registry::postgres::PgStore::open(c.target.clone())
                .with_context(|| format!("opening the registry at {:?}", c.target))?,
        )),
    })
}

/// The seal. In a cluster its files live in the shared database (each
/// node's seal.json mirrors them): a rekey reaches every node.
fn open_seal(config: &Config, audit: &Audit, registry: &Registry) -> anyhow::Result<Seal> {
    let store = match &config.cluster {
        None => SealStore::new(&config.state_dir),
        Some(c) => SealStore::new(&config.state_dir).with_shared(Arc::new(
            crate::cluster::seal::PgSeal::new(c.target.clone(), &c.node_id),
        )),
    };
    let seal = Seal::open(
        store,
        SealConfig {
            ceremony_timeout: config.ceremony_timeout,
            allow_single_share: config.allow_single_share,
        },
    )?
    .with_audit_sink(Arc::new(audit.clone()));
    // Evidence that this daemon was initialised, for a seal file that has
    // gone missing (readable while sealed, unverified).
    let on_disk = registry.generation_on_disk().unwrap_or(0);
    let audited = audit.witnessed_registry_generation();
    if on_disk > 0 || audited > 0 {
        seal.expect_initialized(&format!(
            "the registry is at generation {on_disk} and the audit log has recorded generation {audited}"
        ));
    }
    Ok(seal)
}

/// Builds the core over the HSM, the registry and the seal (off the
/// runtime: opening them does I/O), a node of `node`'s cluster if any.
pub async fn open_core(
    config: &Config,
    hsm: Arc<dyn Hsm>,
    audit: &Audit,
    clock: Arc<dyn Clock>,
    node: Option<Arc<Node>>,
) -> anyhow::Result<Arc<Keywarden>> {
    let (config, audit) = (config.clone(), audit.clone());
    let core = tokio::task::spawn_blocking(move || -> anyhow::Result<Keywarden> {
        let registry = open_registry(&config)?;
        let seal = open_seal(&config, &audit, &registry)?;
        let core = Keywarden::start(hsm, registry, seal)
            .with_clock(clock)
            .with_audit(Arc::new(audit))
            .with_lifecycle(config.lifecycle.clone());
        Ok(match node {
            Some(n) => core.with_membership(n),
            None => core,
        })
    })
    .await??;
    Ok(Arc::new(core))
}

/// Starts the cluster thread of a node, if this daemon is one.
pub fn join_cluster(
    node: &Option<Arc<Node>>,
    core: &Arc<Keywarden>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(n) = node else { return Ok(None) };
    info!(node = %n.node_id(), "a node of a cluster (shared PostgreSQL registry)");
    Ok(Some(
        n.start(Arc::downgrade(core))
            .context("starting the cluster thread")?,
    ))
}

/// The gate every front end passes, with its data-path workers and the
/// per-uid limits.
pub fn open_gate(
    config: &Config,
    core: &Arc<Keywarden>,
    guard: &Arc<Guard>,
    metrics: &Arc<Metrics>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<Gate>> {
    let workers = Arc::new(
        crate::gate::workers::Workers::start(core.clone(), config.pool_size)
            .context("starting the data-path workers")?,
    );
    let limits = Arc::new(
        crate::limits::Limits::new(config.limits.clone(), clock).with_metrics(metrics.clone()),
    );
    Ok(Arc::new(Gate::new(
        core.clone(),
        guard.clone(),
        limits,
        metrics.clone(),
        workers,
    )))
}

/// The background work: the lifecycle scheduler (due rotations and
/// destructions) and the policy reload on SIGHUP (an invalid policy is
/// refused and reported to the log, to systemd and to `keywarden reload`).
pub fn spawn_background(config: &Config, core: &Arc<Keywarden>, guard: &Arc<Guard>) {
    let (core, tick) = (core.clone(), config.tick);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        loop {
            interval.tick().await;
            let c = core.clone();
            let _ = tokio::task::spawn_blocking(move || c.keys().tick()).await;
        }
    });
    super::reload::spawn(guard.clone(), config.state_dir.clone());
}

/// The socket: the one systemd passed, or our own bound at
/// `server.socket`. Returns whether it was passed.
pub async fn listen(config: &Config) -> anyhow::Result<(UnixListener, bool)> {
    let (listener, activated) = match super::activated_listener()? {
        Some(l) => (l, true),
        None => (
            super::bind_socket(&config.socket, config.socket_mode).await?,
            false,
        ),
    };
    if activated {
        info!("serving the socket passed by systemd: its path, mode and group come from keywarden.socket (server.socket, socket_mode and socket_group are not used)");
    } else if let Some(group) = &config.socket_group {
        super::set_socket_group(&config.socket, group)?;
    }
    info!(
        socket = %config.socket.display(),
        mode = format!("{:o}", config.socket_mode),
        socket_activation = activated,
        "serving"
    );
    Ok((listener, activated))
}
