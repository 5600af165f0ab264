//! `prunectl list`: every job, newest first.

use anyhow::Result;
use prune_client::JobInfo;

use super::Ctx;
use crate::cli::StateArg;

/// `--label`, `--state` and `--filter` as one AIP-160 filter (joined with AND).
fn combined_filter(labels: &[(String, String)], state: Option<StateArg>, filter: Option<&str>) -> String {
    let quoted = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("labels.{k} = {}", quoted(v))).collect();
    if let Some(state) = state {
        parts.push(format!("state = {}", state.as_str()));
    }
    if let Some(filter) = filter.filter(|f| !f.trim().is_empty()) {
        parts.push(filter.to_string());
    }
    parts.join(" AND ")
}
use crate::output::{age, opt_number, table};

pub async fn run(ctx: &Ctx, labels: &[(String, String)], state: Option<StateArg>, filter: Option<&str>) -> Result<()> {
    let jobs = ctx.connect().await?.list_jobs_filtered(&combined_filter(labels, state, filter)).await?;
    ctx.out.show(&jobs, |jobs| describe(jobs))?;
    Ok(())
}

fn describe(jobs: &[JobInfo]) -> String {
    if jobs.is_empty() {
        return "no jobs".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.state.to_string(),
                if j.total_steps > 0 { format!("{}/{}", j.step, j.total_steps) } else { "-".into() },
                opt_number(j.mean_sparsity(), 3),
                age(j.created_unix_ms),
                j.name.clone(),
                j.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    table(&["ID", "STATE", "STEP", "SPARSITY", "CREATED", "NAME", "LABELS"], &rows)
}
