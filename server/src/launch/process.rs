//! The local launcher: each attempt is a `prune-worker` process of this machine, talking JSON
//! lines over its stdin/stdout (`prune_core::worker_protocol`), its stderr forwarded to the log.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use prune_core::worker_protocol::{WorkerMessage, WorkerRequest, SCRATCH_FLAG, SERVER_PID_ENV, STORE_FLAG};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as Process};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{Control, Launcher, Worker};

#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    /// The `prune-worker` binary.
    pub worker_bin: PathBuf,
    /// The file store's URL, passed to every worker.
    pub store_url: String,
    /// This node's scratch directory (downloads from a remote store).
    pub scratch: PathBuf,
}

impl ProcessLauncher {
    /// `prune-worker` next to the running binary.
    pub fn default_worker_bin() -> std::io::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        Ok(exe.with_file_name("prune-worker"))
    }
}

impl Launcher for ProcessLauncher {
    fn describe(&self) -> String {
        self.worker_bin.display().to_string()
    }

    fn launch(&self, request: &WorkerRequest, attempt: u32) -> std::io::Result<Worker> {
        let threads = request.inputs.threads.to_string();
        // Spawned from a runtime worker thread, which lives as long as the server: the worker's
        // PR_SET_PDEATHSIG fires when the spawning *thread* exits, not only the process.
        let mut child = Process::new(&self.worker_bin)
            .arg(STORE_FLAG)
            .arg(&self.store_url)
            .arg(SCRATCH_FLAG)
            .arg(&self.scratch)
            .env(SERVER_PID_ENV, std::process::id().to_string())
            // libtorch's OpenMP/MKL pools, beyond the intra-op threads the engine sets.
            .env("OMP_NUM_THREADS", &threads)
            .env("MKL_NUM_THREADS", &threads)
            // Deterministic cuBLAS (read when a GPU job creates its handle; ignored on the CPU):
            // a resumed attempt on a GPU must compute what the first one did.
            .env("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let mut line = serde_json::to_string(request).expect("requests serialise");
        line.push('\n');
        let last_log = Arc::new(Mutex::new(String::new()));
        let (logs_tx, logs) = mpsc::unbounded_channel();
        let logger = tokio::spawn(forward_log(stderr, last_log.clone(), logs_tx).instrument(span.clone()));
        let (control, control_rx) = mpsc::unbounded_channel();
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (exited_tx, exited) = oneshot::channel();
        let process = WorkerProcess { child, stdin, control: control_rx };
        // Where the worker stages its outputs before putting them in a remote store (a local
        // store is written in place, and these do not exist): gone with the attempt.
        let staging: Vec<PathBuf> = [&request.inputs.checkpoint_prefix, &request.inputs.artifact_prefix]
            .into_iter()
            .filter(|prefix| !prefix.is_empty() && !prefix.split('/').any(|part| part == ".."))
            .map(|prefix| self.scratch.join(prefix.trim_end_matches('/')))
            .collect();
        tokio::spawn(
            async move {
                let status = process.run(line, stdout, messages_tx).await;
                for dir in staging {
                    match tokio::fs::remove_dir_all(&dir).await {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            tracing::warn!("removing the worker's staging dir {}: {e}", dir.display())
                        }
                        _ => {}
                    }
                }
                // The log pipe closes with the process; its last line may explain a crash.
                let _ = logger.await;
                let _ = exited_tx.send(crash_reason(status, &last_log.lock().expect("log lock")));
            }
            .instrument(span),
        );
        Ok(Worker { pid, control, messages, exited, logs })
    }
}

struct WorkerProcess {
    child: Child,
    /// Held open for the worker's whole life: EOF tells it the server is gone.
    stdin: ChildStdin,
    control: mpsc::UnboundedReceiver<Control>,
}

impl WorkerProcess {
    /// Sends the request, forwards messages until stdout closes, waits for the exit.
    async fn run(
        mut self,
        request: String,
        stdout: tokio::process::ChildStdout,
        messages: mpsc::UnboundedSender<WorkerMessage>,
    ) -> Option<ExitStatus> {
        if let Err(e) = self.stdin.write_all(request.as_bytes()).await {
            tracing::warn!("could not send the request: {e}");
        }
        let mut lines = BufReader::new(stdout).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match serde_json::from_str::<WorkerMessage>(&line) {
                        Ok(message) => { let _ = messages.send(message); }
                        Err(e) => tracing::warn!("unreadable line from the worker ({e}): {line}"),
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("reading the worker's output: {e}");
                        break;
                    }
                },
                Some(control) = self.control.recv() => self.apply(control).await,
            }
        }
        drop(messages);
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
async fn forward_log(
    stderr: tokio::process::ChildStderr,
    last: Arc<Mutex<String>>,
    logs: mpsc::UnboundedSender<String>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        tracing::info!(target: "worker", "{line}");
        let _ = logs.send(line.clone());
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

    #[tokio::test]
    async fn a_missing_binary_is_an_error_at_launch() {
        let launcher = ProcessLauncher {
            worker_bin: "/nonexistent/prune-worker".into(),
            store_url: "file:///tmp".into(),
            scratch: "/tmp".into(),
        };
        let request = WorkerRequest {
            job_id: "job-1".into(),
            spec: prune_core::JobSpec::default(),
            inputs: prune_core::worker_protocol::WorkerInputs {
                checkpoint_prefix: "checkpoints/job-1/".into(),
                artifact_prefix: "artifacts/job-1/".into(),
                resume_from: None,
                threads: 1,
                masks_applied: false,
            },
        };
        assert!(launcher.launch(&request, 1).is_err());
    }
}
