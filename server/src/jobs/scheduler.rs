//! The scheduler: one loop that owns this node's running attempts.
//!
//! Nodes share one database. The loop claims jobs up to `--workers` at a time ([`Db::claim_next`]:
//! RUNNING jobs whose lease ran out first, then QUEUED ones in submission order), decides what an
//! attempt's end means (success, failure, a retry from the last good checkpoint) and, at
//! shutdown, asks every worker for a checkpoint and hands the jobs over. Its [`heartbeat`]
//! renews the leases, stops workers whose lease is lost, and wakes the loop now and then so
//! that jobs queued on other nodes, or given up by them, are found.
//!
//! Cancellation is state: CancelJob marks the row CANCELLED itself (on any node); the owner's
//! worker is killed when the loop is told (same node) or the next renewal misses the job.
//! Every write of an attempt is fenced by its number ([`Fence`]), so a cancel or a takeover
//! always wins over an attempt that has not noticed yet.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prune_core::domain::{JobOutcome, Report, StopReason};
use prune_core::worker_protocol::Command;
use prune_store::Key;
use tokio::sync::{mpsc, oneshot};

use crate::jobs::attempt::{self, AttemptEnd, AttemptHandle, Deps};
use crate::jobs::heartbeat;
use crate::jobs::prepare::{self, Prepared};
use crate::jobs::retention;
use crate::launch::Launcher;
use crate::storage::{ArtifactRecord, AttemptOutcome, Claim, Db, Fence, JobEnd, JobRecord, JobState, StorageError};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Jobs this node runs at once; 0: an API-only node that runs none.
    pub workers: usize,
    pub shutdown_grace: Duration,
    /// This node's name in leases and attempts.
    pub node: String,
    /// How long a claim or renewal holds a job; a node that cannot renew stops its workers
    /// before it runs out.
    pub lease: Duration,
    /// At start-up, release every node's leases, not only this node's: a SQLite database is
    /// one node's.
    pub release_all_at_start: bool,
    /// Jobs one tenant may have RUNNING at once (0: no limit).
    pub max_running_per_tenant: u32,
}

enum Msg {
    /// A job was queued, or may be claimable (the heartbeat's poll): fill free slots.
    Wake,
    /// The job's row is CANCELLED now: kill its worker, if any.
    Cancelled(String),
    Ended {
        job_id: String,
        attempt: u32,
        end: AttemptEnd,
    },
    Shutdown(oneshot::Sender<()>),
    GraceExpired,
    /// The job reached `training.max_runtime_secs`: checkpoint and fail it.
    RuntimeExceeded {
        job_id: String,
        attempt: u32,
    },
}

/// Cheap to clone; the service's way to reach the loop.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl SchedulerHandle {
    pub fn job_queued(&self) {
        let _ = self.tx.send(Msg::Wake);
    }

    pub fn job_cancelled(&self, job_id: &str) {
        let _ = self.tx.send(Msg::Cancelled(job_id.to_string()));
    }

    /// Stops starting jobs, asks running workers for a checkpoint (killing those that take
    /// longer than the grace period), hands their jobs over (their leases are released, so
    /// another node resumes them at once) and returns when all have exited.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).is_ok() {
            let _ = wait.await;
        }
    }

    pub(crate) fn wake(&self) {
        let _ = self.tx.send(Msg::Wake);
    }
}

/// Starts the loop (and its heartbeat) on the current runtime.
pub fn start(
    deps: Deps,
    launcher: Arc<dyn Launcher>,
    config: SchedulerConfig,
) -> (SchedulerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = SchedulerHandle { tx: tx.clone() };
    let running = Registry::default();
    let heartbeat =
        heartbeat::start(deps.db.clone(), config.node.clone(), config.lease, running.clone(), handle.clone());
    let scheduler = Scheduler { deps, launcher, config, tx, running, shutdown: None, timed_out: HashSet::new() };
    let task = tokio::spawn(async move {
        scheduler.run(rx).await;
        heartbeat.abort();
    });
    (handle, task)
}

/// One running attempt of this node.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub attempt: u32,
    pub handle: AttemptHandle,
    /// Set when this node stopped the worker itself (its lease could not be renewed): the
    /// attempt's end is then that, not a crash, and costs the job no retry.
    pub stopped_by_node: Option<String>,
}

/// This node's running attempts by job id, shared with the heartbeat (which kills the workers
/// of leases it lost without waiting for the loop).
pub(crate) type Registry = Arc<Mutex<HashMap<String, Running>>>;

struct Scheduler {
    deps: Deps,
    launcher: Arc<dyn Launcher>,
    config: SchedulerConfig,
    /// For the attempts' end callbacks and the grace timer.
    tx: mpsc::UnboundedSender<Msg>,
    running: Registry,
    /// Set once shutting down: who to tell when the last worker has exited.
    shutdown: Option<Vec<oneshot::Sender<()>>>,
    /// Attempts stopped for exceeding the job's max runtime: their end FAILS the job.
    timed_out: HashSet<(String, u32)>,
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.recover().await;
        self.fill_slots().await;
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Wake => {}
                Msg::Cancelled(job_id) => {
                    if let Some(running) = self.running().get(&job_id) {
                        tracing::info!(job_id, "cancelled: killing its worker");
                        running.handle.kill();
                    }
                }
                Msg::Ended { job_id, attempt, end } => self.ended(job_id, attempt, end).await,
                Msg::Shutdown(done) => self.begin_shutdown(done),
                Msg::RuntimeExceeded { job_id, attempt } => {
                    if let Some(running) = self.running().get(&job_id).filter(|r| r.attempt == attempt) {
                        tracing::warn!(
                            job_id,
                            attempt,
                            "training.max_runtime_secs reached: asking for a last checkpoint"
                        );
                        running.handle.send(Command::Checkpoint);
                    }
                    self.timed_out.insert((job_id, attempt));
                }
                Msg::GraceExpired => {
                    for (job_id, running) in self.running().iter() {
                        tracing::warn!(job_id, "no checkpoint within the grace period: killing the worker");
                        running.handle.kill();
                    }
                }
            }
            if self.shutdown.is_none() {
                self.fill_slots().await;
            } else if self.running().is_empty() {
                break;
            }
        }
        for done in self.shutdown.take().into_iter().flatten() {
            let _ = done.send(());
        }
        tracing::info!("scheduler stopped");
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn db(&self) -> &Db {
        &self.deps.db
    }

    /// Attempts this node left open when it died are over, and its leases are released: their
    /// jobs resume at once (here or on another node) rather than when the lease runs out.
    async fn recover(&mut self) {
        let node = (!self.config.release_all_at_start).then_some(self.config.node.as_str());
        match self.db().release_node_leases(node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "released the leases of jobs left running; they resume"),
            Err(e) => tracing::error!("releasing the leases of jobs left running: {e}"),
        }
    }

    async fn fill_slots(&mut self) {
        while self.running().len() < self.config.workers {
            let per_tenant = match self.config.max_running_per_tenant {
                0 => u32::MAX,
                n => n,
            };
            match self.db().claim_next_fair(&self.config.node, self.config.lease, per_tenant).await {
                Ok(Some(claim)) => self.launch(claim).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("claiming the next job: {e}");
                    break;
                }
            }
        }
    }

    /// Starts a worker for a claimed job; a job that cannot even start FAILS.
    async fn launch(&mut self, claim: Claim) {
        let (job_id, attempt) = (claim.job.id.clone(), claim.attempt);
        if let Err(e) = self.try_launch(claim).await {
            tracing::error!(job_id, "could not start the job: {e}");
            let error = match e {
                LaunchError::Runtime(reason) => reason,
                e => format!("could not start a worker: {e}"),
            };
            self.log_attempt(&job_id, attempt, AttemptOutcome::Failed, Some(&error)).await;
            self.finish(&job_id, attempt, JobState::Failed, Some(&error), None, &[]).await;
        }
    }

    async fn try_launch(&mut self, Claim { job, attempt }: Claim) -> Result<(), LaunchError> {
        let limit = job.spec.training.max_runtime_secs;
        let remaining = runtime_left(&job);
        if remaining == Some(Duration::ZERO) {
            return Err(LaunchError::Runtime(format!(
                "exceeded training.max_runtime_secs = {limit} before attempt {attempt} could start"
            )));
        }
        let deps = &self.deps;
        let fence = Fence { job_id: &job.id, attempt };
        let Prepared { request, resumed } = prepare::prepare(&deps.db, &deps.store, &job, attempt).await?;
        match &resumed {
            Some(c) => {
                deps.db.set_resumed_step(fence, c.step).await?;
                tracing::info!(job_id = job.id, attempt, step = c.step, "starting attempt from a checkpoint");
            }
            None => tracing::info!(job_id = job.id, attempt, "starting attempt"),
        }
        let tx = self.tx.clone();
        let job_id = job.id.clone();
        let on_end = move |end| {
            let _ = tx.send(Msg::Ended { job_id, attempt, end });
        };
        let worker = self
            .launcher
            .launch(&request, attempt)
            .map_err(|e| LaunchError::Spawn(format!("spawning {}: {e}", self.launcher.describe())))?;
        let handle = attempt::follow(deps, &job.id, attempt, worker, on_end);
        deps.live.attempt_started(&job.id, handle.pid);
        if let Some(remaining) = remaining {
            let (tx, job_id) = (self.tx.clone(), job.id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(remaining).await;
                let _ = tx.send(Msg::RuntimeExceeded { job_id, attempt });
            });
        }
        self.running().insert(job.id, Running { attempt, handle, stopped_by_node: None });
        Ok(())
    }

    async fn ended(&mut self, job_id: String, attempt: u32, end: AttemptEnd) {
        let stopped_by_node = {
            let mut running = self.running();
            if running.get(&job_id).is_some_and(|r| r.attempt == attempt) {
                running.remove(&job_id).and_then(|r| r.stopped_by_node)
            } else {
                None
            }
        };
        self.deps.live.attempt_ended(&job_id);
        let job = match self.db().job(&job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => return tracing::error!(job_id, "an attempt ended for a job that does not exist"),
            // The lease runs out; the job resumes wherever it is claimed next.
            Err(e) => return tracing::error!(job_id, attempt, "attempt ended, but reading the job failed: {e}"),
        };
        if job.attempts != attempt {
            // Taken over: the claim marked this attempt superseded; nothing of it is recorded.
            tracing::warn!(job_id, attempt, current = job.attempts, "a superseded attempt ended");
            self.discard_outcome(&end);
            return;
        }
        if job.state != JobState::Running {
            // Cancelled while it ran; the row already says so.
            self.log_attempt(&job_id, attempt, AttemptOutcome::Cancelled, None).await;
            self.discard_outcome(&end);
            self.remove_checkpoints(&job_id);
            self.deps.live.state_changed(&job_id);
            return;
        }
        let timed_out = self.timed_out.remove(&(job_id.clone(), attempt));
        if let (Some(reason), AttemptEnd::Stopped(_) | AttemptEnd::Crashed(_)) = (&stopped_by_node, &end) {
            // Not the worker's fault: the job resumes (here or elsewhere) without using a retry.
            tracing::warn!(job_id, attempt, "the worker was stopped by this node: {reason}");
            self.log_attempt(&job_id, attempt, AttemptOutcome::Interrupted, Some(reason)).await;
            self.release(&job_id, attempt).await;
            return;
        }
        match end {
            AttemptEnd::Finished(outcome) => self.succeed(&job_id, attempt, outcome).await,
            AttemptEnd::Stopped(_) | AttemptEnd::Crashed(_) if timed_out => {
                let error = format!(
                    "exceeded training.max_runtime_secs = {}; stopped at step {}: resubmit with a larger limit",
                    job.spec.training.max_runtime_secs, job.step
                );
                self.log_attempt(&job_id, attempt, AttemptOutcome::Failed, Some(&error)).await;
                self.finish(&job_id, attempt, JobState::Failed, Some(&error), None, &[]).await;
            }
            AttemptEnd::Failed(error) => {
                self.log_attempt(&job_id, attempt, AttemptOutcome::Failed, Some(&error)).await;
                self.finish(&job_id, attempt, JobState::Failed, Some(&error), None, &[]).await;
            }
            AttemptEnd::Stopped(StopReason::Cancel) => {
                self.log_attempt(&job_id, attempt, AttemptOutcome::Cancelled, None).await;
                self.finish(&job_id, attempt, JobState::Cancelled, None, None, &[]).await;
            }
            AttemptEnd::Stopped(StopReason::Checkpoint) | AttemptEnd::Crashed(_) if self.shutdown.is_some() => {
                tracing::info!(job_id, "stopped for shutdown; handing the job over");
                self.log_attempt(&job_id, attempt, AttemptOutcome::Interrupted, None).await;
                self.release(&job_id, attempt).await;
            }
            AttemptEnd::Stopped(StopReason::Checkpoint) => {
                let reason = "worker stopped without being asked to".to_string();
                self.crashed(job, attempt, reason).await;
            }
            AttemptEnd::Crashed(reason) => self.crashed(job, attempt, reason).await,
        }
    }

    /// Retries from the last good checkpoint while crashes stay below `max_attempts`: the
    /// lease is released and the job claimed again (most likely by this node, at once).
    async fn crashed(&mut self, job: JobRecord, attempt: u32, reason: String) {
        tracing::warn!(job_id = job.id, attempt, "attempt crashed: {reason}");
        self.log_attempt(&job.id, attempt, AttemptOutcome::Crashed, Some(&reason)).await;
        let crashes = match self.db().count_attempts(&job.id, AttemptOutcome::Crashed).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(job_id = job.id, "counting attempts: {e}");
                u32::MAX
            }
        };
        if crashes < job.max_attempts {
            self.release(&job.id, attempt).await;
        } else {
            let error = format!("gave up after {crashes} failed attempts; last: {reason}");
            self.finish(&job.id, attempt, JobState::Failed, Some(&error), None, &[]).await;
        }
    }

    async fn release(&self, job_id: &str, attempt: u32) {
        match self.db().release_lease(Fence { job_id, attempt }).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(job_id, attempt, "the job had been taken over or ended already"),
            Err(e) => tracing::error!(job_id, attempt, "releasing the lease (it runs out instead): {e}"),
        }
    }

    async fn succeed(&mut self, job_id: &str, attempt: u32, outcome: Box<JobOutcome>) {
        let artifacts: Vec<ArtifactRecord> = outcome
            .artifacts
            .iter()
            .map(|a| ArtifactRecord {
                format: a.format.clone(),
                path: a.key.clone(),
                sha256: a.sha256.clone(),
                bytes: a.bytes,
                compression: a.compression.clone(),
                sparse_format: a.sparse_format.clone(),
            })
            .collect();
        match self.finish(job_id, attempt, JobState::Succeeded, None, Some(&outcome.report), &artifacts).await {
            Recorded::Yes => {
                self.log_attempt(job_id, attempt, AttemptOutcome::Succeeded, None).await;
                self.remove_other_attempts_artifacts(job_id, attempt);
            }
            recorded => {
                if recorded == Recorded::NotCurrent {
                    // Cancelled meanwhile (a superseded attempt's outcome is set already).
                    self.log_attempt(job_id, attempt, AttemptOutcome::Cancelled, None).await;
                }
                self.discard_outcome(&AttemptEnd::Finished(outcome));
            }
        }
    }

    /// Ends the job as attempt `attempt` decided. Not recorded when the attempt was superseded
    /// or the job had ended (`NotCurrent`), or the database failed (then the lease runs out and
    /// the job is claimed again).
    async fn finish(
        &mut self,
        job_id: &str,
        attempt: u32,
        state: JobState,
        error: Option<&str>,
        report: Option<&Report>,
        artifacts: &[ArtifactRecord],
    ) -> Recorded {
        let end = JobEnd { state, error, report, artifacts };
        let recorded = match self.db().finish_attempt_job(Fence { job_id, attempt }, &end).await {
            Ok(()) => {
                tracing::info!(job_id, %state, error, "job finished");
                if matches!(state, JobState::Succeeded | JobState::Cancelled) {
                    self.remove_checkpoints(job_id);
                }
                Recorded::Yes
            }
            Err(StorageError::NotCurrent { .. }) => {
                tracing::info!(job_id, attempt, "the job was no longer this attempt's (cancelled or taken over)");
                Recorded::NotCurrent
            }
            Err(e) => {
                tracing::error!(job_id, "recording the job's end ({state}): {e}");
                Recorded::Failed
            }
        };
        self.deps.live.state_changed(job_id);
        recorded
    }

    /// An attempt whose end was not recorded leaves nothing behind in the store.
    fn discard_outcome(&self, end: &AttemptEnd) {
        if let AttemptEnd::Finished(outcome) = end {
            for artifact in &outcome.artifacts {
                attempt::remove_object(&self.deps.store, artifact.key.clone());
            }
        }
    }

    /// A job that SUCCEEDED (its artifact is what remains) or was CANCELLED needs its checkpoints
    /// no more; a FAILED job keeps them for inspection.
    fn remove_checkpoints(&self, job_id: &str) {
        self.remove_prefixes(job_id, vec![Key::checkpoints_prefix(job_id)]);
    }

    /// Artifacts other attempts of a committed job wrote (superseded ones whose node could not
    /// clean up: it died, or was cut off) are collected once the job has its one artifact set.
    fn remove_other_attempts_artifacts(&self, job_id: &str, committed: u32) {
        let others = (1..committed).map(|a| Key::attempt_artifacts_prefix(job_id, a)).collect();
        self.remove_prefixes(job_id, others);
    }

    /// In the background: the loop does not wait for the store.
    fn remove_prefixes(&self, job_id: &str, prefixes: Vec<String>) {
        let span = tracing::info_span!("job", id = %job_id);
        tokio::spawn(tracing::Instrument::instrument(retention::remove_files(self.deps.store.clone(), prefixes), span));
    }

    async fn log_attempt(&self, job_id: &str, attempt: u32, outcome: AttemptOutcome, error: Option<&str>) {
        if let Err(e) = self.db().finish_attempt(job_id, attempt, outcome, error).await {
            tracing::error!(job_id, attempt, "recording the attempt's end: {e}");
        }
    }

    fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        let waiters = self.shutdown.get_or_insert_with(Vec::new);
        waiters.push(done);
        if waiters.len() > 1 {
            return;
        }
        let running = self.running();
        tracing::info!(running = running.len(), "shutting down: asking workers for a checkpoint");
        for running in running.values() {
            running.handle.send(Command::Checkpoint);
        }
        drop(running);
        let tx = self.tx.clone();
        let grace = self.config.shutdown_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Msg::GraceExpired);
        });
    }
}

/// Whether [`Scheduler::finish`] recorded the job's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Yes,
    NotCurrent,
    Failed,
}

/// Time left of the job's `training.max_runtime_secs`, counted from its first start (so a
/// resumed attempt, on any node, has what the earlier ones left); `None`: no limit.
fn runtime_left(job: &JobRecord) -> Option<Duration> {
    let limit = job.spec.training.max_runtime_secs;
    if limit <= 0 {
        return None;
    }
    let started = job.started_ms.unwrap_or_else(crate::storage::now_ms);
    let deadline = started.saturating_add(limit.saturating_mul(1000));
    let left = deadline.saturating_sub(crate::storage::now_ms()).max(0);
    Some(Duration::from_millis(left as u64))
}

#[derive(Debug, thiserror::Error)]
enum LaunchError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Spawn(String),
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
