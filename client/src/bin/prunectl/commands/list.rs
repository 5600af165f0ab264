//! `prunectl list`: every job, newest first.

use anyhow::Result;
use prune_client::JobInfo;

use super::Ctx;
use crate::output::{age, opt_number, table};

pub async fn run(ctx: &Ctx) -> Result<()> {
    let jobs = ctx.connect().await?.list_jobs().await?;
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
            ]
        })
        .collect();
    table(&["ID", "STATE", "STEP", "SPARSITY", "CREATED", "NAME"], &rows)
}
