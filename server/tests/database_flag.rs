//! `--database URL` at start-up: a database the server cannot reach stops it with one line that
//! names the URL, password masked, and the reason; nothing is served.

use clap::Parser;
use prune_server::config::Cli;

#[tokio::test]
async fn an_unreachable_database_stops_the_server_with_one_masked_line() {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of loopback: the connection is refused at once.
    let cli = Cli::parse_from([
        "prune-server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--worker-bin",
        "/bin/sh",
        "--database",
        "postgres://prune:s3cret@127.0.0.1:1/prune",
    ]);
    let err = prune_server::serve(cli.serve).await.unwrap_err().to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(err.starts_with("database postgres://prune:***@127.0.0.1:1/prune: "), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert!(err.to_ascii_lowercase().contains("refused"), "the reason: {err}");
}
