//! The layer-by-layer pass (locuslab/wanda `prune_wanda`, IST-DASLab/sparsegpt
//! `llama_sequential`, llm-compressor's sequential pipeline): the calibration hidden states enter
//! decoder layer i; its Linears' input statistics are gathered over every window; the layer is
//! pruned; its outputs are recomputed with the pruned weights and enter layer i + 1. Only one
//! layer's weights, the activations and one layer's statistics are in memory.
//!
//! Evaluation rides along: its windows go through each layer twice, dense before pruning and
//! pruned after, so dense and pruned perplexity cost one pass over the model.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prune_core::domain::LinearError;
use prune_core::job::Criterion;
use prune_core::llm::{Linear, LlmConfig};
use tch::{Kind, Tensor};

use super::model::{Layer, Observer, Site, Unobserved};
use super::plan::{Plan, Target};
use super::reconstruction::{output_difference, output_energy, relative_error, squared_error, Inputs};
use super::rope::Rope;
use super::sparsegpt::sparsegpt_prune;
use super::state::{Progress, Streams};
use super::stats::{GramStats, HessianStats, StatsError, WandaStats};
use super::wanda::wanda_mask;
use super::weights::Checkpoint;
use crate::EngineError;

/// Bytes of intermediate activations one forward batch may take; windows are batched up to it
/// (attention scores grow with seq_len², so long windows go one at a time). Larger batches did
/// not run faster, and they set the worker's peak memory.
const BATCH_BYTES: i64 = 128 << 20;

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

/// Bytes of calibration inputs a site may keep for the reconstruction error instead of
/// accumulating their Gram matrix (where that costs less: [`keeps_inputs`]).
const KEPT_INPUT_BYTES: i64 = 256 << 20;

/// One layer's statistics for one input site.
struct SiteStats {
    wanda: Option<WandaStats>,
    errors: ErrorInputs,
}

/// What the site's reconstruction errors are computed from.
enum ErrorInputs {
    /// SparseGPT's Hessian, window by window in the reference's running average.
    Hessian(HessianStats),
    /// A Gram matrix, a batch of windows at a time.
    Gram(GramStats),
    /// The inputs themselves.
    Kept(Vec<Tensor>),
    /// Nothing here: the pruned layer sees this site's inputs again (no target comes before it
    /// in the forward pass), so its targets' dense outputs are kept and compared with the
    /// pruned outputs while the next layer's inputs are computed ([`Replay`]).
    Replayed,
}

impl SiteStats {
    /// `None`: the errors come from the replay.
    fn error_inputs(&self) -> Option<Inputs<'_>> {
        match &self.errors {
            ErrorInputs::Hessian(h) => Some(Inputs::Gram { matrix: h.hessian(), scale: 2.0 / h.nsamples() as f64 }),
            ErrorInputs::Gram(g) => Some(Inputs::Gram { matrix: g.gram(), scale: 1.0 }),
            ErrorInputs::Kept(x) => Some(Inputs::Stored(x)),
            ErrorInputs::Replayed => None,
        }
    }

    fn add(&mut self, x: &Tensor) -> Result<(), StatsError> {
        if let Some(wanda) = &mut self.wanda {
            wanda.add_windows(x)?;
        }
        match &mut self.errors {
            // One window at a time, as the references' batch size of 1 accumulates.
            ErrorInputs::Hessian(h) => (0..x.size()[0]).try_for_each(|w| h.add_batch_unchecked(&x.get(w))),
            ErrorInputs::Gram(g) => g.add_batch(x),
            ErrorInputs::Kept(kept) => {
                kept.push(x.shallow_clone());
                Ok(())
            }
            ErrorInputs::Replayed => Ok(()),
        }
    }

    /// Whether every input was finite, from the statistics they made (checking each input
    /// took as long as a fifth of the forward pass).
    fn check(&self) -> Result<(), StatsError> {
        if let Some(wanda) = &self.wanda {
            wanda.check()?;
        }
        match &self.errors {
            ErrorInputs::Hessian(h) => h.check(),
            // Made of the same inputs as the Wanda statistic.
            ErrorInputs::Gram(_) | ErrorInputs::Kept(_) | ErrorInputs::Replayed => Ok(()),
        }
    }
}

/// Whether a Wanda site keeps its `tokens` inputs of `columns` values for the reconstruction
/// errors of Linears with `outputs` rows in all: multiplying them by `W - Ŵ` costs
/// `tokens * outputs * columns`, the Gram matrix and its traces `(tokens + outputs) * columns²`
/// (down_proj, with fewer outputs than inputs, gains most).
fn keeps_inputs(tokens: i64, columns: i64, outputs: i64) -> bool {
    tokens * outputs < (tokens + outputs) * columns && tokens * columns * 4 <= KEPT_INPUT_BYTES
}

/// Whether a site's targets, `outputs` rows in all, keep their dense outputs over `tokens`
/// calibration tokens for the replay (a subtraction instead of a Gram matrix or a product).
fn keeps_outputs(tokens: i64, outputs: i64) -> bool {
    tokens * outputs * 4 <= KEPT_INPUT_BYTES
}

/// What the dense layer shows while it runs over the calibration windows: each site's
/// statistics, and `||W X||²` of each target from its output.
struct Gather<'a> {
    layer: &'a Layer,
    stats: BTreeMap<Site, SiteStats>,
    /// By `Linear as usize`; `None`: not a target.
    energy: [Option<f64>; Linear::ALL.len()],
    /// By `Linear as usize`, batch by batch; `Some` for the targets of replayed sites.
    outputs: [Option<Vec<Tensor>>; Linear::ALL.len()],
    failed: Option<(Site, String)>,
    /// Time spent here rather than in the forward pass.
    spent: Duration,
}

impl Observer for Gather<'_> {
    fn input(&mut self, site: Site, x: &Tensor) {
        let Some(s) = self.stats.get_mut(&site) else { return };
        let clock = Instant::now();
        if self.failed.is_none() {
            if let Err(e) = s.add(x) {
                self.failed = Some((site, e.to_string()));
            }
        }
        self.spent += clock.elapsed();
    }

    fn output(&mut self, linear: Linear, y: &Tensor) {
        if let Some(kept) = self.outputs[linear as usize].as_mut() {
            kept.push(y.shallow_clone());
        }
        let Some(energy) = self.energy[linear as usize].as_mut() else { return };
        let clock = Instant::now();
        match output_energy(y, self.layer.bias(linear)) {
            Ok(e) => *energy += e,
            Err(e) => {
                self.failed.get_or_insert((Site::of(linear), e.to_string()));
            }
        }
        self.spent += clock.elapsed();
    }
}

/// What the pruned layer shows while it computes the next layer's inputs: `||W X - Ŵ X||²` of
/// the replayed targets, from the dense outputs [`Gather`] kept, batch by batch in the same
/// order.
struct Replay {
    dense: [Option<Vec<Tensor>>; Linear::ALL.len()],
    batches_seen: [usize; Linear::ALL.len()],
    squared: [f64; Linear::ALL.len()],
    failed: Option<(Linear, String)>,
    spent: Duration,
}

impl Observer for Replay {
    fn output(&mut self, linear: Linear, y: &Tensor) {
        let Some(dense) = self.dense[linear as usize].as_ref() else { return };
        let clock = Instant::now();
        let batch = self.batches_seen[linear as usize];
        self.batches_seen[linear as usize] += 1;
        let difference = match dense.get(batch) {
            Some(d) => output_difference(d, y).map_err(|e| e.to_string()),
            None => Err(format!("the pruned pass ran more batches than the {} dense ones", dense.len())),
        };
        match difference {
            Ok(squared) => self.squared[linear as usize] += squared,
            Err(e) => {
                self.failed.get_or_insert((linear, e));
            }
        }
        self.spent += clock.elapsed();
    }
}

impl Replay {
    /// Each replayed target's `||W X - Ŵ X||²`, once every batch has been compared.
    fn finish(self) -> Result<[Option<f64>; Linear::ALL.len()], (Linear, String)> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        let mut out = [None; Linear::ALL.len()];
        for linear in Linear::ALL {
            let Some(dense) = &self.dense[linear as usize] else { continue };
            let seen = self.batches_seen[linear as usize];
            if seen != dense.len() {
                return Err((linear, format!("the pruned pass ran {seen} batches, the dense one {}", dense.len())));
            }
            out[linear as usize] = Some(self.squared[linear as usize]);
        }
        Ok(out)
    }
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
        // 1. Statistics of every Linear input that feeds a target, window by window in order,
        // and each target's dense output energy.
        let mut energy = None;
        let mut stats = BTreeMap::new();
        let mut dense_outputs: [Option<Vec<Tensor>>; Linear::ALL.len()] = std::array::from_fn(|_| None);
        let mut observing = Duration::ZERO;
        // The pruned layer runs over the calibration windows again unless it is the last.
        let replays = i + 1 < self.config.num_hidden_layers;
        if self.criterion.is_calibrated() {
            let hidden = streams.calibration.as_ref().expect("a calibrated pass has calibration windows");
            let rope = self.calibration_rope.as_ref().expect("a calibrated pass has its rope");
            let tokens = hidden.size()[0] * hidden.size()[1];
            let mut gather = Gather {
                layer: &layer,
                stats: BTreeMap::new(),
                energy: [None; Linear::ALL.len()],
                outputs: std::array::from_fn(|_| None),
                failed: None,
                spent: Duration::ZERO,
            };
            // Site::ALL is in forward order: a site after a target sees other inputs once
            // that target is pruned.
            let mut after_target = false;
            for site in Site::ALL {
                let at_site: Vec<&Target> = targets.iter().filter(|t| Site::of(t.linear) == site).collect();
                let Some(first) = at_site.first() else { continue };
                let columns = layer.weight(first.linear).size()[1];
                let outputs: i64 = at_site.iter().map(|t| layer.weight(t.linear).size()[0]).sum();
                let (wanda, errors) = match self.criterion {
                    Criterion::SparseGpt { .. } => (None, ErrorInputs::Hessian(HessianStats::new(columns))),
                    _ if replays && !after_target && keeps_outputs(tokens, outputs) => {
                        (Some(WandaStats::new(columns)), ErrorInputs::Replayed)
                    }
                    _ if keeps_inputs(tokens, columns, outputs) => {
                        (Some(WandaStats::new(columns)), ErrorInputs::Kept(Vec::new()))
                    }
                    _ => (Some(WandaStats::new(columns)), ErrorInputs::Gram(GramStats::new(columns))),
                };
                let replayed = matches!(errors, ErrorInputs::Replayed);
                gather.stats.insert(site, SiteStats { wanda, errors });
                for t in at_site {
                    gather.energy[t.linear as usize] = Some(0.0);
                    if replayed {
                        gather.outputs[t.linear as usize] = Some(Vec::new());
                    }
                }
                after_target = true;
            }
            // The dense outputs are not kept: the next layer gets the pruned layer's.
            observe_batches(self.config, &layer, rope, hidden, &mut gather)?;
            let failed = gather
                .failed
                .or_else(|| gather.stats.iter().find_map(|(site, s)| s.check().err().map(|e| (*site, e.to_string()))));
            if let Some((site, e)) = failed {
                return Err(EngineError::Model(format!(
                    "model.layers.{i}: the calibration inputs of {} ({e})",
                    site.linears().iter().map(|l| l.module()).collect::<Vec<_>>().join(", ")
                )));
            }
            energy = Some(gather.energy);
            stats = gather.stats;
            dense_outputs = gather.outputs;
            observing = gather.spent;
        }
        let gathered = started.elapsed();
        // 2. The evaluation stream through the dense layer (not counted as pruning time).
        let mut evaluating = Duration::ZERO;
        if let (Some(x), Some(rope)) = (&streams.eval_dense, &self.evaluation_rope) {
            let clock = Instant::now();
            streams.eval_dense = Some(forward_batches(self.config, &layer, rope, x, &mut Unobserved)?);
            evaluating += clock.elapsed();
        }
        let dense_evaluation = evaluating;
        // 3. Prune each target.
        let mut pruned = Vec::with_capacity(targets.len());
        let mut measuring = Duration::ZERO;
        // By target; `None` until the replay measures it.
        let mut squared_errors: Vec<Option<f64>> = Vec::with_capacity(targets.len());
        for target in targets {
            let w = layer.weight(target.linear).shallow_clone();
            let site = Site::of(target.linear);
            let new = self.prune(target, &w, stats.get(&site), progress)?;
            let clock = Instant::now();
            let inputs = stats.get(&site).and_then(SiteStats::error_inputs);
            squared_errors.push(match inputs {
                Some(inputs) => Some(squared_error(&w, &new, inputs).map_err(|e| reconstruction_failed(target, e))?),
                None => None,
            });
            measuring += clock.elapsed();
            layer.set_weight(target.linear, new.shallow_clone())?;
            pruned.push((target.name.clone(), new));
        }
        drop(stats);
        let selected = started.elapsed();
        // 4. Outputs with the pruned weights: the next layer's inputs (after the last layer,
        // nothing needs the calibration stream).
        if i + 1 == self.config.num_hidden_layers {
            streams.calibration = None;
        }
        let mut replay = Replay {
            dense: dense_outputs,
            batches_seen: [0; Linear::ALL.len()],
            squared: [0.0; Linear::ALL.len()],
            failed: None,
            spent: Duration::ZERO,
        };
        if let Some(x) = &streams.calibration {
            let rope = self.calibration_rope.as_ref().expect("calibration windows have their rope");
            let out = forward_batches(self.config, &layer, rope, x, &mut replay)?;
            check_finite(&out, i, "calibration")?;
            streams.calibration = Some(out);
        }
        measuring += replay.spent;
        if let Some(energy) = &energy {
            let replayed = replay.finish().map_err(|(linear, e)| {
                EngineError::Model(format!("model.layers.{i}.{}: reconstruction error: {e}", linear.module()))
            })?;
            for (target, squared) in targets.iter().zip(squared_errors) {
                let squared = squared.or(replayed[target.linear as usize]).expect("every target's error is measured");
                let dense_energy = energy[target.linear as usize].expect("every target's energy is summed");
                let ratio = relative_error(squared, dense_energy).map_err(|e| reconstruction_failed(target, e))?;
                progress.reconstruction.push(LinearError {
                    tensor: target.name.clone(),
                    layer: i as u64,
                    relative_error: ratio,
                });
            }
        }
        if let (Some(x), Some(rope)) = (&streams.eval_pruned, &self.evaluation_rope) {
            let clock = Instant::now();
            let out = forward_batches(self.config, &layer, rope, x, &mut Unobserved)?;
            check_finite(&out, i, "evaluation")?;
            streams.eval_pruned = Some(out);
            evaluating += clock.elapsed();
        }
        progress.layers_done = i + 1;
        let took = started.elapsed();
        progress.prune_seconds += took.saturating_sub(evaluating).as_secs_f64();
        tracing::debug!(
            layer = i,
            statistics_s = gathered.as_secs_f64(),
            observing_s = observing.as_secs_f64(),
            errors_s = measuring.as_secs_f64(),
            pruning_s = selected.saturating_sub(gathered + dense_evaluation).as_secs_f64(),
            outputs_s = took.saturating_sub(selected + evaluating - dense_evaluation).as_secs_f64(),
            evaluation_s = evaluating.as_secs_f64(),
            "layer pruned (seconds by phase: statistics = forward + observing; errors: the reconstruction errors, within pruning and outputs)"
        );
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
                let ErrorInputs::Hessian(h) = &s.errors else { unreachable!("sparsegpt gathers Hessians") };
                let outcome = sparsegpt_prune(w, h.hessian(), target.pattern(), block_size as i64, dampening)
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
    observe: &mut dyn Observer,
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
    observe: &mut dyn Observer,
) -> Result<(), EngineError> {
    let batch = batch_windows(config, x.size()[1]);
    for b in x.split(batch, 0) {
        drop(layer.forward(config, rope, &b, &mut *observe));
    }
    Ok(())
}

fn reconstruction_failed(target: &Target, e: super::reconstruction::ReconstructionError) -> EngineError {
    EngineError::Model(format!("{}: reconstruction error: {e}", target.name))
}

fn check_finite(x: &Tensor, layer: usize, what: &str) -> Result<(), EngineError> {
    if bool::try_from(x.isfinite().all()).unwrap_or(false) {
        return Ok(());
    }
    Err(EngineError::Model(format!(
        "model.layers.{layer}: its {what} outputs hold NaN or infinite values (the pruned layer, or the model itself, overflows)"
    )))
}
