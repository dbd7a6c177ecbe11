//! Brings a lost HSM back without a restart (a restart would leave the
//! daemon sealed until the custodians return). While the PKCS#11 layer
//! reports the HSM lost, key operations fail with UNAVAILABLE; this task
//! retries [`crate::hsm::Hsm::recover`] with a capped backoff, reports the
//! state through the systemd status and records loss and recovery in the
//! audit log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{EventKind, Outcome};
use tracing::{info, warn};

use crate::core::Keywarden;

/// How often a healthy HSM is checked for a recorded loss.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Backoff between failed attempts: starts here, doubles, caps at MAX.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(2);

pub fn spawn(core: Arc<Keywarden>, metrics: Arc<crate::metrics::Metrics>) {
    tokio::spawn(async move {
        let mut since: Option<Instant> = None;
        let mut attempts = 0u32;
        let mut wait = IDLE_POLL;
        loop {
            tokio::time::sleep(wait).await;
            let Some(reason) = core.hsm().lost() else {
                since = None;
                attempts = 0;
                wait = IDLE_POLL;
                continue;
            };
            if since.is_none() {
                since = Some(Instant::now());
                super::systemd::status(&format!("HSM unreachable ({reason}); reconnecting"));
                metrics.hsm_lost();
                let r = reason.clone();
                let c = core.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    c.event(
                        EventKind::HsmLost,
                        Outcome::Error,
                        serde_json::json!({ "reason": r }),
                    );
                })
                .await;
            }
            attempts += 1;
            let c = core.clone();
            let result = tokio::task::spawn_blocking(move || c.hsm().recover())
                .await
                .unwrap_or_else(|e| Err(crate::hsm::HsmError::Unexpected(e.to_string())));
            match result {
                Ok(true) => {
                    let down_ms = since.map(|t| t.elapsed().as_millis()).unwrap_or(0);
                    info!(attempts, down_ms, "HSM back: serving again");
                    super::systemd::status("unsealed, HSM reconnected");
                    metrics.hsm_recovered();
                    let c = core.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        c.event(
                            EventKind::HsmRecovered,
                            Outcome::Ok,
                            serde_json::json!({ "attempts": attempts, "down_ms": down_ms }),
                        );
                    })
                    .await;
                    since = None;
                    attempts = 0;
                    wait = IDLE_POLL;
                }
                Ok(false) => wait = IDLE_POLL,
                Err(e) => {
                    if attempts == 1 || attempts % 20 == 0 {
                        warn!(attempts, error = %e, "HSM still unreachable");
                    }
                    wait = if attempts == 1 {
                        FIRST_RETRY
                    } else {
                        (wait * 2).min(MAX_RETRY)
                    };
                }
            }
        }
    });
}
