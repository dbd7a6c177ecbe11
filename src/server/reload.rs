//! Policy reload on SIGHUP, and its outcome where `keywarden reload` (the
//! unit's `ExecReload=`) can read it.
//!
//! `systemctl reload` should fail when the new policy is refused. A signal
//! carries no answer, so after each reload the daemon replaces
//! `STATE_DIR/policy-reload.json` (its pid, a count, whether the policy was
//! taken and why not); `keywarden reload` sends the signal, waits for that
//! file to change and exits non-zero on a refusal. The file holds no
//! secret; the state directory is the daemon user's alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::guard::Guard;

/// The outcome file's name in the state directory.
pub const OUTCOME_FILE: &str = "policy-reload.json";

fn write_outcome(state_dir: &Path, n: u64, r: &Result<(), String>) {
    let v = json!({
        "pid": std::process::id(),
        "n": n,
        "ok": r.is_ok(),
        "error": r.as_ref().err(),
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    });
    let path = state_dir.join(OUTCOME_FILE);
    let tmp = state_dir.join(format!("{OUTCOME_FILE}.tmp"));
    let w = std::fs::write(&tmp, format!("{v}\n")).and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = w {
        warn!(error = %e, file = %path.display(), "cannot record the reload's outcome; `keywarden reload` will time out");
    }
}

/// Reloads the policy on every SIGHUP, telling systemd (RELOADING=1, then
/// READY=1) and recording the outcome.
pub fn spawn(guard: Arc<Guard>, state_dir: PathBuf) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            warn!("cannot install the SIGHUP handler");
            return;
        };
        let mut n = 0u64;
        while hup.recv().await.is_some() {
            super::systemd::reloading();
            let g = guard.clone();
            let r = match tokio::task::spawn_blocking(move || g.reload()).await {
                Ok(Ok(())) => {
                    info!("policy reloaded");
                    Ok(())
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "policy reload refused; the previous policy stays in force");
                    Err(e.to_string())
                }
                Err(e) => {
                    warn!(error = %e, "policy reload failed");
                    Err(e.to_string())
                }
            };
            n += 1;
            write_outcome(&state_dir, n, &r);
            super::systemd::reloaded();
        }
    });
}

/// Why `keywarden reload` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error("signalling pid {pid}: {source}")]
    Signal { pid: i32, source: nix::Error },
    #[error("the daemon refused the new policy (the previous one stays in force): {0}")]
    Refused(String),
    #[error("no answer from pid {pid} in {} s (is it a keywarden daemon using state directory {}?)", .timeout.as_secs(), .state_dir.display())]
    Timeout {
        pid: i32,
        timeout: Duration,
        state_dir: PathBuf,
    },
}

/// Sends SIGHUP to `pid` and waits for its outcome in `state_dir`.
pub fn request(pid: i32, state_dir: &Path, timeout: Duration) -> Result<(), ReloadError> {
    let path = state_dir.join(OUTCOME_FILE);
    let before = std::fs::read(&path).ok();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| ReloadError::Signal { pid, source })?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(now) = std::fs::read(&path) {
            if Some(&now) != before.as_ref() {
                let v: Value = serde_json::from_slice(&now).unwrap_or(Value::Null);
                if v["pid"].as_i64() == Some(i64::from(pid)) {
                    return match v["ok"].as_bool() {
                        Some(true) => Ok(()),
                        _ => Err(ReloadError::Refused(
                            v["error"].as_str().unwrap_or("unknown").to_string(),
                        )),
                    };
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(ReloadError::Timeout {
                pid,
                timeout,
                state_dir: state_dir.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
