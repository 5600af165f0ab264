//! `prunectl submit JOB.toml [--wait]`: validate locally, upload the files the job names,
//! create the job, print its id; with `--wait`, then follow it like `watch`.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{watch, Ctx};
use crate::output;

#[derive(Serialize)]
struct Created<'a> {
    id: &'a str,
    state: &'a str,
    warnings: &'a [String],
}

pub async fn run(ctx: &Ctx, job_file: &Path, wait: bool, options: &prune_client::SubmitOptions) -> Result<()> {
    // Parse and validate before connecting: a typo is reported even with no server around.
    let mut spec = prune_client::jobfile::load(job_file)?;
    prune_client::jobfile::check_local_files(&spec, prune_client::jobfile::base_dir(job_file))?;
    let client = ctx.connect().await?;
    for uploaded in client.upload_job_files(&mut spec, prune_client::jobfile::base_dir(job_file)).await? {
        let what = if uploaded.uploaded { "uploaded" } else { "already on the server:" };
        eprintln!("{what} {} ({}, {})", uploaded.path.display(), uploaded.id, output::bytes(uploaded.size));
    }
    let job = client.submit_with(&spec, options).await?;
    for warning in &job.warnings {
        eprintln!("warning: {warning}");
    }
    let created = Created { id: &job.id, state: job.state.as_str(), warnings: &job.warnings };
    ctx.out.show(&created, |c| c.id.to_string())?;
    if wait {
        watch::follow(&client, ctx.out, &job.id).await?;
    }
    Ok(())
}
