//! Language models: Hugging Face Llama-family directories pruned one-shot, layer by layer, by
//! magnitude, Wanda or SparseGPT (docs/language-models.md).

mod pass;
mod plan;
mod run;
mod state;
mod windows;

pub use run::{applies, run, RECONSTRUCTION_PLOT_FORMAT};
