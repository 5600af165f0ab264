//! Submit-time warnings and the step arithmetic they need.

use crate::schedule::Schedule;
use crate::spec::JobSpec;

/// Submit-time warnings: schedules that would silently do nothing or never reach their final
/// sparsity (tfmot #973/#975), for the main schedule and every override's, and overrides that
/// change nothing. `total_steps` is the job's number of training batches, when known.
///
/// One-shot jobs (`epochs = 0`) get no schedule warnings: they prune once at the final
/// sparsity, whatever the steps; nor do sensitivity jobs, which do not prune. m-by-n masks ignore the schedule, so theirs are skipped too.
pub fn warnings(spec: &JobSpec, total_steps: Option<i64>) -> Vec<String> {
    let p = &spec.pruning;
    let mut out: Vec<String> = p
        .overrides
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            !o.skip && o.schedule.is_none() && o.block_size.is_none() && o.block_pooling.is_none() && o.m_by_n.is_none()
        })
        .map(|(i, o)| {
            format!(
                "pruning.overrides[{i}]: sets nothing, so parameters matching `{}` get the top-level settings \
                 and no later override",
                o.pattern
            )
        })
        .collect();
    if spec.calibration.is_some() && spec.pruning.method == "magnitude" {
        out.push(
            "calibration: only pruning.method = \"wanda\" or \"sparsegpt\" reads it; magnitude pruning ignores it"
                .to_string(),
        );
    }
    // A sensitivity job does not prune on the schedule (its steps only shape the suggestions).
    let analysis_only = spec.sensitivity.is_some() && p.budget.is_none();
    if spec.training.epochs == 0 || analysis_only {
        return out;
    }
    // `Schedule::warnings` takes a negative count as "unknown".
    let total = total_steps.unwrap_or(-1);
    if p.m_by_n.is_none() {
        out.extend(schedule_warnings("pruning.schedule", &p.schedule, total));
    }
    if let (Some(budget), Some(first), true) = (&p.budget, p.schedule.first_pruning_step(), total > 0) {
        // The budget's analysis runs at the first pruning step: on a barely trained model its
        // curves (and the dense accuracy max_accuracy_drop is measured from) mean little.
        let epoch = total / spec.training.epochs.max(1);
        if first < epoch {
            let drop = match budget.max_accuracy_drop {
                Some(_) => ", and max_accuracy_drop is measured from that model's accuracy",
                None => "",
            };
            out.push(format!(
                "pruning.budget: the schedule first prunes at step {first}, before one epoch of dense training \
                 ({epoch} steps); the budget's sensitivity analysis runs there, on a barely trained model{drop}: give \
                 pruning.schedule a begin_step after a dense warm-up"
            ));
        }
    }
    for (i, o) in p.overrides.iter().enumerate() {
        if let (Some(schedule), false, None) = (&o.schedule, o.skip, o.m_by_n) {
            out.extend(schedule_warnings(&format!("pruning.overrides[{i}].schedule"), schedule, total));
        }
    }
    out
}

fn schedule_warnings(at: &str, schedule: &Schedule, total_steps: i64) -> Vec<String> {
    schedule.warnings(total_steps).into_iter().map(|w| format!("{at}: {w}")).collect()
}

/// Training steps in one epoch: `ceil(train_samples / batch_size)`, since the last partial
/// batch is a step too (as in Keras). 0 when either count is not positive.
pub fn steps_per_epoch(train_samples: i64, batch_size: i64) -> i64 {
    if train_samples <= 0 || batch_size <= 0 {
        return 0;
    }
    train_samples / batch_size + i64::from(train_samples % batch_size != 0)
}
