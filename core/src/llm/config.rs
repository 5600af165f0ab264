//! A Hugging Face `config.json` of a Llama-family decoder, parsed once into types: the server
//! and prunectl refuse an unsupported model at submit time, and the engine builds the model from
//! [`LlmConfig`] without looking at a string again.
//!
//! Missing optional fields take transformers 4.57's defaults for the architecture. Fields that
//! change the computation in ways the engine does not implement (another activation, another
//! RoPE scaling) are errors naming the field, never silently ignored.

use std::path::Path;

use serde::Deserialize;

/// The file name every message names.
pub use crate::sharded::CONFIG_FILE;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config.json: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    /// Not JSON, or a field of the wrong JSON type; `field` is serde's path to it.
    #[error("config.json: {field}: {reason}")]
    Json { field: String, reason: String },
    #[error("config.json: {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field { field, reason: reason.into() }
}

/// The decoders implemented: they share one layer structure and differ in biases, defaults and
/// the sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub const ALL: [Architecture; 3] = [Architecture::Llama, Architecture::Mistral, Architecture::Qwen2];

    /// The `architectures[0]` value transformers writes for it.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn parse(name: &str) -> Result<Architecture, ConfigError> {
        Architecture::ALL.into_iter().find(|a| a.class_name() == name).ok_or_else(|| {
            let supported: Vec<_> = Architecture::ALL.iter().map(|a| a.class_name()).collect();
            field("architectures", format!("`{name}` is not supported (supported: {})", supported.join(", ")))
        })
    }
}

/// How RoPE frequencies are rescaled for contexts longer than the model was trained on
/// (transformers' `rope_scaling`, computed as `modeling_rope_utils` does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// No `rope_scaling`, or `rope_type = "default"`.
    None,
    /// `inv_freq / factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise scaling by wavelength.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// Which Linears of a decoder layer carry a bias (the architecture decides, not only the
/// config's flags: Qwen2 always has q/k/v biases and no other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Biases {
    pub qkv: bool,
    pub o: bool,
    pub mlp: bool,
}

/// The seven Linears of a decoder layer, in the order transformers' `named_parameters` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Linear {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Linear {
    pub const ALL: [Linear; 7] = [Linear::Q, Linear::K, Linear::V, Linear::O, Linear::Gate, Linear::Up, Linear::Down];

    /// The module's name inside a layer: `self_attn.q_proj`, ..., `mlp.down_proj`.
    pub fn module(self) -> &'static str {
        match self {
            Linear::Q => "self_attn.q_proj",
            Linear::K => "self_attn.k_proj",
            Linear::V => "self_attn.v_proj",
            Linear::O => "self_attn.o_proj",
            Linear::Gate => "mlp.gate_proj",
            Linear::Up => "mlp.up_proj",
            Linear::Down => "mlp.down_proj",
        }
    }

    /// The weight's name inside a layer, e.g. `self_attn.q_proj.weight`.
    pub fn weight(self) -> String {
        format!("{}.weight", self.module())
    }

    /// The bias's name inside a layer, e.g. `self_attn.q_proj.bias`.
    pub fn bias(self) -> String {
        format!("{}.bias", self.module())
    }

    pub fn has_bias(self, biases: Biases) -> bool {
        match self {
            Linear::Q | Linear::K | Linear::V => biases.qkv,
            Linear::O => biases.o,
            Linear::Gate | Linear::Up | Linear::Down => biases.mlp,
        }
    }
}

/// The parsed, checked config.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    pub biases: Biases,
    /// The attention window when one applies (Mistral's `sliding_window`, Qwen2's with
    /// `use_sliding_window`). Sequences no longer than it attend exactly as with full causal
    /// attention, so the engine supports it by refusing longer ones ([`LlmConfig::max_seq_len`]).
    pub sliding_window: Option<usize>,
}

/// The JSON as written, before defaults and checks.
#[derive(Deserialize)]
struct Raw {
    architectures: Option<Vec<String>>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Map<String, serde_json::Value>>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

/// transformers 4.57's `__init__` defaults where a config leaves a field out.
struct Defaults {
    max_position_embeddings: usize,
    rms_norm_eps: f64,
}

impl Architecture {
    fn defaults(self) -> Defaults {
        match self {
            Architecture::Llama => Defaults { max_position_embeddings: 2048, rms_norm_eps: 1e-6 },
            Architecture::Mistral => Defaults { max_position_embeddings: 4096 * 32, rms_norm_eps: 1e-6 },
            Architecture::Qwen2 => Defaults { max_position_embeddings: 32768, rms_norm_eps: 1e-6 },
        }
    }
}

impl LlmConfig {
    pub fn from_file(path: &Path) -> Result<LlmConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        LlmConfig::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<LlmConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: Raw = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Json {
                field: if path == "." { "(document)".into() } else { path },
                reason: e.into_inner().to_string(),
            }
        })?;
        LlmConfig::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> Result<LlmConfig, ConfigError> {
        let architecture = match raw.architectures.as_deref() {
            Some([first, ..]) => Architecture::parse(first)?,
            _ => {
                return Err(field("architectures", "missing: the model class is needed (e.g. [\"LlamaForCausalLM\"])"))
            }
        };
        let defaults = architecture.defaults();
        let hidden_size = positive("hidden_size", raw.hidden_size)?;
        let intermediate_size = positive("intermediate_size", raw.intermediate_size)?;
        let num_hidden_layers = positive("num_hidden_layers", raw.num_hidden_layers)?;
        let num_attention_heads = positive("num_attention_heads", raw.num_attention_heads)?;
        let vocab_size = positive("vocab_size", raw.vocab_size)?;
        let num_key_value_heads = match raw.num_key_value_heads {
            None => num_attention_heads,
            Some(0) => return Err(field("num_key_value_heads", "must be at least 1")),
            Some(n) if num_attention_heads % n != 0 => {
                return Err(field(
                    "num_key_value_heads",
                    format!("{n} does not divide num_attention_heads ({num_attention_heads})"),
                ))
            }
            Some(n) => n,
        };
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden_size % num_attention_heads != 0 => {
                return Err(field(
                    "head_dim",
                    format!(
                        "missing, and hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_attention_heads})"
                    ),
                ))
            }
            None => hidden_size / num_attention_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(field("head_dim", format!("{head_dim}: RoPE needs a positive even head dimension")));
        }
        let max_position_embeddings = positive(
            "max_position_embeddings",
            Some(raw.max_position_embeddings.unwrap_or(defaults.max_position_embeddings)),
        )?;
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(defaults.rms_norm_eps);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(field("rms_norm_eps", format!("{rms_norm_eps} is not a positive number")));
        }
        let rope_theta = raw.rope_theta.unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(field("rope_theta", format!("{rope_theta} is not a positive number")));
        }
        let rope_scaling = match &raw.rope_scaling {
            None => RopeScaling::None,
            Some(map) => parse_rope_scaling(map)?,
        };
        match raw.hidden_act.as_deref() {
            None | Some("silu") => {}
            Some(other) => return Err(field("hidden_act", format!("`{other}` is not supported (supported: silu)"))),
        }
        // As transformers builds the modules: Llama reads both flags; Mistral has no biases;
        // Qwen2 always has q/k/v biases and no other (its config's flags are not read).
        let biases = match architecture {
            Architecture::Llama => {
                let attention = raw.attention_bias.unwrap_or(false);
                Biases { qkv: attention, o: attention, mlp: raw.mlp_bias.unwrap_or(false) }
            }
            Architecture::Mistral => Biases { qkv: false, o: false, mlp: false },
            Architecture::Qwen2 => Biases { qkv: true, o: false, mlp: false },
        };
        let sliding_window = match architecture {
            Architecture::Llama => None,
            // MistralConfig's default window is 4096; null turns it off.
            Architecture::Mistral => raw.sliding_window,
            // Qwen2 applies it only with use_sliding_window (and then, to the layers from
            // max_window_layers on: bounding every sequence by it covers them all).
            Architecture::Qwen2 => raw.sliding_window.filter(|_| raw.use_sliding_window.unwrap_or(false)),
        };
        if sliding_window == Some(0) {
            return Err(field("sliding_window", "must be at least 1 (or null)"));
        }
        Ok(LlmConfig {
            architecture,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            biases,
            sliding_window,
        })
    }

    /// The longest sequence the engine computes exactly as transformers does: the position
    /// limit, and the sliding window when one applies (within it, windowed attention is plain
    /// causal attention).
    pub fn max_seq_len(&self) -> usize {
        self.sliding_window.map_or(self.max_position_embeddings, |w| w.min(self.max_position_embeddings))
    }

    /// `(out_features, in_features)` of a Linear's weight.
    pub fn linear_shape(&self, linear: Linear) -> (usize, usize) {
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        match linear {
            Linear::Q => (q, self.hidden_size),
            Linear::K | Linear::V => (kv, self.hidden_size),
            Linear::O => (self.hidden_size, q),
            Linear::Gate | Linear::Up => (self.intermediate_size, self.hidden_size),
            Linear::Down => (self.hidden_size, self.intermediate_size),
        }
    }

    /// Every tensor of one decoder layer, by its name inside the layer, with its shape.
    pub fn layer_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![("input_layernorm.weight".to_string(), vec![self.hidden_size])];
        for linear in Linear::ALL {
            let (o, i) = self.linear_shape(linear);
            out.push((linear.weight(), vec![o, i]));
            if linear.has_bias(self.biases) {
                out.push((linear.bias(), vec![o]));
            }
        }
        out.push(("post_attention_layernorm.weight".to_string(), vec![self.hidden_size]));
        out
    }

    /// The full names of layer `i`'s Linear weights (`model.layers.{i}.self_attn.q_proj.weight`,
    /// ..., `model.layers.{i}.mlp.down_proj.weight`): the default pruning selection.
    pub fn linear_weight_names(&self, i: usize) -> Vec<String> {
        Linear::ALL.iter().map(|l| format!("{}{}", layer_prefix(i), l.weight())).collect()
    }

    /// [`LlmConfig::linear_weight_names`] of every layer, layer by layer.
    pub fn all_linear_weight_names(&self) -> Vec<String> {
        (0..self.num_hidden_layers).flat_map(|i| self.linear_weight_names(i)).collect()
    }
}

/// `model.layers.{i}.`: what a layer's tensor names start with in the checkpoint.
pub fn layer_prefix(i: usize) -> String {
    format!("model.layers.{i}.")
}

pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

fn positive(name: &'static str, value: Option<usize>) -> Result<usize, ConfigError> {
    match value {
        None => Err(field(name, "missing")),
        Some(0) => Err(field(name, "must be at least 1")),
        Some(v) => Ok(v),
    }
}

fn parse_rope_scaling(map: &serde_json::Map<String, serde_json::Value>) -> Result<RopeScaling, ConfigError> {
    // transformers accepts the legacy `type` key as well as `rope_type`.
    let kind = map.get("rope_type").or_else(|| map.get("type")).and_then(|v| v.as_str());
    let number = |key: &str| -> Result<f64, ConfigError> {
        match map.get(key).and_then(|v| v.as_f64()) {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            Some(v) => Err(field("rope_scaling", format!("{key} = {v} is not a positive number"))),
            None => Err(field("rope_scaling", format!("{key} is missing or not a number"))),
        }
    };
    match kind {
        Some("default") => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear { factor: number("factor")? }),
        Some("llama3") => {
            let (low, high) = (number("low_freq_factor")?, number("high_freq_factor")?);
            if low == high {
                return Err(field("rope_scaling", "low_freq_factor and high_freq_factor must differ"));
            }
            Ok(RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            })
        }
        Some(other) => Err(field(
            "rope_scaling",
            format!("rope_type `{other}` is not supported (supported: default, linear, llama3)"),
        )),
        None => Err(field("rope_scaling", "has no rope_type (or type)")),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
