//! The SQLite backend: what of the storage layer is SQLite's own.
//!
//! * Connecting: WAL, `synchronous=NORMAL`, a busy timeout, foreign keys, a small pool.
//! * Migrations: `migrations/sqlite/` (byte-identical to the files deployed databases applied).
//! * Locking: SQLite has one writer at a time. A transaction that reads before it writes must
//!   take the write lock first ([`begin_queue_write`]: `BEGIN IMMEDIATE`); a deferred one that
//!   loses the race for the lock after reading fails at once with SQLITE_BUSY_SNAPSHOT (the busy
//!   timeout does not apply). A single statement takes the write lock before it reads, and
//!   waits for it (busy timeout), so single-statement read-modify-writes are atomic.
//!
//! The items here are the backend contract the shared code uses through `with_pool!`:
//! [`MIGRATOR`], [`begin_queue_write`], [`begin_write`], [`CLAIM_NEXT`]. `postgres.rs` has their
//! PostgreSQL counterparts.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::Result;

/// The schema, embedded at build time.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a connection waits for another's write lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: u32 = 8;

pub(super) fn options_for_path(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new().filename(path)
}

/// `sqlite://PATH` (relative), `sqlite:///PATH` (absolute), with sqlx's query parameters.
pub(super) fn options_for_url(url: &str) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)?)
}

/// Opens the pool with the service's settings on top of `options` and applies migrations.
pub(super) async fn connect(options: SqliteConnectOptions) -> Result<SqlitePool> {
    let options = options
        .create_if_missing(true)
        // WAL: readers (GetJob, WatchJob) never wait for the writer (metrics batches).
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable across application crashes under WAL; only power loss can drop
        // the last transactions, and checkpoints are verified by sha256 on resume anyway.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS).connect_with(options).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// A transaction for the per-tenant queue limit's count-and-insert. `BEGIN IMMEDIATE` takes the
/// database's write lock up front (waiting out the busy timeout), so no other writer can queue
/// a job between the count and the insert, however the statements inside are split.
/// The tenant is what PostgreSQL locks on; SQLite's lock is the whole database.
pub(super) async fn begin_queue_write(pool: &SqlitePool, _tenant: &str) -> Result<Transaction<'static, Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// A transaction that writes: `BEGIN IMMEDIATE`, the write lock first (see the module doc).
pub(super) async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// The claim (see `leases.rs`) in one statement: the subquery picks the oldest RUNNING job
/// whose lease expired or was released, else the next QUEUED one in fair order, and the update takes it
/// under the same write lock, so two claimers never get the same job. `$1` RUNNING, `$2` now
/// (ms), `$3` QUEUED, `$4` the node, `$5` the lease's end, `$6` the most RUNNING jobs a tenant
/// may have (fair scheduling: see `leases.rs`).
pub(super) const CLAIM_NEXT: &str = concat!(
    // Never before its creation, whatever the clocks of the node that created it and this one.
    "UPDATE jobs SET state = $1, started_ms = COALESCE(started_ms, CASE WHEN created_ms > $2 THEN created_ms ELSE $2 END), ",
    "attempts = attempts + 1, ",
    "lease_owner = $4, lease_expires_ms = $5 ",
    "WHERE id = (SELECT q.id FROM jobs q JOIN (",
    // Per tenant with work waiting: jobs RUNNING, the last start, the oldest QUEUED job.
    // A tracked run that its client reports to (`reported_ms` set) runs no worker: it neither
    // counts as running here nor is ever claimed.
    "SELECT tenant, SUM(CASE WHEN state = $1 AND reported_ms IS NULL THEN 1 ELSE 0 END) AS running, ",
    "COALESCE(MAX(started_ms), 0) AS last_start, MIN(CASE WHEN state = $3 THEN id END) AS oldest ",
    "FROM jobs WHERE tenant IN (SELECT tenant FROM jobs WHERE state IN ($1, $3)) GROUP BY tenant",
    ") t ON t.tenant = q.tenant WHERE ",
    "(q.state = $1 AND q.reported_ms IS NULL AND COALESCE(q.lease_expires_ms, 0) < $2) OR (q.state = $3 AND t.running < $6) ",
    "ORDER BY CASE WHEN q.state = $1 THEN 0 ELSE 1 END, t.running, t.last_start, t.oldest, q.priority DESC, q.id ",
    "LIMIT 1) ",
    "RETURNING ",
    job_columns!()
);
