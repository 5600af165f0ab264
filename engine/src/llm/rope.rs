//! Rotary position embeddings, with `inv_freq` computed in f32 exactly as transformers 4.57's
//! `modeling_rope_utils` does (default, linear and llama3 scaling), so the angles match its
//! bit for bit rather than merely closely.

use std::f64::consts::PI;

use prune_core::llm::{LlmConfig, RopeScaling};
use tch::{Device, Kind, Tensor};

/// cos and sin of every position's angles, `[seq_len, head_dim]`, for positions 0..seq_len.
#[derive(Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(cfg: &LlmConfig, seq_len: usize) -> Rope {
        let inv_freq = inv_freq(cfg);
        let positions = Tensor::arange(seq_len as i64, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float);
        // transformers takes inv_freq @ positions, a product of one term per element: the same
        // single f32 multiplication as this outer product.
        let freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Rope { cos: emb.cos(), sin: emb.sin() }
    }

    pub fn seq_len(&self) -> usize {
        self.cos.size()[0] as usize
    }

    /// Rotates `x`, `[B, heads, L, head_dim]`, by the angles of positions 0..L.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let len = x.size()[2];
        assert!(len as usize <= self.seq_len(), "a sequence of {len} tokens is longer than the RoPE table");
        let cos = self.cos.narrow(0, 0, len);
        let sin = self.sin.narrow(0, 0, len);
        x * cos + rotate_half(x) * sin
    }
}

/// `cat(-x2, x1)` of the two halves of the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// `1 / theta^(2i/d)` for i in 0..d/2, in f32, then scaled as the config says.
fn inv_freq(cfg: &LlmConfig) -> Tensor {
    let dim = cfg.head_dim as i64;
    let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / dim as f64;
    let inv_freq = Tensor::pow_scalar(cfg.rope_theta, &exponents).reciprocal();
    match cfg.rope_scaling {
        RopeScaling::None => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / factor,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            let wavelen = inv_freq.reciprocal() * (2.0 * PI);
            // Long wavelengths are divided by factor, short ones kept, the band between
            // interpolated (transformers' `_compute_llama3_parameters`).
            let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / factor));
            let smooth = ((wavelen.reciprocal() * old) - low_freq_factor) / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
            let medium = wavelen.ge(high_freq_wavelen).logical_and(&wavelen.le(low_freq_wavelen));
            smoothed.where_self(&medium, &scaled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rope_scaling: &str) -> LlmConfig {
        LlmConfig::from_json(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10, "rope_theta": 500000.0,
            "rope_scaling": {rope_scaling}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn default_inv_freq_and_rotation_of_position_zero() {
        let cfg = config("null");
        let f = inv_freq(&cfg);
        assert_eq!(f.size(), [16]);
        assert_eq!(f.double_value(&[0]), 1.0);
        let expected = 1.0 / 500000f64.powf(2.0 / 32.0);
        assert!((f.double_value(&[1]) - expected).abs() < 1e-7 * expected);
        let rope = Rope::new(&cfg, 4);
        let x = {
            let _rng = crate::rng::global_generator_lock();
            Tensor::randn([1, 2, 4, 32], (Kind::Float, Device::Cpu))
        };
        let y = rope.apply(&x);
        // Position 0 is not rotated; rotation keeps every pair's norm.
        assert_eq!(y.narrow(2, 0, 1), x.narrow(2, 0, 1));
        let norm = |t: &Tensor| t.square().sum_dim_intlist(-1, false, Kind::Float);
        assert!(norm(&y).allclose(&norm(&x), 1e-5, 1e-5, false));
    }

    #[test]
    fn llama3_scaling_divides_long_wavelengths_only() {
        let plain = inv_freq(&config("null"));
        let scaled = inv_freq(&config(
            r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}"#,
        ));
        // wavelength 2pi: short, untouched; the longest (> 64): divided by 8.
        assert_eq!(scaled.double_value(&[0]), plain.double_value(&[0]));
        let last = plain.double_value(&[15]);
        assert!(2.0 * PI / last > 64.0);
        assert!((scaled.double_value(&[15]) - last / 8.0).abs() < 1e-12);
        let linear = inv_freq(&config(r#"{"type": "linear", "factor": 4.0}"#));
        assert!(linear.allclose(&(&plain / 4.0), 0.0, 0.0, false));
    }
}
