//! The SQLite repository: every read and write of the service's state goes through [`Db`].
//!
//! The SQL is kept portable (standard types, `$n` placeholders, `ON CONFLICT` upserts) because
//! the service is meant to move to PostgreSQL; the schema lives in the top-level `migrations/`.

mod artifacts;
mod blobs;
mod checkpoints;
mod jobs;
mod metrics;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use artifacts::ArtifactRecord;
pub use blobs::BlobRecord;
pub use checkpoints::CheckpointRecord;
pub use jobs::{AttemptOutcome, JobRecord, JobState, NewJob, ProgressUpdate};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row the service wrote itself no longer parses: a bug or a hand-edited database.
    #[error("corrupt {what} of job {job_id}: {reason}")]
    Corrupt { job_id: String, what: &'static str, reason: String },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A cheap-to-clone handle on the connection pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
}

/// How long a connection waits for another's write lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Db {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            // WAL: readers (GetJob, WatchJob) never wait for the writer (metrics batches).
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes under WAL; only power loss can drop
            // the last transactions, and checkpoints are verified by sha256 on resume anyway.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Db { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
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
        }
    }
}
