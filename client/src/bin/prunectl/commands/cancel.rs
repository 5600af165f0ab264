//! `prunectl cancel ID`: cancels a queued or running job and prints its state.

use anyhow::Result;

use super::Ctx;

pub async fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let job = ctx.connect().await?.cancel(id).await?;
    ctx.out.show(&job, |j| format!("{} {}", j.id, j.state))?;
    Ok(())
}
