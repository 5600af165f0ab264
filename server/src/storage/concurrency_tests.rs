//! The two read-modify-writes that must hold under concurrent callers on any backend: the
//! per-tenant queue limit (`insert_job`) and the job claim (`claim_next_queued`). The callers
//! run on a multi-threaded runtime and share one pool, as CreateJob handlers and the scheduler
//! do. Each test runs on SQLite (one writer at a time) and on PostgreSQL (the tenant's advisory
//! lock; `FOR UPDATE SKIP LOCKED`), where the races are real.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Barrier;

use super::test_support::new_job;
use super::{Claim, Db, JobFilter, JobState, NewJob};

const WRITERS: usize = 50;
const LIMIT: u32 = 10;
/// Each test repeats its race (creates: for a tenant of its own each round): one round misses a
/// missing lock now and then; several make it a near-certain failure.
const ROUNDS: usize = 5;

on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    concurrent_creates_never_exceed_the_queue_limit,
    concurrent_claimers_take_each_queued_job_exactly_once,
);

async fn concurrent_creates_never_exceed_the_queue_limit(db: Db) {
    // Another tenant's queue is full: it must not count against alice's.
    for i in 0..LIMIT {
        let job = NewJob { tenant: "bob".into(), ..new_job(&format!("job-bob-{i:02}")) };
        assert!(db.insert_job(&job, LIMIT).await.unwrap());
    }

    for round in 0..ROUNDS {
        let tenant = format!("alice-{round}");
        let start = Arc::new(Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (db, start, tenant) = (db.clone(), start.clone(), tenant.clone());
                tokio::spawn(async move {
                    let job = NewJob { tenant, ..new_job(&format!("job-alice-{round}-{i:02}")) };
                    start.wait().await;
                    db.insert_job(&job, LIMIT).await
                })
            })
            .collect();
        let mut accepted = 0;
        for writer in writers {
            if writer.await.unwrap().expect("insert_job fails only by answering false") {
                accepted += 1;
            }
        }
        assert_eq!(accepted, LIMIT as usize, "{tenant}");
        let queued = db
            .list_jobs(&tenant, &JobFilter { state: Some(JobState::Queued), ..JobFilter::default() }, None, 1000)
            .await
            .unwrap();
        assert_eq!(queued.len(), LIMIT as usize, "exactly the limit is queued for {tenant}");
    }
    assert_eq!(db.list_jobs("bob", &JobFilter::default(), None, 1000).await.unwrap().len(), LIMIT as usize);
}

async fn concurrent_claimers_take_each_queued_job_exactly_once(db: Db) {
    const JOBS: usize = 40;
    const CLAIMERS: usize = 12;
    for round in 0..ROUNDS {
        let mut expected = HashSet::new();
        for i in 0..JOBS {
            let id = format!("job-{round}-{i:03}");
            assert!(db.insert_job(&new_job(&id), 1000).await.unwrap());
            expected.insert(id);
        }
        // A cancelled job is never claimed.
        let cancelled = format!("job-{round}-007");
        assert!(db.finish_job(&cancelled, &[JobState::Queued], JobState::Cancelled, None, None).await.unwrap());
        expected.remove(&cancelled);

        let start = Arc::new(Barrier::new(CLAIMERS));
        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|claimer| {
                let (db, start) = (db.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let mut mine = Vec::new();
                    let node = format!("node-{claimer}");
                    let lease = std::time::Duration::from_secs(600);
                    while let Some(Claim { job, attempt }) = db.claim_next(&node, lease).await.expect("claim") {
                        assert_eq!(attempt, 1);
                        assert_eq!(job.state, JobState::Running, "the claim returns the job as claimed");
                        assert!(job.started_ms.is_some());
                        mine.push(job.id);
                    }
                    // A claim comes back empty only when every job still queued is being
                    // claimed by another claimer at that moment (PostgreSQL: rows others have
                    // locked are skipped, not waited for), so fewer than CLAIMERS are left.
                    let left = db.job_ids_in_state(JobState::Queued).await.expect("queued ids").len();
                    assert!(left < CLAIMERS, "a claim came back empty with {left} jobs queued");
                    mine
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.unwrap());
        }
        let unique: HashSet<String> = claimed.iter().cloned().collect();
        assert_eq!(unique.len(), claimed.len(), "a job was claimed twice: {claimed:?}");
        assert_eq!(unique, expected, "every queued job is claimed");
        assert!(db.job_ids_in_state(JobState::Queued).await.unwrap().is_empty());
        assert_eq!(db.job_ids_in_state(JobState::Running).await.unwrap().len(), (round + 1) * (JOBS - 1));
    }
}
