//! Which parameters are pruned, with which rule, and their masks: tfmot's wrapper logic
//! (recompute on schedule, multiply before every batch) over the numerics of `prune_core::mask`.

use prune_core::job::Pruning;
use prune_core::mask;
use prune_core::{PruningMethod, Schedule};
use regex::Regex;
use tch::{Device, Kind, Tensor};

use crate::channels::ChannelPlan;
use crate::events::TensorSparsity;
use crate::model::{Model, NamedParams};
use crate::EngineError;

/// One pruned parameter and its rule.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Index into the model's parameters.
    pub param: usize,
    pub shape: Vec<usize>,
    pub schedule: Schedule,
    /// Owns the mask computation and when it is due.
    pub method: PruningMethod,
    /// Ranked together with the other global targets (scope = global, no override).
    pub global: bool,
}

/// `patterns` compiled, an error naming `field[i]` for one that does not.
pub(crate) fn compile(patterns: &[String], field: &str) -> Result<Vec<Regex>, EngineError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Regex::new(p).map_err(|e| EngineError::Spec(format!("{field}[{i}]: {}", e.to_string().replace('\n', " "))))
        })
        .collect()
}

pub use prune_core::select::Rule;

/// prune-core's selection (`prune_core::select`, which the Python package shares), with its
/// errors as the engine's.
pub struct Selector<'a>(prune_core::select::Selector<'a>);

impl<'a> Selector<'a> {
    pub fn new(spec: &'a Pruning) -> Result<Selector<'a>, EngineError> {
        prune_core::select::Selector::new(spec).map(Selector).map_err(|e| EngineError::Spec(e.to_string()))
    }

    /// The rule of tensor `name`, or `None` when it is not pruned (`prune_core::select`).
    pub fn rule(&self, name: &str, shape: &[usize], floating: bool) -> Result<Option<Rule>, EngineError> {
        self.0.rule(name, shape, floating).map_err(|e| EngineError::Spec(e.to_string()))
    }
}

/// Selects the pruned parameters of a loaded model by [`Selector::rule`].
pub fn select_targets(spec: &Pruning, params: &NamedParams) -> Result<Vec<Target>, EngineError> {
    let selector = Selector::new(spec)?;
    let mut targets = Vec::new();
    for (index, (name, tensor)) in params.iter().enumerate() {
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        if let Some(Rule { schedule, method, global }) = selector.rule(name, &shape, tensor.is_floating_point())? {
            targets.push(Target { name: name.clone(), param: index, shape, schedule, method, global });
        }
    }
    Ok(targets)
}

/// The masks of all targets; masks start as all-ones.
pub struct Masks {
    pub targets: Vec<Target>,
    masks: Vec<Tensor>,
    /// Host memory behind CPU masks: the mask tensors borrow it (`from_blob`) instead of
    /// copying 4 bytes per weight again. A buffer is only replaced after its tensor.
    buffers: Vec<Vec<f32>>,
    /// A mask that is still all-ones needs no multiply.
    active: Vec<bool>,
    /// Channel pruning: the masks follow the plan's kept channels, not each tensor's own values.
    channels: Option<ChannelPlan>,
}

impl Masks {
    pub fn new(targets: Vec<Target>, params: &NamedParams) -> Masks {
        let masks = targets.iter().map(|t| params[t.param].1.ones_like().set_requires_grad(false)).collect();
        let active = vec![false; targets.len()];
        let buffers = vec![Vec::new(); targets.len()];
        Masks { targets, masks, buffers, active, channels: None }
    }

    /// The masks of a job: per tensor by [`select_targets`], or, under channel pruning, every
    /// tensor that carries a pruned channel space of [`ChannelPlan`] (`layers`: the built-in
    /// model's spec, whose dependency graph it follows). Nothing selected is an error.
    pub fn select(
        spec: &Pruning,
        model: &Model,
        layers: Option<&[prune_core::spec::LayerSpec]>,
    ) -> Result<Masks, EngineError> {
        let params = model.params();
        let masks = match spec.method {
            PruningMethod::Channel { .. } => {
                let plan = ChannelPlan::new(spec, model, layers)?;
                let targets = plan
                    .masked_params(params)
                    .into_iter()
                    .map(|(param, schedule, global)| Target {
                        name: params[param].0.clone(),
                        param,
                        shape: params[param].1.size().iter().map(|&d| d as usize).collect(),
                        schedule,
                        method: spec.method,
                        global,
                    })
                    .collect();
                Masks { channels: Some(plan), ..Masks::new(targets, params) }
            }
            _ => Masks::new(select_targets(spec, params)?, params),
        };
        if masks.targets.is_empty() {
            let why = if masks.channels.is_some() {
                "pruning: no channel can be pruned (check include/exclude/overrides; the model's output layer is never pruned)"
            } else {
                "pruning: no parameter is selected for pruning (check include/exclude/overrides)"
            };
            return Err(EngineError::Spec(why.into()));
        }
        Ok(masks)
    }

    /// The channel plan, under channel pruning.
    pub fn channel_plan(&self) -> Option<&ChannelPlan> {
        self.channels.as_ref()
    }

    /// Every mask again from the plan's kept channels.
    fn rebuild_channel_masks(&mut self) -> Result<(), EngineError> {
        let Some(plan) = &self.channels else { return Ok(()) };
        let values: Vec<Vec<f32>> = self.targets.iter().map(|t| plan.mask_of(&t.name, &t.shape)).collect();
        for (i, v) in values.into_iter().enumerate() {
            self.set(i, v)?;
        }
        Ok(())
    }

    pub fn masks(&self) -> &[Tensor] {
        &self.masks
    }

    /// Restores masks saved in a checkpoint, in target order.
    pub fn restore(&mut self, masks: Vec<Tensor>) -> Result<(), EngineError> {
        if masks.len() != self.targets.len() {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint has {} masks, the job prunes {} tensors",
                masks.len(),
                self.targets.len()
            )));
        }
        for (i, m) in masks.into_iter().enumerate() {
            self.active[i] = !bool::try_from(m.eq(1.0).all())?;
            self.masks[i] = m.to_device(self.masks[i].device());
        }
        if let Some(plan) = &mut self.channels {
            let (targets, masks) = (&self.targets, &self.masks);
            let mask_of = |name: &str| targets.iter().position(|t| t.name == name).map(|i| masks[i].shallow_clone());
            plan.restore_keep(&mask_of)?;
        }
        Ok(())
    }

    /// tfmot's per-batch update at `step`: recompute the masks that are due now, by each
    /// target's method (on its schedule's pruning steps; m-by-n masks once, at step 1).
    /// Returns whether any mask changed.
    pub fn update(&mut self, step: i64, params: &NamedParams) -> Result<bool, EngineError> {
        if let Some(plan) = &mut self.channels {
            if !plan.due(step) {
                return Ok(false);
            }
            plan.recompute(Some(step), params)?;
            self.rebuild_channel_masks()?;
            return Ok(true);
        }
        let due: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].method.recompute_at(&self.targets[i].schedule, step))
            .collect();
        if due.is_empty() {
            return Ok(false);
        }
        let sparsity = |t: &Target| t.schedule.sparsity(step);
        self.recompute(&due, params, sparsity)?;
        Ok(true)
    }

    /// One-shot pruning: every mask at its schedule's final sparsity.
    pub fn one_shot(&mut self, params: &NamedParams) -> Result<(), EngineError> {
        if let Some(plan) = &mut self.channels {
            plan.recompute(None, params)?;
            return self.rebuild_channel_masks();
        }
        let all: Vec<usize> = (0..self.targets.len()).collect();
        self.recompute(&all, params, |t| t.schedule.final_sparsity())
    }

    fn recompute(
        &mut self,
        which: &[usize],
        params: &NamedParams,
        sparsity: impl Fn(&Target) -> f32,
    ) -> Result<(), EngineError> {
        let param_of: Vec<usize> = self.targets.iter().map(|t| t.param).collect();
        let weights = |i: usize| HostValues::of(&params[param_of[i]].1);
        let (global, local): (Vec<usize>, Vec<usize>) = which
            .iter()
            .partition(|&&i| self.targets[i].global && self.targets[i].method == PruningMethod::ElementWise);
        if !global.is_empty() {
            let values = global.iter().map(|&i| weights(i)).collect::<Result<Vec<_>, _>>()?;
            let slices: Vec<&[f32]> = values.iter().map(|v| v.as_slice()).collect();
            let s = sparsity(&self.targets[global[0]]);
            let computed = mask::global_masks(&slices, s);
            drop(slices);
            for (&i, m) in global.iter().zip(computed) {
                self.set(i, m)?;
            }
        }
        for i in local {
            let host = weights(i)?;
            let w = host.as_slice();
            let t = &self.targets[i];
            let m = t.method.mask(w, &t.shape, sparsity(t));
            self.set(i, m)?;
        }
        Ok(())
    }

    /// Replaces target `i`'s mask with `values` (a budget's further pruning, computed outside).
    pub(crate) fn set_mask(&mut self, i: usize, values: Vec<f32>) -> Result<(), EngineError> {
        self.set(i, values)
    }

    fn set(&mut self, i: usize, values: Vec<f32>) -> Result<(), EngineError> {
        let shape: Vec<i64> = self.targets[i].shape.iter().map(|&d| d as i64).collect();
        self.active[i] = values.contains(&0.0);
        let device = self.masks[i].device();
        if device != Device::Cpu {
            self.masks[i] = Tensor::from_slice(&values).reshape(&shape).to_device(device);
            return Ok(());
        }
        let mut strides = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        // SAFETY: `values` is moved into `self.buffers[i]` right after and lives, unmoved (a Vec's
        // heap block does not move with the Vec), as long as this tensor: both are replaced
        // together here, tensor first, and only dropped with `self`.
        let tensor =
            unsafe { Tensor::f_from_blob(values.as_ptr() as *const u8, &shape, &strides, Kind::Float, Device::Cpu)? };
        self.masks[i] = tensor;
        self.buffers[i] = values;
        Ok(())
    }

    /// `w *= mask` for every target (no grad): before each batch, checkpoint, evaluation, export.
    pub fn apply(&self, params: &NamedParams) {
        tch::no_grad(|| {
            for (i, t) in self.targets.iter().enumerate() {
                if self.active[i] {
                    let _ = params[t.param].1.shallow_clone().g_mul_(&self.masks[i]);
                }
            }
        });
    }

    /// 1 - mean(mask) per target, as tfmot's PruningSummaries.
    pub fn sparsities(&self) -> Result<Vec<TensorSparsity>, EngineError> {
        self.targets
            .iter()
            .zip(&self.masks)
            .map(|(t, m)| {
                Ok(TensorSparsity { name: t.name.clone(), sparsity: 1.0 - f64::try_from(m.mean(Kind::Float))? })
            })
            .collect()
    }
}

/// A weight's values on the host as f32, for the mask computation (on the CPU). A contiguous
/// f32 CPU weight is read in place; anything else is converted once.
pub(crate) struct HostValues {
    /// A contiguous f32 CPU tensor whose storage the slice reads.
    tensor: Tensor,
    len: usize,
}

impl HostValues {
    pub(crate) fn of(t: &Tensor) -> Result<HostValues, EngineError> {
        let tensor = t.detach();
        let tensor = if tensor.device() == Device::Cpu && tensor.kind() == Kind::Float && tensor.is_contiguous() {
            tensor
        } else {
            tensor.to_device(Device::Cpu).to_kind(Kind::Float).contiguous()
        };
        let len = tensor.numel();
        Ok(HostValues { tensor, len })
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the tensor is contiguous f32 with `len` elements and is kept alive by `self`;
        // nothing writes to the weights while masks are computed (the training loop is paused).
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const f32, self.len) }
    }
}
