//! Which parameters are pruned, with which rule, and their masks: tfmot's wrapper logic
//! (recompute on schedule, multiply before every batch) over the numerics of `prune_core::mask`.

use prune_core::mask::{self, Pooling};
use prune_core::spec::PruningSpec;
use prune_core::Schedule;
use regex::Regex;
use tch::{Device, Kind, Tensor};

use crate::events::TensorSparsity;
use crate::model::NamedParams;
use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    Element,
    Block { size: [usize; 2], pooling: Pooling },
    MByN { m: usize, n: usize },
}

/// One pruned parameter and its rule.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Index into the model's parameters.
    pub param: usize,
    pub shape: Vec<usize>,
    pub schedule: Schedule,
    pub pattern: Pattern,
    /// Ranked together with the other global targets (scope = global, no override).
    pub global: bool,
}

fn pooling(name: &str) -> Pooling {
    if name == "max" {
        Pooling::Max
    } else {
        Pooling::Avg
    }
}

fn pattern(block: [i64; 2], block_pooling: &str, m_by_n: Option<[i64; 2]>) -> Pattern {
    match (m_by_n, block) {
        (Some([m, n]), _) => Pattern::MByN { m: m as usize, n: n as usize },
        (None, [1, 1]) => Pattern::Element,
        (None, [r, c]) => Pattern::Block { size: [r as usize, c as usize], pooling: pooling(block_pooling) },
    }
}

fn compile(patterns: &[String], field: &str) -> Result<Vec<Regex>, EngineError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| Regex::new(p).map_err(|e| EngineError::Spec(format!("{field}[{i}]: {}", e.to_string().replace('\n', " ")))))
        .collect()
}

/// Selects the pruned parameters: every floating tensor of rank >= 2 by default (rank-1 biases
/// only with `prune_bias`), or those matching `include`; minus `exclude`; overrides last.
pub fn select_targets(spec: &PruningSpec, params: &NamedParams) -> Result<Vec<Target>, EngineError> {
    let include = compile(&spec.include, "pruning.include")?;
    let exclude = compile(&spec.exclude, "pruning.exclude")?;
    let overrides = spec
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| Ok((Regex::new(&o.pattern).map_err(|e| EngineError::Spec(format!("pruning.overrides[{i}].match: {e}")))?, o)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    let global_scope = spec.scope == "global";
    let mut targets = Vec::new();
    for (index, (name, tensor)) in params.iter().enumerate() {
        if !tensor.is_floating_point() {
            continue;
        }
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        // An explicit include asks for exactly what it matches (biases too); by default only
        // rank >= 2 weights, plus biases with `prune_bias`.
        let selected = if include.is_empty() {
            shape.len() >= 2 || (spec.prune_bias && shape.len() == 1 && name.ends_with("bias"))
        } else {
            include.iter().any(|r| r.is_match(name))
        };
        if !selected || exclude.iter().any(|r| r.is_match(name)) || shape.is_empty() {
            continue;
        }
        let mut target = Target {
            name: name.clone(),
            param: index,
            shape,
            schedule: spec.schedule,
            pattern: pattern(spec.block_size, &spec.block_pooling, spec.m_by_n),
            global: global_scope,
        };
        if let Some((_, o)) = overrides.iter().find(|(r, _)| r.is_match(name)) {
            if o.skip {
                continue;
            }
            if o.schedule.is_some() || o.block_size.is_some() || o.m_by_n.is_some() || o.block_pooling.is_some() {
                target.global = false;
                target.schedule = o.schedule.unwrap_or(spec.schedule);
                target.pattern = pattern(
                    o.block_size.unwrap_or(spec.block_size),
                    o.block_pooling.as_deref().unwrap_or(&spec.block_pooling),
                    o.m_by_n.or(spec.m_by_n),
                );
            }
        }
        check_shape(&target)?;
        targets.push(target);
    }
    Ok(targets)
}

fn check_shape(t: &Target) -> Result<(), EngineError> {
    match t.pattern {
        Pattern::Block { size, .. } if t.shape.len() != 2 => Err(EngineError::Spec(format!(
            "pruning.block_size {size:?} needs 2-D weights (as tfmot), but {} has shape {:?}: exclude it or override its block_size",
            t.name, t.shape
        ))),
        Pattern::MByN { m, n } if t.shape.len() < 2 => Err(EngineError::Spec(format!(
            "pruning.m_by_n [{m}, {n}] needs weights of rank >= 2, but {} has shape {:?}",
            t.name, t.shape
        ))),
        _ => Ok(()),
    }
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
}

impl Masks {
    pub fn new(targets: Vec<Target>, params: &NamedParams) -> Masks {
        let masks = targets.iter().map(|t| params[t.param].1.ones_like().set_requires_grad(false)).collect();
        let active = vec![false; targets.len()];
        let buffers = vec![Vec::new(); targets.len()];
        Masks { targets, masks, buffers, active }
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
        Ok(())
    }

    /// tfmot's per-batch update at `step`: recompute the masks whose schedule prunes now
    /// (m-by-n masks once, at step 1). Returns whether any mask changed.
    pub fn update(&mut self, step: i64, params: &NamedParams) -> Result<bool, EngineError> {
        let due: Vec<usize> = (0..self.targets.len())
            .filter(|&i| match self.targets[i].pattern {
                Pattern::MByN { .. } => step == 1,
                _ => self.targets[i].schedule.should_prune(step),
            })
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
        let all: Vec<usize> = (0..self.targets.len()).collect();
        self.recompute(&all, params, |t| t.schedule.final_sparsity())
    }

    fn recompute(&mut self, which: &[usize], params: &NamedParams, sparsity: impl Fn(&Target) -> f32) -> Result<(), EngineError> {
        let param_of: Vec<usize> = self.targets.iter().map(|t| t.param).collect();
        let weights = |i: usize| HostValues::of(&params[param_of[i]].1);
        let (global, local): (Vec<usize>, Vec<usize>) =
            which.iter().partition(|&&i| self.targets[i].global && self.targets[i].pattern == Pattern::Element);
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
            let m = match t.pattern {
                Pattern::Element => mask::element_mask(w, sparsity(t)),
                Pattern::Block { size, pooling } => mask::block_mask(w, t.shape[0], t.shape[1], size, pooling, sparsity(t)),
                Pattern::MByN { m, n } => mask::m_by_n_mask(w, &t.shape, m, n),
            };
            self.set(i, m)?;
        }
        Ok(())
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
        let tensor = unsafe { Tensor::f_from_blob(values.as_ptr() as *const u8, &shape, &strides, Kind::Float, Device::Cpu)? };
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
            .map(|(t, m)| Ok(TensorSparsity { name: t.name.clone(), sparsity: 1.0 - f64::try_from(m.mean(Kind::Float))? }))
            .collect()
    }
}

/// A weight's values on the host as f32, for the mask computation (on the CPU). A contiguous
/// f32 CPU weight is read in place; anything else is converted once.
struct HostValues {
    /// A contiguous f32 CPU tensor whose storage the slice reads.
    tensor: Tensor,
    len: usize,
}

impl HostValues {
    fn of(t: &Tensor) -> Result<HostValues, EngineError> {
        let tensor = t.detach();
        let tensor = if tensor.device() == Device::Cpu && tensor.kind() == Kind::Float && tensor.is_contiguous() {
            tensor
        } else {
            tensor.to_device(Device::Cpu).to_kind(Kind::Float).contiguous()
        };
        let len = tensor.numel();
        Ok(HostValues { tensor, len })
    }

    fn as_slice(&self) -> &[f32] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the tensor is contiguous f32 with `len` elements and is kept alive by `self`;
        // nothing writes to the weights while masks are computed (the training loop is paused).
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const f32, self.len) }
    }
}
