//! How `watch` shows a job: a live progress bar on a terminal, plain lines when stdout is a
//! pipe or a file (a bar's redraws would be garbage there), JSON lines with `--json`.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use console::Term;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use prune_client::{JobInfo, WatchEvent};

use crate::output::{self, Output};

/// Plain-line mode prints progress at most this often (state changes always print).
const LINE_INTERVAL: Duration = Duration::from_secs(1);

pub enum Renderer {
    Bar(ProgressBar),
    Lines(Lines),
    Json(Output),
}

/// Plain lines (stdout is not a terminal): one line per event that says something new, each
/// starting with the job's id, so that a log of several jobs can be grepped.
#[derive(Default)]
pub struct Lines {
    last_progress: Option<Instant>,
    id: Option<String>,
    /// The state and attempt of the last job line: a snapshot that repeats them (a watch
    /// re-reads the job on every change) is not printed again.
    shown: Option<(prune_client::JobState, u32)>,
}

impl Renderer {
    pub fn new(out: Output) -> Self {
        if out.json {
            Renderer::Json(out)
        } else if io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, screen());
            bar.set_style(bar_style("{spinner} {prefix:.bold}"));
            bar.enable_steady_tick(Duration::from_millis(200));
            Renderer::Bar(bar)
        } else {
            Renderer::Lines(Lines::default())
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
            (Renderer::Lines(lines), WatchEvent::Job(job)) => {
                lines.id = Some(job.id.clone());
                let now = (job.state, job.attempts);
                if lines.shown == Some(now) {
                    return Ok(());
                }
                lines.shown = Some(now);
                output::print_text(&job_summary(job))
            }
            (Renderer::Lines(lines), WatchEvent::Progress(p)) => {
                if lines.last_progress.is_some_and(|t| t.elapsed() < LINE_INTERVAL) {
                    return Ok(());
                }
                lines.last_progress = Some(Instant::now());
                let text = line(p.mean_sparsity(), p.loss, p.accuracy, p.eta_seconds);
                let id = lines.id.as_deref().unwrap_or("job");
                output::print_text(format!("{id} {}{text}", steps(p.step, p.total_steps)).trim_end())
            }
            (Renderer::Lines(_), WatchEvent::Reconnecting { attempt, retry_in_ms, reason }) => {
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
            Renderer::Json(_) | Renderer::Lines(_) => Ok(()),
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

/// A live bar's line: `head`, then the bar, which takes whatever width the numbers and the
/// message leave (at least a few columns), so sparsity, loss, accuracy and ETA are never the part
/// that is cut.
pub fn bar_style(head: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{head} [{{wide_bar:.cyan/blue}}] {{pos}}/{{len}} {{msg}}"))
        .expect("a valid template")
        .progress_chars("=> ")
}

/// Where live bars are drawn: stdout, at the terminal's width.
pub fn screen() -> ProgressDrawTarget {
    ProgressDrawTarget::term_like_with_hz(Box::new(Screen(Term::buffered_stdout())), 20)
}

/// Width of a terminal that reports none and no `$COLUMNS`: wide, so that nothing is cut.
const UNKNOWN_WIDTH: u16 = 200;

/// console's `Term`, except for its width where the terminal reports none (a pseudo-terminal
/// without a window size, as some CI runners and `script` give): `$COLUMNS`, else
/// [`UNKNOWN_WIDTH`], where console would assume 79 and cut the line there.
#[derive(Debug)]
struct Screen(Term);

impl TermLike for Screen {
    fn width(&self) -> u16 {
        width(self.0.size_checked().map(|(_, columns)| columns), std::env::var("COLUMNS").ok().as_deref())
    }
    fn height(&self) -> u16 {
        TermLike::height(&self.0)
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        TermLike::move_cursor_up(&self.0, n)
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        TermLike::move_cursor_down(&self.0, n)
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        TermLike::move_cursor_right(&self.0, n)
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        TermLike::move_cursor_left(&self.0, n)
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        TermLike::write_line(&self.0, s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        TermLike::write_str(&self.0, s)
    }
    fn clear_line(&self) -> io::Result<()> {
        TermLike::clear_line(&self.0)
    }
    fn flush(&self) -> io::Result<()> {
        TermLike::flush(&self.0)
    }
}

/// The terminal's reported width, else a positive `$COLUMNS`, else [`UNKNOWN_WIDTH`].
fn width(reported: Option<u16>, columns: Option<&str>) -> u16 {
    reported
        .filter(|&c| c > 0)
        .or_else(|| columns.and_then(|c| c.trim().parse::<u16>().ok()).filter(|&c| c > 0))
        .unwrap_or(UNKNOWN_WIDTH)
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

    /// A terminal of a given width that keeps what is drawn on it.
    #[derive(Debug, Clone)]
    struct Recorded(u16, std::sync::Arc<std::sync::Mutex<String>>);

    impl TermLike for Recorded {
        fn width(&self) -> u16 {
            self.0
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.1.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            self.1.lock().unwrap().clear();
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bar_gives_way_to_the_numbers_at_80_columns_and_grows_wider() {
        let message = line(Some(0.512), Some(0.4312), Some(0.912), Some(95.0));
        for (columns, bar_at_least) in [(80u16, 5usize), (160, 80)] {
            let term = Recorded(columns, Default::default());
            let bar = ProgressBar::with_draw_target(Some(844), ProgressDrawTarget::term_like(Box::new(term.clone())));
            bar.set_style(bar_style("{prefix:.bold}"));
            bar.set_prefix("RUNNING");
            bar.set_position(120);
            bar.set_message(message.clone());
            bar.tick();
            let drawn = console::strip_ansi_codes(&term.1.lock().unwrap()).trim_end().to_string();
            assert!(drawn.ends_with(&format!("120/844 {message}")), "{columns} columns: {drawn:?}");
            assert!(drawn.chars().count() <= columns as usize, "{columns} columns: {drawn:?}");
            let bar_width = drawn.split('[').nth(1).unwrap().split(']').next().unwrap().chars().count();
            assert!(bar_width >= bar_at_least, "{columns} columns: a bar of {bar_width}: {drawn:?}");
        }
    }

    #[test]
    fn an_unsized_terminal_is_as_wide_as_columns_says_or_wide() {
        assert_eq!(width(Some(120), Some("90")), 120);
        assert_eq!(width(None, Some("132")), 132);
        assert_eq!(width(Some(0), Some(" 100 ")), 100);
        assert_eq!(width(None, Some("wide")), UNKNOWN_WIDTH);
        assert_eq!(width(None, Some("0")), UNKNOWN_WIDTH);
        assert_eq!(width(None, None), UNKNOWN_WIDTH);
    }

    #[test]
    fn line_leaves_out_unknowns() {
        assert_eq!(line(Some(0.5), None, Some(0.9), Some(3.2)), "sparsity 0.500  acc 0.900  eta 3s");
        assert_eq!(line(None, None, None, None), "");
        assert_eq!(steps(3, 10), "step 3/10  ");
        assert_eq!(steps(0, 0), "");
    }
}
