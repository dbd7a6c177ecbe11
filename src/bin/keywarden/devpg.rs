//! A throwaway PostgreSQL server for development, tests and `keywarden
//! bench --cluster`: Debian's `initdb` in a temporary directory, listening
//! only on a Unix socket there, run as `nobody` when started by root
//! (PostgreSQL refuses root), stopped and removed on drop. With
//! [`Postgres::start_tls`] it listens on loopback TCP too, TLS only. Never
//! for real data: `fsync` is off and every local user is trusted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A running server.
pub struct Postgres {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    sockets: PathBuf,
    run_as: Vec<String>,
    /// The loopback TCP port, when the server speaks TLS there.
    tls_port: Option<u16>,
}

/// A PostgreSQL program: the newest under `/usr/lib/postgresql`.
pub fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().with_context(|| {
        format!("no {name}: run apt-get install postgresql (scripts/install-deps.sh does)")
    })
}

// `keywarden dev --postgres` starts one; the cluster tests (which compile
// this file too) use the rest: TLS, stopping it under a node, psql.
#[allow(dead_code)]
impl Postgres {
    /// `initdb` and start, on a Unix socket only.
    pub fn start() -> anyhow::Result<Postgres> {
        Self::init(None)
    }

    /// `initdb` and start, also on 127.0.0.1 with TLS (the certificate and
    /// key in PEM). TCP connections without TLS are rejected.
    pub fn start_tls(cert: &Path, key: &Path) -> anyhow::Result<Postgres> {
        Self::init(Some((cert, key)))
    }

    fn init(tls: Option<(&Path, &Path)>) -> anyhow::Result<Postgres> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new().prefix("kw-pg-").tempdir()?;
        let data = tmp.path().join("data");
        let sockets = tmp.path().join("sockets");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
        for d in [&data, &sockets] {
            std::fs::create_dir(d)?;
        }
        let mut run_as = Vec::new();
        if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::User::from_name("nobody")?.context("no user nobody")?;
            for d in [&data, &sockets] {
                nix::unistd::chown(d, Some(nobody.uid), Some(nobody.gid))?;
            }
            run_as = vec![
                "setpriv".into(),
                format!("--reuid={}", nobody.uid),
                format!("--regid={}", nobody.gid),
                "--clear-groups".into(),
            ];
        }
        let tls_port = match tls {
            None => None,
            // A port the kernel just handed out; free again once dropped.
            Some(_) => Some(
                std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port(),
            ),
        };
        let pg = Postgres {
            _tmp: tmp,
            data,
            sockets,
            run_as,
            tls_port,
        };
        let data = pg.data.display().to_string();
        pg.run(
            &pg_bin("initdb")?,
            &[
                "-D",
                &data,
                "-U",
                "kw",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        if let Some((cert, key)) = tls {
            pg.install_tls(cert, key)?;
        }
        pg.up()?;
        Ok(pg)
    }

    /// The server's certificate and key in its data directory (the key
    /// owned by the server's user, mode 0600, as PostgreSQL requires), and
    /// a pg_hba.conf that lets TCP in only over TLS.
    fn install_tls(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = self.data.join(name);
            std::fs::copy(from, &to).with_context(|| format!("{}", from.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
            if nix::unistd::geteuid().is_root() {
                let owner = std::fs::metadata(&self.data)?;
                use std::os::unix::fs::MetadataExt;
                nix::unistd::chown(
                    &to,
                    Some(nix::unistd::Uid::from_raw(owner.uid())),
                    Some(nix::unistd::Gid::from_raw(owner.gid())),
                )?;
            }
        }
        std::fs::write(
            self.data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n",
        )?;
        Ok(())
    }

    /// Runs a PostgreSQL program as the server's user; its stdout.
    pub fn run(&self, bin: &Path, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let out = cmd.args(args).output()?;
        if !out.status.success() {
            bail!(
                "{} {args:?}: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the server (again).
    pub fn up(&self) -> anyhow::Result<()> {
        let opts = match self.tls_port {
            None => format!(
                "-c listen_addresses='' -k {} -c fsync=off",
                self.sockets.display()
            ),
            Some(port) => format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off \
                 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key",
                self.sockets.display()
            ),
        };
        let log = self.sockets.join("postgres.log").display().to_string();
        let data = self.data.display().to_string();
        self.run(
            &pg_bin("pg_ctl")?,
            &["-D", &data, "-l", &log, "-w", "-o", &opts, "start"],
        )
        .map(|_| ())
    }

    /// Stops the server (a fast shutdown: sessions are cut).
    pub fn down(&self) -> anyhow::Result<()> {
        let data = self.data.display().to_string();
        self.run(
            &pg_bin("pg_ctl")?,
            &["-D", &data, "-m", "fast", "-w", "stop"],
        )
        .map(|_| ())
    }

    /// The directory of the server's socket.
    pub fn sockets(&self) -> &Path {
        &self.sockets
    }

    /// The port (PostgreSQL names its socket after it too).
    fn port(&self) -> u16 {
        self.tls_port.unwrap_or(5432)
    }

    /// A connection string for `[registry] url`, on the Unix socket.
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user=kw dbname=postgres",
            self.sockets.display(),
            self.port()
        )
    }

    /// A connection string over loopback TCP as `host` (which the server's
    /// certificate must name), when started with TLS.
    pub fn tcp_url(&self, host: &str) -> Option<String> {
        self.tls_port
            .map(|p| format!("host={host} port={p} user=kw dbname=postgres"))
    }

    /// Runs SQL with `psql`; its unaligned output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let host = self.sockets.display().to_string();
        let port = self.port().to_string();
        self.run(
            &pg_bin("psql")?,
            &[
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                "kw",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(bin) = pg_bin("pg_ctl") {
            let data = self.data.display().to_string();
            let _ = self.run(&bin, &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}
