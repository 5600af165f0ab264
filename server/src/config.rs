//! Command line and the layout of the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "prune-server", version, about = "Runs neural-network pruning jobs behind a gRPC API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one job attempt; started by the server itself, which talks to it over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stdout).
    #[arg(long, env = "PRUNE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Holds the SQLite database, blobs, checkpoints and artifacts.
    #[arg(long, env = "PRUNE_DATA_DIR", default_value = "./var")]
    pub data_dir: PathBuf,
    /// Jobs that run at the same time (each in its own worker process).
    #[arg(long, env = "PRUNE_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// libtorch threads of a job whose spec does not set `training.threads`.
    #[arg(long, env = "PRUNE_THREADS_PER_JOB", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads_per_job: u32,
    /// Worker crashes a job survives: after this many attempts it FAILS.
    #[arg(long, env = "PRUNE_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// On SIGTERM/SIGINT, how long running jobs get to write a checkpoint before they are killed.
    #[arg(long, env = "PRUNE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Bearer tokens: one `TOKEN TENANT` pair per line, `#` starts a comment. Without it every
    /// caller is the tenant `default`, and only a loopback address may be served.
    #[arg(long, env = "PRUNE_TOKENS_FILE")]
    pub tokens: Option<PathBuf>,
    /// Serves a non-loopback address without --tokens (anyone who can connect can use it).
    #[arg(long, env = "PRUNE_INSECURE")]
    pub insecure: bool,
    /// PEM certificate chain: serves TLS (with --tls-key).
    #[arg(long, env = "PRUNE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PRUNE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LimitArgs {
    /// Largest blob an upload may announce, in bytes.
    #[arg(long, env = "PRUNE_MAX_UPLOAD_BYTES", default_value_t = 8 << 30)]
    pub max_upload_bytes: u64,
    /// Largest job spec (TOML/JSON text, or encoded JobSpec message), in bytes.
    #[arg(long, env = "PRUNE_MAX_SPEC_BYTES", default_value_t = 1 << 20)]
    pub max_spec_bytes: usize,
    /// QUEUED jobs one tenant may have; CreateJob beyond it is RESOURCE_EXHAUSTED.
    #[arg(long, env = "PRUNE_MAX_QUEUED_PER_TENANT", default_value_t = 1000)]
    pub max_queued_per_tenant: u32,
    /// Largest gRPC request message the server decodes, in bytes (upload chunks included).
    #[arg(long, env = "PRUNE_MAX_MESSAGE_BYTES", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u64).range(64 << 10..=1 << 30))]
    pub max_message_bytes: u64,
}

impl ServeArgs {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Where everything lives under `--data-dir`. The root is absolute, so paths handed to workers
/// stay valid whatever their working directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory tree if needed.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let dir = DataDir { root: root.canonicalize()? };
        for sub in [dir.blobs(), dir.blobs_tmp(), dir.root.join("checkpoints"), dir.root.join("artifacts")] {
            std::fs::create_dir_all(sub)?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("prune.db")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// Uploads in progress; on the same file system as `blobs/` so finishing one is a rename.
    pub fn blobs_tmp(&self) -> PathBuf {
        self.root.join("blobs").join("tmp")
    }
    pub fn checkpoints(&self, job_id: &str) -> PathBuf {
        self.root.join("checkpoints").join(job_id)
    }
    pub fn artifacts(&self, job_id: &str) -> PathBuf {
        self.root.join("artifacts").join(job_id)
    }

    /// The form stored in the database: relative to the root when inside it, so the data
    /// directory can be moved.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).to_string_lossy().into_owned()
    }
    /// Inverse of [`DataDir::relative`].
    pub fn resolve(&self, stored: &str) -> PathBuf {
        self.root.join(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_paths_are_relative_and_resolve_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let ckpt = dir.checkpoints("job-1").join("step-10.ckpt");
        assert_eq!(dir.relative(&ckpt), "checkpoints/job-1/step-10.ckpt");
        assert_eq!(dir.resolve(&dir.relative(&ckpt)), ckpt);
        assert_eq!(dir.resolve("/elsewhere/x"), PathBuf::from("/elsewhere/x"));
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::parse_from(["prune-server"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.to_string(), "127.0.0.1:50051");
        assert_eq!((cli.serve.workers, cli.serve.threads_per_job, cli.serve.max_attempts), (1, 1, 3));
        assert!(matches!(Cli::parse_from(["prune-server", "worker"]).command, Some(Command::Worker)));
        let limits = cli.serve.limits;
        assert_eq!((limits.max_upload_bytes, limits.max_spec_bytes), (8 << 30, 1 << 20));
        assert_eq!((limits.max_queued_per_tenant, limits.max_message_bytes), (1000, 4 << 20));
        assert!(cli.serve.security.tokens.is_none() && !cli.serve.security.insecure);
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(Cli::try_parse_from(["prune-server", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["prune-server", "--tls-key", "k.pem"]).is_err());
        let cli = Cli::try_parse_from(["prune-server", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(cli.serve.security.tls_cert.unwrap(), PathBuf::from("c.pem"));
    }
}
