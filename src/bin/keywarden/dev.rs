//! `keywarden dev`: a throwaway SoftHSM token, config and state in a
//! temporary directory (or a kept `--dir`), and the real daemon started as a
//! child process (like `vault server -dev`). Not for production: the user
//! PIN sits in a file next to the token. What goes into the directory (token,
//! profile, generated config) is `devdir`'s.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::process::Command;

use crate::devdir::{prepare, ConfigChoices, DevLayout, DevToken};

/// The pid of the `keywarden dev` process, for its `serve` child: the child
/// asks the kernel for SIGTERM when its parent dies, and exits at once if
/// the parent is already gone.
pub const DEV_PARENT_ENV: &str = "KEYWARDEN_DEV_PARENT";

/// The lock a running `keywarden dev` holds in its directory.
const DEV_LOCK: &str = "dev.lock";
/// Written only in a temporary directory of `keywarden dev` (never in a
/// `--dir` the user keeps), so only those are ever reclaimed.
const DEV_TEMP_MARK: &str = "dev.temporary";

/// Removes the temporary directories of `keywarden dev` processes that
/// died without cleaning up (SIGKILL): those whose `dev.lock` nobody holds.
/// Directories without one (another program's, or being created) are left.
pub fn remove_stale_dev_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("keywarden-dev-"));
        // Only real directories (not symlinks), marked as a dev process's
        // temporary one, and at least a minute old: a `keywarden dev` that
        // is starting takes its lock microseconds after creating its
        // directory.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if !named || !meta.is_dir() || !old || !path.join(DEV_TEMP_MARK).is_file() {
            continue;
        }
        let state = path.join("state");
        let serve_gone = !state.join("keywarden.lock").exists()
            || keywarden::server::lock::DirLock::take(&state, "keywarden.lock").is_ok();
        if !serve_gone {
            continue;
        }
        if let Ok(lock) = keywarden::server::lock::DirLock::take(&path, DEV_LOCK) {
            drop(lock);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => eprintln!(
                    "dev: removed {} (left by a dev process that was killed)",
                    path.display()
                ),
                Err(err) => eprintln!("dev: could not remove stale {}: {err}", path.display()),
            }
        }
    }
}

/// In the `serve --dev` child: die with the `keywarden dev` parent. A
/// SIGKILLed `dev` must not leave an unsealed daemon on a world-accessible
/// socket under the open policy.
pub fn die_with_parent() -> anyhow::Result<()> {
    let Some(parent) = std::env::var(DEV_PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGTERM))?;
    // The parent may have died before the request took effect.
    if nix::unistd::getppid().as_raw() != parent {
        anyhow::bail!("the keywarden dev process that started this daemon is gone");
    }
    Ok(())
}

async fn wait_for_socket(path: &Path, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited during start-up ({status})");
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the daemon did not open {} within 60 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Options of `keywarden dev`.
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    /// Keep token, config and state here (reused on the next run).
    pub dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// Use token objects directly instead of session copies.
    pub no_session_copies: bool,
    /// Leave the daemon uninitialised so custodians can rehearse the
    /// ceremony.
    pub ceremony: bool,
    /// Run under this policy instead of the open dev policy.
    pub policy: Option<PathBuf>,
    /// Benchmarks only: answer without auditing.
    pub benchmark_no_audit: bool,
    /// Lifecycle settings for drills (a `[lifecycle]` TOML section body).
    pub lifecycle: String,
    /// Per-uid limits for drills and tests (a `[limits]` section body).
    pub limits: String,
    /// Rotate the audit log at this size.
    pub audit_max_file_bytes: Option<u64>,
    /// Serve Prometheus metrics here (a loopback address).
    pub metrics_listen: Option<String>,
    /// Forward the audit log here (`tcp://IP:PORT` or `unix:///PATH`).
    pub audit_forward: Option<String>,
    /// Serve through this PKCS#11 module instead of the token's own.
    pub pkcs11_module: Option<PathBuf>,
    /// The software token.
    pub token: DevToken,
    /// Where the token's module is, when its profile does not find it.
    pub token_module: Option<PathBuf>,
    /// A node of a cluster.
    pub cluster: Option<DevCluster>,
}

/// `keywarden dev` as a node of a cluster.
#[derive(Debug, Clone, Default)]
pub struct DevCluster {
    /// The shared PostgreSQL registry.
    pub url: String,
    pub node_id: Option<String>,
    /// The CA certificates the database server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// The first node's dev directory: its token and seal are shared.
    pub join: Option<PathBuf>,
}

/// Dev mode's own ceremony: 1 share of threshold 1, printed, then
/// submitted. Provisioning PIN files are removed afterwards (they no
/// longer work).
async fn dev_init_and_unseal(root: &Path, socket: &Path) -> anyhow::Result<()> {
    let mut c = keywarden_client::Client::connect(socket).await?;
    let user = std::fs::read(root.join("user.pin"))?;
    let so = std::fs::read(root.join("so.pin"))?;
    let r = c
        .operator
        .init(keywarden::proto::InitRequest {
            shares: 1,
            threshold: 1,
            recipients: vec![],
            labels: vec!["dev".into()],
            user_pin: user,
            so_pin: so,
        })
        .await
        .map_err(|s| anyhow::anyhow!("dev init: {}", s.message()))?
        .into_inner();
    let Some(share) = r.shares.first() else {
        bail!("dev init returned no share");
    };
    println!("DEV ONLY: 1-of-1 unseal share (a real daemon needs M of N custodians):");
    println!("Unseal share: {}", share.share);
    c.operator
        .unseal(keywarden::proto::UnsealRequest {
            share: share.share.clone(),
            reset: false,
            accept_restore_window: false,
        })
        .await
        .map_err(|s| anyhow::anyhow!("dev unseal: {}", s.message()))?;
    let _ = std::fs::remove_file(root.join("user.pin"));
    let _ = std::fs::remove_file(root.join("so.pin"));
    Ok(())
}

/// Runs `keywarden dev`.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    // Handle SIGTERM/SIGINT from the very start, so a signal that arrives
    // while the daemon is starting still stops it (and is not fatal to this
    // process alone, which would orphan the daemon).
    let mut signals = Signals::new()?;
    let (temp, root) = dev_dir(opts.dir.clone())?;
    // Held for this process's lifetime: a later `keywarden dev` that can
    // take it knows this one is dead (SIGKILLed before it could clean up).
    let _alive = keywarden::server::lock::DirLock::take(&root, DEV_LOCK)?;
    if temp.is_some() {
        std::fs::write(
            root.join(DEV_TEMP_MARK),
            "removed when this keywarden dev exits\n",
        )?;
    }
    let token = opts.token;
    let ceremony = opts.ceremony;
    let socket = opts.socket.clone();
    let layout = prepare(&root, socket, config_choices(opts)).await?;
    let mut child = spawn_daemon(&layout)?;
    wait_for_socket(&layout.socket, &mut child).await?;
    let phase = seal_phase(&layout.socket).await?;
    print_banner(token, &layout, temp.is_some());
    start_phase(&phase, ceremony, &layout, &mut child).await?;
    let status = wait_for_exit(child, &mut signals).await?;
    drop(temp);
    check_exit(status)
}

/// SIGTERM and SIGINT, taken over from the start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// What the generated config says, from `keywarden dev`'s options.
fn config_choices(opts: DevOptions) -> ConfigChoices {
    let DevOptions {
        no_session_copies,
        policy,
        benchmark_no_audit,
        lifecycle,
        limits,
        audit_max_file_bytes,
        metrics_listen,
        audit_forward,
        pkcs11_module,
        token,
        token_module,
        cluster,
        ..
    } = opts;
    let mut lifecycle = if lifecycle.is_empty() {
        String::new()
    } else {
        format!("\n[lifecycle]\n{lifecycle}")
    };
    if !limits.is_empty() {
        lifecycle.push_str(&format!("\n[limits]\n{limits}"));
    }
    ConfigChoices {
        token,
        token_module,
        session_copies: !no_session_copies,
        policy_file: policy,
        no_audit: benchmark_no_audit,
        audit_max_file_bytes,
        metrics_listen,
        audit_forward,
        lifecycle,
        serve_module: pkcs11_module,
        cluster,
    }
}

/// The directory: `--dir` (kept), or a new temporary one (removed when
/// the returned guard drops), after removing those of dead dev processes.
fn dev_dir(dir: Option<PathBuf>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            Ok((None, d))
        }
        None => {
            remove_stale_dev_dirs(&std::env::temp_dir());
            let t = tempfile::Builder::new()
                .prefix("keywarden-dev-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            Ok((Some(t), p))
        }
    }
}

/// `keywarden serve --dev` on the generated config, as a child that dies
/// with this process.
fn spawn_daemon(layout: &DevLayout) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--dev")
        .arg("--config")
        .arg(&layout.config)
        .env(DEV_PARENT_ENV, std::process::id().to_string())
        .env(layout.token_conf.0, &layout.token_conf.1)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// The daemon's seal phase (`uninitialized`, `sealed`, `unsealed`).
async fn seal_phase(socket: &Path) -> anyhow::Result<String> {
    let mut c = keywarden_client::Client::connect(socket).await?;
    Ok(c.operator
        .status(keywarden::proto::StatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("status: {}", s.message()))?
        .into_inner()
        .seal
        .map(|s| s.phase)
        .unwrap_or_default())
}

fn print_banner(token: DevToken, layout: &DevLayout, temporary: bool) {
    println!(
        "Keywarden dev daemon is running. DEVELOPMENT ONLY: throwaway {} token.",
        token.name()
    );
    println!(
        "  directory: {}{}",
        layout.root.display(),
        if temporary {
            " (removed on exit)"
        } else {
            " (kept)"
        }
    );
    println!("  socket:    {}", layout.socket.display());
    println!("In another terminal:");
    println!("  export KEYWARDEN_SOCKET={}", layout.socket.display());
    println!(
        "  export {}={}",
        layout.token_conf.0,
        layout.token_conf.1.display()
    );
}

/// By the seal phase: the ceremony's instructions, dev mode's own
/// init and unseal (stopping the daemon when they fail), or the sealed
/// daemon's instructions.
async fn start_phase(
    phase: &str,
    ceremony: bool,
    layout: &DevLayout,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    match phase {
        "uninitialized" if ceremony => {
            println!("Ceremony rehearsal: the daemon is uninitialised. Provisioning PINs:");
            println!(
                "  {}  {}",
                layout.root.join("user.pin").display(),
                layout.root.join("so.pin").display()
            );
            println!("  keywarden operator init --shares 3 --threshold 2 --label alice --label bob --label carol \\");
            println!(
                "    --pin-file {} --so-pin-file {}",
                layout.root.join("user.pin").display(),
                layout.root.join("so.pin").display()
            );
        }
        "uninitialized" => {
            if let Err(e) = dev_init_and_unseal(&layout.root, &layout.socket).await {
                terminate(child);
                let _ = child.wait().await;
                return Err(e);
            }
            println!("Unsealed.");
        }
        _ => {
            println!("The daemon is sealed, like a real one after a restart: custodians run");
            println!("  keywarden operator unseal");
        }
    }
    Ok(())
}

/// Sends the daemon SIGTERM (if it is still running).
fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Until the daemon exits, or a signal stops it (SIGTERM, then SIGKILL
/// after 15 s).
async fn wait_for_exit(
    mut child: tokio::process::Child,
    signals: &mut Signals,
) -> anyhow::Result<std::process::ExitStatus> {
    let exited = tokio::select! {
        s = child.wait() => Some(s?),
        _ = signals.term.recv() => None,
        _ = signals.int.recv() => None,
    };
    if let Some(s) = exited {
        return Ok(s);
    }
    terminate(&child);
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(s) => Ok(s?),
        Err(_) => {
            child.kill().await?;
            Ok(child.wait().await?)
        }
    }
}

/// A clean stop: exit status 0, or the SIGTERM or SIGINT it was sent.
fn check_exit(status: std::process::ExitStatus) -> anyhow::Result<()> {
    if !status.success() {
        // A signal counts too: a daemon killed by SIGSEGV must not pass
        // for a clean stop.
        use std::os::unix::process::ExitStatusExt;
        if status.code().is_some()
            || status
                .signal()
                .is_some_and(|s| s != libc::SIGTERM && s != libc::SIGINT)
        {
            bail!("the daemon exited with {status}");
        }
    }
    Ok(())
}
