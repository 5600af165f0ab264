//! How `watch` shows a job: a live progress bar on a terminal, plain lines when stdout is a
//! pipe or a file (a bar's redraws would be garbage there), JSON lines with `--json`.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prune_client::{JobInfo, WatchEvent};

use crate::output::{self, Output};

/// Plain-line mode prints progress at most this often (state changes always print).
const LINE_INTERVAL: Duration = Duration::from_secs(1);

pub enum Renderer {
    Bar(ProgressBar),
    Lines { last_progress: Option<Instant> },
    Json(Output),
}

impl Renderer {
    pub fn new(out: Output) -> Self {
        if out.json {
            Renderer::Json(out)
        } else if io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:20.cyan/blue}] {pos}/{len} {wide_msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Renderer::Bar(bar)
        } else {
            Renderer::Lines { last_progress: None }
        }
    }

    pub fn event(&mut self, event: &WatchEvent) -> io::Result<()> {
        match (self, event) {
            (Renderer::Json(out), event) => out.json_line(event),
            (Renderer::Bar(bar), WatchEvent::Job(job)) => {
                // The id is on the line above (submit) or on the command line (watch): the width
                // goes to the numbers.
                bar.set_prefix(job.state.to_string());
                set_position(bar, job.step, job.total_steps);
                bar.set_message(job_line(job));
                Ok(())
            }
            (Renderer::Bar(bar), WatchEvent::Progress(p)) => {
                set_position(bar, p.step, p.total_steps);
                bar.set_message(line(p.mean_sparsity(), p.loss, p.accuracy, p.eta_seconds));
                Ok(())
            }
            (Renderer::Bar(bar), WatchEvent::Reconnecting { attempt, .. }) => {
                bar.set_message(format!("connection lost, reconnecting (try {attempt})"));
                Ok(())
            }
            (Renderer::Lines { .. }, WatchEvent::Job(job)) => output::print_text(&job_summary(job)),
            (Renderer::Lines { last_progress }, WatchEvent::Progress(p)) => {
                if last_progress.is_some_and(|t| t.elapsed() < LINE_INTERVAL) {
                    return Ok(());
                }
                *last_progress = Some(Instant::now());
                let text = line(p.mean_sparsity(), p.loss, p.accuracy, p.eta_seconds);
                output::print_text(&format!("{}{text}", steps(p.step, p.total_steps)))
            }
            (Renderer::Lines { .. }, WatchEvent::Reconnecting { attempt, retry_in_ms, reason }) => {
                eprintln!("connection lost ({reason}); reconnecting in {retry_in_ms} ms (try {attempt})");
                Ok(())
            }
        }
    }

    /// Ends the display with one line on the job's final state (text modes only: in JSON the
    /// last event already is the final job).
    pub fn finish(self, job: &JobInfo) -> io::Result<()> {
        match self {
            // Lines printed the final job already; in JSON it is the last event.
            Renderer::Json(_) | Renderer::Lines { .. } => Ok(()),
            Renderer::Bar(bar) => {
                bar.finish_and_clear();
                output::print_text(&job_summary(job))
            }
        }
    }

    /// Removes the bar before an error is printed under it.
    pub fn abandon(self) {
        if let Renderer::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

pub fn set_position(bar: &ProgressBar, step: i64, total: i64) {
    if total > 0 {
        bar.set_length(total as u64);
    }
    bar.set_position(step.max(0) as u64);
}

/// `step 120/510  ` (or nothing before the total is known).
pub fn steps(step: i64, total: i64) -> String {
    if total > 0 {
        format!("step {step}/{total}  ")
    } else if step > 0 {
        format!("step {step}  ")
    } else {
        String::new()
    }
}

/// `job-x RUNNING  step 120/510  sparsity 0.512  loss 0.4312 ...`
fn job_summary(job: &JobInfo) -> String {
    format!("{} {}  {}{}", job.id, job.state, steps(job.step, job.total_steps), job_line(job)).trim_end().to_string()
}

pub fn job_line(job: &JobInfo) -> String {
    let mut text =
        line(job.mean_sparsity(), job.loss, job.accuracy, job.eta_seconds.filter(|_| !job.state.is_terminal()));
    if let Some(error) = &job.error {
        text += &format!("  error: {error}");
    }
    text
}

/// `sparsity 0.512  loss 0.4312  acc 0.912  eta 3s`, leaving out what is unknown.
pub fn line(sparsity: Option<f64>, loss: Option<f64>, accuracy: Option<f64>, eta: Option<f64>) -> String {
    let parts = [
        sparsity.map(|s| format!("sparsity {s:.3}")),
        loss.map(|l| format!("loss {l:.4}")),
        accuracy.map(|a| format!("acc {a:.3}")),
        eta.map(|e| format!("eta {}", output::duration(e))),
    ];
    parts.into_iter().flatten().collect::<Vec<_>>().join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_leaves_out_unknowns() {
        assert_eq!(line(Some(0.5), None, Some(0.9), Some(3.2)), "sparsity 0.500  acc 0.900  eta 3s");
        assert_eq!(line(None, None, None, None), "");
        assert_eq!(steps(3, 10), "step 3/10  ");
        assert_eq!(steps(0, 0), "");
    }
}
