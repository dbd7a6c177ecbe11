//! The systemd protocol (pure Rust, `sd-notify`): READY=1 once the socket
//! is served (sealed counts as ready), STATUS= with the seal and health,
//! WATCHDOG=1 driven by a real health check (the HSM answers, the audit log
//! is writable), RELOADING=1 on policy reload, STOPPING=1 on shutdown.
//! Without NOTIFY_SOCKET every call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

use crate::audit::AuditError;
use crate::core::Keywarden;
use crate::guard::Guard;
use crate::hsm::HsmError;

/// READY=1 with `status` as STATUS=.
pub(crate) fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=`status`.
pub(crate) fn status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

/// RELOADING=1: a policy reload began.
pub(crate) fn reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

/// READY=1: the reload is over, whatever its outcome.
pub(crate) fn reloaded() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// STOPPING=1: the daemon is shutting down.
pub(crate) fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Why the health check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The audit log cannot be written.
    #[error("audit log unwritable: {0}")]
    Audit(AuditError),
    /// The HSM does not answer its health probe.
    #[error("HSM unreachable: {0}")]
    Hsm(HsmError),
    /// The check itself did not finish (it panicked or was cancelled).
    #[error("{0}")]
    Check(#[from] tokio::task::JoinError),
}

/// The health check behind the watchdog and STATUS=: Ok(summary) or
/// Err(why).
///
/// A lost HSM that the recovery task is reconnecting counts as alive: the
/// pings go on (a restart would only leave the daemon sealed) and STATUS=
/// says the HSM is unreachable. A call that hangs stops the pings.
pub fn health(core: &Keywarden, guard: &Guard) -> Result<String, HealthError> {
    if !guard.audit_disabled {
        guard.audit.health().map_err(HealthError::Audit)?;
    }
    if let Some(why) = core.hsm().lost() {
        return Ok(format!("HSM unreachable ({why}); reconnecting"));
    }
    let s = core.status();
    s.hsm_health.map_err(HealthError::Hsm)?;
    Ok(match s.seal.phase {
        crate::seal::Phase::Unsealed => format!("unsealed, {} keys", s.key_count),
        crate::seal::Phase::Sealed => format!(
            "sealed ({} of {} shares)",
            s.seal.received, s.seal.threshold
        ),
        crate::seal::Phase::Uninitialized => "uninitialized".to_string(),
    })
}

/// Tells systemd the daemon is ready (with its health in STATUS=), then
/// keeps the watchdog fed and the status current.
pub async fn start(core: &Arc<Keywarden>, guard: &Arc<Guard>) {
    let (c, g) = (core.clone(), guard.clone());
    let summary = tokio::task::spawn_blocking(move || health(&c, &g))
        .await
        .unwrap_or_else(|e| Err(e.into()));
    match summary {
        Ok(s) => ready(&s),
        Err(why) => ready(&format!("unhealthy: {why}")),
    }
    spawn_watchdog(core.clone(), guard.clone());
    spawn_status_on_change(core.clone(), guard.clone());
}

/// Sends STATUS= as soon as the seal's state or a ceremony's progress
/// changes (init, a share, unseal, seal), not only at the watchdog's tick.
pub(crate) fn spawn_status_on_change(core: Arc<Keywarden>, guard: Arc<Guard>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            core.seal_changed().await;
            let (c, g) = (core.clone(), guard.clone());
            match tokio::task::spawn_blocking(move || health(&c, &g)).await {
                Ok(Ok(summary)) => status(&summary),
                Ok(Err(why)) => status(&format!("unhealthy: {why}")),
                Err(_) => {}
            }
        }
    });
}

/// Pings the watchdog at half its interval while the health check passes;
/// a wedged or unhealthy daemon stops pinging and systemd restarts it.
pub fn spawn_watchdog(core: Arc<Keywarden>, guard: Arc<Guard>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(50));
    tokio::spawn(async move {
        let mut last_ok = true;
        loop {
            tokio::time::sleep(every).await;
            let (c, g) = (core.clone(), guard.clone());
            let h = tokio::task::spawn_blocking(move || health(&c, &g)).await;
            match h {
                Ok(Ok(summary)) => {
                    let _ =
                        sd_notify::notify(&[NotifyState::Watchdog, NotifyState::Status(&summary)]);
                    last_ok = true;
                }
                Ok(Err(why)) => {
                    if last_ok {
                        warn!(reason = %why, "health check failed: watchdog pings stop");
                    }
                    status(&format!("unhealthy: {why}"));
                    last_ok = false;
                }
                Err(_) => last_ok = false,
            }
        }
    });
}
