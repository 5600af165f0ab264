//! Starting workers. The scheduler asks a [`Launcher`] for one worker per attempt and talks to
//! it only through the [`Worker`]'s channels, so where and how the worker runs (a local process
//! today, a remote one later) is this module's business alone. The request names files by blob
//! id and store key (`prune_core::worker_protocol`), never by local path.

pub mod process;
#[cfg(test)]
pub mod scripted;

use prune_core::worker_protocol::{Command, WorkerMessage, WorkerRequest};
use tokio::sync::{mpsc, oneshot};

/// What the scheduler can ask of a running worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A protocol command (checkpoint and stop, cancel).
    Send(Command),
    /// Stop it at once, whatever it is doing (SIGKILL for a process).
    Kill,
}

/// A started worker.
#[derive(Debug)]
pub struct Worker {
    /// The process id, where the worker is a local process (shown on GetJob).
    pub pid: Option<u32>,
    pub control: mpsc::UnboundedSender<Control>,
    /// What the worker reported, in order; closes when its output ends.
    pub messages: mpsc::UnboundedReceiver<WorkerMessage>,
    /// Once the worker is gone: why it died, used when it sent no terminal message.
    pub exited: oneshot::Receiver<String>,
    /// The worker's log lines (its stderr), in order; closes when its log ends.
    pub logs: mpsc::UnboundedReceiver<String>,
}

/// Starts workers.
pub trait Launcher: Send + Sync + std::fmt::Debug + 'static {
    /// Starts a worker for one attempt of `request.job_id`.
    fn launch(&self, request: &WorkerRequest, attempt: u32) -> std::io::Result<Worker>;

    /// What is launched, for error messages (`/usr/bin/prune-worker`).
    fn describe(&self) -> String;
}
