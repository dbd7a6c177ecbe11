//! A `keywarden dev` directory: its software token (configuration,
//! provisioning PINs, initialisation), its profile and generated
//! `keywarden.toml`; and a new directory for `keywarden operator restore
//! --dir`, which `keywarden dev --dir` then starts from.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use tokio::process::Command;

use crate::dev::DevCluster;
use keywarden::hsm::profile::{HsmProfile, KRYOPTIC_PROFILE, SOFTHSM2_PROFILE};
use keywarden::secret::Pin;

/// Label of the dev token.
pub const DEV_TOKEN_LABEL: &str = "keywarden-dev";

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
    pub fn name(self) -> &'static str {
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

/// A prepared dev directory.
pub struct DevLayout {
    pub root: PathBuf,
    /// The token module's configuration variable and file.
    pub token_conf: (&'static str, PathBuf),
    pub config: PathBuf,
    pub socket: PathBuf,
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// What the generated config says beyond the defaults.
pub struct ConfigChoices {
    pub token: DevToken,
    pub token_module: Option<PathBuf>,
    pub session_copies: bool,
    pub policy_file: Option<PathBuf>,
    pub no_audit: bool,
    pub audit_max_file_bytes: Option<u64>,
    pub metrics_listen: Option<String>,
    pub audit_forward: Option<String>,
    pub lifecycle: String,
    pub serve_module: Option<PathBuf>,
    pub cluster: Option<DevCluster>,
}

/// Where a dev directory's token lives and how the daemon reaches it.
struct TokenPaths {
    /// The token's directory (the first node's, for a joining node).
    tokens: PathBuf,
    /// The token module's configuration variable and file.
    conf_var: &'static str,
    conf: PathBuf,
    /// Present once the token is initialised.
    marker: PathBuf,
}

/// Prepares the directory `root` (made already): the token, initialised
/// on the first run, its profile and the generated config.
pub async fn prepare(
    root: &Path,
    socket: Option<PathBuf>,
    choices: ConfigChoices,
) -> anyhow::Result<DevLayout> {
    let root = root.canonicalize()?;
    {
        use std::os::unix::fs::PermissionsExt;
        // 0711: other local users reach the socket (dev mode is open to
        // them, under the policy) but cannot list or read the directory.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
    }
    let token = choices.token;
    let paths = token_paths(&root, token, choices.cluster.as_ref())?;
    let profile_name = format!("{}-profile.toml", token.name());
    let config = root.join("keywarden.toml");
    let socket = socket.unwrap_or_else(|| root.join("keywarden.sock"));

    std::fs::create_dir_all(&paths.tokens)?;
    write_profile(&root.join(&profile_name), token, choices.session_copies)?;
    // A module named by hand goes into the config too; one the profile
    // finds does not need to.
    let named_module = choices.token_module.is_some();
    let module = token_module(token, choices.token_module.as_deref())?;
    // The daemon serves through the token's module unless told otherwise.
    let serve_module = choices
        .serve_module
        .clone()
        .or_else(|| named_module.then(|| module.clone()));

    if !paths.marker.exists() {
        init_dev_token(&root, token, &paths, &module).await?;
    }
    let text = config_text(&choices, &socket, &profile_name, serve_module)?;
    write_file(&config, &text)?;
    Ok(DevLayout {
        root,
        token_conf: (paths.conf_var, paths.conf),
        config,
        socket,
    })
}

/// The token's paths: this directory's own, or (`--join`) the first
/// node's token, whose configuration is written here. A joining node uses
/// the first node's token (one HSM for the cluster); its seal (one share
/// set) comes from the registry database.
fn token_paths(
    root: &Path,
    token: DevToken,
    cluster: Option<&DevCluster>,
) -> anyhow::Result<TokenPaths> {
    let join = match cluster.and_then(|c| c.join.as_ref()) {
        Some(j) => Some(
            j.canonicalize()
                .with_context(|| format!("--join {}", j.display()))?,
        ),
        None => None,
    };
    let home = join.as_deref().unwrap_or(root);
    let (conf_var, conf_name) = token.conf_env();
    let paths = TokenPaths {
        tokens: home.join("tokens"),
        conf_var,
        conf: root.join(conf_name),
        marker: home.join("token-initialised"),
    };
    if let Some(j) = &join {
        if !paths.marker.exists() {
            bail!("--join {}: not a dev directory with a token", j.display());
        }
        write_file(&paths.conf, &token.conf_text(&paths.tokens))?;
        // No seal to copy: the cluster's seal files are in the registry
        // database, and the node takes them from there.
    }
    Ok(paths)
}

/// The token's profile, with session copies turned off when asked.
fn write_profile(path: &Path, token: DevToken, session_copies: bool) -> anyhow::Result<()> {
    let profile_text = if session_copies {
        token.profile().to_string()
    } else {
        token
            .profile()
            .replace("session_key_copies = true", "session_key_copies = false")
    };
    write_file(path, &profile_text)
}

/// The token's PKCS#11 module: the one named (--token-module), or the one
/// its profile finds.
fn token_module(token: DevToken, named: Option<&Path>) -> anyhow::Result<PathBuf> {
    let profile = HsmProfile::parse(token.profile()).map_err(anyhow::Error::msg)?;
    match named {
        Some(m) => m
            .canonicalize()
            .with_context(|| format!("--token-module {}", m.display())),
        None => profile.find_module().ok_or_else(|| match token {
            DevToken::Softhsm2 => anyhow::anyhow!(
                "SoftHSM 2 is not installed (looked for {:?}); run: apt-get install softhsm2",
                profile.module_paths
            ),
            DevToken::Kryoptic => anyhow::anyhow!(
                "Kryoptic is not installed (looked for {:?}); build it with scripts/kryoptic.sh and pass --token-module",
                profile.module_paths
            ),
        }),
    }
}

/// A new token: its configuration, random provisioning PINs in the
/// directory, and `keywarden dev-init-token` run against it (a child
/// process, so the module reads this configuration).
async fn init_dev_token(
    root: &Path,
    token: DevToken,
    paths: &TokenPaths,
    module: &Path,
) -> anyhow::Result<()> {
    write_file(&paths.conf, &token.conf_text(&paths.tokens))?;
    let so_pin = Pin::random().map_err(anyhow::Error::msg)?;
    let user_pin = Pin::random().map_err(anyhow::Error::msg)?;
    so_pin.write_to(&root.join("so.pin"))?;
    user_pin.write_to(&root.join("user.pin"))?;
    let exe = std::env::current_exe()?;
    let status = Command::new(exe)
        .arg("dev-init-token")
        .arg("--module")
        .arg(module)
        .arg("--label")
        .arg(DEV_TOKEN_LABEL)
        .arg("--so-pin-file")
        .arg(root.join("so.pin"))
        .arg("--pin-file")
        .arg(root.join("user.pin"))
        .env(paths.conf_var, &paths.conf)
        .status()
        .await?;
    if !status.success() {
        bail!("initialising the dev token failed");
    }
    write_file(&paths.marker, "")
}

/// The generated `keywarden.toml`.
fn config_text(
    choices: &ConfigChoices,
    socket: &Path,
    profile_name: &str,
    serve_module: Option<PathBuf>,
) -> anyhow::Result<String> {
    let sock = socket.display().to_string();
    let module_line = match serve_module {
        Some(m) => format!("module = {:?}\n", m.canonicalize()?.display().to_string()),
        None => String::new(),
    };
    let audit = match (choices.no_audit, choices.audit_max_file_bytes) {
        (true, _) => "\n[audit]\nbenchmark_disable = true\n".to_string(),
        (false, Some(n)) => format!("\n[audit]\nmax_file_bytes = {n}\n"),
        (false, None) => String::new(),
    };
    let metrics = match &choices.metrics_listen {
        Some(addr) => format!("\n[metrics]\nlisten = {addr:?}\n"),
        None => String::new(),
    };
    let forward = forward_section(choices.audit_forward.as_deref())?;
    let registry = registry_section(choices.cluster.as_ref())?;
    let policy = match &choices.policy_file {
        Some(p) => format!(
            "[policy]\nfile = {:?}\n",
            p.canonicalize()?.display().to_string()
        ),
        None => "[policy]\nopen_dev = true\n".to_string(),
    };
    let lifecycle = &choices.lifecycle;
    Ok(format!(
        "# Generated by `keywarden dev`. Development only.\n\
         [server]\nsocket = {sock:?}\nstate_dir = \"state\"\nallow_root = true\n\
         allow_world_socket = true\nsocket_mode = 0o666\n\n\
         [hsm]\nprofile = {profile_name:?}\ntoken_label = {DEV_TOKEN_LABEL:?}\n{module_line}\n\
         [seal]\nallow_single_share = true\n\n{policy}{audit}{forward}{metrics}{lifecycle}{registry}\n\
         # Development only: `keywarden serve` refuses this file unless\n\
         # `keywarden dev` starts it.\n[dev]\nenabled = true\n"
    ))
}

/// `[audit.forward]` for `--audit-forward tcp://IP:PORT|unix:///PATH`.
fn forward_section(target: Option<&str>) -> anyhow::Result<String> {
    let Some(t) = target else {
        return Ok(String::new());
    };
    let (transport, address) = if let Some(a) = t.strip_prefix("tcp://") {
        ("tcp", a)
    } else if let Some(a) = t.strip_prefix("unix://") {
        ("unix", a)
    } else {
        bail!("--audit-forward {t:?}: expected tcp://IP:PORT or unix:///PATH");
    };
    Ok(format!(
        "\n[audit.forward]\ntransport = {transport:?}\naddress = {address:?}\n"
    ))
}

/// `[registry]` for a node of a cluster.
fn registry_section(cluster: Option<&DevCluster>) -> anyhow::Result<String> {
    let Some(c) = cluster else {
        return Ok(String::new());
    };
    let node = c
        .node_id
        .as_ref()
        .map(|n| format!("node_id = {n:?}\n"))
        .unwrap_or_default();
    let ca = match &c.ca_file {
        Some(f) => format!("ca_file = {:?}\n", f.canonicalize()?.display().to_string()),
        None => String::new(),
    };
    Ok(format!("\n[registry]\nurl = {:?}\n{node}{ca}", c.url))
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
