//! Where a running job's events go. The events themselves are domain types of prune-core.

pub use prune_core::domain::{Event, MetricPoint, TensorSparsity};

use crate::EngineError;

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
