//! Client side of the prune service: a typed async client over the generated `pruning.v1`
//! gRPC code, plus the offline pieces `prunectl` needs (job files, unpacking, TensorBoard
//! export). Other Rust programs can drive the service through [`Client`] without the CLI.
//!
//! Nothing here links libtorch.

mod auth;
mod client;
pub mod download;
pub mod error;
pub mod jobfile;
pub mod model_dir;
mod retry;
pub mod sweep;
pub mod tensorboard;
mod tls_probe;
pub mod tracked;
pub mod types;
pub mod unpack;
pub mod upload;
mod watch;

pub use client::{new_request_id, Client, ConnectOptions, SubmitOptions, DEFAULT_TIMEOUT};
pub use download::DownloadOutcome;
pub use error::{ClientError, Result};
/// The sweep's Pareto plot (`prune-plot`).
pub use prune_plot::pareto as plot;
pub use tls_probe::tls_hint;
pub use tracked::{Reporter, ReporterConfig, ReporterStatus, TrackedRun, TrackedRunOptions};
pub use types::{
    ArtifactInfo, AttemptInfo, BudgetReport, ChannelReport, ChosenSparsity, JobInfo, JobKind, JobState,
    LanguageModelReport, LayerChannels, LinearError, MetricRecord, Perplexity, Progress, Report, SensitivityPoint,
    TensorSparsity, WatchEvent,
};
pub use upload::Uploaded;

/// Where `prunectl` looks for the server when neither `--addr` nor `PRUNE_ADDR` is given.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";
