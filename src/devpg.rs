//! A throwaway PostgreSQL server for development, tests and `keywarden
//! bench --cluster`: Debian's `initdb` in a temporary directory, listening
//! only on a Unix socket there, run as `nobody` when started by root
//! (PostgreSQL refuses root), stopped and removed on drop. Never for real
//! data: `fsync` is off and every local user on the socket is trusted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A running server.
pub struct Postgres {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    sockets: PathBuf,
    run_as: Vec<String>,
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

impl Postgres {
    /// `initdb` and start.
    pub fn start() -> anyhow::Result<Postgres> {
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
        let pg = Postgres {
            _tmp: tmp,
            data,
            sockets,
            run_as,
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
        pg.up()?;
        Ok(pg)
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
        let opts = format!(
            "-c listen_addresses='' -k {} -c fsync=off",
            self.sockets.display()
        );
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

    /// A connection string for `[registry] url`.
    pub fn url(&self) -> String {
        format!("host={} user=kw dbname=postgres", self.sockets.display())
    }

    /// Runs SQL with `psql`; its unaligned output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let host = self.sockets.display().to_string();
        self.run(
            &pg_bin("psql")?,
            &[
                "-h",
                &host,
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
