//! `prunectl status ID`: one job in detail.

use std::fmt::Write as _;

use anyhow::Result;
use prune_client::{JobInfo, JobKind};

use super::Ctx;
use crate::output::{age, bytes, duration, opt_number};

pub async fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let job = ctx.connect().await?.get_job(id).await?;
    ctx.out.show(&job, describe)?;
    Ok(())
}

/// `key  value` lines, leaving out what does not apply yet.
fn describe(job: &JobInfo) -> String {
    let mut rows: Vec<(&str, String)> = vec![("id", job.id.clone())];
    if !job.name.is_empty() {
        rows.push(("name", job.name.clone()));
    }
    let attempts =
        if job.attempts > 1 { format!(" (attempt {} of {})", job.attempts, job.max_attempts) } else { String::new() };
    rows.push(("state", format!("{}{attempts}", job.state)));
    if job.kind == JobKind::Tracked {
        // A loop outside the service reports to it (the `prune` Python package).
        let mut kind = format!("tracked, reported by {}", job.client.as_deref().unwrap_or("?"));
        if let Some(at) = job.reported_unix_ms {
            let _ = write!(kind, ", last report {}", age(at));
        }
        rows.push(("kind", kind));
    }
    if job.total_steps > 0 || job.step > 0 {
        let percent = if job.total_steps > 0 {
            format!(" ({:.0}%)", 100.0 * job.step as f64 / job.total_steps as f64)
        } else {
            String::new()
        };
        rows.push(("step", format!("{}/{}{percent}, epoch {}", job.step, job.total_steps, job.epoch)));
    }
    if let Some(mean) = job.mean_sparsity() {
        let each: Vec<String> = job.sparsity.iter().map(|t| format!("{} {:.3}", t.name, t.sparsity)).collect();
        rows.push(("sparsity", format!("{mean:.3} mean ({})", each.join(", "))));
    }
    if job.loss.is_some() || job.accuracy.is_some() {
        rows.push(("loss", opt_number(job.loss, 4)));
        rows.push(("accuracy", opt_number(job.accuracy, 4)));
    }
    if let Some(eta) = job.eta_seconds.filter(|_| !job.state.is_terminal()) {
        rows.push(("eta", duration(eta)));
    }
    rows.push(("created", age(job.created_unix_ms)));
    if let (Some(start), Some(end)) = (job.started_unix_ms, job.finished_unix_ms) {
        rows.push(("ran for", duration((end - start) as f64 / 1000.0)));
    }
    for a in &job.artifacts {
        rows.push(("artifact", format!("{} ({}, {}, {})", a.format, a.sparse_format, a.compression, bytes(a.size))));
    }
    if !job.labels.is_empty() {
        let labels: Vec<String> = job.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(("labels", labels.join(", ")));
    }
    if let Some(node) = &job.node {
        rows.push(("node", node.clone()));
    }
    if job.attempt_history.len() > 1 {
        for a in &job.attempt_history {
            let from = a.resumed_step.map_or_else(|| "from scratch".to_string(), |s| format!("from step {s}"));
            let outcome = a.outcome.as_deref().unwrap_or("running");
            let error = a.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            rows.push(("attempt", format!("{} on {} {from}, {outcome}{error}", a.number, a.node)));
        }
    }
    if let Some(error) = &job.error {
        rows.push(("error", error.clone()));
    }
    for warning in &job.warnings {
        rows.push(("warning", warning.clone()));
    }
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{key:<9} {value}");
    }
    out
}
