//! Hugging Face language models of the Llama family (Llama, Mistral, Qwen2) on tch, computed in
//! f32 as transformers computes them, one decoder layer at a time: the checkpoint read tensor
//! by tensor, the tokenizer, and perplexity.

pub mod dense;
pub mod head;
pub mod model;
pub mod perplexity;
pub mod rope;
pub mod tokenize;
pub mod weights;

pub use dense::DenseModel;
pub use head::{Embedding, Head};
pub use model::{Layer, Site};
pub use perplexity::{perplexity, windows, LayerSource, Perplexity};
pub use rope::Rope;
pub use tokenize::Tokenizer;
pub use weights::Checkpoint;
