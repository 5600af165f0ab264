//! `prune-server`: the gRPC job service. Job attempts run in `prune-worker` processes.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use prune_server::config::Cli;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Logs go to stderr: stdout carries only the `listening on` line.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // tonic's TLS takes rustls' process-wide provider; object_store (prune-store) compiles in
    // aws-lc-rs next to ring, so it has to be chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    // An error (at start-up: configuration, data directory, database, port) is one line on stderr.
    if let Err(e) = runtime.block_on(prune_server::serve(cli.serve)) {
        eprintln!("prune-server: {}", prune_core::text::one_line(&e.to_string()));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
