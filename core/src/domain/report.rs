use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// One value of a time series: `sparsity/<param>`, `loss`, `accuracy`, `val_loss`, `val_accuracy`,
/// `learning_rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: i64,
    pub name: String,
    pub value: f64,
}

/// The sparsity of one pruned parameter, as 1 - mean(mask).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSparsity {
    /// PyTorch's dotted name (`0.weight`).
    pub name: String,
    pub sparsity: f64,
}

/// One exported file of a finished job, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// `safetensors` or `torchscript`.
    pub format: String,
    /// Where it lies in the file store (`artifacts/<job>/<file>`).
    pub key: String,
    /// `none`, `gzip` or `zstd`: how the stored file is compressed.
    pub compression: String,
    /// `dense` or `bitmask`.
    pub sparse_format: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<i64>,
    pub pruned: bool,
    pub numel: u64,
    pub nonzero: u64,
    pub sparsity: f64,
}

/// What a finished job pruned and what it saves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Report {
    pub tensors: Vec<TensorReport>,
    /// Bytes of the dense f32 safetensors file of the stripped weights.
    pub dense_bytes: u64,
    /// gzip of that file: the size measure tfmot's guide uses. 0 when not measured (a dense
    /// model over `compress::GZIP_REPORT_MAX`): gzip output is never empty.
    pub gzip_dense_bytes: u64,
    /// Artifact bytes by format.
    #[serde(deserialize_with = "map_or_pairs")]
    pub artifact_bytes: BTreeMap<String, u64>,
    /// Validation (or training, without a split) accuracy/loss of the final stripped model.
    pub final_val_accuracy: Option<f64>,
    pub final_val_loss: Option<f64>,
    /// The same before any pruning step (the dense warm-up's last epoch, or the input model).
    pub dense_val_accuracy: Option<f64>,
    pub steps: i64,
    /// Measured inference latency, dense against pruned, one entry per batch size (reports
    /// stored before it existed read back empty).
    #[serde(default)]
    pub inference: Vec<InferenceTiming>,
    /// Why no inference was measured, when none was (a state dict has no forward pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_note: Option<String>,
    /// Channel pruning (`pruning.structure = "channel"`): layer shapes, parameters and FLOPs
    /// before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Box<ChannelReport>>,
    /// A sensitivity analysis (`[sensitivity]` or a budget's): each selected tensor pruned alone,
    /// one-shot, at each level, tensor by tensor in model order, levels ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitivity: Vec<SensitivityPoint>,
    /// `[[pruning.overrides]]` TOML that keeps each analysed tensor within
    /// `sensitivity.target_accuracy_drop` (also the job's `suggested_overrides` artifact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_overrides: Option<String>,
    /// `pruning.budget`: what was chosen and whether it was met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Box<BudgetReport>>,
    /// A language model pruned layer by layer (docs/language-models.md): perplexity, each
    /// Linear's reconstruction error, the calibration it ran on, the worker's peak memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_model: Option<Box<LanguageModelReport>>,
    /// A bitmask export's weights stored dense because their packed form would be larger
    /// (little or no sparsity); compressed-tensors reads them as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_dense: Vec<String>,
}

/// What pruning did to a language model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LanguageModelReport {
    /// `pruning.method`: `magnitude`, `wanda` or `sparsegpt`.
    pub method: String,
    /// The config's `architectures[0]`.
    pub architecture: String,
    /// Decoder layers pruned (all of them, on success).
    pub layers: u64,
    /// Calibration windows and their length (0 for magnitude, which reads none).
    pub calibration_samples: u64,
    pub calibration_seq_len: u64,
    /// `[evaluation]`: perplexity of the dense and the pruned model on the same windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<Perplexity>,
    /// Per pruned Linear, in model order: `||WX - ŴX||² / ||WX||²` on the calibration inputs
    /// that reached it (through the already pruned layers before it). Empty for magnitude.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconstruction: Vec<LinearError>,
    /// The worker process's peak resident memory (VmHWM) when pruning ended.
    pub peak_memory_bytes: u64,
    /// Wall-clock seconds of the layer-by-layer pass (calibration statistics, pruning,
    /// recomputing outputs), evaluation excluded.
    pub prune_seconds: f64,
    /// What the engine did that the user should know (a Hessian that needed the identity
    /// fallback, a calibration text that had to wrap around, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Perplexity = exp(mean token negative log-likelihood) over `windows` non-overlapping windows of
/// `seq_len` tokens of the evaluation text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Perplexity {
    pub dense: f64,
    pub pruned: f64,
    pub seq_len: u64,
    pub windows: u64,
}

/// One pruned Linear's relative reconstruction error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearError {
    /// The weight's name (`model.layers.3.mlp.down_proj.weight`).
    pub tensor: String,
    /// Its decoder layer.
    pub layer: u64,
    pub relative_error: f64,
}

/// One tensor pruned alone at one level, all others dense, no fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityPoint {
    /// PyTorch's dotted name.
    pub tensor: String,
    /// The level (the exact fraction of the tensor's weights zeroed may differ by rounding: it
    /// is `params_removed / numel`).
    pub sparsity: f64,
    /// Validation accuracy; `None` under the mse loss.
    pub accuracy: Option<f64>,
    pub loss: f64,
    /// Weights the level's mask zeroes.
    pub params_removed: u64,
}

/// How a budget was met: the sparsity chosen per tensor and the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BudgetReport {
    pub max_bytes: Option<u64>,
    pub max_accuracy_drop: Option<f64>,
    /// The final sparsity chosen per pruned tensor (after any further pruning), model order.
    pub chosen: Vec<ChosenSparsity>,
    /// The size the budget is checked on: the first exported format's file.
    pub format: String,
    pub artifact_bytes: u64,
    /// Validation accuracy of the dense model the analysis measured, and of the result.
    pub dense_accuracy: Option<f64>,
    pub accuracy: Option<f64>,
    /// Validation loss of that dense model (the result's is the report's `final_val_loss`).
    /// Absent from reports written before it was kept.
    #[serde(default)]
    pub dense_loss: Option<f64>,
    /// Tensors pruned beyond the plan after fine-tuning (one-shot steps), to meet `max_bytes`
    /// or, with only an accuracy budget, while the accuracy allowed.
    pub further_steps: u32,
    /// What the job did, in sentences (the plan, any further pruning).
    pub notes: Vec<String>,
}

/// One tensor's sparsity under a budget: planned from the analysis, then final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChosenSparsity {
    pub tensor: String,
    pub planned: f64,
    pub sparsity: f64,
}

/// What channel pruning removed, layer by layer, and what it saves in parameters and FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ChannelReport {
    pub layers: Vec<LayerChannels>,
    /// Elements of the state dict (parameters and buffers), dense and in the artifact's model.
    pub params_before: u64,
    pub params_after: u64,
    /// FLOPs of one sample's forward pass (2 x the multiply-accumulates of conv2d and linear
    /// layers); `None` without a known input shape or for a user model.
    pub flops_before: Option<u64>,
    pub flops_after: Option<u64>,
    /// Whether the artifact holds the slim tensors (`export.slim`).
    pub slim: bool,
    /// Why the channels are only zeroed (a user model: no layer graph is known), if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One layer whose channels channel pruning touched (or could have).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerChannels {
    /// The module path (`0`, `3.layers.0`, `3.projection`) or a user model's weight name.
    pub layer: String,
    /// `conv2d`, `linear`, `batchnorm`, `projection` or `tensor`.
    pub kind: String,
    pub shape_before: Vec<i64>,
    pub shape_after: Vec<i64>,
    /// Output channels removed, as indices into the dense layer's outputs, ascending.
    pub removed: Vec<i64>,
}

/// `Report::inference_note` of a model with nothing to run.
pub const NO_FORWARD_PASS: &str = "no inference measured: a safetensors state dict has no forward pass";

/// The median latency of one forward pass (eval mode, no gradients) on the job's device and
/// threads, of the model as the job started and of the pruned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceTiming {
    pub batch_size: i64,
    pub dense_ms: f64,
    pub pruned_ms: f64,
    /// `dense_ms / pruned_ms`.
    pub speedup: f64,
    /// Timed runs of each model.
    pub runs: u32,
}

/// Reports stored before the map form wrote `artifact_bytes` as `[[format, bytes], ...]`; both
/// read back.
fn map_or_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Map(BTreeMap<String, u64>),
        Pairs(Vec<(String, u64)>),
    }
    Ok(match Form::deserialize(d)? {
        Form::Map(map) => map,
        Form::Pairs(pairs) => pairs.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_stored_with_artifact_pairs_still_read() {
        let old = r#"{"tensors":[],"dense_bytes":10,"gzip_dense_bytes":5,"artifact_bytes":[["safetensors",3]],
            "final_val_accuracy":null,"final_val_loss":null,"dense_val_accuracy":0.5,"steps":7}"#;
        let report: Report = serde_json::from_str(old).unwrap();
        assert_eq!(report.artifact_bytes.get("safetensors"), Some(&3));
        assert!(report.inference.is_empty() && report.inference_note.is_none());
        let again: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(again, report);
    }
}
