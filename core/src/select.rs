//! Which parameters a `[pruning]` section prunes, and with which rule, decided from a tensor's
//! name, shape and dtype alone (`docs/pruning-semantics.md`, section 6), without libtorch: the
//! `prune` Python package (`python/`) selects a live PyTorch model's parameters with it. The
//! rules are the engine's (`engine/src/masking.rs`, `Selector`), which predates this module.

use regex::Regex;

use crate::job::{Override, OverrideRule, Pruning};
use crate::method::PruningMethod;
use crate::options::Scope;
use crate::schedule::Schedule;

/// The service's error when a job selects no parameter (the engine fails the job with it).
pub const NOTHING_SELECTED: &str = "pruning: no parameter is selected for pruning (check include/exclude/overrides)";

/// How one selected tensor is pruned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub schedule: Schedule,
    pub method: PruningMethod,
    /// scope = global and no override that sets anything.
    pub global: bool,
}

impl Rule {
    /// Ranked in the one global selection (the engine's partition of due targets).
    pub fn in_global_selection(&self) -> bool {
        self.global && self.method == PruningMethod::ElementWise
    }
}

/// Why a tensor cannot be selected as asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    /// A pattern that does not compile (validation reports it first; kept for typed callers
    /// that skipped it).
    #[error("{field}: {reason}")]
    Pattern { field: String, reason: String },
    /// The rule's method cannot apply to the tensor's shape (`PruningMethod::check_shape`).
    #[error("{0}")]
    Shape(String),
}

/// A `[pruning]` section's selection rules with its patterns compiled.
pub struct Selector<'a> {
    spec: &'a Pruning,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    overrides: Vec<(Regex, &'a Override)>,
}

fn compile<'p>(patterns: impl Iterator<Item = &'p String>, field: &str) -> Result<Vec<Regex>, SelectError> {
    patterns
        .enumerate()
        .map(|(i, p)| {
            Regex::new(p).map_err(|e| SelectError::Pattern {
                field: format!("{field}[{i}]"),
                reason: crate::text::one_line(&e.to_string()),
            })
        })
        .collect()
}

impl<'a> Selector<'a> {
    pub fn new(spec: &'a Pruning) -> Result<Selector<'a>, SelectError> {
        let patterns = compile(spec.overrides.iter().map(|o| &o.pattern), "pruning.overrides")?;
        Ok(Selector {
            spec,
            include: compile(spec.include.iter(), "pruning.include")?,
            exclude: compile(spec.exclude.iter(), "pruning.exclude")?,
            overrides: patterns.into_iter().zip(&spec.overrides).collect(),
        })
    }

    /// The rule of tensor `name`, or `None` when it is not pruned: every floating tensor of
    /// rank >= 2 by default (rank-1 biases only with `prune_bias`), or those matching `include`;
    /// minus `exclude`; the first matching override last. A method that cannot apply to the
    /// shape is an error.
    pub fn rule(&self, name: &str, shape: &[usize], floating: bool) -> Result<Option<Rule>, SelectError> {
        if !floating || !self.selected(name, shape) {
            return Ok(None);
        }
        let spec = self.spec;
        let mut rule = Rule { schedule: spec.schedule, method: spec.method, global: spec.scope == Scope::Global };
        if let Some((_, o)) = self.overrides.iter().find(|(r, _)| r.is_match(name)) {
            match o.rule {
                OverrideRule::Skip => return Ok(None),
                OverrideRule::Inherit => {}
                OverrideRule::Prune { schedule, method } => rule = Rule { schedule, method, global: false },
            }
        }
        rule.method.check_shape(name, shape).map_err(SelectError::Shape)?;
        Ok(Some(rule))
    }

    /// Whether include/exclude pick tensor `name` (its dtype aside): an explicit include asks
    /// for exactly what it matches (biases too); by default rank >= 2 weights, plus biases with
    /// `prune_bias`. Rank-0 tensors never.
    pub fn selected(&self, name: &str, shape: &[usize]) -> bool {
        let picked = if self.include.is_empty() {
            shape.len() >= 2 || (self.spec.prune_bias && shape.len() == 1 && name.ends_with("bias"))
        } else {
            self.include.iter().any(|r| r.is_match(name))
        };
        picked && !shape.is_empty() && !self.exclude.iter().any(|r| r.is_match(name))
    }

    /// The `include` pattern (its field path) that explicitly picks `name`, if one does.
    pub fn included_by(&self, name: &str) -> Option<String> {
        self.include.iter().position(|r| r.is_match(name)).map(|i| format!("pruning.include[{i}]"))
    }

    /// One line per pattern (include, exclude, override `match`) that matches none of `names`:
    /// most often a typo or a name spelled for another model (`0.weight` vs `fc1.weight`).
    pub fn unmatched(&self, names: &[&str]) -> Vec<String> {
        let lists = [
            ("pruning.include", self.include.iter().collect::<Vec<_>>()),
            ("pruning.exclude", self.exclude.iter().collect()),
            ("pruning.overrides", self.overrides.iter().map(|(r, _)| r).collect()),
        ];
        let mut out = Vec::new();
        for (field, patterns) in lists {
            for (i, r) in patterns.into_iter().enumerate() {
                if !names.iter().any(|n| r.is_match(n)) {
                    let at = if field == "pruning.overrides" {
                        format!("{field}[{i}].match")
                    } else {
                        format!("{field}[{i}]")
                    };
                    out.push(format!("{at}: `{}` matches no parameter name of the model", r.as_str()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::BlockPooling;
    use crate::validate::{parse_toml, validate};

    fn pruning(extra: &str) -> Pruning {
        let text = format!(
            "[model]\nfile = \"m.pt\"\n[pruning]\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5 }}\n{extra}"
        );
        validate(&parse_toml(&text).unwrap()).unwrap().pruning
    }

    fn rules(p: &Pruning, tensors: &[(&str, &[usize], bool)]) -> Vec<Option<Rule>> {
        let s = Selector::new(p).unwrap();
        tensors.iter().map(|(n, shape, f)| s.rule(n, shape, *f).unwrap()).collect()
    }

    const MLP: [(&str, &[usize], bool); 5] = [
        ("0.weight", &[8, 4], true),
        ("0.bias", &[8], true),
        ("1.scale", &[8], true),
        ("2.weight", &[2, 8], true),
        ("steps", &[3, 3], false),
    ];

    #[test]
    fn default_selection_is_floating_rank_two_and_up() {
        let got = rules(&pruning(""), &MLP);
        let picked: Vec<bool> = got.iter().map(Option::is_some).collect();
        assert_eq!(picked, [true, false, false, true, false]);
        let with_bias = rules(&pruning("prune_bias = true"), &MLP);
        // prune_bias adds names ending in `bias`, not other rank-1 tensors (norm scales).
        assert_eq!(with_bias.iter().map(Option::is_some).collect::<Vec<_>>(), [true, true, false, true, false]);
    }

    #[test]
    fn include_exclude_and_the_first_override_decide() {
        let p = pruning(
            "include = [\"scale\", \"weight\"]\nexclude = [\"^2\\\\.\"]\n\
             [[pruning.overrides]]\nmatch = \"scale\"\nblock_size = [1, 2]\n\
             [[pruning.overrides]]\nmatch = \"1\\\\.\"\nskip = true\n",
        );
        let s = Selector::new(&p).unwrap();
        assert!(s.rule("0.weight", &[8, 4], true).unwrap().is_some());
        assert!(s.rule("2.weight", &[2, 8], true).unwrap().is_none(), "excluded");
        // The first matching override wins: its block size, not the later skip.
        let err = s.rule("1.scale", &[8], true).unwrap_err();
        assert!(err.to_string().contains("needs 2-D weights"), "{err}");
        assert_eq!(s.included_by("1.scale").as_deref(), Some("pruning.include[0]"));
        assert_eq!(s.included_by("0.bias"), None);
    }

    #[test]
    fn overrides_leave_the_global_ranking() {
        let p = pruning(
            "scope = \"global\"\n[[pruning.overrides]]\nmatch = \"^2\"\n\
             schedule = { kind = \"constant_sparsity\", target_sparsity = 0.9 }\n\
             [[pruning.overrides]]\nmatch = \"^0\"\n",
        );
        let got = rules(&p, &MLP);
        let first = got[0].unwrap();
        assert!(first.in_global_selection(), "an override that sets nothing keeps the global rule");
        let last = got[3].unwrap();
        assert!(!last.global && last.schedule.final_sparsity() == 0.9f32);
        let blocks = pruning("block_size = [2, 2]\nblock_pooling = \"max\"");
        let rule = rules(&blocks, &MLP)[0].unwrap();
        assert_eq!(rule.method, PruningMethod::Block { size: [2, 2], pooling: BlockPooling::Max });
    }

    #[test]
    fn unmatched_patterns_are_named_by_field() {
        let p = pruning("include = [\"weight\", \"^fc\"]\nexclude = [\"nope\"]\n[[pruning.overrides]]\nmatch = \"bias\"\nskip = true\n");
        let s = Selector::new(&p).unwrap();
        let names: Vec<&str> = MLP.iter().map(|t| t.0).collect();
        let lines = s.unmatched(&names);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("pruning.include[1]: `^fc` matches no parameter"), "{lines:?}");
        assert!(lines[1].starts_with("pruning.exclude[0]: `nope`"), "{lines:?}");
    }
}
