//! Perplexity of a token stream, computed layer by layer: every window is embedded, then all of
//! them pass through layer 0, then layer 1, ..., with one layer's weights in memory at a time
//! (loaded through [`LayerSource`], so pruned layers are scored the same way), in batches of
//! windows so the activations stay bounded, then the head.
//!
//! Windows: the stream is cut into consecutive, non-overlapping windows of `seq_len` tokens; a
//! tail shorter than `seq_len` is dropped. Each window is scored on its own (no context carried
//! over), predicting its tokens 1..seq_len from those before them, as transformers' causal-LM
//! loss does. Perplexity = exp(total NLL / tokens predicted). libtorch's thread count is the
//! caller's.

use prune_core::llm::LlmConfig;
use tch::{Kind, Tensor};

use super::head::{Embedding, Head};
use super::model::{Layer, Unobserved};
use super::rope::Rope;
use crate::EngineError;

/// Where the decoder layers come from: the dense checkpoint, or a pipeline's pruned layers.
pub trait LayerSource {
    fn layer(&self, i: usize) -> Result<Layer, EngineError>;
}

/// The summed NLL over `tokens` predicted tokens of `windows` windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    pub nll: f64,
    pub tokens: i64,
    pub windows: usize,
}

impl Perplexity {
    pub fn value(&self) -> f64 {
        (self.nll / self.tokens as f64).exp()
    }
}

/// The token stream cut into `[N, seq_len]` windows (the tail dropped); an error when it holds
/// no whole window or `seq_len` is above what the model supports.
pub fn windows(cfg: &LlmConfig, tokens: &[i64], seq_len: usize) -> Result<Tensor, EngineError> {
    if seq_len < 2 || seq_len > cfg.max_seq_len() {
        return Err(EngineError::Spec(format!(
            "seq_len {seq_len} must be between 2 and the model's limit of {} tokens",
            cfg.max_seq_len()
        )));
    }
    let n = tokens.len() / seq_len;
    if n == 0 {
        return Err(EngineError::Data(format!(
            "{} tokens are fewer than one window of seq_len = {seq_len}",
            tokens.len()
        )));
    }
    Ok(Tensor::from_slice(&tokens[..n * seq_len]).view([n as i64, seq_len as i64]))
}

/// Perplexity of `windows` (`[N, L]` int64, as [`windows`] cuts them), `batch` windows at a
/// time through each layer.
pub fn perplexity(
    cfg: &LlmConfig,
    embedding: &Embedding,
    layers: &dyn LayerSource,
    head: &Head,
    windows: &Tensor,
    batch: usize,
) -> Result<Perplexity, EngineError> {
    let _no_grad = tch::no_grad_guard();
    let (n, len) = (windows.size()[0], windows.size()[1]);
    let batch = batch.max(1) as i64;
    let hidden = embedding.forward(windows)?;
    let rope = Rope::new(cfg, len as usize);
    for i in 0..cfg.num_hidden_layers {
        let layer = layers.layer(i)?;
        for start in (0..n).step_by(batch as usize) {
            let rows = batch.min(n - start);
            let mut slot = hidden.narrow(0, start, rows);
            let out = layer.forward(cfg, &rope, &slot, &mut Unobserved);
            slot.copy_(&out);
        }
    }
    let mut total = Perplexity { nll: 0.0, tokens: 0, windows: n as usize };
    for start in (0..n).step_by(batch as usize) {
        let rows = batch.min(n - start);
        let (nll, tokens) = head.nll(&hidden.narrow(0, start, rows), &windows.narrow(0, start, rows));
        total.nll += nll;
        total.tokens += tokens;
    }
    if !total.nll.is_finite() {
        return Err(EngineError::Model(format!("the model's NLL is {} (NaN or infinite activations)", total.nll)));
    }
    debug_assert_eq!(hidden.kind(), Kind::Float);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_drop_the_tail_and_respect_the_limit() {
        let cfg = LlmConfig::from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10, "max_position_embeddings": 4}"#,
        )
        .unwrap();
        let tokens: Vec<i64> = (0..11).collect();
        let w = windows(&cfg, &tokens, 4).unwrap();
        assert_eq!(w.size(), [2, 4]);
        assert_eq!(w.int64_value(&[1, 3]), 7);
        assert!(windows(&cfg, &tokens, 5).unwrap_err().to_string().contains("limit of 4 tokens"));
        assert!(windows(&cfg, &tokens[..3], 4).unwrap_err().to_string().contains("fewer than one window"));
    }
}
