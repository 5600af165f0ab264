//! A launcher for tests: no process is started; the test plays the worker, so the scheduler's
//! branches (success, failure, crash and retry, cancel, shutdown) run without killing anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prune_core::worker_protocol::{WorkerMessage, WorkerRequest};
use tokio::sync::{mpsc, oneshot};

use super::{Control, Launcher, Worker};

/// Hands each launched worker to the test through the receiver [`ScriptedLauncher::new`] returns.
#[derive(Debug, Clone)]
pub struct ScriptedLauncher {
    launched: mpsc::UnboundedSender<ScriptedWorker>,
    /// The next launch fails as a missing binary would.
    fail_next: Arc<AtomicBool>,
}

impl ScriptedLauncher {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ScriptedWorker>) {
        let (launched, rx) = mpsc::unbounded_channel();
        (ScriptedLauncher { launched, fail_next: Arc::default() }, rx)
    }

    pub fn fail_next_launch(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }
}

impl Launcher for ScriptedLauncher {
    fn launch(&self, request: &WorkerRequest, attempt: u32) -> std::io::Result<Worker> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "scripted launch failure"));
        }
        let (control, control_rx) = mpsc::unbounded_channel();
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (exited_tx, exited) = oneshot::channel();
        let (logs_tx, logs) = mpsc::unbounded_channel();
        let worker = ScriptedWorker {
            request: request.clone(),
            attempt,
            messages: messages_tx,
            control: control_rx,
            exited: exited_tx,
            logs: logs_tx,
        };
        self.launched.send(worker).map_err(|_| std::io::Error::other("the test stopped listening"))?;
        Ok(Worker { pid: Some(4242), control, messages, exited, logs })
    }

    fn describe(&self) -> String {
        "scripted worker".to_string()
    }
}

/// The test's side of one launched worker.
#[derive(Debug)]
pub struct ScriptedWorker {
    pub request: WorkerRequest,
    pub attempt: u32,
    messages: mpsc::UnboundedSender<WorkerMessage>,
    control: mpsc::UnboundedReceiver<Control>,
    exited: oneshot::Sender<String>,
    logs: mpsc::UnboundedSender<String>,
}

impl ScriptedWorker {
    /// A line on the worker's stderr.
    pub fn log(&self, line: &str) {
        self.logs.send(line.to_string()).expect("the attempt is followed");
    }

    pub fn report(&self, message: WorkerMessage) {
        self.messages.send(message).expect("the attempt is followed");
    }

    /// The next thing the scheduler asks of this worker.
    pub async fn next_control(&mut self) -> Control {
        self.control.recv().await.expect("the scheduler holds the control channel")
    }

    /// The worker is gone; `crash` explains it if no terminal message was reported.
    pub fn exit(self, crash: &str) {
        drop(self.messages);
        drop(self.logs);
        let _ = self.exited.send(crash.to_string());
    }
}
