//! Start-up: hardening, configuration, the HSM token, the seal, the audit
//! log, the socket (systemd socket activation or our own bind) and the gRPC
//! server; the systemd protocol; graceful shutdown.

mod build;
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
use crate::core::Keywarden;
use crate::front::grpc::Ctx;

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

/// Runs the daemon until SIGTERM or SIGINT: its parts built in order
/// (`build.rs`), the gRPC front end served over the gate, then a graceful
/// stop.
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
    let _locks = build::take_locks(&config)?;
    let metrics_port = build::MetricsPort::bind(&config).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new(config.metrics.per_key));
    let hsm = build::open_hsm(&config, &metrics).await?;
    let audit = build::open_audit(&config, &metrics)?;
    // One clock for the core, the seal, the limits and break-glass grants.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let guard = build::open_guard(&config, &audit, &clock)?;
    let node = config.cluster.clone().map(crate::cluster::Node::new);
    let core = build::open_core(&config, hsm, &audit, clock.clone(), node.clone()).await?;
    let cluster_thread = build::join_cluster(&node, &core)?;
    announce(&config, &audit);
    let gate = build::open_gate(&config, &core, &guard, &metrics, clock)?;
    metrics_port.serve(&gate, &config);
    build::spawn_background(&config, &core, &guard);
    info!(state = core.status().seal.phase.as_str(), "started");

    let (listener, activated) = build::listen(&config).await?;
    let ctx = Ctx {
        gate: gate.clone(),
        connections: conn::Tracker::new(config.connections, Arc::new(audit.clone())),
        dev_mode: config.dev,
        metrics,
    };
    let backup = crate::front::grpc::operator::BackupTarget {
        state_dir: config.state_dir.clone(),
        token: crate::backup::token::locate(&config.profile, None),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = crate::front::grpc::serve(ctx, backup, listener, Arc::new(audit.clone()), async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    systemd::start(&core, &guard).await;
    recovery::spawn(core.clone(), gate.metrics());
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
    stop(Stopping {
        gate,
        core,
        audit,
        node,
        cluster_thread,
    })
    .await;
    result?;
    info!("stopped");
    Ok(())
}

/// Warns of a development or benchmark daemon, and records the start.
fn announce(config: &Config, audit: &Audit) {
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
}

/// What is let go at the end, in order.
struct Stopping {
    gate: Arc<crate::gate::Gate>,
    core: Arc<Keywarden>,
    audit: Audit,
    node: Option<Arc<crate::cluster::Node>>,
    cluster_thread: Option<std::thread::JoinHandle<()>>,
}

/// Stops the data path, records the stop, leaves the cluster, closes the
/// core, and gives the audit forwarder a few seconds to send what is
/// queued.
async fn stop(s: Stopping) {
    let _ = tokio::task::spawn_blocking(move || {
        // The data-path workers finish what is queued and let go of the
        // core, so that it is dropped (the registry closed) below.
        s.gate.workers().shutdown();
        s.audit
            .record_event(EventKind::DaemonStop, Outcome::Ok, serde_json::json!({}));
        if let Some(n) = &s.node {
            n.shutdown();
        }
        if let Some(t) = s.cluster_thread {
            let _ = t.join();
        }
        s.core.shutdown();
        // The SIEM's copy gets the stop and the final checkpoint too, if
        // the receiver takes them within a few seconds.
        match s.audit.drain_forward(FORWARD_DRAIN) {
            Some(0) | None => {}
            Some(n) => warn!(
                lines = n,
                "audit lines not forwarded at shutdown; the local log has them"
            ),
        }
    })
    .await;
}
