//! The `keywarden` binary: the daemon (`serve`, `dev`) and its client
//! commands.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod dev;
mod devdir;
mod devpg;
mod drill;
mod hsm_check;

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::{datakey::DatakeyCommand, key::KeyCommand, Output};
use keywarden_client::DEFAULT_SOCKET;

#[derive(Debug, Parser)]
#[command(
    name = "keywarden",
    version,
    about = "Keywarden: a key-management daemon in front of a PKCS#11 HSM"
)]
struct Cli {
    /// The daemon's Unix socket.
    #[arg(long, global = true, env = "KEYWARDEN_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum HsmCommand {
    /// Mechanisms, login, a non-extractable AES key, AES-GCM, session
    /// copies, ECDSA signing: a table of PASS/FAIL.
    Check {
        #[arg(long)]
        profile: PathBuf,
        #[arg(long)]
        module: Option<PathBuf>,
        #[arg(long)]
        token_label: Option<String>,
        #[arg(long)]
        token_serial: Option<String>,
        /// File holding the token's user PIN.
        #[arg(long)]
        pin_file: PathBuf,
        /// File holding the token's SO PIN: also check the SO login and
        /// C_SetPIN, which `operator init` needs (each PIN is set to its
        /// current value).
        #[arg(long)]
        so_pin_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DrillCommand {
    /// Back up a dev daemon, lose it, restore it with the audit trail,
    /// check every data key, and print the RPO and RTO measured.
    Restore {
        /// Data keys recorded under each key.
        #[arg(long, default_value = "200")]
        data_keys: usize,
        /// Keys made before the backup.
        #[arg(long, default_value = "3")]
        keys: usize,
        #[arg(long, value_enum, default_value = "softhsm2")]
        token: devdir::DevToken,
        /// The token's PKCS#11 module, when its profile does not find it.
        #[arg(long)]
        token_module: Option<PathBuf>,
        /// Keep the drill's directories here.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

// The flags of `keywarden dev` (no doc comment: the command's help is the
// `Command::Dev` variant's).
#[derive(Debug, clap::Args)]
struct DevArgs {
    /// Keep token, config and state in DIR instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the CMK token objects directly instead of session copies
    /// (to measure what the copies buy).
    #[arg(long)]
    no_session_copies: bool,
    /// Start uninitialised so custodians can rehearse init, unseal, seal
    /// and rekey.
    #[arg(long)]
    ceremony: bool,
    /// Run under this policy file instead of dev mode's open policy
    /// (every local user, every role).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Benchmarks only: answer requests without auditing them.
    #[arg(long)]
    benchmark_no_audit: bool,
    /// Drills: shortest waiting period of a scheduled destruction (e.g. 2s).
    #[arg(long, value_name = "DURATION")]
    destroy_min_delay: Option<String>,
    /// Drills: distinct admins a destruction needs.
    #[arg(long, value_name = "N")]
    destroy_approvals: Option<usize>,
    /// Rotate a version automatically after this many encryptions.
    #[arg(long, value_name = "N")]
    rotate_after_encryptions: Option<u64>,
    /// Refuse more than this many encryptions per version.
    #[arg(long, value_name = "N")]
    hard_limit_encryptions: Option<u64>,
    /// How often the lifecycle scheduler runs (e.g. 1s).
    #[arg(long, value_name = "DURATION")]
    tick: Option<String>,
    /// A per-uid limit, as in `[limits]` (e.g. audit_hash_per_minute=10);
    /// repeat for several.
    #[arg(long = "limit", value_name = "NAME=N")]
    limits: Vec<String>,
    /// Rotate the audit log at this size (drills and tests).
    #[arg(long, value_name = "BYTES")]
    audit_max_file_bytes: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback
    /// address, e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Forward every audit line, as RFC 5424 syslog, to
    /// tcp://IP:PORT (octet-counted) or unix:///PATH (datagrams).
    #[arg(long, value_name = "TARGET")]
    audit_forward: Option<String>,
    /// Serve through this PKCS#11 module instead of the token's own
    /// (tests: the fault-injection shim, which forwards to the token).
    #[arg(long, value_name = "PATH")]
    pkcs11_module: Option<PathBuf>,
    /// The software token to run on.
    #[arg(long, value_enum, default_value = "softhsm2")]
    token: devdir::DevToken,
    /// The token's PKCS#11 module, where its profile does not find it
    /// (Kryoptic: testing/kryoptic-token/target/release/libkryoptic_pkcs11.so).
    #[arg(long, value_name = "PATH")]
    token_module: Option<PathBuf>,
    /// A node of a cluster: keep the registry in this PostgreSQL
    /// database (docs/CLUSTER.md) instead of the state directory.
    #[arg(long, value_name = "URL")]
    registry_url: Option<String>,
    /// This node's name in the cluster.
    #[arg(long, value_name = "ID", requires = "registry_url")]
    node_id: Option<String>,
    /// TLS to the registry, trusting only the CA certificates in FILE
    /// (PEM): `[registry] ca_file`.
    #[arg(long, value_name = "FILE", requires = "registry_url")]
    registry_ca_file: Option<PathBuf>,
    /// Join the cluster of the dev daemon in DIR: its token (the seal,
    /// one share set for the cluster, comes from the registry
    /// database); starts sealed.
    #[arg(long, value_name = "DIR", requires = "registry_url")]
    join: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon with a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Accept a development configuration (`[dev]`); only `keywarden
        /// dev` passes this.
        #[arg(long, hide = true)]
        dev: bool,
    },
    /// Run a development daemon on a throwaway SoftHSM token.
    Dev(DevArgs),
    /// Customer-managed keys (admins).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Data keys for envelope encryption (applications).
    #[command(subcommand)]
    Datakey(DatakeyCommand),
    /// Encrypt a file or pipe into an envelope message (docs/ENVELOPE.md).
    Encrypt(cli::envelope::EncryptArgs),
    /// Decrypt an envelope message; refuses truncated or altered input.
    Decrypt(cli::envelope::DecryptArgs),
    /// Show an envelope message's header and length without decrypting it.
    Inspect(cli::envelope::InspectArgs),
    /// Daemon status: what needs attention first, then version, seal, HSM
    /// token and health, audit, drift.
    Status,
    /// Reload a running daemon's policy and wait for its answer: exits
    /// non-zero when the new policy is refused (the unit's ExecReload=).
    Reload {
        /// The daemon's pid (systemd: $MAINPID).
        #[arg(long)]
        pid: i32,
        /// The daemon's configuration: its server.state_dir is where it
        /// records the reload's outcome.
        #[arg(long, conflicts_with = "state_dir")]
        config: Option<PathBuf>,
        /// The daemon's state directory, instead of --config.
        #[arg(long, default_value = "/var/lib/keywarden")]
        state_dir: PathBuf,
        /// How long to wait for the daemon's answer.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The Prometheus metrics page, over the socket (admins, auditors).
    Metrics,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (keywarden.1 and one per command) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Verify, query and tail the audit log (offline but for --context).
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Custodians' ceremonies: init, unseal, seal, rekey.
    #[command(subcommand)]
    Operator(cli::operator::OperatorCommand),
    /// Disaster-recovery drills on throwaway dev daemons.
    #[command(subcommand)]
    Drill(DrillCommand),
    /// Probe an HSM token against a profile before trusting it.
    #[command(subcommand)]
    Hsm(HsmCommand),
    /// Measure the daemon against its own limits (docs/PERFORMANCE.md).
    Bench {
        /// Seconds per figure after the warm-up.
        #[arg(long, default_value = "5")]
        seconds: f64,
        /// Warm-up seconds per figure.
        #[arg(long, default_value = "1")]
        warmup: f64,
        /// Measure the daemon at --socket instead of throwaway ones.
        #[arg(long)]
        external: bool,
        /// The key to use on an external daemon (created if missing).
        #[arg(long, default_value = "bench")]
        key: String,
        /// Also measure a cluster: three dev nodes on a throwaway
        /// PostgreSQL server (needs PostgreSQL installed), against this
        /// run's SQLite figures.
        #[arg(long, conflicts_with = "external")]
        cluster: bool,
    },
    /// The in-process HSM measurement of `keywarden bench` (share on stdin).
    #[command(hide = true)]
    BenchHsmRaw {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        warmup: f64,
    },
    /// A throwaway PostgreSQL server for a dev cluster (scripts/cluster-demo.sh):
    /// prints its registry URL and runs until SIGTERM or SIGINT.
    #[command(hide = true)]
    DevPostgres,
    /// Initialise a dev token (used by `keywarden dev`).
    #[command(hide = true)]
    DevInitToken {
        #[arg(long)]
        module: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long)]
        so_pin_file: PathBuf,
        #[arg(long)]
        pin_file: PathBuf,
    },
}

/// The `[limits]` lines for `keywarden dev --limit NAME=N` (the names are
/// checked by the configuration's own parser).
fn dev_limits(flags: &[String]) -> anyhow::Result<String> {
    let mut out = String::new();
    for f in flags {
        let (name, value) = f
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--limit {f:?}: expected NAME=N"))?;
        let ok_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        let n: u64 = value
            .parse()
            .map_err(|_| anyhow::anyhow!("--limit {f:?}: N must be a whole number"))?;
        if !ok_name {
            anyhow::bail!(
                "--limit {f:?}: NAME is a [limits] setting such as audit_hash_per_minute"
            );
        }
        out.push_str(&format!("{name} = {n}\n"));
    }
    Ok(out)
}

/// The `[lifecycle]` lines for `keywarden dev` drill flags.
fn dev_lifecycle(args: &DevArgs) -> anyhow::Result<String> {
    let secs = |flag: &str, v: &str| {
        humantime::parse_duration(v)
            .map(|d| d.as_secs().max(1))
            .map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
    };
    let mut out = String::new();
    if let Some(d) = &args.destroy_min_delay {
        out.push_str(&format!(
            "destroy_min_delay_secs = {}\n",
            secs("destroy-min-delay", d)?
        ));
    }
    if let Some(n) = args.destroy_approvals {
        out.push_str(&format!("destroy_approvals = {n}\n"));
    }
    if let Some(n) = args.rotate_after_encryptions {
        out.push_str(&format!("rotate_after_encryptions = {n}\n"));
    }
    if let Some(n) = args.hard_limit_encryptions {
        out.push_str(&format!("hard_limit_encryptions = {n}\n"));
    }
    if let Some(t) = &args.tick {
        out.push_str(&format!("tick_secs = {}\n", secs("tick", t)?));
    }
    Ok(out)
}

/// Writes each log line to stderr, prefixed with `[DEV MODE] ` in dev mode
/// (one writer per event, so the prefix starts every line).
struct LogLine {
    dev: bool,
    started: bool,
}

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if self.dev && !self.started {
            err.write_all(b"[DEV MODE] ")?;
        }
        self.started = true;
        err.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_logging(dev: bool) {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd, straight into the journal: each field of an event is
    // a journal field (KW_ERROR=, KW_KEY=, KW_EVENT=...; the prefix keeps
    // them clear of the journal's own), the level its PRIORITY=.
    if keywarden::server::journal::stderr_is_journal() {
        if let Ok(journal) = tracing_journald::layer() {
            let dev_field = dev.then_some(("KW_DEV_MODE", "1"));
            // As syslog reads them: info is 6, debug 7 (the crate's
            // defaults are one step higher).
            let mut levels = tracing_journald::PriorityMappings::new();
            levels.info = tracing_journald::Priority::Informational;
            levels.debug = tracing_journald::Priority::Debug;
            tracing_subscriber::registry()
                .with(filter())
                .with(
                    journal
                        .with_syslog_identifier("keywarden".into())
                        .with_field_prefix(Some("KW".into()))
                        .with_priority_mappings(levels)
                        .with_custom_fields(dev_field),
                )
                .init();
            return;
        }
    }
    let filter = filter();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || LogLine {
            dev,
            started: false,
        })
        .with_ansi(!dev && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(cli: Cli, socket_from_cli: bool) -> anyhow::Result<()> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    match cli.command {
        Command::Serve { config, dev } => serve(&config, dev).await,
        Command::Dev(args) => {
            // Only an explicit --socket applies; a KEYWARDEN_SOCKET left over
            // from an earlier dev run must not.
            let socket = if socket_from_cli { cli.socket } else { None };
            run_dev(args, socket).await
        }
        Command::Drill(cmd) => drill(cmd).await,
        Command::DevPostgres => dev_postgres().await,
        Command::DevInitToken {
            module,
            label,
            so_pin_file,
            pin_file,
        } => dev_init_token(&module, &label, &so_pin_file, &pin_file),
        Command::Key(cmd) => cli::key::run(&socket, cli.output, cmd).await,
        Command::Datakey(cmd) => cli::datakey::run(&socket, cli.output, cmd).await,
        Command::Encrypt(args) => cli::envelope::encrypt(&socket, args).await,
        Command::Decrypt(args) => cli::envelope::decrypt(&socket, args).await,
        Command::Inspect(args) => cli::envelope::inspect(args, cli.output).await,
        Command::Status => cli::status::run(&socket, cli.output).await,
        Command::Reload {
            pid,
            config,
            state_dir,
            timeout,
        } => reload(pid, config, state_dir, timeout),
        Command::Metrics => cli::status::metrics(&socket).await,
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man_pages(&dir),
        Command::Hsm(HsmCommand::Check {
            profile,
            module,
            token_label,
            token_serial,
            pin_file,
            so_pin_file,
        }) => {
            let token = match (token_label, token_serial) {
                (Some(l), None) => keywarden::config::TokenSelector::Label(l),
                (None, Some(s)) => keywarden::config::TokenSelector::Serial(s),
                _ => anyhow::bail!("give one of --token-label and --token-serial"),
            };
            let probe = hsm_check::Probe {
                profile,
                module,
                token,
                pin_file,
                so_pin_file,
            };
            hsm_check(probe, cli.output).await
        }
        Command::Bench {
            seconds,
            warmup,
            external,
            key,
            cluster,
        } => {
            if !(0.05..=3600.0).contains(&seconds) || !(0.0..=600.0).contains(&warmup) {
                anyhow::bail!(
                    "--seconds must be between 0.05 and 3600, --warmup between 0 and 600"
                );
            }
            bench::run(bench::BenchOptions {
                socket: external.then(|| socket.clone()),
                key,
                duration: std::time::Duration::from_secs_f64(seconds),
                warmup: std::time::Duration::from_secs_f64(warmup),
                output: cli.output,
                cluster,
            })
            .await
        }
        Command::BenchHsmRaw {
            config,
            seconds,
            warmup,
        } => bench_hsm_raw(config, seconds, warmup).await,
        Command::Audit(cmd) => cli::audit::run(cli.output, cmd, &socket).await,
        Command::Operator(cmd) => {
            cli::operator::run(&socket, cli.output, cmd, restore_target).await
        }
    }
}

/// `keywarden serve`.
async fn serve(config: &std::path::Path, dev: bool) -> anyhow::Result<()> {
    let config = keywarden::config::Config::load_for(config, dev)?;
    if dev {
        dev::die_with_parent()?;
    }
    init_logging(config.dev);
    keywarden::server::serve(config).await
}

/// `keywarden dev`: its flags as the dev module's options.
async fn run_dev(args: DevArgs, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let limits = dev_limits(&args.limits)?;
    let lifecycle = dev_lifecycle(&args)?;
    let DevArgs {
        dir,
        no_session_copies,
        ceremony,
        policy,
        benchmark_no_audit,
        audit_max_file_bytes,
        metrics_listen,
        audit_forward,
        pkcs11_module,
        token,
        token_module,
        registry_url,
        node_id,
        registry_ca_file,
        join,
        ..
    } = args;
    dev::run(dev::DevOptions {
        dir,
        socket,
        no_session_copies,
        ceremony,
        policy,
        benchmark_no_audit,
        audit_max_file_bytes,
        metrics_listen,
        audit_forward,
        pkcs11_module,
        token,
        token_module,
        cluster: registry_url.map(|url| dev::DevCluster {
            url,
            node_id,
            ca_file: registry_ca_file,
            join,
        }),
        limits,
        lifecycle,
    })
    .await
}

/// `keywarden drill ...`.
async fn drill(cmd: DrillCommand) -> anyhow::Result<()> {
    match cmd {
        DrillCommand::Restore {
            data_keys,
            keys,
            token,
            token_module,
            keep,
        } => {
            drill::restore(drill::DrillOptions {
                token,
                token_module,
                keys,
                data_keys,
                keep,
            })
            .await
        }
    }
}

/// `keywarden dev-init-token` (in the child `keywarden dev` runs with the
/// token's configuration).
fn dev_init_token(
    module: &std::path::Path,
    label: &str,
    so_pin_file: &std::path::Path,
    pin_file: &std::path::Path,
) -> anyhow::Result<()> {
    let so = keywarden::secret::Pin::from_file(so_pin_file).map_err(anyhow::Error::msg)?;
    let user = keywarden::secret::Pin::from_file(pin_file).map_err(anyhow::Error::msg)?;
    devdir::init_token(module, label, &so, &user)
}

/// `keywarden dev-postgres`: a throwaway PostgreSQL server until SIGTERM
/// or SIGINT.
async fn dev_postgres() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let pg = tokio::task::spawn_blocking(devpg::Postgres::start).await??;
    println!("Registry URL: {}", pg.url());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}

/// `keywarden reload`: asks the daemon to reload its policy and waits for
/// the outcome it records in its state directory.
fn reload(
    pid: i32,
    config: Option<PathBuf>,
    state_dir: PathBuf,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let state_dir = match config {
        Some(c) => keywarden::config::Config::load(&c)?.state_dir,
        None => state_dir,
    };
    keywarden::server::reload::request(pid, &state_dir, timeout)?;
    println!("policy reloaded");
    Ok(())
}

/// `keywarden completions SHELL`.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "keywarden", &mut script);
    // A closed pipe ends the output quietly.
    let _ = std::io::stdout().write_all(&script);
    Ok(())
}

/// `keywarden hsm check`: runs the probe off the async runtime, prints its
/// table (or JSON), and fails when any check did.
async fn hsm_check(probe: hsm_check::Probe, output: cli::Output) -> anyhow::Result<()> {
    let results = tokio::task::spawn_blocking(move || hsm_check::run(&probe)).await?;
    let failed = results.iter().filter(|r| !r.ok).count();
    match output {
        cli::Output::Json => cli::print_json(&serde_json::json!({
            "ok": failed == 0,
            "checks": results.iter().map(|r| serde_json::json!({
                "check": r.check, "ok": r.ok, "detail": r.detail,
            })).collect::<Vec<_>>(),
        }))?,
        cli::Output::Text => {
            for r in &results {
                println!(
                    "{:<36} {:<4} {}",
                    r.check,
                    if r.ok { "PASS" } else { "FAIL" },
                    r.detail
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} checks failed");
    }
    Ok(())
}

/// `keywarden bench-hsm-raw`: the share on stdin, one JSON line out.
async fn bench_hsm_raw(config: PathBuf, seconds: f64, warmup: f64) -> anyhow::Result<()> {
    let mut share = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut share)?;
    let rate =
        tokio::task::spawn_blocking(move || bench::hsm_raw(&config, seconds, warmup, share.trim()))
            .await??;
    println!("{}", serde_json::json!({ "per_sec": rate }));
    Ok(())
}

/// Where `keywarden operator restore` puts a backup taken on the token
/// profile `profile`: the state directory and token of a daemon
/// configuration (--config), or a new `keywarden dev` directory (--dir).
fn restore_target(
    args: &cli::backup::RestoreArgs,
    profile: &str,
) -> anyhow::Result<keywarden::backup::restore::Target> {
    match (&args.config, &args.dir) {
        (Some(c), _) => {
            let config = keywarden::config::Config::load(c).map_err(anyhow::Error::msg)?;
            Ok(keywarden::backup::restore::Target {
                state_dir: config.state_dir.clone(),
                audit: config.audit.clone(),
                profile: config.profile.clone(),
                module: config.module.clone(),
                token: config.token.clone(),
                token_conf: None,
            })
        }
        (None, Some(d)) => devdir::restore_target(d, profile, args.token_module.as_deref()),
        (None, None) => anyhow::bail!("--config or --dir: where to restore"),
    }
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let socket_from_cli = matches.value_source("socket") == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli, socket_from_cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// keywarden.1, then keywarden-COMMAND[-SUBCOMMAND].1 for every visible
/// command, from the same definition the parser uses.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    fn write(dir: &std::path::Path, name: String, c: clap::Command) -> anyhow::Result<()> {
        // Not the `help` subcommands clap adds: `--help` is in every page.
        for sub in c
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let sub_name = format!("{name}-{}", sub.get_name());
            write(dir, sub_name.clone(), sub.clone().name(sub_name))?;
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(c).render(&mut page)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    write(dir, "keywarden".into(), cmd)
}
