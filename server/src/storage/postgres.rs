//! The PostgreSQL backend (`postgres://...`): what of the storage layer is PostgreSQL's own,
//! the counterpart of `sqlite.rs`.
//!
//! * Connecting: sqlx's options from the URL (host, port, user, password, database, `sslmode`,
//!   ...), no pragmas; one probe connection first so that an unreachable server or a refused
//!   login is reported with its reason at once (the pool itself would retry a refused
//!   connection until its acquire timeout and then say only "pool timed out").
//! * Migrations: `migrations/postgres/` (every integer column `BIGINT`, so the shared code's
//!   `i64` binds and reads type-check against `INT8`).
//! * Locking: transactions run at READ COMMITTED. [`begin_queue_write`] takes
//!   [`LOCK_TENANT_QUEUE`], a transaction-scoped advisory lock on the tenant: under READ
//!   COMMITTED two concurrent `INSERT ... SELECT ... WHERE (SELECT COUNT(*) ...) < limit` would
//!   both count the same snapshot and both insert; the lock makes one tenant's CreateJobs take
//!   turns (other tenants are not blocked) and is released at COMMIT/ROLLBACK. SERIALIZABLE
//!   would also be correct but turns the race into serialization failures that the caller
//!   must retry.
//! * The claim: [`CLAIM_NEXT`]'s subquery locks the row it picks with
//!   `FOR UPDATE SKIP LOCKED`. Without it, two claimers pick the same oldest job; the second
//!   blocks on the first's row lock, re-checks `state = QUEUED` after it commits, updates
//!   nothing and returns no job although others are queued. With it, the second skips the
//!   locked row and takes the next. (The pattern of River's `JobGetAvailable` and Oban's fetch,
//!   for one job.)
//!
//! Measured against PostgreSQL 15 before the backend was wired in (psql, typed prepared
//! statements as sqlx sends them): 50 concurrent inserts of one tenant with limit 10 queued 14
//! jobs without [`LOCK_TENANT_QUEUE`] and exactly 10 with it. `concurrency_tests.rs` now runs
//! both properties through [`super::Db`] on this backend and on SQLite; with the lock or
//! `SKIP LOCKED` taken out, its PostgreSQL half fails (11 queued; a claim empty with 30 queued).
//!
//! The items here are the backend contract the shared code uses through `with_pool!`:
//! [`MIGRATOR`], [`begin_queue_write`], [`begin_write`], [`CLAIM_NEXT`], with the same parameters, in
//! the same order, as the SQLite items, so the shared code binds them once for both.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, Transaction};

use super::Result;

/// The schema, embedded at build time.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Connections per server process. The scheduler, the API handlers and the metrics writer
/// share them; PostgreSQL's default `max_connections` (100) leaves room for several servers.
const MAX_CONNECTIONS: u32 = 16;
/// How long a caller waits for a free connection (or for a new one to be opened).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// `postgres://[user[:password]@]host[:port]/database[?sslmode=...]`, as sqlx parses it.
pub(super) fn options_for_url(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?)
}

/// Checks that the server answers and accepts the login (one connection, closed again), then
/// opens the pool and applies migrations. Concurrent servers migrating the same database are
/// serialised by sqlx's own advisory lock.
///
/// Every session gets `idle_in_transaction_session_timeout = idle_in_transaction`: a node that
/// stops inside a transaction (paused, frozen, cut off) must not keep the job rows it locked,
/// or no other node could claim them (`SKIP LOCKED` skips them) and its leases could never be
/// taken over. PostgreSQL ends such a session, and with it the locks, after this long; the
/// service's own transactions never wait on the client between statements.
pub(super) async fn connect(options: PgConnectOptions, idle_in_transaction: Duration) -> Result<PgPool> {
    let options =
        options.options([("idle_in_transaction_session_timeout", idle_in_transaction.as_millis().max(1).to_string())]);
    let probe = options.connect().await?;
    probe.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// After `BEGIN`: serialises the queue-limit check of one tenant (`$1`) until the transaction
/// ends. The prefix keeps the key apart from other uses of advisory locks (up to a 64-bit hash
/// collision, which would only make two tenants take turns).
pub(super) const LOCK_TENANT_QUEUE: &str = "SELECT pg_advisory_xact_lock(hashtextextended('prune.queue:' || $1, 0))";

/// A transaction for the per-tenant queue limit's count-and-insert: `BEGIN` (READ COMMITTED)
/// then [`LOCK_TENANT_QUEUE`] on `tenant`, so no other CreateJob of the same tenant can count
/// or insert until this one commits or rolls back.
pub(super) async fn begin_queue_write(pool: &PgPool, tenant: &str) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_TENANT_QUEUE).bind(tenant).execute(&mut *tx).await?;
    Ok(tx)
}

/// A transaction that writes: `BEGIN` (READ COMMITTED; row locks order the writers).
pub(super) async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    Ok(pool.begin().await?)
}

/// The claim (see `leases.rs`): the oldest RUNNING job whose lease expired or was released,
/// else the next QUEUED one in fair order, that no other claimer holds, becomes RUNNING under
/// a new attempt with `$4`'s lease until `$5`. `$1` RUNNING, `$2` now (ms), `$3` QUEUED, `$4`
/// the node, `$5` the lease's end, `$6` the per-tenant RUNNING limit (as in
/// `sqlite::CLAIM_NEXT`). The outer condition repeats the inner one: a row changed between the
/// pick and the lock is re-checked by READ COMMITTED's update and then not taken. Under
/// concurrent claims the per-tenant count may be one claim stale on each node: the limit is
/// exact on one node and may be exceeded by up to the number of nodes minus one.
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
    "LIMIT 1 FOR UPDATE OF q SKIP LOCKED) ",
    "AND (state = $3 OR (state = $1 AND reported_ms IS NULL AND COALESCE(lease_expires_ms, 0) < $2)) ",
    "RETURNING ",
    job_columns!()
);
