//! One Llama-family decoder layer on tch, computed in f32 as transformers 4.57 computes it:
//! RMSNorm, grouped-query causal attention with RoPE, residual, RMSNorm, SiLU-gated MLP,
//! residual. The layer owns its tensors, so a pipeline can hold one layer at a time and replace
//! a Linear's weight by its pruned value.

use std::collections::HashMap;

use prune_core::llm::config::layer_prefix;
use prune_core::llm::{Linear, LlmConfig};
use tch::Tensor;

use super::rope::Rope;
use super::weights::Checkpoint;
use crate::EngineError;

/// The four inputs to Linears inside a decoder layer: Linears fed by one site see the same
/// input (their statistics can be shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// The normed hidden states q, k and v multiply.
    Attention,
    /// The attention heads' output, o_proj's input.
    AttentionOutput,
    /// The normed hidden states gate and up multiply.
    Mlp,
    /// `silu(gate) * up`, down_proj's input.
    MlpOutput,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Attention, Site::AttentionOutput, Site::Mlp, Site::MlpOutput];

    /// The Linears whose weights multiply this site's tensor.
    pub fn linears(self) -> &'static [Linear] {
        match self {
            Site::Attention => &[Linear::Q, Linear::K, Linear::V],
            Site::AttentionOutput => &[Linear::O],
            Site::Mlp => &[Linear::Gate, Linear::Up],
            Site::MlpOutput => &[Linear::Down],
        }
    }

    /// The site that feeds `linear`.
    pub fn of(linear: Linear) -> Site {
        match linear {
            Linear::Q | Linear::K | Linear::V => Site::Attention,
            Linear::O => Site::AttentionOutput,
            Linear::Gate | Linear::Up => Site::Mlp,
            Linear::Down => Site::MlpOutput,
        }
    }
}

/// What a forward pass shows of itself: every Linear's input and output, as computed.
pub trait Observer {
    /// The exact tensor the Linears fed by `site` multiply.
    fn input(&mut self, _site: Site, _x: &Tensor) {}
    /// `linear`'s output (its bias included), before any reshape.
    fn output(&mut self, _linear: Linear, _y: &Tensor) {}
}

/// A forward pass nobody watches.
pub struct Unobserved;

impl Observer for Unobserved {}

/// One decoder layer's tensors (f32, CPU).
#[derive(Debug)]
pub struct Layer {
    pub index: usize,
    input_norm: Tensor,
    post_attention_norm: Tensor,
    /// In [`Linear::ALL`] order.
    weights: Vec<Tensor>,
    biases: Vec<Option<Tensor>>,
}

impl Layer {
    /// Reads layer `i` from the checkpoint (only its tensors), checking every shape against
    /// the config.
    pub fn load(ckpt: &Checkpoint, cfg: &LlmConfig, i: usize) -> Result<Layer, EngineError> {
        let prefix = layer_prefix(i);
        Layer::build(cfg, i, |name, shape| ckpt.load_shaped(&format!("{prefix}{name}"), shape))
    }

    /// A layer from tensors by their names inside the layer (`self_attn.q_proj.weight`, ...),
    /// e.g. pruned layers read back from a job checkpoint.
    pub fn from_tensors(cfg: &LlmConfig, i: usize, mut tensors: HashMap<String, Tensor>) -> Result<Layer, EngineError> {
        Layer::build(cfg, i, |name, shape| {
            let t = tensors
                .remove(name)
                .ok_or_else(|| EngineError::Model(format!("layer {i}: tensor `{name}` is missing")))?;
            check_shape(i, name, &t, shape)?;
            Ok(t)
        })
    }

    fn build(
        cfg: &LlmConfig,
        i: usize,
        mut get: impl FnMut(&str, &[usize]) -> Result<Tensor, EngineError>,
    ) -> Result<Layer, EngineError> {
        let hidden = [cfg.hidden_size];
        let input_norm = get("input_layernorm.weight", &hidden)?;
        let post_attention_norm = get("post_attention_layernorm.weight", &hidden)?;
        let mut weights = Vec::with_capacity(Linear::ALL.len());
        let mut biases = Vec::with_capacity(Linear::ALL.len());
        for linear in Linear::ALL {
            let (out, inp) = cfg.linear_shape(linear);
            weights.push(get(&linear.weight(), &[out, inp])?);
            biases.push(if linear.has_bias(cfg.biases) { Some(get(&linear.bias(), &[out])?) } else { None });
        }
        Ok(Layer { index: i, input_norm, post_attention_norm, weights, biases })
    }

    pub fn weight(&self, linear: Linear) -> &Tensor {
        &self.weights[linear as usize]
    }

    pub fn bias(&self, linear: Linear) -> Option<&Tensor> {
        self.biases[linear as usize].as_ref()
    }

    /// Replaces a Linear's weight (by its pruned value); the shape must stay the same.
    pub fn set_weight(&mut self, linear: Linear, weight: Tensor) -> Result<(), EngineError> {
        let old = &self.weights[linear as usize];
        if weight.size() != old.size() || weight.kind() != old.kind() {
            return Err(EngineError::Model(format!(
                "layer {}: {} must stay {:?} {:?}, not {:?} {:?}",
                self.index,
                linear.weight(),
                old.size(),
                old.kind(),
                weight.size(),
                weight.kind()
            )));
        }
        self.weights[linear as usize] = weight;
        Ok(())
    }

    /// Every tensor by its name inside the layer, in `LlmConfig::layer_tensors` order (for
    /// checkpoints and export: prefix them with `layer_prefix(index)`).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("input_layernorm.weight".to_string(), &self.input_norm)];
        for linear in Linear::ALL {
            out.push((linear.weight(), self.weight(linear)));
            if let Some(b) = self.bias(linear) {
                out.push((linear.bias(), b));
            }
        }
        out.push(("post_attention_layernorm.weight".to_string(), &self.post_attention_norm));
        out
    }

    /// The layer's output for hidden states `x`, `[B, L, hidden]` f32 (L at most the RoPE
    /// table's length), with every Linear's input and output shown to `observe`.
    pub fn forward(&self, cfg: &LlmConfig, rope: &Rope, x: &Tensor, observe: &mut dyn Observer) -> Tensor {
        let normed = rms_norm(x, &self.input_norm, cfg.rms_norm_eps);
        observe.input(Site::Attention, &normed);
        let heads = self.attention(cfg, rope, &normed, observe);
        observe.input(Site::AttentionOutput, &heads);
        let x = x + self.linear(Linear::O, &heads, observe);

        let normed = rms_norm(&x, &self.post_attention_norm, cfg.rms_norm_eps);
        observe.input(Site::Mlp, &normed);
        let gated = self.linear(Linear::Gate, &normed, observe).silu() * self.linear(Linear::Up, &normed, observe);
        observe.input(Site::MlpOutput, &gated);
        x + self.linear(Linear::Down, &gated, observe)
    }

    fn linear(&self, linear: Linear, x: &Tensor, observe: &mut dyn Observer) -> Tensor {
        let y = x.linear(self.weight(linear), self.bias(linear));
        observe.output(linear, &y);
        y
    }

    /// Causal self-attention up to (not including) o_proj: `[B, L, heads * head_dim]`.
    fn attention(&self, cfg: &LlmConfig, rope: &Rope, x: &Tensor, observe: &mut dyn Observer) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let d = cfg.head_dim as i64;
        let split = |t: Tensor, heads: usize| t.view([b, l, heads as i64, d]).transpose(1, 2);
        let q = rope.apply(&split(self.linear(Linear::Q, x, observe), cfg.num_attention_heads));
        let k = rope.apply(&split(self.linear(Linear::K, x, observe), cfg.num_key_value_heads));
        let v = split(self.linear(Linear::V, x, observe), cfg.num_key_value_heads);
        let groups = (cfg.num_attention_heads / cfg.num_key_value_heads) as i64;
        let (k, v) = (repeat_kv(&k, groups), repeat_kv(&v, groups));
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, scale, false);
        out.transpose(1, 2).reshape([b, l, cfg.num_attention_heads as i64 * d])
    }
}

/// Each key/value head repeated for the `groups` query heads that share it, as transformers'
/// `repeat_kv` lays them out (head h of the queries uses kv head h / groups).
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2).expand([s[0], s[1], groups, s[2], s[3]], false).reshape([s[0], s[1] * groups, s[2], s[3]])
}

/// transformers' `LlamaRMSNorm` in f32: `w * (x * rsqrt(mean(x^2) + eps))`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let variance = x.square().mean_dim(-1, true, tch::Kind::Float);
    weight * (x * (variance + eps).rsqrt())
}

fn check_shape(i: usize, name: &str, t: &Tensor, shape: &[usize]) -> Result<(), EngineError> {
    let expected: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    if t.size() != expected {
        return Err(EngineError::Model(format!(
            "layer {i}: tensor `{name}` has shape {:?}; config.json implies {shape:?}",
            t.size()
        )));
    }
    Ok(())
}
