//! A real PostgreSQL server for the tests, nothing mocked: the first test of a binary that asks
//! for a PostgreSQL database starts one (`initdb` + `pg_ctl start` in a temporary directory, on
//! a free loopback port, trust authentication, `fsync=off`); every test then gets a database of
//! its own (`CREATE DATABASE test_N`) on it. The server is stopped (`pg_ctl stop -m immediate`)
//! and its directory removed when the test binary exits.
//!
//! The binaries are looked up in `PATH`, then in `/usr/lib/postgresql/15/bin` (Debian's
//! `postgresql-15`; `scripts/setup-postgres.sh` installs it). PostgreSQL refuses to run as root,
//! so as root `initdb` and `pg_ctl` run as the `postgres` user (`runuser`). Without PostgreSQL
//! the tests fail with a message saying so: CI must not pass without it.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::Db;

/// Where Debian's `postgresql-15` puts its binaries (not in `PATH`).
const DEBIAN_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The OS user PostgreSQL runs as when the tests run as root.
const OS_USER: &str = "postgres";

/// The running server: the port it listens on (127.0.0.1, superuser `postgres`, trust).
struct Server {
    port: u16,
}

/// Stops the server and removes its directory when dropped (at exit, see [`stop_at_exit`]).
struct Guard {
    pg_ctl: PathBuf,
    as_postgres: bool,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut cmd = command(&self.pg_ctl, self.as_postgres);
        cmd.arg("stop").arg("-D").arg(&self.data).args(["-m", "immediate", "-s"]);
        let _ = cmd.output();
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static GUARD: Mutex<Option<Guard>> = Mutex::new(None);
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// A fresh, migrated database on the test server, through [`Db::connect`] as the server uses it.
pub(crate) async fn db() -> Db {
    let url = create_database().await;
    Db::connect(&url).await.unwrap_or_else(|e| panic!("connecting to the test database {url}: {e}"))
}

/// A new empty database on the test server (started on first use); returns its URL.
pub(crate) async fn create_database() -> String {
    let port = server().port;
    let name = format!("test_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
    let mut admin = PgConnection::connect(&url(port, "postgres"))
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL server on port {port}: {e}"));
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    admin.close().await.ok();
    url(port, &name)
}

fn url(port: u16, database: &str) -> String {
    format!("postgres://{OS_USER}@127.0.0.1:{port}/{database}")
}

fn server() -> &'static Server {
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

/// `initdb`, then `pg_ctl start` on a free port (a few tries: another process may take the
/// port between our probe and the server's bind).
fn start() -> Result<Server, String> {
    let bin = bin_dir().ok_or_else(|| {
        format!(
            "PostgreSQL is required by the storage tests but `initdb` is neither in PATH nor in {DEBIAN_BIN_DIR}: \
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

    let pg_ctl = bin.join("pg_ctl");
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=500",
            dir.path().display()
        );
        let mut start = command(&pg_ctl, as_postgres);
        start.arg("start").arg("-D").arg(&data).arg("-l").arg(dir.path().join("server.log"));
        start.args(["-w", "-t", "60", "-s", "-o", &options]);
        match run(&mut start, "pg_ctl start") {
            Ok(()) => {
                *GUARD.lock().unwrap() = Some(Guard { pg_ctl, as_postgres, data, _dir: dir });
                stop_at_exit();
                return Ok(Server { port });
            }
            Err(e) => last_error = e,
        }
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    Err(format!("{last_error}\nserver log:\n{log}"))
}

/// Statics are never dropped: the guard is dropped by an `atexit` handler instead, which runs
/// when the test binary returns from `main` or calls `exit` (failed tests included).
fn stop_at_exit() {
    extern "C" fn stop() {
        if let Ok(mut guard) = GUARD.lock() {
            drop(guard.take());
        }
    }
    // SAFETY: `stop` is a plain function that neither unwinds (every error is ignored) nor
    // calls `exit`; registering it has no other effect.
    unsafe {
        libc::atexit(stop);
    }
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
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.trim_ascii() == b"0")
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
