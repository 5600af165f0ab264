//! The service's domain types, defined once: job state, reports, tensor sparsity, metric points,
//! worker events and a job's outcome. The engine produces them, the worker carries them, the
//! server stores them and the client shows them; proto conversions live next to the generated
//! code in `prune-proto` (see `docs/architecture.md`).

mod events;
mod report;
mod state;

pub use events::{Event, JobOutcome, StopReason};
pub use report::{
    ArtifactFile, BudgetReport, ChannelReport, ChosenSparsity, InferenceTiming, LanguageModelReport, LayerChannels,
    LinearError, MetricPoint, Perplexity, Report, SensitivityPoint, TensorReport, TensorSparsity, NO_FORWARD_PASS,
};
pub use state::{JobKind, JobState};
