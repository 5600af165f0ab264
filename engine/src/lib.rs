//! The pruning engine: trains a model with tfmot-style scheduled magnitude masking on libtorch,
//! checkpoints everything needed for a bitwise-identical resume, and exports stripped,
//! compressed artifacts. No gRPC and no SQL here: the server runs this in worker processes.

pub mod allocator;
pub mod analysis;
pub mod channels;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod events;
pub mod export;
pub mod inputs;
pub mod job;
pub mod llm;
pub mod masking;
pub mod model;
pub mod optim;
pub mod rng;
pub mod sequential;
pub mod speed;
pub mod streamed;
pub mod tensors;
pub mod train;

pub use events::{Event, EventSink, MetricPoint, TensorSparsity, VecSink};
pub use inputs::ShardFiles;
pub use job::{run_job, run_typed, JobInputs, JobOutcome, Output, StopFlag, StopReason};
pub use prune_core::domain::{ArtifactFile, Report, TensorReport};

/// Everything that can end a job early. The message is the one-line reason users see.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("model: {0}")]
    Model(String),
    #[error("data: {0}")]
    Data(String),
    /// A file that is not valid safetensors (or holds a dtype libtorch lacks): the caller says
    /// which file, so no prefix of its own.
    #[error("{0}")]
    Format(String),
    #[error("training: {0}")]
    Training(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("export: {0}")]
    Export(String),
    /// A `pruning.budget` that cannot be met; the message says how close the job came.
    #[error("{0}")]
    Budget(String),
    #[error("stopped at step {step} ({reason:?})")]
    Stopped { step: i64, reason: StopReason },
    #[error("event sink: {0}")]
    Sink(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for EngineError {
    fn from(e: tch::TchError) -> Self {
        // libtorch messages carry multi-line C++ backtraces; keep the first line.
        let msg = e.to_string();
        EngineError::Torch(msg.lines().next().unwrap_or_default().to_string())
    }
}
