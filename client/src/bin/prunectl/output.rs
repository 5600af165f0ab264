//! Human text vs `--json`, and the small formatting helpers the text forms share.
//!
//! Everything goes through [`Output`] so that a command prints exactly one JSON document (or one
//! JSON object per line for streams) with `--json`, and so that a closed pipe
//! (`prunectl list | head`) is an error the caller can end quietly on, not a panic.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// With `--json`, `value` as one JSON line; otherwise the text `human` makes of it.
    pub fn show<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) -> io::Result<()> {
        if self.json {
            self.json_line(value)
        } else {
            print_text(&human(value))
        }
    }

    /// One JSON value on one line: a whole document, or one item of a stream.
    pub fn json_line<T: Serialize>(&self, value: &T) -> io::Result<()> {
        let line = serde_json::to_string(value).map_err(io::Error::other)?;
        print_text(&line)
    }
}

/// Writes `text` and a final newline (unless it is empty or already ends with one) to stdout.
pub fn print_text(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.is_empty() && !text.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()
}

/// Left-aligned columns separated by two spaces, headers first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells.zip(&widths).map(|(c, &w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out += &line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A value with `digits` decimals, or `-` when unknown.
pub fn opt_number(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// Seconds as `42s`, `3m05s` or `2h07m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// How long ago a unix-millisecond time was: `12s ago`, `3m05s ago`.
pub fn age(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    format!("{} ago", duration((now_ms - unix_ms) as f64 / 1000.0))
}

/// Bytes as `812 B`, `8.2 KiB`, `3.4 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["ID", "STATE"], &[vec!["job-1".into(), "RUNNING".into()], vec!["j".into(), "QUEUED".into()]]);
        assert_eq!(t, "ID     STATE\njob-1  RUNNING\nj      QUEUED\n");
    }

    #[test]
    fn formats() {
        assert_eq!(duration(5.4), "5s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(7300.0), "2h01m");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(8440), "8.2 KiB");
        assert_eq!(opt_number(None, 3), "-");
        assert_eq!(opt_number(Some(0.5), 3), "0.500");
    }
}
