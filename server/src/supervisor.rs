//! One attempt of one job: spawns the worker process, records what it reports, and says how
//! it ended. Decisions (retry, fail, resume) are the scheduler's.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prune_engine::{Event, JobOutcome, StopReason};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::DataDir;
use crate::live::{self, Live};
use crate::protocol::{Command, WorkerMessage, WorkerRequest};
use crate::storage::{CheckpointRecord, Db, ProgressUpdate};
use crate::worker::SERVER_PID_ENV;

/// How often running progress is written to the job row (it is in memory in between).
const PROGRESS_TO_DB_EVERY: Duration = Duration::from_secs(2);

/// How an attempt ended, as seen from outside the worker.
#[derive(Debug)]
pub enum AttemptEnd {
    Finished(JobOutcome),
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

enum Control {
    Send(Command),
    Kill,
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

    /// SIGKILL: immediate, whatever the engine is doing.
    pub fn kill(&self) {
        let _ = self.control.send(Control::Kill);
    }
}

/// What an attempt needs from the server.
#[derive(Debug, Clone)]
pub struct Deps {
    pub db: Db,
    pub live: Live,
    pub data_dir: DataDir,
    /// This very binary: workers are `prune-server worker`.
    pub worker_exe: Arc<Path>,
}

/// Starts the worker for `request` (attempt number `attempt`); `on_end` is called once, after
/// the process has exited and everything it reported is recorded.
pub fn spawn(
    deps: &Deps,
    attempt: u32,
    request: WorkerRequest,
    on_end: impl FnOnce(AttemptEnd) + Send + 'static,
) -> std::io::Result<AttemptHandle> {
    let threads = request.inputs.threads.to_string();
    // Spawned from a runtime worker thread, which lives as long as the server: the worker's
    // PR_SET_PDEATHSIG fires when the spawning *thread* exits, not only the process.
    let mut child = Process::new(&*deps.worker_exe)
        .arg("worker")
        .env(SERVER_PID_ENV, std::process::id().to_string())
        // libtorch's OpenMP/MKL pools, beyond the intra-op threads the engine sets.
        .env("OMP_NUM_THREADS", &threads)
        .env("MKL_NUM_THREADS", &threads)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C at the server's terminal must not kill workers
        // before the server has asked them for a checkpoint.
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let span = tracing::info_span!("job", id = %request.job_id, attempt, pid);
    // stdout stays in `child`: `Run::drive` reads it.
    let (stdin, stderr) = (child.stdin.take().expect("piped"), child.stderr.take().expect("piped"));
    let last_log = Arc::new(Mutex::new(String::new()));
    let logger = tokio::spawn(forward_log(stderr, last_log.clone()).instrument(span.clone()));
    let (control, control_rx) = mpsc::unbounded_channel();
    let run = Run { recorder: Recorder::new(deps.clone(), request.job_id.clone()), child, stdin, control: control_rx };
    tokio::spawn(
        async move {
            tracing::info!("worker started");
            let end = run.drive(request, logger, last_log).await;
            tracing::info!(end = %end.summary(), "worker ended");
            on_end(end);
        }
        .instrument(span),
    );
    Ok(AttemptHandle { pid, control })
}

struct Run {
    recorder: Recorder,
    child: Child,
    /// Held open for the worker's whole life: EOF tells it the server is gone.
    stdin: ChildStdin,
    control: mpsc::UnboundedReceiver<Control>,
}

impl Run {
    async fn drive(
        mut self,
        request: WorkerRequest,
        logger: tokio::task::JoinHandle<()>,
        last_log: Arc<Mutex<String>>,
    ) -> AttemptEnd {
        let stdout = self.child.stdout.take();
        let mut line = serde_json::to_string(&request).expect("requests serialise");
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            tracing::warn!("could not send the request: {e}");
        }
        let terminal = match stdout {
            Some(stdout) => self.read_messages(stdout).await,
            None => None,
        };
        let status = self.wait().await;
        self.recorder.flush_progress().await;
        // The log pipe closes with the process; its last line may explain a crash.
        let _ = logger.await;
        match terminal {
            Some(WorkerMessage::Finished(outcome)) => AttemptEnd::Finished(outcome),
            Some(WorkerMessage::Failed { error }) => AttemptEnd::Failed(error),
            Some(WorkerMessage::Stopped { reason, .. }) => AttemptEnd::Stopped(reason),
            Some(WorkerMessage::Event(_)) | None => {
                AttemptEnd::Crashed(crash_reason(status, &last_log.lock().expect("log lock")))
            }
        }
    }

    /// Records events until stdout closes; returns the terminal message, if one came.
    async fn read_messages(&mut self, stdout: ChildStdout) -> Option<WorkerMessage> {
        let mut lines = BufReader::new(stdout).lines();
        let mut terminal = None;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match serde_json::from_str::<WorkerMessage>(&line) {
                        Ok(WorkerMessage::Event(event)) => self.recorder.record(event).await,
                        Ok(message) => terminal = Some(message),
                        Err(e) => tracing::warn!("unreadable line from the worker ({e}): {line}"),
                    },
                    Ok(None) => return terminal,
                    Err(e) => {
                        tracing::warn!("reading the worker's output: {e}");
                        return terminal;
                    }
                },
                Some(control) = self.control.recv() => self.apply(control).await,
            }
        }
    }

    async fn wait(&mut self) -> Option<ExitStatus> {
        loop {
            tokio::select! {
                status = self.child.wait() => return status.map_err(|e| tracing::error!("waiting for the worker: {e}")).ok(),
                Some(control) = self.control.recv() => self.apply(control).await,
            }
        }
    }

    async fn apply(&mut self, control: Control) {
        match control {
            Control::Send(command) => {
                // Fails only if the worker is already exiting, which is what was wanted.
                let _ = self.stdin.write_all(command.line().as_bytes()).await;
                let _ = self.stdin.flush().await;
            }
            Control::Kill => {
                let _ = self.child.start_kill();
            }
        }
    }
}

/// The worker's stderr, line by line, into the server's log under the job's span.
async fn forward_log(stderr: tokio::process::ChildStderr, last: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        tracing::info!(target: "worker", "{line}");
        *last.lock().expect("log lock") = line;
    }
}

fn crash_reason(status: Option<ExitStatus>, last_log: &str) -> String {
    let how = match status {
        Some(s) => match (s.signal(), s.code()) {
            (Some(sig), _) => format!("worker killed by signal {sig}{}", signal_name(sig)),
            (None, Some(code)) => format!("worker exited with status {code} without reporting a result"),
            (None, None) => "worker ended without reporting a result".to_string(),
        },
        None => "worker ended without reporting a result".to_string(),
    };
    if last_log.is_empty() {
        how
    } else {
        format!("{how}; last log line: {}", last_log.trim())
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL: killed, e.g. out of memory)",
        libc::SIGSEGV => " (SIGSEGV: segmentation fault)",
        libc::SIGABRT => " (SIGABRT: aborted)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGFPE => " (SIGFPE)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

/// Turns engine events into database rows and live progress.
struct Recorder {
    deps: Deps,
    job_id: String,
    /// Progress not yet written to the job row.
    pending: Option<ProgressUpdate>,
    last_write: Option<Instant>,
}

impl Recorder {
    fn new(deps: Deps, job_id: String) -> Self {
        Recorder { deps, job_id, pending: None, last_write: None }
    }

    async fn record(&mut self, event: Event) {
        if let Err(e) = self.try_record(event).await {
            // Losing a metrics batch is bad but not worth killing a healthy job over.
            tracing::error!("recording a worker event: {e}");
        }
    }

    async fn try_record(&mut self, event: Event) -> crate::storage::Result<()> {
        let db = &self.deps.db;
        match event {
            Event::Started { total_steps, start_step, .. } => {
                tracing::info!(total_steps, start_step, "job started");
                db.set_total_steps(&self.job_id, total_steps).await?;
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
            Event::Metrics { points } => db.insert_metrics(&self.job_id, &points).await?,
            Event::Checkpoint { path, step, epoch, sha256, bytes } => {
                let path = self.deps.data_dir.relative(&path);
                tracing::info!(step, %path, "checkpoint written");
                db.insert_checkpoint(&self.job_id, &CheckpointRecord { step, epoch, path, sha256, bytes }).await?;
                self.flush_progress_inner().await?;
            }
        }
        Ok(())
    }

    /// Writes the latest progress to the job row, if any is pending.
    async fn flush_progress(&mut self) {
        if let Err(e) = self.flush_progress_inner().await {
            tracing::error!("recording progress: {e}");
        }
    }

    async fn flush_progress_inner(&mut self) -> crate::storage::Result<()> {
        if let Some(p) = self.pending.take() {
            self.deps.db.update_progress(&self.job_id, &p).await?;
            self.last_write = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_reasons_say_what_happened() {
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(
            crash_reason(Some(killed), "loading"),
            "worker killed by signal 9 (SIGKILL: killed, e.g. out of memory); last log line: loading"
        );
        let exited = ExitStatus::from_raw(1 << 8);
        assert_eq!(crash_reason(Some(exited), ""), "worker exited with status 1 without reporting a result");
    }
}
