//! A real, throwaway PostgreSQL server for tests: `initdb` + `pg_ctl start` in a temporary
//! directory, on a free loopback port, trust authentication, `fsync=off`. It can be stopped and
//! started again on the same port and data (a database outage mid-test), and is stopped
//! (`pg_ctl stop -m immediate`) and its directory removed when dropped.
//!
//! Shared by prune-server's storage tests (`pg_support.rs`, one server per test binary) and the
//! end-to-end cluster harness in `tests/` (`#[path]`-included there, one server per test): it
//! uses nothing but std, tempfile, libc and sqlx.
//!
//! The binaries are looked up in `PATH`, then in `/usr/lib/postgresql/15/bin` (Debian's
//! `postgresql-15`; `scripts/setup-postgres.sh` installs it). PostgreSQL refuses to run as root,
//! so as root `initdb` and `pg_ctl` run as the `postgres` user (`runuser`). Without PostgreSQL
//! starting fails with a message saying so: CI must not pass without it.

// Each includer uses a part of it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// Where Debian's `postgresql-15` puts its binaries (not in `PATH`).
pub const DEBIAN_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The OS user PostgreSQL runs as when the tests run as root, and the superuser's name.
pub const OS_USER: &str = "postgres";

/// A running (or stopped, see [`PgServer::stop`]) PostgreSQL server on 127.0.0.1.
pub struct PgServer {
    bin: PathBuf,
    as_postgres: bool,
    data: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// `initdb`, then `pg_ctl start` on a free port (a few tries: another process may take the
    /// port between our probe and the server's bind).
    pub fn start() -> Result<PgServer, String> {
        let bin = bin_dir().ok_or_else(|| {
            format!(
                "PostgreSQL is required by these tests but `initdb` is neither in PATH nor in {DEBIAN_BIN_DIR}: \
                 run `make setup` (scripts/setup-postgres.sh installs Debian's postgresql-15)"
            )
        })?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("prune-pg-").tempdir().map_err(|e| format!("temporary dir: {e}"))?;
        if as_postgres {
            run(Command::new("chown").arg(format!("{OS_USER}:")).arg(dir.path()), "chown")?;
        }
        let data = dir.path().join("data");
        let mut initdb = command(&bin.join("initdb"), as_postgres);
        initdb.arg("-D").arg(&data).args(["-U", OS_USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        run(&mut initdb, "initdb")?;

        let mut server = PgServer { bin, as_postgres, data, port: 0, dir };
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(format!("{last_error}\nserver log:\n{}", server.log()))
    }

    /// `pg_ctl start` on the port and data it had: after [`PgServer::stop`].
    pub fn start_again(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=500",
            self.port,
            self.dir.path().display()
        );
        let mut start = command(&self.bin.join("pg_ctl"), self.as_postgres);
        start.arg("start").arg("-D").arg(&self.data).arg("-l").arg(self.dir.path().join("server.log"));
        start.args(["-w", "-t", "60", "-s", "-o", &options]);
        run(&mut start, "pg_ctl start")
    }

    /// `pg_ctl stop -m fast`: clients are disconnected, the data stays.
    pub fn stop(&self) -> Result<(), String> {
        self.pg_ctl_stop("fast")
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        let mut stop = command(&self.bin.join("pg_ctl"), self.as_postgres);
        stop.arg("stop").arg("-D").arg(&self.data).args(["-m", mode, "-w", "-s"]);
        run(&mut stop, "pg_ctl stop")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on this server (superuser, trust).
    pub fn url(&self, database: &str) -> String {
        url(self.port, database)
    }

    /// `CREATE DATABASE name`; returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, String> {
        create_database(self.port, name).await
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
    }
}

pub fn url(port: u16, database: &str) -> String {
    format!("postgres://{OS_USER}@127.0.0.1:{port}/{database}")
}

/// `CREATE DATABASE name` on the server listening on `port`; returns the database's URL.
pub async fn create_database(port: u16, name: &str) -> Result<String, String> {
    let mut admin = PgConnection::connect(&url(port, "postgres"))
        .await
        .map_err(|e| format!("connecting to the test PostgreSQL server on port {port}: {e}"))?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
    admin.close().await.ok();
    Ok(url(port, name))
}

fn bin_dir() -> Option<PathBuf> {
    let in_path =
        std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>()).unwrap_or_default();
    in_path
        .into_iter()
        .chain([PathBuf::from(DEBIAN_BIN_DIR)])
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// `program`, through `runuser -u postgres --` when the tests run as root.
fn command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        // In /usr/sbin, which a non-login root shell's PATH may lack.
        let runuser = ["/usr/sbin/runuser", "/sbin/runuser"].into_iter().find(|p| Path::new(p).is_file());
        let mut cmd = Command::new(runuser.unwrap_or("runuser"));
        // The postgres user may not be able to read the test's working directory.
        cmd.args(["-u", OS_USER, "--"]).arg(program).current_dir("/");
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let Output { status, stdout, stderr } =
        cmd.output().map_err(|e| format!("{what} ({}): {e}", cmd.get_program().to_string_lossy()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({status}): {}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ))
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}
