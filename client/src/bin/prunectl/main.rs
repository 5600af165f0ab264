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
    let addr = cli.global.addr.clone();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err, &addr),
    }
}

/// Prints the error's reason, one `error:` line per line of it, and picks the exit status.
fn report(err: &anyhow::Error, addr: &str) -> ExitCode {
    // A reader that went away (`prunectl list | head`) is not worth a message.
    if err.chain().any(|e| e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)) {
        return ExitCode::SUCCESS;
    }
    // Plain HTTP to a TLS server fails as an HTTP/2 framing error: say what to do instead.
    let hint = err
        .chain()
        .find_map(|e| e.downcast_ref::<prune_client::ClientError>())
        .and_then(|e| prune_client::tls_hint(addr, e));
    for line in hint.unwrap_or_else(|| reason(err)).lines() {
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
