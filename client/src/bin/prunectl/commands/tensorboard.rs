//! `prunectl tensorboard ID --logdir DIR`: the job's metrics as a TensorBoard event file.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Ctx;

#[derive(Serialize)]
struct Written {
    path: String,
    points: usize,
}

pub async fn run(ctx: &Ctx, id: &str, logdir: &Path) -> Result<()> {
    let records = ctx.connect().await?.metrics(id, None).await?;
    let path = prune_client::tensorboard::write_event_file(logdir, &records)
        .with_context(|| format!("writing an event file in {}", logdir.display()))?;
    let written = Written { path: path.display().to_string(), points: records.len() };
    ctx.out.show(&written, |w| {
        format!("wrote {} ({} points); view with: tensorboard --logdir {}", w.path, w.points, logdir.display())
    })?;
    Ok(())
}
