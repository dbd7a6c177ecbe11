//! `keywarden dev`: a throwaway SoftHSM token, config and state in a
//! temporary directory (or a kept `--dir`), and the real daemon started as a
//! child process (like `vault server -dev`). Not for production: the user
//! PIN sits in a file next to the token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use tokio::process::Command;

use keywarden::hsm::profile::{HsmProfile, KRYOPTIC_PROFILE, SOFTHSM2_PROFILE};
use keywarden::secret::Pin;

/// Label of the dev token.
pub const DEV_TOKEN_LABEL: &str = "keywarden-dev";
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

/// The software token a dev daemon runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DevToken {
    /// SoftHSM 2 (Debian package softhsm2).
    #[default]
    Softhsm2,
    /// Kryoptic, a PKCS#11 token written in Rust (`scripts/kryoptic.sh`
    /// builds it; give its module with --token-module).
    Kryoptic,
}

impl DevToken {
    fn name(self) -> &'static str {
        match self {
            DevToken::Softhsm2 => "softhsm2",
            DevToken::Kryoptic => "kryoptic",
        }
    }

    fn profile(self) -> &'static str {
        match self {
            DevToken::Softhsm2 => SOFTHSM2_PROFILE,
            DevToken::Kryoptic => KRYOPTIC_PROFILE,
        }
    }

    /// The environment variable that points the module at its
    /// configuration, and that configuration's file name.
    fn conf_env(self) -> (&'static str, &'static str) {
        match self {
            DevToken::Softhsm2 => ("SOFTHSM2_CONF", "softhsm2.conf"),
            DevToken::Kryoptic => ("KRYOPTIC_CONF", "kryoptic.conf"),
        }
    }

    fn conf_text(self, tokens: &Path) -> String {
        match self {
            DevToken::Softhsm2 => format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
            DevToken::Kryoptic => format!(
                "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = {:?}\n",
                tokens.join("token.sql").display().to_string()
            ),
        }
    }
}

/// Initialises a fresh token on the first free slot and sets its user PIN.
/// Runs in a child process whose `SOFTHSM2_CONF` (or `KRYOPTIC_CONF`)
/// points at the dev token's configuration.
pub fn init_token(module: &Path, label: &str, so_pin: &Pin, user_pin: &Pin) -> anyhow::Result<()> {
    let ctx = Pkcs11::new(module).with_context(|| format!("loading {}", module.display()))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let mut free = None;
    for slot in ctx.get_slots_with_token()? {
        let info = ctx.get_token_info(slot)?;
        if info.token_initialized() && info.label().trim_end() == label {
            bail!("a token labelled {label:?} already exists");
        }
        if !info.token_initialized() && free.is_none() {
            free = Some(slot);
        }
    }
    let Some(slot) = free else {
        bail!("no free slot to initialise a token in");
    };
    ctx.init_token(slot, &so_pin.to_auth_pin(), label)?;
    // SoftHSM renumbers slots after C_InitToken: find the token again by label.
    let mut found = None;
    for slot in ctx.get_slots_with_initialized_token()? {
        if ctx.get_token_info(slot)?.label().trim_end() == label {
            found = Some(slot);
        }
    }
    let Some(slot) = found else {
        bail!("token {label:?} vanished after initialisation");
    };
    let session = ctx.open_rw_session(slot)?;
    session.login(UserType::So, Some(&so_pin.to_auth_pin()))?;
    session.init_pin(&user_pin.to_auth_pin())?;
    session.logout()?;
    Ok(())
}

struct DevLayout {
    root: PathBuf,
    /// The token module's configuration variable and file.
    token_conf: (&'static str, PathBuf),
    config: PathBuf,
    socket: PathBuf,
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// What the generated config says beyond the defaults.
struct ConfigChoices {
    token: DevToken,
    token_module: Option<PathBuf>,
    session_copies: bool,
    policy_file: Option<PathBuf>,
    no_audit: bool,
    audit_max_file_bytes: Option<u64>,
    metrics_listen: Option<String>,
    audit_forward: Option<String>,
    lifecycle: String,
    serve_module: Option<PathBuf>,
    cluster: Option<DevCluster>,
}

async fn prepare(
    root: &Path,
    socket: Option<PathBuf>,
    choices: ConfigChoices,
) -> anyhow::Result<DevLayout> {
    let ConfigChoices {
        token,
        token_module,
        session_copies,
        policy_file,
        no_audit,
        audit_max_file_bytes,
        metrics_listen,
        audit_forward,
        lifecycle,
        serve_module,
        cluster,
    } = choices;
    let root = root.canonicalize()?;
    {
        use std::os::unix::fs::PermissionsExt;
        // 0711: other local users reach the socket (dev mode is open to
        // them, under the policy) but cannot list or read the directory.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
    }
    // A joining node uses the first node's token (one HSM for the
    // cluster); its seal (one share set) comes from the registry database.
    let join = match cluster.as_ref().and_then(|c| c.join.as_ref()) {
        Some(j) => Some(
            j.canonicalize()
                .with_context(|| format!("--join {}", j.display()))?,
        ),
        None => None,
    };
    let tokens = match &join {
        Some(j) => j.join("tokens"),
        None => root.join("tokens"),
    };
    let (conf_var, conf_name) = token.conf_env();
    let token_conf = root.join(conf_name);
    let profile_name = format!("{}-profile.toml", token.name());
    let profile_path = root.join(&profile_name);
    let config = root.join("keywarden.toml");
    let socket = socket.unwrap_or_else(|| root.join("keywarden.sock"));
    let marker = match &join {
        Some(j) => j.join("token-initialised"),
        None => root.join("token-initialised"),
    };
    if let Some(j) = &join {
        if !marker.exists() {
            bail!("--join {}: not a dev directory with a token", j.display());
        }
        write_file(&token_conf, &token.conf_text(&tokens))?;
        // No seal to copy: the cluster's seal files are in the registry
        // database, and the node takes them from there.
    }

    std::fs::create_dir_all(&tokens)?;
    let profile_text = if session_copies {
        token.profile().to_string()
    } else {
        token
            .profile()
            .replace("session_key_copies = true", "session_key_copies = false")
    };
    write_file(&profile_path, &profile_text)?;
    let profile = HsmProfile::parse(token.profile()).map_err(anyhow::Error::msg)?;
    // A module named by hand goes into the config too; one the profile
    // finds does not need to.
    let named_module = token_module.is_some();
    let module = match token_module {
        Some(m) => m.canonicalize().with_context(|| format!("--token-module {}", m.display()))?,
        None => profile.find_module().ok_or_else(|| match token {
            DevToken::Softhsm2 => anyhow::anyhow!(
                "SoftHSM 2 is not installed (looked for {:?}); run: apt-get install softhsm2",
                profile.module_paths
            ),
            DevToken::Kryoptic => anyhow::anyhow!(
                "Kryoptic is not installed (looked for {:?}); build it with scripts/kryoptic.sh and pass --token-module",
                profile.module_paths
            ),
        })?,
    };
    // The daemon serves through the token's module unless told otherwise.
    let serve_module = serve_module.or_else(|| named_module.then(|| module.clone()));

    if !marker.exists() {
        write_file(&token_conf, &token.conf_text(&tokens))?;
        let so_pin = Pin::random().map_err(anyhow::Error::msg)?;
        let user_pin = Pin::random().map_err(anyhow::Error::msg)?;
        so_pin.write_to(&root.join("so.pin"))?;
        user_pin.write_to(&root.join("user.pin"))?;
        let exe = std::env::current_exe()?;
        let status = Command::new(exe)
            .arg("dev-init-token")
            .arg("--module")
            .arg(&module)
            .arg("--label")
            .arg(DEV_TOKEN_LABEL)
            .arg("--so-pin-file")
            .arg(root.join("so.pin"))
            .arg("--pin-file")
            .arg(root.join("user.pin"))
            .env(conf_var, &token_conf)
            .status()
            .await?;
        if !status.success() {
            bail!("initialising the dev token failed");
        }
        write_file(&marker, "")?;
    }

    let sock = socket.display().to_string();
    let module_line = match serve_module {
        Some(m) => format!("module = {:?}\n", m.canonicalize()?.display().to_string()),
        None => String::new(),
    };
    let audit = match (no_audit, audit_max_file_bytes) {
        (true, _) => "\n[audit]\nbenchmark_disable = true\n".to_string(),
        (false, Some(n)) => format!("\n[audit]\nmax_file_bytes = {n}\n"),
        (false, None) => String::new(),
    };
    let metrics = match &metrics_listen {
        Some(addr) => format!("\n[metrics]\nlisten = {addr:?}\n"),
        None => String::new(),
    };
    let forward = match audit_forward.as_deref() {
        None => String::new(),
        Some(t) => {
            let (transport, address) = if let Some(a) = t.strip_prefix("tcp://") {
                ("tcp", a)
            } else if let Some(a) = t.strip_prefix("unix://") {
                ("unix", a)
            } else {
                bail!("--audit-forward {t:?}: expected tcp://IP:PORT or unix:///PATH");
            };
            format!("\n[audit.forward]\ntransport = {transport:?}\naddress = {address:?}\n")
        }
    };
    let registry = match &cluster {
        None => String::new(),
        Some(c) => {
            let node = c
                .node_id
                .as_ref()
                .map(|n| format!("node_id = {n:?}\n"))
                .unwrap_or_default();
            let ca = match &c.ca_file {
                Some(f) => format!("ca_file = {:?}\n", f.canonicalize()?.display().to_string()),
                None => String::new(),
            };
            format!("\n[registry]\nurl = {:?}\n{node}{ca}", c.url)
        }
    };
    let policy = match &policy_file {
        Some(p) => format!(
            "[policy]\nfile = {:?}\n",
            p.canonicalize()?.display().to_string()
        ),
        None => "[policy]\nopen_dev = true\n".to_string(),
    };
    write_file(
        &config,
        &format!(
            "# Generated by `keywarden dev`. Development only.\n\
             [server]\nsocket = {sock:?}\nstate_dir = \"state\"\nallow_root = true\n\
             allow_world_socket = true\nsocket_mode = 0o666\n\n\
             [hsm]\nprofile = {profile_name:?}\ntoken_label = {DEV_TOKEN_LABEL:?}\n{module_line}\n\
             [seal]\nallow_single_share = true\n\n{policy}{audit}{forward}{metrics}{lifecycle}{registry}\n\
             # Development only: `keywarden serve` refuses this file unless\n\
             # `keywarden dev` starts it.\n[dev]\nenabled = true\n"
        ),
    )?;
    Ok(DevLayout {
        root,
        token_conf: (conf_var, token_conf),
        config,
        socket,
    })
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
    let DevOptions {
        dir,
        socket,
        no_session_copies,
        ceremony,
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
    } = opts;
    let mut lifecycle = if lifecycle.is_empty() {
        String::new()
    } else {
        format!("\n[lifecycle]\n{lifecycle}")
    };
    if !limits.is_empty() {
        lifecycle.push_str(&format!("\n[limits]\n{limits}"));
    }
    let session_copies = !no_session_copies;
    // Handle SIGTERM/SIGINT from the very start, so a signal that arrives
    // while the daemon is starting still stops it (and is not fatal to this
    // process alone, which would orphan the daemon).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    use tokio::signal::unix::{signal, SignalKind};

    let (temp, root) = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            (None, d)
        }
        None => {
            remove_stale_dev_dirs(&std::env::temp_dir());
            let t = tempfile::Builder::new()
                .prefix("keywarden-dev-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    // Held for this process's lifetime: a later `keywarden dev` that can
    // take it knows this one is dead (SIGKILLed before it could clean up).
    let _alive = keywarden::server::lock::DirLock::take(&root, DEV_LOCK)?;
    if temp.is_some() {
        std::fs::write(
            root.join(DEV_TEMP_MARK),
            "removed when this keywarden dev exits\n",
        )?;
    }
    let layout = prepare(
        &root,
        socket,
        ConfigChoices {
            token,
            token_module,
            session_copies,
            policy_file: policy,
            no_audit: benchmark_no_audit,
            audit_max_file_bytes,
            metrics_listen,
            audit_forward,
            lifecycle,
            serve_module: pkcs11_module,
            cluster,
        },
    )
    .await?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--dev")
        .arg("--config")
        .arg(&layout.config)
        .env(DEV_PARENT_ENV, std::process::id().to_string())
        .env(layout.token_conf.0, &layout.token_conf.1)
        .kill_on_drop(true)
        .spawn()?;
    wait_for_socket(&layout.socket, &mut child).await?;
    let phase = {
        let mut c = keywarden_client::Client::connect(&layout.socket).await?;
        c.operator
            .status(keywarden::proto::StatusRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("status: {}", s.message()))?
            .into_inner()
            .seal
            .map(|s| s.phase)
            .unwrap_or_default()
    };
    println!(
        "Keywarden dev daemon is running. DEVELOPMENT ONLY: throwaway {} token.",
        token.name()
    );
    println!(
        "  directory: {}{}",
        layout.root.display(),
        if temp.is_some() {
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
    match phase.as_str() {
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
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
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

    let exited = tokio::select! {
        s = child.wait() => Some(s?),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    let status = match exited {
        Some(s) => s,
        None => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
                Ok(s) => s?,
                Err(_) => {
                    child.kill().await?;
                    child.wait().await?
                }
            }
        }
    };
    drop(temp);
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

/// Prepares a new `--dir` for `keywarden operator restore --dir`: the
/// token's configuration and an empty token directory, so that
/// `keywarden dev --dir DIR` then starts from the restored state (sealed).
/// Points this process's token module at that configuration.
pub fn restore_target(
    dir: &Path,
    profile_name: &str,
    token_module: Option<&Path>,
) -> anyhow::Result<keywarden::backup::restore::Target> {
    let token = match profile_name {
        "softhsm2" => DevToken::Softhsm2,
        "kryoptic" => DevToken::Kryoptic,
        other => bail!("--dir: the backup was taken on a {other:?} token; dev mode runs softhsm2 or kryoptic (restore with --config)"),
    };
    let tokens_used = std::fs::read_dir(dir.join("tokens")).is_ok_and(|mut r| r.next().is_some());
    if tokens_used || dir.join("state").join("seal.json").exists() {
        bail!(
            "--dir {}: it already holds a dev deployment; a restore goes into a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("tokens"))?;
    let root = dir.canonicalize()?;
    let tokens = root.join("tokens");
    let (var, conf_name) = token.conf_env();
    let conf = root.join(conf_name);
    write_file(&conf, &token.conf_text(&tokens))?;
    let profile = HsmProfile::parse(token.profile()).map_err(anyhow::Error::msg)?;
    let module = match token_module {
        Some(m) => m.canonicalize()?,
        None => profile.find_module().ok_or_else(|| {
            anyhow::anyhow!(
                "the {} module is not installed; give --token-module",
                token.name()
            )
        })?,
    };
    // The token module reads its configuration from the environment when
    // it is loaded, which the restore does next, on this thread.
    std::env::set_var(var, &conf);
    let state_dir = root.join("state");
    let audit_file = state_dir.join("audit").join("audit.log");
    // The marker `keywarden dev` checks: the token exists (restored).
    write_file(&root.join("token-initialised"), "")?;
    Ok(keywarden::backup::restore::Target {
        state_dir,
        audit: keywarden::audit::AuditConfig {
            file: audit_file,
            checkpoint_every: 1000,
            max_file_bytes: 64 * 1024 * 1024,
            forward: None,
            node: None,
        },
        profile,
        module,
        token: keywarden::config::TokenSelector::Label(DEV_TOKEN_LABEL.into()),
        token_conf: Some(conf),
    })
}
