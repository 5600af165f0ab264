//! `prunectl sweep JOB.toml --sparsities 0.5,0.7,... -o DIR`: the job once per final sparsity,
//! watched together; then `DIR/sweep.csv` and the Pareto plot `DIR/pareto.{png,svg}`.
//!
//! Everything that can be checked locally is checked before anything is uploaded or
//! submitted (the list and the directory by the argument parser, the job file and each derived
//! job here). Each job's request id depends only on what the job is, so running the same sweep
//! again re-attaches to its jobs (finished or not) instead of submitting them twice.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use prune_client::sweep::{plan, results, Row};
use prune_client::{plot, Client, JobInfo, JobState, WatchEvent};
use serde::Serialize;

use super::Ctx;
use crate::multi_progress::{MultiRenderer, Watched};
use crate::output::{self, bytes, opt_number, table};

pub const CSV_FILE: &str = "sweep.csv";
pub const PNG_FILE: &str = "pareto.png";
pub const SVG_FILE: &str = "pareto.svg";

/// The sweep ran, but some of its jobs ended FAILED or CANCELLED: `main` exits 3, as `watch`
/// does; the files cover the jobs that succeeded.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} sweep jobs did not succeed: {}", failed.len(), failed.join("; "))]
pub struct SweepDidNotSucceed {
    pub total: usize,
    /// `job-x (s=0.9) FAILED: reason`, one per job.
    pub failed: Vec<String>,
}

/// The last line of `--json`: the rows and where the files are.
#[derive(Serialize)]
struct Summary<'a> {
    event: &'static str,
    sweep: &'a str,
    rows: &'a [Row],
    csv: &'a Path,
    png: &'a Path,
    svg: &'a Path,
}

pub async fn run(ctx: &Ctx, job_file: &Path, sparsities: &[f64], dir: &Path) -> Result<()> {
    // Everything local first: a typo costs no upload and submits nothing.
    let mut spec = prune_client::jobfile::load(job_file)?;
    plan::check(&spec, job_file, sparsities)?;
    prune_client::jobfile::check_local_files(&spec, prune_client::jobfile::base_dir(job_file))?;
    let base = plan::base_name(&spec, job_file);
    let title = format!("{}: accuracy vs artifact size", plan::model_title(&spec, job_file));
    let format = spec.export.formats.first().cloned().unwrap_or_else(|| "safetensors".into());
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for warning in plan::warnings(&spec, sparsities) {
        eprintln!("warning: {warning}");
    }

    let client = ctx.connect().await?;
    // Uploaded once for all the jobs: they share the blobs.
    for uploaded in client.upload_job_files(&mut spec, prune_client::jobfile::base_dir(job_file)).await? {
        let what = if uploaded.uploaded { "uploaded" } else { "already on the server:" };
        eprintln!("{what} {} ({}, {})", uploaded.path.display(), uploaded.id, bytes(uploaded.size));
    }
    let planned = plan::plan(&spec, &base, sparsities);
    let sweep_id = planned.first().map(|p| p.options.labels[plan::LABEL_KEY].clone()).unwrap_or_default();
    let mut watched = Vec::with_capacity(planned.len());
    for job in &planned {
        let created = client.submit_with(&job.spec, &job.options).await?;
        for warning in &created.warnings {
            eprintln!("warning: {} (s={}): {warning}", created.id, job.sparsity);
        }
        eprintln!("s={} {} {}", job.sparsity, created.id, created.state);
        watched.push(Watched { sparsity: job.sparsity, id: created.id });
    }
    eprintln!("sweep {sweep_id}: {} jobs, label {}={sweep_id}", watched.len(), plan::LABEL_KEY);

    let finals = watch_all(&client, ctx, watched).await?;
    let mut rows = Vec::with_capacity(finals.len());
    for (sparsity, job) in sparsities.iter().zip(&finals) {
        let report = if job.state == JobState::Succeeded { Some(client.report(&job.id).await?) } else { None };
        rows.push(Row::new(*sparsity, job, report.as_ref(), &format));
    }
    let files = write_files(dir, &title, &rows)?;

    if ctx.out.json {
        let summary =
            Summary { event: "sweep", sweep: &sweep_id, rows: &rows, csv: &files[0], png: &files[1], svg: &files[2] };
        ctx.out.json_line(&summary)?;
    } else {
        output::print_text(&describe(&rows))?;
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        output::print_text(&format!("wrote {}", names.join(", ")))?;
    }
    let failed: Vec<String> = finals
        .iter()
        .zip(sparsities)
        .filter(|(job, _)| job.state != JobState::Succeeded)
        .map(|(job, s)| {
            let reason = job.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
            format!("{} (s={s}) {}{reason}", job.id, job.state)
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SweepDidNotSucceed { total: finals.len(), failed }.into())
    }
}

/// Follows every job until all have ended; returns each as last reported, in `jobs` order.
async fn watch_all(client: &Client, ctx: &Ctx, jobs: Vec<Watched>) -> Result<Vec<JobInfo>> {
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let mut renderer = MultiRenderer::new(ctx.out, jobs);
    let streams = ids.iter().enumerate().map(|(i, id)| client.watch(id).map(move |event| (i, event)));
    let mut events = futures::stream::select_all(streams);
    let mut last: Vec<Option<JobInfo>> = vec![None; ids.len()];
    while let Some((index, event)) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                renderer.abandon();
                return Err(e.into());
            }
        };
        renderer.event(index, &event)?;
        if let WatchEvent::Job(job) = event {
            last[index] = Some(*job);
        }
    }
    let finals = last
        .into_iter()
        .zip(&ids)
        .map(|(job, id)| {
            job.filter(|j| j.state.is_terminal())
                .ok_or_else(|| anyhow!("the watch of job {id} ended before the job did"))
        })
        .collect::<Result<Vec<_>>>();
    match finals {
        Ok(finals) => {
            renderer.finish(&finals)?;
            Ok(finals)
        }
        Err(e) => {
            renderer.abandon();
            Err(e)
        }
    }
}

/// `sweep.csv`, `pareto.png`, `pareto.svg` in `dir`, each written atomically; returns their paths.
fn write_files(dir: &Path, title: &str, rows: &[Row]) -> Result<[PathBuf; 3]> {
    let points: Vec<plot::Point> = rows.iter().filter_map(Row::point).collect();
    let paths = [dir.join(CSV_FILE), dir.join(PNG_FILE), dir.join(SVG_FILE)];
    results::write_atomic(&paths[0], results::to_csv(rows).as_bytes())?;
    results::write_atomic(&paths[1], &plot::png(title, &points)?)?;
    results::write_atomic(&paths[2], plot::svg(title, &points)?.as_bytes())?;
    Ok(paths)
}

/// The rows as a table: accuracy in percent, sizes readable.
fn describe(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.sparsity.to_string(),
                opt_number(r.validation_accuracy.map(|a| a * 100.0), 2),
                r.artifact_bytes.map_or_else(|| "-".into(), bytes),
                opt_number(r.inference_ms, 3),
                r.job_id.clone(),
                r.state.to_string(),
            ]
        })
        .collect();
    table(&["SPARSITY", "VAL ACC %", "ARTIFACT", "INFER MS (B=1)", "JOB", "STATE"], &cells)
}
