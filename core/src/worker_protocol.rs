//! The line protocol between the server's launcher and a `prune-worker` process.
//!
//! stdin (launcher -> worker): the first line is a [`WorkerRequest`] as JSON; every later line
//! is a [`Command`]. The launcher keeps stdin open for the worker's whole life, so EOF means the
//! server is gone.
//!
//! stdout (worker -> launcher): one [`WorkerMessage`] as JSON per line, flushed per line; the
//! last is a terminal one (`finished`, `failed` or `stopped`). A worker that exits without a
//! terminal line crashed.
//!
//! The request names files only by blob id (in the spec) and by file-store key, never by local
//! path: the worker opens the store it is given on its command line (`--store URL`), so it can
//! run on any machine that reaches that store.

use serde::{Deserialize, Serialize};

use crate::domain::{Event, JobOutcome, StopReason};
use crate::JobSpec;

/// The command-line flag that names the worker's file store.
pub const STORE_FLAG: &str = "--store";
/// The command-line flag that names the worker's local scratch directory.
pub const SCRATCH_FLAG: &str = "--scratch";
/// Environment variable through which the server passes its pid: the worker dies with it.
pub const SERVER_PID_ENV: &str = "PRUNE_SERVER_PID";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRequest {
    pub job_id: String,
    /// Accepted and validated; `model.blob`, `model.weights` and `data.blob` are blob ids.
    pub spec: JobSpec,
    pub inputs: WorkerInputs,
}

/// Where an attempt reads and writes, as file-store keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInputs {
    /// Key prefix of this job's checkpoints (`checkpoints/<job>/`).
    pub checkpoint_prefix: String,
    /// Key prefix of this job's artifacts (`artifacts/<job>/`).
    pub artifact_prefix: String,
    /// Resume from this checkpoint key instead of starting fresh.
    pub resume_from: Option<String>,
    /// libtorch intra-op threads (results depend on it: a resumed job must use the same).
    pub threads: usize,
    /// The model's zeros are its masks (a tracked run's final weights, pruned in the client's
    /// loop): the export takes the selected tensors as they are instead of masking them again.
    #[serde(default)]
    pub masks_applied: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage {
    Event(Event),
    Finished(Box<JobOutcome>),
    /// The engine returned an error: deterministic, so not worth a retry.
    Failed {
        error: String,
    },
    /// The engine stopped on request (a checkpoint was written first for `Checkpoint`).
    Stopped {
        step: i64,
        reason: StopReason,
    },
}

impl WorkerMessage {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, WorkerMessage::Event(_))
    }
}

/// What the launcher asks of a running worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Write a checkpoint, then stop (server shutdown).
    Checkpoint,
    /// Stop as soon as possible.
    Cancel,
}

impl Command {
    pub fn line(self) -> &'static str {
        match self {
            Command::Checkpoint => "checkpoint\n",
            Command::Cancel => "cancel\n",
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "checkpoint" => Some(Command::Checkpoint),
            "cancel" => Some(Command::Cancel),
            _ => None,
        }
    }

    pub fn stop_reason(self) -> StopReason {
        match self {
            Command::Checkpoint => StopReason::Checkpoint,
            Command::Cancel => StopReason::Cancel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for c in [Command::Checkpoint, Command::Cancel] {
            assert_eq!(Command::parse(c.line()), Some(c));
        }
        assert_eq!(Command::parse("bogus"), None);
    }

    #[test]
    fn messages_are_single_json_lines() {
        let m = WorkerMessage::Event(Event::Checkpoint {
            key: "checkpoints/j/c".into(),
            step: 3,
            epoch: 1,
            sha256: "ab".into(),
            bytes: 9,
        });
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'));
        assert!(!serde_json::from_str::<WorkerMessage>(&line).unwrap().is_terminal());
        let stopped =
            serde_json::to_string(&WorkerMessage::Stopped { step: 3, reason: StopReason::Checkpoint }).unwrap();
        assert!(serde_json::from_str::<WorkerMessage>(&stopped).unwrap().is_terminal());
    }
}
