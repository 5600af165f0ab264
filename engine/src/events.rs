//! What a running job reports. The worker process serialises these as JSON lines for the
//! server, so they are plain serde data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// One value of a time series: `sparsity/<param>`, `loss`, `accuracy`, `val_loss`, `val_accuracy`,
/// `learning_rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: i64,
    pub name: String,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSparsity {
    /// PyTorch's dotted name (`0.weight`).
    pub name: String,
    pub sparsity: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Sent once the model and data are loaded (also after a resume).
    Started { total_steps: i64, steps_per_epoch: i64, epochs: i64, start_step: i64, pruned: Vec<String> },
    /// Training progress; sent at most a few times a second and at every mask update.
    Progress {
        step: i64,
        total_steps: i64,
        epoch: i64,
        loss: f64,
        accuracy: f64,
        sparsity: Vec<TensorSparsity>,
    },
    /// A batch of time-series points (mask updates, epoch ends, checkpoints).
    Metrics { points: Vec<MetricPoint> },
    /// A checkpoint was written (temp file, fsync, rename) and can be recorded.
    Checkpoint { path: PathBuf, step: i64, epoch: i64, sha256: String, bytes: u64 },
}

/// Where the engine sends its events. An error (e.g. the server is gone) aborts the job.
pub trait EventSink {
    fn emit(&mut self, event: Event) -> Result<(), EngineError>;
}

/// Collects events in memory: for tests and the stand-alone demo.
#[derive(Debug, Default)]
pub struct VecSink(pub Vec<Event>);

impl EventSink for VecSink {
    fn emit(&mut self, event: Event) -> Result<(), EngineError> {
        self.0.push(event);
        Ok(())
    }
}
