//! The line protocol between the server and a worker process.
//!
//! stdin (server -> worker): the first line is a [`WorkerRequest`] as JSON; every later line is
//! a [`Command`]. The server keeps stdin open for the worker's whole life, so EOF means the
//! server is gone.
//!
//! stdout (worker -> server): one [`WorkerMessage`] as JSON per line, flushed per line; the last
//! is a terminal one (`finished`, `failed` or `stopped`). A worker that exits without a terminal
//! line crashed.

use std::path::PathBuf;

use prune_core::JobSpec;
use prune_engine::{Event, JobInputs, JobOutcome, MetricPoint, StopReason, TensorSparsity};
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRequest {
    pub job_id: String,
    pub spec: JobSpec,
    pub inputs: JobInputs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage {
    Event(#[serde(with = "EventDef")] Event),
    Finished(JobOutcome),
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

/// `prune_engine::Event` on the wire. JSON has no NaN: serde_json writes a non-finite float as
/// `null`, which would not read back as `f64` (a one-shot job's progress has no loss). This
/// mirror reads such a `null` as NaN; serde's remote derive keeps it in step with `Event` (a
/// field added there and not here fails to compile).
#[derive(Serialize, Deserialize)]
#[serde(remote = "Event", tag = "event", rename_all = "snake_case")]
enum EventDef {
    Started {
        total_steps: i64,
        steps_per_epoch: i64,
        epochs: i64,
        start_step: i64,
        pruned: Vec<String>,
    },
    Progress {
        step: i64,
        total_steps: i64,
        epoch: i64,
        #[serde(deserialize_with = "nan_if_null")]
        loss: f64,
        #[serde(deserialize_with = "nan_if_null")]
        accuracy: f64,
        sparsity: Vec<TensorSparsity>,
    },
    /// Metric points must be finite (the worker drops the others).
    Metrics {
        points: Vec<MetricPoint>,
    },
    Checkpoint {
        path: PathBuf,
        step: i64,
        epoch: i64,
        sha256: String,
        bytes: u64,
    },
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

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
            path: "/d/c".into(),
            step: 3,
            epoch: 1,
            sha256: "ab".into(),
            bytes: 9,
        });
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'));
        assert!(!serde_json::from_str::<WorkerMessage>(&line).unwrap().is_terminal());
        let progress = WorkerMessage::Event(Event::Progress {
            step: 0,
            total_steps: 0,
            epoch: 0,
            loss: f64::NAN,
            accuracy: 0.5,
            sparsity: vec![],
        });
        let back = serde_json::from_str::<WorkerMessage>(&serde_json::to_string(&progress).unwrap()).unwrap();
        let WorkerMessage::Event(Event::Progress { loss, accuracy, .. }) = back else { panic!("{back:?}") };
        assert!(loss.is_nan());
        assert_eq!(accuracy, 0.5);
        let stopped =
            serde_json::to_string(&WorkerMessage::Stopped { step: 3, reason: StopReason::Checkpoint }).unwrap();
        assert!(serde_json::from_str::<WorkerMessage>(&stopped).unwrap().is_terminal());
    }
}
