//! `prunectl unpack PACKED -o DENSE`: offline, no server.

use std::path::Path;

use anyhow::Result;

use super::Ctx;
use crate::output::bytes;

pub fn run(ctx: &Ctx, input: &Path, output: &Path) -> Result<()> {
    let unpacked = prune_client::unpack::unpack_file(input, output)?;
    ctx.out.show(&unpacked, |u| format!("wrote {} ({})", u.path.display(), bytes(u.bytes)))?;
    Ok(())
}
