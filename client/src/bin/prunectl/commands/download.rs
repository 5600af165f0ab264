//! `prunectl download ID -o PATH [--format F] [--raw]`: resumable, sha256-verified; `-o DIR/`
//! downloads every file of an export of several (a sharded checkpoint) into DIR.

use std::path::Path;

use anyhow::Result;

use prune_client::download::DownloadOutcome;

use super::Ctx;
use crate::output::bytes;

pub async fn run(ctx: &Ctx, id: &str, output: &Path, format: Option<&str>, raw: bool) -> Result<()> {
    let client = ctx.connect().await?;
    // `-o DIR/` (or an existing directory): every file of the export, as a sharded checkpoint
    // is, into that directory.
    if output.as_os_str().to_string_lossy().ends_with('/') || output.is_dir() {
        let done = client.download_dir(id, output, format, raw).await?;
        ctx.out.show(&done, |files| files.iter().map(line).collect::<Vec<_>>().join("\n"))?;
        return Ok(());
    }
    let job = client.get_job(id).await?;
    let wanted = format.or_else(|| job.default_format());
    let count = job.artifacts.iter().filter(|a| Some(a.format.as_str()) == wanted).count();
    if count > 1 {
        anyhow::bail!(
            "job {id}'s export is {count} files (a sharded checkpoint): download it into a directory, e.g. `prunectl download {id} -o {}/`",
            output.display()
        );
    }
    let done = client.download_to(id, output, wanted, raw).await?;
    ctx.out.show(&done, line)?;
    Ok(())
}

fn line(d: &DownloadOutcome) -> String {
    let resumed = if d.resumed_from > 0 { format!(", resumed at {}", bytes(d.resumed_from)) } else { String::new() };
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
}
