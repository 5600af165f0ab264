//! The repository: every read and write of the service's state goes through [`Db`].
//!
//! [`Db`] is one interface over one database backend, chosen by URL in [`Db::connect`]: SQLite
//! (`sqlite://PATH`, `sqlite.rs`) or PostgreSQL (`postgres://...`, `postgres.rs`). How the two
//! differ and how to add a backend is in `docs/architecture.md`; in short, what is portable and
//! what is not:
//!
//! * **Written once** (in `jobs.rs`, `blobs.rs`, ...): the SQL that means the same on SQLite and
//!   PostgreSQL: `$n` placeholders, `ON CONFLICT ... DO UPDATE/NOTHING` upserts, `RETURNING`,
//!   `COALESCE`, `substr`/`length`, and the dynamic queries built with [`sqlx::QueryBuilder`]
//!   (it writes each backend's placeholders). [`with_pool!`] compiles such code once per
//!   backend, against the backend's typed pool, so sqlx still type-checks every bind and read.
//! * **Per backend** (`sqlite.rs`, `postgres.rs`): connecting (SQLite's WAL,
//!   `synchronous`, busy timeout, foreign keys), the migrations folder (`migrations/sqlite/`,
//!   `migrations/postgres/`), how a write transaction takes its lock (SQLite `BEGIN IMMEDIATE`,
//!   PostgreSQL an advisory lock), and the job claim (PostgreSQL adds `FOR UPDATE SKIP LOCKED`,
//!   which SQLite does not parse). A backend module provides the same items; the shared code
//!   reaches them through [`with_pool!`]'s `backend` alias.
//! * **Column types**: every integer column is 64-bit on both backends (`BIGINT`; SQLite's
//!   `INTEGER` is 64-bit too) and read as `i64` through [`rows::Columns`]; narrower Rust fields
//!   (`u32` attempts, `u64` sizes) are converted with checked conversions, so a bad value is a
//!   [`StorageError::OutOfRange`], not a silent wrap.
//!
//! Why an enum over typed pools and not `sqlx::Any` or a `dyn` trait: `Any` connects from a URL
//! only (SQLite's WAL, `synchronous` and busy timeout would become hand-written PRAGMAs per
//! connection), decodes through a reduced set of types checked at run time, and would still need
//! per-backend SQL for the claim and the queue lock; a trait object would make each backend
//! re-implement every method even where the SQL is the same. With the enum, PostgreSQL was a
//! `Pool` variant, its arms in [`with_pool!`], `Db::connect` and `Db::close`, and one module.
//!
//! The storage tests run on both backends (`on_both_backends!`): SQLite in a temporary
//! directory, PostgreSQL in a throwaway server the test binary starts (`pg_support.rs`).

/// `with_pool!(db, |pool, backend| body)` runs `body` once per backend variant of `db`'s pool,
/// with `pool` the typed pool (`&SqlitePool`, `&PgPool`) and `backend` an alias of the backend's
/// module (`sqlite`, `postgres`) for the per-backend items (SQL constants, write transactions). The body is
/// written once and compiled (type-checked) once per backend. For `storage`'s child modules
/// (the paths are relative to them); defined before them so they see it.
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.pool {
            super::Pool::Sqlite($pool) => $body,
            super::Pool::Postgres($pool) => $body,
        }
    };
    ($db:expr, |$pool:ident, $backend:ident| $body:expr) => {
        match &$db.pool {
            super::Pool::Sqlite($pool) => {
                use super::sqlite as $backend;
                $body
            }
            super::Pool::Postgres($pool) => {
                use super::postgres as $backend;
                $body
            }
        }
    };
}

/// `upsert_points!(tx, job_id, points)`: writes a job's metric points in the transaction `tx`
/// ([`metrics::UPSERT_METRIC`]: a step already recorded is replaced). Non-finite values are
/// dropped: SQL has no NaN, and a diverged loss shows in the job anyway. One loop for the
/// worker's metrics and a tracked run's reports, compiled per backend like [`with_pool!`].
macro_rules! upsert_points {
    ($tx:expr, $job_id:expr, $points:expr) => {
        for p in $points.iter().filter(|p| p.value.is_finite()) {
            sqlx::query(super::metrics::UPSERT_METRIC)
                .bind($job_id)
                .bind(&p.name)
                .bind(p.step)
                .bind(p.value)
                .execute(&mut *$tx)
                .await?;
        }
    };
}

/// The columns of `jobs` that [`JobRecord`] is read from, as a literal for `concat!`: the shared
/// queries and each backend's claim return the same columns.
macro_rules! job_columns {
    () => {
        "id, tenant, name, state, spec_json, warnings_json, error, attempts, max_attempts, threads, \
         step, total_steps, epoch, loss, accuracy, sparsity_json, report_json, created_ms, started_ms, finished_ms, \
         lease_owner, priority, labels_json, kind, tracked_session, tracked_client, reported_ms"
    };
}

/// `on_both_backends!(test_a, test_b)` in a test module whose `async fn test_a(db: Db)` are
/// storage tests: generates `sqlite::test_a` and `postgres::test_a`, each a `#[tokio::test]`
/// that runs `test_a` on a fresh database of its backend (a SQLite file in a temporary
/// directory; a database of its own on the test binary's PostgreSQL server, `pg_support.rs`).
/// A first `#[tokio::test(...)]` replaces the default test attribute (e.g. a multi-threaded
/// runtime). `cargo test postgres::` runs the PostgreSQL half.
#[cfg(test)]
macro_rules! on_both_backends {
    (#[$test:meta] $($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[$test]
                async fn $name() {
                    let test_db = $crate::storage::test_support::TestDb::sqlite().await;
                    super::$name(test_db.db.clone()).await;
                    test_db.db.close().await;
                }
            )+
        }
        mod postgres {
            $(
                #[$test]
                async fn $name() {
                    let test_db = $crate::storage::test_support::TestDb::postgres().await;
                    super::$name(test_db.db.clone()).await;
                    test_db.db.close().await;
                }
            )+
        }
    };
    ($($name:ident),+ $(,)?) => {
        on_both_backends!(#[tokio::test] $($name),+);
    };
}

mod artifacts;
mod blobs;
mod checkpoints;
mod jobs;
mod leases;
mod logs;
mod metrics;
mod postgres;
mod retention;
mod rows;
mod sqlite;
mod tracked;

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
pub(crate) mod pg_server;
#[cfg(test)]
pub(crate) mod pg_support;
#[cfg(test)]
mod schema_tests;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{PgPool, SqlitePool};

pub use artifacts::ArtifactRecord;
pub use blobs::BlobRecord;
pub use checkpoints::CheckpointRecord;
pub use jobs::{
    AttemptOutcome, JobEnd, JobFilter, JobKind, JobRecord, JobState, NewJob, ProgressUpdate, RequestKey, Submitted,
};
pub use leases::{AttemptRecord, Claim, Fence};
pub use logs::{LogLine, LogPosition};
pub use retention::Deleted;
pub use tracked::{NewTrackedRun, SessionWrite, TrackedReport, TrackedStart};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL names a backend this build cannot use (only the scheme is kept: the
    /// rest of a URL may hold a password).
    #[error("unsupported database URL scheme `{scheme}`: {reason}")]
    UnsupportedBackend { scheme: String, reason: &'static str },
    /// A row the service wrote itself no longer parses: a bug or a hand-edited database.
    #[error("corrupt {what} of job {job_id}: {reason}")]
    Corrupt { job_id: String, what: &'static str, reason: String },
    /// A write of an attempt that is no longer its job's current one: another node took the job
    /// over (the attempt's lease ran out) or the job ended (cancelled). Nothing was written.
    #[error("attempt {attempt} of job {job_id} is no longer current (taken over or ended): write rejected")]
    NotCurrent { job_id: String, attempt: u32 },
    /// An integer does not fit where it goes: a column read into a narrower Rust type, or a
    /// Rust value too large for a 64-bit column.
    #[error("{what}: {value} does not fit {target}")]
    OutOfRange { what: &'static str, value: String, target: &'static str },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The backend's typed connection pool. Adding a backend: a variant here, an arm in
/// [`with_pool!`], a module like `sqlite.rs` (see `docs/architecture.md`).
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The backends a database URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// By the URL's scheme: `sqlite:` (`sqlite://PATH`), `postgres:` or `postgresql:`.
    fn of_url(url: &str) -> Result<Self> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(StorageError::UnsupportedBackend {
                scheme: scheme.chars().take(32).collect(),
                reason: "expected sqlite://PATH or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE",
            }),
        }
    }
}

/// The lease `Db::connect` assumes (the server's `--lease-secs` default).
const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// A cheap-to-clone handle on the connection pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: Pool,
}

impl Db {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let pool = sqlite::connect(sqlite::options_for_path(path)).await?;
        Ok(Db { pool: Pool::Sqlite(pool) })
    }

    /// Connects to the database `url` names and applies pending migrations: `sqlite://PATH`
    /// (created if missing) or `postgres://...` (the database must exist; its tables are
    /// created). Errors never contain the URL (it may hold a password): see [`masked_url`].
    pub async fn connect(url: &str) -> Result<Self> {
        Db::connect_with_lease(url, DEFAULT_LEASE).await
    }

    /// [`Db::connect`] for a node holding job leases of `lease`: a PostgreSQL session left idle
    /// inside a transaction is ended by the server after half the lease (at most 10 s), so a
    /// paused node's row locks cannot keep its jobs from being taken over.
    pub async fn connect_with_lease(url: &str, lease: std::time::Duration) -> Result<Self> {
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                let pool = sqlite::connect(sqlite::options_for_url(url)?).await?;
                Ok(Db { pool: Pool::Sqlite(pool) })
            }
            Backend::Postgres => {
                let idle = (lease / 2).clamp(std::time::Duration::from_millis(500), std::time::Duration::from_secs(10));
                let pool = postgres::connect(postgres::options_for_url(url)?, idle).await?;
                Ok(Db { pool: Pool::Postgres(pool) })
            }
        }
    }

    /// SQLite serves one node; PostgreSQL may serve many.
    pub fn is_sqlite(&self) -> bool {
        matches!(self.pool, Pool::Sqlite(_))
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// `url` fit for logs and error messages: the password of `scheme://user:password@host...` is
/// replaced by `***` (`postgres://user:***@host:port/db`); a URL without one is unchanged.
/// Query parameters are dropped too (`?password=...` is also a way to give one).
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, query) = rest.split_once('?').map_or((rest, ""), |(before, _)| (before, "?***"));
    // The authority ends at the first `/`; a password may contain `@`, so the last `@` in the
    // authority separates the user information from the host.
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    let masked = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    format!("{scheme}://{masked}{path}{query}")
}

/// Milliseconds since the Unix epoch: the unit of every timestamp column.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A migrated database in a temporary directory (kept alive by the returned guard).
    pub async fn db() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("prune.db")).await.unwrap();
        (db, dir)
    }

    /// A fresh migrated database of one backend, and what keeps it alive (`on_both_backends!`).
    pub struct TestDb {
        pub db: Db,
        _dir: Option<tempfile::TempDir>,
    }

    impl TestDb {
        pub async fn sqlite() -> Self {
            let (db, dir) = db().await;
            TestDb { db, _dir: Some(dir) }
        }

        /// A database of its own on the test binary's PostgreSQL server (started on first use).
        pub async fn postgres() -> Self {
            TestDb { db: super::pg_support::db().await, _dir: None }
        }
    }

    /// Claims the next job on `db` for a test node, which must be `id`; returns the attempt.
    pub async fn claim(db: &Db, id: &str) -> u32 {
        let claim =
            db.claim_next("node-test", std::time::Duration::from_secs(60)).await.unwrap().expect("a job to claim");
        assert_eq!(claim.job.id, id, "claimed another job");
        claim.attempt
    }

    pub fn new_job(id: &str) -> NewJob {
        NewJob {
            id: id.to_string(),
            tenant: "default".to_string(),
            name: format!("name of {id}"),
            spec_json: serde_json::to_string(&prune_core::JobSpec::default()).unwrap(),
            warnings: vec!["a warning".to_string()],
            max_attempts: 3,
            threads: 1,
            created_ms: 1000,
            request: None,
            priority: 0,
            labels: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::new_job;
    use super::*;

    #[tokio::test]
    async fn connect_picks_the_backend_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("by-url.db");
        let db = Db::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        assert!(db.insert_job(&new_job("job-a"), 10).await.unwrap());
        db.close().await;
        assert!(path.exists(), "sqlite:// creates the file");
        // The same file through `open`: migrations already applied, the row is there.
        let db = Db::open(&path).await.unwrap();
        assert!(db.job("job-a").await.unwrap().is_some());
        db.close().await;

        // PostgreSQL: tables created on first connect, found again on the next (`postgresql:`
        // is the same scheme).
        let url = pg_support::create_database().await;
        let db = Db::connect(&url).await.unwrap();
        assert!(matches!(db.pool, Pool::Postgres(_)));
        assert!(db.insert_job(&new_job("job-a"), 10).await.unwrap());
        db.close().await;
        let db = Db::connect(&url.replacen("postgres:", "postgresql:", 1)).await.unwrap();
        assert!(db.job("job-a").await.unwrap().is_some());
        db.close().await;

        for url in ["mysql://user:secret@host/db", "prune.db"] {
            let err = Db::connect(url).await.unwrap_err();
            assert!(matches!(err, StorageError::UnsupportedBackend { .. }), "{url}: {err}");
            assert!(!err.to_string().contains("secret"), "the error must not echo the URL: {err}");
        }
        // Nothing listens on port 1: the probe connection fails at once, with the reason.
        let err = Db::connect("postgres://user:secret@127.0.0.1:1/prune").await.unwrap_err();
        assert!(matches!(err, StorageError::Sqlx(_)), "{err}");
        assert!(!err.to_string().contains("secret"), "the error must not echo the URL: {err}");
    }

    #[test]
    fn urls_are_masked_for_messages() {
        let cases = [
            ("postgres://user:secret@db.example:5432/prune", "postgres://user:***@db.example:5432/prune"),
            ("postgresql://user:p@ss@host/prune", "postgresql://user:***@host/prune"),
            ("postgres://user@host/prune", "postgres://user@host/prune"),
            ("postgres://host:5433/prune?sslmode=require&password=secret", "postgres://host:5433/prune?***"),
            ("postgres://:secret@host", "postgres://:***@host"),
            ("sqlite:///var/lib/prune/prune.db", "sqlite:///var/lib/prune/prune.db"),
            ("prune.db", "prune.db"),
        ];
        for (url, masked) in cases {
            assert_eq!(masked_url(url), masked, "{url}");
        }
    }
}
