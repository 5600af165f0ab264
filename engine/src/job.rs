//! The entry point the worker calls: load, train with masking, export.

pub use crate::inputs::{JobInputs, JobOutcome, Output, StopFlag, StopReason};
use prune_core::text::one_line;
use prune_core::validate::validate;
use prune_core::{Job, JobSpec};

use crate::{EngineError, EventSink};

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
    // A Hugging Face language model (its directory's config.json came along): layer by layer.
    if crate::llm::applies(inputs) {
        return crate::llm::run(job, inputs, sink, stop);
    }
    // A one-shot state dict needs no libtorch: pruned a tensor at a time, in bounded memory.
    if crate::streamed::applies(job, inputs) {
        return crate::streamed::run(job, inputs, sink, stop);
    }
    crate::train::run(job, inputs, sink, stop)
}
