//! The parts of `prunectl report` that a sensitivity analysis or a pruning budget adds: the
//! per-tensor sensitivity table, the suggested overrides and how the budget was met.

use std::fmt::Write as _;

use prune_client::{BudgetReport, Report, SensitivityPoint};

use crate::output::{bytes, opt_number, table};

/// One row per tensor, one column per level: the measure a reader compares across levels fits
/// a screen for ~10 tensors x 5 levels, where a long table would be 50 rows.
pub fn sensitivity_section(report: &Report) -> Option<String> {
    let points = &report.sensitivity;
    if points.is_empty() {
        return None;
    }
    // Under mse there is no accuracy: the table shows the loss instead.
    let accuracy = points.iter().any(|p| p.accuracy.is_some());
    // Levels as measured: an m-by-n method measures one level (m/n) whatever the job listed.
    let mut levels: Vec<f64> = points.iter().map(|p| p.sparsity).collect();
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    let mut tensors: Vec<&str> = Vec::new();
    for p in points {
        if !tensors.contains(&p.tensor.as_str()) {
            tensors.push(&p.tensor);
        }
    }
    let dense = dense_measure(report, accuracy);
    let mut headers = vec!["TENSOR".to_string(), "DENSE".to_string()];
    headers.extend(levels.iter().map(|l| level_header(*l)));
    let rows: Vec<Vec<String>> = tensors
        .iter()
        .map(|&tensor| {
            let mut row = vec![tensor.to_string(), opt_number(dense, 4)];
            row.extend(levels.iter().map(|&level| {
                let point = points.iter().find(|p| p.tensor == tensor && p.sparsity == level);
                point.map_or_else(|| "-".to_string(), |p| measure(p, accuracy))
            }));
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let what = if accuracy { "validation accuracy" } else { "validation loss (mse)" };
    let mut out = format!("sensitivity: {what} with one tensor pruned alone, one-shot, at each sparsity\n");
    out.push_str(&table(&headers, &rows));
    Some(out)
}

/// The dense model's value the levels compare against. A budget job's final loss is of the
/// pruned model: its dense loss is the budget's.
fn dense_measure(report: &Report, accuracy: bool) -> Option<f64> {
    match (&report.budget, accuracy) {
        (Some(b), true) => b.dense_accuracy.or(report.dense_val_accuracy),
        (None, true) => report.dense_val_accuracy,
        (Some(b), false) => b.dense_loss,
        // A sensitivity job's final model is the dense one.
        (None, false) => report.final_val_loss,
    }
}

/// `0.5`, `0.95`, `0.975`: as short as the level is exact, so close levels stay apart.
fn level_header(level: f64) -> String {
    let rounded = (level * 1e6).round() / 1e6;
    format!("{rounded}")
}

fn measure(p: &SensitivityPoint, accuracy: bool) -> String {
    if accuracy {
        opt_number(p.accuracy, 4)
    } else {
        format!("{:.4}", p.loss)
    }
}

/// The TOML as served, to paste into the job file's `[pruning]`.
pub fn overrides_section(report: &Report) -> Option<String> {
    let text = report.suggested_overrides.as_deref().filter(|t| !t.trim().is_empty())?;
    let mut out = String::from("suggested overrides (download: --format suggested_overrides)\n");
    out.push_str(text);
    if !text.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

/// The bounds, the sparsity planned and reached per tensor, and the result against the bounds.
/// `final_loss`: the result's validation loss (the report's), shown under `mse`, where there is
/// no accuracy.
pub fn budget_section(b: &BudgetReport, final_loss: Option<f64>) -> String {
    let rows: Vec<Vec<String>> = b
        .chosen
        .iter()
        .map(|c| vec![c.tensor.clone(), format!("{:.3}", c.planned), format!("{:.3}", c.sparsity)])
        .collect();
    let mut out = String::from("budget\n");
    out.push_str(&table(&["TENSOR", "PLANNED", "FINAL"], &rows));
    let mut facts: Vec<(&str, String)> = Vec::new();
    let mut bounds = Vec::new();
    if let Some(max) = b.max_bytes {
        bounds.push(format!("max_bytes {max} ({})", bytes(max)));
    }
    if let Some(drop) = b.max_accuracy_drop {
        bounds.push(format!("max_accuracy_drop {drop}"));
    }
    facts.push(("bounds", bounds.join(", ")));
    let fits = match b.max_bytes {
        Some(max) if b.artifact_bytes <= max => ", within max_bytes",
        Some(_) => ", over max_bytes",
        None => "",
    };
    facts.push(("artifact", format!("{} file {} ({} B){fits}", b.format, bytes(b.artifact_bytes), b.artifact_bytes)));
    let drop = match (b.dense_accuracy, b.accuracy) {
        (Some(dense), Some(now)) => format!(", drop {:.4}", dense - now),
        _ => String::new(),
    };
    if b.accuracy.is_none() && b.dense_accuracy.is_none() {
        facts.push(("loss", format!("{} (dense model: {})", opt_number(final_loss, 4), opt_number(b.dense_loss, 4))));
    } else {
        facts.push((
            "accuracy",
            format!("{} (dense model: {}){drop}", opt_number(b.accuracy, 4), opt_number(b.dense_accuracy, 4)),
        ));
    }
    facts.push(("further steps", b.further_steps.to_string()));
    facts.extend(b.notes.iter().map(|n| ("note", n.clone())));
    let width = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in facts {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}
