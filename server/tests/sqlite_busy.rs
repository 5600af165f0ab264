//! SQLite under concurrent writers: while another connection holds the write lock (as a second
//! writer, a backup or an operator's `sqlite3` shell might), the server's writes wait for it
//! (`busy_timeout`) instead of failing with SQLITE_BUSY, and none of them is lost. That includes
//! the writes that take the lock up front (`insert_job`'s `BEGIN IMMEDIATE`, the fenced writes
//! and the claim).

use std::time::{Duration, Instant};

use prune_core::domain::MetricPoint;
use prune_server::storage::{CheckpointRecord, Db, Fence, JobState, NewJob, StorageError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row, SqliteConnection};

const JOB: &str = "job-busy";
const FENCE: Fence = Fence { job_id: JOB, attempt: 1 };
/// Long enough that every writer below runs into the lock; well below the Db's busy timeout.
const HOLD: Duration = Duration::from_millis(1500);
const WRITERS: usize = 32;
const BATCHES: usize = 5;
const POINTS: usize = 10;

async fn count(conn: &mut SqliteConnection, sql: &'static str) -> i64 {
    sqlx::query(sql).bind(JOB).fetch_one(conn).await.unwrap().get("n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_wait_out_a_held_write_lock_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prune.db");
    let db = Db::open(&path).await.expect("Db::open");

    // A raw connection of its own, outside the Db's pool.
    let mut raw = SqliteConnectOptions::new().filename(&path).connect().await.expect("raw connection");
    // The job row the foreign keys need, RUNNING as attempt 1 under a lease no claim breaks.
    sqlx::query(
        "INSERT INTO jobs (id, name, state, spec_json, warnings_json, attempts, max_attempts, threads, \
         step, total_steps, epoch, created_ms, lease_owner, lease_expires_ms) \
         VALUES ($1, 'busy', 'RUNNING', '{}', '[]', 1, 1, 1, 0, 0, 0, 0, 'node-raw', 9000000000000000)",
    )
    .bind(JOB)
    .execute(&mut raw)
    .await
    .expect("inserting the job row");

    // Take the write lock and write something under it.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut raw).await.expect("BEGIN IMMEDIATE");
    sqlx::query("INSERT INTO metrics (job_id, name, step, value) VALUES ($1, 'held', 0, 0)")
        .bind(JOB)
        .execute(&mut raw)
        .await
        .unwrap();
    let locked = Instant::now();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let points: Vec<MetricPoint> = (0..POINTS)
                        .map(|p| MetricPoint { name: format!("w{w}/p{p}"), step: b as i64, value: (w * p) as f64 })
                        .collect();
                    db.insert_metrics(FENCE, &points).await?;
                }
                let checkpoint = CheckpointRecord {
                    step: w as i64,
                    epoch: 0,
                    path: format!("checkpoints/{JOB}/step-{w}.ckpt"),
                    sha256: "0".repeat(64),
                    bytes: 1,
                };
                db.insert_checkpoint(FENCE, &checkpoint).await?;
                let job = NewJob {
                    id: format!("job-w{w:02}"),
                    tenant: "default".into(),
                    name: format!("writer {w}"),
                    spec_json: serde_json::to_string(&prune_core::JobSpec::default()).unwrap(),
                    warnings: Vec::new(),
                    max_attempts: 1,
                    threads: 1,
                    created_ms: 0,
                    request: None,
                    priority: 0,
                    labels: Default::default(),
                };
                assert!(db.insert_job(&job, WRITERS as u32).await?, "writer {w}: under the queue limit");
                let node = format!("node-{w}");
                let claim = db.claim_next(&node, Duration::from_secs(600)).await?;
                assert!(claim.is_some_and(|c| c.job.id != JOB), "writer {w}: its job or another is queued");
                Ok::<Instant, StorageError>(Instant::now())
            })
        })
        .collect();

    // The fault: the lock is held this long (not a synchronisation sleep).
    tokio::time::sleep(HOLD).await;
    // Unlocked, each writer would have finished in milliseconds: none has, so all are waiting.
    let finished = writers.iter().filter(|w| w.is_finished()).count();
    assert_eq!(finished, 0, "{finished} writers finished while another connection held the write lock");
    sqlx::query("COMMIT").execute(&mut raw).await.expect("COMMIT");
    let committed = Instant::now();

    for (w, writer) in writers.into_iter().enumerate() {
        let done = writer.await.expect("writer task").unwrap_or_else(|e| panic!("writer {w} failed: {e}"));
        assert!(done >= committed, "writer {w} finished before the lock was released");
    }
    assert!(locked.elapsed() >= HOLD);

    // Nothing lost: every batch and checkpoint is there, and so is the lock holder's row.
    assert_eq!(
        count(&mut raw, "SELECT COUNT(*) AS n FROM metrics WHERE job_id = $1").await,
        (WRITERS * BATCHES * POINTS + 1) as i64
    );
    assert_eq!(count(&mut raw, "SELECT COUNT(*) AS n FROM checkpoints WHERE job_id = $1").await, WRITERS as i64);
    assert_eq!(db.metrics(JOB, "w7/").await.unwrap().len(), BATCHES * POINTS);
    assert_eq!(db.checkpoints_latest_first(JOB).await.unwrap().len(), WRITERS);
    // Every writer queued a job and claimed one: all claimed, each once (the raw job is RUNNING).
    assert!(db.job_ids_in_state(JobState::Queued).await.unwrap().is_empty());
    assert_eq!(db.job_ids_in_state(JobState::Running).await.unwrap().len(), WRITERS + 1);
    db.close().await;
}
