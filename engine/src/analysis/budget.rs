//! `pruning.budget`: at the schedule's first pruning step (after the dense warm-up) the job
//! analyses the model, plans each pruned tensor's final sparsity (`prune_core::budget`) and
//! scales its schedule to it; after fine-tuning it checks the artifact and prunes further,
//! one-shot, where the budget asks for it (see `docs/sensitivity.md`).

use prune_core::budget::{self, Bounds, Curve, Step};
use prune_core::domain::{BudgetReport, ChosenSparsity};
use prune_core::job::{Budget, Job};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{Analysis, Probe};
use crate::data::Dataset;
use crate::evaluate::score;
use crate::export;
use crate::inputs::StopFlag;
use crate::masking::{HostValues, Masks};
use crate::model::Model;
use crate::EngineError;

/// The highest sparsity further pruning goes to, beyond the analysed levels.
pub const MAX_SPARSITY: f64 = 0.99;

/// What the budget decided at the first pruning step; stored in checkpoints, so a resumed
/// attempt prunes towards the same targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub analysis: Analysis,
    /// The planned final sparsity per mask target, in target order.
    pub planned: Vec<f64>,
    /// Estimated artifact bytes of the plan (before fine-tuning).
    pub estimated_bytes: u64,
}

impl Plan {
    /// Every target's schedule ends at its planned sparsity (same shape and steps).
    pub fn apply(&self, masks: &mut Masks) -> Result<(), EngineError> {
        if self.planned.len() != masks.targets.len() {
            return Err(EngineError::Checkpoint(format!(
                "the checkpoint's budget plans {} tensors, the job prunes {}",
                self.planned.len(),
                masks.targets.len()
            )));
        }
        for (t, &s) in masks.targets.iter_mut().zip(&self.planned) {
            t.schedule = t.schedule.with_final_sparsity(s);
        }
        Ok(())
    }
}

/// The analysis's probes: exactly the mask targets.
fn probes(masks: &Masks) -> Vec<Probe> {
    masks
        .targets
        .iter()
        .map(|t| Probe { name: t.name.clone(), param: t.param, shape: t.shape.clone(), method: t.method, bias: None })
        .collect()
}

/// Each target's measured curve.
fn curves(analysis: &Analysis, masks: &Masks) -> Vec<Curve> {
    masks
        .targets
        .iter()
        .map(|t| Curve {
            numel: t.shape.iter().product::<usize>() as u64,
            points: analysis.of(&t.name).map(|p| (p.sparsity, analysis.cost(p))).collect(),
        })
        .collect()
}

/// The budget's bounds as the planner takes them.
fn bounds(b: &Budget) -> Bounds {
    Bounds { max_bytes: b.max_bytes, max_cost: b.max_accuracy_drop }
}

/// Measures artifact sizes: the job's first export format, exactly as configured
/// ([`export::stored_size`], in memory).
pub struct Sizer<'a> {
    pub job: &'a Job,
    pub example: Option<&'a Tensor>,
}

impl Sizer<'_> {
    /// The artifact bytes of the model as it is now.
    pub fn bytes(&self, model: &Model) -> Result<u64, EngineError> {
        let scratch = tempfile::tempdir().map_err(|e| EngineError::Export(format!("scratch directory: {e}")))?;
        export::stored_size(&self.job.export, model, self.example, scratch.path())
    }

    /// The artifact bytes with each target one-shot pruned to `sparsity` from the current
    /// weights; the weights are restored after.
    fn bytes_at(&self, model: &Model, masks: &Masks, sparsity: &[f64]) -> Result<u64, EngineError> {
        let params = model.params();
        let saved: Vec<Tensor> = masks.targets.iter().map(|t| params[t.param].1.detach().copy()).collect();
        for (t, &s) in masks.targets.iter().zip(sparsity) {
            prune_in_place(&params[t.param].1, t.method, &t.shape, s)?;
        }
        let bytes = self.bytes(model);
        tch::no_grad(|| {
            for (t, w) in masks.targets.iter().zip(&saved) {
                params[t.param].1.shallow_clone().copy_(w);
            }
        });
        bytes
    }
}

/// `w *= method's mask at sparsity` (no grad); returns the mask's values.
fn prune_in_place(
    w: &Tensor,
    method: prune_core::PruningMethod,
    shape: &[usize],
    sparsity: f64,
) -> Result<Vec<f32>, EngineError> {
    let mask = {
        let host = HostValues::of(w)?;
        method.mask(host.as_slice(), shape, sparsity as f32)
    };
    let _ = super::multiply_in_place(w, &mask);
    Ok(mask)
}

/// The budget's decision at training step `step`: the current (dense) model analysed on
/// `data`, each target's final sparsity planned, and the targets' schedules scaled to it.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    budget: &Budget,
    job: &Job,
    model: &mut Model,
    masks: &mut Masks,
    data: &Dataset,
    step: i64,
    stop: &StopFlag,
    sizer: &Sizer,
) -> Result<Plan, EngineError> {
    let found = super::analyse(model, &probes(masks), &job.analysis_levels(), data, job.training.loss, step, stop)?;
    let plan = plan(found, budget, model, masks, sizer)?;
    plan.apply(masks)?;
    Ok(plan)
}

/// Plans the targets' sparsities from `analysis` (run on the current, dense weights).
fn plan(analysis: Analysis, budget: &Budget, model: &Model, masks: &Masks, sizer: &Sizer) -> Result<Plan, EngineError> {
    let curves = curves(&analysis, masks);
    let order = budget::greedy_order(&curves);
    // Size is linear in the weights kept, near enough for a plan (the check after fine-tuning
    // measures exactly): two exact measurements, dense and everything at its top level.
    let top: Vec<f64> = curves.iter().map(|c| c.points.last().map_or(0.0, |p| p.0)).collect();
    let dense_bytes = sizer.bytes_at(model, masks, &vec![0.0; curves.len()])?;
    let top_bytes = sizer.bytes_at(model, masks, &top)?;
    let kept = |s: &[f64]| curves.iter().zip(s).map(|(c, &s)| c.numel as f64 * (1.0 - s)).sum::<f64>();
    let (kept_dense, kept_top) = (kept(&vec![0.0; curves.len()]), kept(&top));
    let estimate = |s: &[f64]| -> u64 {
        if kept_dense <= kept_top {
            return dense_bytes;
        }
        let f = (kept(s) - kept_top) / (kept_dense - kept_top);
        (top_bytes as f64 + f * (dense_bytes as f64 - top_bytes as f64)).round().max(0.0) as u64
    };
    let planned = budget::plan(&curves, &order, bounds(budget), estimate);
    let estimated_bytes = estimate(&planned);
    Ok(Plan { analysis, planned, estimated_bytes })
}

/// After fine-tuning: measures the artifact and prunes further, one-shot, along the plan's
/// greedy order (then every tensor to [`MAX_SPARSITY`], largest first) while the budget asks
/// for it: until `max_bytes` is met, then, with `max_accuracy_drop`, while the measured
/// accuracy stays within it (a step that breaks it is undone and its tensor left as is).
/// Fails when `max_bytes` cannot be met.
#[allow(clippy::too_many_arguments)]
pub fn refine(
    plan: &Plan,
    budget: &Budget,
    job: &Job,
    model: &mut Model,
    masks: &mut Masks,
    data: &Dataset,
    sizer: &Sizer,
) -> Result<BudgetReport, EngineError> {
    let curves = curves(&plan.analysis, masks);
    let mut steps: Vec<(usize, f64)> = budget::greedy_order(&curves)
        .into_iter()
        .map(|Step { tensor, level }| (tensor, curves[tensor].points[level].0))
        .collect();
    let mut by_size: Vec<usize> = (0..curves.len()).collect();
    by_size.sort_by_key(|&t| std::cmp::Reverse(curves[t].numel));
    steps.extend(by_size.into_iter().map(|t| (t, MAX_SPARSITY)));

    let mut current: Vec<f64> = masks.sparsities()?.iter().map(|s| s.sparsity).collect();
    let mut bytes = sizer.bytes(model)?;
    let tuned_bytes = bytes;
    let dense_accuracy = plan.analysis.dense_accuracy;
    let within_drop = |acc: Option<f64>| match (budget.max_accuracy_drop, dense_accuracy, acc) {
        (Some(max), Some(dense), Some(acc)) => dense - acc <= max + 1e-12,
        _ => true,
    };
    let mut notes = vec![format!(
        "planned from a sensitivity analysis of {} tensors at {} levels: estimated {} bytes before fine-tuning",
        curves.len(),
        curves.iter().map(|c| c.points.len()).max().unwrap_or(0),
        plan.estimated_bytes
    )];
    let mut frozen = vec![false; curves.len()];
    let mut further = 0u32;
    let size_met = |b: u64| budget.max_bytes.is_none_or(|max| b <= max);
    for (t, level) in steps {
        if size_met(bytes) && budget.max_accuracy_drop.is_none() {
            break;
        }
        // A level the mask already has (up to one weight of rounding) is no step.
        if frozen[t] || level <= current[t] + 1.0 / curves[t].numel.max(1) as f64 {
            continue;
        }
        let target = &masks.targets[t];
        let param = model.params()[target.param].1.shallow_clone();
        let saved = param.detach().copy();
        let mask = prune_in_place(&param, target.method, &target.shape, level)?;
        let trial_bytes = sizer.bytes(model)?;
        // A step the size needs is taken whatever it costs: only the others are scored.
        let needed = !size_met(bytes);
        if needed || within_drop(score(model, data, job.training.loss)?.accuracy) {
            masks.set_mask(t, mask)?;
            current[t] = level;
            bytes = trial_bytes;
            further += 1;
        } else {
            tch::no_grad(|| param.shallow_clone().copy_(&saved));
            frozen[t] = true;
        }
    }
    if further > 0 {
        notes.push(format!(
            "after fine-tuning the artifact was {tuned_bytes} bytes; {further} one-shot step(s) pruned further ({}), to {bytes} bytes",
            match budget.max_bytes {
                Some(max) if tuned_bytes > max => format!("to meet max_bytes = {max}"),
                _ => "while the validation accuracy stayed within max_accuracy_drop".to_string(),
            }
        ));
    }
    if let Some(max) = budget.max_bytes {
        if bytes > max {
            return Err(EngineError::Budget(format!(
                "pruning.budget.max_bytes = {max} cannot be met: the smallest {} artifact reached is {bytes} bytes, with every pruned tensor at sparsity {MAX_SPARSITY} (prune more tensors: include/exclude, prune_bias; or another sparse_format or compression)",
                job.export.formats[0]
            )));
        }
    }
    // The model as it ends (an undone step restored it bitwise).
    let accuracy = score(model, data, job.training.loss)?.accuracy;
    if let (Some(max), Some(dense), Some(acc)) = (budget.max_accuracy_drop, dense_accuracy, accuracy) {
        if dense - acc > max + 1e-12 {
            notes.push(format!(
                "validation accuracy {acc:.4} is {:.4} below the dense {dense:.4}, more than max_accuracy_drop = {max}{}",
                dense - acc,
                if budget.max_bytes.is_some() { ": max_bytes came first" } else { "" }
            ));
        }
    }
    Ok(BudgetReport {
        max_bytes: budget.max_bytes,
        max_accuracy_drop: budget.max_accuracy_drop,
        chosen: masks
            .targets
            .iter()
            .zip(&plan.planned)
            .zip(&current)
            .map(|((t, &planned), &sparsity)| ChosenSparsity { tensor: t.name.clone(), planned, sparsity })
            .collect(),
        format: job.export.formats[0].as_str().to_string(),
        artifact_bytes: bytes,
        dense_accuracy,
        accuracy,
        dense_loss: Some(plan.analysis.dense_loss),
        further_steps: further,
        notes,
    })
}
