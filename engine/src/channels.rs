//! Channel pruning on a loaded model: which channel spaces are pruned and with which rule, the
//! channels each keeps (scored on the live weights), the masks that follow from them, and the
//! slim model with the removed channels cut out. The numerics and the dependency graph are
//! `prune_core::channels`; this module binds them to the model's tensors.

use std::collections::HashMap;

use prune_core::channels::{self, ChannelGraph};
use prune_core::domain::{ChannelReport, LayerChannels};
use prune_core::job::Pruning;
use prune_core::options::ChannelScore;
use prune_core::spec::LayerSpec;
use prune_core::Schedule;
use tch::{Kind, Tensor};

use crate::masking::{HostValues, Selector};
use crate::model::{Model, NamedParams};
use crate::EngineError;

/// The model's channel spaces, the rule of each pruned one and the channels each keeps now.
pub struct ChannelPlan {
    pub graph: ChannelGraph,
    /// Per space: its schedule and whether it is ranked globally; `None`: not pruned.
    rules: Vec<Option<SpaceRule>>,
    score: ChannelScore,
    /// Per space: which channels are kept (all, until its first recompute).
    keep: Vec<Vec<bool>>,
}

#[derive(Debug, Clone, Copy)]
struct SpaceRule {
    schedule: Schedule,
    global: bool,
}

/// Why a user model's channels are only zeroed.
pub const USER_MODEL_NOTE: &str = "a TorchScript or state-dict model has no layer graph the engine can follow: channels are zeroed (weight rows and their bias), not cut out, and the next layers' inputs are left as they are; `removed` lists what could be cut";

impl ChannelPlan {
    /// The plan of `model`: a built-in model's dependency graph (`layers`), otherwise one space
    /// per selected weight. A space is pruned when every weight producing it is selected
    /// (include/exclude/skip); it takes its first producer's schedule.
    pub fn new(spec: &Pruning, model: &Model, layers: Option<&[LayerSpec]>) -> Result<ChannelPlan, EngineError> {
        let prune_core::PruningMethod::Channel { score } = spec.method else {
            return Err(EngineError::Spec("channel plan for a job that does not prune channels".into()));
        };
        let selector = Selector::new(spec)?;
        let params = model.params();
        let shapes: HashMap<&str, (Vec<usize>, bool)> = params
            .iter()
            .map(|(n, t)| (n.as_str(), (t.size().iter().map(|&d| d as usize).collect(), t.is_floating_point())))
            .collect();
        let rule_of = |name: &str| -> Result<Option<SpaceRule>, EngineError> {
            let Some((shape, floating)) = shapes.get(name) else { return Ok(None) };
            Ok(selector.rule(name, shape, *floating)?.map(|r| SpaceRule { schedule: r.schedule, global: r.global }))
        };
        let graph = match (model, layers) {
            (Model::Sequential(_), Some(layers)) => ChannelGraph::of_sequential(layers),
            _ => {
                let listed: Vec<(String, Vec<usize>)> =
                    params.iter().map(|(n, t)| (n.clone(), t.size().iter().map(|&d| d as usize).collect())).collect();
                let mut selected = std::collections::HashSet::new();
                // Only weights of rank >= 2 have channels; a bias an `include` matches follows its weight.
                for (name, _) in listed.iter().filter(|(_, shape)| shape.len() >= 2) {
                    if rule_of(name)?.is_some() {
                        selected.insert(name.clone());
                    }
                }
                ChannelGraph::of_tensors(&listed, |n| selected.contains(n))
            }
        };
        let mut rules = Vec::with_capacity(graph.spaces.len());
        for space in &graph.spaces {
            let mut rule = None;
            if space.pinned.is_none() && space.channels > 0 {
                let found = space.producers.iter().map(|p| rule_of(p)).collect::<Result<Vec<_>, _>>()?;
                if found.iter().all(Option::is_some) {
                    rule = found.into_iter().next().flatten();
                }
            }
            rules.push(rule);
        }
        let keep = graph.spaces.iter().map(|s| vec![true; s.channels]).collect();
        Ok(ChannelPlan { graph, rules, score, keep })
    }

    /// The parameters that carry a pruned space's channels, in the model's order, with the
    /// schedule of the space they produce (else the first they follow).
    pub fn masked_params(&self, params: &NamedParams) -> Vec<(usize, Schedule, bool)> {
        let mut by_name: HashMap<&str, (Schedule, bool, bool)> = HashMap::new();
        for (space, rule) in self.graph.spaces.iter().zip(&self.rules) {
            let Some(rule) = rule else { continue };
            for m in &space.members {
                let produces = m.dim == 0 && space.producers.contains(&m.tensor);
                let entry = by_name.entry(m.tensor.as_str()).or_insert((rule.schedule, rule.global, produces));
                if produces && !entry.2 {
                    *entry = (rule.schedule, rule.global, true);
                }
            }
        }
        params
            .iter()
            .enumerate()
            .filter_map(|(i, (n, _))| by_name.get(n.as_str()).map(|&(s, g, _)| (i, s, g)))
            .collect()
    }

    /// Whether any pruned space recomputes its channels before training step `step`.
    pub fn due(&self, step: i64) -> bool {
        self.rules.iter().flatten().any(|r| r.schedule.should_prune(step))
    }

    /// Re-chooses the channels of the spaces due at `step` (all of them, at their final
    /// sparsity, for `None`: one-shot) from the live weights.
    pub fn recompute(&mut self, step: Option<i64>, params: &NamedParams) -> Result<(), EngineError> {
        let index: HashMap<&str, usize> = params.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
        let due = |r: &SpaceRule| step.is_none_or(|s| r.schedule.should_prune(s));
        let sparsity = |r: &SpaceRule| match step {
            Some(s) => r.schedule.sparsity(s),
            None => r.schedule.final_sparsity(),
        };
        let mut global: Vec<usize> = Vec::new();
        let mut global_sparsity = 0.0;
        for s in 0..self.graph.spaces.len() {
            let Some(rule) = self.rules[s] else { continue };
            if !due(&rule) {
                continue;
            }
            if rule.global {
                global.push(s);
                global_sparsity = sparsity(&rule);
            } else {
                let scores = self.scores(s, params, &index)?;
                self.keep[s] = channels::keep_channels(&scores, sparsity(&rule));
            }
        }
        if !global.is_empty() {
            let scores = global.iter().map(|&s| self.scores(s, params, &index)).collect::<Result<Vec<_>, _>>()?;
            for (s, keep) in global.iter().zip(channels::keep_channels_global(&scores, global_sparsity)) {
                self.keep[*s] = keep;
            }
        }
        Ok(())
    }

    /// The mean over a space's producers of each channel's weight-row norm.
    fn scores(&self, s: usize, params: &NamedParams, index: &HashMap<&str, usize>) -> Result<Vec<f32>, EngineError> {
        let space = &self.graph.spaces[s];
        let mut sum = vec![0f64; space.channels];
        for p in &space.producers {
            let i = *index.get(p.as_str()).ok_or_else(|| EngineError::Model(format!("no parameter {p}")))?;
            let values = HostValues::of(&params[i].1)?;
            for (acc, score) in
                sum.iter_mut().zip(channels::channel_scores(values.as_slice(), space.channels, self.score))
            {
                *acc += f64::from(score);
            }
        }
        let n = space.producers.len().max(1) as f64;
        Ok(sum.into_iter().map(|v| (v / n) as f32).collect())
    }

    /// The 0/1 mask of tensor `name` of `shape`: every pruned space's removed channels zeroed.
    pub fn mask_of(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        let mut mask = vec![1.0; shape.iter().product()];
        for (space, keep) in self.pruned_spaces() {
            for m in space.members.iter().filter(|m| m.tensor == name) {
                channels::zero_removed(&mut mask, shape, m.dim, m.group, keep);
            }
        }
        mask
    }

    /// After a resume: each pruned space's kept channels, read back from its first producer's
    /// restored mask (a removed channel's row is all zeros, a kept one's is not).
    pub fn restore_keep(&mut self, name_mask: &dyn Fn(&str) -> Option<Tensor>) -> Result<(), EngineError> {
        for s in 0..self.graph.spaces.len() {
            if self.rules[s].is_none() {
                continue;
            }
            let producer = &self.graph.spaces[s].producers[0];
            let mask =
                name_mask(producer).ok_or_else(|| EngineError::Checkpoint(format!("no mask saved for {producer}")))?;
            let rows = mask.size()[0];
            let kept =
                mask.reshape([rows, -1]).to_device(tch::Device::Cpu).abs().sum_dim_intlist(1, false, Kind::Float);
            let kept: Vec<f32> = Vec::<f32>::try_from(kept)?;
            self.keep[s] = kept.into_iter().map(|v| v > 0.0).collect();
        }
        Ok(())
    }

    fn pruned_spaces(&self) -> impl Iterator<Item = (&channels::Space, &Vec<bool>)> {
        self.graph.spaces.iter().zip(&self.keep).zip(&self.rules).filter(|(_, r)| r.is_some()).map(|(sk, _)| sk)
    }

    /// Channels kept per space (every channel of a space that is not pruned).
    pub fn kept_counts(&self) -> Vec<usize> {
        self.keep.iter().map(|k| k.iter().filter(|&&x| x).count()).collect()
    }

    /// `t` with every pruned space's removed channels cut out along their dims.
    pub fn slim_tensor(&self, name: &str, t: &Tensor) -> Result<Tensor, EngineError> {
        let mut t = t.detach();
        for (space, keep) in self.pruned_spaces() {
            for m in space.members.iter().filter(|m| m.tensor == name) {
                if keep.iter().all(|&k| k) {
                    continue;
                }
                let index = Tensor::from_slice(&channels::kept_indices(keep, m.group)).to_device(t.device());
                t = t.f_index_select(m.dim as i64, &index)?;
            }
        }
        Ok(t.contiguous())
    }

    /// The shape [`Self::slim_tensor`] gives `name` of `shape`, without cutting anything.
    fn slim_shape(&self, name: &str, shape: &[i64]) -> Vec<i64> {
        let mut shape = shape.to_vec();
        for (space, keep) in self.pruned_spaces() {
            for m in space.members.iter().filter(|m| m.tensor == name) {
                shape[m.dim] = channels::kept_indices(keep, m.group).len() as i64;
            }
        }
        shape
    }

    /// The state dict with removed channels cut out: what a slim artifact holds.
    pub fn slim_state(&self, state: &NamedParams) -> Result<NamedParams, EngineError> {
        state.iter().map(|(n, t)| Ok((n.clone(), self.slim_tensor(n, t)?))).collect()
    }

    /// The report: each layer's weight shape before and after cutting, the channels removed,
    /// parameters and (for a built-in model with a known input shape) FLOPs before and after.
    pub fn report(
        &self,
        state: &NamedParams,
        layers: Option<&[LayerSpec]>,
        input_shape: Option<&[i64]>,
        slim: bool,
    ) -> Result<ChannelReport, EngineError> {
        let shapes: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut rows = Vec::new();
        for link in &self.graph.layers {
            let Some(t) = shapes.get(link.weight.as_str()) else { continue };
            let removed = match link.space {
                Some(s) if self.rules[s].is_some() => {
                    self.keep[s].iter().enumerate().filter(|(_, &k)| !k).map(|(c, _)| c as i64).collect()
                }
                _ => Vec::new(),
            };
            rows.push(LayerChannels {
                layer: link.layer.clone(),
                kind: link.kind.to_string(),
                shape_before: t.size(),
                shape_after: self.slim_shape(&link.weight, &t.size()),
                removed,
            });
        }
        let count = |shape: &[i64]| shape.iter().product::<i64>() as u64;
        let params_before = state.iter().map(|(_, t)| count(&t.size())).sum();
        let params_after = state.iter().map(|(n, t)| count(&self.slim_shape(n, &t.size()))).sum();
        let (flops_before, flops_after) = match (layers, input_shape) {
            (Some(layers), Some(shape)) => {
                let slim_layers = self.graph.slim_layers(layers, &self.kept_counts());
                (channels::flops(layers, shape), channels::flops(&slim_layers, shape))
            }
            _ => (None, None),
        };
        Ok(ChannelReport {
            layers: rows,
            params_before,
            params_after,
            flops_before,
            flops_after,
            slim,
            note: layers.is_none().then(|| USER_MODEL_NOTE.to_string()),
        })
    }
}
