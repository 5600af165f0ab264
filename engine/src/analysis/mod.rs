//! Sensitivity analysis: each selected tensor pruned alone, one-shot, at each level with the
//! job's method, all others dense, and the model scored on validation data (no fine-tuning).
//! A `[sensitivity]` job reports it with a plot and suggested overrides (`artifacts`,
//! `overrides`); a budget job plans its per-tensor sparsities from it (`budget`).

pub mod artifacts;
pub mod budget;
pub mod overrides;

use prune_core::domain::SensitivityPoint;
use prune_core::job::{Job, Pruning, Sensitivity};
use prune_core::options::Loss;
use prune_core::PruningMethod;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::Dataset;
use crate::evaluate::{score, Score};
use crate::inputs::StopFlag;
use crate::masking::{compile, HostValues, Selector};
use crate::model::{Model, NamedParams};
use crate::EngineError;

/// One tensor the analysis prunes, with the job's method for it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    /// Index into the model's parameters.
    pub param: usize,
    pub shape: Vec<usize>,
    pub method: PruningMethod,
    /// Under channel pruning: the `.bias` whose entries go with the weight's output rows.
    pub bias: Option<usize>,
}

/// What an analysis measured: the dense model's score and one point per tensor and level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub dense_loss: f64,
    pub dense_accuracy: Option<f64>,
    pub points: Vec<SensitivityPoint>,
}

impl Analysis {
    /// The cost of a point: accuracy lost against the dense model, or, without accuracy (mse),
    /// the loss gained relative to the dense loss.
    pub fn cost(&self, p: &SensitivityPoint) -> f64 {
        match (self.dense_accuracy, p.accuracy) {
            (Some(dense), Some(acc)) => dense - acc,
            _ => (p.loss - self.dense_loss) / self.dense_loss.abs().max(f64::MIN_POSITIVE),
        }
    }

    /// The points of `tensor`, levels ascending.
    pub fn of<'a>(&'a self, tensor: &'a str) -> impl Iterator<Item = &'a SensitivityPoint> + 'a {
        self.points.iter().filter(move |p| p.tensor == tensor)
    }
}

/// The tensors `[pruning]` selects (its method per tensor, overrides included), narrowed by
/// `[sensitivity]`'s include/exclude.
pub fn probes(
    pruning: &Pruning,
    narrowed: Option<&Sensitivity>,
    params: &NamedParams,
) -> Result<Vec<Probe>, EngineError> {
    let selector = Selector::new(pruning)?;
    let (include, exclude) = match narrowed {
        Some(s) => (compile(&s.include, "sensitivity.include")?, compile(&s.exclude, "sensitivity.exclude")?),
        None => (vec![], vec![]),
    };
    let mut probes = Vec::new();
    for (param, (name, tensor)) in params.iter().enumerate() {
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let Some(rule) = selector.rule(name, &shape, tensor.is_floating_point())? else { continue };
        if (!include.is_empty() && !include.iter().any(|r| r.is_match(name)))
            || exclude.iter().any(|r| r.is_match(name))
        {
            continue;
        }
        let bias = match rule.method {
            PruningMethod::Channel { .. } => name
                .strip_suffix("weight")
                .map(|stem| format!("{stem}bias"))
                .and_then(|b| params.iter().position(|(n, t)| *n == b && t.size() == [shape[0] as i64])),
            _ => None,
        };
        probes.push(Probe { name: name.clone(), param, shape, method: rule.method, bias });
    }
    if probes.is_empty() {
        return Err(EngineError::Spec(
            "sensitivity: no tensor is selected (check [pruning]'s and [sensitivity]'s include/exclude)".into(),
        ));
    }
    Ok(probes)
}

/// A `[sensitivity]` job's analysis of the model as it is now (at training step `step`): the
/// selected tensors measured at the job's levels on `data`.
pub fn measure(
    job: &Job,
    model: &mut Model,
    data: &Dataset,
    step: i64,
    stop: &StopFlag,
) -> Result<(Vec<Probe>, Analysis), EngineError> {
    let probes = probes(&job.pruning, job.sensitivity.as_ref(), model.params())?;
    let found = analyse(model, &probes, &job.analysis_levels(), data, job.training.loss, step, stop)?;
    Ok((probes, found))
}

/// `w *= mask` (no grad); returns the mask as a tensor shaped like `w`.
fn multiply_in_place(w: &Tensor, mask: &[f32]) -> Tensor {
    let m = Tensor::from_slice(mask).reshape(w.size()).to_device(w.device());
    tch::no_grad(|| {
        let _ = w.shallow_clone().g_mul_(&m);
    });
    m
}

/// The levels one probe is measured at: m-by-n ignores the level (one point at m/n).
fn levels_of(method: PruningMethod, levels: &[f64]) -> Vec<f64> {
    match method {
        PruningMethod::MByN { m, n } => vec![m as f64 / n as f64],
        _ => levels.to_vec(),
    }
}

/// Measures every probe at every level on `data` (at training step `step`); the model's
/// weights are as they were after.
/// Deterministic (no random numbers, eval mode), so an attempt resumed after a crash measures
/// the same values.
pub fn analyse(
    model: &mut Model,
    probes: &[Probe],
    levels: &[f64],
    data: &Dataset,
    loss: Loss,
    step: i64,
    stop: &StopFlag,
) -> Result<Analysis, EngineError> {
    let dense = score(model, data, loss)?;
    let mut points = Vec::new();
    for probe in probes {
        let weight = model.params()[probe.param].1.shallow_clone();
        let original = weight.detach().copy();
        let bias = probe.bias.map(|b| model.params()[b].1.shallow_clone());
        let original_bias = bias.as_ref().map(|b| b.detach().copy());
        let values = HostValues::of(&original)?;
        for level in levels_of(probe.method, levels) {
            if let Some(reason) = stop.requested() {
                // Nothing is saved mid-analysis (the last checkpoint stands): it is measured
                // again, identically, on resume.
                return Err(EngineError::Stopped { step, reason });
            }
            let mask = probe.method.mask(values.as_slice(), &probe.shape, level as f32);
            let removed = mask.iter().filter(|&&m| m == 0.0).count() as u64;
            let mask_tensor = multiply_in_place(&weight, &mask);
            tch::no_grad(|| {
                if let Some(b) = &bias {
                    // A channel's bias entry goes with its weights' output row.
                    let rows = mask_tensor.reshape([probe.shape[0] as i64, -1]).amax(1, false);
                    let _ = b.shallow_clone().g_mul_(&rows);
                }
            });
            let Score { loss: l, accuracy } = score(model, data, loss)?;
            points.push(SensitivityPoint {
                tensor: probe.name.clone(),
                sparsity: level,
                accuracy,
                loss: l,
                params_removed: removed,
            });
            tch::no_grad(|| {
                weight.shallow_clone().copy_(&original);
                if let (Some(b), Some(o)) = (&bias, &original_bias) {
                    b.shallow_clone().copy_(o);
                }
            });
        }
    }
    Ok(Analysis { dense_loss: dense.loss, dense_accuracy: dense.accuracy, points })
}
