//! `prunectl upload FILE`: prints the blob id (the upload is skipped when the server has it).

use std::path::Path;

use anyhow::Result;

use super::Ctx;

pub async fn run(ctx: &Ctx, file: &Path) -> Result<()> {
    let uploaded = ctx.connect().await?.upload_file(file).await?;
    ctx.out.show(&uploaded, |u| u.id.clone())?;
    Ok(())
}
