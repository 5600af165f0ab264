//! The pruning section's rules: schedules (tfmot's checks), block sizes, m-by-n groups, scope,
//! regexes and overrides; and the resolution of `block_size`, `block_pooling` and `m_by_n`
//! into one [`PruningMethod`] per rule.

use super::check::Errors;
use crate::job::{Criterion, Override, OverrideRule, Pruning};
use crate::method::PruningMethod;
use crate::options::{BlockPooling, ChannelScore, Scope, Structure};
use crate::schedule::Schedule;
use crate::spec::{OverrideSpec, PruningSpec};
use crate::text::one_line;

/// The pruning section's rules; its typed form, with every method resolved, if they hold.
pub(super) fn check_pruning(e: &mut Errors, p: &PruningSpec) -> Option<Pruning> {
    check_schedule(e, "pruning.schedule", &p.schedule);
    check_block_size(e, "pruning.block_size", p.block_size);
    let pooling = e.parse::<BlockPooling>("pruning.block_pooling", &p.block_pooling);
    if let Some(m_by_n) = p.m_by_n {
        check_m_by_n(e, "pruning.m_by_n", m_by_n, p.block_size);
    }
    let scope = e.parse::<Scope>("pruning.scope", &p.scope);
    let structure = e.parse::<Structure>("pruning.structure", &p.structure);
    let score = e.parse::<ChannelScore>("pruning.channel_score", &p.channel_score);
    let channel = structure == Some(Structure::Channel);
    if channel {
        check_whole_channels(e, "pruning", p.block_size, p.m_by_n);
    }
    let global = scope == Some(Scope::Global);
    if global && !channel {
        check_element_wise(e, "pruning.scope", p.block_size, p.m_by_n);
    }
    for (list, patterns) in [("include", &p.include), ("exclude", &p.exclude)] {
        for (i, pattern) in patterns.iter().enumerate() {
            check_regex(e, format!("pruning.{list}[{i}]"), pattern);
        }
    }
    let overrides: Vec<Option<Override>> = p
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| check_override(e, &format!("pruning.overrides[{i}]"), o, p, pooling, global, channel))
        .collect();
    let method = match structure? {
        Structure::Channel => PruningMethod::Channel { score: score? },
        Structure::Element => PruningMethod::resolve(p.block_size, pooling?, p.m_by_n)?,
    };
    let criterion = check_criterion(e, p);
    let overrides: Vec<Override> = overrides.into_iter().collect::<Option<_>>()?;
    // An override under channel pruning sets at most its schedule: its method is the top one.
    let overrides = if channel {
        overrides
            .into_iter()
            .map(|o| match o.rule {
                OverrideRule::Prune { schedule, .. } => {
                    Override { rule: OverrideRule::Prune { schedule, method }, ..o }
                }
                _ => o,
            })
            .collect()
    } else {
        overrides
    };
    Some(Pruning {
        schedule: p.schedule,
        method,
        scope: scope?,
        include: p.include.clone(),
        exclude: p.exclude.clone(),
        prune_bias: p.prune_bias,
        overrides,
        budget: None,
        criterion: criterion?,
    })
}

/// Largest `pruning.sparsegpt.block_size` accepted.
const MAX_SPARSEGPT_BLOCK: i64 = 1 << 16;

/// `pruning.method` and `pruning.sparsegpt`; a calibrated criterion's other sections are checked
/// by `language`. Calibrated criteria rank single weights within a layer: blocks and channels
/// (top level or in an override) and global scope are refused here.
fn check_criterion(e: &mut Errors, p: &PruningSpec) -> Option<Criterion> {
    use crate::options::Criterion as Named;
    let named = e.parse::<Named>("pruning.method", &p.method);
    let sparsegpt = p.sparsegpt.unwrap_or_default();
    if let Some(settings) = &p.sparsegpt {
        e.check(named.is_none() || named == Some(Named::SparseGpt), "pruning.sparsegpt", || {
            format!("applies only to pruning.method = \"sparsegpt\" (got \"{}\")", p.method)
        });
        e.check((1..=MAX_SPARSEGPT_BLOCK).contains(&settings.block_size), "pruning.sparsegpt.block_size", || {
            format!("must be between 1 and {MAX_SPARSEGPT_BLOCK} (got {})", settings.block_size)
        });
        e.check(settings.dampening.is_finite() && settings.dampening >= 0.0, "pruning.sparsegpt.dampening", || {
            format!("must be a finite number >= 0 (got {})", settings.dampening)
        });
    }
    let named = named?;
    if named != Named::Magnitude {
        let why = || format!("pruning.method = \"{named}\" prunes single weights or m_by_n groups");
        e.check(p.block_size == [1, 1], "pruning.block_size", || format!("{} (got {:?})", why(), p.block_size));
        e.check(p.structure == "element", "pruning.structure", || format!("{} (got \"{}\")", why(), p.structure));
        e.check(p.scope != "global", "pruning.scope", || {
            format!("pruning.method = \"{named}\" ranks weights within each layer: use scope = \"layer\"")
        });
        for (i, o) in p.overrides.iter().enumerate() {
            e.check(o.block_size.is_none_or(|b| b == [1, 1]), format!("pruning.overrides[{i}].block_size"), why);
        }
        e.check(p.budget.is_none(), "pruning.budget", || {
            format!("pruning.method = \"{named}\" takes each tensor's sparsity from the schedule: remove the budget")
        });
    }
    Some(match named {
        Named::Magnitude => Criterion::Magnitude,
        Named::Wanda => Criterion::Wanda,
        Named::SparseGpt => Criterion::SparseGpt {
            block_size: usize::try_from(sparsegpt.block_size).unwrap_or(1).max(1),
            dampening: sparsegpt.dampening,
        },
    })
}

/// tfmot's schedule checks (its messages kept), reported under `at`.
fn check_schedule(e: &mut Errors, at: &str, schedule: &Schedule) {
    for (field, reason) in schedule.validate() {
        e.push(format!("{at}.{field}"), reason);
    }
    // tfmot does not check it, but a negative power makes (1 - p)^power grow without bound
    // (inf at end_step): sparsities outside [0, 1], never what was meant. 0 is tfmot's too: the
    // sparsity then stays at initial_sparsity.
    if let Schedule::PolynomialDecay { power, .. } = *schedule {
        e.check(power >= 0.0 || power.is_nan(), format!("{at}.power"), || {
            format!("must be a number >= 0 (got {power})")
        });
    }
}

fn check_block_size(e: &mut Errors, at: &str, block: [i64; 2]) {
    for (j, d) in block.into_iter().enumerate() {
        e.at_least(format!("{at}[{j}]"), d, 1);
    }
}

fn check_m_by_n(e: &mut Errors, field: &str, [m, n]: [i64; 2], block: [i64; 2]) {
    if n < 1 {
        e.push(field, format!("n (the group size) must be >= 1 (got [{m}, {n}])"));
    } else if m < 0 || m >= n {
        e.push(field, format!("m zeros per group of n need 0 <= m < n; m >= n is rejected (got [{m}, {n}])"));
    }
    e.check(block == [1, 1], field, || {
        format!("m_by_n cannot be combined with block_size {block:?}: use block_size = [1, 1]")
    });
}

/// Channel pruning removes whole channels: a block shape or an m-by-n pattern has no place.
/// `at` is the section (`pruning`, `pruning.overrides[1]`).
fn check_whole_channels(e: &mut Errors, at: &str, block: [i64; 2], m_by_n: Option<[i64; 2]>) {
    e.check(block == [1, 1], format!("{at}.block_size"), || {
        format!("pruning.structure = \"channel\" removes whole channels: it cannot be combined with {at}.block_size {block:?} (use [1, 1])")
    });
    if let Some(m_by_n) = m_by_n {
        e.push(
            format!("{at}.m_by_n"),
            format!("pruning.structure = \"channel\" removes whole channels: it cannot be combined with {at}.m_by_n {m_by_n:?}"),
        );
    }
}

/// Global scope ranks single weights across tensors: blocks and m-by-n groups have no place.
fn check_element_wise(e: &mut Errors, field: &str, block: [i64; 2], m_by_n: Option<[i64; 2]>) {
    e.check(block == [1, 1], field, || {
        format!("global scope is element-wise only: block_size must be [1, 1] (got {block:?})")
    });
    e.check(m_by_n.is_none(), field, || {
        "global scope is element-wise only: it cannot be combined with m_by_n".to_string()
    });
}

pub(super) fn check_regex(e: &mut Errors, field: String, pattern: &str) {
    if let Err(err) = regex::Regex::new(pattern) {
        e.push(field, regex_reason(&err));
    }
}

/// One override's rules (`top` is the pruning section it refines, `top_pooling` its parsed
/// `block_pooling`, `global` whether its scope is global) and its typed form: what it sets is resolved against the top level.
fn check_override(
    e: &mut Errors,
    at: &str,
    o: &OverrideSpec,
    top: &PruningSpec,
    top_pooling: Option<BlockPooling>,
    global: bool,
    channel: bool,
) -> Option<Override> {
    check_regex(e, format!("{at}.match"), &o.pattern);
    if o.skip {
        let settings: Vec<&str> = [
            ("schedule", o.schedule.is_some()),
            ("block_size", o.block_size.is_some()),
            ("block_pooling", o.block_pooling.is_some()),
            ("m_by_n", o.m_by_n.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        e.check(settings.is_empty(), format!("{at}.skip"), || {
            format!(
                "skip = true leaves matching parameters unpruned, so {} would be ignored: remove one or the other",
                settings.join(", ")
            )
        });
    }
    if let Some(schedule) = &o.schedule {
        check_schedule(e, &format!("{at}.schedule"), schedule);
    }
    let block = o.block_size.unwrap_or([1, 1]);
    if let Some(b) = o.block_size {
        check_block_size(e, &format!("{at}.block_size"), b);
    }
    let pooling =
        o.block_pooling.as_deref().map(|pooling| e.parse::<BlockPooling>(format!("{at}.block_pooling"), pooling));
    if let Some(m_by_n) = o.m_by_n {
        check_m_by_n(e, &format!("{at}.m_by_n"), m_by_n, block);
    }
    if channel {
        check_whole_channels(e, at, block, o.m_by_n);
        e.check(o.block_pooling.is_none(), format!("{at}.block_pooling"), || {
            "pruning.structure = \"channel\" ranks channels by pruning.channel_score: block_pooling does not apply"
                .to_string()
        });
    } else if global {
        check_element_wise(e, at, block, o.m_by_n);
    }
    let sets_something =
        o.schedule.is_some() || o.block_size.is_some() || o.block_pooling.is_some() || o.m_by_n.is_some();
    let rule = if o.skip {
        OverrideRule::Skip
    } else if !sets_something {
        OverrideRule::Inherit
    } else {
        // What the override does not set comes from the top level.
        let pooling = match pooling {
            Some(own) => own?,
            None => top_pooling?,
        };
        OverrideRule::Prune {
            schedule: o.schedule.unwrap_or(top.schedule),
            method: PruningMethod::resolve(o.block_size.unwrap_or(top.block_size), pooling, o.m_by_n.or(top.m_by_n))?,
        }
    };
    Some(Override { pattern: o.pattern.clone(), rule })
}

/// The regex crate's error on one line. Its syntax errors echo the pattern with a caret under
/// the culprit and then `error: <cause>`; the field already names the pattern, so only the
/// cause is kept.
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    let cause = text.lines().rev().find_map(|l| l.trim().strip_prefix("error: "));
    match (text.starts_with("regex parse error:"), cause) {
        (true, Some(cause)) => format!("regex parse error: {cause}"),
        _ => one_line(&text),
    }
}
