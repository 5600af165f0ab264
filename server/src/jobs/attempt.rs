//! One attempt of one job, as the scheduler sees it: what the worker reports is recorded
//! (database rows, live progress) and the attempt's end is worked out. Where the worker runs is
//! the launcher's business ([`crate::launch`]); decisions (retry, fail, resume) are the
//! scheduler's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prune_core::domain::{Event, JobOutcome, StopReason};
use prune_core::worker_protocol::{Command, WorkerMessage};
use prune_store::{FileStore, Key};
use tokio::sync::mpsc;

use crate::jobs::live::{self, Live};
use crate::launch::{Control, Worker};
use crate::storage::{now_ms, CheckpointRecord, Db, Fence, LogLine, ProgressUpdate, StorageError};

/// How often running progress is written to the job row (it is in memory in between).
const PROGRESS_TO_DB_EVERY: Duration = Duration::from_secs(2);

/// How an attempt ended, as seen from outside the worker.
#[derive(Debug)]
pub enum AttemptEnd {
    /// Boxed: a report is large next to the other variants.
    Finished(Box<JobOutcome>),
    /// The engine reported an error (one line).
    Failed(String),
    Stopped(StopReason),
    /// The worker died without reporting: exit status or signal, and its last log line.
    Crashed(String),
}

impl AttemptEnd {
    /// One line for the log (the outcome itself carries the whole report).
    pub fn summary(&self) -> String {
        match self {
            AttemptEnd::Finished(o) => format!("finished, {} artifact(s), {} steps", o.artifacts.len(), o.report.steps),
            AttemptEnd::Failed(error) => format!("failed: {error}"),
            AttemptEnd::Stopped(reason) => format!("stopped ({reason:?})"),
            AttemptEnd::Crashed(reason) => format!("crashed: {reason}"),
        }
    }
}

/// Steers a running attempt. Dropping it does not stop the worker.
#[derive(Debug, Clone)]
pub struct AttemptHandle {
    pub pid: Option<u32>,
    control: mpsc::UnboundedSender<Control>,
}

impl AttemptHandle {
    pub fn send(&self, command: Command) {
        let _ = self.control.send(Control::Send(command));
    }

    /// Immediate, whatever the engine is doing.
    pub fn kill(&self) {
        let _ = self.control.send(Control::Kill);
    }
}

/// What the scheduler and the recording of attempts need from the server.
#[derive(Debug, Clone)]
pub struct Deps {
    pub db: Db,
    pub live: Live,
    pub store: Arc<dyn FileStore>,
}

/// Records what `worker` (attempt `attempt` of `job_id`) reports; `on_end` is called once, after
/// the worker is gone and everything it reported is recorded. Every write is fenced by the
/// attempt number: once one is rejected (the job was taken over or ended) the worker is killed
/// and what it reports afterwards is dropped, its checkpoint objects removed from the store.
pub fn follow(
    deps: &Deps,
    job_id: &str,
    attempt: u32,
    worker: Worker,
    on_end: impl FnOnce(AttemptEnd) + Send + 'static,
) -> AttemptHandle {
    let Worker { pid, control, mut messages, exited, logs } = worker;
    let log_recorder = tokio::spawn(record_logs(deps.db.clone(), job_id.to_string(), attempt, logs));
    let mut recorder = Recorder::new(deps.clone(), job_id.to_string(), attempt, control.clone());
    let span = tracing::info_span!("job", id = %job_id, attempt, pid);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            tracing::info!("worker started");
            let mut terminal = None;
            while let Some(message) = messages.recv().await {
                match message {
                    WorkerMessage::Event(event) => recorder.record(event).await,
                    message => terminal = Some(message),
                }
            }
            let crash = exited.await.unwrap_or_else(|_| "the launcher lost the worker".to_string());
            recorder.flush_progress().await;
            // Every line is stored before the end is known: a log read after it is complete.
            let _ = log_recorder.await;
            let end = match terminal {
                Some(WorkerMessage::Finished(outcome)) => AttemptEnd::Finished(outcome),
                Some(WorkerMessage::Failed { error }) => AttemptEnd::Failed(error),
                Some(WorkerMessage::Stopped { reason, .. }) => AttemptEnd::Stopped(reason),
                Some(WorkerMessage::Event(_)) | None => AttemptEnd::Crashed(crash),
            };
            tracing::info!(end = %end.summary(), "worker ended");
            on_end(end);
        },
        span,
    ));
    AttemptHandle { pid, control }
}

/// Lines stored per attempt; beyond it one line says the rest was dropped.
const MAX_LOG_LINES: i64 = 20_000;
/// Lines per insert (a batch is also written when the worker pauses).
const LOG_BATCH: usize = 200;

/// Stores the worker's log lines in batches (numbered from 1) until its log ends.
async fn record_logs(db: Db, job_id: String, attempt: u32, mut logs: mpsc::UnboundedReceiver<String>) {
    let mut line_no = 0i64;
    let mut batch = Vec::new();
    loop {
        let open = match logs.recv().await {
            Some(text) => {
                line_no += 1;
                if line_no <= MAX_LOG_LINES {
                    batch.push(LogLine { attempt, line_no, unix_ms: now_ms(), text });
                } else if line_no == MAX_LOG_LINES + 1 {
                    let text = format!("(log truncated: only the first {MAX_LOG_LINES} lines of an attempt are kept)");
                    batch.push(LogLine { attempt, line_no, unix_ms: now_ms(), text });
                }
                // Take what else is already there, up to a batch.
                while batch.len() < LOG_BATCH {
                    match logs.try_recv() {
                        Ok(text) => {
                            line_no += 1;
                            if line_no <= MAX_LOG_LINES {
                                batch.push(LogLine { attempt, line_no, unix_ms: now_ms(), text });
                            }
                        }
                        Err(_) => break,
                    }
                }
                true
            }
            None => false,
        };
        if !batch.is_empty() {
            if let Err(e) = db.insert_logs(&job_id, &batch).await {
                tracing::warn!(job_id, attempt, "storing {} log line(s): {e}", batch.len());
            }
            batch.clear();
        }
        if !open {
            return;
        }
    }
}

/// Turns engine events into database rows and live progress.
struct Recorder {
    deps: Deps,
    job_id: String,
    attempt: u32,
    control: mpsc::UnboundedSender<Control>,
    /// Set once a write was rejected: the attempt is no longer the job's current one.
    superseded: bool,
    /// Progress not yet written to the job row.
    pending: Option<ProgressUpdate>,
    last_write: Option<Instant>,
}

impl Recorder {
    fn new(deps: Deps, job_id: String, attempt: u32, control: mpsc::UnboundedSender<Control>) -> Self {
        Recorder { deps, job_id, attempt, control, superseded: false, pending: None, last_write: None }
    }

    fn fence(&self) -> Fence<'_> {
        Fence { job_id: &self.job_id, attempt: self.attempt }
    }

    async fn record(&mut self, event: Event) {
        if self.superseded {
            if let Event::Checkpoint { key, .. } = event {
                remove_object(&self.deps.store, key);
            }
            return;
        }
        let checkpoint_key = match &event {
            Event::Checkpoint { key, .. } => Some(key.clone()),
            _ => None,
        };
        let mut checkpoint_recorded = false;
        match self.try_record(event, &mut checkpoint_recorded).await {
            Ok(()) => {}
            Err(e @ StorageError::NotCurrent { .. }) => {
                tracing::warn!("{e}: stopping the worker");
                self.superseded = true;
                self.pending = None;
                let _ = self.control.send(Control::Kill);
                // Only an object whose row was refused is an orphan: a recorded checkpoint is
                // what the attempt taking over resumes from, even when a later write of this
                // attempt (its progress) is the one refused.
                if let (Some(key), false) = (checkpoint_key, checkpoint_recorded) {
                    remove_object(&self.deps.store, key);
                }
            }
            // Losing a metrics batch is bad but not worth killing a healthy job over.
            Err(e) => tracing::error!("recording a worker event: {e}"),
        }
    }

    /// Records one event; `checkpoint_recorded` is set once a checkpoint's row is committed.
    async fn try_record(&mut self, event: Event, checkpoint_recorded: &mut bool) -> crate::storage::Result<()> {
        let db = &self.deps.db;
        let fence = Fence { job_id: &self.job_id, attempt: self.attempt };
        match event {
            Event::Started { total_steps, start_step, warnings, .. } => {
                tracing::info!(total_steps, start_step, "job started");
                db.set_total_steps(fence, total_steps).await?;
                if !warnings.is_empty() {
                    db.add_warnings(fence, &warnings).await?;
                }
                self.deps.live.state_changed(&self.job_id);
            }
            Event::Progress { step, total_steps, epoch, loss, accuracy, sparsity } => {
                let finite = |v: f64| v.is_finite().then_some(v);
                self.pending = Some(ProgressUpdate {
                    step,
                    epoch,
                    loss: finite(loss),
                    accuracy: finite(accuracy),
                    sparsity: sparsity.clone(),
                });
                let progress = live::Progress { step, total_steps, epoch, loss, accuracy, sparsity, eta_seconds: None };
                self.deps.live.progress(&self.job_id, progress);
                if self.last_write.is_none_or(|t| t.elapsed() >= PROGRESS_TO_DB_EVERY) {
                    self.flush_progress_inner().await?;
                }
            }
            Event::Metrics { points } => db.insert_metrics(fence, &points).await?,
            Event::Checkpoint { key, step, epoch, sha256, bytes } => {
                tracing::debug!(step, %key, "checkpoint written");
                db.insert_checkpoint(fence, &CheckpointRecord { step, epoch, path: key, sha256, bytes }).await?;
                *checkpoint_recorded = true;
                self.flush_progress_inner().await?;
            }
        }
        Ok(())
    }

    /// Writes the latest progress to the job row, if any is pending.
    async fn flush_progress(&mut self) {
        match self.flush_progress_inner().await {
            Ok(()) | Err(StorageError::NotCurrent { .. }) => {}
            Err(e) => tracing::error!("recording progress: {e}"),
        }
    }

    async fn flush_progress_inner(&mut self) -> crate::storage::Result<()> {
        if let Some(p) = self.pending.take() {
            self.deps.db.update_progress(self.fence(), &p).await?;
            self.last_write = Some(Instant::now());
        }
        Ok(())
    }
}

/// Removes an object a superseded attempt wrote (in the background; a failure is logged, and
/// the job's prefix is removed when the job ends anyway).
pub fn remove_object(store: &Arc<dyn FileStore>, key: String) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let removed = Key::parse(key.as_str())
            .map_err(|e| e.to_string())
            .and_then(|k| store.delete(&k).map_err(|e| e.to_string()));
        match removed {
            Ok(()) => tracing::info!(key, "removed an object of a superseded attempt"),
            Err(e) => tracing::warn!(key, "removing an object of a superseded attempt: {e}"),
        }
    });
}
