//! The `[[pruning.overrides]]` a sensitivity analysis suggests: each analysed tensor at the
//! highest level it took, alone, within `sensitivity.target_accuracy_drop` (under mse: within
//! that fraction of the dense loss), on the job's own schedule; a tensor that could not take
//! even the lowest level is skipped. Written as a job file writes them (the schedule an inline
//! table), with strings and numbers in TOML's own spelling, so it parses back.

use prune_core::Schedule;

use super::{Analysis, Probe};

/// The suggested overrides as TOML: a comment saying how they were chosen, then one
/// `[[pruning.overrides]]` per probe, in model order.
pub fn suggest(analysis: &Analysis, probes: &[Probe], schedule: Schedule, target_drop: f64) -> String {
    let measure = match analysis.dense_accuracy {
        Some(acc) => format!("validation accuracy dropped at most {target_drop} (dense: {acc:.4})"),
        None => format!("validation loss rose at most {target_drop} x the dense loss ({:.6})", analysis.dense_loss),
    };
    let mut out = format!(
        "# Suggested by a sensitivity analysis: each tensor at the highest level at which, pruned alone\n\
         # one-shot, its {measure};\n\
         # skip = true where even the lowest level cost more. Paste under the job's [pruning] section\n\
         # (the first override matching a tensor wins).\n"
    );
    for probe in probes {
        let within = analysis.of(&probe.name).filter(|p| analysis.cost(p) <= target_drop).map(|p| p.sparsity);
        let level = within.fold(None, |best: Option<f64>, s| Some(best.map_or(s, |b| b.max(s))));
        let pattern = toml::Value::String(format!("^{}$", regex::escape(&probe.name)));
        out.push_str(&format!("\n[[pruning.overrides]]\nmatch = {pattern}\n"));
        match level {
            Some(level) => out.push_str(&format!("schedule = {}\n", inline(schedule.with_final_sparsity(level)))),
            None => out.push_str("skip = true\n"),
        }
    }
    out
}

/// A schedule as the job file's inline table, fields in the documented order. `{:?}` keeps a
/// decimal point or an exponent, so every float reads back as one.
fn inline(schedule: Schedule) -> String {
    match schedule {
        Schedule::PolynomialDecay { initial_sparsity, final_sparsity, begin_step, end_step, power, frequency } => format!(
            "{{ kind = \"polynomial_decay\", initial_sparsity = {initial_sparsity:?}, final_sparsity = {final_sparsity:?}, begin_step = {begin_step}, end_step = {end_step}, power = {power:?}, frequency = {frequency} }}"
        ),
        Schedule::ConstantSparsity { target_sparsity, begin_step, end_step, frequency } => format!(
            "{{ kind = \"constant_sparsity\", target_sparsity = {target_sparsity:?}, begin_step = {begin_step}, end_step = {end_step}, frequency = {frequency} }}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prune_core::domain::SensitivityPoint;
    use prune_core::PruningMethod;

    fn point(tensor: &str, sparsity: f64, accuracy: f64) -> SensitivityPoint {
        SensitivityPoint {
            tensor: tensor.into(),
            sparsity,
            accuracy: Some(accuracy),
            loss: 1.0 - accuracy,
            params_removed: 1,
        }
    }

    fn probe(name: &str) -> Probe {
        Probe { name: name.into(), param: 0, shape: vec![2, 2], method: PruningMethod::ElementWise, bias: None }
    }

    #[test]
    fn highest_level_within_the_drop_or_skip_and_it_parses_back() {
        let analysis = Analysis {
            dense_loss: 0.1,
            dense_accuracy: Some(0.97),
            points: vec![
                point("0.weight", 0.5, 0.97),
                point("0.weight", 0.9, 0.965),
                point("2.weight", 0.5, 0.90),
                point("2.weight", 0.9, 0.50),
            ],
        };
        let schedule = Schedule::PolynomialDecay {
            initial_sparsity: 0.0,
            final_sparsity: 0.8,
            begin_step: 10,
            end_step: 100,
            power: 3.0,
            frequency: 10,
        };
        let text = suggest(&analysis, &[probe("0.weight"), probe("2.weight")], schedule, 0.01);
        let job = format!(
            "[model]\nsequential = [{{ type = \"linear\", in = 2, out = 2 }}]\n[pruning]\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5 }}\n{text}"
        );
        let spec = prune_core::validate::parse_toml(&job).unwrap();
        prune_core::validate::validate(&spec).unwrap();
        let o = &spec.pruning.overrides;
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].pattern, r"^0\.weight$");
        assert_eq!(o[0].schedule, Some(schedule.with_final_sparsity(0.9)));
        assert!(o[1].skip && o[1].schedule.is_none());
        assert!(
            text.contains("schedule = { kind = \"polynomial_decay\", initial_sparsity = 0.0, final_sparsity = 0.9,"),
            "{text}"
        );
        assert!(!text.contains("skip = false"), "{text}");
        let constant = Schedule::ConstantSparsity { target_sparsity: 0.3, begin_step: 7, end_step: -1, frequency: 3 };
        let text = suggest(&analysis, &[probe("0.weight")], constant, 0.01);
        let job = job.replace(&suggest(&analysis, &[probe("0.weight"), probe("2.weight")], schedule, 0.01), &text);
        let spec = prune_core::validate::parse_toml(&job).unwrap();
        assert_eq!(spec.pruning.overrides[0].schedule, Some(constant.with_final_sparsity(0.9)));
    }
}
