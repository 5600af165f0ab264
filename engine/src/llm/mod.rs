//! Language models: Hugging Face Llama-family directories (Llama, Mistral, Qwen2) pruned
//! one-shot, layer by layer, by magnitude, Wanda or SparseGPT (docs/language-models.md).
//!
//! The model on tch, computed in f32 as transformers computes it, one decoder layer at a time
//! (`weights`, `model`, `rope`, `head`, `tokenize`, `perplexity`, `dense`); the per-Linear
//! methods (`pattern`, `stats`, `wanda`, `sparsegpt`, `reconstruction`); and the job around
//! them (`plan`: what is pruned; `windows`: calibration and evaluation tokens; `pass`: the
//! layer-by-layer pass; `state`: its checkpoints; `run`: start to artifact).

pub mod dense;
pub mod head;
pub mod model;
pub mod perplexity;
pub mod rope;
pub mod tokenize;
pub mod weights;

mod pass;
mod plan;
mod run;
mod state;
mod windows;

pub use dense::DenseModel;
pub use head::{Embedding, Head};
pub use model::{Layer, Site};
pub use perplexity::{perplexity, windows as eval_windows, LayerSource, Perplexity};
pub use rope::Rope;
pub use run::{applies, run, RECONSTRUCTION_PLOT_FORMAT};
pub use tokenize::Tokenizer;
pub use weights::Checkpoint;
