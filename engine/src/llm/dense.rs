//! A Hugging Face model directory as it is on disk: `config.json` and the checkpoint, read
//! layer by layer on demand.

use std::path::Path;

use prune_core::llm::config::CONFIG_FILE;
use prune_core::llm::LlmConfig;
use tch::Tensor;

use super::head::{Embedding, Head};
use super::model::{Layer, Unobserved};
use super::perplexity::LayerSource;
use super::rope::Rope;
use super::weights::Checkpoint;
use crate::EngineError;

#[derive(Debug)]
pub struct DenseModel {
    pub config: LlmConfig,
    pub checkpoint: Checkpoint,
}

impl DenseModel {
    /// `config.json` and `model.safetensors` (or an index and its shards) in `dir`.
    pub fn open_dir(dir: &Path) -> Result<DenseModel, EngineError> {
        let config = LlmConfig::from_file(&dir.join(CONFIG_FILE)).map_err(|e| EngineError::Model(e.to_string()))?;
        Ok(DenseModel { config, checkpoint: Checkpoint::open_dir(dir)? })
    }

    pub fn embedding(&self) -> Result<Embedding, EngineError> {
        Embedding::load(&self.checkpoint, &self.config)
    }

    pub fn head(&self) -> Result<Head, EngineError> {
        Head::load(&self.checkpoint, &self.config)
    }

    /// The whole model's logits for `[B, L]` ids, `[B, L, vocab]` f32: every layer in turn, so
    /// only for tests and small models (the activations of all positions are kept).
    pub fn forward_logits(&self, ids: &Tensor) -> Result<Tensor, EngineError> {
        let _no_grad = tch::no_grad_guard();
        let len = ids.size()[1] as usize;
        if len > self.config.max_seq_len() {
            return Err(EngineError::Spec(format!(
                "{len} tokens are more than the model's limit of {}",
                self.config.max_seq_len()
            )));
        }
        let rope = Rope::new(&self.config, len);
        let mut x = self.embedding()?.forward(ids)?;
        for i in 0..self.config.num_hidden_layers {
            x = self.layer(i)?.forward(&self.config, &rope, &x, &mut Unobserved);
        }
        Ok(self.head()?.logits(&x))
    }
}

impl LayerSource for DenseModel {
    fn layer(&self, i: usize) -> Result<Layer, EngineError> {
        Layer::load(&self.checkpoint, &self.config, i)
    }
}
