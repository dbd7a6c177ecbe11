//! The shared registry store: a PostgreSQL database that every node of a
//! cluster uses (`[registry] url = "postgresql://..."`).
//!
//! The client is the synchronous `postgres` crate (the blocking face of
//! `tokio-postgres`, the maintained pure-Rust driver): the core is
//! synchronous and runs on worker threads, and `LISTEN`/`NOTIFY`, which the
//! cluster needs, is part of it. The store keeps bytes only; every
//! integrity check is [`super::Registry`]'s, as on SQLite.
//!
//! The schema is created by numbered migrations, each applied once, in one
//! transaction under an advisory lock so that nodes starting together do
//! not race (`schema_migrations` records which ran).

use std::path::Path;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls};
use zeroize::Zeroizing;

use super::{
    Commit, RawIntent, RawRow, RawState, RegistryError, RegistryStore, RowKind, SCHEMA_VERSION,
};

/// The channel a commit notifies (payload: the new generation).
pub const CHANGES_CHANNEL: &str = "keywarden_registry";
/// The channel a node notifies when it has applied a generation.
pub const ACKS_CHANNEL: &str = "keywarden_acks";
/// The advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x6b77_0001;

/// The migrations, in order. Never edit one that has shipped: add another.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE meta (k text PRIMARY KEY, v text NOT NULL);
     INSERT INTO meta (k, v) VALUES ('generation', '0'), ('schema_version', '2');
     CREATE TABLE intents (
         hsm_id bytea PRIMARY KEY CHECK (length(hsm_id) = 16),
         label text NOT NULL,
         mac text NOT NULL
     );
     CREATE TABLE key_records (
         id bytea PRIMARY KEY CHECK (length(id) = 16),
         name text NOT NULL UNIQUE,
         record text NOT NULL,
         gen bigint NOT NULL,
         mac text NOT NULL
     );
     CREATE TABLE nodes (
         node_id text PRIMARY KEY,
         lease_until timestamptz NOT NULL,
         applied_gen bigint NOT NULL,
         host text NOT NULL,
         pid integer NOT NULL,
         instance text NOT NULL,
         joined_at timestamptz NOT NULL DEFAULT now()
     );",
    ),
    (
        2,
        // The cluster's seal files (src/cluster/seal.rs): authenticated
        // by their own MAC, as seal.json is.
        "CREATE TABLE seal_files (
         slot text PRIMARY KEY CHECK (slot IN ('current', 'pending')),
         set_id text NOT NULL,
         body text NOT NULL,
         written_by text NOT NULL,
         written_at timestamptz NOT NULL DEFAULT now()
     );",
    ),
];

/// Where the database is and how to log in. The password, if any, comes
/// from a file (or a systemd credential), never from the config text.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    /// TLS to the server, verified against `registry.ca_file` alone; `None`
    /// only where every host is a Unix socket or a loopback address.
    tls: Option<postgres_openssl::MakeTlsConnector>,
    /// What logs and errors show: the URL without any password.
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether a host is reached without leaving this machine: a Unix socket,
/// `localhost`, or a loopback address.
fn is_local(host: &postgres::config::Host) -> bool {
    match host {
        postgres::config::Host::Unix(_) => true,
        postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// Why a `[registry]` PostgreSQL target was refused: each names the
/// setting at fault and keeps the library's error as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// `registry.url` is neither a URL nor a key=value connection string.
    #[error("registry.url does not parse: {0}")]
    Url(#[source] postgres::Error),
    /// `registry.url` holds a password: config text is not for secrets.
    #[error("registry.url: holds a password; put it in registry.password_file (or the systemd credential registry-password) instead")]
    Password,
    /// `registry.url` names no host.
    #[error("registry.url: names no host (give host= or a URL with one)")]
    NoHost,
    /// `sslmode=disable` with `registry.ca_file` set.
    #[error(
        "registry.url: sslmode=disable contradicts registry.ca_file (which asks for TLS); drop one"
    )]
    TlsDisabled,
    /// `registry.ca_file` set with a Unix-socket host, where PostgreSQL
    /// speaks no TLS.
    #[error("registry.ca_file: TLS is for TCP hosts, and {host} is a Unix socket (PostgreSQL speaks no TLS there); drop registry.ca_file or give a TCP host")]
    TlsOnSocket {
        /// The socket host.
        host: String,
    },
    /// `sslmode=require` without `registry.ca_file`: TLS that would trust
    /// any server.
    #[error("registry.url: sslmode=require needs registry.ca_file, the CA that signed the server's certificate (TLS without it would trust any server)")]
    TlsWithoutCa,
    /// A host off this machine without `registry.ca_file`: the leases and
    /// key records would cross the network unauthenticated.
    #[error("registry.url: host {host} is off this machine and registry.ca_file is not set: a node's leases and the key records would cross the network unauthenticated; set registry.ca_file (TLS), or reach the database on a Unix socket or loopback")]
    RemoteHost {
        /// The first such host.
        host: String,
    },
    /// A non-loopback `hostaddr` without `registry.ca_file`.
    #[error("registry.url: hostaddr {addr} is off this machine and registry.ca_file is not set; set registry.ca_file (TLS)")]
    RemoteAddr {
        /// The first such address.
        addr: std::net::IpAddr,
    },
    /// `registry.ca_file` cannot be read.
    #[error("registry.ca_file: {}: {source}", path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// `registry.ca_file` is not PEM certificates.
    #[error("registry.ca_file: {}: not PEM certificates: {source}", path.display())]
    NotPem {
        /// The file.
        path: std::path::PathBuf,
        /// What OpenSSL made of it.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// `registry.ca_file` parses but holds no certificate.
    #[error("registry.ca_file: {}: holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The TLS client could not be set up.
    #[error("registry.ca_file: TLS setup: {0}")]
    Tls(#[source] openssl::error::ErrorStack),
}

/// A TLS client that trusts only the CA certificates in `ca_file` (not the
/// system's store), checks the server's name against its certificate, and
/// speaks TLS 1.2 or later.
fn tls_connector(ca_file: &Path) -> Result<postgres_openssl::MakeTlsConnector, TargetError> {
    use openssl::ssl::{SslConnector, SslMethod, SslVersion};
    use openssl::x509::X509;
    let path = || ca_file.to_path_buf();
    let pem = std::fs::read(ca_file).map_err(|source| TargetError::CaFile {
        path: path(),
        source,
    })?;
    let certs = X509::stack_from_pem(&pem).map_err(|source| TargetError::NotPem {
        path: path(),
        source,
    })?;
    if certs.is_empty() {
        return Err(TargetError::NoCertificate { path: path() });
    }
    let tls_err = TargetError::Tls;
    // A builder from SslConnector starts with peer verification on and an
    // empty trust store: only the certificates added here are trusted.
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(tls_err)?;
    for cert in certs {
        b.cert_store_mut().add_cert(cert).map_err(tls_err)?;
    }
    Ok(postgres_openssl::MakeTlsConnector::new(b.build()))
}

impl PgTarget {
    /// Parses a libpq-style URL or key=value string. A password in it is
    /// refused (it belongs in `password_file`). With `ca_file`, every
    /// connection is TLS, verified against that CA and the host's name;
    /// without it, a host off this machine is refused, because the leases
    /// that bound a revocation must not be forgeable on the wire.
    pub fn parse(
        url: &str,
        password: Option<Zeroizing<String>>,
        ca_file: Option<&Path>,
    ) -> Result<Self, TargetError> {
        use postgres::config::SslMode;
        let mut config: postgres::Config = url.parse().map_err(TargetError::Url)?;
        if config.get_password().is_some() {
            return Err(TargetError::Password);
        }
        if config.get_hosts().is_empty() {
            return Err(TargetError::NoHost);
        }
        let tls = match ca_file {
            Some(ca) => {
                if config.get_ssl_mode() == SslMode::Disable {
                    return Err(TargetError::TlsDisabled);
                }
                if let Some(h) = config
                    .get_hosts()
                    .iter()
                    .find(|h| matches!(h, postgres::config::Host::Unix(_)))
                {
                    return Err(TargetError::TlsOnSocket {
                        host: format!("{h:?}"),
                    });
                }
                // Required, never preferred: a server (or a man in the
                // middle) that declines TLS gets no plaintext fallback.
                config.ssl_mode(SslMode::Require);
                Some(tls_connector(ca)?)
            }
            None => {
                if config.get_ssl_mode() == SslMode::Require {
                    return Err(TargetError::TlsWithoutCa);
                }
                let remote = config.get_hosts().iter().find(|h| !is_local(h));
                if let Some(h) = remote {
                    return Err(TargetError::RemoteHost {
                        host: format!("{h:?}"),
                    });
                }
                if let Some(a) = config.get_hostaddrs().iter().find(|a| !a.is_loopback()) {
                    return Err(TargetError::RemoteAddr { addr: *a });
                }
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        if let Some(p) = password {
            config.password(p.as_bytes());
        }
        // A stalled server or a cut network must end in an error, not hang
        // a writer (which holds the registry's lock) or the node's thread.
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10))
            // The server's side too: a half-dead connection (a partitioned
            // leader) releases its advisory lock in seconds, not hours, and
            // a node frozen inside a transaction holds the registry's lock
            // for at most 5 s.
            .options(
                "-c statement_timeout=10000 -c lock_timeout=10000 \
                 -c idle_in_transaction_session_timeout=5000 \
                 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3",
            );
        if config.get_application_name().is_none() {
            config.application_name("keywarden");
        }
        let shown = format!(
            "postgresql (hosts {:?}, database {:?}, user {:?}, {})",
            config.get_hosts(),
            config.get_dbname().unwrap_or(""),
            config.get_user().unwrap_or(""),
            if tls.is_some() {
                "TLS"
            } else {
                "no TLS: local"
            }
        );
        Ok(PgTarget { config, tls, shown })
    }

    /// A new connection.
    pub fn connect(&self) -> Result<Client, RegistryError> {
        clear_tls_errors();
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
        .map_err(pg_err)
    }
}

/// Empties this thread's OpenSSL error queue. The PKCS#11 modules in this
/// process (SoftHSM, Kryoptic) use OpenSSL too and can leave errors on it
/// (an engine that did not load at C_Initialize); OpenSSL's TLS reads any
/// error on the queue as its own and fails the connection. Called before
/// every use of a database connection.
pub fn clear_tls_errors() {
    let _ = openssl::error::ErrorStack::get();
}

/// A statement's failure: the server refused it, or it could not be
/// reached (a closed connection, a refused connect, an I/O error).
pub fn pg_err(e: postgres::Error) -> RegistryError {
    let answered = e
        .as_db_error()
        .map(|db| (db.code().clone(), db.message().to_string()));
    match answered {
        Some((code, message)) => match code {
            SqlState::ADMIN_SHUTDOWN
            | SqlState::CRASH_SHUTDOWN
            | SqlState::CANNOT_CONNECT_NOW
            | SqlState::CONNECTION_FAILURE
            | SqlState::CONNECTION_EXCEPTION
            | SqlState::TOO_MANY_CONNECTIONS
            | SqlState::T_R_SERIALIZATION_FAILURE
            | SqlState::T_R_DEADLOCK_DETECTED
            | SqlState::READ_ONLY_SQL_TRANSACTION
            | SqlState::QUERY_CANCELED
            | SqlState::LOCK_NOT_AVAILABLE
            | SqlState::INVALID_PASSWORD
            | SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            | SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
            | SqlState::IDLE_SESSION_TIMEOUT => RegistryError::Unreachable {
                why: format!("{}: {message}", code.code()),
                source: Some(e),
            },
            _ => RegistryError::Postgres {
                code: code.code().to_string(),
                message,
                source: e,
            },
        },
        // The cause says why (a refused connection, a certificate that
        // did not verify), which the error's own text leaves out.
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                let more = c.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                cause = c.source();
            }
            RegistryError::Unreachable {
                why: text,
                source: Some(e),
            }
        }
    }
}

/// The PostgreSQL [`RegistryStore`]: one connection, made again when it
/// is found lost.
pub struct PgStore {
    target: PgTarget,
    client: Option<Client>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // A client dropped on an async runtime's thread panics (it runs a
        // runtime of its own): let a plain thread close it.
        if let Some(c) = self.client.take() {
            close_off_runtime(c);
        }
    }
}

/// Closes a database client on a thread of its own (safe from anywhere).
pub fn close_off_runtime(c: Client) {
    let _ = std::thread::Builder::new()
        .name("kw-pg-close".into())
        .spawn(move || {
            let _ = c.close();
        });
}

impl PgStore {
    /// Connects and applies the migrations this build knows.
    pub fn open(target: PgTarget) -> Result<Self, RegistryError> {
        let mut s = PgStore {
            target,
            client: None,
        };
        let c = s.client()?;
        migrate(c)?;
        Ok(s)
    }

    /// The connection, made again if it was lost.
    fn client(&mut self) -> Result<&mut Client, RegistryError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.client = Some(self.target.connect()?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| RegistryError::Unreachable {
                why: "no connection".into(),
                source: None,
            })
    }

    /// Runs `f` on the connection; a connection found broken is dropped so
    /// that the next call makes a new one.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        clear_tls_errors();
        let out = f(self.client()?);
        if matches!(out, Err(RegistryError::Unreachable { .. })) {
            self.client = None;
        }
        out
    }
}

/// Applies every migration not yet applied, once, whoever runs first.
pub fn migrate(c: &mut Client) -> Result<(), RegistryError> {
    let mut tx = c.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .map_err(pg_err)?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .map_err(pg_err)?;
    let done: i32 = col(&row, 0)?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if done > known {
        return Err(RegistryError::Corrupt(format!(
            "the database's schema is at migration {done}; this build knows up to {known} (a newer Keywarden ran on it)"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > done) {
        tx.batch_execute(sql).map_err(pg_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .map_err(pg_err)?;
    }
    let v = meta(&mut tx, "schema_version")?;
    if v.as_deref() != Some(SCHEMA_VERSION) {
        return Err(RegistryError::Corrupt(format!(
            "schema version {v:?} is not supported (this build knows {SCHEMA_VERSION})"
        )));
    }
    tx.commit().map_err(pg_err)
}

fn parse_gen(v: Option<String>) -> u64 {
    v.and_then(|g| g.parse().ok()).unwrap_or(0)
}

/// A column of a row; a type the schema does not give it (an altered
/// table) is corruption, not a panic.
fn col<'a, T: postgres::types::FromSql<'a>>(
    r: &'a postgres::Row,
    i: usize,
) -> Result<T, RegistryError> {
    r.try_get(i)
        .map_err(|e| RegistryError::Corrupt(format!("the database's schema was altered: {e}")))
}

fn meta(c: &mut impl postgres::GenericClient, k: &str) -> Result<Option<String>, RegistryError> {
    match c
        .query_opt("SELECT v FROM meta WHERE k = $1", &[&k])
        .map_err(pg_err)?
    {
        Some(r) => Ok(Some(col(&r, 0)?)),
        None => Ok(None),
    }
}

fn set_meta(c: &mut impl postgres::GenericClient, k: &str, v: &str) -> Result<(), RegistryError> {
    c.execute(
        "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        &[&k, &v],
    )
    .map_err(pg_err)?;
    Ok(())
}

fn intents(c: &mut impl postgres::GenericClient) -> Result<Vec<RawIntent>, RegistryError> {
    c.query(
        "SELECT hsm_id, label, mac FROM intents ORDER BY hsm_id",
        &[],
    )
    .map_err(pg_err)?
    .into_iter()
    .map(|r| {
        Ok(RawIntent {
            hsm_id: col(&r, 0)?,
            label: col(&r, 1)?,
            mac: col(&r, 2)?,
        })
    })
    .collect::<Result<_, RegistryError>>()
}

fn as_i64(g: u64) -> Result<i64, RegistryError> {
    i64::try_from(g).map_err(|_| RegistryError::Corrupt(format!("generation {g} out of range")))
}

impl RegistryStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn close(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close();
        }
    }

    fn load(&mut self) -> Result<RawState, RegistryError> {
        self.with(|c| {
            // One snapshot: the rows and the manifest are of one commit.
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg_err)?;
            let generation = parse_gen(meta(&mut tx, "generation")?);
            let manifest = meta(&mut tx, "manifest")?;
            let manifest_mac = meta(&mut tx, "manifest_mac")?;
            let rows = tx
                .query(
                    "SELECT id, name, record, gen, mac FROM key_records ORDER BY name",
                    &[],
                )
                .map_err(pg_err)?
                .into_iter()
                .map(|r| {
                    Ok(RawRow {
                        id: col(&r, 0)?,
                        name: col(&r, 1)?,
                        record: col(&r, 2)?,
                        gen: col::<i64>(&r, 3)? as u64,
                        mac: col(&r, 4)?,
                    })
                })
                .collect::<Result<_, RegistryError>>()?;
            let intents = intents(&mut tx)?;
            tx.commit().map_err(pg_err)?;
            Ok(RawState {
                generation,
                manifest,
                manifest_mac,
                rows,
                intents,
            })
        })
    }

    fn generation(&mut self) -> Result<u64, RegistryError> {
        self.with(|c| Ok(parse_gen(meta(c, "generation")?)))
    }

    fn commit(&mut self, cm: &Commit<'_>) -> Result<(), RegistryError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            // The generation row is the registry's one lock: writers from
            // every node queue on it, and each checks it built on the last.
            let found = match tx
                .query_opt("SELECT v FROM meta WHERE k = 'generation' FOR UPDATE", &[])
                .map_err(pg_err)?
            {
                Some(r) => parse_gen(Some(col(&r, 0)?)),
                None => 0,
            };
            if found != cm.prev_gen {
                return Err(RegistryError::Stale {
                    expected: cm.prev_gen,
                    found,
                });
            }
            let gen = as_i64(cm.gen)?;
            for row in cm.rows {
                let id = row.id.as_slice();
                match row.kind {
                    RowKind::New => {
                        let n = tx
                            .execute(
                                "INSERT INTO key_records (id, name, record, gen, mac)
                                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                                &[&id, &row.name, &row.record, &gen, &row.mac],
                            )
                            .map_err(pg_err)?;
                        if n != 1 {
                            return Err(RegistryError::AlreadyExists(row.name.to_string()));
                        }
                    }
                    RowKind::Update => {
                        let n = tx
                            .execute(
                                "UPDATE key_records SET record = $2, gen = $3, mac = $4 WHERE id = $1",
                                &[&id, &row.record, &gen, &row.mac],
                            )
                            .map_err(pg_err)?;
                        if n != 1 {
                            return Err(RegistryError::Corrupt(format!(
                                "key {:?} has no row to update",
                                row.name
                            )));
                        }
                    }
                    RowKind::Replace => {
                        tx.execute("DELETE FROM key_records WHERE id = $1", &[&id])
                            .map_err(pg_err)?;
                        tx.execute(
                            "INSERT INTO key_records (id, name, record, gen, mac)
                             VALUES ($1, $2, $3, $4, $5)",
                            &[&id, &row.name, &row.record, &gen, &row.mac],
                        )
                        .map_err(pg_err)?;
                    }
                }
            }
            set_meta(&mut tx, "generation", &cm.gen.to_string())?;
            set_meta(&mut tx, "manifest", cm.manifest)?;
            set_meta(&mut tx, "manifest_mac", cm.manifest_mac)?;
            // Delivered to every listening node when (and only if) this
            // commits.
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANGES_CHANNEL, &cm.gen.to_string()],
            )
            .map_err(pg_err)?;
            tx.commit().map_err(pg_err)
        })
    }

    fn put_intent(&mut self, i: &RawIntent) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO intents (hsm_id, label, mac) VALUES ($1, $2, $3)
                 ON CONFLICT (hsm_id) DO UPDATE SET label = excluded.label, mac = excluded.mac",
                &[&i.hsm_id, &i.label, &i.mac],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn clear_intent(&mut self, hsm_id: &[u8; 16]) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM intents WHERE hsm_id = $1",
                &[&hsm_id.as_slice()],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn intents(&mut self) -> Result<Vec<RawIntent>, RegistryError> {
        self.with(intents)
    }

    fn foreign_schema(&mut self) -> Result<Vec<String>, RegistryError> {
        self.with(|c| {
            let own = [
                "meta",
                "intents",
                "key_records",
                "nodes",
                "schema_migrations",
            ];
            let mut out = Vec::new();
            for r in c
                .query(
                    "SELECT 'table ' || table_name, table_name FROM information_schema.tables
                       WHERE table_schema = current_schema()
                     UNION ALL
                     SELECT 'trigger ' || trigger_name, '' FROM information_schema.triggers
                       WHERE event_object_schema = current_schema()
                     UNION ALL
                     SELECT 'rule ' || rulename, '' FROM pg_rules
                       WHERE schemaname = current_schema()",
                    &[],
                )
                .map_err(pg_err)?
            {
                let (what, table): (String, String) = (col(&r, 0)?, col(&r, 1)?);
                if !own.contains(&table.as_str()) {
                    out.push(what);
                }
            }
            Ok(out)
        })
    }
}
