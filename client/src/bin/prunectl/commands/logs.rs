//! `prunectl logs ID [--follow]`: the job's worker log, every attempt in order.

use anyhow::Result;
use serde::Serialize;
use tokio_stream::StreamExt;

use super::Ctx;

#[derive(Serialize)]
struct Line<'a> {
    attempt: u32,
    line_no: i64,
    unix_ms: i64,
    text: &'a str,
}

pub async fn run(ctx: &Ctx, id: &str, follow: bool) -> Result<()> {
    let mut lines = ctx.connect().await?.logs(id, follow).await?;
    while let Some(line) = lines.next().await {
        let line = line.map_err(prune_client::ClientError::from)?;
        let shown = Line { attempt: line.attempt, line_no: line.line_no, unix_ms: line.unix_ms, text: &line.text };
        ctx.out.show(&shown, |l| format!("[attempt {}] {}", l.attempt, l.text))?;
    }
    Ok(())
}
