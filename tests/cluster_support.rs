//! Cluster harness: one real PostgreSQL 15 ([`PgServer`], the storage tests' throwaway server),
//! one real S3 server (s3s-fs, [`S3sServer`]) and N `prune-server` nodes sharing them
//! (`--database`, `--store`, `--node-id node-K`, `--lease-secs`, `--workers`), each with a data
//! directory of its own (scratch only) and leading a process group of its own, so that a node
//! can be killed whole (`kill -9` of its group and its workers' groups) or partitioned (SIGSTOP
//! of its server process only). PostgreSQL and S3 can be stopped and started again mid-test on
//! the same port and data. Nothing sleeps to synchronise: waits poll with a deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prune_proto as pb;
use prune_store::s3s::S3sServer;
use sqlx::{Connection, PgConnection, Row};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::pg_server::PgServer;
use crate::{binary, Client, Server};

pub const BUCKET: &str = "prune-cluster";
/// The store's prefix in the bucket: objects are `<s3 root>/BUCKET/PREFIX/<key>`.
pub const PREFIX: &str = "shared";

/// One `prune-server` of the cluster.
pub struct Node {
    pub name: String,
    pub workers: u32,
    pub server: Server,
}

/// PostgreSQL + S3 + nodes; everything is stopped and removed when dropped (nodes first).
pub struct Cluster {
    nodes: Vec<Option<Node>>,
    pub s3: S3sServer,
    pub pg: PgServer,
    /// The nodes' `--database`.
    pub database_url: String,
    pub lease_secs: u64,
    tmp: TempDir,
}

impl Cluster {
    /// PostgreSQL, S3 and one node per entry of `workers` (its `--workers`), named `node-0`...
    pub async fn start(workers: &[u32], lease_secs: u64) -> Cluster {
        Cluster::start_with(workers, lease_secs, false).await
    }

    /// [`Cluster::start`]; with `statement_stats`, PostgreSQL loads `pg_stat_statements` (one
    /// restart before the nodes start) and the nodes' database has the extension.
    pub async fn start_with(workers: &[u32], lease_secs: u64, statement_stats: bool) -> Cluster {
        binary("prune-worker"); // the nodes run it: it must be as fresh as the server
        let tmp = tempfile::Builder::new().prefix("prune-cluster-").tempdir().expect("temporary dir");
        let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        let database_url = pg.create_database("prune").await.unwrap_or_else(|e| panic!("{e}"));
        if statement_stats {
            let mut db = PgConnection::connect(&database_url).await.expect("connecting to PostgreSQL");
            sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                .execute(&mut db)
                .await
                .expect("ALTER SYSTEM");
            db.close().await.ok();
            pg.stop().and_then(|()| pg.start_again()).unwrap_or_else(|e| panic!("{e}"));
            let mut db = PgConnection::connect(&database_url).await.expect("connecting to PostgreSQL");
            sqlx::query("CREATE EXTENSION pg_stat_statements").execute(&mut db).await.expect("pg_stat_statements");
            db.close().await.ok();
        }
        let s3 = S3sServer::start(&tmp.path().join("s3"), BUCKET);
        let mut cluster = Cluster { nodes: Vec::new(), s3, pg, database_url, lease_secs, tmp };
        for (k, &w) in workers.iter().enumerate() {
            cluster.start_node(k, w).await;
        }
        cluster
    }

    /// Starts node `k` (again, after [`Cluster::kill9`], with a fresh data directory).
    pub async fn start_node(&mut self, k: usize, workers: u32) -> &Node {
        if self.nodes.len() <= k {
            self.nodes.resize_with(k + 1, || None);
        }
        assert!(self.nodes[k].is_none(), "node-{k} is running");
        let name = format!("node-{k}");
        let data_dir = self.tmp.path().join(&name);
        let store = self.store_url();
        let (lease, workers_arg) = (self.lease_secs.to_string(), workers.to_string());
        let args = [
            "--database",
            self.database_url.as_str(),
            "--store",
            store.as_str(),
            "--workers",
            workers_arg.as_str(),
            "--node-id",
            name.as_str(),
            "--lease-secs",
            lease.as_str(),
        ];
        let server = Server::start_with_options(&binary("prune-server"), &data_dir, &args, &self.s3.env(), true).await;
        self.nodes[k] = Some(Node { name, workers, server });
        self.nodes[k].as_ref().unwrap()
    }

    pub fn store_url(&self) -> String {
        self.s3.url(PREFIX)
    }

    /// Node `k`; panics if it is down.
    pub fn node(&self, k: usize) -> &Node {
        self.nodes.get(k).and_then(Option::as_ref).unwrap_or_else(|| panic!("node-{k} is not running"))
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&k| self.nodes[k].is_some()).collect()
    }

    pub async fn client(&self, k: usize) -> Client {
        self.node(k).server.client().await
    }

    /// `kill -9` of node `k`'s process group and its workers' groups; waits until they are gone,
    /// then deletes the node's data directory. Returns the pids of the workers it had.
    pub async fn kill9(&mut self, k: usize) -> Vec<i32> {
        let node = self.nodes[k].take().unwrap_or_else(|| panic!("node-{k} is not running"));
        let data_dir = node.server.data_dir.clone();
        let workers = node.server.kill9_group(Duration::from_secs(20)).await;
        std::fs::remove_dir_all(&data_dir).unwrap_or_else(|e| panic!("removing {}: {e}", data_dir.display()));
        workers
    }

    /// SIGTERM to node `k`'s server; waits for its exit (its data dir stays). Returns the exit code.
    pub async fn terminate(&mut self, k: usize, within: Duration) -> Option<i32> {
        let node = self.nodes[k].take().unwrap_or_else(|| panic!("node-{k} is not running"));
        node.server.terminate(within).await
    }

    /// SIGSTOP of node `k`'s server process only: its workers run on, it neither renews its
    /// leases nor answers (a partition). [`Cluster::heal`] sends SIGCONT.
    pub fn partition(&self, k: usize) {
        self.node(k).server.signal(libc::SIGSTOP);
    }

    pub fn heal(&self, k: usize) {
        self.node(k).server.signal(libc::SIGCONT);
    }

    /// SIGSTOP / SIGCONT of node `k` whole (server and workers).
    pub fn freeze(&self, k: usize, frozen: bool) {
        self.node(k).server.signal_group(if frozen { libc::SIGSTOP } else { libc::SIGCONT });
    }

    /// The node whose server is the parent of process `pid` (a worker), if any.
    pub fn node_of_worker(&self, pid: i32) -> Option<usize> {
        self.running().into_iter().find(|&k| self.node(k).server.workers().contains(&pid))
    }

    /// Where the store's objects are: `<s3 root>/BUCKET/PREFIX`.
    pub fn store_dir(&self) -> PathBuf {
        self.s3.root().join(BUCKET).join(PREFIX)
    }

    /// The object keys (relative to the store's prefix) under `artifacts/<job_id>/`.
    pub fn artifact_objects(&self, job_id: &str) -> Vec<String> {
        let dir = self.store_dir();
        files_under(&dir.join("artifacts").join(job_id))
            .into_iter()
            .map(|f| f.strip_prefix(&dir).unwrap().display().to_string())
            .collect()
    }

    /// Total bytes of every object in the store (blobs, checkpoints, artifacts).
    pub fn store_bytes(&self) -> u64 {
        files_under(&self.store_dir()).iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
    }

    /// A connection to the nodes' database, retried for up to 30 s (PostgreSQL may be restarting).
    pub async fn db(&self) -> PgConnection {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match PgConnection::connect(&self.database_url).await {
                Ok(db) => return db,
                Err(e) if Instant::now() > deadline => panic!("connecting to {}: {e}", self.database_url),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The newest checkpoint step the database records for the job.
    pub async fn newest_checkpoint(&self, job_id: &str) -> Option<i64> {
        let mut db = self.db().await;
        let row = sqlx::query("SELECT max(step) AS step FROM checkpoints WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(&mut db)
            .await
            .expect("reading checkpoints");
        db.close().await.ok();
        row.get::<Option<i64>, _>("step")
    }

    /// Waits until the job has a checkpoint at `min_step` or later; returns its step. Panics
    /// after `timeout`, or if `client` reports the job ended before.
    pub async fn wait_checkpoint(&self, client: &mut Client, job_id: &str, min_step: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(step) = self.newest_checkpoint(job_id).await.filter(|s| *s >= min_step) {
                return step;
            }
            let job = get(client, job_id).await;
            assert!(!crate::is_terminal(&job), "{job_id} ended before a checkpoint at step {min_step}: {job:?}");
            assert!(Instant::now() < deadline, "{job_id}: no checkpoint at step {min_step} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The job's artifact rows: (format, path), by format.
    pub async fn artifact_rows(&self, job_id: &str) -> Vec<(String, String)> {
        let mut db = self.db().await;
        let rows = sqlx::query("SELECT format, path FROM artifact_files WHERE job_id = $1 ORDER BY format, path")
            .bind(job_id)
            .fetch_all(&mut db)
            .await
            .expect("reading artifacts");
        db.close().await.ok();
        rows.iter().map(|r| (r.get("format"), r.get("path"))).collect()
    }

    /// The nodes' PostgreSQL sessions (state, transaction age, query) and the locks they hold,
    /// for failure messages.
    pub async fn pg_activity(&self) -> String {
        let mut db = self.db().await;
        let rows = sqlx::query(
            "SELECT a.pid::text || ' ' || coalesce(a.state, '') || ' xact ' || coalesce((now() - a.xact_start)::text, '-') \
             || ' port ' || coalesce(a.client_port::text, '') || ' locks [' || coalesce((SELECT string_agg(l.locktype \
             || ' ' || l.mode || ' ' || coalesce(l.relation::regclass::text, ''), ', ') FROM pg_locks l \
             WHERE l.pid = a.pid AND l.granted AND l.locktype <> 'virtualxid'), '') || '] ' || left(coalesce(a.query, ''), 300) \
             FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() ORDER BY a.pid",
        )
        .fetch_all(&mut db)
        .await
        .expect("pg_stat_activity");
        db.close().await.ok();
        rows.iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>().join("\n")
    }

    /// Node logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for k in self.running() {
            let node = self.node(k);
            out.push_str(&format!("--- {} ---\n{}\n", node.name, node.server.log()));
        }
        out
    }
}

/// Files under `dir`, recursively (s3s-fs keeps each object as a file), sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

pub async fn get(client: &mut Client, id: &str) -> pb::Job {
    client.get_job(pb::GetJobRequest { id: id.into() }).await.expect("GetJob").into_inner()
}

/// Polls `check` every 50 ms until it returns `Some`; panics with `what` after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
