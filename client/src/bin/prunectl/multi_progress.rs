//! How `sweep` shows several jobs at once: one live progress line per job on a terminal
//! (indicatif's `MultiProgress`), plain lines tagged with the job's sparsity when stdout is a
//! pipe or a file, JSON lines (each event with `sparsity` and `job_id` added) with `--json`.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar};
use prune_client::{JobInfo, WatchEvent};

use crate::output::{self, Output};
use crate::progress::{bar_style, job_line, line, screen, set_position, steps};

/// Plain-line mode prints a job's progress at most this often (state changes always print).
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// One watched job: its sparsity (the line's tag) and id.
pub struct Watched {
    pub sparsity: f64,
    pub id: String,
}

pub struct MultiRenderer {
    jobs: Vec<Watched>,
    mode: Mode,
}

enum Mode {
    Bars { _multi: MultiProgress, bars: Vec<ProgressBar> },
    Lines { last_progress: Vec<Option<Instant>> },
    Json(Output),
}

impl MultiRenderer {
    pub fn new(out: Output, jobs: Vec<Watched>) -> Self {
        let mode = if out.json {
            Mode::Json(out)
        } else if io::stdout().is_terminal() {
            let multi = MultiProgress::with_draw_target(screen());
            let style = bar_style("{prefix:.bold} {spinner}");
            let width = jobs.iter().map(|j| tag(j.sparsity).len()).max().unwrap_or(0);
            let bars = jobs
                .iter()
                .map(|job| {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(style.clone());
                    bar.set_prefix(format!("{:<width$} {}", tag(job.sparsity), job.id));
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar
                })
                .collect();
            Mode::Bars { _multi: multi, bars }
        } else {
            Mode::Lines { last_progress: vec![None; jobs.len()] }
        };
        MultiRenderer { jobs, mode }
    }

    /// Shows an event of the `index`th job.
    pub fn event(&mut self, index: usize, event: &WatchEvent) -> io::Result<()> {
        let job = &self.jobs[index];
        match (&mut self.mode, event) {
            (Mode::Json(out), event) => {
                let mut value = serde_json::to_value(event).map_err(io::Error::other)?;
                if let Some(object) = value.as_object_mut() {
                    object.insert("sparsity".into(), job.sparsity.into());
                    object.entry("job_id").or_insert_with(|| job.id.clone().into());
                }
                out.json_line(&value)
            }
            (Mode::Bars { bars, .. }, WatchEvent::Job(info)) => {
                set_position(&bars[index], info.step, info.total_steps);
                bars[index].set_message(format!("{}  {}", info.state, job_line(info)));
                Ok(())
            }
            (Mode::Bars { bars, .. }, WatchEvent::Progress(p)) => {
                set_position(&bars[index], p.step, p.total_steps);
                bars[index]
                    .set_message(format!("RUNNING  {}", line(p.mean_sparsity(), p.loss, p.accuracy, p.eta_seconds)));
                Ok(())
            }
            (Mode::Bars { bars, .. }, WatchEvent::Reconnecting { attempt, .. }) => {
                bars[index].set_message(format!("connection lost, reconnecting (try {attempt})"));
                Ok(())
            }
            (Mode::Lines { .. }, WatchEvent::Job(info)) => output::print_text(&summary(job.sparsity, info)),
            (Mode::Lines { last_progress }, WatchEvent::Progress(p)) => {
                if last_progress[index].is_some_and(|t| t.elapsed() < LINE_INTERVAL) {
                    return Ok(());
                }
                last_progress[index] = Some(Instant::now());
                let text = line(p.mean_sparsity(), p.loss, p.accuracy, p.eta_seconds);
                output::print_text(&format!("{} {}  {}{text}", tag(job.sparsity), job.id, steps(p.step, p.total_steps)))
            }
            (Mode::Lines { .. }, WatchEvent::Reconnecting { attempt, retry_in_ms, reason }) => {
                eprintln!(
                    "{} {}: connection lost ({reason}); reconnecting in {retry_in_ms} ms (try {attempt})",
                    tag(job.sparsity),
                    job.id
                );
                Ok(())
            }
        }
    }

    /// Ends the display; on a terminal the bars give way to one final line per job (plain
    /// lines and JSON have printed each job's final state already).
    pub fn finish(self, finals: &[JobInfo]) -> io::Result<()> {
        if let Mode::Bars { bars, .. } = self.mode {
            for bar in &bars {
                bar.finish_and_clear();
            }
            for (job, info) in self.jobs.iter().zip(finals) {
                output::print_text(&summary(job.sparsity, info))?;
            }
        }
        Ok(())
    }

    /// Removes the bars before an error is printed under them.
    pub fn abandon(self) {
        if let Mode::Bars { bars, .. } = self.mode {
            for bar in bars {
                bar.finish_and_clear();
            }
        }
    }
}

/// `s=0.8`: which job of the sweep a line is about.
fn tag(sparsity: f64) -> String {
    prune_client::plot::point_label(sparsity)
}

/// `s=0.8 job-x SUCCEEDED  step 102/102  sparsity 0.800  ...`, leaving out what is unknown.
fn summary(sparsity: f64, job: &JobInfo) -> String {
    let head = format!("{} {} {}", tag(sparsity), job.id, job.state);
    let parts = [head, steps(job.step, job.total_steps).trim_end().to_string(), job_line(job)];
    parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("  ")
}
