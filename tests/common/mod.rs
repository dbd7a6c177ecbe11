//! Test harness: a real daemon (`keywarden dev --dir`, which initialises a
//! fresh software token in a temporary directory and starts `keywarden
//! serve`) on a real socket, and a real gRPC client.
//!
//! The token is SoftHSM 2, or Kryoptic when `KEYWARDEN_TEST_TOKEN=kryoptic`
//! and `KEYWARDEN_KRYOPTIC_MODULE` names its module (`scripts/kryoptic.sh`
//! builds it and runs the suite that way).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod process;
mod rng;
mod wait;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keywarden::proto;
use keywarden_client::Client;

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use self::{
    audit::{audit_verify, Verification},
    process::{output_with_stdin, ChildGuard},
    rng::{test_seed, TestRng},
    wait::{wait_for, wait_for_blocking, wait_until, wait_until_blocking},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_keywarden");
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Runs the keywarden binary with `stdin`, against `socket` (or none).
pub fn run_bin(args: &[&str], stdin: Option<&str>, socket: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    match socket {
        Some(s) => cmd.env("KEYWARDEN_SOCKET", s),
        None => cmd.env_remove("KEYWARDEN_SOCKET"),
    };
    output_with_stdin(&mut cmd, stdin.unwrap_or_default().as_bytes()).unwrap()
}

/// `--token-module` for commands that need the token's module by hand
/// (Kryoptic); empty for SoftHSM, whose profile finds it.
pub fn token_module_args() -> Vec<String> {
    if test_token() == "kryoptic" {
        vec!["--token-module".into(), token_module()]
    } else {
        Vec::new()
    }
}

/// The token under test: "softhsm2" or "kryoptic".
pub fn test_token() -> String {
    match std::env::var("KEYWARDEN_TEST_TOKEN").as_deref() {
        Ok("kryoptic") => "kryoptic".into(),
        Ok("softhsm2") | Err(_) => "softhsm2".into(),
        Ok(other) => panic!("KEYWARDEN_TEST_TOKEN={other}: softhsm2 or kryoptic"),
    }
}

/// The real PKCS#11 module of the token under test.
pub fn token_module() -> String {
    if test_token() == "kryoptic" {
        std::env::var("KEYWARDEN_KRYOPTIC_MODULE")
            .expect("KEYWARDEN_KRYOPTIC_MODULE names libkryoptic_pkcs11.so")
    } else {
        SOFTHSM_MODULE.into()
    }
}

/// `keywarden dev` flags that select the token under test.
fn token_dev_args() -> Vec<String> {
    if test_token() == "kryoptic" {
        vec![
            "--token".into(),
            "kryoptic".into(),
            "--token-module".into(),
            token_module(),
        ]
    } else {
        Vec::new()
    }
}

pub struct Daemon {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// The `keywarden dev` process (`keywarden serve` is its child and
    /// dies with it).
    child: Option<ChildGuard>,
    /// Extra `keywarden dev` flags.
    dev_args: Vec<String>,
    /// Lines the dev process printed on stdout.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The dev mode's 1-of-1 unseal share, once known.
    pub dev_share: Option<String>,
    /// Extra environment for the dev process (and so the daemon).
    pub envs: Vec<(String, String)>,
}

impl Daemon {
    /// The one way a test daemon is made: by default a fresh token,
    /// config and state in a new temporary directory, which dev mode
    /// initialises with a 1-of-1 share and unseals.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    fn new(dev_args: &[&str]) -> Daemon {
        let temp = tempfile::Builder::new()
            .prefix("kw-test-")
            .tempdir()
            .unwrap();
        Daemon {
            dir: temp.path().to_path_buf(),
            _temp: Some(temp),
            child: None,
            dev_args: token_dev_args()
                .into_iter()
                .chain(dev_args.iter().map(|s| s.to_string()))
                .collect(),
            stdout: Default::default(),
            dev_share: None,
            envs: Vec::new(),
        }
    }

    /// The audit log files in order (rotated ones first), as an operator
    /// would copy them off the host.
    pub fn audit_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.audit_dir())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        v.sort_by_key(|p| (p.file_name().unwrap() == "audit.log", p.clone()));
        v
    }

    fn printed_share(&self) -> Option<String> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("Unseal share: ").map(str::to_string))
    }

    /// Starts the daemon again on the same token and state: it comes up
    /// sealed, like a real one.
    pub async fn restart_sealed(&mut self) {
        self.stop();
        self.launch().await;
        self.wait_phase("sealed").await;
    }

    /// Restarts and, in dev mode, unseals with the dev share.
    pub async fn restart(&mut self) {
        self.restart_sealed().await;
        let mut c = self.client().await;
        self.unseal_dev(&mut c).await;
        self.wait_phase("unsealed").await;
    }

    pub async fn phase(&self) -> String {
        let mut c = self.client().await;
        let s = c.operator.status(proto::StatusRequest {}).await.unwrap();
        s.into_inner().seal.unwrap().phase
    }

    pub async fn wait_phase(&self, want: &str) {
        wait_for(
            &format!("the daemon to be {want}"),
            Duration::from_secs(30),
            async || match self.phase().await {
                phase if phase == want => Ok(()),
                phase => Err(phase),
            },
        )
        .await
    }

    async fn launch(&mut self) {
        use std::io::BufRead;
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let mut child = ChildGuard::spawn(
            Command::new(BIN)
                .arg("dev")
                .arg("--dir")
                .arg(&self.dir)
                .args(&self.dev_args)
                .env_remove("KEYWARDEN_SOCKET")
                .env("RUST_LOG", "info")
                .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(Stdio::piped())
                .stderr(log),
        )
        .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = self.stdout.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let (socket, log) = (self.socket(), self.dir.join("daemon.log"));
        let child = self.child.as_mut().unwrap();
        wait_until(
            "the daemon to answer Status",
            Duration::from_secs(60),
            async || {
                if let Some(status) = child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("daemon exited at start ({status}): {log}");
                }
                match Client::connect(&socket).await {
                    Ok(mut c) => c.operator.status(proto::StatusRequest {}).await.is_ok(),
                    Err(_) => false,
                }
            },
        )
        .await
    }

    /// SIGTERM (the daemon writes its final checkpoint), and SIGKILL if it
    /// has not exited 20 s later.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("keywarden.sock")
    }

    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }

    /// The token module's configuration variable and file.
    pub fn token_conf(&self) -> (&'static str, PathBuf) {
        if test_token() == "kryoptic" {
            ("KRYOPTIC_CONF", self.dir.join("kryoptic.conf"))
        } else {
            ("SOFTHSM2_CONF", self.softhsm_conf())
        }
    }

    pub fn seal_file(&self) -> PathBuf {
        self.dir.join("state").join("seal.json")
    }

    /// The token's user PIN, derived from shares with the offline recovery
    /// tool (`keywarden operator derive-pin`).
    pub fn derive_pin(&self, shares: &[&str], so: bool) -> String {
        let mut args = vec!["operator", "derive-pin", "--seal-file"];
        let seal = self.seal_file().display().to_string();
        args.push(&seal);
        if so {
            args.push("--so");
        }
        let out = self.cli(&args, Some(&shares.join("\n")));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn user_pin(&self) -> String {
        let share = self.dev_share.clone().expect("a dev share");
        self.derive_pin(&[&share], false)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Unseals it again with dev mode's share.
    pub async fn unseal_dev(&self, c: &mut Client) {
        c.operator
            .unseal(proto::UnsealRequest {
                share: self.dev_share.clone().expect("a dev daemon's share"),
                reset: false,
                accept_restore_window: false,
            })
            .await
            .expect("unseal with the dev share");
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket()).await.unwrap()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        run_bin(args, stdin, Some(&self.socket()))
    }

    /// Runs OpenSC's pkcs11-tool against this daemon's token.
    pub fn pkcs11_tool(&self, args: &[&str]) -> std::process::Output {
        self.pkcs11_tool_with(&["--login", "--pin", &self.user_pin()], args)
    }

    /// pkcs11-tool with explicit login arguments.
    pub fn pkcs11_tool_with(&self, login: &[&str], args: &[&str]) -> std::process::Output {
        let (var, conf) = self.token_conf();
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(token_module())
            .arg("--token-label")
            .arg("keywarden-dev")
            .args(login)
            .args(args)
            .env(var, conf)
            .output()
            .expect("pkcs11-tool (OpenSC) is installed")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log());
        }
    }
}

pub async fn create_key(c: &mut Client, name: &str) -> proto::KeyMetadata {
    c.keys
        .create_key(proto::CreateKeyRequest {
            name: name.into(),
            description: String::new(),
            rotation_period_secs: 0,
            kind: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
}

pub fn ctx(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn generate(
    c: &mut Client,
    key: &str,
    context: &[(&str, &str)],
) -> proto::GenerateDataKeyResponse {
    c.datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: key.into(),
            encryption_context: ctx(context),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn decrypt(
    c: &mut Client,
    blob: &[u8],
    context: &[(&str, &str)],
) -> Result<proto::DecryptResponse, tonic::Status> {
    c.datakeys
        .decrypt(proto::DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: ctx(context),
            key: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The daemon's Status.
pub async fn status(c: &mut Client) -> proto::StatusResponse {
    c.operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Asserts the daemon still answers Status with a healthy HSM.
pub async fn assert_serving(c: &mut Client) {
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.hsm_health, "ok", "{}", s.hsm_detail);
}

/// The error of a call that must fail. (Responses that carry secrets
/// implement no `Debug`, so a success is reported without its value.)
pub fn err_of<T>(r: Result<T, tonic::Status>, what: &str) -> tonic::Status {
    match r {
        Ok(_) => panic!("{what}: the call succeeded"),
        Err(s) => s,
    }
}

pub fn assert_status<T>(r: Result<T, tonic::Status>, code: tonic::Code, needle: &str) {
    match r {
        Ok(_) => panic!("expected {code:?} containing {needle:?}, got Ok"),
        Err(s) => {
            assert_eq!(s.code(), code, "message: {}", s.message());
            assert!(
                s.message().contains(needle),
                "expected {needle:?} in {:?}",
                s.message()
            );
        }
    }
}

pub fn path_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Creates a local system user (idempotent); needs root.
pub fn ensure_user(name: &str) -> u32 {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests that run clients as other Unix users must run as root (CI does)"
    );
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output()
            .unwrap();
        // A concurrent test may have created it meanwhile.
        assert!(
            out.status.success() || nix::unistd::User::from_name(name).unwrap().is_some(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

impl Daemon {
    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.dir.join("state").join("audit")
    }

    /// Runs the CLI as another Unix user (setpriv).
    pub fn cli_as(&self, user: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--clear-groups")
            .arg(BIN)
            .args(args)
            .env("KEYWARDEN_SOCKET", self.socket());
        output_with_stdin(&mut cmd, stdin.unwrap_or_default().as_bytes()).unwrap()
    }
}

impl Daemon {
    pub fn registry_path(&self) -> PathBuf {
        self.dir.join("state").join("registry.db")
    }
}

pub async fn describe(c: &mut Client, name: &str) -> proto::KeyMetadata {
    c.keys
        .describe_key(proto::DescribeKeyRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
}

pub fn name_req(name: &str) -> proto::KeyNameRequest {
    proto::KeyNameRequest { name: name.into() }
}

impl Daemon {
    /// The `keywarden serve` process (the dev process's child).
    pub fn serve_pid(&self) -> Option<i32> {
        let pid = self.child.as_ref()?.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Waits for the dev process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let st = self.child.as_mut()?.wait_timeout(timeout)?;
        self.child = None;
        st.code()
    }
}

/// Polls a key until `pred` holds, failing with `what` after `secs`.
pub async fn wait_key(
    c: &mut Client,
    name: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&proto::KeyMetadata) -> bool,
) {
    wait_for(what, Duration::from_secs(secs), async || {
        let k = describe(c, name).await;
        if pred(&k) {
            Ok(())
        } else {
            Err(format!("key {name} {}", k.state))
        }
    })
    .await
}

/// How a test daemon is started: `keywarden dev --dir` on a fresh token in
/// a new temporary directory, with extra flags, environment, a policy file,
/// or uninitialised (`--ceremony`).
#[derive(Default)]
pub struct DaemonBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    policy: Option<String>,
    ceremony: bool,
    /// An existing directory (a restored deployment) instead of a new one.
    at: Option<PathBuf>,
    /// Comes up sealed (a node joining a cluster's seal).
    sealed: bool,
}

impl DaemonBuilder {
    /// Environment variables for the daemon.
    pub fn envs(mut self, envs: &[(&str, &str)]) -> Self {
        self.envs
            .extend(envs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Run on an existing directory (its token, config and state: a
    /// restored one), which the caller owns; `start` then returns as soon
    /// as the daemon answers, as it comes up (sealed).
    pub fn at(mut self, dir: &Path) -> Self {
        self.at = Some(dir.to_path_buf());
        self
    }

    /// Extra `keywarden dev` flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for the daemon.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Run under this policy instead of dev mode's open one.
    pub fn policy(mut self, text: &str) -> Self {
        self.policy = Some(text.into());
        self
    }

    /// Expect it to come up sealed (a node that joins another's seal).
    pub fn sealed(mut self) -> Self {
        self.sealed = true;
        self
    }

    /// Leave it uninitialised, for the ceremony tests.
    pub fn ceremony(mut self) -> Self {
        self.ceremony = true;
        self
    }

    /// Starts it and waits until it is unsealed (or, with `ceremony`,
    /// answering and uninitialised; with `at`, answering).
    pub async fn start(self) -> Daemon {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        if self.ceremony {
            args.push("--ceremony");
        }
        let mut d = Daemon::new(&args);
        d.envs = self.envs;
        if let Some(dir) = self.at {
            // Not the new temporary directory: the given one.
            d.dir = dir;
            d._temp = None;
            d.launch().await;
            return d;
        }
        if let Some(text) = &self.policy {
            let path = d.dir.join("policy.toml");
            std::fs::write(&path, text).unwrap();
            d.dev_args
                .extend(["--policy".into(), path.display().to_string()]);
        }
        d.launch().await;
        if self.sealed {
            d.wait_phase("sealed").await;
            return d;
        }
        if self.ceremony {
            d.wait_phase("uninitialized").await;
        } else {
            d.wait_phase("unsealed").await;
            d.dev_share = d.printed_share();
            assert!(d.dev_share.is_some(), "dev printed no share");
        }
        d
    }
}

/// What integrity checks found, as Status lists them.
pub async fn tampering(d: &Daemon) -> Vec<String> {
    let mut c = d.client().await;
    c.operator
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .registry_tampering
}

/// A data key under `key` (context t=1): served, or the refusal.
pub async fn gdk(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.datakeys
        .generate_data_key(proto::GenerateDataKeyRequest {
            key: key.into(),
            encryption_context: ctx(&[("t", "1")]),
        })
        .await
        .map(|_| ())
}

/// `cp -a FROM TO`.
pub fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The token's secret-key objects, as pkcs11-tool lists them.
pub fn token_labels(d: &Daemon) -> String {
    let out = d.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}
