//! `prunectl watch ID` (and `submit --wait`): follow a job to its end; succeed only if the job
//! did.

use anyhow::{anyhow, Result};
use prune_client::{Client, JobInfo, JobState, WatchEvent};
use tokio_stream::StreamExt;

use super::Ctx;
use crate::output::Output;
use crate::progress::Renderer;

/// The watch worked but the job ended FAILED or CANCELLED: `main` exits with its own status.
#[derive(Debug, thiserror::Error)]
#[error("job {id} {state}{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct JobDidNotSucceed {
    pub id: String,
    pub state: JobState,
    pub error: Option<String>,
}

pub async fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let client = ctx.connect().await?;
    follow(&client, ctx.out, id).await
}

/// Shows the job's events until it ends; `Ok` only if it SUCCEEDED.
pub async fn follow(client: &Client, out: Output, id: &str) -> Result<()> {
    let mut renderer = Renderer::new(out);
    let job = match last_job(client, &mut renderer, id).await {
        Ok(job) => job,
        Err(e) => {
            renderer.abandon();
            return Err(e);
        }
    };
    renderer.finish(&job)?;
    if job.state == JobState::Succeeded {
        Ok(())
    } else {
        Err(JobDidNotSucceed { id: job.id, state: job.state, error: job.error }.into())
    }
}

/// Renders every event and returns the job as last reported (in a terminal state).
async fn last_job(client: &Client, renderer: &mut Renderer, id: &str) -> Result<JobInfo> {
    let mut events = client.watch(id);
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event?;
        renderer.event(&event)?;
        if let WatchEvent::Job(job) = event {
            last = Some(*job);
        }
    }
    last.filter(|j| j.state.is_terminal()).ok_or_else(|| anyhow!("the watch of job {id} ended before the job did"))
}
