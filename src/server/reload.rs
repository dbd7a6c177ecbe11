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

/// Nanoseconds of CLOCK_BOOTTIME: one clock for the daemon and the
/// command, so an outcome is known to belong to a reload that began after
/// the command's signal (signals sent during a reload are merged into one).
pub fn boot_ns() -> i128 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()),
        Err(_) => 0,
    }
}

/// Why a SIGHUP reload did not take, as its outcome file records it.
#[derive(Debug, thiserror::Error)]
enum ReloadFailure {
    /// The new policy was refused; the previous one stays in force.
    #[error(transparent)]
    Refused(crate::guard::GuardError),
    /// The reload's task failed.
    #[error("{0}")]
    Task(#[source] tokio::task::JoinError),
}

fn write_outcome(state_dir: &Path, n: u64, started_ns: i128, r: &Result<(), ReloadFailure>) {
    let v = json!({
        "pid": std::process::id(),
        "n": n,
        "started_ns": started_ns.to_string(),
        "ok": r.is_ok(),
        "error": r.as_ref().err().map(ToString::to_string),
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
            let started = boot_ns();
            let g = guard.clone();
            let r = match tokio::task::spawn_blocking(move || g.reload()).await {
                Ok(Ok(())) => {
                    info!("policy reloaded");
                    Ok(())
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "policy reload refused; the previous policy stays in force");
                    Err(ReloadFailure::Refused(e))
                }
                Err(e) => {
                    warn!(error = %e, "policy reload failed");
                    Err(ReloadFailure::Task(e))
                }
            };
            n += 1;
            write_outcome(&state_dir, n, started, &r);
            super::systemd::reloaded();
        }
    });
}

/// Why `keywarden reload` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// No process has this pid.
    #[error("--pid {0}: no such process")]
    NoProcess(i32),
    /// The process is not named `keywarden`: it is not signalled.
    #[error("--pid {pid}: the process is {comm:?}, not a keywarden daemon")]
    NotKeywarden {
        /// The pid given.
        pid: i32,
        /// The process's name (`/proc/<pid>/comm`).
        comm: String,
    },
    /// SIGHUP could not be sent.
    #[error("signalling pid {pid}: {source}")]
    Signal {
        /// The pid given.
        pid: i32,
        /// What `kill` failed with.
        source: nix::Error,
    },
    /// The daemon reloaded and refused the new policy; this is why.
    #[error("the daemon refused the new policy (the previous one stays in force): {0}")]
    Refused(String),
    /// No outcome of a reload after the signal was recorded in time.
    #[error("no answer from pid {pid} in {} s (is it a keywarden daemon using state directory {}?)", .timeout.as_secs(), .state_dir.display())]
    Timeout {
        /// The pid signalled.
        pid: i32,
        /// How long the outcome was waited for.
        timeout: Duration,
        /// Where the outcome was looked for.
        state_dir: PathBuf,
    },
}

/// Sends SIGHUP to the keywarden daemon `pid` and waits for the outcome of
/// a reload that began after it, recorded in `state_dir`.
pub fn request(pid: i32, state_dir: &Path, timeout: Duration) -> Result<(), ReloadError> {
    // Only a daemon: never a process group (0, negative) or a stranger.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|_| ReloadError::NoProcess(pid))?;
    if comm.trim_end() != "keywarden" {
        return Err(ReloadError::NotKeywarden {
            pid,
            comm: comm.trim_end().to_string(),
        });
    }
    let path = state_dir.join(OUTCOME_FILE);
    let sent_at = boot_ns();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| ReloadError::Signal { pid, source })?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read(&path) {
            let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
            let started = v["started_ns"]
                .as_str()
                .and_then(|t| t.parse::<i128>().ok())
                .unwrap_or(i128::MIN);
            if v["pid"].as_i64() == Some(i64::from(pid)) && started >= sent_at {
                return match v["ok"].as_bool() {
                    Some(true) => Ok(()),
                    _ => Err(ReloadError::Refused(
                        v["error"].as_str().unwrap_or("unknown").to_string(),
                    )),
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_keywarden_daemon() {
        let dir = tempfile::tempdir().unwrap();
        // This test process is not named keywarden.
        let me = std::process::id() as i32;
        assert!(matches!(
            request(me, dir.path(), Duration::from_millis(10)),
            Err(ReloadError::NotKeywarden { .. })
        ));
        assert!(matches!(
            request(0, dir.path(), Duration::from_millis(10)),
            Err(ReloadError::NoProcess(0))
        ));
        assert!(matches!(
            request(-1, dir.path(), Duration::from_millis(10)),
            Err(ReloadError::NoProcess(-1))
        ));
    }

    #[test]
    fn the_clock_is_shared_and_moves_on() {
        let a = boot_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(boot_ns() > a && a > 0);
    }
}
