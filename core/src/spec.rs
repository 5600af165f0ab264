//! The job spec document: the TOML job file of `docs/job-spec.md`, field for field, and its
//! JSON form. This is the wire form: the named choices (`optimizer`, `scope`, ...) stay strings
//! here so that `validate::validate` can report every problem at once, with its field path, as
//! it parses a document into the typed [`Job`](crate::job::Job) (enums in `crate::options`,
//! the pruning method resolved into a [`PruningMethod`](crate::method::PruningMethod)). Only
//! the typed form is run.
//!
//! Field names are a contract shared with the gRPC `JobSpec` and outside clients: extend, never rename.
//! `deny_unknown_fields` everywhere, so a typo is an error naming the field instead of a silent default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// The fields that reference files, by their job-file path: a local path (client side) or a
/// `sha256:` blob id (server side). The one list every crate uses.
/// A sharded model's shards are references too: `model.shards.<file name>` (see
/// [`JobSpec::blob_refs`]).
pub const FILE_REFERENCE_FIELDS: [&str; 7] = [
    "model.blob",
    "model.weights",
    "model.index",
    "data.blob",
    "calibration.text",
    "calibration.tokens",
    "evaluation.text",
];

/// The model directory's file that makes a model a language model the engine runs
/// (`model.files`): its Hugging Face `config.json`.
pub use crate::sharded::CONFIG_FILE;
/// The tokenizer the engine reads calibration and evaluation text with (`model.files`).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Required by every job document; a tracked run's leaves it out (`validate::parse_tracked`).
    pub model: ModelSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSpec>,
    #[serde(default)]
    pub training: TrainingSpec,
    pub pruning: PruningSpec,
    #[serde(default)]
    pub export: ExportSpec,
    /// Extension: a sensitivity analysis (docs/sensitivity.md). With it the job trains (or
    /// takes) the model dense and measures each selected tensor pruned alone at each level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<SensitivitySpec>,
    /// Extension: what a calibrated method (`pruning.method = "wanda" | "sparsegpt"`) runs the
    /// language model on (docs/language-models.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSpec>,
    /// Extension: the language model's perplexity before and after pruning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
}

/// `[calibration]`: exactly one of `text` (read with the model's `tokenizer.json`) or `tokens`
/// (a safetensors file with int64 `input_ids` [N, L]); each a local path on the client, a
/// `sha256:` blob id on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<String>,
    /// Windows of `seq_len` tokens drawn from the token stream.
    #[serde(default = "default_calibration_samples")]
    pub samples: i64,
    #[serde(default = "default_seq_len")]
    pub seq_len: i64,
    /// Seeds where the windows start.
    #[serde(default)]
    pub seed: u64,
}

impl Default for CalibrationSpec {
    fn default() -> Self {
        CalibrationSpec {
            text: None,
            tokens: None,
            samples: default_calibration_samples(),
            seq_len: default_seq_len(),
            seed: 0,
        }
    }
}

/// `[evaluation]`: perplexity over non-overlapping `seq_len` windows of `text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// A local path on the client, a `sha256:` blob id on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Unset: `calibration.seq_len` where there is a `[calibration]`, else 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<i64>,
    /// At most this many windows (the first ones); unset: every whole window of the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_windows: Option<i64>,
}

/// `pruning.sparsegpt`: SparseGPT's own settings (IST-DASLab/sparsegpt's `blocksize`, `percdamp`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseGptSpec {
    /// Columns updated together (the lazy batch of the OBS updates).
    #[serde(default = "default_sparsegpt_block")]
    pub block_size: i64,
    /// Added to the Hessian's diagonal, as a fraction of its mean.
    #[serde(default = "default_dampening")]
    pub dampening: f64,
}

impl Default for SparseGptSpec {
    fn default() -> Self {
        SparseGptSpec { block_size: default_sparsegpt_block(), dampening: default_dampening() }
    }
}

/// `[sensitivity]`: which tensors are measured at which sparsities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitivitySpec {
    /// Sparsities in (0, 1), each measured one-shot per tensor.
    #[serde(default = "default_levels")]
    pub levels: Vec<f64>,
    /// Regexes on parameter names narrowing `[pruning]`'s selection (empty: all of it).
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The accuracy drop (fraction) the suggested overrides allow each tensor.
    #[serde(default = "default_target_accuracy_drop")]
    pub target_accuracy_drop: f64,
}

impl Default for SensitivitySpec {
    fn default() -> Self {
        SensitivitySpec {
            levels: default_levels(),
            include: vec![],
            exclude: vec![],
            target_accuracy_drop: default_target_accuracy_drop(),
        }
    }
}

/// `pruning.budget`: what the pruned model must fit; the job chooses per-tensor sparsities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// The exported artifact (the first of `export.formats`, as configured) in bytes at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
    /// Validation accuracy at most this much (a fraction) below the dense model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accuracy_drop: Option<f64>,
}

/// Exactly one of `file`, `blob`, `sequential`, `dir`, `index` (checked by validation, not by
/// serde, so the error names the fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<Vec<LayerSpec>>,
    /// Optional initial weights (safetensors, PyTorch `nn.Sequential` names) for `sequential`:
    /// a local path (client side) or a `sha256:` blob id (server side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// A Hugging Face style sharded safetensors checkpoint on the client: a directory holding
    /// `model.safetensors.index.json` and the shards it names. `prunectl submit` uploads the
    /// index and every shard and replaces `dir` with `index` and `shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// A sharded checkpoint on the server: the blob id of its `model.safetensors.index.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// With `index`: each shard's file name, as the index names it, and its blob id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<BTreeMap<String, String>>,
    /// A Hugging Face model directory's other files on the server (`config.json`,
    /// `tokenizer.json`, `generation_config.json`, ...): file name -> blob id. With a
    /// `config.json` the model is a language model (docs/language-models.md); `prunectl submit`
    /// fills it from `dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
}

impl ModelSpec {
    /// Whether the model is a sharded checkpoint (`dir` on the client, `index` on the server).
    pub fn is_sharded(&self) -> bool {
        self.dir.is_some() || self.index.is_some()
    }

    /// Whether the model is a Hugging Face directory with a `config.json` (on the server: in
    /// `files`; on the client `dir` may still hold one, which `prunectl submit` finds).
    pub fn has_config(&self) -> bool {
        self.files.as_ref().is_some_and(|f| f.contains_key(CONFIG_FILE))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Linear {
        #[serde(rename = "in")]
        in_features: i64,
        #[serde(rename = "out")]
        out_features: i64,
        #[serde(default = "default_true")]
        bias: bool,
    },
    Conv2d {
        #[serde(rename = "in")]
        in_channels: i64,
        #[serde(rename = "out")]
        out_channels: i64,
        kernel: i64,
        #[serde(default = "default_one")]
        stride: i64,
        #[serde(default)]
        padding: i64,
        #[serde(default = "default_true")]
        bias: bool,
    },
    Relu,
    Tanh,
    Sigmoid,
    Maxpool2d {
        kernel: i64,
    },
    Flatten,
    Dropout {
        p: f64,
    },
    Reshape {
        shape: Vec<i64>,
    },
    /// `torch.nn.BatchNorm1d(features)`: inputs `[N, features]` or `[N, features, L]`.
    Batchnorm1d {
        features: i64,
    },
    /// `torch.nn.BatchNorm2d(features)`: inputs `[N, features, H, W]`.
    Batchnorm2d {
        features: i64,
    },
    /// `torch.nn.AvgPool2d(kernel, stride)`; `stride` defaults to `kernel`, as in PyTorch.
    Avgpool2d {
        kernel: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<i64>,
    },
    /// Mean over height and width: `[N, C, H, W] -> [N, C]`.
    GlobalAvgpool,
    /// `output = projection(input) + layers(input)` (the identity without a projection). Its
    /// parameters are named `<index>.layers.<j>.*` and `<index>.projection.*`.
    Residual {
        layers: Vec<LayerSpec>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        projection: Option<ProjectionSpec>,
    },
}

/// A residual block's shortcut: `torch.nn.Conv2d(in, out, kernel_size=1, stride=stride,
/// bias=bias)`, for blocks that change the channel count or the resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    #[serde(rename = "in")]
    pub in_channels: i64,
    #[serde(rename = "out")]
    pub out_channels: i64,
    #[serde(default = "default_one")]
    pub stride: i64,
    #[serde(default = "default_true")]
    pub bias: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// `digits` or `synthetic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// `synthetic`: per-sample shape, e.g. `[1, 28, 28]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    /// `synthetic`: number of classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<i64>,
    /// `synthetic`: number of samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<i64>,
    #[serde(default)]
    pub validation_split: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSpec {
    pub epochs: i64,
    pub batch_size: i64,
    pub optimizer: String,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub loss: String,
    pub seed: u64,
    pub device: String,
    pub checkpoint_every: i64,
    /// Extension: libtorch intra-op threads for this job (0 = the server's default). Recorded
    /// with the job so that a resumed attempt computes with the same thread count.
    pub threads: i64,
    /// Extension: wall-clock seconds the job may run, from its first start (0 = no limit).
    /// Beyond it the worker writes a last checkpoint and the job FAILS, saying so.
    pub max_runtime_secs: i64,
    /// Extension: worker crashes this job survives (0 = the server's --max-attempts, which is
    /// also the most it may ask for).
    pub max_attempts: i64,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        TrainingSpec {
            epochs: 0,
            batch_size: 32,
            optimizer: "adam".into(),
            learning_rate: 0.001,
            momentum: 0.0,
            weight_decay: 0.0,
            loss: "cross_entropy".into(),
            seed: 0,
            device: "cpu".into(),
            checkpoint_every: 100,
            threads: 0,
            max_runtime_secs: 0,
            max_attempts: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruningSpec {
    pub schedule: Schedule,
    #[serde(default = "default_block")]
    pub block_size: [i64; 2],
    #[serde(default = "default_pooling")]
    pub block_pooling: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m_by_n: Option<[i64; 2]>,
    #[serde(default = "default_scope")]
    pub scope: String,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub prune_bias: bool,
    #[serde(default)]
    pub overrides: Vec<OverrideSpec>,
    /// `element` (default) or `channel`: whole output channels of conv2d / neurons of linear.
    #[serde(default = "default_structure", skip_serializing_if = "is_default_structure")]
    pub structure: String,
    /// With `structure = "channel"`: `l2` (default) or `l1` norm of a channel's weights.
    #[serde(default = "default_channel_score", skip_serializing_if = "is_default_channel_score")]
    pub channel_score: String,
    /// Extension: a size and/or accuracy budget; the job picks each tensor's final sparsity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// `magnitude` (default: `|w|`, tfmot's), `wanda` or `sparsegpt` (language models, one-shot,
    /// with `[calibration]`).
    #[serde(default = "default_method", skip_serializing_if = "is_default_method")]
    pub method: String,
    /// With `method = "sparsegpt"`: its block size and dampening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsegpt: Option<SparseGptSpec>,
}

impl Default for PruningSpec {
    fn default() -> Self {
        PruningSpec {
            schedule: Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: 0, end_step: -1, frequency: 100 },
            block_size: default_block(),
            block_pooling: default_pooling(),
            m_by_n: None,
            scope: default_scope(),
            include: vec![],
            exclude: vec![],
            prune_bias: false,
            overrides: vec![],
            structure: default_structure(),
            channel_score: default_channel_score(),
            budget: None,
            method: default_method(),
            sparsegpt: None,
        }
    }
}

/// `[[pruning.overrides]]`: the first whose `match` regex matches a parameter name wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub skip: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<[i64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_pooling: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m_by_n: Option<[i64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSpec {
    pub formats: Vec<String>,
    pub compression: String,
    pub sparse_format: String,
    /// The codec's level (zstd 1-19, gzip 1-9); unset: chosen by the artifact's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<i64>,
    /// With channel pruning of a `model.sequential`: export the physically smaller model (the
    /// removed channels cut out of every tensor that depends on them).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub slim: bool,
}

impl Default for ExportSpec {
    fn default() -> Self {
        ExportSpec {
            formats: vec!["safetensors".into()],
            compression: "zstd".into(),
            sparse_format: "dense".into(),
            level: None,
            slim: false,
        }
    }
}

impl JobSpec {
    /// The blob ids the spec references, with their field paths ([`FILE_REFERENCE_FIELDS`],
    /// then `model.shards.<file name>` for each shard).
    pub fn blob_refs(&self) -> Vec<(String, &str)> {
        let data_blob = self.data.as_ref().and_then(|d| d.blob.as_deref());
        let m = &self.model;
        let calibration = self.calibration.as_ref();
        let fixed = FILE_REFERENCE_FIELDS
            .into_iter()
            .zip([
                m.blob.as_deref(),
                m.weights.as_deref(),
                m.index.as_deref(),
                data_blob,
                calibration.and_then(|c| c.text.as_deref()),
                calibration.and_then(|c| c.tokens.as_deref()),
                self.evaluation.as_ref().and_then(|e| e.text.as_deref()),
            ])
            .filter_map(|(field, id)| id.map(|id| (field.to_string(), id)));
        let shards = m.shards.iter().flatten().map(|(name, id)| (format!("model.shards.{name}"), id.as_str()));
        let files = m.files.iter().flatten().map(|(name, id)| (format!("model.files.{name}"), id.as_str()));
        fixed.chain(shards).chain(files).collect()
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> i64 {
    1
}
fn default_block() -> [i64; 2] {
    [1, 1]
}
fn default_pooling() -> String {
    "avg".into()
}
fn default_scope() -> String {
    "layer".into()
}
fn default_structure() -> String {
    "element".into()
}
fn is_default_structure(s: &str) -> bool {
    s == "element"
}
fn default_method() -> String {
    "magnitude".into()
}
fn is_default_method(s: &str) -> bool {
    s == "magnitude"
}
fn default_calibration_samples() -> i64 {
    128
}
fn default_seq_len() -> i64 {
    2048
}
fn default_sparsegpt_block() -> i64 {
    128
}
fn default_dampening() -> f64 {
    0.01
}
fn default_channel_score() -> String {
    "l2".into()
}
fn is_default_channel_score(s: &str) -> bool {
    s == "l2"
}
/// `[sensitivity]` without `levels`.
pub const DEFAULT_SENSITIVITY_LEVELS: [f64; 5] = [0.5, 0.7, 0.8, 0.9, 0.95];
fn default_levels() -> Vec<f64> {
    DEFAULT_SENSITIVITY_LEVELS.to_vec()
}
fn default_target_accuracy_drop() -> f64 {
    0.01
}
