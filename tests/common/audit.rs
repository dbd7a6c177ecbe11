//! `keywarden audit verify`, as the tests run it on a daemon's log, on
//! several nodes' logs together, or on one (copied or tampered) file.

use std::path::Path;

use super::{run_bin, Daemon};

/// What `keywarden audit verify` said.
pub struct Verification {
    /// It exited 0: the log verified.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Verification {
    /// Fails the test unless the log verified, showing what verify printed.
    #[track_caller]
    pub fn assert_ok(self) -> Self {
        assert!(
            self.ok,
            "audit verify failed:\n{}{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The report of `--output json` (`null` if stdout is no JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_default()
    }
}

/// `keywarden audit verify` of `logs`, each a log directory (`--dir`) or
/// one log file, with `flags` (`--output json`, `--public-key FILE`,
/// `--allow-unsigned-tail`, ...). It needs no daemon.
pub fn audit_verify(logs: &[impl AsRef<Path>], flags: &[&str]) -> Verification {
    let mut args: Vec<String> = vec!["audit".into(), "verify".into()];
    for log in logs.iter().map(AsRef::as_ref) {
        if log.is_dir() {
            args.push("--dir".into());
        }
        args.push(log.display().to_string());
    }
    args.extend(flags.iter().map(|f| f.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_bin(&args, None, None);
    Verification {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Daemon {
    /// `keywarden audit verify --dir` of this daemon's audit directory,
    /// with `flags`.
    pub fn verify_audit(&self, flags: &[&str]) -> Verification {
        audit_verify(&[self.audit_dir()], flags)
    }
}
