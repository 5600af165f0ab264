//! `prunectl report ID`: what a finished job pruned, what its artifacts weigh and how fast the
//! pruned model runs against the dense one; for a sensitivity analysis or a budget, also what
//! each tensor can take and what was chosen ([`analysis`]); for a language model, its
//! perplexity and each Linear's reconstruction error ([`language`]).

mod analysis;
mod language;

use std::fmt::Write as _;

use anyhow::Result;
use prune_client::Report;

use super::Ctx;
use crate::output::{bytes, opt_number, table};

pub async fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let report = ctx.connect().await?.report(id).await?;
    ctx.out.show(&report, describe)?;
    Ok(())
}

fn describe(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .tensors
        .iter()
        .map(|t| {
            let shape: Vec<String> = t.shape.iter().map(i64::to_string).collect();
            vec![
                t.name.clone(),
                format!("[{}]", shape.join(", ")),
                if t.pruned { "yes" } else { "no" }.into(),
                format!("{}/{}", t.nonzero, t.numel),
                format!("{:.3}", t.sparsity),
            ]
        })
        .collect();
    let mut out = table(&["TENSOR", "SHAPE", "PRUNED", "NONZERO", "SPARSITY"], &rows);
    if let Some(channels) = &report.channels {
        out.push('\n');
        out.push_str(&channel_table(channels));
    }
    let mut facts = vec![
        ("steps".to_string(), report.steps.to_string()),
        (
            "val accuracy".into(),
            format!(
                "{} (dense model: {})",
                opt_number(report.final_val_accuracy, 4),
                opt_number(report.dense_val_accuracy, 4)
            ),
        ),
        ("dense size".into(), format!("{} (gzipped: {})", bytes(report.dense_bytes), gzipped(report.gzip_dense_bytes))),
    ];
    facts.extend(report.artifact_bytes.iter().map(|(format, size)| (format!("{format} file"), bytes(*size))));
    facts.extend(report.inference.iter().map(|t| {
        (
            format!("inference, batch {}", t.batch_size),
            format!(
                "dense {:.3} ms, pruned {:.3} ms: {:.2}x (median of {} runs)",
                t.dense_ms, t.pruned_ms, t.speedup, t.runs
            ),
        )
    }));
    if let Some(note) = &report.inference_note {
        facts.push(("inference".into(), note.clone()));
    }
    if !report.kept_dense.is_empty() {
        let n = report.kept_dense.len();
        facts.push((
            "stored dense".into(),
            format!(
                "{n} weight(s) in the bitmask file, packing would have made them larger: {}",
                report.kept_dense.join(", ")
            ),
        ));
    }
    if let Some(c) = &report.channels {
        facts.push((
            "parameters".into(),
            format!("{} -> {}{}", c.params_before, c.params_after, ratio(c.params_before, c.params_after)),
        ));
        if let (Some(before), Some(after)) = (c.flops_before, c.flops_after) {
            facts.push(("FLOPs per sample".into(), format!("{before} -> {after}{}", ratio(before, after))));
        }
        let holds = if c.slim { "slim: removed channels cut out" } else { "dense shapes, removed channels zeroed" };
        facts.push(("artifact".into(), holds.into()));
        if let Some(note) = &c.note {
            facts.push(("channels".into(), note.clone()));
        }
    }
    let width = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    out.push('\n');
    for (key, value) in facts {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    // The overrides last: TOML to copy, best not followed by anything else.
    let sections = [
        report.language_model.as_deref().map(language::language_section),
        analysis::sensitivity_section(report),
        report.budget.as_deref().map(|b| analysis::budget_section(b, report.final_val_loss)),
        analysis::overrides_section(report),
    ];
    for section in sections.into_iter().flatten() {
        out.push('\n');
        out.push_str(&section);
    }
    out
}

/// One row per layer channel pruning touched: shapes before and after, channels removed.
fn channel_table(c: &prune_client::ChannelReport) -> String {
    let shape = |s: &[i64]| format!("[{}]", s.iter().map(i64::to_string).collect::<Vec<_>>().join(", "));
    let rows: Vec<Vec<String>> = c
        .layers
        .iter()
        .map(|l| {
            vec![
                l.layer.clone(),
                l.kind.clone(),
                shape(&l.shape_before),
                shape(&l.shape_after),
                l.removed.len().to_string(),
            ]
        })
        .collect();
    table(&["LAYER", "KIND", "SHAPE BEFORE", "SHAPE AFTER", "CHANNELS REMOVED"], &rows)
}

/// `  (4.00x fewer)`, or nothing when nothing was saved.
fn ratio(before: u64, after: u64) -> String {
    if after == 0 || after >= before {
        String::new()
    } else {
        format!(" ({:.2}x fewer)", before as f64 / after as f64)
    }
}

/// The gzipped dense size, which the engine measures only for dense models up to 128 MiB.
fn gzipped(gzip_dense_bytes: u64) -> String {
    if gzip_dense_bytes == 0 {
        "not measured, over 128 MiB".into()
    } else {
        bytes(gzip_dense_bytes)
    }
}

#[cfg(test)]
mod tests {
    use prune_client::types::TensorReport;
    use prune_client::{BudgetReport, ChosenSparsity, SensitivityPoint};

    use super::*;

    fn point(tensor: &str, sparsity: f64, accuracy: f64) -> SensitivityPoint {
        SensitivityPoint {
            tensor: tensor.into(),
            sparsity,
            accuracy: Some(accuracy),
            loss: 1.0 - accuracy,
            params_removed: 7,
        }
    }

    /// A digits MLP analysed at three levels, then pruned to a budget.
    fn analysed() -> Report {
        let tensor = |name: &str, sparsity: f64| TensorReport {
            name: name.into(),
            shape: vec![10, 64],
            pruned: true,
            numel: 640,
            nonzero: 320,
            sparsity,
        };
        Report {
            tensors: vec![tensor("0.weight", 0.5), tensor("2.weight", 0.9)],
            dense_bytes: 40_000,
            gzip_dense_bytes: 36_000,
            artifact_bytes: [("safetensors".to_string(), 12_345)].into(),
            final_val_accuracy: Some(0.96),
            dense_val_accuracy: Some(0.975),
            steps: 100,
            sensitivity: vec![
                point("0.weight", 0.5, 0.97),
                point("0.weight", 0.8, 0.95),
                point("0.weight", 0.95, 0.61),
                point("2.weight", 0.5, 0.975),
                point("2.weight", 0.8, 0.9711),
                point("2.weight", 0.95, 0.93),
            ],
            suggested_overrides: Some("[[pruning.overrides]]\nmatch = \"^0\\\\.weight$\"\nskip = true\n".into()),
            budget: Some(Box::new(BudgetReport {
                max_bytes: Some(15_000),
                max_accuracy_drop: Some(0.02),
                chosen: vec![
                    ChosenSparsity { tensor: "0.weight".into(), planned: 0.5, sparsity: 0.5 },
                    ChosenSparsity { tensor: "2.weight".into(), planned: 0.8, sparsity: 0.9 },
                ],
                format: "safetensors".into(),
                artifact_bytes: 12_345,
                dense_accuracy: Some(0.975),
                accuracy: Some(0.96),
                dense_loss: Some(0.08),
                further_steps: 1,
                notes: vec!["pruned 2.weight further to 0.9 to fit max_bytes".into()],
            })),
            ..Default::default()
        }
    }

    fn line_of<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
    }

    fn sensitivity_header(text: &str) -> &str {
        text.lines().find(|l| l.starts_with("TENSOR") && l.contains("DENSE")).expect(text)
    }

    #[test]
    fn text_shows_sensitivity_budget_and_overrides() {
        let text = describe(&analysed());
        let header = sensitivity_header(&text);
        assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["TENSOR", "DENSE", "0.5", "0.8", "0.95"]);
        let row = |name: &str| {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
            // The tensor table, the sensitivity table, the budget table, in that order.
            assert_eq!(lines.len(), 3, "{text}");
            lines.iter().map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        assert_eq!(row("0.weight")[1], ["0.weight", "0.9750", "0.9700", "0.9500", "0.6100"]);
        assert_eq!(row("2.weight")[1], ["2.weight", "0.9750", "0.9750", "0.9711", "0.9300"]);
        assert_eq!(row("2.weight")[2], ["2.weight", "0.800", "0.900"]);
        assert!(text.contains("TENSOR    PLANNED  FINAL"), "{text}");
        assert_eq!(line_of(&text, "bounds"), "bounds         max_bytes 15000 (14.6 KiB), max_accuracy_drop 0.02");
        assert_eq!(line_of(&text, "artifact "), "artifact       safetensors file 12.1 KiB (12345 B), within max_bytes");
        assert_eq!(line_of(&text, "accuracy"), "accuracy       0.9600 (dense model: 0.9750), drop 0.0150");
        assert_eq!(line_of(&text, "further steps"), "further steps  1");
        assert_eq!(line_of(&text, "note"), "note           pruned 2.weight further to 0.9 to fit max_bytes");
        // The TOML comes last, verbatim, so it can be copied as is.
        assert!(text.ends_with("[[pruning.overrides]]\nmatch = \"^0\\\\.weight$\"\nskip = true\n"), "{text}");
    }

    #[test]
    fn mse_analysis_shows_losses_and_missing_levels() {
        let mut report = analysed();
        report.budget = None;
        report.suggested_overrides = None;
        report.final_val_loss = Some(0.125);
        for p in &mut report.sensitivity {
            p.accuracy = None;
        }
        // An m-by-n tensor measured at m/n only.
        report.sensitivity.push(SensitivityPoint {
            tensor: "4.weight".into(),
            sparsity: 0.75,
            accuracy: None,
            loss: 0.5,
            params_removed: 48,
        });
        let text = describe(&report);
        assert!(text.contains("validation loss (mse)"), "{text}");
        let header = sensitivity_header(&text);
        assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["TENSOR", "DENSE", "0.5", "0.75", "0.8", "0.95"]);
        let row: Vec<&str> = line_of(&text, "4.weight").split_whitespace().collect();
        assert_eq!(row, ["4.weight", "0.1250", "-", "0.5000", "-", "-"]);
        let row: Vec<&str> =
            text.lines().filter(|l| l.starts_with("0.weight")).nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row, ["0.weight", "0.1250", "0.0300", "-", "0.0500", "0.3900"]);
        assert!(!text.contains("budget") && !text.contains("suggested overrides"), "{text}");
    }

    #[test]
    fn an_mse_budget_compares_with_the_budgets_dense_loss() {
        let mut report = analysed();
        // The final loss is the pruned model's; the dense one is the budget's.
        report.final_val_loss = Some(0.5);
        for p in &mut report.sensitivity {
            p.accuracy = None;
        }
        let b = report.budget.as_mut().unwrap();
        (b.dense_accuracy, b.accuracy, b.max_accuracy_drop) = (None, None, None);
        // The tensor table's row comes first, the sensitivity table's second.
        let dense_column = |text: &str| -> String {
            let row = text.lines().filter(|l| l.starts_with("2.weight")).nth(1).expect(text);
            row.split_whitespace().nth(1).unwrap().to_string()
        };
        let text = describe(&report);
        assert_eq!(dense_column(&text), "0.0800");
        // No accuracies under mse: the budget section gives the losses.
        let budget = &text[text.find("\nbudget\n").expect(&text)..];
        assert!(budget.contains("\nloss           0.5000 (dense model: 0.0800)\n"), "{budget}");
        assert!(!budget.contains("\naccuracy"), "{budget}");
        report.budget.as_mut().unwrap().dense_loss = None;
        assert_eq!(dense_column(&describe(&report)), "-");
    }

    #[test]
    fn a_plain_report_has_no_analysis_sections() {
        let mut report = analysed();
        report.sensitivity.clear();
        report.suggested_overrides = None;
        report.budget = None;
        let text = describe(&report);
        assert!(!text.contains("sensitivity") && !text.contains("budget") && !text.contains("overrides"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        for key in ["sensitivity", "suggested_overrides", "budget"] {
            assert!(json.get(key).is_none(), "{key} in {json}");
        }
    }

    /// The language model's section comes after the facts; `--json` carries it whole, by the
    /// domain type's names.
    #[test]
    fn a_language_model_report_has_its_section_in_text_and_json() {
        let mut report = analysed();
        report.sensitivity.clear();
        report.suggested_overrides = None;
        report.budget = None;
        let text = describe(&report);
        assert!(!text.contains("language model"), "{text}");
        report.language_model = Some(Box::new(super::language::tests::report()));
        let text = describe(&report);
        let section = &text[text.find("\nlanguage model\n").expect(&text)..];
        assert!(section.contains("\nperplexity    24.10 -> 42.20"), "{section}");
        assert!(section.contains("\nKIND  LINEARS  MEAN RELATIVE ERROR\n"), "{section}");

        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        let lm = &json["language_model"];
        assert_eq!((lm["method"].as_str(), lm["architecture"].as_str()), (Some("sparsegpt"), Some("LlamaForCausalLM")));
        assert_eq!(
            (lm["layers"].as_u64(), lm["calibration_samples"].as_u64(), lm["calibration_seq_len"].as_u64()),
            (Some(2), Some(32), Some(256))
        );
        assert_eq!(lm["perplexity"], serde_json::json!({"dense": 24.1, "pruned": 42.2, "seq_len": 256, "windows": 17}));
        assert_eq!(lm["reconstruction"].as_array().unwrap().len(), 14);
        assert_eq!(
            lm["reconstruction"][0],
            serde_json::json!({"tensor": "model.layers.0.self_attn.q_proj.weight", "layer": 0, "relative_error": 0.0})
        );
        assert_eq!(lm["peak_memory_bytes"], 900u64 << 20);
        assert_eq!(lm["prune_seconds"], 61.54);
        assert_eq!(lm["warnings"].as_array().unwrap().len(), 1);
        assert_eq!(serde_json::from_value::<Report>(json).unwrap(), report);
    }

    /// `--json` prints the report through serde as is: the analysis is in it, by these names.
    #[test]
    fn json_carries_the_analysis() {
        let report = analysed();
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(
            json["sensitivity"][1],
            serde_json::json!({"tensor": "0.weight", "sparsity": 0.8, "accuracy": 0.95, "loss": 1.0 - 0.95, "params_removed": 7})
        );
        assert_eq!(json["sensitivity"].as_array().unwrap().len(), 6);
        assert_eq!(json["suggested_overrides"], report.suggested_overrides.as_deref().unwrap());
        let budget = &json["budget"];
        assert_eq!(budget["max_bytes"], 15_000);
        assert_eq!(budget["max_accuracy_drop"], 0.02);
        assert_eq!(budget["chosen"][1], serde_json::json!({"tensor": "2.weight", "planned": 0.8, "sparsity": 0.9}));
        assert_eq!(budget["format"], "safetensors");
        assert_eq!(budget["artifact_bytes"], 12_345);
        assert_eq!((budget["dense_accuracy"].as_f64(), budget["accuracy"].as_f64()), (Some(0.975), Some(0.96)));
        assert_eq!(budget["further_steps"], 1);
        assert_eq!(budget["notes"][0], "pruned 2.weight further to 0.9 to fit max_bytes");
        // And it reads back whole.
        assert_eq!(serde_json::from_value::<Report>(json).unwrap(), report);
    }
}
