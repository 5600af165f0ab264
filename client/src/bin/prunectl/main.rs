//! `prunectl`: the command line of the prune service (see `docs/job-spec.md`).
//!
//! The work is done by the `prune_client` library; this binary parses flags, picks text or
//! JSON output, and turns errors into a reason on stderr and an exit status.

mod cli;
mod commands;
mod multi_progress;
mod output;
mod progress;

use std::io;
use std::process::ExitCode;

use clap::Parser;

use crate::commands::{JobDidNotSucceed, SweepDidNotSucceed};

/// Exit status for an error (bad usage is clap's 2).
const EXIT_ERROR: u8 = 1;
/// Exit status when a watched job (or a job of a sweep) ended FAILED or CANCELLED: the call
/// itself worked.
const EXIT_JOB_NOT_SUCCEEDED: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Prints the error's reason, one `error:` line per line of it, and picks the exit status.
fn report(err: &anyhow::Error) -> ExitCode {
    // A reader that went away (`prunectl list | head`) is not worth a message.
    if err.chain().any(|e| e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)) {
        return ExitCode::SUCCESS;
    }
    for line in reason(err).lines() {
        eprintln!("error: {line}");
    }
    if err.downcast_ref::<JobDidNotSucceed>().is_some() || err.downcast_ref::<SweepDidNotSucceed>().is_some() {
        ExitCode::from(EXIT_JOB_NOT_SUCCEEDED)
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

/// The error and those of its causes that its own message does not already include.
fn reason(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}
