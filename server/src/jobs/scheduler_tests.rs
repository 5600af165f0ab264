//! The scheduler's branches against a real database, with a scripted launcher playing the
//! workers: no process is started or killed.

use std::collections::BTreeMap;
use std::time::Duration;

use prune_core::domain::{ArtifactFile, Event, JobOutcome, Report, StopReason};
use prune_core::worker_protocol::{Command, WorkerMessage};
use tokio::sync::broadcast;

use super::*;
use crate::jobs::live::{JobUpdate, Live};
use crate::launch::scripted::{ScriptedLauncher, ScriptedWorker};
use crate::launch::Control;
use crate::storage::test_support::{db, new_job};
use crate::storage::Db;

/// Long enough for a loaded CI machine; a wait that ends here is a failure, not a sleep.
const WAIT: Duration = Duration::from_secs(20);

fn config(workers: usize) -> SchedulerConfig {
    SchedulerConfig {
        workers,
        shutdown_grace: Duration::from_secs(30),
        node: "node-a".into(),
        lease: Duration::from_secs(60),
        release_all_at_start: false,
        max_running_per_tenant: 0,
    }
}

struct Harness {
    db: Db,
    store_root: std::path::PathBuf,
    launched: mpsc::UnboundedReceiver<ScriptedWorker>,
    scheduler: SchedulerHandle,
    updates: broadcast::Receiver<JobUpdate>,
    _tmp: tempfile::TempDir,
}

async fn harness(workers: usize, jobs: &[&str]) -> Harness {
    harness_with(workers, jobs.iter().map(|id| new_job(id)).collect()).await
}

async fn harness_with(workers: usize, jobs: Vec<crate::storage::NewJob>) -> Harness {
    let (db, tmp) = db().await;
    for job in &jobs {
        assert!(db.insert_job(job, 100).await.unwrap());
    }
    let store_root = tmp.path().join("store");
    let store: Arc<dyn prune_store::FileStore> = Arc::new(prune_store::LocalStore::new(store_root.clone()));
    let live = Live::default();
    let updates = live.subscribe();
    let deps = Deps { db: db.clone(), live, store };
    let (launcher, launched) = ScriptedLauncher::new();
    let config = config(workers);
    let (scheduler, _task) = start(deps, Arc::new(launcher), config);
    Harness { db, store_root, launched, scheduler, updates, _tmp: tmp }
}

impl Harness {
    async fn next_worker(&mut self) -> ScriptedWorker {
        tokio::time::timeout(WAIT, self.launched.recv()).await.expect("a worker is launched").expect("launcher alive")
    }

    /// Waits (on the live updates the scheduler sends) until the job is in `state`.
    async fn job_in(&mut self, id: &str, state: JobState) -> JobRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let job = self.db.job(id).await.unwrap().unwrap();
            if job.state == state {
                return job;
            }
            match tokio::time::timeout_at(deadline, self.updates.recv()).await {
                Ok(_) => {}
                Err(_) => panic!("job {id} is {} after {WAIT:?}, not {state}", job.state),
            }
        }
    }

    /// Puts `content` in the store under `key` and returns the checkpoint event a worker sends.
    fn checkpoint(&self, key: &str, step: i64, content: &[u8]) -> WorkerMessage {
        let path = self.store_root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let sha256 = prune_store::sha256_file(&path).unwrap();
        WorkerMessage::Event(Event::Checkpoint { key: key.into(), step, epoch: 0, sha256, bytes: content.len() as u64 })
    }
}

fn finished(job_id: &str) -> WorkerMessage {
    let report = Report {
        tensors: vec![],
        dense_bytes: 10,
        gzip_dense_bytes: 5,
        artifact_bytes: BTreeMap::from([("safetensors".to_string(), 3)]),
        final_val_accuracy: Some(0.9),
        final_val_loss: Some(0.1),
        dense_val_accuracy: None,
        steps: 7,
        inference: vec![],
        inference_note: None,
        channels: None,
        ..Default::default()
    };
    let artifact = ArtifactFile {
        format: "safetensors".into(),
        key: format!("artifacts/{job_id}/attempt-1/model.safetensors"),
        compression: "none".into(),
        sparse_format: "dense".into(),
        bytes: 3,
        sha256: "ab".into(),
    };
    WorkerMessage::Finished(Box::new(JobOutcome { artifacts: vec![artifact], report }))
}

#[tokio::test]
async fn a_finished_attempt_succeeds_with_its_artifacts_and_report() {
    let mut h = harness(1, &["job-a"]).await;
    let worker = h.next_worker().await;
    assert_eq!((worker.request.job_id.as_str(), worker.attempt), ("job-a", 1));
    assert_eq!(worker.request.inputs.checkpoint_prefix, "checkpoints/job-a/attempt-1/");
    assert_eq!(worker.request.inputs.resume_from, None);
    worker.report(finished("job-a"));
    worker.exit("");
    let job = h.job_in("job-a", JobState::Succeeded).await;
    assert_eq!(job.report.unwrap().steps, 7);
    let artifacts = h.db.artifacts("job-a").await.unwrap();
    assert_eq!(artifacts[0].path, "artifacts/job-a/attempt-1/model.safetensors");
    assert_eq!(h.db.count_attempts("job-a", AttemptOutcome::Succeeded).await.unwrap(), 1);
}

#[tokio::test]
async fn an_engine_error_fails_the_job_without_a_retry() {
    let mut h = harness(1, &["job-a"]).await;
    let worker = h.next_worker().await;
    worker.report(WorkerMessage::Failed { error: "data: x has 3 samples, y has 2".into() });
    worker.exit("");
    let job = h.job_in("job-a", JobState::Failed).await;
    assert_eq!(job.error.as_deref(), Some("data: x has 3 samples, y has 2"));
    assert!(h.launched.try_recv().is_err(), "deterministic errors are not retried");
}

#[tokio::test]
async fn crashes_are_retried_from_the_newest_checkpoint_until_max_attempts() {
    let mut h = harness(1, &["job-a"]).await;
    let first = h.next_worker().await;
    first.report(h.checkpoint("checkpoints/job-a/step-10.ckpt", 10, b"ten"));
    first.exit("worker killed by signal 9");
    let second = h.next_worker().await;
    assert_eq!(second.attempt, 2);
    assert_eq!(second.request.inputs.resume_from.as_deref(), Some("checkpoints/job-a/step-10.ckpt"));
    // A worker that ends without a terminal message crashed, whatever it said before.
    second.report(WorkerMessage::Event(Event::Metrics { points: vec![] }));
    second.exit("worker exited with status 1 without reporting a result");
    let third = h.next_worker().await;
    assert_eq!(third.attempt, 3);
    third.exit("worker killed by signal 11");
    let job = h.job_in("job-a", JobState::Failed).await;
    assert_eq!(job.error.as_deref(), Some("gave up after 3 failed attempts; last: worker killed by signal 11"));
    assert_eq!(h.db.count_attempts("job-a", AttemptOutcome::Crashed).await.unwrap(), 3);
}

#[tokio::test]
async fn a_cancelled_job_has_its_worker_killed_and_stays_cancelled() {
    let mut h = harness(1, &["job-a"]).await;
    let mut worker = h.next_worker().await;
    assert!(h.db.finish_job("job-a", &[JobState::Running], JobState::Cancelled, None, None).await.unwrap());
    h.scheduler.job_cancelled("job-a");
    assert_eq!(worker.next_control().await, Control::Kill);
    worker.exit("worker killed by signal 9");
    h.job_in("job-a", JobState::Cancelled).await;
    // The cancelled attempt is recorded and nothing is relaunched.
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.db.count_attempts("job-a", AttemptOutcome::Cancelled).await.unwrap() == 0 {
        tokio::time::timeout_at(deadline, h.updates.recv()).await.expect("the attempt's end is recorded").ok();
    }
    assert!(h.launched.try_recv().is_err());
}

#[tokio::test]
async fn shutdown_asks_for_a_checkpoint_and_leaves_the_job_to_resume() {
    let mut h = harness(1, &["job-a"]).await;
    let mut worker = h.next_worker().await;
    let scheduler = h.scheduler.clone();
    let shutdown = tokio::spawn(async move { scheduler.shutdown().await });
    assert_eq!(worker.next_control().await, Control::Send(Command::Checkpoint));
    worker.report(h.checkpoint("checkpoints/job-a/step-20.ckpt", 20, b"twenty"));
    worker.report(WorkerMessage::Stopped { step: 20, reason: StopReason::Checkpoint });
    worker.exit("");
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown returns once the worker is gone").unwrap();
    let job = h.db.job("job-a").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Running, "resumed by whichever node claims it next");
    assert_eq!(job.node.as_deref(), Some("node-a"));
    // Handed over: the lease is released, so another node claims it at once.
    let claim = h.db.claim_next("node-b", Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!((claim.job.id.as_str(), claim.attempt), ("job-a", 2));
    assert_eq!(h.db.count_attempts("job-a", AttemptOutcome::Interrupted).await.unwrap(), 1);
    assert_eq!(h.db.checkpoints_latest_first("job-a").await.unwrap()[0].step, 20);
}

#[tokio::test]
async fn a_worker_that_cannot_start_fails_its_job() {
    let (db, tmp) = db().await;
    let store: Arc<dyn prune_store::FileStore> = Arc::new(prune_store::LocalStore::new(tmp.path().join("store")));
    let live = Live::default();
    let mut updates = live.subscribe();
    let (launcher, _launched) = ScriptedLauncher::new();
    launcher.fail_next_launch();
    let config = config(1);
    let (scheduler, _task) = start(Deps { db: db.clone(), live, store }, Arc::new(launcher), config);
    assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
    scheduler.job_queued();
    loop {
        let job = db.job("job-a").await.unwrap().unwrap();
        if job.state == JobState::Failed {
            let error = job.error.unwrap();
            assert!(
                error.starts_with("could not start a worker: spawning scripted worker: scripted launch failure"),
                "{error}"
            );
            break;
        }
        tokio::time::timeout(WAIT, updates.recv()).await.expect("the job fails").ok();
    }
}

#[tokio::test]
async fn slots_limit_the_running_jobs_and_free_up_in_order() {
    let mut h = harness(1, &["job-a", "job-b"]).await;
    let first = h.next_worker().await;
    assert_eq!(first.request.job_id, "job-a");
    assert!(h.launched.try_recv().is_err(), "one slot: job-b waits");
    first.report(finished("job-a"));
    first.exit("");
    let second = h.next_worker().await;
    assert_eq!(second.request.job_id, "job-b");
}

#[tokio::test]
async fn a_superseded_attempt_is_stopped_and_leaves_nothing_behind() {
    let mut h = harness(1, &["job-a"]).await;
    let mut worker = h.next_worker().await;
    worker.report(h.checkpoint("checkpoints/job-a/attempt-1/step-10.ckpt", 10, b"ten"));
    // node-a is cut off; its lease runs out and node-b takes the job over.
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.db.checkpoints_latest_first("job-a").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the checkpoint is recorded");
        tokio::task::yield_now().await;
    }
    assert!(h.db.release_lease(Fence { job_id: "job-a", attempt: 1 }).await.unwrap());
    let takeover = h.db.claim_next("node-b", Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(takeover.attempt, 2);
    // The old attempt's next write is rejected: its worker is killed, its object removed.
    let late = h.checkpoint("checkpoints/job-a/attempt-1/step-20.ckpt", 20, b"twenty");
    worker.report(late);
    assert_eq!(worker.next_control().await, Control::Kill);
    worker.report(finished("job-a"));
    worker.exit("worker killed by signal 9");
    let gone = |key: &str| !h.store_root.join(key).exists();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(gone("checkpoints/job-a/attempt-1/step-20.ckpt") && gone("artifacts/job-a/attempt-1/model.safetensors")) {
        assert!(tokio::time::Instant::now() < deadline, "the superseded attempt's objects are removed");
        tokio::task::yield_now().await;
    }
    let job = h.db.job("job-a").await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts, job.node.as_deref()), (JobState::Running, 2, Some("node-b")));
    assert!(h.db.artifacts("job-a").await.unwrap().is_empty());
    assert_eq!(h.db.checkpoints_latest_first("job-a").await.unwrap().len(), 1, "the late checkpoint was fenced off");
    let attempts = h.db.attempts("job-a").await.unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("superseded"));
}

#[tokio::test]
async fn a_cancel_on_another_node_reaches_the_worker_through_the_heartbeat() {
    let mut h = harness(1, &["job-a"]).await;
    let mut worker = h.next_worker().await;
    // Another node's CancelJob: the row changes; this node's loop is not told.
    assert!(h.db.finish_job("job-a", &[JobState::Running], JobState::Cancelled, None, None).await.unwrap());
    let control = tokio::time::timeout(WAIT, worker.next_control()).await.expect("killed within a few renewals");
    assert_eq!(control, Control::Kill);
    worker.exit("worker killed by signal 9");
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.db.count_attempts("job-a", AttemptOutcome::Cancelled).await.unwrap() == 0 {
        tokio::time::timeout_at(deadline, h.updates.recv()).await.expect("the attempt's end is recorded").ok();
    }
}

#[tokio::test]
async fn a_job_over_its_max_runtime_checkpoints_and_fails() {
    let mut spec = prune_core::JobSpec::default();
    spec.training.max_runtime_secs = 1;
    let job = crate::storage::NewJob { spec_json: serde_json::to_string(&spec).unwrap(), ..new_job("job-a") };
    let mut h = harness_with(1, vec![job]).await;
    let mut worker = h.next_worker().await;
    worker.log("loading data");
    let asked = tokio::time::timeout(WAIT, worker.next_control()).await.expect("asked within the runtime");
    assert_eq!(asked, Control::Send(Command::Checkpoint));
    worker.report(h.checkpoint("checkpoints/job-a/attempt-1/step-3.ckpt", 3, b"three"));
    worker.report(WorkerMessage::Stopped { step: 3, reason: StopReason::Checkpoint });
    worker.exit("");
    let job = h.job_in("job-a", JobState::Failed).await;
    let error = job.error.unwrap();
    assert!(error.starts_with("exceeded training.max_runtime_secs = 1"), "{error}");
    assert!(h.launched.try_recv().is_err(), "not retried");
    assert_eq!(h.db.checkpoints_latest_first("job-a").await.unwrap().len(), 1, "the last checkpoint is kept");
    let logs = h.db.logs("job-a", None, 10).await.unwrap();
    assert_eq!(
        logs.iter().map(|l| (l.attempt, l.line_no, l.text.as_str())).collect::<Vec<_>>(),
        [(1, 1, "loading data")]
    );
}
