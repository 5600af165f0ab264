//! The PostgreSQL backend, prepared but not built: this build has no PostgreSQL driver (sqlx's
//! `postgres` feature is off) and [`super::Db::connect`] refuses `postgres://` URLs. The next
//! issue turns this module into the counterpart of `sqlite.rs`:
//!
//! 1. `sqlx` feature `postgres`; `Pool::Postgres(PgPool)` and its arm in `with_pool!`.
//! 2. `MIGRATOR = sqlx::migrate!("../migrations/postgres")` (every integer column `BIGINT`,
//!    so the shared code's `i64` binds and reads type-check against `INT8`).
//! 3. `connect(PgConnectOptions)`: no pragmas; pool size from configuration.
//! 4. `begin_queue_write`: `BEGIN` (READ COMMITTED) then [`LOCK_TENANT_QUEUE`], a
//!    transaction-scoped advisory lock on the tenant. Under READ COMMITTED two concurrent
//!    `INSERT ... SELECT ... WHERE (SELECT COUNT(*) ...) < limit` would both count the same
//!    snapshot and both insert; the lock makes one tenant's CreateJobs take turns (other
//!    tenants are not blocked) and is released at COMMIT/ROLLBACK. SERIALIZABLE would also be
//!    correct but turns the race into serialization failures that the caller must retry.
//! 5. [`CLAIM_NEXT_QUEUED`]: the subquery locks the row it picks with `FOR UPDATE SKIP LOCKED`.
//!    Without it, two claimers pick the same oldest job; the second blocks on the first's row
//!    lock, re-checks `state = QUEUED` after it commits, updates nothing and returns no job
//!    although others are queued. With it, the second skips the locked row and takes the next.
//!    (The pattern of River's `JobGetAvailable` and Oban's fetch, for one job.)
//! 6. Run the storage tests against a PostgreSQL URL as well (`concurrency_tests.rs` is the one
//!    that matters: queue limit and claim under concurrent callers).
//!
//! ```ignore
//! pub(super) async fn begin_queue_write(pool: &PgPool, tenant: &str) -> Result<Transaction<'static, Postgres>> {
//!     let mut tx = pool.begin().await?;
//!     sqlx::query(LOCK_TENANT_QUEUE).bind(tenant).execute(&mut *tx).await?;
//!     Ok(tx)
//! }
//! ```
//!
//! Checked by hand against PostgreSQL 15 (psql, typed prepared statements as sqlx sends them):
//! `migrations/postgres/` applies and leaves only TEXT, BIGINT and DOUBLE PRECISION columns;
//! 50 concurrent `INSERT_JOB_UNDER_LIMIT`s of one tenant with limit 10 queued 14 jobs without
//! [`LOCK_TENANT_QUEUE`] and exactly 10 with it; 12 concurrent claimers running
//! [`CLAIM_NEXT_QUEUED`] took 34 queued jobs, each exactly once.
//!
//! The SQL below uses the same parameters, in the same order, as the SQLite items, so the
//! shared code binds them once for both.

// Not used until the backend exists; kept compiled so the SQL travels with the code it serves.
#![allow(dead_code)]

/// After `BEGIN`: serialises the queue-limit check of one tenant (`$1`) until the transaction
/// ends. The prefix keeps the key apart from other uses of advisory locks (up to a 64-bit hash
/// collision, which would only make two tenants take turns).
pub(super) const LOCK_TENANT_QUEUE: &str = "SELECT pg_advisory_xact_lock(hashtextextended('prune.queue:' || $1, 0))";

/// QUEUED -> RUNNING for the oldest queued job that no other claimer holds. `$1` RUNNING,
/// `$2` now (ms), `$3` QUEUED (as in `sqlite::CLAIM_NEXT_QUEUED`).
pub(super) const CLAIM_NEXT_QUEUED: &str = concat!(
    "UPDATE jobs SET state = $1, started_ms = COALESCE(started_ms, $2) ",
    "WHERE id = (SELECT id FROM jobs WHERE state = $3 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) ",
    "AND state = $3 ",
    "RETURNING ",
    job_columns!()
);
