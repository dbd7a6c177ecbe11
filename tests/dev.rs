//! Dev mode is explicit and dies with its parent: a SIGKILLed `keywarden
//! dev` must not leave an unsealed daemon on a world-accessible socket
//! under the open policy, nor its directory behind; `keywarden serve`
//! refuses the dev configuration when `keywarden dev` did not start it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until_blocking, ChildGuard, BIN};

/// Starts `keywarden dev` with TMPDIR=`tmp`; returns it, its directory and
/// its socket once it has unsealed.
fn start_dev(tmp: &Path) -> (ChildGuard, PathBuf, PathBuf) {
    let mut child = ChildGuard::spawn(
        Command::new(BIN)
            .arg("dev")
            .env("TMPDIR", tmp)
            .env_remove("KEYWARDEN_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut dir, mut socket) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("dev did not unseal in time");
        if let Some(d) = line.trim().strip_prefix("directory: ") {
            dir = Some(PathBuf::from(d.split(" (").next().unwrap()));
        }
        if let Some(s) = line.trim().strip_prefix("socket:") {
            socket = Some(PathBuf::from(s.trim()));
        }
        if line.contains("Unsealed.") {
            break;
        }
    }
    (child, dir.unwrap(), socket.unwrap())
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn a_killed_dev_takes_its_daemon_along_and_its_directory_is_reclaimed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut dev, dir, socket) = start_dev(tmp.path());
    let serve = children(dev.id());
    assert_eq!(serve.len(), 1, "dev should have one serve child: {serve:?}");
    let serve = serve[0];

    // A plain `serve` refuses the dev configuration.
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.join("keywarden.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("development configuration"), "{err}");

    // Status says dev mode.
    let out = Command::new(BIN)
        .args([
            "--socket",
            socket.to_str().unwrap(),
            "--output",
            "json",
            "status",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dev_mode"], true);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    dev.wait().unwrap();
    wait_until_blocking(
        &format!("serve {serve} to die with its SIGKILLed dev parent"),
        Duration::from_secs(30),
        || !alive(serve),
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "the socket still accepts connections"
    );
    assert!(dir.exists(), "the killed dev could not have cleaned up");
    // Only directories over a minute old are reclaimed (a starting dev
    // takes its lock at once, but not in the same instant it creates its
    // directory): age this one.
    let touched = Command::new("touch")
        .args(["-d", "2 minutes ago"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(touched.success());

    // The next `keywarden dev` removes the dead one's directory.
    let (mut next, next_dir, _) = start_dev(tmp.path());
    assert!(
        !dir.exists(),
        "the stale dev directory {} was left",
        dir.display()
    );
    assert!(next_dir.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(next.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    next.wait().unwrap();
    assert!(
        !next_dir.exists(),
        "a dev stopped by SIGTERM removes its directory"
    );
}
