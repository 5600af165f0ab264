//! Leases and fencing on both backends: takeover after expiry, renewals, and the fence that
//! rejects every write of a superseded attempt.

use std::time::Duration;

use prune_core::domain::MetricPoint;

use super::super::test_support::new_job;
use super::*;
use crate::storage::{ArtifactRecord, CheckpointRecord, JobEnd, NewJob, ProgressUpdate};

on_both_backends!(
    an_expired_lease_is_taken_over_and_the_old_attempt_is_fenced,
    renewals_report_what_the_node_no_longer_holds,
    released_and_expired_jobs_resume_before_queued_ones,
    a_node_restart_releases_only_its_own_leases,
    worker_warnings_are_added_once_and_fenced,
);

const LONG: Duration = Duration::from_secs(600);

fn artifact(path: &str) -> ArtifactRecord {
    ArtifactRecord {
        format: "safetensors".into(),
        path: path.into(),
        sha256: "ab".into(),
        bytes: 3,
        compression: "none".into(),
        sparse_format: "dense".into(),
    }
}

async fn an_expired_lease_is_taken_over_and_the_old_attempt_is_fenced(db: Db) {
    assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
    let Claim { attempt, .. } = db.claim_next("node-a", Duration::ZERO).await.unwrap().unwrap();
    let old = Fence { job_id: "job-a", attempt };
    // A zero lease is already over at the next claim (its clock has moved by at least 1 ms).
    let mut claim = None;
    while claim.is_none() {
        claim = db.claim_next("node-b", LONG).await.unwrap();
    }
    let Claim { job, attempt } = claim.unwrap();
    assert_eq!((job.id.as_str(), attempt, job.node.as_deref()), ("job-a", 2, Some("node-b")));
    let new = Fence { job_id: "job-a", attempt };

    // Every kind of write of the old attempt is rejected and changes nothing.
    let progress = ProgressUpdate { step: 99, epoch: 9, loss: None, accuracy: None, sparsity: vec![] };
    let checkpoint = CheckpointRecord { step: 5, epoch: 0, path: "k".into(), sha256: "s".into(), bytes: 1 };
    let points = [MetricPoint { step: 1, name: "loss".into(), value: 1.0 }];
    let artifacts = [artifact("artifacts/job-a/attempt-1/model.safetensors")];
    let success = JobEnd { state: JobState::Succeeded, error: None, report: None, artifacts: &artifacts };
    let rejected = |r: Result<()>| matches!(r, Err(StorageError::NotCurrent { attempt: 1, .. }));
    assert!(rejected(db.update_progress(old, &progress).await));
    assert!(rejected(db.set_total_steps(old, 5).await));
    assert!(rejected(db.insert_checkpoint(old, &checkpoint).await));
    assert!(rejected(db.insert_metrics(old, &points).await));
    assert!(rejected(db.add_warnings(old, &["stale".to_string()]).await));
    assert!(rejected(db.finish_attempt_job(old, &success).await));
    assert!(!db.release_lease(old).await.unwrap());
    let job = db.job("job-a").await.unwrap().unwrap();
    assert_eq!((job.state, job.step, job.total_steps), (JobState::Running, 0, 0));
    assert!(db.checkpoints_latest_first("job-a").await.unwrap().is_empty());
    assert!(db.metrics("job-a", "").await.unwrap().is_empty());
    assert!(db.artifacts("job-a").await.unwrap().is_empty());
    let attempts = db.attempts("job-a").await.unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("superseded"));
    assert!(attempts[0].error.as_deref().unwrap().contains("node-b"), "{:?}", attempts[0].error);
    assert_eq!((attempts[1].node.as_str(), attempts[1].outcome.as_deref()), ("node-b", None));
    // The old node's late bookkeeping cannot overwrite the outcome either.
    db.finish_attempt("job-a", 1, AttemptOutcome::Crashed, Some("late")).await.unwrap();
    assert_eq!(db.attempts("job-a").await.unwrap()[0].outcome.as_deref(), Some("superseded"));

    // The current attempt commits exactly one set of artifacts, and only once.
    let artifacts = [artifact("artifacts/job-a/attempt-2/model.safetensors")];
    let success = JobEnd { artifacts: &artifacts, ..success };
    db.insert_checkpoint(new, &checkpoint).await.unwrap();
    db.finish_attempt_job(new, &success).await.unwrap();
    assert!(rejected_any(db.finish_attempt_job(new, &success).await), "the job has ended");
    let job = db.job("job-a").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    let committed = db.artifacts("job-a").await.unwrap();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].path, "artifacts/job-a/attempt-2/model.safetensors");
}

fn rejected_any(r: Result<()>) -> bool {
    matches!(r, Err(StorageError::NotCurrent { .. }))
}

async fn renewals_report_what_the_node_no_longer_holds(db: Db) {
    for id in ["job-a", "job-b", "job-c"] {
        assert!(db.insert_job(&new_job(id), 100).await.unwrap());
    }
    let mut mine = Vec::new();
    for _ in 0..3 {
        let c = db.claim_next("node-a", LONG).await.unwrap().unwrap();
        mine.push((c.job.id, c.attempt));
    }
    assert_eq!(db.renew_leases("node-a", &mine, LONG).await.unwrap(), mine);
    assert!(db.renew_leases("node-b", &mine, LONG).await.unwrap().is_empty(), "not node-b's");
    // job-a is cancelled; job-b is taken over (its lease released, another node claims it).
    assert!(db.finish_job("job-a", &[JobState::Running], JobState::Cancelled, None, None).await.unwrap());
    assert!(db.release_lease(Fence { job_id: "job-b", attempt: 1 }).await.unwrap());
    assert_eq!(db.claim_next("node-b", LONG).await.unwrap().unwrap().job.id, "job-b");
    assert_eq!(db.renew_leases("node-a", &mine, LONG).await.unwrap(), [("job-c".to_string(), 1)]);
    // A renewal extends the lease: nobody can claim job-c now.
    assert!(db.claim_next("node-b", LONG).await.unwrap().is_none());
    assert!(db.renew_leases("node-a", &[], LONG).await.unwrap().is_empty());
}

async fn released_and_expired_jobs_resume_before_queued_ones(db: Db) {
    for id in ["job-a", "job-b", "job-c"] {
        assert!(db.insert_job(&new_job(id), 100).await.unwrap());
    }
    assert_eq!(db.claim_next("node-a", LONG).await.unwrap().unwrap().job.id, "job-a");
    assert_eq!(db.claim_next("node-a", LONG).await.unwrap().unwrap().job.id, "job-b");
    assert!(db.release_lease(Fence { job_id: "job-b", attempt: 1 }).await.unwrap());
    let resumed = db.claim_next("node-b", LONG).await.unwrap().unwrap();
    assert_eq!((resumed.job.id.as_str(), resumed.attempt), ("job-b", 2), "before the queued job-c");
    assert_eq!(db.claim_next("node-b", LONG).await.unwrap().unwrap().job.id, "job-c");
}

async fn a_node_restart_releases_only_its_own_leases(db: Db) {
    for id in ["job-a", "job-b"] {
        assert!(db.insert_job(&new_job(id), 100).await.unwrap());
    }
    db.claim_next("node-a", LONG).await.unwrap().unwrap();
    db.claim_next("node-b", LONG).await.unwrap().unwrap();
    assert_eq!(db.release_node_leases(Some("node-a")).await.unwrap(), 1);
    let c = db.claim_next("node-c", LONG).await.unwrap().unwrap();
    assert_eq!((c.job.id.as_str(), c.attempt), ("job-a", 2));
    let attempts = db.attempts("job-a").await.unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("interrupted"));
    assert!(db.claim_next("node-c", LONG).await.unwrap().is_none(), "node-b's lease holds");
    assert_eq!(db.release_node_leases(None).await.unwrap(), 2, "SQLite: every node's");
}

mod fair {
    use super::*;

    on_both_backends!(tenants_take_turns_and_priority_orders_within_a_tenant);

    async fn tenants_take_turns_and_priority_orders_within_a_tenant(db: Db) {
        let job = |id: &str, tenant: &str, priority: i64| NewJob { tenant: tenant.into(), priority, ..new_job(id) };
        for i in 0..5 {
            assert!(db.insert_job(&job(&format!("job-a{i}"), "alice", 0), 100).await.unwrap());
        }
        assert!(db.insert_job(&job("job-b0", "bob", 0), 100).await.unwrap());
        assert!(db.insert_job(&job("job-b1", "bob", 5), 100).await.unwrap());
        let mut order = Vec::new();
        while let Some(c) = db.claim_next_fair("node-a", LONG, 10).await.unwrap() {
            order.push(c.job.id);
        }
        // Alternating while both have jobs; bob's priority 5 job before his older one.
        assert_eq!(order, ["job-a0", "job-b1", "job-a1", "job-b0", "job-a2", "job-a3", "job-a4"]);

        // One slot: dave's 3 queued jobs were first, one ran; erin's later job goes next, before
        // dave's other two (the tenant served least recently).
        for id in ["job-d0", "job-d1", "job-d2"] {
            assert!(db.insert_job(&job(id, "dave", 0), 100).await.unwrap());
        }
        let d0 = db.claim_next_fair("node-a", LONG, 10).await.unwrap().unwrap();
        assert_eq!(d0.job.id, "job-d0");
        let end = JobEnd { state: JobState::Succeeded, error: None, report: None, artifacts: &[] };
        db.finish_attempt_job(Fence { job_id: "job-d0", attempt: d0.attempt }, &end).await.unwrap();
        assert!(db.insert_job(&job("job-e0", "erin", 0), 100).await.unwrap());
        assert_eq!(db.claim_next_fair("node-a", LONG, 10).await.unwrap().unwrap().job.id, "job-e0");
        assert_eq!(db.claim_next_fair("node-a", LONG, 10).await.unwrap().unwrap().job.id, "job-d1");

        // A per-tenant limit: carol may run 1 at a time.
        for id in ["job-c0", "job-c1"] {
            assert!(db.insert_job(&job(id, "carol", 0), 100).await.unwrap());
        }
        assert_eq!(db.claim_next_fair("node-a", LONG, 1).await.unwrap().unwrap().job.id, "job-c0");
        assert!(db.claim_next_fair("node-a", LONG, 1).await.unwrap().is_none(), "carol is at her limit");
    }
}

/// A node stopped inside a transaction (SIGSTOP, a frozen VM) must not hide its jobs from
/// takeover: PostgreSQL ends its idle-in-transaction session, and the row lock with it.
#[tokio::test]
async fn a_session_stopped_inside_a_transaction_releases_its_locks() {
    let url = super::super::pg_support::create_database().await;
    let stopped = Db::connect_with_lease(&url, Duration::from_secs(1)).await.unwrap();
    let other = Db::connect_with_lease(&url, Duration::from_secs(1)).await.unwrap();
    assert!(stopped.insert_job(&new_job("job-a"), 100).await.unwrap());
    let claim = stopped.claim_next("node-a", Duration::ZERO).await.unwrap().unwrap();
    let super::super::Pool::Postgres(pool) = &stopped.pool else { unreachable!("a PostgreSQL Db") };
    // The fence's row lock, in a transaction that its client never finishes.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(FENCE).bind("job-a").bind(i64::from(claim.attempt)).bind("RUNNING").execute(&mut *tx).await.unwrap();
    assert!(other.claim_next("node-b", LONG).await.unwrap().is_none(), "the locked row is skipped");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let taken = loop {
        if let Some(c) = other.claim_next("node-b", LONG).await.unwrap() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "the stopped session still holds the job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((taken.job.id.as_str(), taken.attempt), ("job-a", 2));
    assert!(tx.commit().await.is_err(), "the server ended the stopped session");
    stopped.close().await;
    other.close().await;
}

async fn worker_warnings_are_added_once_and_fenced(db: Db) {
    assert!(db.insert_job(&new_job("job-w"), 100).await.unwrap());
    let before = db.job("job-w").await.unwrap().unwrap().warnings;
    let Claim { attempt, .. } = db.claim_next("node-a", LONG).await.unwrap().unwrap();
    let fence = Fence { job_id: "job-w", attempt };
    let auto = "training.device = \"auto\": no CUDA device on this node, running on the CPU".to_string();
    db.add_warnings(fence, std::slice::from_ref(&auto)).await.unwrap();
    // A resumed attempt reports the same warning again: it is listed once.
    db.add_warnings(fence, &[auto.clone(), "second".into()]).await.unwrap();
    let mut want = before;
    want.extend([auto, "second".to_string()]);
    assert_eq!(db.job("job-w").await.unwrap().unwrap().warnings, want);
}
