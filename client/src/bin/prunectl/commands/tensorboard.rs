//! `prunectl tensorboard ID --logdir DIR`: the job's metrics as a TensorBoard event file in
//! `DIR/<name>-<id>/`, one run per job (TensorBoard merges the event files of one directory).

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
    let client = ctx.connect().await?;
    let job = client.get_job(id).await?;
    let records = client.metrics(id, None).await?;
    let run_dir = logdir.join(run_name(&job.name, &job.id));
    // A second export of the same job replaces the first instead of doubling every point.
    if let Ok(entries) = std::fs::read_dir(&run_dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
                std::fs::remove_file(entry.path()).with_context(|| format!("replacing {}", entry.path().display()))?;
            }
        }
    }
    let path = prune_client::tensorboard::write_event_file(&run_dir, &records)
        .with_context(|| format!("writing an event file in {}", run_dir.display()))?;
    let written = Written { path: path.display().to_string(), points: records.len() };
    ctx.out.show(&written, |w| {
        format!("wrote {} ({} points); view with: tensorboard --logdir {}", w.path, w.points, logdir.display())
    })?;
    Ok(())
}

/// The run's directory name: the job's name (what people recognise in TensorBoard's run list,
/// characters other than letters, digits and `._-` replaced) and its id (two jobs of one name
/// stay two runs).
fn run_name(name: &str, id: &str) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let safe = safe.trim_matches('.');
    if safe.is_empty() {
        id.to_string()
    } else {
        format!("{safe}-{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::run_name;

    #[test]
    fn run_names_are_one_safe_path_component() {
        assert_eq!(run_name("digits mlp/v2", "job-1"), "digits_mlp_v2-job-1");
        assert_eq!(run_name("", "job-1"), "job-1");
        assert_eq!(run_name("..", "job-1"), "job-1");
    }
}
