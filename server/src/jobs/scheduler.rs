//! The scheduler: one loop that owns the running attempts.
//!
//! It starts jobs in submission order up to `--workers` at a time (jobs a previous server left
//! RUNNING first), decides what an attempt's end means (success, failure, retry from the last
//! good checkpoint), kills the workers of cancelled jobs and, at shutdown, asks every worker
//! for a checkpoint. Cancellation is state: CancelJob marks the row CANCELLED itself and only
//! tells the loop so that it kills the worker; every transition here is conditional on the
//! row still being RUNNING, so a cancel always wins.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prune_core::domain::{JobOutcome, Report, StopReason};
use prune_core::worker_protocol::Command;
use prune_store::Key;
use tokio::sync::{mpsc, oneshot};

use crate::jobs::attempt::{self, AttemptEnd, AttemptHandle, Deps};
use crate::jobs::prepare::{self, Prepared};
use crate::launch::Launcher;
use crate::storage::{ArtifactRecord, AttemptOutcome, JobRecord, JobState, StorageError};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub workers: usize,
    pub shutdown_grace: Duration,
}

enum Msg {
    /// A job was queued: fill free slots.
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
    /// longer than the grace period) and returns when all have exited. Their jobs stay RUNNING,
    /// to be resumed at the next start.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Starts the loop on the current runtime.
pub fn start(
    deps: Deps,
    launcher: Arc<dyn Launcher>,
    config: SchedulerConfig,
) -> (SchedulerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let scheduler = Scheduler {
        deps,
        launcher,
        config,
        tx: tx.clone(),
        running: HashMap::new(),
        resume: VecDeque::new(),
        shutdown: None,
    };
    (SchedulerHandle { tx }, tokio::spawn(scheduler.run(rx)))
}

struct Running {
    attempt: u32,
    handle: AttemptHandle,
}

struct Scheduler {
    deps: Deps,
    launcher: Arc<dyn Launcher>,
    config: SchedulerConfig,
    /// For the attempts' end callbacks and the grace timer.
    tx: mpsc::UnboundedSender<Msg>,
    running: HashMap<String, Running>,
    /// Jobs a previous server left RUNNING, oldest first: they get slots before QUEUED jobs.
    resume: VecDeque<String>,
    /// Set once shutting down: who to tell when the last worker has exited.
    shutdown: Option<Vec<oneshot::Sender<()>>>,
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        if let Err(e) = self.recover().await {
            tracing::error!("recovering running jobs: {e}");
        }
        self.fill_slots().await;
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Wake => {}
                Msg::Cancelled(job_id) => {
                    if let Some(running) = self.running.get(&job_id) {
                        tracing::info!(job_id, "cancelled: killing its worker");
                        running.handle.kill();
                    }
                }
                Msg::Ended { job_id, attempt, end } => self.ended(job_id, attempt, end).await,
                Msg::Shutdown(done) => self.begin_shutdown(done),
                Msg::GraceExpired => {
                    for (job_id, running) in &self.running {
                        tracing::warn!(job_id, "no checkpoint within the grace period: killing the worker");
                        running.handle.kill();
                    }
                }
            }
            if self.shutdown.is_none() {
                self.fill_slots().await;
            } else if self.running.is_empty() {
                break;
            }
        }
        for done in self.shutdown.take().into_iter().flatten() {
            let _ = done.send(());
        }
        tracing::info!("scheduler stopped");
    }

    /// Attempts left open by a server that died are over; their jobs resume first.
    async fn recover(&mut self) -> Result<(), StorageError> {
        self.deps.db.interrupt_open_attempts().await?;
        self.resume = self.deps.db.job_ids_in_state(JobState::Running).await?.into();
        if !self.resume.is_empty() {
            tracing::info!(jobs = ?self.resume, "resuming jobs left running");
        }
        Ok(())
    }

    async fn fill_slots(&mut self) {
        while self.running.len() < self.config.workers {
            match self.next_job().await {
                Ok(Some(job)) => self.launch(job).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("picking the next job: {e}");
                    break;
                }
            }
        }
    }

    async fn next_job(&mut self) -> Result<Option<JobRecord>, StorageError> {
        while let Some(job_id) = self.resume.pop_front() {
            // Cancelled while it waited for a slot: nothing to resume.
            if let Some(job) = self.deps.db.job(&job_id).await?.filter(|j| j.state == JobState::Running) {
                return Ok(Some(job));
            }
        }
        self.deps.db.claim_next_queued().await
    }

    /// Starts a worker for a RUNNING job; a job that cannot even start FAILS.
    async fn launch(&mut self, job: JobRecord) {
        let job_id = job.id.clone();
        if let Err(e) = self.try_launch(job).await {
            tracing::error!(job_id, "could not start the job: {e}");
            self.fail(&job_id, &format!("could not start a worker: {e}")).await;
        }
    }

    async fn try_launch(&mut self, job: JobRecord) -> Result<(), LaunchError> {
        let deps = &self.deps;
        let Prepared { request, resumed } = prepare::prepare(&deps.db, &deps.store, &job).await?;
        let attempt = deps.db.start_attempt(&job.id, resumed.as_ref().map(|c| c.step)).await?;
        match &resumed {
            Some(c) => tracing::info!(job_id = job.id, attempt, step = c.step, "starting attempt from a checkpoint"),
            None => tracing::info!(job_id = job.id, attempt, "starting attempt"),
        }
        let tx = self.tx.clone();
        let job_id = job.id.clone();
        let on_end = move |end| {
            let _ = tx.send(Msg::Ended { job_id, attempt, end });
        };
        let handle = match self.launcher.launch(&request, attempt) {
            Ok(worker) => attempt::follow(deps, &job.id, attempt, worker, on_end),
            Err(e) => {
                let error = format!("spawning {}: {e}", self.launcher.describe());
                self.log_attempt(&job.id, attempt, AttemptOutcome::Failed, Some(&error)).await;
                return Err(LaunchError::Spawn(error));
            }
        };
        deps.live.attempt_started(&job.id, handle.pid);
        self.running.insert(job.id, Running { attempt, handle });
        Ok(())
    }

    async fn ended(&mut self, job_id: String, attempt: u32, end: AttemptEnd) {
        if self.running.get(&job_id).is_some_and(|r| r.attempt == attempt) {
            self.running.remove(&job_id);
        }
        self.deps.live.attempt_ended(&job_id);
        let job = match self.deps.db.job(&job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => return tracing::error!(job_id, "an attempt ended for a job that does not exist"),
            Err(e) => return tracing::error!(job_id, "attempt ended, but reading the job failed: {e}"),
        };
        if job.state != JobState::Running {
            // Cancelled while it ran; the row already says so.
            self.log_attempt(&job_id, attempt, AttemptOutcome::Cancelled, None).await;
            self.remove_checkpoints(&job_id);
            self.deps.live.state_changed(&job_id);
            return;
        }
        match end {
            AttemptEnd::Finished(outcome) => {
                self.log_attempt(&job_id, attempt, AttemptOutcome::Succeeded, None).await;
                self.succeed(&job_id, outcome).await;
            }
            AttemptEnd::Failed(error) => {
                self.log_attempt(&job_id, attempt, AttemptOutcome::Failed, Some(&error)).await;
                self.fail(&job_id, &error).await;
            }
            AttemptEnd::Stopped(StopReason::Cancel) => {
                self.log_attempt(&job_id, attempt, AttemptOutcome::Cancelled, None).await;
                self.finish(&job_id, JobState::Cancelled, None, None).await;
            }
            AttemptEnd::Stopped(StopReason::Checkpoint) | AttemptEnd::Crashed(_) if self.shutdown.is_some() => {
                tracing::info!(job_id, "stopped for shutdown; it resumes at the next start");
                self.log_attempt(&job_id, attempt, AttemptOutcome::Interrupted, None).await;
            }
            AttemptEnd::Stopped(StopReason::Checkpoint) => {
                let reason = "worker stopped without being asked to".to_string();
                self.crashed(job, attempt, reason).await;
            }
            AttemptEnd::Crashed(reason) => self.crashed(job, attempt, reason).await,
        }
    }

    /// Retries from the last good checkpoint while crashes stay below `max_attempts`.
    async fn crashed(&mut self, job: JobRecord, attempt: u32, reason: String) {
        tracing::warn!(job_id = job.id, attempt, "attempt crashed: {reason}");
        self.log_attempt(&job.id, attempt, AttemptOutcome::Crashed, Some(&reason)).await;
        let crashes = match self.deps.db.count_attempts(&job.id, AttemptOutcome::Crashed).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(job_id = job.id, "counting attempts: {e}");
                u32::MAX
            }
        };
        if crashes < job.max_attempts {
            self.launch(job).await;
        } else {
            let error = format!("gave up after {crashes} failed attempts; last: {reason}");
            self.fail(&job.id, &error).await;
        }
    }

    async fn succeed(&mut self, job_id: &str, outcome: JobOutcome) {
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
        if let Err(e) = self.deps.db.insert_artifacts(job_id, &artifacts).await {
            tracing::error!(job_id, "recording artifacts: {e}");
            return self.fail(job_id, &format!("recording the artifacts: {e}")).await;
        }
        self.finish(job_id, JobState::Succeeded, None, Some(&outcome.report)).await;
    }

    async fn fail(&mut self, job_id: &str, error: &str) {
        self.finish(job_id, JobState::Failed, Some(error), None).await;
    }

    async fn finish(&mut self, job_id: &str, state: JobState, error: Option<&str>, report: Option<&Report>) {
        match self.deps.db.finish_job(job_id, &[JobState::Running], state, error, report).await {
            Ok(true) => {
                tracing::info!(job_id, %state, error, "job finished");
                if matches!(state, JobState::Succeeded | JobState::Cancelled) {
                    self.remove_checkpoints(job_id);
                }
            }
            Ok(false) => tracing::info!(job_id, "job was no longer running (cancelled)"),
            Err(e) => tracing::error!(job_id, "recording the job's end ({state}): {e}"),
        }
        self.deps.live.state_changed(job_id);
    }

    /// A job that SUCCEEDED (its artifact is what remains) or was CANCELLED needs its checkpoints
    /// no more; a FAILED job keeps them for inspection.
    fn remove_checkpoints(&self, job_id: &str) {
        let store = self.deps.store.clone();
        let job_id = job_id.to_string();
        tokio::task::spawn_blocking(move || {
            let prefix = Key::checkpoints_prefix(&job_id);
            let removed = Key::parse(prefix.trim_end_matches('/'))
                .map_err(|e| e.to_string())
                .and_then(|prefix| store.delete_all(&prefix).map_err(|e| e.to_string()));
            if let Err(e) = removed {
                tracing::warn!(job_id, "removing the checkpoints: {e}");
            }
        });
    }

    async fn log_attempt(&self, job_id: &str, attempt: u32, outcome: AttemptOutcome, error: Option<&str>) {
        if let Err(e) = self.deps.db.finish_attempt(job_id, attempt, outcome, error).await {
            tracing::error!(job_id, attempt, "recording the attempt's end: {e}");
        }
    }

    fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        let waiters = self.shutdown.get_or_insert_with(Vec::new);
        waiters.push(done);
        if waiters.len() > 1 {
            return;
        }
        tracing::info!(running = self.running.len(), "shutting down: asking workers for a checkpoint");
        for running in self.running.values() {
            running.handle.send(Command::Checkpoint);
        }
        let tx = self.tx.clone();
        let grace = self.config.shutdown_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Msg::GraceExpired);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum LaunchError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Spawn(String),
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
