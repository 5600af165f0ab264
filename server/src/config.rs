//! Command line and the layout of the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
// Every option has a default or is optional: clap's generated usage line, after an error, lists
// the options given as though they were required (`--tls-cert` alone showed `--listen <LISTEN>
// --data-dir <DATA_DIR>`).
#[command(
    name = "prune-server",
    version,
    about = "Runs neural-network pruning jobs behind a gRPC API",
    override_usage = "prune-server [OPTIONS]"
)]
pub struct Cli {
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stdout).
    #[arg(long, env = "PRUNE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Holds the SQLite database (unless --database names another), blobs, checkpoints and artifacts.
    #[arg(long, env = "PRUNE_DATA_DIR", default_value = "./var")]
    pub data_dir: PathBuf,
    /// The database: `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    /// (the database must exist; its tables are created). Default: `<data-dir>/prune.db`.
    #[arg(long = "database", env = "PRUNE_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database: Option<String>,
    /// Where blobs, checkpoints and artifacts live: `file:///DIR` or `s3://bucket/prefix` (an
    /// S3-compatible store; endpoint, region and credentials from the `AWS_*` variables, which
    /// workers inherit). Default: the data directory.
    #[arg(long = "store", env = "PRUNE_STORE_URL", value_name = "URL")]
    pub store: Option<String>,
    /// Jobs this node runs at the same time (each in its own worker process); 0: an API-only
    /// node that accepts and answers for jobs but runs none.
    #[arg(long, env = "PRUNE_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub workers: u32,
    /// This node's name in job leases and attempts (default: host name and process id).
    /// Restarting a node under the same name releases its old leases at once.
    #[arg(long, env = "PRUNE_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// How long a node holds a job without renewing (renewed every third of it, at most every
    /// second): after a node dies, its jobs are taken over once this has passed.
    #[arg(long, env = "PRUNE_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// libtorch threads of a job whose spec does not set `training.threads` (default: this
    /// machine's cores divided among `--workers`, at least 1).
    #[arg(long = "threads-per-job", env = "PRUNE_THREADS_PER_JOB", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads_per_job_flag: Option<u32>,
    /// Worker crashes a job survives: after this many attempts it FAILS.
    #[arg(long, env = "PRUNE_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Jobs one tenant may have RUNNING at once across the cluster (0: no limit). Queued jobs
    /// start round-robin across tenants either way.
    #[arg(long, env = "PRUNE_MAX_RUNNING_PER_TENANT", default_value_t = 0)]
    pub max_running_per_tenant: u32,
    /// Finished jobs older than this many days are deleted with their files (0: kept).
    #[arg(long, env = "PRUNE_RETENTION_DAYS", default_value_t = 0)]
    pub retention_days: u32,
    /// Blobs no job references are deleted this many hours after their upload (0: kept).
    #[arg(long, env = "PRUNE_BLOB_GRACE_HOURS", default_value_t = 168)]
    pub blob_grace_hours: u64,
    /// The worker binary that runs job attempts (default: `prune-worker` next to this binary).
    #[arg(long, env = "PRUNE_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// On SIGTERM/SIGINT, how long running jobs get to write a checkpoint before they are killed.
    #[arg(long, env = "PRUNE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Also serve the browser dashboard (a page and its JSON API, plain HTTP) on this address;
    /// port 0 picks a free port (`dashboard on http://ADDR` is printed on stdout). Off by default.
    #[arg(long = "http", env = "PRUNE_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
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
    /// How often a resumable upload in progress is saved to the store, in bytes, so that
    /// another node can resume it if this one dies (what arrived since is sent again).
    #[arg(long, env = "PRUNE_UPLOAD_SEGMENT_BYTES", default_value_t = crate::files::uploads::DEFAULT_SEGMENT_BYTES,
          value_parser = clap::value_parser!(u64).range(64 << 10..=1 << 30))]
    pub upload_segment_bytes: u64,
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
    /// A tracked run whose client has not reported for this many seconds FAILS ("client
    /// stopped reporting"); its loop can re-attach with the same request id.
    #[arg(long, env = "PRUNE_TRACKED_TIMEOUT_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub tracked_timeout_secs: u32,
}

impl ServeArgs {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0).then(|| Duration::from_secs(u64::from(self.retention_days) * 24 * 3600))
    }

    pub fn blob_grace(&self) -> Option<Duration> {
        (self.blob_grace_hours > 0).then(|| Duration::from_secs(self.blob_grace_hours * 3600))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// libtorch threads for a job that does not choose: `--threads-per-job`, or this machine's
    /// cores (as the scheduler allows this process: cgroup quota, affinity) shared among the
    /// `--workers` jobs that may run at once, so that a lone job uses the whole machine and a
    /// full node does not oversubscribe it. Fixed at admission and stored with the job: a resumed
    /// attempt computes with the same count on any node.
    pub fn threads_per_job(&self) -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        self.threads_per_job_flag.unwrap_or_else(|| default_threads(cores, self.workers))
    }

    /// `--node-id`, or `HOSTNAME-PID`.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()))
    }
}

/// Cores divided among the concurrent jobs (an API-only node counts as one), 1 to 256.
fn default_threads(cores: u32, workers: u32) -> u32 {
    (cores / workers.max(1)).clamp(1, 256)
}

/// 1 to 128 characters of letters, digits and `.-_:` (it appears in logs and job views).
fn parse_node_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected 1 to 128 letters, digits, `.`, `-`, `_` or `:`".to_string())
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if rc == 0 && !name.is_empty() {
        name
    } else {
        "node".to_string()
    }
}

/// Where everything lives under `--data-dir`: the database, this node's uploads in progress and
/// scratch space, and (as the local file store) blobs, checkpoints and artifacts by key. The
/// root is absolute, so the store URL handed to workers is valid whatever their directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory tree if needed.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let dir = DataDir { root: root.canonicalize()? };
        for sub in
            [dir.blobs(), dir.blobs_tmp(), dir.scratch(), dir.root.join("checkpoints"), dir.root.join("artifacts")]
        {
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
    /// This node's scratch space for workers (copies of objects from a remote store).
    pub fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        for sub in [dir.blobs_tmp(), dir.scratch(), dir.root().join("checkpoints")] {
            assert!(sub.is_dir(), "{}", sub.display());
        }
        assert!(dir.root().is_absolute());
    }

    #[test]
    fn default_threads_share_the_cores_among_workers() {
        assert_eq!(default_threads(16, 1), 16);
        assert_eq!(default_threads(16, 4), 4);
        assert_eq!(default_threads(16, 0), 16, "an API-only node: as for one worker");
        assert_eq!(default_threads(2, 3), 1, "never below one thread");
        assert_eq!(default_threads(1024, 1), 256, "the flag's upper bound");
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::parse_from(["prune-server"]);
        assert_eq!(cli.serve.listen.to_string(), "127.0.0.1:50051");
        assert_eq!((cli.serve.workers, cli.serve.threads_per_job_flag, cli.serve.max_attempts), (1, None, 3));
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(cli.serve.threads_per_job(), cores, "a lone worker gets every core");
        let cli = Cli::parse_from(["prune-server", "--threads-per-job", "3", "--workers", "8"]);
        assert_eq!(cli.serve.threads_per_job(), 3);
        assert!(Cli::try_parse_from(["prune-server", "worker"]).is_err(), "workers are prune-worker now");
        let limits = cli.serve.limits;
        assert_eq!((limits.max_upload_bytes, limits.max_spec_bytes), (8 << 30, 1 << 20));
        assert_eq!((limits.max_queued_per_tenant, limits.max_message_bytes), (1000, 4 << 20));
        assert!(cli.serve.security.tokens.is_none() && !cli.serve.security.insecure);
        assert!(cli.serve.store.is_none(), "the data directory is the store");
        assert!(cli.serve.http.is_none(), "no dashboard unless asked for");
        let cli = Cli::parse_from(["prune-server", "--http", "127.0.0.1:0"]);
        assert_eq!(cli.serve.http.unwrap().to_string(), "127.0.0.1:0");
        let cli = Cli::parse_from(["prune-server", "--store", "s3://bucket/prefix"]);
        assert_eq!(cli.serve.store.as_deref(), Some("s3://bucket/prefix"));
    }

    #[test]
    fn node_flags() {
        let cli = Cli::parse_from(["prune-server"]);
        assert_eq!(cli.serve.lease(), Duration::from_secs(30));
        let id = cli.serve.node_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(parse_node_id(&id).is_ok(), "the default is a valid id: {id}");
        let cli = Cli::parse_from(["prune-server", "--node-id", "node-2", "--lease-secs", "3", "--workers", "0"]);
        assert_eq!((cli.serve.node_id(), cli.serve.lease_secs, cli.serve.workers), ("node-2".into(), 3, 0));
        for bad in [&["--node-id", ""][..], &["--node-id", "a b"], &["--lease-secs", "0"]] {
            assert!(Cli::try_parse_from(["prune-server"].iter().chain(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn database_flag() {
        assert!(Cli::parse_from(["prune-server"]).serve.database.is_none(), "default: <data-dir>/prune.db");
        let cli = Cli::parse_from(["prune-server", "--database", "postgres://prune@db/prune"]);
        assert_eq!(cli.serve.database.as_deref(), Some("postgres://prune@db/prune"));
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(Cli::try_parse_from(["prune-server", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["prune-server", "--tls-key", "k.pem"]).is_err());
        let cli = Cli::try_parse_from(["prune-server", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(cli.serve.security.tls_cert.unwrap(), PathBuf::from("c.pem"));
        // One of the pair alone: the error names the other; the usage line requires nothing.
        let args = ["prune-server", "--listen", "127.0.0.1:1", "--data-dir", "d", "--tls-cert", "c.pem"];
        let error = Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(error.contains("--tls-key"), "{error}");
        assert!(error.contains("Usage: prune-server [OPTIONS]\n"), "{error}");
        assert!(!error.contains("--listen <LISTEN>"), "{error}");
    }
}
