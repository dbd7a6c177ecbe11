//! What `tests/cluster.rs` runs its nodes on: a PostgreSQL server of the
//! test's own, three nodes joined to it, decrypt loops that watch a change
//! reach the other nodes, registry snapshots, and certificates for TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keywarden::proto;
use keywarden_client::Client;
use tonic::Code;

use crate::common::*;

/// The binary's own PostgreSQL launcher (`keywarden dev --postgres`),
/// compiled into this test too: it needs nothing from the binary.
#[path = "../../src/bin/keywarden/devpg.rs"]
#[allow(dead_code)]
mod devpg;

/// A PostgreSQL server of its own, stopped and removed on drop.
pub struct Postgres(devpg::Postgres);

impl Postgres {
    pub fn start() -> Postgres {
        Postgres(devpg::Postgres::start().unwrap())
    }
    /// One that accepts only TLS over TCP, with this certificate.
    pub fn start_tls(cert: &Path, key: &Path) -> Postgres {
        Postgres(devpg::Postgres::start_tls(cert, key).unwrap())
    }
    pub fn up(&self) {
        self.0.up().unwrap()
    }
    pub fn down(&self) {
        self.0.down().unwrap()
    }
    pub fn url(&self) -> String {
        self.0.url()
    }
    /// Its URL over TCP to `host`.
    pub fn tcp_url(&self, host: &str) -> String {
        self.0.tcp_url(host).unwrap()
    }
    pub fn psql(&self, sql: &str) -> String {
        self.0.psql(sql).unwrap()
    }
    fn run(&self, bin: &str, args: &[&str]) -> String {
        let bin = devpg::pg_bin(bin).unwrap();
        self.0.run(&bin, args).unwrap()
    }
    pub fn sockets(&self) -> PathBuf {
        self.0.sockets().to_path_buf()
    }
}

/// Three nodes: the first initialises the seal; the others join it (its
/// token, a copy of its seal) and are unsealed with the same share.
pub async fn cluster(pg: &Postgres, extra: &[&str]) -> Vec<Daemon> {
    let url = pg.url();
    let mut args = vec!["--registry-url", &url, "--node-id", "n1"];
    args.extend_from_slice(extra);
    let first = Daemon::builder().args(&args).start().await;
    let mut nodes = vec![first];
    for id in ["n2", "n3"] {
        let dir = nodes[0].dir.display().to_string();
        let mut args = vec!["--registry-url", &url, "--node-id", id, "--join", &dir];
        args.extend_from_slice(extra);
        let mut d = Daemon::builder().args(&args).sealed().start().await;
        d.dev_share = nodes[0].dev_share.clone();
        let mut c = d.client().await;
        d.unseal_dev(&mut c).await;
        d.wait_phase("unsealed").await;
        nodes.push(d);
    }
    for d in &nodes {
        wait_serving(d).await;
    }
    nodes
}

/// Until the node answers a key call with anything but UNAVAILABLE (it
/// has its first lease).
pub async fn wait_serving(d: &Daemon) {
    let mut c = d.client().await;
    let what = format!("node {} to serve (its first lease)", d.dir.display());
    wait_for(&what, Duration::from_secs(20), async || {
        match c.keys.list_keys(proto::ListKeysRequest {}).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::Unavailable => Err(s.message().to_string()),
            Err(s) => panic!("node never served: {s:?}\n{}", d.log()),
        }
    })
    .await
}

/// `--dir D` for each node's audit directory, as CLI arguments.
pub fn audit_dirs(nodes: &[Daemon]) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|d| ["--dir".to_string(), d.audit_dir().display().to_string()])
        .collect()
}

/// A loop of Decrypt calls on one node; each call's start time and
/// outcome are kept.
pub type Calls = Arc<Mutex<Vec<(Instant, Result<(), Code>)>>>;

pub fn hammer(
    d: &Daemon,
    blob: Vec<u8>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Calls, tokio::task::JoinHandle<()>) {
    let calls: Calls = Default::default();
    let socket = d.socket();
    let out = calls.clone();
    let h = tokio::spawn(async move {
        let mut c = Client::connect(&socket).await.unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            let r = decrypt(&mut c, &blob, &[("patient", "p1")])
                .await
                .map(|_| ())
                .map_err(|s| s.code());
            out.lock().unwrap().push((t, r));
        }
    });
    (calls, h)
}

/// Runs `change` on node 1 while nodes 2 and 3 decrypt in a loop; no call
/// that started after the change returned may succeed. Returns how long
/// the change took.
pub async fn no_success_after<F, Fut>(nodes: &[Daemon], blob: &[u8], change: F) -> Duration
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = nodes[1..]
        .iter()
        .map(|d| hammer(d, blob.to_vec(), stop.clone()))
        .collect();
    let served = |calls: &Calls| calls.lock().unwrap().iter().any(|(_, r)| r.is_ok());
    wait_until(
        "every decrypt loop to be served before the change",
        Duration::from_secs(20),
        async || loops.iter().all(|(calls, _)| served(calls)),
    )
    .await;
    let c = nodes[0].client().await;
    let t0 = Instant::now();
    change(c).await;
    let returned = Instant::now();
    // The loops go on for half a second after the change returned (a node
    // that still served the old state would show there: that time is the
    // point), and until each made a few calls in it.
    let calls_after = |calls: &Calls| {
        let calls = calls.lock().unwrap();
        calls.iter().filter(|(t, _)| *t > returned).count()
    };
    wait_until(
        "every decrypt loop to make 5 calls in the 500 ms after the change returned",
        Duration::from_secs(20),
        async || {
            returned.elapsed() >= Duration::from_millis(500)
                && loops.iter().all(|(calls, _)| calls_after(calls) >= 5)
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (calls, h) in loops {
        h.await.unwrap();
        let calls = calls.lock().unwrap();
        assert!(
            calls.iter().any(|(t, r)| r.is_ok() && *t < t0),
            "the loop never succeeded before the change: it checked nothing"
        );
        let after: Vec<_> = calls.iter().filter(|(t, _)| *t > returned).collect();
        assert!(!after.is_empty(), "no call after the change returned");
        assert!(
            after.iter().all(|(_, r)| r.is_err()),
            "{} of {} calls that started after the change returned succeeded",
            after.iter().filter(|(_, r)| r.is_ok()).count(),
            after.len()
        );
        // Refused for the key's state by a node that is serving, not
        // because the node was unavailable.
        assert!(
            after
                .iter()
                .all(|(_, r)| *r == Err(Code::FailedPrecondition)),
            "{:?}",
            after.iter().map(|(_, r)| *r).collect::<Vec<_>>()
        );
    }
    returned - t0
}

/// pg_dump of the registry's tables (not `nodes`) into `file`.
pub fn dump_registry(pg: &Postgres, file: &Path) {
    let sockets = pg.sockets().display().to_string();
    pg.run(
        "pg_dump",
        &[
            "-h",
            &sockets,
            "-U",
            "kw",
            "-Fc",
            "-t",
            "meta",
            "-t",
            "key_records",
            "-f",
            file.to_str().unwrap(),
            "postgres",
        ],
    );
}

pub fn restore_registry(pg: &Postgres, file: &Path) {
    let sockets = pg.sockets().display().to_string();
    pg.run(
        "pg_restore",
        &[
            "-h",
            &sockets,
            "-U",
            "kw",
            "-d",
            "postgres",
            "--clean",
            file.to_str().unwrap(),
        ],
    );
}

/// The seal files in PostgreSQL, as `slot set_id written_by` lines.
pub fn seal_rows(pg: &Postgres) -> String {
    pg.psql("SELECT slot || ' ' || set_id || ' ' || written_by FROM seal_files ORDER BY slot")
}

pub async fn seal_status(d: &Daemon) -> proto::SealStatus {
    let mut c = d.client().await;
    let s = c.operator.status(proto::StatusRequest {}).await.unwrap();
    s.into_inner().seal.unwrap()
}

/// `openssl` run in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl` arguments that make a new P-256 key, unencrypted.
const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// `openssl req` with a new P-256 key written to `key`, then `rest`.
fn openssl_req(dir: &Path, first: &[&str], key: &str, rest: &[&str]) {
    let mut args = first.to_vec();
    args.extend_from_slice(&NEW_P256_KEY);
    args.extend_from_slice(&["-keyout", key]);
    args.extend_from_slice(rest);
    openssl(dir, &args);
}

/// A CA named `name` in `dir`: `name.pem` and `name.key`.
pub fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    openssl_req(
        dir,
        &["req", "-x509"],
        &key,
        &["-out", &pem, "-days", "2", "-subj", &subj],
    );
}

/// A server certificate for DNS name `localhost` only, signed by `ca`:
/// `server.pem` and `server.key`.
pub fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl_req(
        dir,
        &["req"],
        "server.key",
        &["-out", "server.csr", "-subj", "/CN=localhost"],
    );
    let (pem, key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &pem,
            "-CAkey",
            &key,
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// `keywarden dev` as a node that must not start; its stderr.
pub fn dev_refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("dev")
        .arg("--dir")
        .arg(dir.path())
        .args(args)
        .env_remove("KEYWARDEN_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
