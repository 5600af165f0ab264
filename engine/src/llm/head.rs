//! The ends of the decoder: token embeddings in, final norm and lm_head out, and the token
//! negative log-likelihood transformers' causal-LM loss sums.

use prune_core::llm::config::{EMBED_TOKENS, FINAL_NORM, LM_HEAD};
use prune_core::llm::LlmConfig;
use tch::{Kind, Reduction, Tensor};

use super::model::rms_norm;
use super::weights::Checkpoint;
use crate::EngineError;

/// `model.embed_tokens`.
#[derive(Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    pub fn load(ckpt: &Checkpoint, cfg: &LlmConfig) -> Result<Embedding, EngineError> {
        Ok(Embedding { weight: ckpt.load_shaped(EMBED_TOKENS, &[cfg.vocab_size, cfg.hidden_size])? })
    }

    /// `[B, L]` int64 token ids -> `[B, L, hidden]` f32; ids outside the vocabulary are an error.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, EngineError> {
        let vocab = self.weight.size()[0];
        if ids.numel() > 0 {
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= vocab {
                return Err(EngineError::Data(format!(
                    "token ids span {lo}..={hi}, outside the model's vocabulary of {vocab}"
                )));
            }
        }
        Ok(self.weight.index_select(0, &ids.flatten(0, -1)).view([ids.size()[0], ids.size()[1], -1]))
    }
}

/// `model.norm` and `lm_head` (or the embedding matrix when they are tied).
#[derive(Debug)]
pub struct Head {
    norm: Tensor,
    lm_head: Tensor,
    eps: f64,
}

impl Head {
    /// transformers ties lm_head to embed_tokens when `tie_word_embeddings` is set; a
    /// checkpoint saved that way has no `lm_head.weight`, so its absence means tied as well.
    pub fn load(ckpt: &Checkpoint, cfg: &LlmConfig) -> Result<Head, EngineError> {
        let norm = ckpt.load_shaped(FINAL_NORM, &[cfg.hidden_size])?;
        let shape = [cfg.vocab_size, cfg.hidden_size];
        let name = if cfg.tie_word_embeddings || !ckpt.contains(LM_HEAD) { EMBED_TOKENS } else { LM_HEAD };
        Ok(Head { norm, lm_head: ckpt.load_shaped(name, &shape)?, eps: cfg.rms_norm_eps })
    }

    /// `[B, L, hidden]` -> `[B, L, vocab]` f32 logits.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        rms_norm(x, &self.norm, self.eps).linear(&self.lm_head, None::<Tensor>)
    }

    /// The summed negative log-likelihood of each next token, `labels = ids` shifted by one
    /// (transformers' causal-LM loss with reduction sum), and how many tokens it sums:
    /// `B * (L - 1)`.
    pub fn nll(&self, x: &Tensor, ids: &Tensor) -> (f64, i64) {
        let (b, l) = (ids.size()[0], ids.size()[1]);
        if l < 2 {
            return (0.0, 0);
        }
        let logits = self.logits(&x.narrow(1, 0, l - 1));
        let labels = ids.narrow(1, 1, l - 1).reshape([-1]);
        let loss = logits.view([-1, logits.size()[2]]).to_kind(Kind::Float).cross_entropy_loss(
            &labels,
            None::<Tensor>,
            Reduction::Sum,
            -100,
            0.0,
        );
        (loss.double_value(&[]), b * (l - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let head = Head {
            norm: Tensor::ones([4], (Kind::Float, Device::Cpu)),
            lm_head: Tensor::zeros([10, 4], (Kind::Float, Device::Cpu)),
            eps: 1e-6,
        };
        let x = {
            let _rng = crate::rng::global_generator_lock();
            Tensor::randn([2, 5, 4], (Kind::Float, Device::Cpu))
        };
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6, 7, 8, 9, 0]).view([2, 5]);
        let (nll, n) = head.nll(&x, &ids);
        assert_eq!(n, 8);
        assert!((nll - 8.0 * 10f64.ln()).abs() < 1e-4, "{nll}");
        let emb = Embedding { weight: Tensor::zeros([10, 4], (Kind::Float, Device::Cpu)) };
        assert!(emb.forward(&Tensor::from_slice(&[3i64, 10]).view([1, 2])).is_err());
    }
}
