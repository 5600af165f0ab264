//! One-shot pruning of language models with calibration data (issue 26): the per-Linear math of
//! Wanda and SparseGPT, exact to their reference implementations (see
//! `shared/spec/llm-pruning.md` and `tests/python/{wanda,sparsegpt}_reference.py`).

pub mod pattern;
pub mod reconstruction;
pub mod sparsegpt;
pub mod stats;
pub mod wanda;

pub use pattern::{Pattern, PatternError};
pub use reconstruction::{relative_reconstruction_error, ReconstructionError};
pub use sparsegpt::{sparsegpt_prune, SparseGptError, SparseGptOutcome};
pub use stats::{HessianStats, StatsError, WandaStats};
pub use wanda::{wanda_mask, WandaError};

/// libtorch messages carry multi-line C++ backtraces; the first line is the message.
pub(crate) fn torch_message(e: tch::TchError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
