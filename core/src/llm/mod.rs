//! Hugging Face language models of the Llama family: what the server, prunectl and the engine
//! need to know about one without libtorch.

pub mod config;

pub use config::{Architecture, Biases, ConfigError, Linear, LlmConfig, RopeScaling};
