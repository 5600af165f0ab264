//! The entry point the worker calls: load, train with masking, export.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use prune_core::text::one_line;
use prune_core::validate::validate;
use prune_core::{Job, JobSpec};
use serde::{Deserialize, Serialize};

use crate::export::{ArtifactFile, Report};
use crate::{EngineError, EventSink};

/// Local files for a job: the server resolves `file`/`blob` references to paths first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInputs {
    /// `model.file` / `model.blob`: TorchScript `.pt` or a safetensors state dict.
    pub model_file: Option<PathBuf>,
    /// `model.weights`: initial safetensors weights for a `sequential` model.
    pub weights_file: Option<PathBuf>,
    /// `data.file` / `data.blob`: safetensors with `x` and `y`.
    pub data_file: Option<PathBuf>,
    /// Where this job's checkpoints go (one directory per job).
    pub checkpoint_dir: PathBuf,
    /// Where the finished artifacts go (one directory per job).
    pub artifact_dir: PathBuf,
    /// Resume from this checkpoint instead of starting fresh.
    pub resume_from: Option<PathBuf>,
    /// libtorch intra-op threads (results depend on it: a resumed job must use the same).
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// Cancelled: stop as soon as possible, no checkpoint needed.
    Cancel,
    /// Shutdown: write a checkpoint at the current step, then stop.
    Checkpoint,
}

/// Set from another thread (signal handler, stdin reader) to stop the job between steps.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicU8>);

impl StopFlag {
    pub fn request(&self, reason: StopReason) {
        let v = match reason {
            StopReason::Cancel => 1,
            StopReason::Checkpoint => 2,
        };
        self.0.store(v, Ordering::SeqCst);
    }
    pub fn requested(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::Checkpoint),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobOutcome {
    pub artifacts: Vec<ArtifactFile>,
    pub report: Report,
}

/// Runs a job document to the end (or until `stop`), reporting through `sink`: parses it into
/// the typed [`Job`] first (the server has validated it on admission, so an error here means a
/// stored spec that today's rules reject) and runs that.
pub fn run_job(
    spec: &JobSpec,
    inputs: &JobInputs,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
) -> Result<JobOutcome, EngineError> {
    let job = validate(spec).map_err(|e| EngineError::Spec(one_line(&e.to_string())))?;
    run_typed(&job, inputs, sink, stop)
}

/// Runs a typed job to the end (or until `stop`), reporting through `sink`.
pub fn run_typed(
    job: &Job,
    inputs: &JobInputs,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
) -> Result<JobOutcome, EngineError> {
    crate::train::run(job, inputs, sink, stop)
}
