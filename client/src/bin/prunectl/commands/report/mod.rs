//! `prunectl report ID`: what a finished job pruned, what its artifacts weigh and how fast the
//! pruned model runs against the dense one.

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
