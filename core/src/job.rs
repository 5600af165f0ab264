//! The typed job: what `validate::validate` makes of a [`JobSpec`](crate::JobSpec) document.
//!
//! The document (`spec.rs`) is the wire form, field for field as users write it, with strings
//! for the named choices, so that a job with several problems is rejected with all of them at
//! once. A [`Job`] exists only for a document that passed every check: its choices are enums,
//! the pruning method is resolved per rule into a [`PruningMethod`], and the engine works on
//! nothing else.

use crate::compress::Compression;
use crate::method::PruningMethod;
use crate::options::{BuiltinData, Device, ExportFormat, Loss, Optimizer, Scope, SparseFormat};
use crate::schedule::Schedule;
use crate::spec::ModelSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: Option<String>,
    /// Exactly one source is set (checked).
    pub model: ModelSpec,
    /// `None` when the job file has no training data (only allowed for `epochs = 0`).
    pub data: Option<Data>,
    pub training: Training,
    pub pruning: Pruning,
    pub export: Export,
    /// `[sensitivity]`: measure the dense model tensor by tensor instead of pruning it.
    pub sensitivity: Option<Sensitivity>,
    /// `[calibration]`: set exactly when the pruning criterion is calibrated (checked).
    pub calibration: Option<Calibration>,
    /// `[evaluation]`: a language model's perplexity before and after pruning.
    pub evaluation: Option<Evaluation>,
}

/// A checked `[calibration]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub source: TokenSource,
    /// >= 1.
    pub samples: usize,
    /// >= 1; the model's `max_position_embeddings` is checked when the model is read.
    pub seq_len: usize,
    pub seed: u64,
}

/// Where calibration tokens come from: a path (client side) or blob id (server side) of either.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// UTF-8 text, tokenized with the model's `tokenizer.json`.
    Text(String),
    /// A safetensors file with int64 `input_ids` of shape [N, L].
    Tokens(String),
}

/// A checked `[evaluation]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// UTF-8 text: a path (client side) or blob id (server side).
    pub text: String,
    /// >= 1.
    pub seq_len: usize,
    /// >= 1 where set.
    pub max_windows: Option<usize>,
}

/// `pruning.method` resolved: what ranks the weights, with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Criterion {
    /// `|w|`, tfmot's.
    Magnitude,
    /// `|W_ij| * ||X_j||` within each output row (locuslab/wanda).
    Wanda,
    /// Optimal-brain-surgeon pruning with weight updates (IST-DASLab/sparsegpt).
    SparseGpt { block_size: usize, dampening: f64 },
}

impl Criterion {
    /// Whether the criterion needs calibration inputs run through the model.
    pub fn is_calibrated(&self) -> bool {
        !matches!(self, Criterion::Magnitude)
    }

    /// The job file's name for it.
    pub fn name(&self) -> &'static str {
        let named = match self {
            Criterion::Magnitude => crate::options::Criterion::Magnitude,
            Criterion::Wanda => crate::options::Criterion::Wanda,
            Criterion::SparseGpt { .. } => crate::options::Criterion::SparseGpt,
        };
        named.as_str()
    }
}

impl Job {
    /// The levels a budget's (or a sensitivity job's) analysis measures: `[sensitivity]`'s, else
    /// [`BUDGET_LEVELS`].
    pub fn analysis_levels(&self) -> Vec<f64> {
        match &self.sensitivity {
            Some(s) => s.levels.clone(),
            None => BUDGET_LEVELS.to_vec(),
        }
    }
}

/// The levels a budget's analysis measures when the job has no `[sensitivity]` section: fine
/// steps where most models start to break.
pub const BUDGET_LEVELS: [f64; 12] = [0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99];

/// A checked `[sensitivity]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensitivity {
    /// Ascending, distinct, each in (0, 1).
    pub levels: Vec<f64>,
    /// Regexes (checked to compile) narrowing `[pruning]`'s selection.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// In [0, 1]: the per-tensor accuracy drop the suggested overrides allow.
    pub target_accuracy_drop: f64,
}

/// A checked `pruning.budget`: at least one bound is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// >= 1.
    pub max_bytes: Option<u64>,
    /// In [0, 1].
    pub max_accuracy_drop: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub source: DataSource,
    /// The last fraction held out, in `[0, 1)`.
    pub validation_split: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// `data.file`: a local path (client side) or a path the server resolved.
    File(String),
    /// `data.blob`: an uploaded blob id.
    Blob(String),
    /// `data.builtin = "digits"`.
    Digits,
    /// `data.builtin = "synthetic"` with its parameters.
    Synthetic { shape: Vec<i64>, classes: i64, samples: i64 },
}

impl DataSource {
    /// The built-in data set, if this is one.
    pub fn builtin(&self) -> Option<BuiltinData> {
        match self {
            DataSource::Digits => Some(BuiltinData::Digits),
            DataSource::Synthetic { .. } => Some(BuiltinData::Synthetic),
            DataSource::File(_) | DataSource::Blob(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    pub epochs: i64,
    pub batch_size: i64,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    /// SGD's momentum, in `[0, 1)`.
    pub momentum: f64,
    pub weight_decay: f64,
    pub loss: Loss,
    pub seed: u64,
    pub device: Device,
    pub checkpoint_every: i64,
    /// libtorch intra-op threads (0 = the server's default).
    pub threads: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pruning {
    pub schedule: Schedule,
    /// The top-level method (from `block_size`, `block_pooling`, `m_by_n`).
    pub method: PruningMethod,
    /// `Global` implies an element-wise top-level method (checked).
    pub scope: Scope,
    /// Regexes on parameter names (checked to compile).
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub prune_bias: bool,
    /// In job-file order: the first whose pattern matches a parameter name wins.
    pub overrides: Vec<Override>,
    /// The job chooses each tensor's final sparsity to fit it (element-wise or block methods,
    /// layer scope, overrides that set no schedule: checked).
    pub budget: Option<Budget>,
    /// `pruning.method`: calibrated criteria go with element-wise or m-by-n methods, layer
    /// scope, one-shot, a language model and `[calibration]` (checked).
    pub criterion: Criterion,
}

/// One `[[pruning.overrides]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The `match` regex (checked to compile).
    pub pattern: String,
    pub rule: OverrideRule,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OverrideRule {
    /// `skip = true`: matching parameters are not pruned.
    Skip,
    /// Sets nothing: matching parameters get the top-level rule (global ranking included),
    /// and no later override applies to them.
    Inherit,
    /// Its own schedule and method, each inherited from the top level where the override does
    /// not set it; ranked per tensor even under global scope.
    Prune { schedule: Schedule, method: PruningMethod },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// At least one, no duplicates.
    pub formats: Vec<ExportFormat>,
    pub compression: Compression,
    pub sparse_format: SparseFormat,
    /// `export.level` (checked against the codec's range); `None`: by the artifact's size
    /// (`compress::Settings::for_artifact`).
    pub level: Option<i32>,
    /// Cut removed channels out of the artifact's tensors (channel pruning of a built-in model).
    pub slim: bool,
}
