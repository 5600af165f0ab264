//! A real PostgreSQL server for the tests, nothing mocked: the first test of a binary that asks
//! for a PostgreSQL database starts one ([`PgServer`], `pg_server.rs`: `initdb` + `pg_ctl start`
//! in a temporary directory, on a free loopback port, trust authentication, `fsync=off`); every
//! test then gets a database of its own (`CREATE DATABASE test_N`) on it. The server is stopped
//! (`pg_ctl stop -m immediate`) and its directory removed when the test binary exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::pg_server::{self, PgServer};
use super::Db;

/// The running server's port (127.0.0.1, superuser `postgres`, trust).
static PORT: OnceLock<Result<u16, String>> = OnceLock::new();
/// Dropped (server stopped, directory removed) at exit, see [`stop_at_exit`].
static SERVER: Mutex<Option<PgServer>> = Mutex::new(None);
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// A fresh, migrated database on the test server, through [`Db::connect`] as the server uses it.
pub(crate) async fn db() -> Db {
    let url = create_database().await;
    Db::connect(&url).await.unwrap_or_else(|e| panic!("connecting to the test database {url}: {e}"))
}

/// A new empty database on the test server (started on first use); returns its URL.
pub(crate) async fn create_database() -> String {
    let name = format!("test_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
    pg_server::create_database(port(), &name).await.unwrap_or_else(|e| panic!("{e}"))
}

fn port() -> u16 {
    match PORT.get_or_init(start) {
        Ok(port) => *port,
        Err(e) => panic!("{e}"),
    }
}

fn start() -> Result<u16, String> {
    let server = PgServer::start()?;
    let port = server.port();
    *SERVER.lock().unwrap() = Some(server);
    stop_at_exit();
    Ok(port)
}

/// Statics are never dropped: the server is dropped by an `atexit` handler instead, which runs
/// when the test binary returns from `main` or calls `exit` (failed tests included).
fn stop_at_exit() {
    extern "C" fn stop() {
        if let Ok(mut server) = SERVER.lock() {
            drop(server.take());
        }
    }
    // SAFETY: `stop` is a plain function that neither unwinds (every error is ignored) nor
    // calls `exit`; registering it has no other effect.
    unsafe {
        libc::atexit(stop);
    }
}
