//! The job API driven by a plain Python grpcio client (`tests/python/api_contract.py`): stubs
//! generated from the repository's proto, error details read with grpcio-status, against the
//! real prune-server with two tenants. Covers idempotent submit, structured errors, labels and
//! filters, delete (files gone from the data dir), logs, server info and fair scheduling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prune_tests::*;
use tempfile::TempDir;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

fn python() -> PathBuf {
    let venv = std::env::var_os("PRUNE_VENV")
        .expect("PRUNE_VENV is not set: run `eval \"$(scripts/libtorch-env.sh)\"` (the Makefile does) for grpcio");
    PathBuf::from(venv).join("bin/python")
}

#[tokio::test]
async fn a_python_grpcio_client_drives_the_documented_contract() {
    let tmp = TempDir::new().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{ALICE} alice\n{BOB} bob\n")).unwrap();
    let data_dir = tmp.path().join("data");
    let tokens_arg = tokens.display().to_string();
    let server = Server::start(&data_dir, &["--tokens", &tokens_arg, "--workers", "1"]).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let script = root.join("tests/python/api_contract.py");
    let run = tokio::process::Command::new(python())
        .arg(&script)
        .arg(root)
        .arg(&server.addr)
        .arg(&data_dir)
        .env("PRUNE_ALICE_TOKEN", ALICE)
        .env("PRUNE_BOB_TOKEN", BOB)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, run).await.expect("the script finishes").expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "api_contract.py failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("all API contract checks passed"), "{stdout}\n{stderr}");
    eprintln!("{stdout}");
}
