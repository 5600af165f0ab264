//! The rules of `[sensitivity]` and `pruning.budget`: both measure the model tensor by tensor on
//! validation data, so both need `[data]` and the whole model in libtorch; a budget chooses each
//! tensor's final sparsity, so nothing else in the job may fix one.

use super::check::Errors;
use super::pruning::check_regex;
use crate::job::{Budget, Sensitivity};
use crate::options::{Loss, Scope, Structure};
use crate::spec::{BudgetSpec, JobSpec, SensitivitySpec};

/// Most levels one analysis measures (each costs one validation pass per tensor).
pub const MAX_LEVELS: usize = 64;

/// `[sensitivity]`'s rules and its typed form (levels sorted ascending).
pub(super) fn check_sensitivity(e: &mut Errors, spec: &JobSpec, s: &SensitivitySpec) -> Option<Sensitivity> {
    let before = e.len();
    check_levels(e, "sensitivity.levels", &s.levels);
    for (list, patterns) in [("include", &s.include), ("exclude", &s.exclude)] {
        for (i, pattern) in patterns.iter().enumerate() {
            check_regex(e, format!("sensitivity.{list}[{i}]"), pattern);
        }
    }
    let drop = s.target_accuracy_drop;
    e.check((0.0..=1.0).contains(&drop), "sensitivity.target_accuracy_drop", || {
        format!("must be a fraction in [0, 1] (got {drop})")
    });
    needs_whole_model_and_data(e, spec, "sensitivity");
    if e.len() > before {
        return None;
    }
    let mut levels = s.levels.clone();
    levels.sort_by(f64::total_cmp);
    Some(Sensitivity { levels, include: s.include.clone(), exclude: s.exclude.clone(), target_accuracy_drop: drop })
}

fn check_levels(e: &mut Errors, field: &str, levels: &[f64]) {
    if levels.is_empty() {
        e.push(field, "must list at least one sparsity, e.g. [0.5, 0.7, 0.8, 0.9, 0.95]");
        return;
    }
    e.check(levels.len() <= MAX_LEVELS, field, || format!("at most {MAX_LEVELS} levels (got {})", levels.len()));
    for (i, &level) in levels.iter().enumerate() {
        e.check(level > 0.0 && level < 1.0, format!("{field}[{i}]"), || {
            format!("a level is a sparsity in (0, 1) (got {level})")
        });
        if levels[..i].contains(&level) {
            e.push(format!("{field}[{i}]"), format!("{level} is listed twice"));
        }
    }
}

/// `pruning.budget`'s rules and its typed form.
pub(super) fn check_budget(e: &mut Errors, spec: &JobSpec, b: &BudgetSpec) -> Option<Budget> {
    let before = e.len();
    let p = &spec.pruning;
    if b.max_bytes.is_none() && b.max_accuracy_drop.is_none() {
        e.push("pruning.budget", "give max_bytes, max_accuracy_drop or both");
    }
    if let Some(bytes) = b.max_bytes {
        e.check(bytes >= 1, "pruning.budget.max_bytes", || format!("must be >= 1 byte (got {bytes})"));
    }
    if let Some(drop) = b.max_accuracy_drop {
        e.check((0.0..=1.0).contains(&drop), "pruning.budget.max_accuracy_drop", || {
            format!("must be a fraction in [0, 1], e.g. 0.01 for one point (got {drop})")
        });
        e.check(spec.training.loss == Loss::CrossEntropy.as_str(), "pruning.budget.max_accuracy_drop", || {
            format!("accuracy needs training.loss = \"cross_entropy\" (got \"{}\"): use max_bytes", spec.training.loss)
        });
    }
    // The budget picks every tensor's sparsity: nothing else may fix one.
    if let Some(m_by_n) = p.m_by_n {
        e.push(
            "pruning.m_by_n",
            format!("m_by_n {m_by_n:?} fixes every sparsity at m/n, but pruning.budget chooses them: remove one"),
        );
    }
    e.check(p.scope != Scope::Global.as_str(), "pruning.scope", || {
        "global scope ranks all tensors at one sparsity, but pruning.budget chooses one per tensor: use scope = \"layer\"".to_string()
    });
    e.check(p.structure != Structure::Channel.as_str(), "pruning.structure", || {
        "pruning.budget chooses element-wise or block sparsities per tensor; it is not available with structure = \"channel\"".to_string()
    });
    for (i, o) in p.overrides.iter().enumerate() {
        if o.schedule.is_some() {
            e.push(
                format!("pruning.overrides[{i}].schedule"),
                "contradicts pruning.budget, which chooses each tensor's sparsity: remove the schedule (an override may skip tensors or set their block_size)",
            );
        }
        if let Some(m_by_n) = o.m_by_n {
            e.push(
                format!("pruning.overrides[{i}].m_by_n"),
                format!("m_by_n {m_by_n:?} fixes the sparsity at m/n, which contradicts pruning.budget: remove it"),
            );
        }
    }
    needs_whole_model_and_data(e, spec, "pruning.budget");
    if e.len() > before {
        return None;
    }
    Some(Budget { max_bytes: b.max_bytes.map(|n| n as u64), max_accuracy_drop: b.max_accuracy_drop })
}

/// Both measure accuracy on `[data]` with the model in libtorch.
fn needs_whole_model_and_data(e: &mut Errors, spec: &JobSpec, field: &str) {
    e.check(spec.data.is_some(), field, || {
        "measures validation accuracy and loss: give the job [data] (a validation_split holds part of it out)"
            .to_string()
    });
    e.check(!spec.model.is_sharded(), field, || {
        "needs the whole model in memory: a sharded checkpoint is pruned tensor by tensor".to_string()
    });
    let state_dict = spec.model.file.as_deref().is_some_and(|f| f.to_ascii_lowercase().ends_with(".safetensors"));
    e.check(!state_dict, field, || {
        "runs the model on data, but model.file is a safetensors state dict (no forward pass): give a TorchScript model, or a model.sequential with model.weights".to_string()
    });
}
