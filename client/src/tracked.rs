//! Tracked runs: a training loop outside the service (the `prune` Python package) prunes in its
//! own process and reports to a job of kind TRACKED (docs/python.md, "Tracked runs").
//!
//! [`Client::start_tracked_run`] opens the run (or re-attaches to it), [`Reporter`] sends its
//! step, metric points and per-tensor sparsity from a background task, and
//! [`Client::finish_tracked_run`] / [`Client::fail_tracked_run`] end it. The reporter is built for
//! a training loop that must never wait on the network: its methods only queue, and a server
//! that is down costs the loop nothing but the reports it drops (counted in [`ReporterStatus`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prune_core::JobSpec;
use prune_proto as pb;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::new_request_id;
use crate::error::{ClientError, Result};
use crate::retry::Backoff;
use crate::types::{JobInfo, JobState, MetricRecord, TensorSparsity};
use crate::Client;

/// The most points one ReportTrackedRun may carry (the server refuses more).
pub const MAX_POINTS_PER_REPORT: usize = 10_000;
/// The longest metric name the server takes.
pub const MAX_METRIC_NAME_CHARS: usize = 200;
/// Tries of a start, finish or fail the server answered UNAVAILABLE (as for a submit).
const MAX_CALL_RETRIES: u32 = 10;

/// What comes with a tracked run besides its spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackedRunOptions {
    pub labels: BTreeMap<String, String>,
    /// What a restarted loop re-attaches with; `None`: a fresh one (the run cannot be re-attached).
    pub request_id: Option<String>,
    /// The loop's total steps when known.
    pub total_steps: Option<i64>,
    /// Who reports; `None`: `host:pid` of this process.
    pub client: Option<String>,
}

/// A started (or re-attached) run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackedRun {
    pub job: JobInfo,
    /// The reporting session: every report, the finish and the fail name it.
    pub session: u32,
    /// The run had been started before with this request id; `job.step` is the last step the
    /// service recorded.
    pub reattached: bool,
}

/// One ReportTrackedRun.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    pub step: i64,
    pub total_steps: Option<i64>,
    pub epoch: Option<i64>,
    pub points: Vec<MetricRecord>,
    pub sparsity: Vec<TensorSparsity>,
}

/// `host:pid` of this process: who reports, as people reading the job see it.
pub fn this_process() -> String {
    format!("{}:{}", gethostname::gethostname().to_string_lossy(), std::process::id())
}

/// Why a metric name cannot be reported, if it cannot: 1 to 200 printable characters.
pub fn check_metric_name(name: &str) -> std::result::Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_METRIC_NAME_CHARS {
        return Err(format!("metric name {name:?}: it must have 1 to {MAX_METRIC_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("metric name {name:?}: control characters are not printable"));
    }
    Ok(())
}

impl Client {
    /// Starts a tracked run from a spec document (TOML, or JSON when it starts with `{`) with
    /// only `name`, `pruning` and `export`; with the `request_id` of an earlier start of the
    /// same run it re-attaches. Spec errors come back as INVALID_ARGUMENT with one field
    /// violation each ([`crate::error::field_violations`]).
    pub async fn start_tracked_run(&self, spec: &str, options: &TrackedRunOptions) -> Result<TrackedRun> {
        let request = pb::StartTrackedRunRequest {
            source: Some(pb::start_tracked_run_request::Source::SpecToml(spec.to_string())),
            // Fixed before the first try, so that a retry re-attaches instead of starting twice.
            request_id: options.request_id.clone().unwrap_or_else(new_request_id),
            labels: options.labels.clone().into_iter().collect(),
            total_steps: options.total_steps.unwrap_or(0),
            client: options.client.clone().unwrap_or_else(this_process),
        };
        let reply = self
            .retrying(|| async {
                Ok::<_, ClientError>(self.rpc().start_tracked_run(self.deadline(request.clone())).await?.into_inner())
            })
            .await?;
        let job = reply.job.ok_or_else(|| ClientError::Protocol("StartTrackedRun returned no job".into()))?;
        Ok(TrackedRun { job: job.try_into()?, session: reply.session, reattached: reply.reattached })
    }

    /// [`Client::start_tracked_run`] with a typed spec (sent as JSON, as [`Client::submit`] does).
    pub async fn start_tracked_run_spec(&self, spec: &JobSpec, options: &TrackedRunOptions) -> Result<TrackedRun> {
        let json = serde_json::to_string(spec).expect("a JobSpec always serialises");
        self.start_tracked_run(&json, options).await
    }

    /// One report, sent once (the [`Reporter`] retries). Returns the run's state.
    pub async fn report_tracked_run(&self, job_id: &str, session: u32, report: &RunReport) -> Result<JobState> {
        self.send_report(job_id, session, report, self.timeout).await
    }

    async fn send_report(&self, job_id: &str, session: u32, report: &RunReport, timeout: Duration) -> Result<JobState> {
        let mut request = tonic::Request::new(report_request(job_id, session, report));
        request.set_timeout(timeout);
        let reply = self.rpc().report_tracked_run(request).await?.into_inner();
        prune_proto::conversions::job_state(reply.state)
            .map_err(|e| ClientError::Protocol(format!("ReportTrackedRun of {job_id}: {e}")))
    }

    /// The loop is done: `model_blob` (`sha256:...`, an uploaded safetensors state dict with
    /// the masks applied) is exported as the service's own jobs are. Returns the job, QUEUED
    /// for that export.
    pub async fn finish_tracked_run(&self, job_id: &str, session: u32, model_blob: &str) -> Result<JobInfo> {
        let request = pb::FinishTrackedRunRequest { job_id: job_id.into(), session, model_blob: model_blob.into() };
        let first = self
            .retrying(|| async {
                Ok::<_, ClientError>(self.rpc().finish_tracked_run(self.deadline(request.clone())).await?.into_inner())
            })
            .await;
        match first {
            Ok(job) => job.try_into(),
            // A retry after a finish whose reply was lost finds the run finished: that finish
            // was this one when the job is exporting or exported, and not failed.
            Err(e) if e.reason().as_deref() == Some("RUN_FINISHED") => {
                let job = self.get_job(job_id).await?;
                match job.state {
                    JobState::Failed | JobState::Cancelled => Err(e),
                    _ => Ok(job),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The loop failed: the job becomes FAILED with `reason` (one line).
    pub async fn fail_tracked_run(&self, job_id: &str, session: u32, reason: &str) -> Result<JobInfo> {
        let request = pb::FailTrackedRunRequest { job_id: job_id.into(), session, reason: reason.into() };
        self.retrying(|| async {
            Ok::<_, ClientError>(self.rpc().fail_tracked_run(self.deadline(request.clone())).await?.into_inner())
        })
        .await?
        .try_into()
    }

    /// How long the server lets a tracked run go without a report before failing it
    /// (`--tracked-timeout-secs`); `None` when it does not say.
    pub async fn tracked_timeout(&self) -> Result<Option<Duration>> {
        let info = self.server_info().await?;
        Ok(info.limits.map(|l| l.tracked_timeout_secs).filter(|&s| s > 0).map(|s| Duration::from_secs(s.into())))
    }

    /// A [`Reporter`] for `run`, its task on the current Tokio runtime.
    pub fn reporter(&self, run: &TrackedRun, config: ReporterConfig) -> Reporter {
        Reporter::spawn(self.clone(), run.job.id.clone(), run.session, run.job.step, config)
    }

    /// `call` until it succeeds, retried with backoff while the server is UNAVAILABLE or the
    /// connection broke.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = Backoff::new();
        loop {
            match call().await {
                Err(e) if e.is_transient() && backoff.attempt() < MAX_CALL_RETRIES => {
                    // Counted whether or not the server says how long to wait.
                    let ours = backoff.next_delay();
                    let Some(delay) = e.retry_delay().or(ours) else { return Err(e) };
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }
}

fn report_request(job_id: &str, session: u32, report: &RunReport) -> pb::ReportTrackedRunRequest {
    pb::ReportTrackedRunRequest {
        job_id: job_id.to_string(),
        session,
        step: report.step,
        total_steps: report.total_steps,
        epoch: report.epoch,
        points: report
            .points
            .iter()
            .map(|p| pb::MetricPoint { step: p.step, name: p.name.clone(), value: p.value })
            .collect(),
        sparsity: report
            .sparsity
            .iter()
            .map(|t| pb::TensorSparsity { name: t.name.clone(), sparsity: t.sparsity })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The reporter

/// How a [`Reporter`] paces and retries its reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ReporterConfig {
    /// Least time between two reports: what comes in meanwhile goes in one report.
    pub interval: Duration,
    /// A report with nothing new goes out after this long, so that the server does not take
    /// the loop for gone (a third of its `--tracked-timeout-secs`, see [`ReporterConfig::for_timeout`]).
    pub heartbeat: Duration,
    /// Deadline of each report.
    pub call_timeout: Duration,
    /// Failed tries in a row (backing off as `retry.rs` does) after which the points waiting
    /// are dropped.
    pub drop_after: u32,
    /// Updates waiting for the task; more are dropped (counted), never waited for.
    pub capacity: usize,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            interval: Duration::from_millis(500),
            heartbeat: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            // 0.25 + 0.5 + 1 s of backoff plus the tries: a few seconds of an unreachable server.
            drop_after: 4,
            capacity: 4096,
        }
    }
}

impl ReporterConfig {
    /// The defaults, with a heartbeat of a third of the server's tracked timeout (at most 30 s)
    /// and calls that time out before the run would.
    pub fn for_timeout(timeout: Option<Duration>) -> Self {
        let mut config = ReporterConfig::default();
        if let Some(timeout) = timeout {
            config.heartbeat = (timeout / 3).clamp(Duration::from_millis(100), config.heartbeat);
            config.call_timeout = config.call_timeout.min(config.heartbeat.max(Duration::from_secs(1)));
            config.interval = config.interval.min(config.heartbeat);
        }
        config
    }
}

/// Why a reporter stopped reporting for good.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stopped {
    /// The server's reason: `RUN_SUPERSEDED` (a newer session re-attached), `RUN_ENDED`
    /// (cancelled, failed or finished) or `JOB_NOT_FOUND` (deleted).
    pub reason: String,
    /// The run's state where the server said it (RUN_ENDED).
    pub state: Option<JobState>,
    /// The server's message.
    pub message: String,
}

/// What a [`Reporter`] has done so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReporterStatus {
    /// Reports the server took.
    pub reports: u64,
    /// Points (and updates) dropped: after repeated failures, refused by the server, or with no
    /// room in the queue.
    pub dropped: u64,
    /// Why the latest report failed, while it keeps failing or after points were dropped.
    pub last_error: Option<String>,
    /// Set once the server refuses the session's reports for good.
    pub stopped: Option<Stopped>,
    /// The last step the server took.
    pub reported_step: i64,
}

impl ReporterStatus {
    /// Whether the run was cancelled on the server (`prunectl cancel`, the dashboard).
    pub fn cancelled(&self) -> bool {
        self.stopped.as_ref().is_some_and(|s| s.state == Some(JobState::Cancelled))
    }
}

enum Update {
    Points(Vec<MetricRecord>),
    Sparsity {
        step: i64,
        tensors: Vec<TensorSparsity>,
    },
    Epoch(i64),
    TotalSteps(i64),
    /// The step changed (its value is in `Shared::step`).
    Wake,
    Flush(oneshot::Sender<bool>),
}

/// What the loop's side and the task share.
struct Shared {
    step: AtomicI64,
    /// A `Wake` is queued: later step changes need no other.
    woken: AtomicBool,
    status: Mutex<ReporterStatus>,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, ReporterStatus> {
        // A panic elsewhere cannot leave the counters inconsistent: keep using them.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends a tracked run's reports from a background task. Every method returns at once and
/// never fails: updates are queued (a full queue drops them, counted), coalesced (the latest
/// step, one point per name and step) and sent at most every `interval`, with a heartbeat when
/// nothing changes. Failed reports are retried with backoff; after `drop_after` failures in a
/// row the points waiting are dropped and [`ReporterStatus::dropped`] says how many. A session
/// the server no longer takes (superseded, ended, cancelled) stops the reporter
/// ([`ReporterStatus::stopped`]). Dropping the reporter stops its task.
pub struct Reporter {
    tx: mpsc::Sender<Update>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("status", &*self.shared.status()).finish_non_exhaustive()
    }
}

impl Reporter {
    fn spawn(client: Client, job_id: String, session: u32, step: i64, config: ReporterConfig) -> Reporter {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let shared = Arc::new(Shared {
            step: AtomicI64::new(step),
            woken: AtomicBool::new(false),
            status: Mutex::new(ReporterStatus { reported_step: step, ..ReporterStatus::default() }),
        });
        let task = Task {
            client,
            job_id,
            session,
            config,
            shared: shared.clone(),
            pending: Pending::default(),
            sent_step: step,
            failures: 0,
            backoff: Backoff::new(),
            retry_delay: Duration::ZERO,
            last_try: Instant::now(),
            waiters: Vec::new(),
        };
        Reporter { tx, shared, task: tokio::spawn(task.run(rx)) }
    }

    /// The loop's step (coalesced: only the latest is sent).
    pub fn step(&self, step: i64) {
        self.shared.step.store(step, Ordering::Relaxed);
        if !self.shared.woken.swap(true, Ordering::AcqRel) && self.tx.try_send(Update::Wake).is_err() {
            // The task is gone or busy: the next update or heartbeat carries the step.
            self.shared.woken.store(false, Ordering::Release);
        }
    }

    pub fn epoch(&self, epoch: i64) {
        self.queue(Update::Epoch(epoch), 0);
    }

    pub fn total_steps(&self, total_steps: i64) {
        self.queue(Update::TotalSteps(total_steps), 0);
    }

    /// Scalars at `step` (`loss`, `accuracy`, ...). A point at a step already reported replaces it.
    pub fn log(&self, step: i64, values: impl IntoIterator<Item = (String, f64)>) {
        let points: Vec<MetricRecord> =
            values.into_iter().map(|(name, value)| MetricRecord { step, name, value }).collect();
        let n = points.len() as u64;
        if n > 0 {
            self.queue(Update::Points(points), n);
        }
    }

    /// A mask update at `step`: the per-tensor sparsity, reported as the run's latest and as
    /// `sparsity/<name>` points at that step.
    pub fn sparsity(&self, step: i64, tensors: Vec<TensorSparsity>) {
        let n = tensors.len() as u64;
        self.queue(Update::Sparsity { step, tensors }, n);
    }

    fn queue(&self, update: Update, points: u64) {
        // Closed: the reporter stopped (its status says why); nothing to count.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(update) {
            let mut status = self.shared.status();
            status.dropped += points.max(1);
            status.last_error.get_or_insert_with(|| "the report queue is full".into());
        }
    }

    /// Waits until everything queued so far is reported, at most `timeout`. `true` when it all
    /// got through; `false` when something was dropped, the reporter stopped, or time ran out.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let queued = async { self.tx.send(Update::Flush(done)).await.is_ok() && wait.await.unwrap_or(false) };
        tokio::time::timeout(timeout, queued).await.unwrap_or(false)
    }

    pub fn status(&self) -> ReporterStatus {
        self.shared.status().clone()
    }

    /// Flushes (at most `timeout`) and stops the task; returns what it did. Later updates are
    /// ignored.
    pub async fn close(&self, timeout: Duration) -> ReporterStatus {
        self.flush(timeout).await;
        self.task.abort();
        self.status()
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What waits to be reported: the step, epoch and total goes with every report; points
/// (one per name and step: the latest wins) and the latest sparsity are sent once.
#[derive(Debug, Default, Clone, PartialEq)]
struct Pending {
    points: BTreeMap<(String, i64), f64>,
    sparsity: Option<Vec<TensorSparsity>>,
    epoch: Option<i64>,
    total_steps: Option<i64>,
    /// Epoch or total steps changed since the last report.
    changed: bool,
}

impl Pending {
    fn add_points(&mut self, points: impl IntoIterator<Item = MetricRecord>) {
        for p in points {
            self.points.insert((p.name, p.step), p.value);
        }
    }

    fn has_data(&self) -> bool {
        !self.points.is_empty() || self.sparsity.is_some() || self.changed
    }

    /// The next report: the step, and at most [`MAX_POINTS_PER_REPORT`] points (the rest wait).
    fn take(&mut self, step: i64) -> RunReport {
        let mut points = Vec::new();
        while points.len() < MAX_POINTS_PER_REPORT {
            let Some(((name, step), value)) = self.points.pop_first() else { break };
            points.push(MetricRecord { step, name, value });
        }
        self.changed = false;
        RunReport {
            step,
            total_steps: self.total_steps,
            epoch: self.epoch,
            points,
            sparsity: self.sparsity.take().unwrap_or_default(),
        }
    }

    /// A report that failed goes back; what came in meanwhile is newer and wins.
    fn restore(&mut self, report: RunReport) {
        for p in report.points {
            self.points.entry((p.name, p.step)).or_insert(p.value);
        }
        if self.sparsity.is_none() && !report.sparsity.is_empty() {
            self.sparsity = Some(report.sparsity);
        }
        self.changed = true;
    }

    /// Drops the points and sparsity waiting; returns how many there were.
    fn drop_data(&mut self) -> u64 {
        let n = self.points.len() as u64 + self.sparsity.take().map_or(0, |s| s.len() as u64);
        self.points.clear();
        n
    }
}

type InFlight = Pin<Box<dyn Future<Output = (Result<JobState>, RunReport)> + Send>>;

struct Task {
    client: Client,
    job_id: String,
    session: u32,
    config: ReporterConfig,
    shared: Arc<Shared>,
    pending: Pending,
    /// The step of the last report the server took.
    sent_step: i64,
    /// Failed tries in a row.
    failures: u32,
    backoff: Backoff,
    retry_delay: Duration,
    /// When the last report was sent (or tried).
    last_try: Instant,
    /// Flushes waiting for everything before them to be reported.
    waiters: Vec<oneshot::Sender<bool>>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Update>) {
        let mut in_flight: Option<InFlight> = None;
        let mut open = true;
        loop {
            let due = if in_flight.is_none() { self.next_report_at() } else { None };
            tokio::select! {
                update = rx.recv(), if open => match update {
                    Some(update) => self.merge(update),
                    None => open = false,
                },
                (result, report) = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    if !self.settle(result, report) {
                        return;
                    }
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    in_flight = Some(self.send());
                }
            }
            if !open && in_flight.is_none() && !self.has_news() {
                return;
            }
        }
    }

    fn merge(&mut self, update: Update) {
        match update {
            Update::Points(points) => self.pending.add_points(points),
            Update::Sparsity { step, tensors } => {
                self.pending.add_points(tensors.iter().map(|t| MetricRecord {
                    step,
                    name: format!("sparsity/{}", t.name),
                    value: t.sparsity,
                }));
                self.pending.sparsity = Some(tensors);
            }
            Update::Epoch(epoch) => {
                self.pending.changed |= self.pending.epoch != Some(epoch);
                self.pending.epoch = Some(epoch);
            }
            Update::TotalSteps(total) => {
                self.pending.changed |= self.pending.total_steps != Some(total);
                self.pending.total_steps = Some(total);
            }
            Update::Wake => self.shared.woken.store(false, Ordering::Release),
            Update::Flush(done) => {
                if self.has_news() {
                    self.waiters.push(done);
                } else {
                    let _ = done.send(true);
                }
            }
        }
    }

    fn step(&self) -> i64 {
        self.shared.step.load(Ordering::Relaxed)
    }

    /// Something the server has not taken yet.
    fn has_news(&self) -> bool {
        self.pending.has_data() || self.step() != self.sent_step
    }

    /// When the next report goes out: after a failure, when the backoff says; with news, an
    /// `interval` after the last (at once for a flush or a backlog); else at the heartbeat.
    fn next_report_at(&self) -> Option<Instant> {
        if self.failures > 0 {
            return Some(self.last_try + self.retry_delay);
        }
        if self.pending.points.len() >= MAX_POINTS_PER_REPORT || (!self.waiters.is_empty() && self.has_news()) {
            return Some(Instant::now());
        }
        if self.has_news() {
            return Some(self.last_try + self.config.interval);
        }
        Some(self.last_try + self.config.heartbeat)
    }

    fn send(&mut self) -> InFlight {
        self.last_try = Instant::now();
        let report = self.pending.take(self.step());
        let (client, job_id, session, timeout) =
            (self.client.clone(), self.job_id.clone(), self.session, self.config.call_timeout);
        Box::pin(async move {
            let result = client.send_report(&job_id, session, &report, timeout).await;
            (result, report)
        })
    }

    /// Takes a report's outcome; `false` once the reporter must stop.
    fn settle(&mut self, result: Result<JobState>, report: RunReport) -> bool {
        match result {
            Ok(state) if !state.is_terminal() => {
                self.failures = 0;
                self.backoff.reset();
                self.sent_step = report.step;
                let mut status = self.shared.status();
                status.reports += 1;
                status.reported_step = report.step;
                if !self.has_news() {
                    drop(status);
                    self.notify(true);
                }
                true
            }
            Ok(state) => {
                self.stop(Stopped {
                    reason: "RUN_ENDED".into(),
                    state: Some(state),
                    message: format!("the run is {state}"),
                });
                false
            }
            Err(e) => match e.reason().as_deref() {
                Some(reason @ ("RUN_SUPERSEDED" | "RUN_ENDED" | "JOB_NOT_FOUND")) => {
                    let state = e.error_metadata("state").and_then(|s| s.parse().ok());
                    self.stop(Stopped { reason: reason.to_string(), state, message: e.to_string() });
                    false
                }
                _ => {
                    self.failed(e, report);
                    true
                }
            },
        }
    }

    fn failed(&mut self, error: ClientError, report: RunReport) {
        self.failures += 1;
        self.retry_delay = self.backoff.next_delay().unwrap_or(self.retry_delay);
        // A call that timed out may succeed later too; anything else the server chose is final
        // for this report (e.g. a name it refuses), not for the ones after it.
        let retryable = error.is_transient() || error.code() == Some(tonic::Code::DeadlineExceeded);
        let points = report.points.len() as u64 + report.sparsity.len() as u64;
        let mut status = self.shared.status();
        status.last_error = Some(error.to_string());
        if !retryable {
            status.dropped += points;
            drop(status);
            self.pending.changed = true;
            self.notify(false);
            return;
        }
        self.pending.restore(report);
        if self.failures >= self.config.drop_after {
            // Tried long enough: what waits is dropped, and flushes hear that it did not get
            // through; the step keeps going out (a heartbeat) until the server is back.
            status.dropped += self.pending.drop_data();
            drop(status);
            self.notify(false);
        }
    }

    fn stop(&mut self, stopped: Stopped) {
        self.shared.status().stopped = Some(stopped);
        self.notify(false);
    }

    fn notify(&mut self, delivered: bool) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(delivered);
        }
    }
}

#[cfg(test)]
#[path = "tracked_tests.rs"]
mod tests;
