//! Which tensors of a state dict are pruned, and how: `masking::select_targets`'s rules over the
//! names, dtypes and shapes of a safetensors header, so that no tensor needs loading to decide.
//! `tests/streamed.rs` checks both give the same targets.

use prune_core::job::{OverrideRule, Pruning};
use prune_core::options::Scope;
use prune_core::tensorstream::TensorInfo;
use prune_core::{PruningMethod, Schedule};
use regex::Regex;

use super::values::is_float;
use crate::EngineError;

/// The rule of one pruned tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub schedule: Schedule,
    pub method: PruningMethod,
    /// Ranked with the other global element-wise targets.
    pub global: bool,
}

fn compile(patterns: &[String], field: &str) -> Result<Vec<Regex>, EngineError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Regex::new(p).map_err(|e| EngineError::Spec(format!("{field}[{i}]: {}", e.to_string().replace('\n', " "))))
        })
        .collect()
}

/// One entry per tensor, in order: its rule when it is pruned.
pub fn select(spec: &Pruning, tensors: &[TensorInfo]) -> Result<Vec<Option<Rule>>, EngineError> {
    let include = compile(&spec.include, "pruning.include")?;
    let exclude = compile(&spec.exclude, "pruning.exclude")?;
    let overrides = spec
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| {
            Ok((
                Regex::new(&o.pattern).map_err(|e| EngineError::Spec(format!("pruning.overrides[{i}].match: {e}")))?,
                o,
            ))
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let global_scope = spec.scope == Scope::Global;
    tensors
        .iter()
        .map(|t| {
            let name = &t.name;
            let shape = &t.shape;
            if !is_float(t.dtype) {
                return Ok(None);
            }
            let selected = if include.is_empty() {
                shape.len() >= 2 || (spec.prune_bias && shape.len() == 1 && name.ends_with("bias"))
            } else {
                include.iter().any(|r| r.is_match(name))
            };
            if !selected || exclude.iter().any(|r| r.is_match(name)) || shape.is_empty() {
                return Ok(None);
            }
            let mut rule = Rule { schedule: spec.schedule, method: spec.method, global: global_scope };
            if let Some((_, o)) = overrides.iter().find(|(r, _)| r.is_match(name)) {
                match o.rule {
                    OverrideRule::Skip => return Ok(None),
                    OverrideRule::Inherit => {}
                    OverrideRule::Prune { schedule, method } => {
                        rule = Rule { schedule, method, global: false };
                    }
                }
            }
            rule.method.check_shape(name, shape).map_err(EngineError::Spec)?;
            Ok(Some(rule))
        })
        .collect()
}

impl Rule {
    /// Ranked in the one global selection (as `Masks::recompute` partitions them).
    pub fn in_global_selection(&self) -> bool {
        self.global && self.method == PruningMethod::ElementWise
    }
}
