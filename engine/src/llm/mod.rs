//! Language models: Hugging Face Llama-family directories (Llama, Mistral, Qwen2) pruned
//! one-shot, layer by layer, by magnitude, Wanda or SparseGPT (docs/language-models.md).
//!
//! The model on tch, computed in f32 as transformers computes it, one decoder layer at a time
//! (`weights`, `model`, `rope`, `head`, `tokenize`, `perplexity`, `dense`); the per-Linear
//! methods (`pattern`, `stats`, `wanda`, `sparsegpt`, `reconstruction`); and the job around
//! them (`plan`: what is pruned; `tokens`: calibration and evaluation windows of the job's texts; `pass`: the
//! layer-by-layer pass; `state`: its checkpoints; `run`: start to artifact).

pub mod dense;
pub mod head;
pub mod model;
pub mod pattern;
pub mod perplexity;
pub mod reconstruction;
pub mod rope;
pub mod sparsegpt;
pub mod stats;
pub mod tokenize;
pub mod wanda;
pub mod weights;

mod pass;
mod plan;
mod run;
mod state;
mod tokens;

pub use dense::DenseModel;
pub use head::{Embedding, Head};
pub use model::{Layer, Observer, Site, Unobserved};
pub use perplexity::{perplexity, windows, LayerSource, Perplexity};
pub use rope::Rope;
pub use run::{applies, run, RECONSTRUCTION_PLOT_FORMAT};
pub use tokenize::Tokenizer;
pub use weights::Checkpoint;

pub use pattern::{Pattern, PatternError};
pub use reconstruction::{relative_reconstruction_error, ReconstructionError};
pub use sparsegpt::{sparsegpt_prune, SparseGptError, SparseGptOutcome};
pub use stats::{HessianStats, StatsError, WandaStats};
pub use wanda::{wanda_mask, WandaError};

/// libtorch messages carry multi-line C++ backtraces; the first line is the message.
pub(crate) fn torch_message(e: tch::TchError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
