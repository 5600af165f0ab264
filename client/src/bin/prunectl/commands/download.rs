//! `prunectl download ID -o PATH [--format F] [--raw]`: resumable, sha256-verified.

use std::path::Path;

use anyhow::Result;

use super::Ctx;
use crate::output::bytes;

pub async fn run(ctx: &Ctx, id: &str, output: &Path, format: Option<&str>, raw: bool) -> Result<()> {
    let done = ctx.connect().await?.download_to(id, output, format, raw).await?;
    ctx.out.show(&done, |d| {
        let resumed =
            if d.resumed_from > 0 { format!(", resumed at {}", bytes(d.resumed_from)) } else { String::new() };
        let served = if d.raw { "as served".to_string() } else { format!("{} served", bytes(d.artifact.size)) };
        format!(
            "wrote {} ({} {} {}, {}; {served}{resumed}; sha256 {} verified)",
            d.path.display(),
            d.artifact.format,
            d.artifact.sparse_format,
            bytes(d.bytes),
            d.artifact.compression,
            d.artifact.sha256
        )
    })?;
    Ok(())
}
