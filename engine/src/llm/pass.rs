//! The layer-by-layer pass (locuslab/wanda `prune_wanda`, IST-DASLab/sparsegpt
//! `llama_sequential`, llm-compressor's sequential pipeline): the calibration hidden states enter
//! decoder layer i; its Linears' input statistics are gathered over every window; the layer is
//! pruned; its outputs are recomputed with the pruned weights and enter layer i + 1. Only one
//! layer's weights, the activations and one layer's statistics are in memory.
//!
//! Evaluation rides along: its windows go through each layer twice, dense before pruning and
//! pruned after, so dense and pruned perplexity cost one pass over the model.

use std::collections::BTreeMap;
use std::time::Instant;

use prune_core::domain::LinearError;
use prune_core::job::Criterion;
use prune_core::llm::LlmConfig;
use tch::{Kind, Tensor};

use super::model::{Layer, Site};
use super::plan::{Plan, Target};
use super::reconstruction::relative_reconstruction_error;
use super::rope::Rope;
use super::sparsegpt::sparsegpt_prune;
use super::state::{Progress, Streams};
use super::stats::{HessianStats, WandaStats};
use super::wanda::wanda_mask;
use super::weights::Checkpoint;
use crate::EngineError;

/// Bytes of intermediate activations one forward batch may take; windows are batched up to it
/// (attention scores grow with seq_len², so long windows go one at a time).
const BATCH_BYTES: i64 = 256 << 20;

/// Windows per forward batch for windows of `seq_len` tokens.
pub fn batch_windows(config: &LlmConfig, seq_len: i64) -> i64 {
    let per_token = config.num_attention_heads as i64 * seq_len
        + 4 * config.intermediate_size as i64
        + 8 * config.hidden_size as i64;
    (BATCH_BYTES / (per_token * seq_len * 4)).max(1)
}

/// The pass over decoder layers, one at a time.
pub struct Pass<'a> {
    pub config: &'a LlmConfig,
    pub weights: &'a Checkpoint,
    pub plan: &'a Plan,
    pub criterion: Criterion,
    pub calibration_rope: Option<Rope>,
    pub evaluation_rope: Option<Rope>,
}

/// One layer's statistics for one input site.
struct SiteStats {
    wanda: Option<WandaStats>,
    /// SparseGPT's Hessian; for Wanda only the Gram matrix the reconstruction error needs.
    gram: HessianStats,
}

impl Pass<'_> {
    /// Prunes decoder layer `i` in place of `streams` (which then hold layer i's outputs);
    /// returns the pruned weights by full name and adds to `progress`.
    pub fn layer(
        &self,
        i: usize,
        streams: &mut Streams,
        progress: &mut Progress,
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        let started = Instant::now();
        let mut layer = Layer::load(self.weights, self.config, i)?;
        let targets = &self.plan.layers[i];
        // 1. Statistics of every Linear input that feeds a target, window by window in order.
        let mut stats: BTreeMap<Site, SiteStats> = BTreeMap::new();
        if self.criterion.is_calibrated() {
            for site in Site::ALL {
                let Some(target) = targets.iter().find(|t| Site::of(t.linear) == site) else { continue };
                let columns = layer.weight(target.linear).size()[1];
                let wanda = matches!(self.criterion, Criterion::Wanda).then(|| WandaStats::new(columns));
                stats.insert(site, SiteStats { wanda, gram: HessianStats::new(columns) });
            }
            let hidden = streams.calibration.as_ref().expect("a calibrated pass has calibration windows");
            let rope = self.calibration_rope.as_ref().expect("a calibrated pass has its rope");
            let mut failed = None;
            // The dense outputs are not kept: the next layer gets the pruned layer's.
            observe_batches(self.config, &layer, rope, hidden, &mut |site, x| {
                let Some(s) = stats.get_mut(&site) else { return };
                // One window at a time, as the references' batch size of 1 accumulates.
                for w in 0..x.size()[0] {
                    let window = x.get(w);
                    let added = match &mut s.wanda {
                        Some(wanda) => wanda.add_batch(&window).and_then(|()| s.gram.add_batch(&window)),
                        None => s.gram.add_batch(&window),
                    };
                    if let Err(e) = added {
                        failed.get_or_insert((site, e));
                    }
                }
            })?;
            if let Some((site, e)) = failed {
                return Err(EngineError::Model(format!(
                    "model.layers.{i}: the calibration inputs of {} ({e})",
                    site.linears().iter().map(|l| l.module()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        // 2. The evaluation stream through the dense layer (not counted as pruning time).
        let mut evaluating = std::time::Duration::ZERO;
        if let (Some(x), Some(rope)) = (&streams.eval_dense, &self.evaluation_rope) {
            let clock = Instant::now();
            streams.eval_dense = Some(forward_batches(self.config, &layer, rope, x, &mut |_, _| {})?);
            evaluating += clock.elapsed();
        }
        // 3. Prune each target.
        let mut pruned = Vec::with_capacity(targets.len());
        for target in targets {
            let w = layer.weight(target.linear).shallow_clone();
            let site = Site::of(target.linear);
            let new = self.prune(target, &w, stats.get(&site), progress)?;
            if let Some(s) = stats.get(&site) {
                let relative_error = relative_reconstruction_error(&w, &new, s.gram.hessian())
                    .map_err(|e| EngineError::Model(format!("{}: reconstruction error: {e}", target.name)))?;
                progress.reconstruction.push(LinearError {
                    tensor: target.name.clone(),
                    layer: i as u64,
                    relative_error,
                });
            }
            layer.set_weight(target.linear, new.shallow_clone())?;
            pruned.push((target.name.clone(), new));
        }
        drop(stats);
        // 4. Outputs with the pruned weights: the next layer's inputs.
        if let Some(x) = &streams.calibration {
            let rope = self.calibration_rope.as_ref().expect("calibration windows have their rope");
            let out = forward_batches(self.config, &layer, rope, x, &mut |_, _| {})?;
            check_finite(&out, i, "calibration")?;
            streams.calibration = Some(out);
        }
        if let (Some(x), Some(rope)) = (&streams.eval_pruned, &self.evaluation_rope) {
            let clock = Instant::now();
            let out = forward_batches(self.config, &layer, rope, x, &mut |_, _| {})?;
            check_finite(&out, i, "evaluation")?;
            streams.eval_pruned = Some(out);
            evaluating += clock.elapsed();
        }
        progress.layers_done = i + 1;
        progress.prune_seconds += started.elapsed().saturating_sub(evaluating).as_secs_f64();
        Ok(pruned)
    }

    fn prune(
        &self,
        target: &Target,
        w: &Tensor,
        stats: Option<&SiteStats>,
        progress: &mut Progress,
    ) -> Result<Tensor, EngineError> {
        let with_layer = |e: String| EngineError::Model(format!("{}: {e}", target.name));
        Ok(match self.criterion {
            Criterion::Magnitude => {
                let values = Vec::<f32>::try_from(&w.view([-1])).map_err(|e| with_layer(e.to_string()))?;
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(with_layer("holds NaN or infinite values".into()));
                }
                let shape: Vec<usize> = w.size().iter().map(|&d| d as usize).collect();
                let mask = target.rule.method.mask(&values, &shape, target.rule.schedule.final_sparsity());
                w * Tensor::from_slice(&mask).view_as(w)
            }
            Criterion::Wanda => {
                let s = stats.and_then(|s| s.wanda.as_ref()).expect("wanda statistics gathered");
                let mask = wanda_mask(w, s.scaler_row(), target.pattern()).map_err(|e| with_layer(e.to_string()))?;
                w * mask.to_kind(Kind::Float)
            }
            Criterion::SparseGpt { block_size, dampening } => {
                let s = stats.expect("sparsegpt statistics gathered");
                let outcome = sparsegpt_prune(w, s.gram.hessian(), target.pattern(), block_size as i64, dampening)
                    .map_err(|e| with_layer(e.to_string()))?;
                if let Some(warning) = outcome.warning {
                    progress.warnings.push(format!("{}: {warning}", target.name));
                }
                outcome.weight
            }
        })
    }
}

/// Runs `layer` over `x` ([windows, seq_len, hidden]) in batches of windows; returns the
/// outputs, same shape.
fn forward_batches(
    config: &LlmConfig,
    layer: &Layer,
    rope: &Rope,
    x: &Tensor,
    observe: &mut dyn FnMut(Site, &Tensor),
) -> Result<Tensor, EngineError> {
    let batch = batch_windows(config, x.size()[1]);
    let outs: Vec<Tensor> = x.split(batch, 0).iter().map(|b| layer.forward(config, rope, b, &mut *observe)).collect();
    Ok(Tensor::cat(&outs, 0))
}

/// Runs `layer` over `x` in batches only for what `observe` sees: no outputs are kept.
fn observe_batches(
    config: &LlmConfig,
    layer: &Layer,
    rope: &Rope,
    x: &Tensor,
    observe: &mut dyn FnMut(Site, &Tensor),
) -> Result<(), EngineError> {
    let batch = batch_windows(config, x.size()[1]);
    for b in x.split(batch, 0) {
        drop(layer.forward(config, rope, &b, &mut *observe));
    }
    Ok(())
}

fn check_finite(x: &Tensor, layer: usize, what: &str) -> Result<(), EngineError> {
    if bool::try_from(x.isfinite().all()).unwrap_or(false) {
        return Ok(());
    }
    Err(EngineError::Model(format!(
        "model.layers.{layer}: its {what} outputs hold NaN or infinite values (the pruned layer, or the model itself, overflows)"
    )))
}
