//! Which tensors of a language model are pruned, and how.
//!
//! By default every Linear inside the decoder layers (`model.layers.N.*_proj.weight`); never
//! the embeddings or `lm_head` unless `pruning.include` names them. include/exclude/overrides
//! then apply as for any model (`masking::Selector`). Decoder Linears are pruned in the
//! layer-by-layer pass; anything else an explicit include selects is pruned by magnitude at
//! export, which only `method = "magnitude"` allows.

use std::collections::BTreeMap;

use prune_core::job::Job;
use prune_core::llm::config::{layer_prefix, Linear};
use prune_core::method::PruningMethod;
use prune_core::tensorstream::TensorInfo;

use super::pattern::Pattern;
use crate::masking::{Rule, Selector};
use crate::streamed::values::is_float;
use crate::EngineError;

/// One Linear weight the layer pass prunes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its full name (`model.layers.3.mlp.down_proj.weight`).
    pub name: String,
    /// Which Linear of its decoder layer it is.
    pub linear: Linear,
    pub rule: Rule,
}

impl Target {
    /// The pattern a calibrated method prunes to.
    pub fn pattern(&self) -> Pattern {
        match self.rule.method {
            PruningMethod::MByN { m, n } => Pattern::NOfM { n: m as i64, m: n as i64 },
            _ => Pattern::Unstructured { sparsity: self.rule.schedule.final_sparsity_f64() },
        }
    }
}

/// Decoder layer `i`'s Linear weights in the layer's order: (full name, which Linear).
pub fn decoder_linears(i: usize) -> Vec<(String, Linear)> {
    Linear::ALL.iter().map(|&l| (format!("{}{}", layer_prefix(i), l.weight()), l)).collect()
}

pub struct Plan {
    /// Per decoder layer, its pruned Linears in the layer's order.
    pub layers: Vec<Vec<Target>>,
    /// Per tensor of the checkpoint, in its order: the rule the export applies (`Some` for every
    /// pruned tensor; decoder Linears get their values from the layer pass).
    pub export_rules: Vec<Option<Rule>>,
    /// Every pruned tensor's name, in checkpoint order.
    pub pruned: Vec<String>,
}

impl Plan {
    /// `linears[i]`: decoder layer i's Linear weights ([`decoder_linears`]).
    pub fn new(job: &Job, tensors: &[TensorInfo], linears: &[Vec<(String, Linear)>]) -> Result<Plan, EngineError> {
        let selector = Selector::new(&job.pruning)?;
        let explicit = !job.pruning.include.is_empty();
        let layer_of: BTreeMap<&str, (usize, Linear)> = linears
            .iter()
            .enumerate()
            .flat_map(|(i, names)| names.iter().map(move |(full, linear)| (full.as_str(), (i, *linear))))
            .collect();
        let mut layers: Vec<Vec<Target>> = vec![Vec::new(); linears.len()];
        let mut export_rules = Vec::with_capacity(tensors.len());
        let mut pruned = Vec::new();
        for t in tensors {
            let decoder = layer_of.get(t.name.as_str());
            let rule =
                if decoder.is_some() || explicit { selector.rule(&t.name, &t.shape, is_float(t.dtype))? } else { None };
            if let Some(rule) = rule {
                match decoder {
                    Some(&(i, linear)) => {
                        let target = Target { name: t.name.clone(), linear, rule };
                        check_pattern(&target, &t.shape)?;
                        layers[i].push(target)
                    }
                    None if job.pruning.criterion.is_calibrated() => {
                        return Err(EngineError::Spec(format!(
                            "pruning.include: `{}` is not a Linear of a decoder layer: pruning.method = \"{}\" prunes those only (exclude it)",
                            t.name,
                            job.pruning.criterion.name()
                        )))
                    }
                    None => {}
                }
                pruned.push(t.name.clone());
            }
            export_rules.push(rule);
        }
        if pruned.is_empty() {
            return Err(EngineError::Spec(
                "pruning: no parameter is selected for pruning (check include/exclude/overrides)".into(),
            ));
        }
        // Layers keep the decoder's order (q, k, v, o, gate, up, down), not the file's.
        for targets in &mut layers {
            targets.sort_by_key(|t| t.linear);
        }
        Ok(Plan { layers, export_rules, pruned })
    }
}

/// An m-by-n group must divide the Linear's input width (the error names the field and tensor).
fn check_pattern(target: &Target, shape: &[usize]) -> Result<(), EngineError> {
    let columns = shape.get(1).copied().unwrap_or(0) as i64;
    target.pattern().check(columns).map_err(|e| {
        let field = match target.rule.method {
            PruningMethod::MByN { .. } => "pruning.m_by_n",
            _ => "pruning.schedule",
        };
        EngineError::Spec(format!("{field}: {}: {e}", target.name))
    })
}
