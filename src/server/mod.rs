//! Start-up: hardening, configuration, the HSM token, the seal, the audit
//! log, the socket (systemd socket activation or our own bind) and the gRPC
//! server; the systemd protocol; graceful shutdown.

pub mod conn;
pub mod hardening;
pub mod journal;
pub mod lock;
mod recovery;
pub mod reload;
pub mod systemd;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::audit::{Audit, AuditSink, EventKind, Outcome};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::core::registry::Registry;
use crate::core::Keywarden;
use crate::front::grpc::{datakey::DataKeyApi, keys::KeyApi, operator::OperatorApi, Ctx};
use crate::guard::Guard;
use crate::hsm::pkcs11::Pkcs11Hsm;
use crate::hsm::Hsm;
use crate::proto;
use crate::seal::{store::SealStore, Seal, SealConfig};

/// Largest request the daemon decodes. Anything larger is refused by the
/// transport before it is decoded. A batch of 1024 items with a blob and a
/// modest context each fits; together with [`MAX_CONCURRENT_REQUESTS`] it
/// bounds what hostile requests can make the daemon hold (a decoded map
/// costs about ten times its wire size).
pub const MAX_REQUEST_BYTES: usize = 256 << 10;

/// Requests handled at once, over all connections; more wait their turn.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// HTTP/2 streams one connection may hold open at once (unary calls in
/// flight and open streams such as WatchKeys); a client queues past it.
/// With the per-uid connection limit it bounds the streams one uid holds.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How long in-flight requests may run after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long shutdown waits for the audit forwarder to send what is queued.
const FORWARD_DRAIN: Duration = Duration::from_secs(5);

fn check_privileges(config: &Config) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() && !config.allow_root {
        bail!("refusing to run as root; run as the keywarden user, or set server.allow_root = true (development only)");
    }
    Ok(())
}

fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if !dir.is_dir() {
        bail!("server.state_dir {} is not a directory", dir.display());
    }
    Ok(())
}

/// Binds the socket: a stale socket file is replaced, a live one is an error.
async fn bind_socket(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("another daemon is already serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // The umask (077) made the socket 0600; widen it to the configured group
    // mode only now that it exists.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// A socket passed by systemd (LISTEN_FDS), if any.
fn activated_listener() -> anyhow::Result<Option<UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let Some(std_listener) = fds
        .take_unix_listener(0)
        .context("LISTEN_FDS: descriptor 3 is not a Unix stream socket")?
    else {
        return Ok(None);
    };
    std_listener.set_nonblocking(true)?;
    Ok(Some(UnixListener::from_std(std_listener)?))
}

/// Gives the socket to a group (e.g. `keywarden`): membership grants access.
fn set_socket_group(path: &Path, group: &str) -> anyhow::Result<()> {
    let g = nix::unistd::Group::from_name(group)?
        .ok_or_else(|| anyhow::anyhow!("server.socket_group: unknown group {group:?}"))?;
    nix::unistd::chown(path, None, Some(g.gid))
        .with_context(|| format!("chgrp {group} {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal(
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
) {
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => info!("SIGTERM: shutting down"),
                _ = i.recv() => info!("SIGINT: shutting down"),
            }
        }
        _ => {
            warn!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    check_privileges(&config)?;
    hardening::apply();
    // Installed first, so a SIGTERM during start-up is graceful too.
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    prepare_state_dir(&config.state_dir)?;
    // Before anything is opened or written: one daemon per state directory
    // and audit log (a second one would fork the audit chain).
    let _state_lock = lock::DirLock::take(&config.state_dir, "keywarden.lock")?;
    let audit_dir = config
        .audit
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    std::fs::create_dir_all(&audit_dir)
        .with_context(|| format!("creating audit directory {}", audit_dir.display()))?;
    let _audit_lock = lock::DirLock::take(&audit_dir, ".keywarden-audit.lock")?;

    // The metrics port and token first: a port in use or an unreadable
    // token stops start-up before anything is opened.
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen {addr}"))?,
        ),
        None => None,
    };
    let metrics_token = match &config.metrics.bearer_token_file {
        Some(path) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("metrics.bearer_token_file {}", path.display()))?,
            );
            let token = zeroize::Zeroizing::new(text.trim().to_string());
            if token.is_empty() {
                bail!("metrics.bearer_token_file {}: empty", path.display());
            }
            Some(token)
        }
        None => None,
    };

    let hsm_config = config.clone();
    let hsm = tokio::task::spawn_blocking(move || {
        Pkcs11Hsm::connect(
            &hsm_config.module,
            &hsm_config.token,
            hsm_config.profile.clone(),
            hsm_config.pool_size,
        )
    })
    .await?
    .with_context(|| format!("opening HSM token ({})", config.token))?;
    let metrics = Arc::new(crate::metrics::Metrics::new(config.metrics.per_key));
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

    let registry_path = config.state_dir.join("registry.db");
    let seal_config = SealConfig {
        ceremony_timeout: config.ceremony_timeout,
        allow_single_share: config.allow_single_share,
    };
    let state_dir = config.state_dir.clone();
    let audit = Audit::open(config.audit.clone())
        .map_err(|e| anyhow::anyhow!("audit log {}: {e}", config.audit.file.display()))?;
    audit.set_metrics(metrics.clone());
    // One clock for the core, the seal and the guard's break-glass grants.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let limits_clock = clock.clone();
    let guard = Arc::new(
        Guard::new(
            config.policy.clone(),
            audit.clone(),
            config.audit_disabled,
            clock.clone(),
        )
        .map_err(|e| anyhow::anyhow!("policy: {e}"))?,
    );
    let core_audit = audit.clone();
    let lifecycle = config.lifecycle.clone();
    let node = config.cluster.clone().map(crate::cluster::Node::new);
    let cluster = config.cluster.clone();
    let node_for_core: Option<Arc<dyn crate::core::Membership>> =
        node.clone().map(|n| n as Arc<dyn crate::core::Membership>);
    let core = tokio::task::spawn_blocking(move || -> anyhow::Result<Keywarden> {
        let registry = match &cluster {
            None => Registry::open(&registry_path)
                .with_context(|| format!("opening registry {}", registry_path.display()))?,
            Some(c) => Registry::with_store(Box::new(
                crate::core::registry::postgres::PgStore::open(c.target.clone())
                    .with_context(|| format!("opening the registry at {:?}", c.target))?,
            )),
        };
        // In a cluster the seal files live in the shared database (each
        // node's seal.json mirrors them): a rekey reaches every node.
        let seal_store = match &cluster {
            None => SealStore::new(&state_dir),
            Some(c) => SealStore::new(&state_dir).with_shared(Arc::new(
                crate::cluster::seal::PgSeal::new(c.target.clone(), &c.node_id),
            )),
        };
        let seal = Seal::open(seal_store, seal_config)?
            .with_audit_sink(Arc::new(core_audit.clone()));
        // Evidence that this daemon was initialised, for a seal file that
        // has gone missing (readable while sealed, unverified).
        let on_disk = registry.generation_on_disk().unwrap_or(0);
        let audited = core_audit.witnessed_registry_generation();
        if on_disk > 0 || audited > 0 {
            seal.expect_initialized(&format!(
                "the registry is at generation {on_disk} and the audit log has recorded generation {audited}"
            ));
        }
        let core = Keywarden::start(hsm, registry, seal)
            .with_clock(clock.clone())
            .with_audit(Arc::new(core_audit))
            .with_lifecycle(lifecycle);
        Ok(match node_for_core {
            Some(n) => core.with_membership(n),
            None => core,
        })
    })
    .await??;
    let core = Arc::new(core);
    let cluster_thread = match &node {
        Some(n) => {
            info!(node = %n.node_id(), "a node of a cluster (shared PostgreSQL registry)");
            Some(
                n.start(Arc::downgrade(&core))
                    .context("starting the cluster thread")?,
            )
        }
        None => None,
    };
    if config.dev {
        warn!("DEV MODE: started by `keywarden dev`; never use this daemon for real data");
    }
    if config.audit_disabled {
        warn!("AUDIT DISABLED (benchmark mode): requests are answered without being audited");
    }
    audit.record_event(
        EventKind::DaemonStart,
        Outcome::Ok,
        serde_json::json!({"version": crate::VERSION}),
    );
    let workers = Arc::new(
        crate::gate::workers::Workers::start(core.clone(), config.pool_size)
            .context("starting the data-path workers")?,
    );
    let limits = Arc::new(
        crate::limits::Limits::new(config.limits.clone(), limits_clock)
            .with_metrics(metrics.clone()),
    );
    let gate = Arc::new(crate::gate::Gate::new(
        core.clone(),
        guard.clone(),
        limits,
        metrics.clone(),
        workers.clone(),
    ));
    let ctx = Ctx {
        gate,
        connections: conn::Tracker::new(config.connections, Arc::new(audit.clone())),
        dev_mode: config.dev,
    };
    if let Some(listener) = metrics_listener {
        let endpoint = crate::metrics::http::Endpoint::new(ctx.gate.metrics_page(), metrics_token);
        tokio::spawn(crate::metrics::http::serve(listener, endpoint));
        info!(listen = ?config.metrics.listen, "serving Prometheus metrics at /metrics");
    }
    // The lifecycle scheduler: due rotations and destructions.
    {
        let core = core.clone();
        let tick = config.tick;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let c = core.clone();
                let _ = tokio::task::spawn_blocking(move || c.tick()).await;
            }
        });
    }
    // SIGHUP reloads the policy; an invalid one is refused and reported
    // (to the log, to systemd, and to `keywarden reload`).
    reload::spawn(guard.clone(), config.state_dir.clone());
    info!(state = core.status().seal.phase.as_str(), "started");

    let (listener, activated) = match activated_listener()? {
        Some(l) => (l, true),
        None => (
            bind_socket(&config.socket, config.socket_mode).await?,
            false,
        ),
    };
    if activated {
        info!("serving the socket passed by systemd: its path, mode and group come from keywarden.socket (server.socket, socket_mode and socket_group are not used)");
    } else if let Some(group) = &config.socket_group {
        set_socket_group(&config.socket, group)?;
    }
    info!(
        socket = %config.socket.display(),
        mode = format!("{:o}", config.socket_mode),
        socket_activation = activated,
        "serving"
    );

    // A message that does not decode is refused as INVALID_ARGUMENT by the
    // codec (keywarden-proto) and recorded here as one bounded line.
    let malformed_sink = audit.clone();
    keywarden_proto::codec::on_malformed(Box::new(move |what| {
        malformed_sink.record_event(
            EventKind::MalformedRequest,
            Outcome::Refused,
            serde_json::json!({"code": "InvalidArgument", "message": what}),
        )
    }));
    // Both reflection protocols: grpcurl and most tools speak v1, Python's
    // grpcio-reflection client (and older tools) v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let connections = ctx.connections.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(256)
        // HTTP/2 streams one connection may hold open at once (a stream
        // that is never read holds buffers): clients queue past it.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .layer(crate::metrics::layer::RequestMetricsLayer::new(
            metrics.clone(),
            proto::FILE_DESCRIPTOR_SET,
        ))
        .add_service(
            proto::data_key_service_server::DataKeyServiceServer::new(DataKeyApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            proto::key_service_server::KeyServiceServer::new(KeyApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            proto::mac_service_server::MacServiceServer::new(crate::front::grpc::mac::MacApi::new(
                ctx.clone(),
            ))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            proto::operator_service_server::OperatorServiceServer::new(
                OperatorApi::new(ctx.clone()).with_backup(
                    crate::front::grpc::operator::BackupTarget {
                        state_dir: config.state_dir.clone(),
                        token: crate::backup::token::locate(&config.profile, None),
                    },
                ),
            )
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(conn::incoming(listener, connections.clone()), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    {
        let (c, g) = (core.clone(), guard.clone());
        let summary = tokio::task::spawn_blocking(move || systemd::health(&c, &g))
            .await
            .unwrap_or_else(|e| Err(e.into()));
        match summary {
            Ok(s) => systemd::ready(&s),
            Err(why) => systemd::ready(&format!("unhealthy: {why}")),
        }
        systemd::spawn_watchdog(core.clone(), guard.clone());
        systemd::spawn_status_on_change(core.clone(), guard.clone());
        recovery::spawn(core.clone(), metrics.clone());
    }
    let result = tokio::select! {
        r = &mut server => r,
        _ = shutdown_signal(term.0, term.1) => {
            // Stop accepting; give in-flight requests a deadline, then go.
            systemd::stopping();
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "connections still open after the shutdown deadline; closing them");
                    Ok(())
                }
            }
        }
    };
    if !activated {
        let _ = std::fs::remove_file(&config.socket);
    }
    let c = core.clone();
    let forwarding = audit.clone();
    let _ = tokio::task::spawn_blocking(move || {
        // The data-path workers finish what is queued and let go of the
        // core, so that it is dropped (the registry closed) below.
        workers.shutdown();
        audit.record_event(EventKind::DaemonStop, Outcome::Ok, serde_json::json!({}));
        if let Some(n) = &node {
            n.shutdown();
        }
        if let Some(t) = cluster_thread {
            let _ = t.join();
        }
        c.shutdown();
        // The SIEM's copy gets the stop and the final checkpoint too, if
        // the receiver takes them within a few seconds.
        match forwarding.drain_forward(FORWARD_DRAIN) {
            Some(0) | None => {}
            Some(n) => warn!(
                lines = n,
                "audit lines not forwarded at shutdown; the local log has them"
            ),
        }
    })
    .await;
    result?;
    info!("stopped");
    Ok(())
}
