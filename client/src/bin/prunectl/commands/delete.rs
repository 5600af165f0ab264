//! `prunectl delete ID`: deletes a finished job (a queued or running one: cancel it first).

use anyhow::Result;
use serde::Serialize;

use super::Ctx;

#[derive(Serialize)]
struct Deleted<'a> {
    id: &'a str,
    deleted: bool,
}

pub async fn run(ctx: &Ctx, id: &str) -> Result<()> {
    ctx.connect().await?.delete(id).await?;
    ctx.out.show(&Deleted { id, deleted: true }, |d| format!("{} deleted", d.id))?;
    Ok(())
}
